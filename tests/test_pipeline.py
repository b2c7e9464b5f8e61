"""End to end on Ray: tokenize -> teacher features -> VAE (Ray Train) -> DiT (Ray Train) -> evaluation,
on a tiny synthetic corpus with a tiny tokenizer/teacher, then sampling from the checkpoint without Ray."""
from __future__ import annotations

import json

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.platform.experiment import build_config

pytestmark = pytest.mark.ray


def tiny_overrides(corpus, lm_dir, **extra):
    lm = str(lm_dir)
    base = {
        "data": {"corpus": str(corpus), "tokenizer": lm, "seq_len": 32, "teacher_windows": 128,
                 "teacher_batch_size": 32, "valid_fraction": 0.1, "test_fraction": 0.1,
                 "vocab_limit": 24},
        "vae": {"latent_dim": 8, "hidden_dim": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                "repa": {"teacher": lm, "layer": -2, "projector_hidden": 32}},
        "dit": {"hidden_dim": 32, "depth": 2, "n_heads": 2},
        "train_vae": {"optim": {"steps": 40, "batch_size": 16, "lr": 3e-3, "log_every": 20}},
        "train_dit": {"optim": {"steps": 30, "batch_size": 16, "lr": 1e-3, "log_every": 15, "ema_decay": 0.9},
                      "normalizer_windows": 32},
        "eval": {"datasets": [str(corpus)], "num_samples": 8, "min_tokens": 10, "steps": 4, "batch_size": 8,
                 "bertscore_model": lm, "bertscore_num_layers": 2, "mauve_model": lm},
        "wandb": False,
    }
    from latentlm.platform.config import merge
    return merge(base, extra)


def test_bad_inputs_fail_before_training(tiny_corpus, tiny_lm_dir, tmp_path):
    from latentlm.platform.pipeline import validate
    with pytest.raises(ConfigError, match="vae.latent_dim"):
        build_config("tiny", tiny_overrides(tiny_corpus, tiny_lm_dir, vae={"latent_dim": 0}))
    with pytest.raises(ConfigError, match="unknown config key train_vae.optim.stepz"):
        build_config("tiny", tiny_overrides(tiny_corpus, tiny_lm_dir, train_vae={"optim": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="vae.repa.layer"):  # the tiny teacher has 4 layers
        validate(build_config("tiny", tiny_overrides(tiny_corpus, tiny_lm_dir, vae={"repa": {"layer": 7}})))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.jsonl"):
        validate(build_config("tiny", tiny_overrides(empty, tiny_lm_dir)))


def test_textldm_pipeline_end_to_end(tiny_corpus, tiny_lm_dir, tmp_path, ray_local):
    from latentlm.models.textldm import load_textldm
    from latentlm.platform.pipeline import run_textldm
    cfg = build_config("tiny", tiny_overrides(tiny_corpus, tiny_lm_dir))
    out = run_textldm(cfg, tmp_path / "run")
    row = out["results"][str(tiny_corpus)]
    for key in ("rouge1", "rouge2", "rougeL", "bertscore", "mauve", "recon_acc"):
        assert 0.0 <= row[key] <= 1.0, (key, row[key])
    assert row["samples"] == 8
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["protocol"].startswith("textldm-continuation")
    assert len((tmp_path / "run" / "eval").glob("samples_*.jsonl").__next__().read_text().splitlines()) == 8

    # The DiT checkpoint is self-contained: sampling needs no Ray and is deterministic given the seed.
    model = load_textldm(out["dit_checkpoint"])
    prompt = torch.randint(3, 20, (2, 6))
    a = model.generate(prompt, 10, steps=3, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 10, steps=3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 10) and torch.equal(a, b)

    # Re-running the finished pipeline reuses both stages instead of retraining.
    again = run_textldm(cfg, tmp_path / "run")
    assert again["dit_checkpoint"] == out["dit_checkpoint"]
