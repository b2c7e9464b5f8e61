"""The few-shot protocol end to end through lm-eval: the offline tasks built from held-out text, the runner on toy
``LM``s (gold, empty and fixed-label answerers), the eight paper tasks on hand-made documents (lm-eval's own
prompt building, demonstrations included), and the leaderboard rows with their ranking."""
from __future__ import annotations

import json
import random

import pytest
from lm_eval.api.model import LM

from latentlm.platform import leaderboard
from latentlm.platform.evaluation import significance
from latentlm.platform.evaluation.fewshot import (FewshotDataError, OfflineTaskConfig, build_offline_tasks,
                                                  fewshot_rows, paper, run_fewshot)
from latentlm.platform.evaluation.fewshot.hooks import local_lastword, local_mcq
from latentlm.platform.evaluation.fewshot.offline import OFFLINE_TASKS, sentences
from latentlm.platform.evaluation.fewshot.runner import PAPER_TASKS_DIR, RESULTS_FILE, SAMPLES_DIR

from test_fewshot_scoring import DOCS, RACE_RAW

N_DOCS = 40
NOUNS = ("river city music people king science forest island mountain school garden harbour village market "
         "castle library bridge valley festival orchard").split()


class Words:
    """A whitespace "tokenizer" with the batch interface of an HF tokenizer: budgets count words."""
    name_or_path = "whitespace"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


def _documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    def sentence():
        words = [rng.choice(NOUNS) for _ in range(rng.randint(5, 9))]
        return " ".join(["The", *words[:2], "near", *words[2:]]) + "."
    return [" ".join(sentence() for _ in range(rng.randint(4, 7))) for _ in range(count)]


class ToyLM(LM):
    """Deterministic answers: ``gold`` (the gold text of the item whose prompt ends the context), ``empty``, or a
    fixed ``label`` ("(A)"). Counts its requests, so a test can see that it was never called."""

    def __init__(self, mode: str, gold: dict[str, str] | None = None):
        super().__init__()
        self.mode, self.gold, self.calls = mode, gold or {}, 0

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.calls += len(requests)
        if self.mode == "gold":
            return [" " + next(t for p, t in self.gold.items() if r.args[0].endswith(p)) + "\nnext line"
                    for r in requests]
        return ["" if self.mode == "empty" else " (A)" for _ in requests]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = OfflineTaskConfig(n_docs=N_DOCS, cache_dir=str(tmp_path_factory.mktemp("fewshot-cache")))
    return config, build_offline_tasks(config, tokenizer=Words(), documents=_documents(60))


def _rows(task) -> list[dict]:
    return [json.loads(line) for line in task.data_path.read_text().splitlines()]


def _gold(built_tasks) -> dict[str, str]:
    gold = {}
    for task in built_tasks.values():
        for row in _rows(task):
            item = local_mcq(row) if "options" in row else local_lastword(row)
            gold[item.prompt] = item.target
    return gold


@pytest.fixture(scope="module")
def runs(built, tmp_path_factory):
    """The three toy answerers on both offline tasks (one lm-eval run each)."""
    _, tasks = built
    directory = next(iter(tasks.values())).directory
    out = tmp_path_factory.mktemp("fewshot-runs")
    lms = {"gold": ToyLM("gold", _gold(tasks)), "empty": ToyLM("empty"), "label": ToyLM("label")}
    return {mode: run_fewshot(lm, ["latentlm_offline"], out / mode, task_dirs=[directory]) for mode, lm in lms.items()}


# ------------------------------------------------------------------------------------------ offline tasks
def test_sentences_keep_initials_and_abbreviations():
    assert sentences("Arthur C. Clarke wrote it. Dr. Who came by. J. R. R. Tolkien too.  It ended!") == [
        "Arthur C. Clarke wrote it.", "Dr. Who came by.", "J. R. R. Tolkien too.", "It ended!"]


