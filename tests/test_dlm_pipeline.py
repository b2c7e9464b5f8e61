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
    base = {"data": base["data"],
            "eval": {**base["eval"], "grid": "uniform", "cfg_scale": 2.0, "fewshot": {"tasks": []}},
            "dlm": {"vae": small, "dit": {"latent_dim": 8, "hidden_dim": 32, "depth": 2, "n_heads": 2,
                                          "block_size": 4}},
            "train_vae": {"optim": {"steps": 20, "batch_size": 16, "lr": 3e-3, "log_every": 10}},
            # logged at every step and checkpointed every 8: the resume test's uninterrupted reference
            "train_joint": {"optim": {"steps": 20, "batch_size": 16, "lr": 3e-3, "log_every": 1, "ema_decay": 0.9,
                                      "checkpoint_every": 8}},
            "wandb": False}
    return lambda **sections: merge(base, sections)


def test_presets_build_and_bad_values_name_their_field(dlm_overrides):
    for preset in ("tiny", "small", "paper"):
        cfg = build_dlm_config(preset)
        assert cfg.dlm.dit.latent_dim == cfg.dlm.vae.latent_dim
        # the paper's evaluation: raw weights (no EMA), clean-condition first blocks, the few-shot protocol
        assert cfg.eval.use_ema is False and cfg.sampler.first_block == "clean" and cfg.eval.fewshot.tasks
    assert build_dlm_config("tiny", {"dlm": {"vae": {"latent_dim": 8}}}).dlm.dit.latent_dim == 8
    assert build_dlm_config("tiny", {"dlm": {"dit": {"block_size": 4}}}).dlm.vae.block_size == 4
    for overrides, field in (({"dlm": {"vae_strategy": "warm"}}, "dlm.vae_strategy"),
                             ({"dlm": {"vae": {"patch_size": 3}}}, "dlm.vae.patch_size"),
                             ({"sampler": {"first_block": "pad"}}, "sampler.first_block"),
                             ({"sampler": {"repaint_repeats": 0}}, "sampler.repaint_repeats"),
                             ({"sampler": {"repaint_fraction": 0.0}}, "sampler.repaint_fraction"),
                             ({"sampler": {"repaint_fraction": 1.5}}, "sampler.repaint_fraction"),
                             ({"dlm": {"interval_steps": 0}}, "dlm.interval_steps"),
                             ({"dlm": {"clean_prefix_prob": 1.5}}, "dlm.clean_prefix_prob"),
                             ({"eval": {"grid": "schedule"}}, "eval.grid")):
        with pytest.raises(ConfigError, match=field):
            build_dlm_config("tiny", dlm_overrides(**overrides))


def test_dlm_sweeps_plan_and_collapse_equivalent_trials(dlm_overrides):
    from latentlm.platform.sweep import SweepSpec, plan_trials
    root = Path(__file__).resolve().parents[1] / "experiments"
    expected = {"ablate_block_size": 2, "ablate_timeshift": 3, "ablate_dlm_steps": 3, "ablate_dlm_cfg": 3,
                "ablate_dlm_latent_dim": 2, "ablate_dlm_patch": 2, "ablate_vae_strategy": 5,
                "ablate_dlm_conditioning": 5}
    for name, count in expected.items():
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert len(plan_trials(SweepSpec(name, method="dlm", axes=module.axes("tiny")))) == count, name
    # the LR ratio cannot act on a frozen VAE: those trials are one
    trials = plan_trials(SweepSpec("s", method="dlm", overrides=dlm_overrides(), axes={
        "dlm.vae_strategy": ["frozen", "joint"], "dlm.vae_lr_ratio": [1.0, 0.01]}))
    assert len(trials) == 3
    # (r, gamma) act only under partial repaint: clean x two (r, gamma) settings is one trial
    trials = plan_trials(SweepSpec("s", method="dlm", overrides=dlm_overrides(), axes={
        "sampler.first_block": ["clean", "partial_repaint"], "sampler.repaint_repeats": [1, 3]}))
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


@pytest.fixture(scope="module")
def dlm_run(dlm_overrides, tmp_path_factory, ray_local):
    """The Cola DLM pipeline (joint VAE x0.01 with the reference encoder on), trained and evaluated once:
    (config, run output, run dir; its parent is the data root). The end-to-end test checks it; the resume test
    compares an interrupted joint stage with it."""
    from latentlm.platform.methods.dlm.pipeline import run_dlm
    cfg = build_dlm_config("tiny", dlm_overrides(dlm={"vae_strategy": "joint", "vae_lr_ratio": 0.01,
                                                      "ref_weight": 0.1}))
    run_dir = tmp_path_factory.mktemp("dlm-run") / "run"
    return cfg, run_dlm(cfg, run_dir), run_dir


