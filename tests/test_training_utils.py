"""Training-loop pieces that need no Ray: random truncation, split points, optimizer + LR schedule,
optimizer checkpoint round trip, EMA, batch column stacking, latent normalizer fitting."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from latentlm.models.checkpoint import load_tensors, read_json, save_tensors, write_json
from latentlm.platform.methods.textldm.config import build_config
from latentlm.platform.methods.textldm.train_dit import fit_normalizer, split_points
from latentlm.platform.methods.textldm.train_vae import random_crop
from latentlm.platform.training.parts import (EMA, derive_seed, load_optimizer, make_optimizer, optimizer_tensors,
                                              restore_optimizer, stack_column, write_training_checkpoint)
from latentlm.platform.training.sections import OptimConfig


# -- random_crop -----------------------------------------------------------------------------------

def test_random_crop_keeps_alignment_and_lengths():
    B, T, D, min_len = 5, 16, 3, 4
    tokens = torch.arange(B * T).view(B, T)
    teacher = tokens[..., None].float() * torch.tensor([1.0, -1.0, 0.5])    # teacher[b, t] encodes tokens[b, t]
    lengths = torch.tensor([16, 10, 4, 1, 0])
    seen_lengths, seen_starts = set(), set()
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        t2, l2, f2 = random_crop(tokens, lengths, teacher, min_len, g)
        new_len = t2.shape[1]
        start = int(t2[0, 0])            # row 0 of tokens is arange(T)
        assert min_len <= new_len <= T and 0 <= start <= T - new_len
        assert torch.equal(t2, tokens[:, start:start + new_len])
        assert f2.shape == (B, new_len, D) and torch.equal(f2, teacher[:, start:start + new_len])
        # real tokens inside the crop, counted position by position
        positions = torch.arange(start, start + new_len)
        expected = (positions[None, :] < lengths[:, None]).sum(1)
        assert torch.equal(l2, expected), (start, new_len, l2, expected)
        seen_lengths.add(new_len)
        seen_starts.add(start)
    assert seen_lengths == set(range(min_len, T + 1))   # every admissible length occurs
    assert len(seen_starts) > 5


def test_random_crop_without_teacher_and_short_windows():
    tokens = torch.arange(12).view(2, 6)
    lengths = torch.tensor([6, 3])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        t2, l2, f2 = random_crop(tokens, lengths, None, 8, g)   # min_len > seq_len: no crop
        assert f2 is None and torch.equal(t2, tokens) and torch.equal(l2, lengths)


def test_random_crop_is_deterministic_given_generator():
    tokens = torch.arange(64).view(2, 32)
    lengths = torch.tensor([32, 20])
    a = random_crop(tokens, lengths, None, 8, torch.Generator().manual_seed(3))
    b = random_crop(tokens, lengths, None, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# -- split_points (TextLDM DiT: one split per sample over its real tokens) -------------------------

def _splits(lengths, cfg, seed=0, repeats=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    return torch.stack([split_points(lengths, cfg, g) for _ in range(repeats)])  # (repeats, B)


def test_split_points_unconditional():
    cfg = build_config("tiny", {"dit": {"uncond_prob": 1.0}})
    assert set(_splits([64] * 8, cfg, repeats=20).flatten().tolist()) == {0}


def test_split_points_in_context_range_of_each_samples_own_length():
    cfg = build_config("tiny", {"dit": {"uncond_prob": 0.0}, "train_dit": {"context_fraction": [0.25, 0.5]}})
    lengths = torch.tensor([64, 40, 12])
    points = _splits(lengths, cfg, repeats=500)
    for column, length in zip(points.T, lengths.tolist()):
        assert column.min() >= round(0.25 * length) and column.max() <= round(0.5 * length)
    assert len(set(points[:, 0].tolist())) > 10
    assert len(set(points[0].tolist())) > 1 or len(set(points[1].tolist())) > 1  # samples differ within a batch


@pytest.mark.parametrize("fraction", [[0.0, 0.99], [0.5, 0.5]])
def test_split_points_never_give_an_all_padding_or_empty_target(fraction):
    """Per-document windows: the target is [split, length) of the sample's *real* tokens, never padding."""
    cfg = build_config("tiny", {"dit": {"uncond_prob": 0.2}, "train_dit": {"context_fraction": fraction}})
    lengths = torch.tensor([64, 33, 9, 2, 1])
    points = _splits(lengths, cfg, seed=1, repeats=500)
    assert (points < lengths).all()                  # at least one real target token, every sample, every draw
    assert (points[:, lengths >= 2] >= 0).all() and (points[:, -1] == 0).all()  # one real token: unconditional
    conditional = points[:, :3]
    assert (conditional[conditional > 0] >= 1).all()


