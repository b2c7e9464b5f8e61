"""The AR baseline on the platform: matched config (size, data, budget, protocol), sweeps, Ray Train run."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.models.gpt import gpt_param_count
from latentlm.platform.config import from_dict, to_dict
from latentlm.platform.evaluation.protocol import EvalProtocol, UnconditionalEvalConfig
from latentlm.platform.methods.ar.config import ARExperimentConfig, build_ar_config, dit_params
from latentlm.platform.methods.dlm.config import build_dlm_config
from latentlm.platform.methods.ldlm.config import build_ldlm_config
from latentlm.platform.methods.textldm.config import build_config


def dit_depth(matched, method) -> int:
    return (matched.dit if method == "textldm" else matched.dlm.dit).depth


@pytest.mark.parametrize("match", ["textldm:tiny", "dlm:tiny"])
def test_matched_config_shares_data_protocol_size_and_token_budget(match):
    method, preset = match.split(":")
    matched = build_config(preset) if method == "textldm" else build_dlm_config(preset)
    dit_optim = matched.train_dit.optim if method == "textldm" else matched.train_joint.optim
    cfg = build_ar_config("tiny", {"match": match})
    assert cfg.matched_params == dit_params(method, matched) > 0
    assert abs(gpt_param_count(cfg.gpt, "non_embedding") / cfg.matched_params - 1) <= 0.05  # the stack vs the DiT
    assert cfg.gpt.depth == dit_depth(matched, method)  # the DiT's depth; the width makes up the count
    total = build_ar_config("tiny", {"match": match, "match_count": "total"})
    assert abs(gpt_param_count(total.gpt) / total.matched_params - 1) <= 0.05  # embeddings counted
    assert total.gpt.vocab_size == matched.data.vocab_limit + 1  # the compact vocabulary
    assert cfg.data == matched.data and cfg.eval == matched.eval and cfg.gpt.max_seq_len == matched.data.seq_len
    assert EvalProtocol.from_config(cfg).hash == EvalProtocol.from_config(matched).hash
    tokens = cfg.train_gpt.optim.steps * cfg.train_gpt.optim.batch_size * cfg.data.seq_len
    assert tokens == dit_optim.steps * dit_optim.batch_size * matched.data.seq_len


def test_matched_to_ldlm_shares_its_data_windows_unconditional_protocol_size_and_token_budget():
    ldlm = build_ldlm_config("tiny")
    cfg = build_ar_config("tiny", {"match": "ldlm:tiny"})
    assert cfg.matched_params == dit_params("ldlm", ldlm) > 0  # the latent denoiser
    assert abs(gpt_param_count(cfg.gpt, "non_embedding") / cfg.matched_params - 1) <= 0.05
    assert (cfg.gpt.depth, cfg.gpt.n_heads) == (ldlm.ldlm.denoiser.depth, ldlm.ldlm.denoiser.n_heads)
    assert cfg.data == ldlm.data and cfg.gpt.max_seq_len == ldlm.data.seq_len
    assert cfg.gpt.vocab_size == ldlm.data.vocab_limit + 1
    assert cfg.train_windows == ldlm.data.teacher_windows  # the windows LDLM's joint stage reads
    optim = ldlm.train_joint.optim
    assert (cfg.train_gpt.optim.steps, cfg.train_gpt.optim.batch_size) == (optim.steps, optim.batch_size)
    # the eval section is LDLM's own: the same unconditional protocol, sampler fields included
    assert isinstance(cfg.eval, UnconditionalEvalConfig) and cfg.eval == ldlm.eval
    assert EvalProtocol.from_config(cfg).to_dict() == EvalProtocol.from_config(ldlm).to_dict()
    shared = {"eval": {"steps": 8, "num_samples": 16}, "data": {"seq_len": 32}}
    assert EvalProtocol.from_config(build_ar_config("tiny", {"match": "ldlm:tiny", **shared})).hash == \
        EvalProtocol.from_config(build_ldlm_config("tiny", shared)).hash != EvalProtocol.from_config(ldlm).hash
    # a saved config (config.json, the Ray Train worker, `latentlm evaluate`) comes back with the same sections
    assert from_dict(ARExperimentConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert type(from_dict(ARExperimentConfig, {"eval": {"num_samples": 3}}).eval).__name__ == "ContinuationEvalConfig"
    with pytest.raises(ConfigError, match="match ldlm:tiny: unknown config key eval.cfg_scale"):
        build_ar_config("tiny", {"match": "ldlm:tiny", "eval": {"cfg_scale": 3.0}})  # not an LDLM field
    with pytest.raises(ConfigError, match="^eval: expected UnconditionalEvalConfig"):
        ARExperimentConfig(match="ldlm:tiny")


def test_user_overrides_win_and_shared_sections_reach_the_matched_config():
    base = build_ar_config("tiny")
    deeper = build_ar_config("tiny", {"gpt": {"depth": 2}})
    assert deeper.gpt.depth == 2
    assert abs(gpt_param_count(deeper.gpt, "non_embedding") / deeper.matched_params - 1) <= 0.05
    half = build_ar_config("tiny", {"train_gpt": {"optim": {"batch_size": 16}}})
    assert (half.train_gpt.optim.batch_size, half.train_gpt.optim.steps) == (16, 2 * base.train_gpt.optim.steps)
    assert build_ar_config("tiny", {"train_gpt": {"optim": {"steps": 50}}}).train_gpt.optim.steps == 50
    assert build_ar_config("tiny", {"budget": "none", "train_gpt": {"optim": {"steps": 70}}}).train_gpt.optim.steps == 70
    longer = build_ar_config("tiny", {"data": {"seq_len": 128}, "eval": {"num_samples": 16}})
    assert longer.gpt.max_seq_len == 128 and longer.eval.num_samples == 16  # the matched config saw them too
    assert longer.train_gpt.optim.steps * 128 == base.train_gpt.optim.steps * 64 * 2  # its DiT stage reads 128-token windows
    sampling = build_ar_config("tiny", {"gpt": {"temperature": 0.7, "top_p": 0.9}})
    assert (sampling.gpt.temperature, sampling.gpt.top_p, sampling.gpt.hidden_dim) == (0.7, 0.9, base.gpt.hidden_dim)
    unmatched = build_ar_config("tiny", {"match": "none", "gpt": {"hidden_dim": 32}})
    assert unmatched.matched_params == 0 and unmatched.gpt.hidden_dim == 32


@pytest.mark.parametrize("match", ["ldlm:huge", "ldlm", "textldm:huge", "textldm", "gpt2"])
def test_bad_match_names_the_field(match):
    with pytest.raises(ConfigError, match=r"^match: expected 'none' or one of .*'ldlm:<paper\|small\|tiny>'") as err:
        build_ar_config("tiny", {"match": match})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^match: expected"):
        from_dict(ARExperimentConfig, {"match": match})  # a saved config with a bad match: the same one line


def test_impossible_shape_and_bad_values_name_their_field():
    with pytest.raises(ConfigError, match="match textldm:tiny: .*target_params=1,274,256"):
        build_ar_config("tiny", {"gpt": {"hidden_dim": 512}})  # the embedding alone overshoots
    for overrides, field in (({"budget": "flops"}, "budget"),
                             ({"gpt": {"top_p": 2.0}}, "gpt.top_p"),
                             ({"match": "none", "gpt": {"max_seq_len": 16}}, "gpt.max_seq_len")):
        with pytest.raises(ConfigError, match=field):
            build_ar_config("tiny", overrides)
    with pytest.raises(ConfigError, match="preset"):
        build_ar_config("huge")


def test_cli_reports_a_bad_match_before_anything_runs(capsys):
    from latentlm.platform import cli
    assert cli.main(["train", "--method", "ar", "--set", "match=textldm:huge"]) == 2
    assert "match: expected" in capsys.readouterr().err


def test_ar_sweep_plans():
    from latentlm.platform.sweep import SweepSpec, parse_axis, plan_trials
    path = Path(__file__).resolve().parents[1] / "experiments" / "train_ar_baseline.py"
    spec = importlib.util.spec_from_file_location("train_ar_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(plan_trials(SweepSpec("s", method="ar", axes=module.axes("tiny")))) == 1
    assert len(plan_trials(SweepSpec("s", method="ar", axes=dict([parse_axis("match=textldm:tiny,dlm:tiny")])))) == 2
    with pytest.raises(ConfigError, match="sweep.axes.dit.depth"):
        plan_trials(SweepSpec("s", method="ar", axes={"dit.depth": [2]}))
    assert len(plan_trials(SweepSpec("s", method="ar", axes={"match": ["ldlm:tiny"]}))) == 1
    with pytest.raises(ConfigError, match="match"):
        plan_trials(SweepSpec("s", method="ar", axes={"match": ["ldlm:huge"]}))


def _random_gpt_checkpoint(directory: Path, cfg, keep_ids: list[int], full_size: int) -> str:
    """A randomly initialised GPT on a compact vocabulary, saved as the AR stage saves it."""
    from latentlm.models.checkpoint import save_tensors
    from latentlm.models.gpt import GPT
    from latentlm.models.vocab import CompactVocab
    vocab = CompactVocab(torch.tensor(keep_ids), full_size)
    cfg.gpt.vocab_size = vocab.size
    torch.manual_seed(0)
    save_tensors(directory / "gpt.safetensors", {f"model.{k}": v for k, v in GPT(cfg.gpt).state_dict().items()})
    save_tensors(directory / "vocab.safetensors", vocab.tensors())
    return str(directory)


def test_unconditional_ar_windows_are_full_seq_len_windows_after_one_eos(tmp_path, single_thread):
    """Each window continues one EOS and is exactly data.seq_len tokenizer ids, EOS allowed (the packed
    held-out windows hold separators too); the continuation protocol's generate still suppresses EOS."""
    from latentlm.platform.methods.ar.generator import ARGenerator
    from latentlm.platform.evaluation.unconditional import generate_ids
    eos, seq_len = 0, 16
    cfg = build_ar_config("tiny", {"match": "ldlm:tiny", "data": {"seq_len": seq_len, "vocab_limit": 24},
                                   "eval": {"num_samples": 5, "batch_size": 2}})
    keep = [eos, *range(3, 26)]  # full ids 1 and 2 fall outside the compact vocabulary (-1 when sampled)
    model = ARGenerator.from_checkpoint(cfg, _random_gpt_checkpoint(tmp_path, cfg, keep, 40), use_ema=False,
                                        eos_id=eos)
    windows = generate_ids(model, None, 7, cfg)
    assert len(windows) == 5 and all(len(w) == seq_len for w in windows)
    assert set(sum(windows, [])) <= set(keep) | {-1} and eos in sum(windows, [])
    assert generate_ids(model, None, 7, cfg) == windows and generate_ids(model, None, 8, cfg) != windows
    continued = model.generate(torch.tensor([[eos]] * 5), seq_len, generator=torch.Generator().manual_seed(7))
    assert continued.shape == (5, seq_len) and eos not in continued.tolist()[0]
    with pytest.raises(ValueError, match="eos_id"):
        ARGenerator.from_checkpoint(cfg, tmp_path, use_ema=False).sample(1)


