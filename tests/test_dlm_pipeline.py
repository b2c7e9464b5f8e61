"""Cola DLM on the platform: configs, stage 1 + stage 2 on Ray Train, continuation evaluation, sweeps."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.platform.dlm_config import build_dlm_config


@pytest.fixture(scope="module")
def dlm_overrides(tiny_overrides):
    from latentlm.platform.config import merge
    base = tiny_overrides()
    small = {"latent_dim": 8, "hidden_dim": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
             "block_size": 4}
    base = {"data": base["data"], "eval": {**base["eval"], "grid": "uniform", "cfg_scale": 2.0},
            "dlm": {"vae": small, "dit": {"latent_dim": 8, "hidden_dim": 32, "depth": 2, "n_heads": 2,
                                          "block_size": 4}},
            "stage1": {"optim": {"steps": 20, "batch_size": 16, "lr": 3e-3, "log_every": 10}},
            "stage2": {"optim": {"steps": 20, "batch_size": 16, "lr": 3e-3, "log_every": 10, "ema_decay": 0.9}},
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


@pytest.mark.ray
def test_dlm_pipeline_end_to_end(dlm_overrides, tiny_corpus, tmp_path, ray_local):
    from latentlm.platform.dlm_pipeline import load_dlm, run_dlm
    cfg = build_dlm_config("tiny", dlm_overrides(dlm={"vae_strategy": "joint", "vae_lr_ratio": 0.01}))
    out = run_dlm(cfg, tmp_path / "run")
    row = out["results"][str(tiny_corpus)]
    for key in ("rouge1", "bertscore", "mauve", "recon_acc"):
        assert 0.0 <= row[key] <= 1.0, key
    logged = [json.loads(line) for line in (tmp_path / "run" / "dlm_joint_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [10, 20] and all("fm" in m and "logsnr" in m for m in logged)
    stage1 = [json.loads(line) for line in (tmp_path / "run" / "dlm_vae_metrics.jsonl").read_text().splitlines()]
    assert stage1[-1]["recon"] < stage1[0]["recon"]
    # the checkpoint generates without Ray, deterministically, KV cache or not
    gen = load_dlm(out["stage2_checkpoint"])
    prompt = torch.randint(3, 20, (2, 5))
    a = gen.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = gen.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 9) and torch.equal(a, b)
    from latentlm.platform import cli
    assert cli.main(["sample", out["stage2_checkpoint"], "--prompt", "the river", "--length", "6", "--steps", "2"]) == 0
    # a frozen-VAE trial reuses the stage-1 VAE (one VAE per VAE config)
    frozen = run_dlm(build_dlm_config("tiny", dlm_overrides(dlm={"vae_strategy": "frozen"})), tmp_path / "run2",
                     data_root=tmp_path, cache_root=tmp_path / "run")
    assert frozen["stage1_checkpoint"] == out["stage1_checkpoint"] and frozen["stage_seconds"]["stage1"] == 0.0