def test_split_points_mix_unconditional_per_sample():
    cfg = build_config("tiny", {"dit": {"uncond_prob": 0.3}})
    points = _splits([64] * 20, cfg, seed=2, repeats=200)
    share = (points == 0).float().mean().item()
    assert 0.25 < share < 0.35
    assert ((points == 0).any(1) & (points > 0).any(1)).float().mean() > 0.9  # mixed inside one batch
    lo, hi = cfg.train_dit.context_fraction
    assert ((points == 0) | ((points >= round(lo * 64)) & (points <= round(hi * 64)))).all()


# -- optimizer + schedule --------------------------------------------------------------------------

def _lrs(optim: OptimConfig, steps: int) -> list[float]:
    model = nn.Linear(4, 4)
    opt, sched = make_optimizer(model.parameters(), optim)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def test_make_optimizer_warmup_then_cosine():
    optim = OptimConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, log_every=1)
    lrs = _lrs(optim, 131)
    assert lrs[0] == pytest.approx(0.1)                      # (0 + 1) / warmup
    assert lrs[4] == pytest.approx(0.5)
    assert lrs[9] == pytest.approx(1.0)                      # end of warmup
    assert lrs[10] == pytest.approx(1.0)                     # cosine starts at the peak
    assert lrs[55] == pytest.approx(0.55)                    # half way: min + (1 - min) / 2
    assert lrs[100] == pytest.approx(0.1)                    # end: lr * min_lr_ratio
    assert lrs[130] == pytest.approx(0.1)                    # stays at the floor past the end
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10]))      # warmup increases
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:100], lrs[11:101]))  # then decays monotonically
    assert min(lrs) >= 0.1 - 1e-12
    for step in (10, 33, 77, 99):                            # the cosine formula in between
        progress = (step - 10) / 90
        assert lrs[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def test_make_optimizer_no_warmup():
    lrs = _lrs(OptimConfig(steps=20, warmup_steps=0, lr=2.0, min_lr_ratio=0.0, log_every=1), 21)
    assert lrs[0] == pytest.approx(2.0) and lrs[20] == pytest.approx(0.0, abs=1e-12)


def test_make_optimizer_param_groups():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model[2].bias.requires_grad_(False)
    optim = OptimConfig(steps=10, warmup_steps=0, weight_decay=0.05, betas=(0.8, 0.9), log_every=1)
    opt, _ = make_optimizer(model.parameters(), optim)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert tuple(decay["betas"]) == (0.8, 0.9)


# -- optimizer checkpoint round trip ---------------------------------------------------------------

def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))


def _train(model, opt, sched, steps, start):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def test_optimizer_tensors_round_trip(tmp_path):
    optim = OptimConfig(steps=20, warmup_steps=3, lr=1e-2, weight_decay=0.1, log_every=1)
    model = _toy()
    opt, sched = make_optimizer(model.parameters(), optim)
    _train(model, opt, sched, 5, 0)

    tensors, meta = optimizer_tensors(opt)
    assert tensors and all(torch.is_tensor(v) for v in tensors.values())
    save_tensors(tmp_path / "optimizer.safetensors", tensors)     # what a checkpoint stores: no pickle
    write_json(tmp_path / "optimizer.json", meta)

    restored = copy.deepcopy(model)
    opt2, sched2 = make_optimizer(restored.parameters(), optim)
    load_optimizer(opt2, load_tensors(tmp_path / "optimizer.safetensors"), read_json(tmp_path / "optimizer.json"))
    sched2.load_state_dict(sched.state_dict())
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for pid in a["state"]:
        for key, value in a["state"][pid].items():
            assert torch.equal(value, b["state"][pid][key]), (pid, key)
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]

    _train(model, opt, sched, 3, 5)
    _train(restored, opt2, sched2, 3, 5)
    for p, q in zip(model.parameters(), restored.parameters()):
        assert torch.equal(p, q)