@pytest.fixture(scope="module")
def ar_overrides(tiny_overrides):
    """A micro GPT (match none) on the tiny corpus and tokenizer: trains in seconds. Logged at every step and
    checkpointed every 10 (with an EMA), so its run is also the resume test's uninterrupted reference."""
    base = tiny_overrides()
    return {"match": "none", "data": base["data"],
            "eval": {**base["eval"], "sampling_seeds": [1], "human_ceiling": False},
            "gpt": {"hidden_dim": 32, "depth": 2, "n_heads": 2},
            "train_gpt": {"optim": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "log_every": 1,
                                    "checkpoint_every": 10, "ema_decay": 0.9}},
            "wandb": False}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Tokenized windows shared by this module's Ray tests (content-addressed: prepared once)."""
    return tmp_path_factory.mktemp("ar-data")


@pytest.fixture(scope="module")
def ar_run(ar_overrides, data_root, tmp_path_factory, ray_local):
    """The AR pipeline, trained and evaluated once: (config, run output, run dir). The end-to-end test checks
    it; the resume test compares an interrupted run of the same stage with it."""
    from latentlm.platform.methods.ar.pipeline import run_ar
    cfg = build_ar_config("tiny", ar_overrides)
    run_dir = tmp_path_factory.mktemp("ar-run") / "run"
    return cfg, run_ar(cfg, run_dir, data_root=data_root), run_dir


