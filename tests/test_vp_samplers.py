"""LDLM's samplers on toys with an exact denoiser: Euler-Maruyama's few-step instability, the DDIM /
ancestral sampler that replaces it there (bounded coefficients, stable at 2-8 steps, the same distribution
as Euler-Maruyama at many steps), self-conditioning and ``auto``'s choice."""
from __future__ import annotations

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.models.vp_diffusion import (TangentSchedule, ddim_coefficients, euler_maruyama_factors, resolve_sampler,
                                          sampling_times, vp_sample)

SCHEDULE = TangentSchedule(9.0)
MU, SD = 1.5, 0.5  # the Gaussian toy: data N(MU, SD^2) in every coordinate


def gaussian_x0(z, t, _self_cond):
    """E[x0 | z_t] for Gaussian data: exact, and linear in z, so a blown-up z shows in the output."""
    a = SCHEDULE.alpha(t.double()).view(-1, 1, 1)
    return (MU + SD ** 2 * a.sqrt() / (a * SD ** 2 + 1 - a) * (z.double() - a.sqrt() * MU)).float()


def two_point_x0(z, t, _self_cond):
    """E[x0 | z_t] for data at -1 and +1 (equal weights) in every coordinate."""
    a = SCHEDULE.alpha(t.double()).view(-1, 1, 1)
    return torch.tanh(a.sqrt() * z.double() / (1 - a)).float()


def run(x0_fn, steps: int, kind: str, eta: float = 0.0, n: int = 2000, seed: int = 0):
    """(samples, the largest |z| the denoiser was shown along the way)."""
    seen = []

    def recording(z, t, self_cond):
        seen.append(float(z.abs().max()))
        return x0_fn(z, t, self_cond)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 2, generator=gen)
    x = vp_sample(recording, noise, SCHEDULE, sampling_times(SCHEDULE, steps), kind, eta, generator=gen)
    return x, max(seen)


def test_euler_maruyama_factor_on_z_is_negative_below_13_steps():
    """The failure the DDIM sampler exists for: a negative factor reflects z through its target every step."""
    worst = {n: float(euler_maruyama_factors(SCHEDULE, sampling_times(SCHEDULE, n)).min()) for n in (4, 8, 12, 13, 100)}
    assert worst[8] == pytest.approx(-0.614, abs=2e-3) and worst[4] == pytest.approx(-2.228, abs=2e-3)
    assert worst[12] < 0 <= worst[13] and worst[100] > 0.7


def test_euler_maruyama_blows_up_at_four_steps_on_the_gaussian_toy():
    x, largest = run(gaussian_x0, 4, "euler_maruyama")
    assert float(x.std()) > 3 and largest > 20  # data std is 0.5; the noise it starts from stays under 5


@pytest.mark.parametrize("grid", ["log_snr", "uniform"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_coefficients_lie_in_the_unit_interval_for_every_step_count(grid, eta):
    for steps in range(1, 65):
        for coefficient in ddim_coefficients(SCHEDULE, sampling_times(SCHEDULE, steps, grid), eta):
            assert bool(((coefficient >= 0) & (coefficient <= 1)).all()), (steps, coefficient)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [2, 4, 8])
def test_ddim_is_stable_and_lands_on_the_data_at_few_steps(steps, eta):
    x, largest = run(gaussian_x0, steps, "ddim", eta)
    assert bool(torch.isfinite(x).all()) and largest < 5  # z never leaves the range of the starting noise
    assert abs(float(x.mean()) - MU) < 0.02 and float((x - MU).abs().max()) < 4 * SD
    x, largest = run(two_point_x0, steps, "ddim", eta)
    assert bool(torch.isfinite(x).all()) and largest < 5
    assert float((x.abs() - 1).abs().mean()) < 0.01  # on the data points ...
    assert 0.4 < float((x > 0).float().mean()) < 0.6  # ... and both of them


def test_ddim_and_euler_maruyama_agree_at_many_steps():
    """Both discretise the same reverse process: at 200 steps they sample the toy's N(1.5, 0.5^2) alike."""
    results = {kind: run(gaussian_x0, 200, kind, eta)[0] for kind, eta in
               (("euler_maruyama", 0.0), ("ddim", 1.0), ("ddim", 0.0))}
    for kind, x in results.items():
        assert abs(float(x.mean()) - MU) < 0.03 and abs(float(x.std()) - SD) < 0.035, kind
    em, ancestral = results["euler_maruyama"], results["ddim"]
    assert abs(float(em.std()) - float(ancestral.std())) < 0.04


@pytest.mark.parametrize("kind", ["euler_maruyama", "ddim"])
def test_every_sampler_feeds_the_previous_x0_estimate_as_self_conditioning(kind):
    inputs, outputs = [], []

    def x0_fn(z, t, self_cond):
        inputs.append(self_cond.clone())
        outputs.append(torch.tanh(z) + 0.1 * self_cond)
        return outputs[-1]
    noise = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    times = sampling_times(SCHEDULE, 5)
    vp_sample(x0_fn, noise, SCHEDULE, times, kind, generator=torch.Generator().manual_seed(1))
    assert len(inputs) == 6 and torch.equal(inputs[0], torch.zeros_like(noise))
    assert all(torch.equal(inputs[i], outputs[i - 1]) for i in range(1, 6))
    inputs.clear()
    vp_sample(x0_fn, noise, SCHEDULE, times, kind, self_condition=False, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(i, torch.zeros_like(noise)) for i in inputs)


def test_samplers_are_seeded_and_deterministic_ddim_draws_no_noise():
    for kind, eta in (("euler_maruyama", 0.0), ("ddim", 1.0), ("ddim", 0.0)):
        assert torch.equal(run(gaussian_x0, 6, kind, eta, n=50)[0], run(gaussian_x0, 6, kind, eta, n=50)[0])
    noise = torch.randn(50, 1, 2, generator=torch.Generator().manual_seed(0))
    times = sampling_times(SCHEDULE, 6)
    a, b = (vp_sample(gaussian_x0, noise, SCHEDULE, times, "ddim", 0.0, generator=torch.Generator().manual_seed(s))
            for s in (1, 2))
    assert torch.equal(a, b)


def test_auto_keeps_euler_maruyama_where_it_is_stable_and_config_errors_name_the_field():
    times = lambda steps, grid="log_snr": sampling_times(SCHEDULE, steps, grid)  # noqa: E731
    assert [resolve_sampler("auto", SCHEDULE, times(n)) for n in (4, 8, 12, 13, 100, 1024)] == \
        ["ddim"] * 3 + ["euler_maruyama"] * 3
    assert resolve_sampler("auto", SCHEDULE, times(100, "uniform")) == "ddim"  # its first step's drift is huge
    assert resolve_sampler("euler_maruyama", SCHEDULE, times(4)) == "euler_maruyama"
    with pytest.raises(ConfigError, match="sampler.kind"):
        resolve_sampler("heun", SCHEDULE, times(4))
    with pytest.raises(ConfigError, match="sampler.eta"):
        ddim_coefficients(SCHEDULE, times(4), eta=1.5)
