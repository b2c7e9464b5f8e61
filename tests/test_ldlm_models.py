"""LDLM model pieces: warmup, gradient scaling, adaptive sampler, self-conditioning, Perceiver, sampler, joint loss."""
from __future__ import annotations

import math

import pytest
import torch

from latentlm.models.checkpoint import load_tensors, save_tensors
from latentlm.models.config import ConfigError
from latentlm.models.ldlm import LDLM, LDLMConfig, PostTrainedDecoder, self_conditioned_x0
from latentlm.models.perceiver import CoderConfig, PerceiverResampler, build_coder
from latentlm.models.token_encoder import HiddenStats
from latentlm.models.vp_diffusion import (AdaptiveTimestepSampler, TangentSchedule, euler_maruyama_sample,
                                          sampling_times, scale_gradient, warmup_gamma)


def tiny_config(**overrides) -> LDLMConfig:
    coder = {"depth": 1, "hidden_dim": 32, "n_heads": 2}
    base = dict(vocab_size=50, hidden_size=24, seq_len=12, num_latents=12, latent_dim=8, encoder=dict(coder),
                decoder=dict(coder), token_decoder={"layers": 1, "hidden_dim": 32, "n_heads": 2},
                denoiser={"hidden_dim": 32, "depth": 2, "n_heads": 2}, warmup_steps=0, decoder_noise=0.1,
                adaptive_update_every=1)
    base.update(overrides)
    return LDLMConfig(**base)


# -- warmup ------------------------------------------------------------------------------------------