@pytest.mark.ray
def test_ar_pipeline_end_to_end(ar_run, tiny_corpus, tmp_path):
    from latentlm.platform import cli
    from latentlm.platform.methods.ar.generator import load_ar
    from latentlm.platform.reevaluate import evaluate_saved
    cfg, out, run_dir = ar_run
    row = out["results"][str(tiny_corpus)]
    for key in ("rouge1", "rougeL", "bertscore", "mauve"):
        assert 0.0 <= row[key] <= 1.0, (key, row[key])
    assert "recon_acc" not in row  # an AR model has no reconstruction
    assert out["evaluation"].protocol.hash == EvalProtocol.from_config(cfg).hash
    assert out["facts"]["gpt_params"] == gpt_param_count(cfg.gpt) and cfg.gpt.vocab_size < 40  # the compact vocab
    logged = [json.loads(line) for line in (run_dir / "ar_metrics.jsonl").read_text().splitlines()]
    # it learned: below uniform guessing (ln vocab; the corpus' words are uniform draws, so the floor is close)
    assert [m["step"] for m in logged] == list(range(1, 31)) and logged[-1]["loss"] < math.log(cfg.gpt.vocab_size) - 0.1
    assert logged[-1]["accuracy"] > 2 / cfg.gpt.vocab_size
    checkpoint = Path(out["checkpoint"])
    files = {p.name for p in checkpoint.iterdir()}
    assert {"gpt.safetensors", "ema.safetensors", "vocab.safetensors", "config.json", "state.json"} <= files
    # the checkpoint samples without Ray, deterministically, in tokenizer ids
    model = load_ar(out["checkpoint"])
    prompt = torch.tensor([[5, 6, 7, 8]] * 2)
    a = model.generate(prompt, 9, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 9, steps=3, cfg_scale=2.0, grid="uniform", generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 9) and torch.equal(a, b) and int(a.max()) < 40
    assert cli.main(["sample", out["checkpoint"], "--prompt", "the river", "--length", "6", "--num", "2"]) == 0
    assert cli.main(["sample", out["checkpoint"], "--length", "6"]) == 0  # no prompt: a document after EOS
    # `latentlm evaluate` on the saved checkpoint reproduces the pipeline's scores (timings aside) ...
    again = evaluate_saved(out["checkpoint"], out_dir=tmp_path / "again")
    timing = {"eval_seconds", "sample_seconds_per_seq"}
    assert again.protocol.hash == out["evaluation"].protocol.hash
    assert {k: v for k, v in again.results[str(tiny_corpus)].items() if k not in timing} == \
        {k: v for k, v in row.items() if k not in timing}
    # ... and --set changes the protocol it is scored under
    assert cli.main(["evaluate", out["checkpoint"], "--set", "eval.sampling_seeds=[5]", "--out",
                     str(tmp_path / "seed5")]) == 0
    scored = json.loads((tmp_path / "seed5" / "metrics.json").read_text())
    assert scored["protocol"]["scoring"]["sampling_seeds"] == [5] and scored["protocol"]["hash"] != again.protocol.hash