def test_training_checkpoint_restores_optimizer_and_schedule(tmp_path):
    optim = OptimConfig(steps=20, warmup_steps=4, lr=1e-2, log_every=1)
    model = _toy()
    opt, sched = make_optimizer(model.parameters(), optim)
    _train(model, opt, sched, 6, 0)
    write_training_checkpoint(tmp_path, config={"x": 1}, modules={"model": model.state_dict()}, optimizer=opt,
                              scheduler=sched, state={"step": 6})
    restored = _toy()
    restored.load_state_dict(load_tensors(tmp_path / "model.safetensors"))
    opt2, sched2 = make_optimizer(restored.parameters(), optim)
    restore_optimizer(tmp_path, opt2, sched2)
    assert sched2.last_epoch == sched.last_epoch == 6 and sched2.get_last_lr() == sched.get_last_lr()
    _train(model, opt, sched, 3, 6)
    _train(restored, opt2, sched2, 3, 6)
    for p, q in zip(model.parameters(), restored.parameters()):
        assert torch.equal(p, q)
    assert sched2.get_last_lr() == sched.get_last_lr()


# -- EMA ---------------------------------------------------------------------------------------------

class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("count", torch.tensor(3))

    def set(self, value: float, count: int):
        with torch.no_grad():
            self.lin.weight.fill_(value)
            self.lin.bias.fill_(-value)
        self.count.fill_(count)


def test_ema_update_math():
    model = _Toy()
    model.set(1.0, 3)
    ema = EMA(model, 0.5)
    assert torch.equal(ema.shadow["lin.weight"], torch.ones(2, 2))
    model.set(3.0, 4)                                   # the shadow is a copy, not a view
    assert torch.equal(ema.shadow["lin.weight"], torch.ones(2, 2))
    ema.update(model)                                   # 0.5 * 1 + 0.5 * 3
    assert torch.allclose(ema.shadow["lin.weight"], torch.full((2, 2), 2.0))
    assert torch.allclose(ema.shadow["lin.bias"], torch.full((2,), -2.0))
    assert int(ema.shadow["count"]) == 4                # non-float buffers are copied
    model.set(6.0, 5)
    ema.update(model)                                   # 0.5 * 2 + 0.5 * 6
    assert torch.allclose(ema.shadow["lin.weight"], torch.full((2, 2), 4.0))
    assert int(ema.shadow["count"]) == 5
    assert ema.state_dict() is ema.shadow
    fresh = _Toy()
    fresh.load_state_dict(ema.state_dict())             # loadable into the model
    assert torch.allclose(fresh.lin.weight, torch.full((2, 2), 4.0)) and int(fresh.count) == 5


def test_ema_decay_general():
    model = _Toy()
    model.set(0.0, 0)
    ema = EMA(model, 0.9)
    model.set(10.0, 0)
    for _ in range(3):
        ema.update(model)
    expected = 10.0 * (1 - 0.9 ** 3)
    assert torch.allclose(ema.shadow["lin.weight"], torch.full((2, 2), expected))


# -- stack_column --------------------------------------------------------------------------------------

def test_stack_column_object_arrays():
    column = np.empty(3, dtype=object)
    for i in range(3):
        column[i] = np.arange(4, dtype=np.int32) + i
    out = stack_column({"tokens": column}, "tokens")
    assert out.shape == (3, 4) and out.dtype == np.int64
    np.testing.assert_array_equal(out, np.arange(4)[None] + np.arange(3)[:, None])
    flat = stack_column({"teacher": column}, "teacher", np.float32)
    assert flat.dtype == np.float32 and flat.shape == (3, 4)


def test_stack_column_plain_arrays():
    column = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = stack_column({"tokens": column}, "tokens")
    assert out.dtype == np.int64 and np.array_equal(out, column)
    lengths = stack_column({"length": np.array([1, 2, 3], dtype=np.int32)}, "length")
    assert lengths.dtype == np.int64 and lengths.tolist() == [1, 2, 3]


# -- fit_normalizer --------------------------------------------------------------------------------

class _FakeVAE:
    """encode(tokens, valid) -> (mu, logvar, extra) with mu[b, t] = [tokens, 2 * tokens + 1]."""

    def encode(self, ids, valid=None):
        mu = torch.stack([ids.float(), 2 * ids.float() + 1], dim=-1)
        return mu, torch.zeros_like(mu), None