@pytest.mark.ray
def test_dlm_pipeline_end_to_end(dlm_run, dlm_overrides, tiny_corpus, tmp_path):
    from latentlm.platform.methods.dlm.generator import load_dlm
    from latentlm.platform.methods.dlm.pipeline import train_dlm
    cfg, out, run_dir = dlm_run
    row = out["results"][str(tiny_corpus)]
    for key in ("rouge1", "bertscore", "mauve", "recon_acc"):
        assert 0.0 <= row[key] <= 1.0, key
    # the denoising progression of sample 0: the configured steps that exist, ending at its generated text
    progression = out["evaluation"].progressions[str(tiny_corpus)]
    assert progression["steps"] == [1, cfg.eval.steps] and len(progression["texts"]) == 2
    first = json.loads(next(iter((run_dir / "eval").glob("samples_*.jsonl"))).read_text().splitlines()[0])
    assert progression["texts"][-1] == first["generated"] and progression["prompt"] == first["prompt"]
    logged = [json.loads(line) for line in (run_dir / "dlm_joint_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, 21)) and all("fm" in m and "logsnr" in m for m in logged)
    vae_log = [json.loads(line) for line in (run_dir / "dlm_vae_metrics.jsonl").read_text().splitlines()]
    assert vae_log[-1]["recon"] < vae_log[0]["recon"]
    # the checkpoint generates without Ray, deterministically, KV cache or not
    gen = load_dlm(out["joint_checkpoint"])
    prompt = torch.randint(3, 20, (2, 5))
    a = gen.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = gen.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 9) and torch.equal(a, b)
    from latentlm.platform import cli
    assert cli.main(["sample", out["joint_checkpoint"], "--prompt", "the river", "--length", "6", "--steps", "2"]) == 0
    # the saved joint-stage checkpoint is scored again with other sampler settings
    assert cli.main(["evaluate", out["joint_checkpoint"], "--set", "eval.steps=2", "--out", str(tmp_path / "re")]) == 0
    scored = json.loads((tmp_path / "re" / "metrics.json").read_text())
    assert scored["protocol"]["sampler"]["steps"] == 2 and scored["results"].keys() == out["results"].keys()
    # a frozen-VAE trial reuses the pretrained VAE (one VAE per VAE config): the training half of run_dlm, with a
    # 2-step joint stage (the joint stage's settings are not part of the VAE stage's key)
    frozen = train_dlm(build_dlm_config("tiny", dlm_overrides(dlm={"vae_strategy": "frozen"}, train_joint={
        "optim": {"steps": 2, "log_every": 1, "warmup_steps": 1, "checkpoint_every": 0}})), run_dir.parent / "run2",
        data_root=run_dir.parent, cache_root=run_dir)
    assert frozen.checkpoints["vae"] == out["vae_checkpoint"] and frozen.stage_seconds["vae"] == 0.0


@pytest.mark.ray
def test_dlm_joint_stage_killed_worker_resumes_bit_identically(dlm_run, tmp_path):
    """The joint stage (VAE x0.01 + DiT, reference encoder on) killed at step 18 resumes from its step-16
    checkpoint (weights, optimizer, EMA, noise stream, data position) and ends exactly like the uninterrupted run
    of the same config, data and pretrained VAE: the pipeline's joint stage in ``dlm_run``."""
    from latentlm.models.checkpoint import load_tensors
    from latentlm.platform.config import to_dict
    from latentlm.platform.data.windows import prepare_data
    from latentlm.platform.training.launch import run_stage, training_dataset
    from latentlm.platform.methods.dlm.train import dlm_joint_loop
    cfg, out, clean_run = dlm_run
    art = prepare_data(cfg, clean_run.parent, False)  # prepared by the pipeline: found, not redone

    clean_checkpoint = Path(out["joint_checkpoint"])
    clean = {m["step"]: m for m in map(json.loads, (clean_run / "dlm_joint_metrics.jsonl").read_text().splitlines())}
    marker, run_dir = tmp_path / "fault-injected", tmp_path / "faulty"
    run_dir.mkdir()
    config = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": "resume", "vocab": art.vocab,
              "vae_checkpoint": out["vae_checkpoint"], "inject_fault": {"step": 18, "marker": str(marker)}}
    dataset = training_dataset(art.train, ["tokens", "length"], cfg.data.materialize_max_mb)
    checkpoint = Path(run_stage(dlm_joint_loop, config, dataset, "faulty", tmp_path / "ray", cfg.resources))
    lines = [json.loads(line) for line in (run_dir / "dlm_joint_metrics.jsonl").read_text().splitlines()]
    steps, resumed = [m["step"] for m in lines], {m["step"]: m for m in lines}
    assert marker.exists() and steps == [*range(1, 18), *range(17, 21)]  # died before logging 18, resumed at 17
    assert all(clean[s]["ref"] > 0 for s in range(2, 21))  # the reference regulariser acts
    for name in ("loss", "fm", "recon", "ref"):
        assert [resumed[s][name] for s in range(1, 21)] == [clean[s][name] for s in range(1, 21)], name
    for name in ("joint", "ema"):
        got, want = load_tensors(checkpoint / f"{name}.safetensors"), load_tensors(clean_checkpoint / f"{name}.safetensors")
        assert all(torch.equal(got[k], want[k]) for k in want), name