def test_offline_build_is_deterministic_and_cached(built):
    config, tasks = built
    again = build_offline_tasks(config, tokenizer=Words(), documents=_documents(60))
    assert {n: (t.directory, t.data_sha256) for n, t in again.items()} == \
           {n: (t.directory, t.data_sha256) for n, t in tasks.items()}
    assert {t.directory for t in tasks.values()} == {next(iter(tasks.values())).directory}   # one include folder
    assert next(iter(tasks.values())).directory.name.startswith("offline-v1-")
    other = build_offline_tasks(OfflineTaskConfig(n_docs=N_DOCS, seed=7, cache_dir=config.cache_dir),
                                tokenizer=Words(), documents=_documents(60))
    assert other["latentlm_lastword"].data_sha256 != tasks["latentlm_lastword"].data_sha256
    manifest = json.loads((tasks["latentlm_lastword"].directory / "manifest.json").read_text())
    assert manifest["latentlm_lastword"]["tokenizer"] == "whitespace" and "cache_dir" not in \
        manifest["latentlm_lastword"]["config"]


def test_lastword_rows(built):
    config, tasks = built
    documents = _documents(60)
    rows = _rows(tasks["latentlm_lastword"])
    assert len(rows) == N_DOCS and len({r["doc_index"] for r in rows}) == N_DOCS
    for row in rows:
        assert config.lastword_tokens[0] <= row["prompt_tokens"] == len(row["context"].split()) <= \
            config.lastword_tokens[1]
        assert row["answer"].isalpha() and len(row["answer"]) >= 3 and row["answer"] != "near"
        assert documents[row["doc_index"]].startswith(f"{row['context']} {row['answer']}")
    repeated = sum(r["answer"].lower() in r["context"].lower().replace(".", "").split() for r in rows)
    assert repeated == N_DOCS   # every passage here has an earlier occurrence to prefer


def test_nextsentence_rows(built):
    config, tasks = built
    documents = _documents(60)
    rows = _rows(tasks["latentlm_nextsentence"])
    assert len(rows) == N_DOCS and {len(r["options"]) for r in rows} == {4}
    for row in rows:
        doc = " ".join(documents[row["doc_index"]].split())
        gold = row["options"][row["answer"]]
        assert f"{row['context']} {gold}" in doc           # the true continuation of its own context
        assert local_mcq(row).prompt.endswith("\nAnswer:") and row["prompt_tokens"] <= config.max_prompt_tokens
        assert len({o.lower() for o in row["options"]}) == 4
    assert len({r["answer"] for r in rows}) == 4           # the gold position is shuffled


def test_budgets_fit_the_window():
    from latentlm.models.config import ConfigError
    tiny = OfflineTaskConfig()
    assert tiny.fit_window(64) == tiny   # the defaults are the tiny presets' budgets
    big = tiny.fit_window(128)
    assert (big.lastword_tokens, big.lastword_gen_toks, big.max_prompt_tokens, big.nextsentence_gen_toks) == \
        ((24, 40), 32, 52, 32)
    for window in (64, 80, 100, 2048):
        c = tiny.fit_window(window)
        assert c.lastword_tokens[1] + c.lastword_gen_toks <= window >= c.max_prompt_tokens + c.nextsentence_gen_toks
    with pytest.raises(ConfigError, match="seq_len"):
        tiny.fit_window(48)
    with pytest.raises(ConfigError, match="nextsentence_gen_toks"):
        OfflineTaskConfig(nextsentence_gen_toks=40)


@pytest.mark.assets
def test_offline_tasks_from_the_embedded_corpus(asset_cache, tmp_path):
    from types import SimpleNamespace

    from latentlm.platform.evaluation.continuation import held_out_documents
    from latentlm.platform.training.sections import DataConfig
    tasks = build_offline_tasks(OfflineTaskConfig(n_docs=20, cache_dir=str(tmp_path)), tokenizer=Words())
    held_out = held_out_documents(SimpleNamespace(data=DataConfig()), "embedded:wiki")   # the default's test split
    rows = _rows(tasks["latentlm_lastword"])
    assert len(rows) == 20 and all(" ".join(held_out[r["doc_index"]].split()).startswith(r["context"]) for r in rows)
    assert len(_rows(tasks["latentlm_nextsentence"])) == 20


# ----------------------------------------------------------------------------------------------- runner
def test_gold_answerer_scores_one(runs):
    for task in OFFLINE_TASKS:
        result = runs["gold"][task]
        assert (result.value, result.ci_low, result.ci_high, result.n) == (1.0, 1.0, 1.0, N_DOCS)
        assert result.correct == (1.0,) * N_DOCS


