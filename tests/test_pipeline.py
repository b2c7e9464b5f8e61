"""End to end on Ray: tokenize -> teacher features -> VAE (Ray Train) -> DiT (Ray Train) -> evaluation,
on a tiny synthetic corpus with a tiny tokenizer/teacher, then sampling from the checkpoint without Ray."""
from __future__ import annotations

import json

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.platform.methods.textldm.config import build_config

pytestmark = pytest.mark.ray


def test_bad_inputs_fail_before_training(tiny_overrides, tmp_path):
    from latentlm.platform.methods.textldm.pipeline import validate
    with pytest.raises(ConfigError, match="vae.latent_dim"):
        build_config("tiny", tiny_overrides(vae={"latent_dim": 0}))
    with pytest.raises(ConfigError, match="unknown config key train_vae.optim.stepz"):
        build_config("tiny", tiny_overrides(train_vae={"optim": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="vae.repa.layer"):  # the tiny teacher has 4 layers
        validate(build_config("tiny", tiny_overrides(vae={"repa": {"layer": 7}})))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.jsonl"):
        validate(build_config("tiny", tiny_overrides(data={"corpus": str(empty)})))


def test_textldm_pipeline_end_to_end(tiny_overrides, tiny_corpus, tmp_path, ray_local):
    from latentlm.platform.methods.textldm.generator import load_textldm
    from latentlm.platform.methods.textldm.pipeline import run_textldm
    cfg = build_config("tiny", tiny_overrides())
    out = run_textldm(cfg, tmp_path / "run")
    row = out["results"][str(tiny_corpus)]
    for key in ("rouge1", "rouge2", "rougeL", "bertscore", "mauve", "recon_acc", "mauve_std", "rouge1_std"):
        assert 0.0 <= row[key] <= 1.0, (key, row[key])
    assert row["samples"] == 8 and row["seeds"] == 2 and row["gen_ppl"] > 1 and row["entropy"] >= 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "continuation/v3"
    assert metrics["protocol"]["hash"] == out["evaluation"].protocol.hash
    lines = (tmp_path / "run" / "eval").glob("samples_*.jsonl").__next__().read_text().splitlines()
    assert len(lines) == 2 * 8  # every sampling seed's generations
    progression = out["evaluation"].progressions[str(tiny_corpus)]
    assert progression["steps"] == [1, 4] and len(progression["texts"]) == 2  # steps <= 4, and the final one

    # The DiT checkpoint is self-contained: sampling needs no Ray and is deterministic given the seed.
    model = load_textldm(out["dit_checkpoint"])
    prompt = torch.randint(3, 20, (2, 6))
    a = model.generate(prompt, 10, steps=3, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 10, steps=3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 10) and torch.equal(a, b)

    # Re-running the finished pipeline's training reuses both stages instead of retraining.
    from latentlm.platform.methods.textldm.pipeline import train_textldm
    again = train_textldm(cfg, tmp_path / "run")
    assert again.checkpoints["dit"] == out["dit_checkpoint"]
