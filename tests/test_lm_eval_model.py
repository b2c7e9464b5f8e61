"""latentlm as an lm-evaluation-harness model: a local generative task runs end to end on a tiny random checkpoint of
every family (from Python, and from the command line through ``latentlm lm-eval``), the GPT baseline's
log-likelihoods equal a direct computation from its logits, the latent families refuse them in one line, and
``until`` cuts, EOS, unknown ids and over-long contexts behave as documented.

Checkpoints are written as each family's final stage writes them (random weights, no Ray, no training) over the
word-level test tokenizer; every model is a few thousand parameters, so the file is dominated by one lm-eval
command-line run in a subprocess (its index of lm-eval's ~15k built-in task files alone takes ~9 s)."""
from __future__ import annotations

import copy
import json
import logging
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from latentlm.models.checkpoint import save_tensors, write_json
from latentlm.models.config import ConfigError
from latentlm.platform import registry
from latentlm.platform.cli import main
from latentlm.platform.config import to_dict
from latentlm.platform.evaluation.lm_eval_model import LatentLM, cut_at_stop

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ("ar", "textldm", "dlm", "ldlm")
SEQ_LEN = 16
DOCS = [{"question": "the river", "answer": "city"}, {"question": "the old king", "answer": "war"},
        {"question": "a small school by the north road", "answer": "book"}]
MC_DOCS = [{"question": "the river", "choices": ["city", "war music"], "label": 0},
           {"question": "the old king", "choices": ["war", "book", "art"], "label": 1}]
TINY = {"hidden_dim": 32, "n_heads": 2}
NO_LOGLIKELIHOOD = "{} has no token log-likelihood (a latent diffusion model): run generative tasks " \
                   "(output_type: generate_until) only"


def _data(tokenizer: str) -> dict:
    return {"tokenizer": tokenizer, "seq_len": SEQ_LEN, "vocab_limit": None}


def _textldm(directory: Path, lm: str) -> None:
    from latentlm.models.dit import TextDiT
    from latentlm.models.text_vae import TextVAE
    from latentlm.platform.methods.textldm.config import build_config
    from latentlm.platform.methods.textldm.generator import LatentNormalizer
    cfg = build_config("tiny", {"data": _data(lm), "dit": {**TINY, "depth": 1},
                                "vae": {**TINY, "vocab_size": 40, "latent_dim": 4, "encoder_layers": 1,
                                        "decoder_layers": 1, "repa": {"enabled": False}}})
    save_tensors(directory / "vae.safetensors", TextVAE(cfg.vae).state_dict())
    save_tensors(directory / "dit.safetensors", TextDiT(cfg.dit).state_dict())
    save_tensors(directory / "normalizer.safetensors", LatentNormalizer(cfg.dit.latent_dim).state_dict())
    _finish(directory, cfg, "dit")


def _dlm(directory: Path, lm: str) -> None:
    from latentlm.models.dlm import ColaDLM
    from latentlm.platform.methods.dlm.config import build_dlm_config
    block = {"latent_dim": 4, "block_size": 4}
    cfg = build_dlm_config("tiny", {"data": _data(lm), "dlm": {
        "vae": {**TINY, **block, "vocab_size": 40, "encoder_layers": 1, "decoder_layers": 1},
        "dit": {**TINY, **block, "depth": 1}}, "eval": {"fewshot": {"tasks": []}}})  # a 16-token window
    save_tensors(directory / "joint.safetensors", ColaDLM(cfg.dlm).state_dict())
    _finish(directory, cfg, "dlm_joint")


def _ldlm(directory: Path, lm: str) -> None:
    from latentlm.models.ldlm import LDLM
    from latentlm.models.token_encoder import HiddenStats
    from latentlm.platform.methods.ldlm.config import build_ldlm_config
    coder = {**TINY, "depth": 1}
    cfg = build_ldlm_config("tiny", {"data": _data(lm), "token_encoder": {"model": lm}, "ldlm": {
        "vocab_size": 40, "hidden_size": 32, "latent_dim": 4, "num_latents": 4, "encoder": coder, "decoder": coder,
        "token_decoder": {**TINY, "layers": 1}, "denoiser": {**TINY, "depth": 1}}})
    save_tensors(directory / "ldlm.safetensors", LDLM(cfg.ldlm).state_dict())
    save_tensors(directory / "hidden_stats.safetensors", HiddenStats(cfg.ldlm.hidden_size).state_dict())
    _finish(directory, cfg, "ldlm")