def test_warmup_gamma_is_zero_at_start_one_after_w_and_monotone():
    w = 1000
    values = [warmup_gamma(s, w) for s in range(0, 1200, 10)]
    assert warmup_gamma(0, w) == 0.0
    assert warmup_gamma(w, w) == 1.0 and warmup_gamma(5 * w, w) == 1.0
    assert warmup_gamma(w - 1, w) > 0.99
    assert warmup_gamma(w // 10, w) < 0.02       # stays near 0 early
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert warmup_gamma(0, 0) == 1.0             # W = 0: no warmup


def test_stop_gradient_interpolation_keeps_forward_and_scales_encoder_gradient():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    target = torch.randn(5, 3)

    def grads(gamma):
        encoder.zero_grad()
        z = encoder(x)
        z_diff = scale_gradient(z, gamma)
        assert torch.equal(z_diff, z)  # the forward value is unchanged
        ((z_diff - target) ** 2).sum().backward()
        return encoder.weight.grad.clone()

    full = grads(1.0)
    for gamma in (0.0, 0.25, 0.7):
        torch.testing.assert_close(grads(gamma), gamma * full, rtol=1e-6, atol=1e-7)


def test_warmup_scales_only_the_diffusion_gradient_into_the_encoder():
    torch.manual_seed(0)
    cfg = tiny_config(warmup_steps=100, decoder_noise=0.0, self_cond_prob=0.0, mse_weight=0.0, ce_weight=0.0)
    model = LDLM(cfg)
    hidden, tokens = torch.randn(2, 12, 24), torch.randint(0, 50, (2, 12))
    t = torch.full((2,), 0.5)

    def encoder_grad(step):
        model.zero_grad()
        out = model(hidden, tokens, step, t, generator=torch.Generator().manual_seed(1))
        out.loss.backward()
        return model.encoder.out_proj.weight.grad.clone(), model.denoiser.input_proj.weight.grad.clone(), out

    g_full, d_full, out_full = encoder_grad(100)
    step = 40
    g_part, d_part, out_part = encoder_grad(step)
    gamma = warmup_gamma(step, 100)
    assert 0 < gamma < 1
    assert out_full.diffusion == out_part.diffusion  # same forward
    torch.testing.assert_close(g_part, gamma * g_full, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(d_part, d_full)      # the diffusion model always gets its full gradient


# -- adaptive timestep sampler ------------------------------------------------------------------------

def test_adaptive_sampler_converges_to_density_that_makes_loss_linear():
    curve = lambda t: t ** 2 + 0.5 * torch.sin(3 * t) ** 2  # monotone increasing on [0, 1]  # noqa: E731
    bins = 20
    mix = 0.05  # a floor keeps every bin measured (a bin at probability 0 would never be revisited)
    sampler = AdaptiveTimestepSampler(bins=bins, ema_decay=0.8, update_every=5, uniform_mix=mix)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        t = sampler.sample(256, gen)
        noisy = curve(t.double()) + 0.01 * torch.randn(256, generator=gen, dtype=torch.float64)
        sampler.observe(t, noisy)
        sampler.step()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    target = torch.diff(curve(edges))
    target = (1 - mix) * target / target.sum() + mix / bins
    assert torch.allclose(sampler.probs, target, atol=0.01), (sampler.probs, target)
    # In the warped time u = F(t) the loss is linear: L(F^-1(u)) ~ L(0) + u (L(1) - L(0)).
    t_fine = torch.linspace(0, 1, 201, dtype=torch.float64)
    u = sampler.cdf(t_fine)
    linear = curve(edges[:1]) + u * (curve(edges[-1:]) - curve(edges[:1]))
    u = (u - mix * t_fine) / (1 - mix)  # the warped time of the loss-driven part of the density
    assert (curve(t_fine) - linear).abs().max() < 0.03


def test_adaptive_sampler_state_round_trips_through_safetensors(tmp_path):
    sampler = AdaptiveTimestepSampler(bins=10, update_every=2)
    gen = torch.Generator().manual_seed(3)
    for _ in range(7):
        t = sampler.sample(32, gen)
        sampler.observe(t, t.double() ** 3)
        sampler.step()
    save_tensors(tmp_path / "sampler.safetensors", sampler.state_dict())
    restored = AdaptiveTimestepSampler(bins=10, update_every=2)
    restored.load_state_dict(load_tensors(tmp_path / "sampler.safetensors"))
    for name, value in sampler.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name
    a, b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(sampler.sample(64, a), restored.sample(64, b))
    for s in (sampler, restored):  # the next refresh happens at the same step with the same result
        s.observe(torch.tensor([0.55]), torch.tensor([2.0]))
        assert s.step()
    assert torch.equal(sampler.probs, restored.probs)


def test_adaptive_sampler_reduce_hook_sums_pending_statistics():
    sampler = AdaptiveTimestepSampler(bins=4, update_every=1, uniform_mix=0.0, ema_decay=0.0)
    t = torch.linspace(0, 1, 41)
    sampler.observe(t, 4 * t)  # L(t) = 4t, measured exactly by the per-bin lines
    seen = []
    sampler.step(reduce=lambda x: seen.append(x.clone()) or x * 2)  # "two identical workers"
    assert len(seen) == 1
    assert torch.allclose(sampler.edge_loss, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert torch.allclose(sampler.probs, torch.full((4,), 0.25, dtype=torch.float64))


# -- self-conditioning ---------------------------------------------------------------------------------

class RecordingDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, z, t, self_cond):
        self.calls.append(self_cond.clone())
        return z * 0.5 + 1.0


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_self_conditioning_changes_second_pass_input_only_when_enabled(prob):
    denoiser = RecordingDenoiser()
    z = torch.randn(2, 3, 4)
    out, used = self_conditioned_x0(denoiser, z, torch.rand(2), prob)
    if prob == 0.0:
        assert len(denoiser.calls) == 1 and torch.equal(denoiser.calls[0], torch.zeros_like(z))
    else:
        assert len(denoiser.calls) == 2
        assert torch.equal(denoiser.calls[0], torch.zeros_like(z))
        assert torch.equal(denoiser.calls[1], z * 0.5 + 1.0)  # the first pass's estimate
    assert torch.equal(used, denoiser.calls[-1])
    torch.testing.assert_close(out, z * 0.5 + 1.0)


# -- architectures ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_latents,input_len", [(16, 16), (4, 16), (32, 7)])
def test_perceiver_output_length_is_the_number_of_latents(num_latents, input_len):
    coder = PerceiverResampler(CoderConfig(depth=2, hidden_dim=32, n_heads=2), in_dim=24, out_dim=8,
                               num_outputs=num_latents)
    out = coder(torch.randn(3, input_len, 24))
    assert out.shape == (3, num_latents, 8)


def test_perceiver_ignores_padded_inputs():
    torch.manual_seed(0)
    coder = PerceiverResampler(CoderConfig(depth=2, hidden_dim=32, n_heads=2), 24, 8, 6)
    x = torch.randn(1, 10, 24)
    mask = torch.tensor([[True] * 7 + [False] * 3])
    garbage = x.clone()
    garbage[:, 7:] = 100.0
    torch.testing.assert_close(coder(x, mask), coder(garbage, mask))


def test_self_attention_coder_needs_one_latent_per_token():
    out = build_coder(CoderConfig(kind="self_attention", depth=1, hidden_dim=32, n_heads=2), 24, 8, 12, 12)(
        torch.randn(2, 12, 24))
    assert out.shape == (2, 12, 8)
    with pytest.raises(ConfigError, match="ldlm.num_latents"):
        tiny_config(encoder={"kind": "self_attention", "depth": 1, "hidden_dim": 32, "n_heads": 2}, num_latents=6)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="ldlm.recon_loss"):
        tiny_config(recon_loss="l1")
    with pytest.raises(ConfigError, match="ldlm.timestep_sampler"):
        tiny_config(timestep_sampler="cosine")
    with pytest.raises(ConfigError, match="ldlm.encoder.kind"):
        tiny_config(encoder={"kind": "lstm"})
    with pytest.raises(ConfigError, match="ldlm.train_token_decoder"):
        tiny_config(recon_loss="ce", train_token_decoder=False)


# -- schedule and sampler ------------------------------------------------------------------------------

def test_tangent_schedule_endpoints_and_inverse():
    s = TangentSchedule(d=9.0)
    assert float(s.alpha(torch.tensor(0.0))) == 1.0 and float(s.alpha(torch.tensor(1.0))) == 0.0
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.all(torch.diff(s.alpha(t)) < 0)
    torch.testing.assert_close(s.t_of_log_snr(s.log_snr(t)), t)
    assert float(TangentSchedule(d=20.0).alpha(torch.tensor(0.3))) < float(s.alpha(torch.tensor(0.3)))


@pytest.mark.parametrize("grid,steps", [("log_snr", 100), ("uniform", 1000)])
def test_euler_maruyama_with_exact_x0_samples_the_data_distribution(grid, steps):
    """Gaussian data N(mu, s^2): the exact x0-predictor is known, so the sampler must reproduce mu and s."""
    mu, s = 1.5, 0.5
    schedule = TangentSchedule(d=9.0)

    def oracle(z, t, _self_cond):
        a = schedule.alpha(t.double()).view(-1, 1, 1)
        return (mu + s**2 * a.sqrt() / (a * s**2 + 1 - a) * (z.double() - a.sqrt() * mu)).float()

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 1, 2, generator=gen)
    x = euler_maruyama_sample(oracle, noise, schedule, sampling_times(schedule, steps, grid), generator=gen)
    assert abs(float(x.mean()) - mu) < 0.03
    assert abs(float(x.std()) - s) < 0.03


