"""LDLM: latent encoder, diffusion model and decoder trained jointly on a frozen LM's hidden states.

    h      = normalise(E_frozen(x)[layer])                 (dataset statistics, computed once)
    z      = Enc(h)                                        (Perceiver Resampler or self-attention)
    h_hat  = Dec(z + sigma_dec * eps)                      (decoder-input noise: training only)
    logits = TokenDecoder(stopgrad(h_hat))
    loss   = MSE(h_hat, h) + CE(logits, x) + diffusion(scale_gradient(z, gamma(step)))

The diffusion model is a DiT over the latents with x0-prediction, the tangent VP schedule and
self-conditioning; ``vp_diffusion.py`` holds the schedule, samplers and the warmup. Every part of the
four-part recipe is a config switch (``LDLMConfig.recon_loss``, ``warmup_steps``, ``timestep_sampler``,
``decoder_noise``).

The token-encoder axis (LDLM Table 1) is ``LDLMConfig.encoder_input``: ``frozen`` reads the frozen LM's
hidden states of the configured layer (GPT-2 hidden states; its layer 0 is the GPT-2-embeddings arm);
``scratch`` reads a trainable token-embedding table, randomly initialised, with no frozen LM at all:
    h      = Emb(x)                                        (trainable, N(0, 1): the scale of normalised states)
    loss   = CE(TokenDecoder(h_hat), x) + diffusion        (recon_loss must be "ce")
MSE onto h is refused there: h is trainable, so MSE(h_hat, h) is minimised by collapsing the table to one
point (and a stop-gradient target would drift into the decoder's fixed points). The tokens are the only fixed
target, so the token decoder's CE flows through the latent decoder and encoder into the table, as in the CE
ablation; the MSE to the (detached) embeddings is still reported, as a metric.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_fields, require, require_fraction, require_positive
from .dit import DiTBlock, FinalLayer, TimestepEmbedder
from .layers import RotaryEmbedding
from .perceiver import CoderConfig, SelfAttentionCoder, build_coder
from .vp_diffusion import (AdaptiveTimestepSampler, TangentSchedule, sampling_times, scale_gradient, vp_sample,
                           warmup_gamma)



@dataclass
class DenoiserConfig:
    hidden_dim: int = 768
    depth: int = 12
    n_heads: int = 12
    mlp_ratio: float = 4.0


@dataclass
class TokenDecoderConfig:
    layers: int = 3
    hidden_dim: int = 768
    n_heads: int = 12
    mlp_ratio: float = 4.0


@dataclass
class LDLMConfig:
    vocab_size: int = 49152
    hidden_size: int = 576           # input width: the frozen token encoder's (set from it) or the scratch table's
    encoder_input: Literal["frozen", "scratch"] = "frozen"  # frozen LM states | trainable embeddings (module doc)
    seq_len: int = 128
    num_latents: int = 128           # LDLM: as many latents as tokens
    latent_dim: int = 768
    encoder: CoderConfig = field(default_factory=CoderConfig)
    decoder: CoderConfig = field(default_factory=CoderConfig)
    token_decoder: TokenDecoderConfig = field(default_factory=TokenDecoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    # -- the recipe --
    recon_loss: Literal["mse", "ce", "ce+mse"] = "mse"  # "mse" (LDLM); with CE the token loss reaches the encoder
    mse_weight: float = 1.0
    ce_weight: float = 1.0
    diffusion_weight: float = 1.0
    warmup_steps: int = 10_000       # W of the diffusion-to-encoder warmup (0: off)
    warmup_midpoint: float = 0.5     # m and k of the normalised sigmoid (lost in the paper; documented choice)
    warmup_steepness: float = 10.0
    timestep_sampler: Literal["adaptive", "uniform"] = "adaptive"
    adaptive_bins: int = 100
    adaptive_ema: float = 0.9
    adaptive_update_every: int = 100    # N of the paper (value lost)
    adaptive_uniform_mix: float = 0.01  # keeps every bin reachable so its edges keep being measured
    decoder_noise: float = 3.0       # sigma_dec (the third-party summary's value; the paper's was lost)
    train_token_decoder: bool = True  # False: drop it during joint training, post-train it (own stage)
    # -- diffusion --
    schedule_d: float = 9.0          # tangent schedule shape
    self_cond_prob: float = 0.5

    def __post_init__(self):
        check_fields(self, "ldlm")
        require_positive("ldlm", vocab_size=self.vocab_size, hidden_size=self.hidden_size, seq_len=self.seq_len,
                         num_latents=self.num_latents, latent_dim=self.latent_dim, schedule_d=self.schedule_d)
        self.encoder.validate("ldlm.encoder")
        self.decoder.validate("ldlm.decoder")
        for owner, sub in (("ldlm.denoiser", self.denoiser), ("ldlm.token_decoder", self.token_decoder)):
            require_positive(owner, hidden_dim=sub.hidden_dim, n_heads=sub.n_heads, mlp_ratio=sub.mlp_ratio)
            require(sub.hidden_dim % sub.n_heads == 0 and (sub.hidden_dim // sub.n_heads) % 2 == 0,
                    f"{owner}.hidden_dim", f"a multiple of 2*n_heads ({2 * sub.n_heads})", sub.hidden_dim)
        require(self.denoiser.depth >= 1, "ldlm.denoiser.depth", ">= 1", self.denoiser.depth)
        require(self.token_decoder.layers >= 0, "ldlm.token_decoder.layers", ">= 0", self.token_decoder.layers)
        require(self.warmup_steps >= 0, "ldlm.warmup_steps", ">= 0", self.warmup_steps)
        require(0 < self.warmup_midpoint < 1, "ldlm.warmup_midpoint", "in (0, 1)", self.warmup_midpoint)
        require(self.warmup_steepness > 0, "ldlm.warmup_steepness", "> 0", self.warmup_steepness)
        require(self.decoder_noise >= 0, "ldlm.decoder_noise", ">= 0", self.decoder_noise)
        require_fraction("ldlm", self_cond_prob=self.self_cond_prob)
        for name in ("mse_weight", "ce_weight", "diffusion_weight"):
            require(getattr(self, name) >= 0, f"ldlm.{name}", ">= 0", getattr(self, name))
        require(self.encoder_input != "scratch" or self.recon_loss == "ce", "ldlm.recon_loss",
                "'ce' with encoder_input 'scratch' (MSE onto trainable embeddings collapses them)", self.recon_loss)
        require(self.recon_loss != "ce" or self.train_token_decoder, "ldlm.train_token_decoder",
                "true when recon_loss is 'ce' (the token decoder is the only reconstruction signal)",
                self.train_token_decoder)
        if self.encoder.kind == "self_attention" or self.decoder.kind == "self_attention":
            require(self.num_latents == self.seq_len, "ldlm.num_latents",
                    f"seq_len ({self.seq_len}) with a self-attention coder", self.num_latents)

    def schedule(self) -> TangentSchedule:
        return TangentSchedule(self.schedule_d)

    def make_timestep_sampler(self) -> AdaptiveTimestepSampler | None:
        if self.timestep_sampler == "uniform":
            return None
        return AdaptiveTimestepSampler(self.adaptive_bins, self.adaptive_ema, self.adaptive_update_every,
                                       self.adaptive_uniform_mix)


class LatentDenoiser(nn.Module):
    """DiT over latents predicting x0, conditioned on t (adaLN-Zero) and on a self-conditioning estimate."""

    def __init__(self, latent_dim: int, config: DenoiserConfig):
        super().__init__()
        dim = config.hidden_dim
        self.input_proj = nn.Linear(2 * latent_dim, dim)  # [z_t ; x0 estimate] (zeros without self-conditioning)
        self.t_embedder = TimestepEmbedder(dim)
        self.rope = RotaryEmbedding(dim // config.n_heads)
        self.blocks = nn.ModuleList(DiTBlock(dim, config.n_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(dim, latent_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: blocks start as the identity
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        nn.init.zeros_(self.final.adaLN[-1].weight)
        nn.init.zeros_(self.final.adaLN[-1].bias)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor) -> torch.Tensor:
        h = self.input_proj(torch.cat([z_t, self_cond], dim=-1).to(self.input_proj.weight.dtype))
        c = self.t_embedder(t)
        rope = self.rope(h.shape[1], h.device)
        for block in self.blocks:
            h = block(h, c, rope)
        return self.final(h, c)


class TokenDecoder(SelfAttentionCoder):
    """``layers`` bidirectional Transformer blocks + a vocabulary head (0 layers: a linear head)."""

    def __init__(self, in_dim: int, vocab_size: int, config: TokenDecoderConfig):
        super().__init__(CoderConfig("self_attention", config.layers, config.hidden_dim, config.n_heads,
                                     config.mlp_ratio), in_dim, vocab_size)


def self_conditioned_x0(denoiser: nn.Module, z_t: torch.Tensor, t: torch.Tensor, prob: float,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time self-conditioning (Chen et al.): with probability ``prob`` per batch a first, gradient-free
    pass makes an x0 estimate that the second pass receives; otherwise the second input is zeros.
    Returns (x0 prediction, the self-conditioning input that was used)."""
    self_cond = torch.zeros_like(z_t)
    coin_device = generator.device if generator is not None else "cpu"
    if prob > 0 and float(torch.rand((), generator=generator, device=coin_device)) < prob:
        with torch.no_grad():
            self_cond = denoiser(z_t, t, self_cond).detach().to(z_t.dtype)
    return denoiser(z_t, t, self_cond), self_cond