def _ar(directory: Path, lm: str) -> None:
    """On a compact vocabulary without ids 1 and 26..33 (they map to its unknown class, decoded as -1)."""
    from latentlm.models.gpt import GPT
    from latentlm.models.vocab import CompactVocab
    from latentlm.platform.methods.ar.config import build_ar_config
    vocab = CompactVocab(torch.tensor([0, *range(2, 26)]), 34)
    cfg = build_ar_config("tiny", {"match": "none", "data": _data(lm),
                                   "gpt": {**TINY, "depth": 1, "vocab_size": vocab.size}})
    save_tensors(directory / "gpt.safetensors", {f"model.{k}": v for k, v in GPT(cfg.gpt).state_dict().items()})
    save_tensors(directory / "vocab.safetensors", vocab.tensors())
    _finish(directory, cfg, "ar")


def _finish(directory: Path, cfg, stage: str) -> None:
    write_json(directory / "config.json", to_dict(cfg))
    write_json(directory / "state.json", {"stage": stage, "step": 1})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_lm_dir) -> dict[str, Path]:
    """family -> a final checkpoint directory with random weights."""
    root = tmp_path_factory.mktemp("lm_eval_checkpoints")
    out = {}
    for family, write in (("textldm", _textldm), ("dlm", _dlm), ("ldlm", _ldlm), ("ar", _ar)):
        torch.manual_seed(0)
        write(root / family, str(tiny_lm_dir))
        out[family] = root / family
    return out


