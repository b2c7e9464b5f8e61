"""Flow matching (timestep schedules, grids, Euler sampler, interpolation), the DiT (adaLN-Zero, context
handling, CFG), the flow-matching loss actually training, and TextLDM.generate."""
from __future__ import annotations

import math

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.models.dit import TextDiT, TextDiTConfig
from latentlm.models.flow import TimestepSchedule, euler_sample, guided_velocity, interpolate, time_grid
from latentlm.models.repa import REPAConfig
from latentlm.models.text_vae import TextVAE, TextVAEConfig
from latentlm.platform.methods.textldm.generator import LatentNormalizer, TextLDM, flow_matching_loss

D = 8  # latent channels

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_dit(seed: int = 0, perturb: bool = False, **overrides) -> TextDiT:
    kwargs = dict(latent_dim=D, hidden_dim=32, depth=2, n_heads=2, max_seq_len=32)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    dit = TextDiT(TextDiTConfig(**kwargs)).eval()
    if perturb:
        perturb_zero_init(dit, seed)
    return dit


@torch.no_grad()
def perturb_zero_init(dit: TextDiT, seed: int) -> None:
    """Random re-init of the adaLN-Zero layers so outputs are not identically zero."""
    g = torch.Generator().manual_seed(seed + 100)
    layers = [b.adaLN[-1] for b in dit.blocks] + [dit.final.adaLN[-1], dit.final.linear]
    for layer in layers:
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.1)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)


def randn(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- timestep schedules ----------------------------------------------------------------------------

def test_logit_normal_moments():
    schedule = TimestepSchedule("logit_normal", loc=0.3, scale=1.5)
    t = schedule.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (200_000,)
    assert bool(((t > 0) & (t < 1)).all())
    logit = torch.logit(t.double())
    assert logit.mean().item() == pytest.approx(0.3, abs=0.02)
    assert logit.std().item() == pytest.approx(1.5, abs=0.02)


def test_uniform_moments():
    t = TimestepSchedule("uniform").sample(200_000, generator=torch.Generator().manual_seed(0))
    assert bool(((t >= 0) & (t < 1)).all())
    assert t.mean().item() == pytest.approx(0.5, abs=0.005)
    assert t.var().item() == pytest.approx(1 / 12, abs=0.003)


def test_schedule_sampling_is_seeded():
    s = TimestepSchedule("logit_normal")
    a = s.sample(16, generator=torch.Generator().manual_seed(3))
    b = s.sample(16, generator=torch.Generator().manual_seed(3))
    c = s.sample(16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("schedule", [TimestepSchedule("logit_normal", loc=0.3, scale=1.5),
                                      TimestepSchedule("logit_normal", loc=-1.0, scale=0.7),
                                      TimestepSchedule("uniform")])
def test_quantile_is_inverse_cdf(schedule):
    for dtype in (torch.float32, torch.float64):
        ends = schedule.quantile(torch.tensor([0.0, 1.0], dtype=dtype))
        assert ends[0].item() == 0.0 and ends[1].item() == 1.0
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    q = schedule.quantile(u)
    assert bool((q[1:] > q[:-1]).all()), "quantile must be strictly increasing"
    assert bool(((q[1:-1] > 0) & (q[1:-1] < 1)).all())
    # empirical CDF of samples at quantile(u) ~ u
    samples = schedule.sample(200_000, generator=torch.Generator().manual_seed(1)).double()
    probe = torch.tensor([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99], dtype=torch.float64)
    qs = schedule.quantile(probe)
    ecdf = (samples[None, :] <= qs[:, None]).double().mean(1)
    torch.testing.assert_close(ecdf, probe, atol=0.005, rtol=0)


def test_logit_normal_quantile_closed_form():
    s = TimestepSchedule("logit_normal", loc=0.3, scale=1.5)
    phi_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # P(Z <= 1)
    q = s.quantile(torch.tensor([0.5, phi_1, 1 - phi_1], dtype=torch.float64))
    expected = torch.sigmoid(torch.tensor([0.3, 1.8, -1.2], dtype=torch.float64))
    torch.testing.assert_close(q, expected, atol=1e-9, rtol=0)


def test_schedule_config_validation():
    with pytest.raises(ConfigError, match=r"schedule\.kind"):
        TimestepSchedule("cosine")
    with pytest.raises(ConfigError, match=r"schedule\.scale"):
        TimestepSchedule("logit_normal", scale=0.0)


# -- time grids ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [None, TimestepSchedule("logit_normal", loc=0.3, scale=1.5),
                                      TimestepSchedule("uniform")])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_time_grid(schedule, steps):
    grid = time_grid(steps, schedule)
    assert grid.shape == (steps + 1,)
    assert grid.dtype == torch.float64
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert bool((grid[1:] > grid[:-1]).all())


