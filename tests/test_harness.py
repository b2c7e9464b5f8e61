"""The shared scoring harness: every id is scored, determinism, MAUVE's seed spread, CIs, the reference rows'
cache, and on the real embedded data the order of the human ceiling, the floors and degenerate generators."""
import json

import numpy as np
import pytest
import torch

from latentlm.platform.evaluation import harness
from latentlm.platform.evaluation.protocol import ContinuationEvalConfig, UnconditionalEvalConfig


@pytest.fixture(scope="module")
def word_tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def _texts_as_ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_render_keeps_every_id_eos_and_unknown_included(word_tokenizer):
    eos = word_tokenizer.eos_token_id
    word = word_tokenizer("river", add_special_tokens=False)["input_ids"][0]
    texts = harness.render(word_tokenizer, [[eos, eos, eos], [word, -1, eos], []])
    assert texts[0].split() == [word_tokenizer.eos_token] * 3  # an all-EOS generation is not an empty text
    assert "river" in texts[1] and texts[1].count(word_tokenizer.eos_token) + texts[1].count(
        word_tokenizer.unk_token or "\0") >= 2                  # the unknown id and the EOS both stay visible
    assert texts[2] == ""


def _scoring_config(lm, **kw):
    return ContinuationEvalConfig(**{"num_samples": 12, "sampling_seeds": [0, 1], "mauve_kmeans_seeds": [25, 26, 27],
                                     "mauve_model": lm, "genppl_model": lm, "bertscore_model": lm,
                                     "bertscore_num_layers": 2, "batch_size": 4, "bootstrap_replicates": 200, **kw})


def test_same_generations_scored_twice_give_identical_numbers(tiny_corpus, tiny_lm_dir, word_tokenizer, single_thread):
    lm = str(tiny_lm_dir)
    e = _scoring_config(lm)
    docs = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    ids = _texts_as_ids(word_tokenizer, docs[:36])
    refs, gens = [x[:12] for x in ids[:12]], {0: [x[:12] for x in ids[12:24]], 1: [x[:12] for x in ids[24:36]]}
    first = harness.score(e, harness.Scorers(e), word_tokenizer, gens, refs, paired=True)
    second = harness.score(e, harness.Scorers(e), word_tokenizer, gens, refs, paired=True)  # fresh scorers
    assert first.row == second.row and first.evidence == second.evidence
    # rows scored against the same references featurize them once per Scorers, to the same numbers
    scorers, featurized = harness.Scorers(e), []
    featurizer = scorers.featurizer
    scorers.featurizer = lambda texts: featurized.append(len(texts)) or featurizer(texts)
    again = [harness.score(e, scorers, word_tokenizer, gens, refs, paired=True) for _ in range(2)]
    assert featurized == [len(refs)] and all(a.row == first.row for a in again)
    row = first.row
    for name in ("rouge1", "rouge2", "rougeL", "bertscore", "gen_ppl", "entropy", "diversity", "gen_tokens"):
        assert name in row and f"{name}_std" in row, name
    for name in harness.CI_METRICS:  # every interval brackets its own estimate
        assert row[f"{name}_ci_low"] <= row[name] + 1e-9 <= row[f"{name}_ci_high"] + 2e-9, name
    assert row["gen_tokens"] == 12.0 and row["seeds"] == 2 and row["samples"] == 12 and set(first.per_seed) == {0, 1}
    # the spread is over every (sampling seed, k-means seed) pair; its two components are reported too
    assert row["mauve"] == pytest.approx(sum(s["mauve"] for s in first.per_seed.values()) / 2)
    assert row["mauve_std"] > 0 and row["mauve_kmeans_std"] >= 0 and row["mauve_sampling_std"] >= 0
    # the evidence reproduces the row: n prompts, S seeds, K quantisations per seed
    ev = first.evidence
    assert ev["n"] == 12 and ev["seeds"] == [0, 1] and len(ev["mauve"]["ref_labels"]) == 2
    assert len(ev["mauve"]["ref_labels"][0]) == 3 and len(ev["per_prompt"]["rouge1"][1]) == 12
    # unpaired tasks (unconditional) have no ROUGE / BERTScore
    u = UnconditionalEvalConfig(num_samples=12, sampling_seeds=[0], mauve_kmeans_seeds=[25], mauve_model=lm,
                                genppl_model=lm, batch_size=4, bootstrap_replicates=100)
    unpaired = harness.score(u, harness.Scorers(u), word_tokenizer, {0: gens[0]}, refs, paired=False).row
    assert "rouge1" not in unpaired and "bertscore" not in unpaired and unpaired["mauve_std"] == 0.0


def test_generations_must_pair_with_references(tiny_lm_dir, word_tokenizer):
    e = _scoring_config(str(tiny_lm_dir))
    with pytest.raises(ValueError, match="seed 0 has 2 generations for 3 references"):
        harness.score(e, harness.Scorers(e), word_tokenizer, {0: [[1], [2]]}, [[1], [2], [3]], paired=True)


