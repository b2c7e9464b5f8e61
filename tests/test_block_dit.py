"""Cola DLM's block-causal DiT: the attention mask against a dense reference, information flow, and
KV-cached block-wise sampling against recomputing the history."""
from __future__ import annotations

import pytest
import torch

from latentlm.models.block_dit import (BlockCausalDiT, BlockDiTConfig, BlockKVCache, sample_blocks,
                                       two_stream_mask)


def dense_reference(length: int, block_size: int) -> torch.Tensor:
    """Spelled out: (stream, position) pairs a query may see."""
    allowed = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for qs in (0, 1):
        for qi in range(length):
            for ks in (0, 1):
                for ki in range(length):
                    qb, kb = qi // block_size, ki // block_size
                    if qs == 0:    # clean history stream: block-causal over clean blocks
                        ok = ks == 0 and kb <= qb
                    else:          # noisy block: its own noisy block + strictly earlier clean blocks
                        ok = (ks == 1 and kb == qb) or (ks == 0 and kb < qb)
                    allowed[qs * length + qi, ks * length + ki] = ok
    return allowed


@pytest.mark.parametrize("length,block_size", [(8, 1), (8, 4), (10, 4), (7, 16), (12, 3), (5, 5)])
def test_two_stream_mask_matches_dense_reference(length, block_size):
    assert torch.equal(two_stream_mask(length, block_size), dense_reference(length, block_size))


def model(block_size=4, depth=2, seed=0):
    torch.manual_seed(seed)
    m = BlockCausalDiT(BlockDiTConfig(latent_dim=6, hidden_dim=32, depth=depth, n_heads=2, block_size=block_size))
    for p in m.parameters():  # adaLN-Zero starts as the identity; randomise so every path carries signal
        torch.nn.init.normal_(p, std=0.3)
    return m.eval()