def test_uniform_time_grid_values_and_schedule_grid_differs():
    torch.testing.assert_close(time_grid(4), torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    s = TimestepSchedule("logit_normal", loc=0.0, scale=1.5)
    g = time_grid(4, s)
    torch.testing.assert_close(g[1:-1], s.quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)))
    assert g[2].item() == pytest.approx(0.5, abs=1e-12)  # symmetric schedule: median at 0.5
    assert time_grid(4, dtype=torch.float32).dtype == torch.float32


def test_time_grid_rejects_zero_steps():
    with pytest.raises(ConfigError, match=r"sampler\.steps"):
        time_grid(0)


# -- Euler sampler --------------------------------------------------------------------------------------

def point_mass_velocity(x1: torch.Tensor):
    """Optimal FM velocity towards a point mass at x1: v(x, t) = (x1 - x) / (1 - t)."""
    def v(x, t):
        tt = t.double().view(-1, *([1] * (x.dim() - 1)))
        return ((x1.double() - x.double()) / (1 - tt).clamp_min(1e-12)).to(x.dtype)
    return v


@pytest.mark.parametrize("grid", [time_grid(1), time_grid(5), time_grid(37),
                                  time_grid(10, TimestepSchedule("logit_normal", loc=0.3, scale=1.5)),
                                  time_grid(25, TimestepSchedule("logit_normal", loc=-0.5, scale=1.0)),
                                  torch.tensor([0.0, 0.01, 0.4, 0.41, 0.97, 1.0], dtype=torch.float64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euler_lands_on_point_mass(grid, dtype):
    x1 = randn(3, 4, D, seed=1, dtype=dtype) * 2
    noise = randn(3, 4, D, seed=2, dtype=dtype)
    out = euler_sample(point_mass_velocity(x1), noise, grid)
    assert out.dtype == dtype and out.shape == noise.shape
    torch.testing.assert_close(out, x1, atol=1e-6, rtol=0)


def test_euler_constant_field_and_on_step():
    c = randn(2, 3, D, seed=7)
    noise = randn(2, 3, D, seed=8)
    calls = []
    grid = time_grid(12, TimestepSchedule("logit_normal"))
    times_seen = []

    def v(x, t):
        assert t.shape == (2,)
        times_seen.append(t[0].item())
        return c

    out = euler_sample(v, noise, grid, on_step=lambda i, x: calls.append((i, x.clone())))
    torch.testing.assert_close(out, noise + c, atol=1e-6, rtol=0)
    assert [i for i, _ in calls] == list(range(1, 13))
    # velocity evaluated at every grid point except the last (t = 1)
    torch.testing.assert_close(torch.tensor(times_seen, dtype=torch.float64), grid[:-1], atol=1e-6, rtol=0)
    # intermediate states follow the grid: x_i = noise + grid[i] * c
    for i, x in calls:
        torch.testing.assert_close(x, noise + grid[i].item() * c, atol=1e-6, rtol=0)
    torch.testing.assert_close(calls[-1][1], out)


# -- interpolation / guidance --------------------------------------------------------------------------

def test_interpolate_endpoints_and_velocity():
    data, noise = randn(3, 5, D, seed=1), randn(3, 5, D, seed=2)
    x0, v = interpolate(data, noise, torch.zeros(3))
    x1, _ = interpolate(data, noise, torch.ones(3))
    assert torch.equal(x0, noise) and torch.equal(x1, data)
    torch.testing.assert_close(v, data - noise)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt, _ = interpolate(data, noise, t)
    torch.testing.assert_close(xt[1], 0.25 * data[1] + 0.75 * noise[1])
    assert torch.equal(xt[0], noise[0]) and torch.equal(xt[2], data[2])


def test_guided_velocity():
    cond, uncond = randn(2, 3, seed=1), randn(2, 3, seed=2)
    torch.testing.assert_close(guided_velocity(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guided_velocity(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(guided_velocity(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))


# -- DiT ---------------------------------------------------------------------------------------------

def test_dit_shapes_and_zero_init():
    dit = tiny_dit()
    x, ctx, t = randn(3, 6, D, seed=1), randn(3, 4, D, seed=2), torch.tensor([0.1, 0.5, 0.9])
    out = dit(x, t, ctx)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))
    assert dit(randn(2, 9, D), torch.rand(2), None).shape == (2, 9, D)


def test_dit_context_none_equals_empty_context_and_null_context_equals_zeros():
    dit = tiny_dit(perturb=True)
    x, t = randn(3, 6, D, seed=1), torch.tensor([0.1, 0.5, 0.9])
    ctx = randn(3, 4, D, seed=2)
    out_none = dit(x, t, None)
    assert out_none.abs().max() > 1e-3  # not trivially zero
    assert torch.equal(out_none, dit(x, t, x.new_zeros(3, 0, D)))

    keep = torch.tensor([False, True, False])
    out_keep = dit(x, t, ctx, keep)
    zeroed = ctx.clone()
    zeroed[~keep] = 0
    torch.testing.assert_close(out_keep, dit(x, t, zeroed), atol=1e-6, rtol=0)
    torch.testing.assert_close(dit(x, t, ctx, torch.zeros(3, dtype=torch.bool)),
                               dit(x, t, torch.zeros_like(ctx)), atol=1e-6, rtol=0)
    torch.testing.assert_close(dit(x, t, ctx, torch.ones(3, dtype=torch.bool)), dit(x, t, ctx))
    # the context matters (so the equalities above are not vacuous), and so does t
    assert not torch.allclose(dit(x, t, ctx), dit(x, t, torch.zeros_like(ctx)), atol=1e-4)
    assert not torch.allclose(dit(x, t, ctx), dit(x, t.flip(0), ctx), atol=1e-4)


def test_dit_samples_are_independent_in_a_batch():
    dit = tiny_dit(perturb=True)
    x, ctx, t = randn(4, 5, D, seed=1), randn(4, 3, D, seed=2), torch.rand(4, generator=torch.Generator().manual_seed(0))
    full = dit(x, t, ctx)
    for i in range(4):
        torch.testing.assert_close(full[i:i + 1], dit(x[i:i + 1], t[i:i + 1], ctx[i:i + 1]), atol=1e-5, rtol=0)


def test_dit_cfg():
    dit = tiny_dit(perturb=True)
    x, ctx, t = randn(3, 6, D, seed=1), randn(3, 4, D, seed=2), torch.tensor([0.2, 0.6, 0.95])
    cond = dit(x, t, ctx)
    uncond = dit(x, t, torch.zeros_like(ctx))
    assert (cond - uncond).abs().max() > 1e-3
    torch.testing.assert_close(dit.forward_with_cfg(x, t, ctx, 1.0), cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dit.forward_with_cfg(x, t, ctx, 0.0), uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dit.forward_with_cfg(x, t, ctx, 4.0), uncond + 4.0 * (cond - uncond),
                               atol=1e-4, rtol=1e-5)
    # nothing to guide on: plain unconditional velocity whatever the scale
    torch.testing.assert_close(dit.forward_with_cfg(x, t, None, 7.0), dit(x, t, None))
    torch.testing.assert_close(dit.forward_with_cfg(x, t, x.new_zeros(3, 0, D), 7.0), dit(x, t, None))


def test_dit_zero_init_perturbed_by_training_too():
    """Zero-init layers still receive gradient (adaLN-Zero is trainable, not frozen)."""
    dit = tiny_dit().train()
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-2)
    ctx, target = randn(4, 3, D, seed=1), randn(4, 5, D, seed=2)
    for _ in range(3):
        loss = flow_matching_loss(dit, *window(ctx, target), TimestepSchedule()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    dit.eval()
    x, t = randn(4, 5, D, seed=3), torch.full((4,), 0.5)
    cond = dit(x, t, ctx)
    assert cond.abs().max() > 0
    torch.testing.assert_close(dit.forward_with_cfg(x, t, ctx, 1.0), cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dit.forward_with_cfg(x, t, ctx, 0.0), dit(x, t, torch.zeros_like(ctx)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field, overrides", [
    ("dit.latent_dim", dict(latent_dim=0)),
    ("dit.hidden_dim", dict(hidden_dim=33, n_heads=2)),
    ("dit.cfg_dropout", dict(cfg_dropout=1.5)),
    ("dit.uncond_prob", dict(uncond_prob=-0.1)),
    ("dit.null_context", dict(null_context="learned")),
])
def test_dit_config_validation(field, overrides):
    kwargs = dict(latent_dim=D, hidden_dim=32, depth=2, n_heads=2)
    kwargs.update(overrides)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TextDiTConfig(**kwargs)


# -- flow-matching loss -----------------------------------------------------------------------------

def window(ctx: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[context ; target] latents as one window per sample, with the same split for all."""
    b, tc, tt = ctx.shape[0], ctx.shape[1], target.shape[1]
    is_target = torch.cat([torch.zeros(tc, dtype=torch.bool), torch.ones(tt, dtype=torch.bool)]).expand(b, -1)
    return torch.cat([ctx, target], 1), is_target


def test_flow_matching_loss_matches_definition():
    dit = tiny_dit(perturb=True, cfg_dropout=0.5)
    ctx, target = randn(6, 3, D, seed=1), randn(6, 4, D, seed=2)
    schedule = TimestepSchedule("logit_normal", loc=0.1, scale=1.2)
    out = flow_matching_loss(dit, *window(ctx, target), schedule, generator=torch.Generator().manual_seed(9))
    # replay the same random draws: t, then noise (over the whole window), then the CFG keep mask
    g = torch.Generator().manual_seed(9)
    t = schedule.sample(6, generator=g)
    noise = torch.randn(6, 7, D, generator=g)[:, 3:]
    keep = torch.rand(6, generator=g) >= 0.5
    assert 0 < keep.sum() < 6
    torch.testing.assert_close(out.t, t)
    tt = t.view(-1, 1, 1)
    pred = dit(tt * target + (1 - tt) * noise, t, ctx * keep.view(-1, 1, 1).float())
    expected = ((pred - (target - noise)) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)


def test_window_forward_equals_concatenated_forward():
    """Training's per-sample windows and sampling's [context ; target] are one computation."""
    dit = tiny_dit(perturb=True)
    ctx, x = randn(3, 2, D, seed=4), randn(3, 5, D, seed=5)
    t, keep = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([True, False, True])
    latents, is_target = window(ctx, x)
    torch.testing.assert_close(dit(latents, t, None, keep, is_target)[:, 2:], dit(x, t, ctx, keep), atol=1e-6, rtol=0)


def test_per_sample_splits_in_one_batch_equal_each_sample_alone():
    """Samples with different splits and padding in one batch get what each gets in its own call."""
    dit = tiny_dit(perturb=True)
    T = 8
    latents = randn(3, T, D, seed=6)
    splits, lengths = [2, 5, 0], [8, 7, 3]
    positions = torch.arange(T)
    is_target = positions[None] >= torch.tensor(splits)[:, None]
    valid = positions[None] < torch.tensor(lengths)[:, None]
    t = torch.tensor([0.3, 0.6, 0.8])
    batched = dit(latents, t, None, None, is_target, valid)
    for i, (split, length) in enumerate(zip(splits, lengths)):
        alone = dit(latents[i:i + 1, split:length], t[i:i + 1], latents[i:i + 1, :split] if split else None)
        torch.testing.assert_close(batched[i, split:length], alone[0], atol=1e-5, rtol=0)


def test_flow_matching_loss_counts_only_real_target_positions():
    """Hand-computed: the loss is the mean squared velocity error over valid target positions only."""
    class Echo(torch.nn.Module):  # predicts the input itself, so the error at every position is known
        config = TextDiTConfig(latent_dim=D, hidden_dim=32, depth=1, n_heads=2, cfg_dropout=0.0)

        def forward(self, x, t, context, keep, is_target, valid):
            return x

    latents = randn(2, 6, D, seed=7)
    is_target = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    schedule = TimestepSchedule("uniform")
    out = flow_matching_loss(Echo(), latents, is_target, schedule, generator=torch.Generator().manual_seed(3),
                             valid=valid)
    g = torch.Generator().manual_seed(3)
    t = schedule.sample(2, generator=g)
    noise = torch.randn(2, 6, D, generator=g)
    errors = []
    for b, positions in ((0, [2, 3, 4, 5]), (1, [1, 2])):
        for p in positions:
            x_t = t[b] * latents[b, p] + (1 - t[b]) * noise[b, p]
            errors.append(((x_t - (latents[b, p] - noise[b, p])) ** 2).mean())
    torch.testing.assert_close(out.loss, torch.stack(errors).mean())


def test_flow_matching_loss_cfg_dropout_one_is_unconditional():
    dit = tiny_dit(perturb=True, cfg_dropout=1.0)
    ctx, target = randn(4, 3, D, seed=1), randn(4, 4, D, seed=2)
    s = TimestepSchedule()
    a = flow_matching_loss(dit, *window(ctx, target), s, generator=torch.Generator().manual_seed(0)).loss
    b = flow_matching_loss(dit, *window(torch.zeros_like(ctx), target), s,
                           generator=torch.Generator().manual_seed(0)).loss
    torch.testing.assert_close(a, b)


def test_flow_matching_loss_falls_when_training():
    torch.manual_seed(0)
    n, tc, tt = 64, 4, 6
    ctx = randn(n, tc, D, seed=11)
    pattern = torch.sin(torch.arange(tt)[:, None] * 0.7 + torch.arange(D)[None, :] * 0.4) * 1.5
    target = ctx.mean(1, keepdim=True) * 2 + pattern  # (n, tt, D): depends on the context + structure
    dit = tiny_dit(hidden_dim=64, depth=2, n_heads=4, cfg_dropout=0.1).train()
    opt = torch.optim.AdamW(dit.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = TimestepSchedule()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        idx = torch.randint(0, n, (32,), generator=g)
        loss = flow_matching_loss(dit, *window(ctx[idx], target[idx]), schedule, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:15]) / 15, sum(losses[-30:]) / 30
    assert last < 0.7 * first, f"flow loss {first:.3f} -> {last:.3f}"


# -- TextLDM ------------------------------------------------------------------------------------------

def tiny_ldm(seed: int = 0) -> TextLDM:
    torch.manual_seed(seed)
    vae = TextVAE(TextVAEConfig(vocab_size=50, latent_dim=D, hidden_dim=32, n_heads=2, encoder_layers=1,
                                decoder_layers=1, repa=REPAConfig(enabled=False))).eval()
    dit = tiny_dit(seed=seed, perturb=True)
    tokens = torch.randint(0, 50, (16, 8), generator=torch.Generator().manual_seed(seed))
    mu, _, _ = vae.encode(tokens)
    normalizer = LatentNormalizer(D).fit(mu)
    return TextLDM(vae, dit, normalizer, TimestepSchedule("logit_normal", scale=1.5))


def test_latent_normalizer_roundtrip():
    z = randn(10, 7, D, seed=1) * 3 + 2
    norm = LatentNormalizer(D).fit(z)
    zn = norm.normalize(z)
    torch.testing.assert_close(zn.reshape(-1, D).mean(0), torch.zeros(D), atol=1e-5, rtol=0)
    torch.testing.assert_close(zn.reshape(-1, D).std(0), torch.ones(D), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.denormalize(zn), z, atol=1e-5, rtol=1e-5)


def test_generate_conditional_shapes_and_determinism():
    ldm = tiny_ldm()
    ctx = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(1))
    run = lambda seed: ldm.generate(ctx, target_len=7, steps=4, cfg_scale=2.0,
                                    generator=torch.Generator().manual_seed(seed))
    out = run(0)
    assert out.shape == (3, 7) and out.dtype == torch.long
    assert bool(((out >= 0) & (out < 50)).all())
    assert torch.equal(out, run(0))
    assert not torch.equal(out, run(1))


def test_ragged_batch_is_each_sample_generated_alone():
    """Mixed prompt and target lengths in one padded batch: every sample gets exactly what ``generate`` gives
    it alone with the generator state it would have after the samples before it (padding changes nothing)."""
    ldm = tiny_ldm()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (5, 2, 7)]
    target_lens = [6, 9, 3]
    seen = []
    ragged = ldm.generate_ragged(prompts, target_lens, steps=4, cfg_scale=3.0,
                                 generator=torch.Generator().manual_seed(0), on_step=lambda i, ids: seen.append(ids))
    alone, generator = [], torch.Generator().manual_seed(0)
    for prompt, n in zip(prompts, target_lens):
        alone.append(ldm.generate(torch.tensor([prompt]), n, steps=4, cfg_scale=3.0, generator=generator)[0].tolist())
    assert [len(x) for x in ragged] == target_lens and ragged == alone
    assert len(seen) == 4 and seen[-1] == ragged  # one id list per sample after each step
    with pytest.raises(ConfigError, match="prompts"):
        ldm.generate_ragged(prompts, target_lens[:2])


def test_generate_matches_manual_pipeline():
    ldm = tiny_ldm()
    ctx = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    steps, cfg = 5, 3.0
    out = ldm.generate(ctx, target_len=6, steps=steps, cfg_scale=cfg, generator=torch.Generator().manual_seed(0))
    noise = torch.randn((2, 6, D), generator=torch.Generator().manual_seed(0))
    mu, _, _ = ldm.vae.encode(ctx)
    context = (mu - ldm.normalizer.mean) / ldm.normalizer.std
    grid = time_grid(steps, ldm.schedule)
    x = noise.double()
    for i in range(steps):
        t = torch.full((2,), grid[i].item())
        x = x + (grid[i + 1] - grid[i]).item() * ldm.dit.forward_with_cfg(x.float(), t, context, cfg).double()
    expected = ldm.vae.decode(x.float() * ldm.normalizer.std + ldm.normalizer.mean).argmax(-1)
    assert torch.equal(out, expected)


def test_generate_unconditional():
    ldm = tiny_ldm()
    steps_seen = []
    out = ldm.generate(None, target_len=5, steps=3, batch_size=4, grid="uniform",
                       generator=torch.Generator().manual_seed(0),
                       on_step=lambda i, toks: steps_seen.append((i, tuple(toks.shape))))
    assert out.shape == (4, 5) and out.dtype == torch.long
    assert steps_seen == [(1, (4, 5)), (2, (4, 5)), (3, (4, 5))]
    again = ldm.generate(None, target_len=5, steps=3, batch_size=4, grid="uniform",
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ConfigError, match="batch_size"):
        ldm.generate(None, target_len=5, steps=3)
    with pytest.raises(ConfigError, match=r"sampler\.grid"):
        ldm.generate(None, target_len=5, steps=3, batch_size=2, grid="cosine")


def test_textldm_rejects_latent_dim_mismatch():
    ldm = tiny_ldm()
    with pytest.raises(ConfigError, match=r"dit\.latent_dim"):
        TextLDM(ldm.vae, tiny_dit(latent_dim=D * 2), LatentNormalizer(D))
