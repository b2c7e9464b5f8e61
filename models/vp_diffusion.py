"""LDLM's diffusion machinery: a variance-preserving process with the tangent schedule, x0-prediction,
the adaptive timestep sampler, the diffusion-to-encoder warmup and the samplers (Euler-Maruyama, the
paper's; DDIM / ancestral, stable at few steps; ``auto`` picks by step count).

Convention (LDLM / TEncDM, the opposite of ``flow.py``): t = 0 is data, t = 1 is pure noise.
    z_t = sqrt(alpha(t)) z_0 + sqrt(1 - alpha(t)) eps,   alpha(t) = 1 / (1 + d^2 tan^2(pi t / 2)),
so SNR(t) = 1 / (d tan(pi t / 2))^2 and alpha(1) = 0 exactly (the terminal KL term vanishes). The shape
parameter d (the value was lost in the paper's text; TEncDM's tan-d uses 9) shifts the schedule to
noisier levels as it grows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .config import require

# -- noise schedule ----------------------------------------------------------------------------------


@dataclass
class TangentSchedule:
    d: float = 9.0

    def __post_init__(self):
        require(self.d > 0, "schedule.d", "a value > 0", self.d)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """-2 log(d tan(pi t / 2)); +inf at t = 0, -inf at t = 1."""
        return -2.0 * (math.log(self.d) + torch.log(torch.tan(t * (math.pi / 2))))

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Signal variance alpha(t) = sigmoid(log SNR), computed stably (exactly 1 at t=0, 0 at t=1)."""
        t64 = t.double()
        alpha = torch.sigmoid(self.log_snr(t64))  # tan(pi/2) is finite in floating point: pin the endpoint
        return torch.where(t64 >= 1, torch.zeros_like(alpha), alpha).to(t.dtype)

    def t_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        return (2 / math.pi) * torch.atan(torch.exp(-log_snr / 2) / self.d)

    def add_noise(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alpha(t).view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise


# -- diffusion-to-encoder warmup ----------------------------------------------------------------------


def warmup_gamma(step: int, warmup_steps: int, midpoint: float = 0.5, steepness: float = 10.0) -> float:
    """Normalised sigmoid ramp gamma(s) in [0, 1] (LDLM App. A.2): 0 at s = 0, 1 from s = W on.

    gamma(s) = (sigmoid(k (s/W - m)) - sigmoid(-k m)) / (sigmoid(k (1 - m)) - sigmoid(-k m)).
    The paper's m and k were lost in extraction; m = 0.5, k = 10 keep gamma near 0 early and rise smoothly
    to 1 by the end of the warmup, as its Figure 6 describes. W = 0 disables the warmup (gamma = 1)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    lo, hi = sig(-steepness * midpoint), sig(steepness * (1 - midpoint))
    return max(0.0, (sig(steepness * (max(step, 0) / warmup_steps - midpoint)) - lo) / (hi - lo))


def scale_gradient(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma z + (1 - gamma) stopgrad(z): the gradient into z is scaled by gamma. Written as
    stopgrad(z) + gamma (z - stopgrad(z)) so the forward value is bit-identical to z (the second term is 0)."""
    if gamma >= 1.0:
        return z
    frozen = z.detach()
    return frozen + gamma * (z - frozen)


# -- adaptive timestep sampling ------------------------------------------------------------------------


class AdaptiveTimestepSampler(nn.Module):
    """CDCD-style timestep sampler that makes the diffusion loss grow linearly in the warped time.

    [0, 1] is split into ``bins`` equal bins with edges t_0..t_B. An EMA of the loss L(t_i) is kept at every
    edge; bin i is drawn with probability proportional to its loss increment L(t_{i+1}) - L(t_i) (the
    density dL/dt, so the CDF F = (L - L(0)) / (L(1) - L(0)) and L is linear in F(t)), then t is uniform
    inside the bin. Edge values are measured by a least-squares line through each bin's samples, evaluated
    at the bin's two edges (an interior edge averages its two bins): unbiased for a locally linear L, also
    at t = 0 and t = 1 where a kernel around the edge would be one-sided. Statistics accumulate between
    refreshes (every ``update_every`` steps), when they can be summed over workers (``reduce``) so every
    worker keeps the same probabilities. All state is in persistent buffers: ``state_dict()`` round-trips it.
    """

    def __init__(self, bins: int = 100, ema_decay: float = 0.9, update_every: int = 100,
                 uniform_mix: float = 0.01):
        super().__init__()
        require(bins >= 2, "sampler.bins", ">= 2", bins)
        require(0 <= ema_decay < 1, "sampler.ema_decay", "in [0, 1)", ema_decay)
        require(update_every >= 1, "sampler.update_every", ">= 1", update_every)
        require(0 <= uniform_mix <= 1, "sampler.uniform_mix", "in [0, 1]", uniform_mix)
        self.bins, self.ema_decay, self.update_every, self.uniform_mix = bins, ema_decay, update_every, uniform_mix
        self.register_buffer("edge_loss", torch.zeros(bins + 1, dtype=torch.float64))
        self.register_buffer("edge_seen", torch.zeros(bins + 1, dtype=torch.bool))
        self.register_buffer("probs", torch.full((bins,), 1.0 / bins, dtype=torch.float64))
        # per bin, u = position inside the bin in [0, 1]: count, sum u, sum u^2, sum L, sum u L
        self.register_buffer("pending", torch.zeros(5, bins, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def sample(self, n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        bins = torch.multinomial(self.probs.float().cpu(), n, replacement=True, generator=generator)
        t = (bins.double() + torch.rand(n, generator=generator, dtype=torch.float64)) / self.bins
        return t.float().to(device)

    @torch.no_grad()
    def observe(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses at their timesteps (folded in at the next refresh)."""
        pos = t.detach().double().cpu().clamp(0, 1) * self.bins
        index = pos.floor().clamp(max=self.bins - 1).long()
        u = pos - index
        loss = losses.detach().double().cpu()
        for row, value in enumerate((torch.ones_like(u), u, u * u, loss, u * loss)):
            self.pending[row].index_add_(0, index, value)

    def _edge_estimates(self, pending: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-edge loss measured in this window and whether the edge had samples next to it."""
        n, su, suu, sl, sul = pending
        var = suu - su * su / n.clamp_min(1)
        slope = torch.where((n >= 2) & (var > 1e-9 * n), (sul - su * sl / n.clamp_min(1)) / var.clamp_min(1e-300),
                            torch.zeros_like(n))
        left = (sl - slope * su) / n.clamp_min(1)     # fitted L at u = 0 (the bin's left edge)
        right = left + slope                           # ... at u = 1
        has = (n > 0).double()
        total = torch.zeros(self.bins + 1, dtype=torch.float64)
        weight = torch.zeros(self.bins + 1, dtype=torch.float64)
        total[:-1] += has * left
        total[1:] += has * right
        weight[:-1] += has
        weight[1:] += has
        return total / weight.clamp_min(1), weight > 0

    @torch.no_grad()
    def step(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:
        """Count one training step; every ``update_every`` steps fold the pending statistics into the edge
        EMAs and recompute the bin probabilities. Returns True when it refreshed."""
        self.updates += 1
        if int(self.updates) % self.update_every:
            return False
        pending = reduce(self.pending.clone()) if reduce is not None else self.pending
        measured, seen = self._edge_estimates(pending)
        first = seen & ~self.edge_seen
        ema = self.ema_decay * self.edge_loss + (1 - self.ema_decay) * measured
        self.edge_loss.copy_(torch.where(first, measured, torch.where(seen, ema, self.edge_loss)))
        self.edge_seen |= seen
        self.pending.zero_()
        if bool(self.edge_seen.all()):
            self.probs.copy_(self.bin_probabilities())
        return True

    def bin_probabilities(self) -> torch.Tensor:
        monotone = torch.cummax(self.edge_loss, dim=0).values  # L(t) is non-decreasing; noise is not
        increments = (monotone[1:] - monotone[:-1]).clamp_min(0)
        total = increments.sum()
        density = increments / total if total > 0 else torch.full_like(increments, 1.0 / self.bins)
        return (1 - self.uniform_mix) * density + self.uniform_mix / self.bins

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """F(t) of the current sampling density (piecewise linear)."""
        edges_cdf = torch.cat([self.probs.new_zeros(1), self.probs.cumsum(0)])
        pos = t.double().clamp(0, 1) * self.bins
        left = pos.floor().clamp(max=self.bins - 1).long()
        return edges_cdf[left] + (pos - left) * self.probs[left]


# -- sampling ----------------------------------------------------------------------------------------

X0Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t, self_cond) -> x0_hat


def sampling_times(schedule: TangentSchedule, steps: int, grid: str = "log_snr", t_min: float = 1e-3,
                   t_max: float = 0.999) -> torch.Tensor:
    """steps + 1 decreasing times from t_max to t_min (float64).

    "uniform": equal steps in t. "log_snr" (default): equal steps in log SNR. The tangent schedule's drift
    coefficient beta(t) = -d log alpha / dt diverges at t -> 1, so equal t-steps put huge Euler-Maruyama
    steps at the noisy end unless the step count is large; equal log-SNR steps bound every step's
    integrated beta by the log-SNR increment."""
    require(steps >= 1, "sampler.steps", ">= 1", steps)
    require(0 < t_min < t_max < 1, "sampler.t_min/t_max", "0 < t_min < t_max < 1", (t_min, t_max))
    require(grid in ("uniform", "log_snr"), "sampler.grid", "'uniform' or 'log_snr'", grid)
    if grid == "uniform":
        return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    ends = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    return schedule.t_of_log_snr(torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64))


SAMPLERS = ("auto", "euler_maruyama", "ddim")


def _alphas(schedule: TangentSchedule, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha(t_i), alpha(t_{i+1})) per step of a decreasing time grid, in float64."""
    alpha = torch.stack([schedule.alpha(t) for t in times.double()])  # per element: bit-identical to scalar use
    return alpha[:-1], alpha[1:]


def euler_maruyama_factors(schedule: TangentSchedule, times: torch.Tensor) -> torch.Tensor:
    """Per step, the factor the Euler-Maruyama update multiplies z by (x0_hat held fixed):
    1 + h/2 - h / (1 - alpha_t). It turns negative once the integrated drift h exceeds about 2: the step then
    reflects z through its target instead of moving towards it (on the default log-SNR grid, below 13 steps)."""
    alpha_t, alpha_s = _alphas(schedule, times)
    h = alpha_s.log() - alpha_t.clamp_min(1e-300).log()
    return 1 + h / 2 - h / (1 - alpha_t).clamp_min(1e-12)


def ddim_coefficients(schedule: TangentSchedule, times: torch.Tensor, eta: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_x, c_z, sigma) per step of the x0-parameterised DDIM step z_s = c_x x0_hat + c_z z_t + sigma eps.

    sigma^2 = eta^2 (1 - a_s) / (1 - a_t) (1 - a_t / a_s), c_z = sqrt((1 - a_s - sigma^2) / (1 - a_t)),
    c_x = sqrt(a_s) - c_z sqrt(a_t). eta = 1 is the DDPM posterior q(z_s | z_t, x0 = x0_hat) (ancestral
    sampling); eta = 0 is deterministic DDIM. Since a_s >= a_t, all three lie in [0, 1] for any grid: z_s
    weighs x0_hat and z_t with non-negative weights of at most 1, so it cannot oscillate or blow up as
    Euler-Maruyama's update does at few steps, whatever the step count."""
    require(0 <= eta <= 1, "sampler.eta", "in [0, 1]", eta)
    alpha_t, alpha_s = _alphas(schedule, times)
    var = eta ** 2 * (1 - alpha_s) / (1 - alpha_t) * (1 - alpha_t / alpha_s)
    c_z = ((1 - alpha_s - var).clamp_min(0) / (1 - alpha_t)).sqrt()
    c_x = (alpha_s.sqrt() - c_z * alpha_t.sqrt()).clamp(0, 1)  # clamp: rounding only
    return c_x, c_z, var.sqrt()


def resolve_sampler(kind: str, schedule: TangentSchedule, times: torch.Tensor) -> str:
    """``auto``: Euler-Maruyama (the paper's sampler) where every step's factor on z is >= 0, else DDIM.
    Decided per grid, so it follows the step count, the grid and the schedule."""
    require(kind in SAMPLERS, "sampler.kind", f"one of {SAMPLERS}", kind)
    if kind != "auto":
        return kind
    return "euler_maruyama" if bool((euler_maruyama_factors(schedule, times) >= 0).all()) else "ddim"


StepFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (step, z_t, x0_hat) -> z_s, float64


def _reverse(x0_fn: X0Fn, noise: torch.Tensor, times: torch.Tensor, update: StepFn, self_condition: bool,
             on_step: Callable[[int, torch.Tensor], None] | None) -> torch.Tensor:
    """The loop every sampler shares: one x0 prediction per time, fed the previous one with self-conditioning
    (zeros at the first step), ``update`` moves z one step, and a last prediction at ``times[-1]`` is returned.
    The state is kept in float64; the network runs in its own dtype."""
    z = noise.double()
    x0 = torch.zeros_like(noise)
    for i in range(len(times) - 1):
        tb = torch.full((z.shape[0],), float(times[i]), device=z.device, dtype=torch.float32)
        x0 = x0_fn(z.to(noise.dtype), tb, x0 if self_condition else torch.zeros_like(x0))
        z = update(i, z, x0.double())
        if on_step is not None:
            on_step(i + 1, x0)
    tb = torch.full((z.shape[0],), float(times[-1]), device=z.device, dtype=torch.float32)
    return x0_fn(z.to(noise.dtype), tb, x0 if self_condition else torch.zeros_like(x0))


def _gaussian(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z.device)


@torch.no_grad()
def euler_maruyama_sample(x0_fn: X0Fn, noise: torch.Tensor, schedule: TangentSchedule, times: torch.Tensor,
                          self_condition: bool = True, generator: torch.Generator | None = None,
                          on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate the reverse-time VP SDE from ``times[0]`` (noise) down to ``times[-1]`` with Euler-Maruyama.

    Forward SDE: dz = -beta/2 z dt + sqrt(beta) dW with beta = -d log alpha / dt. Reverse step from t to
    s < t with h = log alpha(s) - log alpha(t) (beta integrated over the step) and the score
    -(z - sqrt(alpha) x0_hat) / (1 - alpha) of the x0-prediction:
        z <- z + h (z / 2 + score) + sqrt(h) eps.
    Unstable for few steps (``euler_maruyama_factors``); ``ddim_sample`` is not.
    With ``self_condition`` each call gets the previous step's x0 estimate (zeros at the first step).
    Returns the final x0 prediction."""
    alpha_t, alpha_s = (a.tolist() for a in _alphas(schedule, times))

    def update(i: int, z: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        h = math.log(alpha_s[i]) - math.log(max(alpha_t[i], 1e-300))
        score = -(z - math.sqrt(alpha_t[i]) * x0) / max(1 - alpha_t[i], 1e-12)
        return z + h * (0.5 * z + score) + math.sqrt(h) * _gaussian(z, generator)
    return _reverse(x0_fn, noise, times, update, self_condition, on_step)


@torch.no_grad()
def ddim_sample(x0_fn: X0Fn, noise: torch.Tensor, schedule: TangentSchedule, times: torch.Tensor,
                eta: float = 0.0, self_condition: bool = True, generator: torch.Generator | None = None,
                on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The exact-transition sampler for the VP path: each step draws z_s from the Gaussian transition
    ``ddim_coefficients`` gives (the DDPM posterior for eta = 1, deterministic DDIM for eta = 0, no draw) with
    x0 replaced by the network's prediction. Same calls as ``euler_maruyama_sample`` (steps + 1 predictions,
    self-conditioning, ``on_step``, returns the final x0 prediction), stable at any step count."""
    c_x, c_z, sigma = (c.tolist() for c in ddim_coefficients(schedule, times, eta))

    def update(i: int, z: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        z_s = c_x[i] * x0 + c_z[i] * z
        return z_s + sigma[i] * _gaussian(z, generator) if eta > 0 else z_s
    return _reverse(x0_fn, noise, times, update, self_condition, on_step)


def vp_sample(x0_fn: X0Fn, noise: torch.Tensor, schedule: TangentSchedule, times: torch.Tensor,
              kind: str = "auto", eta: float = 0.0, **kwargs) -> torch.Tensor:
    """Run the sampler ``kind`` names (``resolve_sampler``); ``eta`` acts only on DDIM."""
    if resolve_sampler(kind, schedule, times) == "ddim":
        return ddim_sample(x0_fn, noise, schedule, times, eta, **kwargs)
    return euler_maruyama_sample(x0_fn, noise, schedule, times, **kwargs)