@pytest.mark.parametrize("length,block_size", [(12, 4), (10, 4), (9, 1)])
def test_a_block_sees_exactly_its_noisy_block_and_earlier_clean_blocks(length, block_size):
    m = model(block_size)
    clean, noisy = torch.randn(1, length, 6), torch.randn(1, length, 6)
    n_blocks = -(-length // block_size)
    t = torch.rand(1, n_blocks)
    base = m(clean, noisy, t)
    for b in range(n_blocks):
        span = slice(b * block_size, min(length, (b + 1) * block_size))
        later = slice(span.stop, length)
        # the clean version of block b and everything after it is invisible to block b
        c2 = clean.clone()
        c2[:, span.start:] += 1.0
        torch.testing.assert_close(m(c2, noisy, t)[:, span], base[:, span])
        # other blocks' noisy latents are invisible too
        n2 = noisy.clone()
        n2[:, later] += 1.0
        n2[:, :span.start] += 1.0
        torch.testing.assert_close(m(clean, n2, t)[:, span], base[:, span])
        if b > 0:  # earlier clean blocks are seen
            c3 = clean.clone()
            c3[:, :span.start] += 1.0
            assert not torch.allclose(m(c3, noisy, t)[:, span], base[:, span])


def test_kv_cached_blockwise_sampling_equals_uncached():
    """Same noise, same latents. In float64 so that a real mismatch cannot hide behind rounding noise (the
    randomised network amplifies float32 differences in summation order to ~1e-4 over 15 Euler steps)."""
    m = model(block_size=4, depth=3).double()
    prefix = torch.randn(2, 8, 6, dtype=torch.float64)
    noise = torch.randn(2, 12, 6, dtype=torch.float64)
    for cfg in (1.0, 3.0):
        cached = sample_blocks(m, prefix, noise, steps=5, cfg_scale=cfg, use_cache=True)
        uncached = sample_blocks(m, prefix, noise, steps=5, cfg_scale=cfg, use_cache=False)
        torch.testing.assert_close(cached, uncached, rtol=1e-9, atol=1e-9)
    assert cached.shape == (2, 12, 6)


def test_commit_grows_the_cache_by_one_block():
    m = model(block_size=4)
    cache = BlockKVCache(len(m.layers))
    m.commit_blocks(torch.randn(1, 8, 6), cache)
    assert cache.length == 8
    m.commit(torch.randn(1, 4, 6), cache)
    assert cache.length == 12 and all(k.shape[2] == 12 for k, _ in cache.layers)


def test_block_size_one_is_a_per_token_causal_prior():
    """With blocks of one latent, position i's prediction depends on clean positions < i and its own noisy
    latent only: an autoregressive (per-token causal) prior over latents."""
    m = model(block_size=1)
    clean, noisy, t = torch.randn(1, 6, 6), torch.randn(1, 6, 6), torch.rand(1, 6)
    base = m(clean, noisy, t)
    for i in range(6):
        c2 = clean.clone()
        c2[:, i:] += 1.0
        torch.testing.assert_close(m(c2, noisy, t)[:, i], base[:, i])
        n2 = noisy.clone()
        n2[:, torch.arange(6) != i] += 1.0
        torch.testing.assert_close(m(clean, n2, t)[:, i], base[:, i])


def test_block_flow_matching_loss_falls_and_history_is_stop_gradient():
    from latentlm.models.block_dit import block_flow_matching_loss
    from latentlm.models.flow import TimestepSchedule
    torch.manual_seed(0)
    m = BlockCausalDiT(BlockDiTConfig(latent_dim=4, hidden_dim=32, depth=2, n_heads=2, block_size=4))
    # data with structure across blocks: each sequence repeats one random vector
    data = torch.randn(64, 1, 4).expand(64, 12, 4).contiguous()
    schedule = TimestepSchedule("logit_normal", loc=0.0, scale=1.0)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        loss = block_flow_matching_loss(m, data[torch.randint(0, 64, (16,), generator=gen)], schedule, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    z = torch.randn(2, 8, 4, requires_grad=True)
    block_flow_matching_loss(m, z, schedule).backward()
    assert z.grad is not None  # through the noisy stream and the target, not the clean history


def test_prompt_not_a_block_multiple_every_first_block_mode_matches_recomputation():
    """A 6-latent prompt with blocks of 4: the prompt's last 2 latents lie inside the first generated block
    (block-aligned like training), and under every conditioning mode the KV cache matches recomputing the
    history; the modes differ from each other."""
    m = model(block_size=4, depth=2).double()
    prefix = torch.randn(1, 6, 6, dtype=torch.float64)
    noise = torch.randn(1, 10, 6, dtype=torch.float64)
    outs = {}
    for mode, r, gamma in [("clean", 1, 1.0), ("partial_repaint", 1, 1.0), ("partial_repaint", 2, 0.5)]:
        runs = [sample_blocks(m, prefix, noise, steps=4, cfg_scale=2.0, first_block=mode, repaint_repeats=r,
                              repaint_fraction=gamma, use_cache=cache, generator=torch.Generator().manual_seed(5))
                for cache in (True, False)]
        torch.testing.assert_close(runs[0], runs[1], rtol=1e-9, atol=1e-9)
        assert runs[0].shape == (1, 10, 6)
        outs[(mode, r, gamma)] = runs[0]
    values = list(outs.values())
    assert all(not torch.allclose(a, b) for i, a in enumerate(values) for b in values[i + 1:])


class CallLog:
    """Wraps a model's ``block_velocity`` and records every call's (noisy block, t, known) without changing it."""

    def __init__(self, m):
        self.calls, self._inner = [], m.block_velocity
        m.block_velocity = self

    def __call__(self, noisy_block, t, cache, known=0):
        self.calls.append((noisy_block.clone(), t.clone(), known, cache is None))
        return self._inner(noisy_block, t, cache, known)


def test_clean_condition_keeps_the_known_latents_exactly_clean_at_every_step():
    """Clean-condition: every network call of the first block sees the prompt's tail latents exactly, tagged
    as clean (known = 2), on both CFG branches, and they come back unchanged; later blocks have none."""
    m = model(block_size=4, depth=2).double()
    prefix = torch.randn(2, 6, 6, dtype=torch.float64)
    noise = torch.randn(2, 10, 6, dtype=torch.float64)
    log = CallLog(m)
    sample_blocks(m, prefix, noise, steps=5, cfg_scale=3.0, first_block="clean")
    first = log.calls[:10]   # 5 steps x (conditional, unconditional)
    assert len(log.calls) == 30 and [c[3] for c in first] == [False, True] * 5
    for block, _, known, _ in first:
        assert known == 2 and torch.equal(block[:, :2], prefix[:, 4:].to(block.dtype))
    assert all(known == 0 for _, _, known, _ in log.calls[10:])


@pytest.mark.parametrize("repeats,fraction,cfg", [(1, 1.0, 1.0), (3, 1.0, 1.0), (3, 0.5, 1.0), (2, 0.25, 2.0),
                                                  (4, 0.1, 2.0)])
def test_partial_repaint_makes_the_model_calls_it_promises(repeats, fraction, cfg):
    """(r, gamma): each of the first ceil(gamma x steps) steps of the first block runs r times, every other
    step once; CFG doubles every call. The known latents are never tagged clean under partial repaint."""
    from latentlm.models.block_dit import guided_steps, repaint_model_calls
    m = model(block_size=4, depth=1).double()
    prefix, noise = torch.randn(1, 6, 6, dtype=torch.float64), torch.randn(1, 10, 6, dtype=torch.float64)
    log = CallLog(m)
    steps = 8
    sample_blocks(m, prefix, noise, steps=steps, cfg_scale=cfg, first_block="partial_repaint", repaint_repeats=repeats,
                  repaint_fraction=fraction, generator=torch.Generator().manual_seed(0))
    assert len(log.calls) == repaint_model_calls(steps, 3, repeats, fraction, cfg != 1.0)
    assert len(log.calls) == (steps * 3 + (repeats - 1) * guided_steps(steps, fraction)) * (2 if cfg != 1.0 else 1)
    assert all(known == 0 for _, _, known, _ in log.calls)
    # the guided calls see the prompt tail on its noisy path at the call's time: t x known + (1 - t) x noise
    times = [float(t[0]) for _, t, _, uncond in log.calls if not uncond]
    assert times[:repeats] == [0.0] * repeats


def test_first_block_modes_refuse_bad_settings():
    from latentlm.models.config import ConfigError
    m = model(block_size=4)
    prefix, noise = torch.randn(1, 6, 6), torch.randn(1, 4, 6)
    for kwargs, field in [({"first_block": "repaint"}, "first_block"), ({"repaint_repeats": 0}, "repaint_repeats"),
                          ({"repaint_fraction": 0.0}, "repaint_fraction"), ({"repaint_fraction": 1.5}, "repaint_fraction"),
                          ({"first_block": "left_pad"}, "block size")]:
        with pytest.raises(ConfigError, match=field):
            sample_blocks(m, prefix, noise, steps=2, **kwargs)


def test_clean_latents_are_tagged_as_data_in_the_flow_convention():
    """The clean history (and a clean prefix in the noisy stream) carries t = CLEAN_T, and CLEAN_T is the data
    end of flow.py's path, not its noise end."""
    from latentlm.models.block_dit import CLEAN_T
    from latentlm.models.flow import interpolate
    data, noise = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(interpolate(data, noise, torch.tensor(CLEAN_T))[0], data)
    m = model(block_size=4)
    seen = []
    embed = m._embed
    m._embed = lambda z, t_tokens, stream: (seen.append((stream, t_tokens.clone())), embed(z, t_tokens, stream))[1]
    t_blocks = torch.tensor([[0.2, 0.7]])
    m(torch.randn(1, 8, 6), torch.randn(1, 8, 6), t_blocks, clean_prefix=torch.tensor([[0, 3]]))
    (s0, clean_t), (s1, noisy_t) = seen
    assert s0 == 0 and torch.all(clean_t == CLEAN_T)
    assert s1 == 1 and torch.allclose(noisy_t, torch.tensor([[0.2] * 4 + [CLEAN_T] * 3 + [0.7]]))
    seen.clear()
    m.commit(torch.randn(1, 4, 6), BlockKVCache(len(m.layers)))
    assert seen[0][0] == 0 and torch.all(seen[0][1] == CLEAN_T)


def test_on_step_reports_each_blocks_new_latents_after_every_euler_step():
    """The progression hook: after Euler step i of each block, that block's new latents (a repainted prompt
    tail excluded); after the last step they are exactly what the sampler returns."""
    m = model(block_size=4, depth=2).double()
    prefix = torch.randn(1, 6, 6, dtype=torch.float64)
    noise = torch.randn(1, 10, 6, dtype=torch.float64)
    seen: dict[int, list[torch.Tensor]] = {}
    out = sample_blocks(m, prefix, noise, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0),
                        on_step=lambda i, x: seen.setdefault(i, []).append(x.clone()))
    assert sorted(seen) == [1, 2, 3] and [x.shape[1] for x in seen[1]] == [2, 4, 4]  # 2 prompt latents repainted
    assert torch.equal(torch.cat(seen[3], 1), out)
    first = torch.cat(seen[1], 1)
    assert not torch.allclose(first, out) and not torch.allclose(first, noise)  # moved, not finished


def test_block_flow_matching_loss_counts_only_real_latents():
    """Hand-computed with a model that echoes its noisy input: the loss averages the squared velocity error
    over the latents marked real, padding latents excluded."""
    from latentlm.models.block_dit import block_flow_matching_loss
    from latentlm.models.flow import TimestepSchedule

    class Echo(torch.nn.Module):
        config = BlockDiTConfig(latent_dim=3, hidden_dim=8, depth=1, n_heads=2, block_size=2)

        def forward(self, clean, noisy, t_blocks, clean_prefix=None):
            return noisy

    latents = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    schedule = TimestepSchedule("uniform")
    loss = block_flow_matching_loss(Echo(), latents, schedule, torch.Generator().manual_seed(4), mask)
    g = torch.Generator().manual_seed(4)
    t_blocks = schedule.sample(2 * 3, generator=g).view(2, 3)
    noise = torch.randn(latents.shape, generator=g)
    errors = []
    for b in range(2):
        for p in range(5):
            if mask[b, p]:
                t = t_blocks[b, p // 2]
                noisy = t * latents[b, p] + (1 - t) * noise[b, p]
                errors.append(((noisy - (latents[b, p] - noise[b, p])) ** 2).mean())
    torch.testing.assert_close(loss, torch.stack(errors).mean())


def test_random_length_clean_prefix_is_clean_tagged_and_out_of_the_loss():
    """With probability 1 every block of more than one latent keeps a clean prefix of 1 .. len-1 latents: the
    model sees those latents exactly (no noise) with their lengths, and the loss averages only the others."""
    from latentlm.models.block_dit import block_flow_matching_loss, random_clean_prefix
    from latentlm.models.flow import TimestepSchedule

    class Recorder(torch.nn.Module):
        config = BlockDiTConfig(latent_dim=3, hidden_dim=8, depth=1, n_heads=2, block_size=4)

        def forward(self, clean, noisy, t_blocks, clean_prefix=None):
            self.seen = (noisy.clone(), clean_prefix.clone())
            return noisy

    latents = torch.randn(3, 10, 3, generator=torch.Generator().manual_seed(0))  # blocks of 4, 4, 2
    model_ = Recorder()
    loss = block_flow_matching_loss(model_, latents, TimestepSchedule("uniform"), torch.Generator().manual_seed(1),
                                    clean_prefix_prob=1.0)
    noisy, prefix = model_.seen
    assert prefix.shape == (3, 3) and torch.all((prefix >= 1) & (prefix <= torch.tensor([3, 3, 1])))
    known = torch.zeros(3, 10, dtype=torch.bool)
    for b in range(3):
        for block in range(3):
            known[b, block * 4:block * 4 + int(prefix[b, block])] = True
    assert torch.equal(noisy[known], latents[known]) and not torch.allclose(noisy[~known], latents[~known])
    # the loss is the hand-computed mean over the latents outside the prefixes
    g = torch.Generator().manual_seed(1)
    TimestepSchedule("uniform").sample(9, generator=g)  # the loss draws the blocks' times first, then the noise
    noise = torch.randn(latents.shape, generator=g)
    errors = (noisy - (latents - noise)).pow(2).mean(-1)
    torch.testing.assert_close(loss, errors[~known].mean())
    assert torch.equal(random_clean_prefix(2, 8, 4, 0.0), torch.zeros(2, 2, dtype=torch.long))