def test_empty_answerer_scores_zero(runs):
    assert {t: r.value for t, r in runs["empty"].items()} == {t: 0.0 for t in OFFLINE_TASKS}


def test_fixed_label_answerer_scores_chance(runs, built):
    rows = _rows(built[1]["latentlm_nextsentence"])
    result = runs["label"]["latentlm_nextsentence"]
    assert result.correct == tuple(float(r["answer"] == 0) for r in rows)
    assert 0.1 <= result.value <= 0.45 and 0 <= result.ci_low < result.value < result.ci_high <= 1
    assert runs["label"]["latentlm_lastword"].value == 0.0


def test_accuracy_interval_stays_within_zero_and_one():
    from latentlm.platform.evaluation.fewshot.runner import BootstrapOptions, _collect, item_evidence
    correct = [1.0] + [0.0] * 9
    assert significance.bootstrap_ci(item_evidence("accuracy", correct), "accuracy")[0] < 0   # centred replicates
    samples = [{"doc_id": i, "arguments": [(f"p{i}", {})], "target": "t", "filtered_resps": [""], "accuracy": c}
               for i, c in enumerate(correct)]
    config = {"metric_list": [{"metric": "accuracy"}], "metadata": {"dataset": "d", "version": 1}}
    result, records = _collect("t", samples, config, None, {}, BootstrapOptions())
    assert result.value == 0.1 and result.ci_low == 0.0 < result.ci_high < 1 and len(records) == 10


def test_protocol_of_a_run(runs):
    result = runs["label"]["latentlm_nextsentence"]
    protocol = result.protocol
    assert protocol.name == "fewshot/latentlm_nextsentence" and protocol.version == 1
    assert protocol.dataset == "embedded:wiki" and protocol.items["n"] == N_DOCS
    assert protocol.definition["generation"] == {"until": ["\n"], "max_gen_toks": 12}
    assert runs["gold"]["latentlm_lastword"].protocol.definition["generation"]["max_gen_toks"] == 32
    # the same prompts whoever answers: one protocol hash, so the rows pair
    assert len({runs[m]["latentlm_nextsentence"].protocol.hash for m in runs}) == 1


def test_output_files(built, tmp_path):
    _, tasks = built
    results = run_fewshot(ToyLM("label"), ["latentlm_lastword"], tmp_path, limit=5,
                          task_dirs=[tasks["latentlm_lastword"].directory])
    summary = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert set(summary) == {"latentlm_lastword"} and summary["latentlm_lastword"]["n"] == 5
    lines = (tmp_path / SAMPLES_DIR / "latentlm_lastword.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert [s["doc_id"] for s in samples] == list(range(5)) and samples[0]["generation"] == " (A)"
    assert samples[0]["prompt"] == local_lastword(_rows(tasks["latentlm_lastword"])[0]).prompt
    assert results["latentlm_lastword"].protocol.items["limit"] == 5


def test_runner_builds_a_missing_offline_task(tiny_corpus, tiny_lm_dir, tmp_path):
    offline = OfflineTaskConfig(dataset=str(tiny_corpus), tokenizer=str(tiny_lm_dir), n_docs=6,
                                cache_dir=str(tmp_path / "cache"))
    results = run_fewshot(ToyLM("empty"), ["latentlm_lastword"], tmp_path / "out", offline=offline)
    assert set(results) == {"latentlm_lastword"} and results["latentlm_lastword"].n == 6
    assert [p.name for p in (tmp_path / "cache").iterdir()][0].startswith("offline-v1-")


def test_bad_local_data_fails_before_the_model_runs(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"context": "c", "options": ["x", "y"]}) + "\n")
    (tmp_path / "mine.yaml").write_text(
        "task: my_mcq\ncustom_dataset: !function latentlm.platform.evaluation.fewshot.hooks.load_local\n"
        f"dataset_kwargs:\n  data_file: {data}\n  local_format: mcq\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: !function latentlm.platform.evaluation.fewshot.hooks.mcq_text\n")
    lm = ToyLM("empty")
    with pytest.raises(FewshotDataError, match=r"mine\.jsonl:1: missing field 'answer'"):
        run_fewshot(lm, ["my_mcq"], tmp_path / "out", task_dirs=[tmp_path])
    with pytest.raises(FewshotDataError, match="unknown task 'nope'"):
        run_fewshot(lm, ["nope"], tmp_path / "out", task_dirs=[tmp_path])
    assert lm.calls == 0