def test_fit_normalizer_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 50, size=(4, 8)) for _ in range(5)]
    stream = iter([(0, i, {"tokens": b, "length": np.full(4, 8)}) for i, b in enumerate(batches)])
    normalizer = fit_normalizer(_FakeVAE(), stream, 12, 2, "cpu", 1)   # 12 windows: 3 batches of 4
    used = np.concatenate(batches[:3]).reshape(-1).astype(np.float64)
    mu = np.stack([used, 2 * used + 1], -1)
    np.testing.assert_allclose(normalizer.mean.numpy(), mu.mean(0), rtol=1e-6)
    np.testing.assert_allclose(normalizer.std.numpy(), mu.std(0, ddof=1), rtol=1e-5)
    next(stream)   # exactly three batches were consumed
    next(stream)
    with pytest.raises(StopIteration):
        next(stream)


def test_fit_normalizer_ignores_padding():
    """Per-document windows: only each window's real tokens enter the latent statistics."""
    tokens = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 0]])
    lengths = np.array([3, 5])
    stream = iter([(0, 0, {"tokens": tokens, "length": lengths})])
    normalizer = fit_normalizer(_FakeVAE(), stream, 2, 2, "cpu", 1)
    real = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float64)
    mu = np.stack([real, 2 * real + 1], -1)
    np.testing.assert_allclose(normalizer.mean.numpy(), mu.mean(0), rtol=1e-6)
    np.testing.assert_allclose(normalizer.std.numpy(), mu.std(0, ddof=1), rtol=1e-5)


def test_make_optimizer_scales_learning_rates_per_parameter_through_the_schedule():
    import torch
    from latentlm.platform.training.sections import OptimConfig
    from latentlm.platform.training.parts import make_optimizer
    slow, fast = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    slow_ids = {id(p) for p in slow.parameters()}
    optim = OptimConfig(steps=10, warmup_steps=2, lr=1e-2)
    opt, sched = make_optimizer([*slow.parameters(), *fast.parameters()], optim,
                                lambda p: 0.01 if id(p) in slow_ids else 1.0)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(slow.weight)] == pytest.approx(0.01 * lrs[id(fast.weight)])
    assert {g["weight_decay"] for g in opt.param_groups} == {optim.weight_decay, 0.0}


# -- derived seeds ----------------------------------------------------------------------------------------------

# every random stream the training loops seed: (stage, purpose) and whether it is drawn per rank
TRAINING_STREAMS = [
    ("vae", "torch", True), ("vae", "crops", False), ("vae", "data", False), ("vae", "noise", True),
    ("dit", "torch", True), ("dit", "splits", False), ("dit", "normalizer", False), ("dit", "data", False),
    ("ldlm", "torch", True), ("ldlm", "noise", True), ("ldlm", "timesteps", True), ("ldlm", "data", False),
    ("post_decoder", "torch", True), ("post_decoder", "noise", True), ("post_decoder", "data", False),
    ("joint", "torch", False), ("joint", "noise", True), ("joint", "data", False),
    ("gpt", "torch", False), ("gpt", "data", False)]


def test_derived_seeds_stay_exactly_known():
    """Every run's losses follow from these values: a change to the derivation changes every result."""
    assert derive_seed(0, "vae", "torch", 0) == 14865471715803867804
    assert derive_seed(7, "dit", "splits") == 17614313140572406449


def test_no_two_streams_of_any_runs_share_a_seed():
    """Offsets like ``seed + 17`` for a second stage made the DiT of seed 0 replay the VAE stream of seed 17; derived
    seeds of different runs, stages, purposes and ranks are all distinct."""
    seen = {}
    for seed in range(200):
        for stage, purpose, per_rank in TRAINING_STREAMS:
            for key in [(stage, purpose, rank) for rank in range(4)] if per_rank else [(stage, purpose)]:
                value = derive_seed(seed, *key)
                assert value not in seen, f"{(seed, *key)} and {seen[value]} share a seed"
                seen[value] = (seed, *key)
    # the per-epoch shuffle seeds of a data stream are distinct from each other and from every stream above
    order = derive_seed(0, "vae", "data")
    assert len({derive_seed(order, epoch) for epoch in range(100)} | set(seen)) == 100 + len(seen)


def test_training_code_derives_every_seed():
    """No seed arithmetic (``cfg.seed + 17``, ``seed * 1000 + rank``) is left in the training code."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "platform"
    offenders = [f"{path.relative_to(root)}:{n}: {line.strip()}"
                 for path in [*root.glob("methods/*/*.py"), *root.glob("training/*.py")]
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"seed\s*[-+*]\s*\w|\w\s*[-+*]\s*(cfg\.)?seed\b", line)]
    assert not offenders, offenders