def _task_yaml(name: str, data: Path, cache: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {cache}\ntest_split: test\n{body}metadata:\n  version: 1.0\n")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    """A folder of two local lm-eval tasks: ``tiny_gen`` (generate_until, exact_match) and ``tiny_mc``
    (multiple_choice, acc)."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for name, docs in (("gen", DOCS), ("mc", MC_DOCS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "tiny_gen.yaml").write_text(_task_yaml("tiny_gen", root / "gen.jsonl", root / "cache", (
        'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")))
    (root / "tiny_mc.yaml").write_text(_task_yaml("tiny_mc", root / "mc.jsonl", root / "cache", (
        'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")))
    return root


@pytest.fixture
def in_process_cli(monkeypatch):
    """lm-eval's command line run in this process: it indexes only --include_path (lm-eval's ~15k built-in task
    files take ~9 s; the subprocess test runs the real thing), and its logging set-up (once per process: a handler on
    the sys.stderr of that moment, here a test's capture) is undone afterwards."""
    import lm_eval.utils
    from lm_eval.tasks.manager import TaskIndex
    builtin, build = Path(lm_eval.tasks.__file__).parent, TaskIndex.build
    monkeypatch.setattr(TaskIndex, "build", staticmethod(
        lambda paths, **kwargs: build([p for p in paths if Path(p) != builtin], **kwargs)))
    logger = logging.getLogger("lm_eval")
    monkeypatch.setattr(lm_eval.utils, "_LOGGING_CONFIGURED", False)
    for attribute in ("handlers", "propagate", "level"):
        monkeypatch.setattr(logger, attribute, copy.copy(getattr(logger, attribute)))


def _evaluate(model, tasks: Path, task: str = "tiny_gen", **kwargs) -> dict:
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=[task], task_manager=manager, **kwargs)


def _request(context: str, max_gen_toks: int = 4, until=("\n",)) -> Instance:
    return Instance("generate_until", {}, (context, {"until": list(until), "max_gen_toks": max_gen_toks}), 0)


def _scored(kind: str, *args: str) -> Instance:
    """A loglikelihood (context, continuation) or loglikelihood_rolling (text,) request."""
    return Instance(kind, {}, args, 0)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- end to end -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_simple_evaluate_runs_a_generative_task_on_every_family(family, checkpoints, tasks, monkeypatch, caplog):
    calls, original = [], LatentLM.generate_until

    def counted(self, requests, **kwargs):
        calls.append(len(requests))
        return original(self, requests, **kwargs)

    monkeypatch.setattr(LatentLM, "generate_until", counted)
    out = _evaluate("latentlm", tasks, model_args=f"checkpoint={checkpoints[family]},steps=2")
    assert 0 <= out["results"]["tiny_gen"]["exact_match,none"] <= 1
    assert calls == [len(DOCS)] and out["n-samples"]["tiny_gen"]["effective"] == len(DOCS)
    samples = out["samples"]["tiny_gen"]
    assert [s["doc"] for s in samples] == DOCS
    for sample in samples:  # one continuation per doc, cut at "\n", at most max_gen_toks words
        (text,), = sample["resps"]
        assert isinstance(text, str) and "\n" not in text and len(text.split()) <= 8
    config = out["config"]
    assert config["latentlm_family"] == family and config["latentlm_steps"] == 2
    assert config["latentlm_conditional"] is (family != "ldlm")
    warned = [r for r in caplog.records if "samples unconditionally" in r.getMessage()]
    assert len(warned) == (1 if family == "ldlm" else 0)


def test_the_command_line_runs_a_task_in_a_subprocess(checkpoints, tasks, tmp_path):
    """``latentlm lm-eval`` hands its arguments to lm-eval's own command line, with "latentlm" registered."""
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "latentlm.platform.cli", "lm-eval", "--model", "latentlm", "--model_args",
         f"checkpoint={checkpoints['dlm']},steps=2", "--tasks", "tiny_gen", "--include_path", str(tasks),
         "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "|tiny_gen|" in run.stdout and "exact_match" in run.stdout
    (samples,) = out.rglob("samples_tiny_gen_*.jsonl")
    assert len(samples.read_text().splitlines()) == len(DOCS)
    (results,) = out.rglob("results_*.json")
    assert json.loads(results.read_text())["config"]["latentlm_family"] == "dlm"


def test_a_latentlm_instance_from_an_in_memory_generator_is_evaluated(checkpoints, tasks):
    from latentlm.platform.reevaluate import load_config
    generator = registry.get("textldm").load_generator(checkpoints["textldm"], True, "cpu")
    model = LatentLM.from_generator(generator, "textldm", load_config(checkpoints["textldm"]), steps=2, seed=3,
                                    batch_size=2)
    out = _evaluate(model, tasks)
    assert out["n-samples"]["tiny_gen"]["effective"] == len(DOCS)
    assert {k: out["config"][f"latentlm_{k}"] for k in ("seed", "cfg_scale", "batch_size", "grid", "dtype")} == {
        "seed": 3, "cfg_scale": 7.0, "batch_size": 2, "grid": "schedule", "dtype": "float32"}


# -- log-likelihoods ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ar_model(checkpoints) -> LatentLM:
    return LatentLM(checkpoint=checkpoints["ar"], use_ema=False, device="cpu")   # a Path, as from Python


def _direct_logprob(model: LatentLM, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """log p(continuation | context) from the GPT's logits, computed here in one unbatched forward pass."""
    g = model.generator
    ids = g.model_ids(torch.tensor([context + continuation]))
    with torch.no_grad():
        logprobs = F.log_softmax(g.model(ids[:, :-1]).float(), -1)[0, -len(continuation):]
    target = ids[0, -len(continuation):]
    return float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def test_ar_loglikelihood_equals_the_sum_of_its_continuation_logprobs(ar_model):
    tok = ar_model.tokenizer
    requests = [_scored("loglikelihood", "the river", " city"),
                _scored("loglikelihood", "the old king ", "war music"),   # the space moves to the continuation
                _scored("loglikelihood", "", "the river"),                 # an empty context: after EOS
                _scored("loglikelihood", "the river", " bridge")]           # bridge: the unknown class
    got = ar_model.loglikelihood(requests)
    expected = [_direct_logprob(ar_model, _ids(tok, "the river"), _ids(tok, "city")),
                _direct_logprob(ar_model, _ids(tok, "the old king"), _ids(tok, "war music")),
                _direct_logprob(ar_model, [tok.eos_token_id], _ids(tok, "the river")),
                _direct_logprob(ar_model, _ids(tok, "the river"), _ids(tok, "bridge"))]
    for (logprob, greedy), (want, want_greedy) in zip(got, expected):
        assert logprob < 0 and logprob == pytest.approx(want, abs=1e-5) and greedy == want_greedy
    # a context longer than the window keeps its last tokens: the GPT reads data.seq_len positions
    long = " ".join(["the old river"] * 10)
    (logprob, _), = ar_model.loglikelihood([_scored("loglikelihood", long, " city")])
    assert logprob == pytest.approx(_direct_logprob(ar_model, _ids(tok, long)[-SEQ_LEN:], _ids(tok, "city"))[0],
                                    abs=1e-5)


def test_ar_rolling_loglikelihood_scores_every_token_once(ar_model):
    tok = ar_model.tokenizer
    short, long = "the river city", " ".join(["the old river"] * 8)   # 3 tokens; 24 tokens: two windows
    got = ar_model.loglikelihood_rolling([_scored("loglikelihood_rolling", short),
                                          _scored("loglikelihood_rolling", long)])
    ids = _ids(tok, long)
    assert got[0] == pytest.approx(_direct_logprob(ar_model, [tok.eos_token_id], _ids(tok, short))[0], abs=1e-5)
    # the first window predicts 16 tokens after EOS, the last one the other 8 from the 16 positions before its end
    in_windows = (_direct_logprob(ar_model, [tok.eos_token_id], ids[:SEQ_LEN])[0]
                  + _direct_logprob(ar_model, ids[-(SEQ_LEN + 1):SEQ_LEN], ids[SEQ_LEN:])[0])
    assert got[1] == pytest.approx(in_windows, abs=1e-4)


def test_a_multiple_choice_task_scores_the_ar_baseline(checkpoints, tasks):
    out = _evaluate("latentlm", tasks, task="tiny_mc", model_args=f"checkpoint={checkpoints['ar']}")
    assert 0 <= out["results"]["tiny_mc"]["acc,none"] <= 1
    logprobs = [lp for s in out["samples"]["tiny_mc"] for (lp, _greedy), in s["resps"]]
    assert len(logprobs) == sum(len(d["choices"]) for d in MC_DOCS)
    assert all(torch.isfinite(torch.tensor(lp)) and lp < 0 for lp in logprobs)


@pytest.mark.parametrize("family", ["textldm", "dlm", "ldlm"])
def test_latent_families_refuse_loglikelihoods_in_one_line_naming_the_family(family, checkpoints):
    model = LatentLM(checkpoint=str(checkpoints[family]))
    for kind, args in (("loglikelihood", ("the river", " city")), ("loglikelihood_rolling", ("the river",))):
        with pytest.raises(ConfigError) as err:
            getattr(model, kind)([_scored(kind, *args)])
        assert str(err.value) == NO_LOGLIKELIHOOD.format(family)


def test_the_module_entry_point_prints_the_refusal_as_one_line(checkpoints, tasks, in_process_cli, monkeypatch,
                                                                capsys):
    """``python -m latentlm.platform.evaluation.lm_eval_model``: lm-eval's command line, errors as ``latentlm``
    reports config errors (run here in-process, as ``runpy`` runs ``-m``)."""
    monkeypatch.setattr(sys, "argv", ["lm_eval_model", "--model", "latentlm", "--model_args",
                                      f"checkpoint={checkpoints['textldm']}", "--tasks", "tiny_mc",
                                      "--include_path", str(tasks), "--device", "cpu"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already (by this file)
        runpy.run_module("latentlm.platform.evaluation.lm_eval_model", run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "latentlm: config error: " + NO_LOGLIKELIHOOD.format("textldm")


# -- model_args ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_args, message", [
    ("steps=2", "model_args.checkpoint: expected a final checkpoint directory (checkpoint=DIR), got ''"),
    ("checkpoint={root}/nowhere", "model_args.checkpoint: checkpoint {root}/nowhere: no such directory"),
    ("checkpoint={root}", "model_args.checkpoint: checkpoint {root}: no state.json (expected a training "
                          "checkpoint directory)"),
    ("checkpoint={root}/dlm,temperature=0.5", "unknown config key model_args.temperature (valid keys of model_args: "
                                              "batch_size, cfg_scale, checkpoint, device, max_batch_size, seed, "
                                              "steps, use_ema)"),
    ("checkpoint={root}/dlm,steps=0", "model_args.steps: expected a positive step count, got 0"),
])
def test_bad_model_args_fail_naming_the_argument_before_any_model_is_built(model_args, message, checkpoints,
                                                                           monkeypatch):
    root = checkpoints["dlm"].parent
    monkeypatch.setattr(registry, "get", lambda name: pytest.fail("a model was built"))
    with pytest.raises(ConfigError) as err:
        LatentLM.create_from_arg_string(model_args.format(root=root), {"batch_size": 1, "device": "cpu"})
    assert str(err.value) == message.format(root=root)


def test_the_command_line_names_a_bad_model_arg_in_one_line(checkpoints, tasks, in_process_cli, capsys):
    args = ["lm-eval", "--model", "latentlm", "--model_args", f"checkpoint={checkpoints['ar']},step=2",
            "--tasks", "tiny_gen", "--include_path", str(tasks)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "latentlm: config error: unknown config key model_args.step ")


def test_lm_eval_options_fill_in_what_model_args_leave_out(checkpoints):
    """lm-eval always passes its --batch_size (default 1) and --device (default cuda:0): model_args win, "auto" batch
    sizes keep ours, and its CUDA default is dropped on a machine without CUDA."""
    model = LatentLM.create_from_arg_obj({"checkpoint": str(checkpoints["ar"]), "seed": 5},
                                         {"batch_size": 1, "device": "cuda:0", "max_batch_size": None})
    assert model.options.batch_size == 1 and model.options.seed == 5
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    model = LatentLM.create_from_arg_obj({"checkpoint": str(checkpoints["ar"]), "batch_size": 3},
                                         {"batch_size": "auto", "device": "cpu"})
    assert model.options.batch_size == 3
    assert LatentLM.create_from_arg_obj({"checkpoint": str(checkpoints["ar"])},
                                        {"batch_size": "auto:4"}).options.batch_size == 8


# -- generation ---------------------------------------------------------------------------------------------------


class Scripted:
    """A stand-in conditional generator: returns the given tokenizer ids and records the prompts it was given."""
    device = "cpu"

    def __init__(self, rows: list[list[int]]):
        self.rows, self.prompts, self.batches = rows, [], []

    def generate(self, prompts, n, steps=None, cfg_scale=None, grid=None, generator=None):
        self.prompts.extend(prompts.tolist())
        self.batches.append(len(prompts))
        return torch.tensor(self.rows[:len(prompts)])[:, :n]


@pytest.fixture(scope="module")
def dlm_cfg(checkpoints):
    from latentlm.platform.reevaluate import load_config
    return load_config(checkpoints["dlm"])


def test_text_is_cut_at_eos_and_the_first_stop_string_and_unknown_ids_are_dropped(dlm_cfg):
    tok = LatentLM.from_generator(Scripted([[0]]), "dlm", dlm_cfg).tokenizer
    city, king, war, dot = (_ids(tok, w)[0] for w in ("city", "king", "war", "."))
    cases = [([city, -1, king, dot, war], ["."], "city king "),       # -1: a compact vocabulary's unknown class
             ([city, -1, king, dot, war], ["king", "."], "city "),    # the earliest stop string wins
             ([war, tok.eos_token_id, city, city, city], ["\n"], "war"),
             ([war, city, war, city, war], [], "war city war city war")]
    for row, until, text in cases:
        model = LatentLM.from_generator(Scripted([row]), "dlm", dlm_cfg)
        assert model.generate_until([_request("the river", 5, until)], disable_tqdm=True) == [text]
    assert cut_at_stop("a\n\nb", ["", "\n\n"]) == "a"


def test_a_long_context_keeps_its_suffix_and_equal_lengths_share_a_batch(dlm_cfg):
    generator = Scripted([[3] * 6] * 3)
    model = LatentLM.from_generator(generator, "dlm", dlm_cfg, batch_size=2)
    long = " ".join(["the old river city"] * 10)   # 40 tokens; the window leaves 16 - 6 = 10 for the context
    requests = [_request(long, 6), _request("the river", 6), _request("a king", 6), _request("", 6)]
    assert len(model.generate_until(requests, disable_tqdm=True)) == 4
    tok = model.tokenizer
    assert sorted(generator.prompts) == sorted([_ids(tok, long)[-10:], _ids(tok, "the river"), _ids(tok, "a king"),
                                                [tok.eos_token_id]])
    assert sorted(generator.batches) == [1, 1, 2]   # the two 2-token contexts went in one call
    with pytest.raises(ConfigError, match="^max_gen_toks: expected 1 to data.seq_len - 1 = 15"):
        model.generate_until([_request("the river", SEQ_LEN)])


@pytest.mark.parametrize("family", ["ar", "textldm", "dlm"])
def test_real_samplers_continue_contexts_longer_than_the_window(family, checkpoints):
    model = LatentLM(checkpoint=str(checkpoints[family]), steps=2)
    texts = model.generate_until([_request(" ".join(["the old river city"] * 10), 8), _request("a", 8)],
                                 disable_tqdm=True)
    assert len(texts) == 2 and all(len(t.split()) <= 8 for t in texts)


def test_a_run_is_reproducible_from_its_seed(checkpoints):
    requests = [_request(d["question"], 8) for d in DOCS] * 2

    def run(seed: int) -> list[str]:
        return LatentLM(checkpoint=str(checkpoints["textldm"]), steps=2, seed=seed).generate_until(requests,
                                                                                                  disable_tqdm=True)

    first = run(0)
    assert run(0) == first and run(1) != first


def test_the_gpt_decodes_greedily_unless_sampling_is_asked_for(ar_model):
    """lm-eval's default: greedy. ``do_sample`` with a temperature samples, from the run's generator."""
    greedy = [_request("the river", 6), _request("the river", 6)]
    assert len(set(ar_model.generate_until(greedy, disable_tqdm=True))) == 1
    hot = [Instance("generate_until", {}, ("the river", {"until": [], "max_gen_toks": 6, "do_sample": True,
                                                         "temperature": 5.0}), 0) for _ in range(4)]
    assert len(set(ar_model.generate_until(hot, disable_tqdm=True))) > 1
    assert ar_model.generator.model.config.temperature == 1.0  # the checkpoint's own setting is restored