def _paper_fixture(tmp_path) -> dict[str, list[dict]]:
    """Task folders that replace each paper task's hub dataset by hand-made documents (``include`` keeps the task's
    own YAML, templates and demonstrations)."""
    import datasets
    docs = {t: [d] for t, d in DOCS.items()}
    docs["cola_race"] = [RACE_RAW]
    (tmp_path / "fixture_docs.py").write_text(
        "import json\nimport datasets\n\n\ndef load(docs_file, **_):\n"
        "    ds = datasets.Dataset.from_list(json.load(open(docs_file)))\n"
        "    return {'test': ds, 'validation': ds}\n")
    for task, task_docs in docs.items():
        (tmp_path / f"{task}.json").write_text(json.dumps(task_docs))
        (tmp_path / f"{task}.yaml").write_text(
            f"include: {PAPER_TASKS_DIR / (task + '.yaml')}\ncustom_dataset: !function fixture_docs.load\n"
            f"dataset_kwargs:\n  docs_file: {tmp_path / (task + '.json')}\n")
    docs["cola_race"] = list(paper.race_questions(datasets.Dataset.from_list([RACE_RAW])))
    return docs


def test_paper_tasks_through_lm_eval(tmp_path):
    docs = _paper_fixture(tmp_path)
    gold = {paper.PAPER_TASKS[t].parse(d).prompt: paper.PAPER_TASKS[t].parse(d).target
            for t, task_docs in docs.items() for d in task_docs}
    results = run_fewshot(ToyLM("gold", gold), ["cola_fewshot"], tmp_path / "gold", task_dirs=[tmp_path])
    assert {t: r.value for t, r in results.items()} == {t: 1.0 for t in docs}
    assert results["cola_squad"].metric == "exact_match" and results["cola_race"].n == 2
    prompt = json.loads((tmp_path / "gold" / SAMPLES_DIR / "cola_mmlu.jsonl").read_text())["prompt"]
    demos = [paper.mmlu(d) for d in paper.demos.MMLU]
    assert prompt == "".join(f"{d.prompt} {d.target}\n\n" for d in demos) + paper.mmlu(DOCS["cola_mmlu"]).prompt
    label = run_fewshot(ToyLM("label"), ["cola_siqa", "cola_mmlu", "cola_squad"], tmp_path / "label",
                        task_dirs=[tmp_path])
    assert {t: r.value for t, r in label.items()} == {"cola_siqa": 1.0, "cola_mmlu": 0.0, "cola_squad": 0.0}


# ------------------------------------------------------------------------------------------ leaderboard rows
def test_rows_validate_and_rank(runs, tmp_path):
    rows = []
    for mode in ("empty", "label", "gold"):
        rows += fewshot_rows(runs[mode], method="toy", trial=mode, config={"answerer": mode}, seed=0,
                             checkpoint=None, axes={"answerer": mode})
    assert len(rows) == 6 and len({r["row_id"] for r in rows}) == 6
    row = next(r for r in rows if r["trial"] == "gold" and r["protocol"] == "fewshot/latentlm_nextsentence")
    protocol, metrics = json.loads(row["protocol_json"]), json.loads(row["metrics_json"])
    assert protocol["hash"] == row["protocol_hash"] and protocol["version"] == 1 and row["dataset"] == "embedded:wiki"
    assert protocol["scoring"] == {"ci_level": 0.95, "bootstrap_replicates": 1000, "bootstrap_seed": 0}
    assert metrics == {"accuracy": 1.0, "accuracy_ci_low": 1.0, "accuracy_ci_high": 1.0, "samples": float(N_DOCS)}
    assert json.loads(row["evidence_json"])["per_prompt"]["accuracy"] == [[1.0] * N_DOCS]
    board = leaderboard.Leaderboard(tmp_path / leaderboard.FILENAME)
    board.add(rows)
    table = leaderboard.to_markdown(leaderboard.read(board.path), sort_by="accuracy")
    section = table.split("fewshot/latentlm_nextsentence")[1]
    order = [t for t in ("gold", "label", "empty") if t in section]
    assert sorted(order, key=section.index) == ["gold", "label", "empty"]
    evidence = {json.loads(r["axes"])["answerer"]: json.loads(r["evidence_json"]) for r in rows
                if r["protocol"] == "fewshot/latentlm_nextsentence"}
    assert significance.paired_difference(evidence["gold"], evidence["empty"], "accuracy").p_value < 0.05