class _RefusesToScore:
    """Scorers that fail when used: a cached reference row must not touch them."""

    def __getattr__(self, name):
        raise RuntimeError(f"recomputed (scorers.{name} used)")


def _score_rows(e, scorers, tokenizer, rows, cache_dir=None, scoring_hash=""):
    return harness.score_reference_rows(e, scorers, tokenizer, rows, cache_dir, scoring_hash)


@pytest.fixture
def ceiling_inputs(tiny_corpus, tiny_lm_dir, word_tokenizer):
    lm = str(tiny_lm_dir)
    e = UnconditionalEvalConfig(num_samples=12, sampling_seeds=[0], mauve_kmeans_seeds=[25], mauve_model=lm,
                                genppl_model=lm, batch_size=4, bootstrap_replicates=100)
    docs = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    ids = [x[:12] for x in _texts_as_ids(word_tokenizer, docs[:26])]
    return e, ids


def test_reference_rows_are_cached_by_scoring_protocol_and_texts(ceiling_inputs, word_tokenizer, single_thread,
                                                                 tmp_path):
    e, ids = ceiling_inputs
    refs, others = ids[:12], ids[12:24]
    rows = {"human-ceiling": harness.human_ceiling(refs, others)}
    cached = _score_rows(e, harness.Scorers(e), word_tokenizer, rows, tmp_path, "scoring-a")["human-ceiling"]
    uncached = _score_rows(e, harness.Scorers(e), word_tokenizer, rows)["human-ceiling"]
    assert cached.row == uncached.row and cached.evidence == uncached.evidence
    assert len(list(tmp_path.glob("reference-*.json"))) == 1
    again = _score_rows(e, _RefusesToScore(), word_tokenizer, rows, tmp_path, "scoring-a")["human-ceiling"]
    assert again.row == cached.row and again.evidence == cached.evidence  # read back exactly, nothing scored
    for scoring_hash, other_texts in (("scoring-b", others), ("scoring-a", [*others[:-1], ids[24]])):
        changed = {"human-ceiling": harness.human_ceiling(refs, other_texts)}
        with pytest.raises(RuntimeError, match="recomputed"):  # another protocol or other texts: a new row
            _score_rows(e, _RefusesToScore(), word_tokenizer, changed, tmp_path, scoring_hash)


def test_concurrent_trials_split_the_reference_rows_instead_of_scoring_them_twice(ceiling_inputs, word_tokenizer,
                                                                                   single_thread, tmp_path, monkeypatch):
    """A row another trial holds is skipped, the next one scored, and the held row read back once it is written
    (scored exactly once overall)."""
    import threading

    from filelock import FileLock
    e, ids = ceiling_inputs
    rows = {"first": harness.human_ceiling(ids[:12], ids[12:24]),
            "second": harness.ReferenceRow({0: ids[13:25]}, ids[:12], False)}
    # the row "another trial" scores: its cache file is locked while that trial works on it
    alone = _score_rows(e, harness.Scorers(e), word_tokenizer, {"first": rows["first"]}, tmp_path / "probe", "h")
    (written,) = (tmp_path / "probe").glob("reference-*.json")
    held = FileLock(f"{tmp_path / written.name}.lock")
    held.acquire()
    scored_labels, real_score = [], harness.score
    monkeypatch.setattr(harness, "score", lambda *a, **k: scored_labels.append(a[-1]) or real_score(*a, **k))
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        _score_rows(e, harness.Scorers(e), word_tokenizer, rows, tmp_path, "h")))
    worker.start()
    for _ in range(600):  # the worker scores the free row while the other one is held
        if len(list(tmp_path.glob("reference-*.json"))) == 1:
            break
        worker.join(0.1)
    assert scored_labels == ["second"] and worker.is_alive()  # waiting for "first", not scoring it
    (tmp_path / written.name).write_text(written.read_text())  # the other trial finishes "first"
    held.release()
    worker.join(60)
    assert not worker.is_alive() and scored_labels == ["second"]
    assert result["first"].row == alone["first"].row and list(result) == ["first", "second"]


# -- the real embedded data: ceiling, floors and degenerate generators in one scoring pass ----------

class _FixedGenerator(torch.nn.Module):
    """A 'model' whose continuation of every prompt is ``make(length)`` (what a degenerate sampler emits)."""

    def __init__(self, make):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for generate_continuations
        self.make = make

    def generate(self, prompts, length, **_):
        return torch.tensor([self.make(length) for _ in range(len(prompts))], dtype=torch.long)