@pytest.fixture(scope="module")
def uncond_overrides(tiny_overrides):
    """The GPT matched to LDLM's tiny preset (its unconditional protocol) on the tiny corpus and tokenizer,
    trained for a few steps. Its data section is ``ar_run``'s (the windows in ``data_root`` are tokenized once)."""
    base = tiny_overrides()
    scoring = ("datasets", "batch_size", "mauve_model", "genppl_model", "mauve_kmeans_seeds")
    return {"match": "ldlm:tiny", "data": base["data"],
            "eval": {**{k: base["eval"][k] for k in scoring}, "num_samples": 8, "steps": 6, "sampling_seeds": [1, 2]},
            "train_gpt": {"optim": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "log_every": 10}},
            "wandb": False}


@pytest.mark.ray
def test_ar_baseline_under_ldlms_protocol_ranks_beside_its_reference_rows(uncond_overrides, tiny_corpus, tmp_path,
                                                                          data_root, ray_local):
    from latentlm.platform.methods.ar.pipeline import run_ar
    from latentlm.platform.leaderboard import Leaderboard
    from latentlm.platform.reevaluate import evaluate_saved
    from latentlm.platform.sweep import add_rows
    cfg = build_ar_config("tiny", uncond_overrides)
    out = run_ar(cfg, tmp_path / "run", data_root=data_root)
    dataset = str(tiny_corpus)
    row = out["results"][dataset]
    assert (row["samples"], row["seeds"]) == (8, 2) and 0 < row["mauve"] <= 1 and row["gen_ppl"] > 0
    assert not any(key.startswith("interp_") for key in row)  # no latent space: the probe is skipped, not faked
    eval_dir = tmp_path / "run" / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["interpolation_curve"] is None and "no latent space" in metrics["interpolation_skipped"]
    assert len((eval_dir / "samples.jsonl").read_text().splitlines()) == 16 and not out["evaluation"].progressions
    ldlm = build_ldlm_config("tiny", {k: uncond_overrides[k] for k in ("data", "eval")})
    protocol = out["evaluation"].protocol
    assert protocol.name == "unconditional/v3" and protocol.hash == EvalProtocol.from_config(ldlm).hash
    # a sweep's rows: the baseline, the human ceiling and the floors, all under the LDLM trials' protocol
    board = tmp_path / "leaderboard.parquet"
    add_rows(board, "ar", "s", "baseline:ar", {}, cfg, out, compute_seconds=1.0)
    frame = Leaderboard(board).frame()
    assert sorted(frame["trial"]) == ["baseline:ar", "floor:top-token", "floor:unigram", "human-ceiling"]
    assert set(frame["protocol_hash"]) == {protocol.hash} and set(frame["dataset"]) == {dataset}
    # `latentlm evaluate` on the saved checkpoint scores it under the same protocol, to the same numbers
    again = evaluate_saved(out["checkpoint"], out_dir=tmp_path / "again")
    timing = {"eval_seconds", "sample_seconds_per_seq"}
    assert again.protocol.hash == protocol.hash
    assert {k: v for k, v in again.results[dataset].items() if k not in timing} == \
        {k: v for k, v in row.items() if k not in timing}


