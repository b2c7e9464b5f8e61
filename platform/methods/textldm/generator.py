"""TextLDM: a frozen TextVAE + a TextDiT doing flow matching in its latent space, for text continuation.

The context (prompt) and the target are encoded *separately* by the frozen encoder, so no information
leaks from the target into the context latents. Latents are standardised per channel with statistics
measured on training data (the VAE's posterior means are not unit-scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latentlm.models.config import require
from latentlm.models.dit import TextDiT
from latentlm.models.flow import TimestepSchedule, euler_sample, guided_velocity, interpolate, time_grid
from latentlm.models.layers import masked_mean
from latentlm.models.text_vae import TextVAE
from latentlm.models.vocab import CompactVocab


class LatentNormalizer(nn.Module):
    """Per-channel affine standardisation z' = (z - mean) / std, stored with the DiT checkpoint."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))

    @torch.no_grad()
    def fit(self, latents: torch.Tensor) -> "LatentNormalizer":
        flat = latents.reshape(-1, latents.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-4))
        return self

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


@dataclass
class FlowLoss:
    loss: torch.Tensor
    t: torch.Tensor


def flow_matching_loss(dit: TextDiT, latents: torch.Tensor, is_target: torch.Tensor, schedule: TimestepSchedule,
                       cfg_dropout: float | None = None, generator: torch.Generator | None = None,
                       valid: torch.Tensor | None = None) -> FlowLoss:
    """Conditional flow-matching MSE on one window per sample, with per-sample CFG context dropout.

    latents: (B, T, d) normalised clean latents (the context's own encoding where ``is_target`` is False, the
    target's where it is True); is_target: (B, T) bool, each sample's split (all True: unconditional);
    valid: (B, T) real positions (None: all). The loss averages over valid target positions only, so neither
    the context nor padding counts. ``dit`` may be wrapped (DDP), so pass ``cfg_dropout`` explicitly there;
    default: the DiT's config."""
    if cfg_dropout is None:
        cfg_dropout = dit.config.cfg_dropout
    b = latents.shape[0]
    t = schedule.sample(b, device=latents.device, generator=generator)
    noise = torch.randn(latents.shape, device=latents.device, generator=generator, dtype=latents.dtype)
    x_t, velocity = interpolate(latents, noise, t)
    keep = torch.rand(b, device=latents.device, generator=generator) >= cfg_dropout
    pred = dit(torch.where(is_target[..., None], x_t, latents), t, None, keep, is_target, valid)
    scored = is_target if valid is None else is_target & valid
    squared = (pred.float() - velocity.float()).pow(2).mean(-1)
    return FlowLoss(masked_mean(squared, scored), t)