def test_sampler_settings_split_hash_from_scoring_hash(runs):
    from dataclasses import replace
    protocol = runs["gold"]["latentlm_lastword"].protocol
    other = replace(protocol, sampler={"steps": 10})
    assert other.hash != protocol.hash and other.scoring_hash == protocol.scoring_hash
    assert replace(protocol, items={**protocol.items, "n": 3}).scoring_hash != protocol.scoring_hash


# ---------------------------------------------------------------------------- in a family's evaluation
def test_a_cola_dlm_evaluation_adds_fewshot_rows_next_to_its_continuation_rows(tiny_corpus, tiny_lm_dir, tmp_path):
    """``eval.fewshot.tasks`` runs on the evaluation's own generator (a random Cola DLM here, through LatentLM and
    lm-eval), and the sweep's rows hold the continuation row and one ``fewshot/<task>`` row of the same trial."""
    import torch

    from latentlm.models.dlm import ColaDLM
    from latentlm.platform.data.windows import load_tokenizer
    from latentlm.platform.evaluation.continuation import Evaluation
    from latentlm.platform.evaluation.fewshot.runner import evaluate_fewshot
    from latentlm.platform.evaluation.protocol import EvalProtocol
    from latentlm.platform.methods.dlm.config import build_dlm_config
    from latentlm.platform.methods.dlm.generator import ColaDLMGenerator
    from latentlm.platform.sweep import add_rows
    small = {"latent_dim": 4, "hidden_dim": 16, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "block_size": 4}
    tokenizer = load_tokenizer(str(tiny_lm_dir))
    cfg = build_dlm_config("tiny", {
        "data": {"corpus": str(tiny_corpus), "tokenizer": str(tiny_lm_dir), "seq_len": 64, "valid_fraction": 0.1,
                 "test_fraction": 0.1},
        "dlm": {"vae": {**small, "vocab_size": len(tokenizer)}, "dit": {"hidden_dim": 16, "depth": 1, "n_heads": 2}},
        "eval": {"datasets": [str(tiny_corpus)], "steps": 2, "sampling_seeds": [3],
                 "fewshot": {"tasks": ["latentlm_lastword"], "n_docs": 6}}})
    torch.manual_seed(0)
    generator = ColaDLMGenerator(cfg, ColaDLM(cfg.dlm), eos_id=tokenizer.eos_token_id)
    results = evaluate_fewshot(cfg, generator, tmp_path / "fewshot")
    result = results["latentlm_lastword"]
    assert result.n == 6 and 0 <= result.ci_low <= result.value <= result.ci_high <= 1
    assert result.protocol.sampler["conditional"] is True and result.protocol.sampler["steps"] == 2
    evaluation = Evaluation(EvalProtocol.from_config(cfg), {str(tiny_corpus): {"mauve": 0.5}}, fewshot=results)
    board = tmp_path / "leaderboard.parquet"
    add_rows(board, "dlm", "s", "t1", {"sampler.first_block": "clean"}, cfg, {"evaluation": evaluation,
                                                                             "checkpoint": "ckpt"}, 1.0)
    frame = leaderboard.Leaderboard(board).frame()
    assert sorted(frame["protocol"]) == ["continuation/v3", "fewshot/latentlm_lastword"]
    row = frame[frame["protocol"] == "fewshot/latentlm_lastword"].iloc[0]
    metrics = json.loads(row["metrics_json"])
    assert row["trial"] == "t1" and metrics["accuracy"] == result.value and metrics["samples"] == 6
