"""Cola DLM on the platform: configs, stage 1 + stage 2 on Ray Train, continuation evaluation, sweeps."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.platform.methods.dlm.config import build_dlm_config


@pytest.fixture(scope="module")
def dlm_overrides(tiny_overrides):
    from latentlm.platform.config import merge
    base = tiny_overrides()
    small = {"latent_dim": 8, "hidden_dim": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
             "block_size": 4}
    base = {"data": base["data"], "eval": {**base["eval"], "grid": "uniform", "cfg_scale": 2.0},
            "dlm": {"vae": small, "dit": {"latent_dim": 8, "hidden_dim": 32, "depth": 2, "n_heads": 2,
                                          "block_size": 4}},
            "train_vae": {"optim": {"steps": 20, "batch_size": 16, "lr": 3e-3, "log_every": 10}},
            "train_joint": {"optim": {"steps": 20, "batch_size": 16, "lr": 3e-3, "log_every": 10, "ema_decay": 0.9}},
            "wandb": False}
    return lambda **sections: merge(base, sections)


def test_presets_build_and_bad_values_name_their_field(dlm_overrides):
    for preset in ("tiny", "small", "paper"):
        cfg = build_dlm_config(preset)
        assert cfg.dlm.dit.latent_dim == cfg.dlm.vae.latent_dim
    assert build_dlm_config("tiny", {"dlm": {"vae": {"latent_dim": 8}}}).dlm.dit.latent_dim == 8
    assert build_dlm_config("tiny", {"dlm": {"dit": {"block_size": 4}}}).dlm.vae.block_size == 4
    for overrides, field in (({"dlm": {"vae_strategy": "warm"}}, "dlm.vae_strategy"),
                             ({"dlm": {"vae": {"patch_size": 3}}}, "dlm.vae.patch_size"),
                             ({"sampler": {"first_block": "pad"}}, "sampler.first_block"),
                             ({"eval": {"grid": "schedule"}}, "eval.grid")):
        with pytest.raises(ConfigError, match=field):
            build_dlm_config("tiny", dlm_overrides(**overrides))


def test_dlm_sweeps_plan_and_collapse_equivalent_trials(dlm_overrides):
    from latentlm.platform.sweep import SweepSpec, plan_trials
    root = Path(__file__).resolve().parents[1] / "experiments"
    expected = {"ablate_block_size": 2, "ablate_timeshift": 3, "ablate_dlm_steps": 3, "ablate_dlm_cfg": 3,
                "ablate_dlm_latent_dim": 2, "ablate_dlm_patch": 2, "ablate_vae_strategy": 4}
    for name, count in expected.items():
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert len(plan_trials(SweepSpec(name, method="dlm", axes=module.axes("tiny")))) == count, name
    # the LR ratio cannot act on a frozen VAE: those trials are one
    trials = plan_trials(SweepSpec("s", method="dlm", overrides=dlm_overrides(), axes={
        "dlm.vae_strategy": ["frozen", "joint"], "dlm.vae_lr_ratio": [1.0, 0.01]}))
    assert len(trials) == 3
    with pytest.raises(ConfigError, match="sweep.axes.ldlm.decoder_noise"):
        plan_trials(SweepSpec("s", method="dlm", axes={"ldlm.decoder_noise": [0.1]}))


def test_a_block_size_sweep_shares_the_pretrained_vae_unless_the_vae_is_block_causal():
    from latentlm.platform.methods.dlm.pipeline import dlm_stage_keys
    for attention, shared in (("causal", True), ("bidirectional", True), ("block_causal", False)):
        keys = [dlm_stage_keys(build_dlm_config("tiny", {"dlm": {"vae": {"attention": attention},
                                                                 "dit": {"block_size": size}}})) for size in (4, 16)]
        assert (keys[0]["vae"] == keys[1]["vae"]) == shared, attention
        assert keys[0]["joint"] != keys[1]["joint"]  # the prior itself differs


@pytest.mark.ray
def test_dlm_pipeline_end_to_end(dlm_overrides, tiny_corpus, tmp_path, ray_local):
    from latentlm.platform.methods.dlm.generator import load_dlm
    from latentlm.platform.methods.dlm.pipeline import run_dlm
    cfg = build_dlm_config("tiny", dlm_overrides(dlm={"vae_strategy": "joint", "vae_lr_ratio": 0.01}))
    out = run_dlm(cfg, tmp_path / "run")
    row = out["results"][str(tiny_corpus)]
    for key in ("rouge1", "bertscore", "mauve", "recon_acc"):
        assert 0.0 <= row[key] <= 1.0, key
    # the denoising progression of sample 0: the configured steps that exist, ending at its generated text
    progression = out["evaluation"].progressions[str(tiny_corpus)]
    assert progression["steps"] == [1, cfg.eval.steps] and len(progression["texts"]) == 2
    first = json.loads(next(iter((tmp_path / "run" / "eval").glob("samples_*.jsonl"))).read_text().splitlines()[0])
    assert progression["texts"][-1] == first["generated"] and progression["prompt"] == first["prompt"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "dlm_joint_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [10, 20] and all("fm" in m and "logsnr" in m for m in logged)
    vae_log = [json.loads(line) for line in (tmp_path / "run" / "dlm_vae_metrics.jsonl").read_text().splitlines()]
    assert vae_log[-1]["recon"] < vae_log[0]["recon"]
    # the checkpoint generates without Ray, deterministically, KV cache or not
    gen = load_dlm(out["joint_checkpoint"])
    prompt = torch.randint(3, 20, (2, 5))
    a = gen.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = gen.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 9) and torch.equal(a, b)
    from latentlm.platform import cli
    assert cli.main(["sample", out["joint_checkpoint"], "--prompt", "the river", "--length", "6", "--steps", "2"]) == 0
    # the saved stage-2 checkpoint is scored again with other sampler settings
    assert cli.main(["evaluate", out["joint_checkpoint"], "--set", "eval.steps=2", "--out", str(tmp_path / "re")]) == 0
    scored = json.loads((tmp_path / "re" / "metrics.json").read_text())
    assert scored["protocol"]["sampler"]["steps"] == 2 and scored["results"].keys() == out["results"].keys()
    # a frozen-VAE trial reuses the stage-1 VAE (one VAE per VAE config)
    frozen = run_dlm(build_dlm_config("tiny", dlm_overrides(dlm={"vae_strategy": "frozen"})), tmp_path / "run2",
                     data_root=tmp_path, cache_root=tmp_path / "run")
    assert frozen["vae_checkpoint"] == out["vae_checkpoint"] and frozen["stage_seconds"]["vae"] == 0.0


@pytest.mark.ray
def test_dlm_joint_stage_killed_worker_resumes_bit_identically(dlm_overrides, tmp_path, ray_local):
    """Stage 2 (joint VAE x0.01 + DiT, reference encoder on) killed at step 10 resumes from its step-8 checkpoint
    (weights, optimizer, EMA, noise stream, data position) and ends exactly like an uninterrupted run."""
    from latentlm.models.checkpoint import load_tensors
    from latentlm.platform.config import to_dict
    from latentlm.platform.data.windows import prepare_data
    from latentlm.platform.training.launch import run_stage, training_dataset
    from latentlm.platform.methods.dlm.train import dlm_vae_loop, dlm_joint_loop
    cfg = build_dlm_config("tiny", dlm_overrides(
        dlm={"vae_strategy": "joint", "vae_lr_ratio": 0.01, "ref_weight": 0.1},
        train_vae={"optim": {"steps": 6, "log_every": 6, "warmup_steps": 2}},
        train_joint={"optim": {"steps": 12, "log_every": 1, "checkpoint_every": 4, "ema_decay": 0.9, "warmup_steps": 2}}))
    art = prepare_data(cfg, tmp_path / "data", False)
    cfg.dlm.vae.vocab_size = art.vocab_size

    def run(loop, name, **extra):
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": "resume", "vocab": art.vocab,
                  **extra}
        dataset = training_dataset(art.train, ["tokens", "length"], cfg.data.materialize_max_mb)
        return Path(run_stage(loop, config, dataset, name, tmp_path / "ray", cfg.resources)), run_dir

    vae_checkpoint, _ = run(dlm_vae_loop, "vae")

    def joint(name, **extra):
        checkpoint, run_dir = run(dlm_joint_loop, name, vae_checkpoint=str(vae_checkpoint), **extra)
        lines = (run_dir / "dlm_joint_metrics.jsonl").read_text().splitlines()
        return checkpoint, [json.loads(line)["step"] for line in lines], {m["step"]: m for m in map(json.loads, lines)}

    clean_checkpoint, _, clean = joint("clean")
    marker = tmp_path / "fault-injected"
    checkpoint, steps, resumed = joint("faulty", inject_fault={"step": 10, "marker": str(marker)})
    assert marker.exists() and steps == [*range(1, 10), *range(9, 13)]  # died after 10, resumed at 9
    assert all(clean[s]["ref"] > 0 for s in range(2, 13))  # the reference regulariser acts
    for name in ("loss", "fm", "recon", "ref"):
        assert [resumed[s][name] for s in range(1, 13)] == [clean[s][name] for s in range(1, 13)], name
    for name in ("joint", "ema"):
        got, want = load_tensors(checkpoint / f"{name}.safetensors"), load_tensors(clean_checkpoint / f"{name}.safetensors")
        assert all(torch.equal(got[k], want[k]) for k in want), name