class TextLDM(nn.Module):
    """Inference-time bundle: encode a prompt, sample target latents with CFG, decode tokens."""

    def __init__(self, vae: TextVAE, dit: TextDiT, normalizer: LatentNormalizer,
                 schedule: TimestepSchedule | None = None, vocab: CompactVocab | None = None):
        super().__init__()
        require(vae.config.latent_dim == dit.config.latent_dim, "dit.latent_dim",
                f"the VAE's latent_dim ({vae.config.latent_dim})", dit.config.latent_dim)
        self.vae, self.dit, self.normalizer = vae, dit, normalizer
        self.schedule = schedule or TimestepSchedule()
        self.vocab = vocab  # token ids in and out are always the tokenizer's; the VAE may use a compact vocab

    def model_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.vocab is None else self.vocab.encode(tokens)

    def tokenizer_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.vocab is None else self.vocab.decode(ids)

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        """VAE round trip through the posterior mean; tokenizer ids in and out."""
        return self.tokenizer_ids(self.vae.reconstruct(self.model_ids(tokens)))

    @torch.no_grad()
    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> normalised posterior means (B, T, d)."""
        mu, _, _ = self.vae.encode(self.model_ids(tokens))
        return self.normalizer.normalize(mu)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, T, d) -> token ids (B, T); ids outside a compact vocab come back as -1."""
        return self.tokenizer_ids(self.vae.decode(self.normalizer.denormalize(latents)).argmax(-1))

    @torch.no_grad()
    def generate(self, context_tokens: torch.Tensor | None, target_len: int, steps: int = 50,
                 cfg_scale: float = 7.0, grid: str = "schedule", generator: torch.Generator | None = None,
                 batch_size: int | None = None, on_step=None) -> torch.Tensor:
        """Continue ``context_tokens`` (B, Tc) (None: unconditional; then pass ``batch_size``) by
        ``target_len`` tokens, all generated in parallel in ``steps`` Euler steps. Returns (B, target_len)."""
        require(grid in ("schedule", "uniform"), "sampler.grid", "'schedule' or 'uniform'", grid)
        device = next(self.dit.parameters()).device
        context = None if context_tokens is None else self.encode(context_tokens.to(device))
        b = context.shape[0] if context is not None else batch_size
        require(b is not None and b > 0, "batch_size", "a positive batch size for unconditional sampling", b)
        noise = torch.randn((b, target_len, self.dit.config.latent_dim), device=device, generator=generator)
        times = time_grid(steps, self.schedule if grid == "schedule" else None)

        def velocity(x, t):
            return self.dit.forward_with_cfg(x, t, context, cfg_scale)

        decode_step = None if on_step is None else (lambda i, x: on_step(i, self.decode(x)))
        latents = euler_sample(velocity, noise, times, decode_step)
        return self.decode(latents)

    @torch.no_grad()
    def generate_ragged(self, prompts: list[list[int]], target_lens: list[int], steps: int = 50,
                        cfg_scale: float = 7.0, grid: str = "schedule", generator: torch.Generator | None = None,
                        on_step=None) -> list[list[int]]:
        """``generate`` for prompts and target lengths that differ per sample, in one batch.

        Each sample is laid out as in training, one window ``[prompt, target, padding]`` with its own split
        (padding is no key for attention, the prompt is encoded on its own), so a sample's computation is the
        one ``generate`` does for it alone; its noise is drawn in order, sample by sample, so sample i gets
        what ``generate`` would draw for it right after samples 0..i-1. ``on_step(i, ids)`` gets one id
        list per sample. Returns one list of ``target_lens[i]`` ids per prompt."""
        require(grid in ("schedule", "uniform"), "sampler.grid", "'schedule' or 'uniform'", grid)
        require(len(prompts) == len(target_lens) and len(prompts) > 0, "prompts",
                "one target length per prompt, at least one prompt", (len(prompts), len(target_lens)))
        require(all(len(p) > 0 for p in prompts) and all(n > 0 for n in target_lens), "prompts",
                "non-empty prompts and positive target lengths", (min(map(len, prompts)), min(target_lens)))
        device = next(self.dit.parameters()).device
        b, d = len(prompts), self.dit.config.latent_dim
        ctx_lens = torch.tensor([len(p) for p in prompts], device=device)
        tgt_lens = torch.tensor(target_lens, device=device)
        width = int((ctx_lens + tgt_lens).max())
        pos = torch.arange(width, device=device)[None]
        is_context = pos < ctx_lens[:, None]
        is_target = ~is_context & (pos < (ctx_lens + tgt_lens)[:, None])
        valid = is_context | is_target
        tokens = torch.zeros((b, width), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)
        mu, _, _ = self.vae.encode(self.model_ids(tokens), is_context)
        window = torch.where(is_context[..., None], self.normalizer.normalize(mu), torch.zeros_like(mu))
        for i, n in enumerate(target_lens):  # sample by sample, in order: generate's draws
            noise = torch.randn((n, d), device=device, generator=generator)
            window[i, len(prompts[i]) : len(prompts[i]) + n] = noise.to(window.dtype)
        times = time_grid(steps, self.schedule if grid == "schedule" else None)
        keep = torch.cat([torch.ones(b, dtype=torch.bool, device=device), torch.zeros(b, dtype=torch.bool, device=device)])
        doubled = [torch.cat([m, m]) for m in (is_target, valid)]

        def velocity(x, t):  # guided velocity on the targets, zero on the (clean) prompts and the padding
            cond, uncond = self.dit(torch.cat([x, x]), torch.cat([t, t]), None, keep, *doubled).chunk(2)
            return torch.where(is_target[..., None], guided_velocity(cond, uncond, cfg_scale), torch.zeros_like(x))

        # the targets, left-aligned (B, max target, d); the decoder sees each sample's own positions only
        target_index = (ctx_lens[:, None] + torch.arange(int(tgt_lens.max()), device=device)[None]).clamp_max(width - 1)
        target_valid = torch.arange(int(tgt_lens.max()), device=device)[None] < tgt_lens[:, None]

        def decode(x) -> list[list[int]]:
            z = torch.gather(x, 1, target_index[..., None].expand(-1, -1, d))
            ids = self.tokenizer_ids(self.vae.decode(self.normalizer.denormalize(z), target_valid).argmax(-1))
            return [row[:n] for row, n in zip(ids.tolist(), target_lens)]

        decode_step = None if on_step is None else (lambda i, x: on_step(i, decode(x)))
        return decode(euler_sample(velocity, window, times, decode_step))


def load_textldm(directory, use_ema: bool = True, device: str | torch.device = "cpu") -> TextLDM:
    """Load a DiT-stage checkpoint directory (config.json + safetensors) for sampling; no Ray needed."""
    from pathlib import Path

    from latentlm.models.checkpoint import load_tensors, read_json
    from latentlm.models.dit import TextDiTConfig
    from latentlm.models.text_vae import TextVAEConfig
    directory = Path(directory)
    cfg, state = read_json(directory / "config.json"), read_json(directory / "state.json")
    vae_cfg = TextVAEConfig(**cfg["vae"])
    vae = TextVAE(vae_cfg, teacher_dim=state.get("teacher_dim") if vae_cfg.repa.enabled else None)
    vae.load_state_dict(load_tensors(directory / "vae.safetensors"))
    dit = TextDiT(TextDiTConfig(**cfg["dit"]))
    weights = "ema" if use_ema and (directory / "ema.safetensors").is_file() else "dit"
    dit.load_state_dict(load_tensors(directory / f"{weights}.safetensors"))
    normalizer = LatentNormalizer(dit.config.latent_dim)
    normalizer.load_state_dict(load_tensors(directory / "normalizer.safetensors"))
    schedule = TimestepSchedule(**cfg["train_dit"]["schedule"])
    return TextLDM(vae, dit, normalizer, schedule, CompactVocab.from_checkpoint(directory)).to(device).eval()