def test_sampling_times_are_decreasing_and_log_snr_steps_are_equal():
    s = TangentSchedule(9.0)
    times = sampling_times(s, 20)
    assert times[0] > times[-1] and torch.all(torch.diff(times) < 0)
    steps = torch.diff(s.log_snr(times))
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps[0])))


# -- the joint model ---------------------------------------------------------------------------------------

def test_joint_training_lowers_mse_and_diffusion_loss():
    torch.manual_seed(0)
    coder = {"depth": 2, "hidden_dim": 64, "n_heads": 2}
    cfg = tiny_config(warmup_steps=250, self_cond_prob=0.5, decoder_noise=0.1, latent_dim=16, encoder=coder,
                      decoder=coder)
    model = LDLM(cfg)
    sampler = cfg.make_timestep_sampler()
    gen = torch.Generator().manual_seed(0)
    # a small fixed "corpus": hidden states are a fixed random function of the tokens
    table = torch.randn(50, 24)
    tokens = torch.randint(0, 50, (64, 12), generator=gen)
    hidden = table[tokens] + 0.3 * torch.roll(table[tokens], 1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for step in range(300):
        idx = torch.randint(0, 64, (16,), generator=gen)
        t = sampler.sample(16, gen)
        out = model(hidden[idx], tokens[idx], step, t, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sampler.observe(out.t, out.per_sample_diffusion)
        sampler.step()
        history.append((out.mse.item(), out.diffusion.item(), out.ce.item()))
    first, last = history[:10], history[-10:]
    for k, name in enumerate(("mse", "diffusion", "ce")):
        before, after = sum(h[k] for h in first) / 10, sum(h[k] for h in last) / 10
        assert after < 0.7 * before, (name, before, after)


def test_sampling_and_decoding_shapes_and_determinism():
    model = LDLM(tiny_config()).eval()
    a = model.generate(3, steps=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(3, steps=5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 12) and a.dtype == torch.long and torch.equal(a, b)


def test_recon_loss_ce_sends_token_gradient_into_the_encoder():
    hidden, tokens, t = torch.randn(2, 12, 24), torch.randint(0, 50, (2, 12)), torch.full((2,), 0.5)
    for recon, expect_grad in (("mse", False), ("ce", True)):
        torch.manual_seed(0)
        model = LDLM(tiny_config(recon_loss=recon, mse_weight=0.0, diffusion_weight=0.0))
        model(hidden, tokens, 0, t).loss.backward()
        grad = model.encoder.out_proj.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == expect_grad, recon


def test_post_trained_decoder_reads_latents_or_hidden_states():
    cfg = tiny_config()
    model = LDLM(cfg)
    z = torch.randn(2, 12, 8)
    assert PostTrainedDecoder(cfg, layers=2)(z).shape == (2, 12, 50)
    assert PostTrainedDecoder(cfg, layers=1, source="hidden")(z, model.decoder).shape == (2, 12, 50)


def test_hidden_stats_moments_are_additive_and_normalise():
    x = torch.randn(4, 10, 6) * 3 + 2
    mask = torch.ones(4, 10, dtype=torch.bool)
    stats = HiddenStats(6).set_from_moments(HiddenStats.moments(x[:2], mask[:2]) + HiddenStats.moments(x[2:], mask[2:]))
    normed = stats.normalize(x).reshape(-1, 6)
    torch.testing.assert_close(normed.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(0), torch.ones(6), atol=1e-5, rtol=0)
    assert not math.isnan(float(stats.std.sum()))


def test_dropped_token_decoder_gets_no_gradient_and_is_frozen():
    model = LDLM(tiny_config(train_token_decoder=False))
    assert not any(p.requires_grad for p in model.token_decoder.parameters())
    out = model(torch.randn(2, 12, 24), torch.randint(0, 50, (2, 12)), 0, torch.full((2,), 0.5))
    out.loss.backward()
    assert all(p.grad is None for p in model.token_decoder.parameters())
    assert out.ce > 0  # still measured


# -- the scratch-embeddings arm and the sampler choice ----------------------------------------------------

def test_scratch_embeddings_train_without_a_teacher_and_ce_reaches_the_table():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="ldlm.recon_loss"):  # MSE onto trainable embeddings would collapse them
        tiny_config(encoder_input="scratch")
    with pytest.raises(ValueError, match="hidden states"):  # the frozen arm cannot run without its teacher
        LDLM(tiny_config())(None, torch.zeros(2, 12, dtype=torch.long), 0, torch.full((2,), 0.5))
    model = LDLM(tiny_config(encoder_input="scratch", recon_loss="ce", warmup_steps=20))
    assert model.embeddings.weight.shape == (50, 24) and model.embeddings.weight.requires_grad
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (4, 12), generator=gen)  # one fixed batch to fit: a few steps show learning
    used = torch.unique(tokens)
    # CE alone reaches the table (through the token decoder, latent decoder and encoder)
    model.config.diffusion_weight = 0.0
    model(None, tokens, 0, torch.full((4,), 0.5), generator=gen).loss.backward()
    assert float(model.embeddings.weight.grad[used].abs().sum(-1).min()) > 0
    model.config.diffusion_weight = 1.0
    model.zero_grad()
    start = model.embeddings.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ces = []
    for step in range(40):
        out = model(None, tokens, step, torch.rand(4, generator=gen), generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ces.append(out.ce.item())
    assert sum(ces[-5:]) < 0.7 * sum(ces[:5]), ces
    weights = model.embeddings.weight.detach()
    assert not torch.equal(weights[used], start[used])
    assert float(weights[used].std(0).mean()) > 0.5  # the rows stay apart: no collapse


def test_sample_latents_runs_the_configured_sampler():
    model = LDLM(tiny_config()).eval()

    def sample(steps, kind):
        return model.sample_latents(2, steps, torch.Generator().manual_seed(3), sampler=kind)
    assert torch.equal(sample(4, "auto"), sample(4, "ddim"))       # Euler-Maruyama is unstable at 4 steps ...
    assert not torch.equal(sample(4, "auto"), sample(4, "euler_maruyama"))
    assert torch.equal(sample(16, "auto"), sample(16, "euler_maruyama"))  # ... and kept from 13 on
    assert bool(torch.isfinite(sample(2, "ddim")).all())