@dataclass
class LDLMOutput:
    loss: torch.Tensor
    mse: torch.Tensor
    ce: torch.Tensor
    diffusion: torch.Tensor
    accuracy: torch.Tensor
    latent_norm: torch.Tensor     # RMS of the latents (the warmup ablation watches it shrink)
    t: torch.Tensor               # the sampled timesteps and their per-sample diffusion losses
    per_sample_diffusion: torch.Tensor


class LDLM(nn.Module):
    """The trainable parts of LDLM; the frozen token encoder lives outside (its features are precomputed)."""

    def __init__(self, config: LDLMConfig):
        super().__init__()
        self.config = c = config
        self.encoder = build_coder(c.encoder, c.hidden_size, c.latent_dim, c.num_latents, c.seq_len)
        self.decoder = build_coder(c.decoder, c.latent_dim, c.hidden_size, c.seq_len, c.num_latents)
        self.token_decoder = TokenDecoder(c.hidden_size, c.vocab_size, c.token_decoder)
        self.denoiser = LatentDenoiser(c.latent_dim, c.denoiser)
        self.schedule = c.schedule()
        self.embeddings = None
        if c.encoder_input == "scratch":  # unit-variance rows, like the standardised frozen-LM states
            self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
            nn.init.normal_(self.embeddings.weight, std=1.0)
        if not c.train_token_decoder:  # dropped during joint training (post-trained in its own stage)
            self.token_decoder.requires_grad_(False)

    def encoder_inputs(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """What the latent encoder reads: the trainable embeddings of ``tokens`` (scratch), else ``hidden``."""
        if self.embeddings is not None:
            return self.embeddings(tokens)
        if hidden is None:
            raise ValueError("ldlm.encoder_input 'frozen' needs the token encoder's hidden states")
        return hidden.to(self.encoder.in_proj.weight.dtype)  # bf16 under DeepSpeed

    def encode(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(hidden, mask)

    def decode_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Clean latents -> token ids (inference: no decoder-input noise)."""
        return self.token_decoder(self.decoder(z)).argmax(-1)

    def forward(self, hidden: torch.Tensor | None, tokens: torch.Tensor, step: int, t: torch.Tensor,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> LDLMOutput:
        """One joint-training loss. hidden: (B, T, hidden_size) normalised frozen-LM states (None with scratch
        embeddings); tokens: (B, T) ids in the model's vocabulary; t: (B,) diffusion timesteps (from the trainer's
        sampler); mask: (B, T) real tokens. ``generator`` draws the decoder noise, diffusion noise and
        self-conditioning coin."""
        c = self.config
        hidden = self.encoder_inputs(tokens, hidden)
        z = self.encode(hidden, mask)
        # reconstruction branch: noisy latents -> hidden states (MSE) -> tokens (CE)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        h_hat = self.decoder(z + c.decoder_noise * noise) if c.decoder_noise > 0 else self.decoder(z)
        weights = torch.ones_like(tokens, dtype=h_hat.dtype) if mask is None else mask.to(h_hat.dtype)
        denom = weights.sum().clamp_min(1)
        mse = (((h_hat.float() - hidden.detach().float()) ** 2).mean(-1) * weights).sum() / denom  # fixed target
        ce_through = c.recon_loss in ("ce", "ce+mse")  # the CE ablation lets token loss shape the latents
        with torch.set_grad_enabled(torch.is_grad_enabled() and (c.train_token_decoder or ce_through)):
            logits = self.token_decoder(h_hat if ce_through else h_hat.detach())
        ce_all = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")
        ce = (ce_all * weights).sum() / denom
        accuracy = (((logits.argmax(-1) == tokens).to(h_hat.dtype) * weights).sum() / denom).detach()
        # diffusion branch: the encoder only feels gamma(step) of the diffusion gradient
        z_diff = scale_gradient(z, warmup_gamma(step, c.warmup_steps, c.warmup_midpoint, c.warmup_steepness))
        eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z_t = self.schedule.add_noise(z_diff, t, eps)
        x0_hat, _ = self_conditioned_x0(self.denoiser, z_t, t, c.self_cond_prob, generator)
        per_sample = ((x0_hat.float() - z_diff.float()) ** 2).mean(dim=(1, 2))
        diffusion = per_sample.mean()
        loss = c.diffusion_weight * diffusion
        if c.recon_loss in ("mse", "ce+mse"):
            loss = loss + c.mse_weight * mse
        if c.train_token_decoder or ce_through:
            loss = loss + c.ce_weight * ce
        return LDLMOutput(loss, mse.detach(), ce.detach(), diffusion.detach(), accuracy,
                          z.detach().float().pow(2).mean().sqrt(), t.detach(), per_sample.detach())

    @torch.no_grad()
    def sample_latents(self, n: int, steps: int, generator: torch.Generator | None = None, grid: str = "log_snr",
                       device="cpu", on_step=None, sampler: str = "auto", eta: float = 0.0) -> torch.Tensor:
        """Unconditional generation: Gaussian noise -> clean latents with ``sampler`` (``vp_diffusion.vp_sample``:
        Euler-Maruyama, DDIM with noise ``eta``, or ``auto``: Euler-Maruyama where it is stable, else DDIM)."""
        c = self.config
        noise = torch.randn(n, c.num_latents, c.latent_dim, generator=generator).to(device)
        times = sampling_times(self.schedule, steps, grid)
        return vp_sample(lambda z, t, sc: self.denoiser(z, t, sc).to(z.dtype), noise, self.schedule, times,
                         sampler, eta, self_condition=c.self_cond_prob > 0, generator=generator, on_step=on_step)

    @torch.no_grad()
    def generate(self, n: int, steps: int, generator: torch.Generator | None = None, grid: str = "log_snr",
                 device="cpu", sampler: str = "auto", eta: float = 0.0) -> torch.Tensor:
        return self.decode_tokens(self.sample_latents(n, steps, generator, grid, device, None, sampler, eta))


class PostTrainedDecoder(nn.Module):
    """LDLM App. B.2: a small token decoder trained afterwards on noisy latents (encoder and diffusion frozen),
    with token CE only. ``source="latents"`` reads z + sigma eps directly (B.2); ``"hidden"`` reads the frozen
    latent decoder's reconstructed hidden states (the main text's discard-then-tune variant)."""

    def __init__(self, config: LDLMConfig, layers: int, source: str = "latents"):
        super().__init__()
        require(source in ("latents", "hidden"), "train_post_decoder.source", "'latents' or 'hidden'", source)
        self.source = source
        in_dim = config.latent_dim if source == "latents" else config.hidden_size
        self.decoder = TokenDecoder(in_dim, config.vocab_size,
                                    TokenDecoderConfig(**{**config.token_decoder.__dict__, "layers": layers}))

    def forward(self, z: torch.Tensor, latent_decoder: nn.Module | None = None) -> torch.Tensor:
        if self.source == "hidden":
            with torch.no_grad():
                z = latent_decoder(z)
        return self.decoder(z)