@pytest.mark.ray
def test_ar_stage_killed_worker_resumes_bit_identically(ar_run, tmp_path, data_root):
    """Killed at step 28 (tied embedding/head under DeepSpeed ZeRO-1), the GPT stage resumes from its step-20
    checkpoint (weights, optimizer, EMA, data position) and ends exactly like the uninterrupted run of the same
    config and data: the pipeline's run in ``ar_run``."""
    from latentlm.models.checkpoint import load_tensors
    from latentlm.platform.config import to_dict
    from latentlm.platform.data.windows import prepare_data
    from latentlm.platform.training.launch import run_stage, training_dataset
    from latentlm.platform.methods.ar.train import ar_train_loop
    cfg, out, clean_run = ar_run
    art = prepare_data(cfg, data_root, False)  # prepared by the pipeline: found, not redone

    def run(name, **extra):
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": "resume", "vocab": art.vocab,
                  **extra}
        dataset = training_dataset(art.train, ["tokens", "length"], cfg.data.materialize_max_mb)
        checkpoint = Path(run_stage(ar_train_loop, config, dataset, name, tmp_path / "ray", cfg.resources))
        lines = [json.loads(line) for line in (run_dir / "ar_metrics.jsonl").read_text().splitlines()]
        return checkpoint, [m["step"] for m in lines], {m["step"]: m["loss"] for m in lines}

    clean_checkpoint = Path(out["checkpoint"])
    clean = {m["step"]: m["loss"] for m in map(json.loads, (clean_run / "ar_metrics.jsonl").read_text().splitlines())}
    marker = tmp_path / "fault-injected"
    checkpoint, steps, resumed = run("faulty", inject_fault={"step": 28, "marker": str(marker)})
    assert marker.exists() and steps == [*range(1, 28), *range(21, 31)]  # died before logging 28, resumed at 21
    assert resumed == clean
    for name in ("gpt", "ema"):
        got = load_tensors(checkpoint / f"{name}.safetensors")
        want = load_tensors(clean_checkpoint / f"{name}.safetensors")
        assert all(torch.equal(got[k], want[k]) for k in want), name