@pytest.fixture(scope="module")
def embedded_board(single_thread):
    """One scoring pass on held-out embedded wiki text with the protocol's scorers (Gen-PPL and MAUVE features
    from one pass of the embedded SmolLM2 instead of Gemma-3, for speed): the human ceiling, the four floors and two degenerate generators
    run through the continuation task's own generation loop (one that emits EOS at once, one that writes
    three tokens and then EOS). Returns name -> harness.Scored."""
    from latentlm.platform.data.windows import load_tokenizer
    from latentlm.platform.evaluation.continuation import (continuation_samples, generate_continuations,
                                                           held_out_documents, reference_rows, training_token_counts)
    from latentlm.platform.methods.textldm.config import build_config
    cfg = build_config("tiny", {"eval": {"num_samples": 64, "sampling_seeds": [0], "mauve_kmeans_seeds": [25, 26],
                                         "genppl_model": "embedded:smollm2", "mauve_model": "embedded:smollm2",
                                         "batch_size": 16,
                                         "bootstrap_replicates": 500, "datasets": ["embedded:wiki"]}})
    e = cfg.eval
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    drawn = continuation_samples(held_out_documents(cfg, "embedded:wiki"), tokenizer, cfg, count=128)
    samples, others = drawn[:64], drawn[64:]
    scorers = harness.Scorers(e)
    counts = training_token_counts(cfg, tokenizer)
    board = reference_rows(e, scorers, tokenizer, samples, others, counts, None, "")
    eos = tokenizer.eos_token_id
    word = tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    fakes = {"eos-at-once": _FixedGenerator(lambda n: [eos] * n),
             "three-tokens": _FixedGenerator(lambda n: ([word] * 3 + [eos] * n)[:n])}
    targets = [s.target_ids for s in samples]
    generated = {}
    for name, model in fakes.items():
        generated[name] = generate_continuations(model, samples, cfg, 0)
        board[name] = harness.score(e, scorers, tokenizer, {0: generated[name]}, targets, paired=True)
    return board, generated, targets, cfg


def _below(board, low: str, high: str, metric: str = "mauve") -> bool:
    """``low`` is significantly worse than ``high`` (paired bootstrap over the shared prompts, p < 0.05)."""
    from latentlm.platform.evaluation import significance
    diff = significance.paired_difference(board[low].evidence, board[high].evidence, metric, replicates=500)
    return diff.difference < 0 and diff.p_value < 0.05


def test_degenerate_generators_are_scored_at_full_length_and_land_at_the_bottom(embedded_board):
    board, generated, targets, cfg = embedded_board
    lengths = [len(t) for t in targets]
    assert min(lengths) >= cfg.eval.target_floor(cfg.data.seq_len)          # the floor held
    for name, ids in generated.items():
        assert [len(x) for x in ids] == lengths, name                       # no EOS shortened anything
        assert board[name].row["gen_tokens"] == pytest.approx(np.mean(lengths))
        for better in ("human-ceiling", "floor:other-document"):
            assert _below(board, name, better), (name, better)
        assert _below(board, name, "floor:other-document", "bertscore"), name
        assert board[name].row["rouge1"] < 0.1 and board[name].row["rouge2"] < 0.01


def test_floors_rank_below_the_ceiling_and_other_documents_only_fool_mauve(embedded_board):
    board = embedded_board[0]
    rows = {name: scored.row for name, scored in board.items()}
    ceiling = rows["human-ceiling"]
    for name in ("floor:prompt-repeat", "floor:unigram", "floor:top-token"):
        assert rows[name]["mauve"] < 0.8 * ceiling["mauve"], (name, rows[name]["mauve"], ceiling["mauve"])
    # significantly so where 64 prompts have the power: near MAUVE's floor; at mid-range (prompt-repeat,
    # ~0.6 here) the detectable difference is ~0.4 (README, power analysis), so there only the ranking holds
    for name in ("floor:unigram", "floor:top-token"):
        assert _below(board, name, "human-ceiling"), (name, rows[name]["mauve"], ceiling["mauve"])
    other = rows["floor:other-document"]
    assert other["mauve"] > 0.8 * ceiling["mauve"]
    assert not _below(board, "floor:other-document", "human-ceiling")       # near the ceiling on MAUVE ...
    # ... but fluent text that ignores the prompt is no better than the degenerate floors on the paired metrics
    assert other["rouge1"] <= max(rows[n]["rouge1"] for n in ("floor:prompt-repeat", "floor:unigram")) + 0.05
    assert other["bertscore"] <= rows["floor:unigram"]["bertscore"] + 0.05 and other["rouge2"] < 0.05
    # real text under a real scorer, and the degenerate repetition is visible in the entropy
    assert ceiling["gen_ppl"] < 100 and ceiling["entropy"] > 2.5
    assert rows["floor:top-token"]["entropy"] == 0.0 and rows["floor:prompt-repeat"]["entropy"] < 0.8 * ceiling["entropy"]
    assert rows["floor:unigram"]["gen_ppl"] > 10 * ceiling["gen_ppl"]
