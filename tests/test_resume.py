"""Fault tolerance: a training worker killed mid-run is restarted by FailureConfig, resumes from the last
checkpoint and finishes bit-identically to an uninterrupted run (weights, optimizer, LR schedule, RNG
streams and data position all restored). Plus the no-Ray round trips of the pieces it relies on."""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from latentlm.models.checkpoint import load_tensors
from latentlm.platform.training.engine import TorchEngine
from latentlm.platform.training.parts import WorkerContext, rng_state, set_rng_state
from latentlm.platform.training.sections import OptimConfig

from test_deepspeed import prepare, run_vae, vae_config

STEPS, CHECKPOINT_EVERY, FAULT_AT = 12, 4, 10


@pytest.mark.ray
def test_killed_worker_resumes_bit_identically(tiny_overrides, tmp_path_factory, tmp_path, ray_local):
    """2 workers, DeepSpeed ZeRO-2, with every random stream in play: posterior noise (torch, per rank),
    random truncation (the loop's generator), local shuffling (data order). The VAE set has 128 windows =
    8 batches per epoch, so the run resumes from step 8 (the last batch of epoch 0) into epoch 1."""
    cfg = vae_config(tiny_overrides, deepspeed={"enabled": True, "zero_stage": 2},
                     train_vae={"optim": {"steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY}})
    data = prepare(cfg, tmp_path_factory)
    clean_checkpoint, clean = run_vae(copy.deepcopy(cfg), data, tmp_path / "clean")

    marker = tmp_path / "fault-injected"
    checkpoint, resumed = run_vae(copy.deepcopy(cfg), data, tmp_path / "faulty", max_failures=1,
                                  inject_fault={"step": FAULT_AT, "marker": str(marker)})

    assert marker.exists()  # rank 0 did exit at step 10 ...
    logged = [json.loads(line)["step"] for line in (tmp_path / "faulty" / "vae_metrics.jsonl").read_text().splitlines()]
    assert logged == [*range(1, FAULT_AT), *range(2 * CHECKPOINT_EVERY + 1, STEPS + 1)]  # ... and resumed at 9
    assert resumed[STEPS]["epoch"] == 1
    print(f"final loss: uninterrupted {clean[STEPS]['loss']!r}, resumed {resumed[STEPS]['loss']!r}")
    assert [resumed[s]["loss"] for s in range(1, STEPS + 1)] == [clean[s]["loss"] for s in range(1, STEPS + 1)]
    weights = load_tensors(checkpoint / "vae.safetensors")
    clean_weights = load_tensors(clean_checkpoint / "vae.safetensors")
    assert all(torch.equal(weights[k], clean_weights[k]) for k in clean_weights)


# -- round trips without Ray -------------------------------------------------------------------------

def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))


def _engine(model, accumulation, micro):
    optim = OptimConfig(steps=20, warmup_steps=3, lr=1e-2, weight_decay=0.1, grad_clip=0.5, log_every=1)
    return TorchEngine(model, optim, WorkerContext(0, 1, torch.device("cpu")), micro, accumulation,
                       torch.float32, "toy")


def _train(engine, steps, start):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        for i in range(engine.accumulation):
            rows = slice(i * engine.micro_batch_size, (i + 1) * engine.micro_batch_size)
            engine.backward((engine(x[rows]) - y[rows]).pow(2).mean())
            engine.step()


def test_torch_engine_accumulation_matches_one_big_batch():
    whole, accumulated = _engine(_toy(), 1, 8), _engine(_toy(), 2, 4)
    _train(whole, 5, 0)
    _train(accumulated, 5, 0)
    assert accumulated.scheduler.last_epoch == whole.scheduler.last_epoch == 5  # one update per global batch
    for p, q in zip(whole.module.parameters(), accumulated.module.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert accumulated.grad_norm == pytest.approx(whole.grad_norm, rel=1e-5)


def test_torch_engine_save_load_continues_identically(tmp_path):
    engine = _engine(_toy(), 2, 4)
    _train(engine, 4, 0)
    engine.save(tmp_path)
    restored = _engine(nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3)), 2, 4)
    restored.load(tmp_path)
    assert restored.lr == engine.lr
    _train(engine, 3, 4)
    _train(restored, 3, 4)
    for p, q in zip(engine.module.parameters(), restored.module.parameters()):
        assert torch.equal(p, q)


def test_rng_state_round_trip(tmp_path):
    """All streams come back: python, numpy, torch and the loop's own generators (JSON + safetensors)."""
    from latentlm.models.checkpoint import read_json, save_tensors, write_json
    generators = {"crop": torch.Generator().manual_seed(5)}
    torch.rand(3, generator=generators["crop"])
    random.random()
    torch.rand(1)
    np.random.randn()  # numpy now holds a cached gaussian: part of its state too
    tensors, meta = rng_state(generators)
    save_tensors(tmp_path / "rng.safetensors", tensors)
    write_json(tmp_path / "rng.json", meta)

    def draw():
        return (random.random(), float(np.random.randn()), float(torch.rand(1)),
                float(torch.rand(1, generator=generators["crop"])))
    expected = draw()
    draw()
    set_rng_state(load_tensors(tmp_path / "rng.safetensors"), read_json(tmp_path / "rng.json"), generators)
    assert draw() == expected
