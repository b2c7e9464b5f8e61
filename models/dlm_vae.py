"""Cola DLM's Text VAE: one latent per ``patch_size`` tokens, selectable attention, and the stage-1 losses

    CE(x, decode(z)) + beta * KL(q(z|x) || N(0, I)) + mask_weight * CE(masked positions | encode(masked x))

with the posterior's noise level under control: the **VAE logSNR**, log(mean mu^2 / mean sigma^2) over all
latent coordinates, is the paper's smoothness knob.

* ``logsnr_mode = "predicted"``: a plain VAE, the encoder predicts the log-variance; the logSNR is only measured.
* ``"fixed"``: the posterior mean is LayerNorm-ed (no affine, so mean mu^2 = 1 per position) and the variance
  is exp(-logsnr) everywhere, so the logSNR is exactly ``logsnr`` (the paper compares 1.0 / 1.5 / 2.0).
* ``"learnable"``: as fixed, with the logSNR a trained scalar initialised at ``logsnr``.

Attention: ``causal`` (token-causal, the paper's VAE), ``block_causal`` (bidirectional inside blocks of
``block_size`` positions, causal across them; the released code) or ``bidirectional``. With
``patch_size = 2`` pairs of tokens share one latent; a length that is not a multiple of the patch is padded
and the padding is cut off after decoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_fields, require, require_fraction, require_positive
from .layers import KVSlot, RotaryEmbedding, TransformerBlock, masked_mean



@dataclass
class DLMVAEConfig:
    vocab_size: int = 49152
    latent_dim: int = 16
    hidden_dim: int = 256
    n_heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_ratio: float = 4.0
    attention: Literal["causal", "block_causal", "bidirectional"] = "causal"
    block_size: int = 16          # for block_causal attention, in latent positions
    patch_size: Literal[1, 2] = 1  # tokens per latent
    kl_weight: float = 1e-4       # beta (lost in the paper)
    mask_ratio: float = 0.15      # BERT-style masking loss (ratio and weight lost; BERT's 15% chosen)
    mask_weight: float = 0.5
    logsnr_mode: Literal["predicted", "fixed", "learnable"] = "learnable"
    logsnr: float = 1.5           # fixed value, or the learnable one's initial value

    def __post_init__(self):
        check_fields(self, "dlm.vae")
        require_positive("dlm.vae", vocab_size=self.vocab_size, latent_dim=self.latent_dim,
                         hidden_dim=self.hidden_dim, n_heads=self.n_heads, encoder_layers=self.encoder_layers,
                         decoder_layers=self.decoder_layers, block_size=self.block_size)
        require(self.hidden_dim % self.n_heads == 0 and (self.hidden_dim // self.n_heads) % 2 == 0,
                "dlm.vae.hidden_dim", f"a multiple of 2*n_heads ({2 * self.n_heads})", self.hidden_dim)
        require(self.kl_weight >= 0 and self.mask_weight >= 0, "dlm.vae.kl_weight/mask_weight", ">= 0",
                (self.kl_weight, self.mask_weight))
        require_fraction("dlm.vae", mask_ratio=self.mask_ratio)


def attention_mask(kind: str, length: int, block_size: int, device=None) -> torch.Tensor | None:
    """(T, T) bool, True = may attend; None for bidirectional."""
    if kind == "bidirectional":
        return None
    pos = torch.arange(length, device=device)
    if kind == "causal":
        return pos[None, :] <= pos[:, None]
    blocks = pos // block_size
    return blocks[None, :] <= blocks[:, None]


def latent_mask(mask: torch.Tensor | None, patch_size: int) -> torch.Tensor | None:
    """(B, T) real-token mask -> (B, ceil(T / p)) mask of the latents that hold at least one real token."""
    if mask is None:
        return None
    pad = (-mask.shape[1]) % patch_size
    return F.pad(mask.bool(), (0, pad), value=False).view(mask.shape[0], -1, patch_size).any(-1)


@dataclass
class DLMVAEOutput:
    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    mask: torch.Tensor
    accuracy: torch.Tensor
    logsnr: torch.Tensor          # measured on this batch: log(mean mu^2 / mean sigma^2)
    z: torch.Tensor | None = None  # the posterior sample that was decoded (with gradient: joint training)
    mean: torch.Tensor | None = None


class DLMTextVAE(nn.Module):
    def __init__(self, config: DLMVAEConfig):
        super().__init__()
        self.config = c = config
        self.mask_id = c.vocab_size  # one extra input id for the masking loss
        self.embed = nn.Embedding(c.vocab_size + 1, c.hidden_dim)
        self.patch_in = nn.Linear(c.patch_size * c.hidden_dim, c.hidden_dim) if c.patch_size > 1 else nn.Identity()
        self.rope = RotaryEmbedding(c.hidden_dim // c.n_heads)
        self.encoder = nn.ModuleList(TransformerBlock(c.hidden_dim, c.n_heads, c.mlp_ratio)
                                     for _ in range(c.encoder_layers))
        self.enc_norm = nn.LayerNorm(c.hidden_dim)
        self.to_mean = nn.Linear(c.hidden_dim, c.latent_dim)
        self.to_logvar = nn.Linear(c.hidden_dim, c.latent_dim) if c.logsnr_mode == "predicted" else None
        # shape (1,), not a scalar: DeepSpeed broadcasts parameters as bytes and cannot view 0-dim tensors
        if c.logsnr_mode == "learnable":
            self.logsnr = nn.Parameter(torch.tensor([float(c.logsnr)]))
        else:
            self.register_buffer("logsnr", torch.tensor([float(c.logsnr)]))
        self.from_latent = nn.Linear(c.latent_dim, c.hidden_dim)
        self.decoder = nn.ModuleList(TransformerBlock(c.hidden_dim, c.n_heads, c.mlp_ratio)
                                     for _ in range(c.decoder_layers))
        self.dec_norm = nn.LayerNorm(c.hidden_dim)
        self.head = nn.Linear(c.hidden_dim, c.patch_size * c.vocab_size)

    # -- shapes ------------------------------------------------------------------------------------------
    def num_latents(self, num_tokens: int) -> int:
        return -(-num_tokens // self.config.patch_size)

    def _patchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, ceil(T / p), hidden); a ragged tail is padded with the mask id."""
        p = self.config.patch_size
        pad = self.num_latents(tokens.shape[1]) * p - tokens.shape[1]
        if pad:
            tokens = F.pad(tokens, (0, pad), value=self.mask_id)
        h = self.embed(tokens)
        return self.patch_in(h.reshape(h.shape[0], -1, p * h.shape[-1]))

    def _run(self, blocks: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(self.config.attention, h.shape[1], self.config.block_size, h.device)
        rope = self.rope(h.shape[1], h.device)
        for block in blocks:
            h = block(h, rope, mask)
        return h

    # -- encoder / decoder ---------------------------------------------------------------------------------
    def posterior(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance), each (B, latents, latent_dim)."""
        h = self.enc_norm(self._run(self.encoder, self._patchify(tokens)))
        mean = self.to_mean(h)
        if self.to_logvar is not None:
            return mean, self.to_logvar(h).clamp(-30.0, 20.0)
        mean = F.layer_norm(mean, mean.shape[-1:])  # mean mu^2 = 1 per position: the logSNR is -logvar
        return mean, (-self.logsnr).expand_as(mean)

    def decode_logits(self, z: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """(B, latents, latent_dim) -> (B, num_tokens, vocab): patches unfold, padding is cut off."""
        h = self.dec_norm(self._run(self.decoder, self.from_latent(z.to(self.from_latent.weight.dtype))))
        logits = self.head(h).view(h.shape[0], -1, self.config.vocab_size)
        return logits[:, :num_tokens]

    @staticmethod
    def measured_logsnr(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return torch.log(mean.float().pow(2).mean()) - torch.log(logvar.float().exp().mean())

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> DLMVAEOutput:
        """tokens (B, T); mask (B, T) real tokens (None: all)."""
        c = self.config
        weights = torch.ones_like(tokens, dtype=torch.float32) if mask is None else mask.float()
        denom = weights.sum().clamp_min(1)
        mean, logvar = self.posterior(tokens)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps
        logits = self.decode_logits(z, tokens.shape[1])
        recon = (F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none") * weights).sum() / denom
        real_latents = latent_mask(mask, c.patch_size)
        kl = masked_mean(0.5 * (mean.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).sum(-1), real_latents)
        accuracy = (((logits.argmax(-1) == tokens).float() * weights).sum() / denom).detach()
        masked_loss = torch.zeros((), device=tokens.device)
        if c.mask_weight > 0 and c.mask_ratio > 0:
            chosen = (torch.rand(tokens.shape, generator=generator, device=tokens.device) < c.mask_ratio) & weights.bool()
            if chosen.any():
                m_mean, _ = self.posterior(torch.where(chosen, torch.full_like(tokens, self.mask_id), tokens))
                m_logits = self.decode_logits(m_mean, tokens.shape[1])
                masked_loss = F.cross_entropy(m_logits.float()[chosen], tokens[chosen])
        loss = recon + c.kl_weight * kl + c.mask_weight * masked_loss
        return DLMVAEOutput(loss, recon.detach(), kl.detach(), masked_loss.detach(), accuracy,
                            self.measured_logsnr(mean.detach(), logvar.detach()), z, mean)

    def streaming_decoder(self) -> "StreamingDecoder":
        return StreamingDecoder(self)

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        mean, _ = self.posterior(tokens)
        return self.decode_logits(mean, tokens.shape[1]).argmax(-1)



class StreamingDecoder:
    """Decodes latents as generation commits them: each completed VAE block (``block_size`` latents, aligned to
    position 0 as in training) runs through the decoder once, attending to the cached keys/values of the
    blocks before it. Same logits as ``decode_logits`` over the whole sequence, for a causal or block-causal
    decoder (a bidirectional one needs the whole sequence: it cannot stream)."""

    def __init__(self, vae: DLMTextVAE):
        c = vae.config
        require(c.attention != "bidirectional", "dlm.vae.attention", "'causal' or 'block_causal' to stream-decode",
                c.attention)
        self.vae, self.chunk = vae, c.block_size
        self.slots = [KVSlot() for _ in vae.decoder]
        self.pending: torch.Tensor | None = None
        self.position = 0  # latents decoded so far

    @torch.no_grad()
    def feed(self, z: torch.Tensor) -> torch.Tensor:
        """Add (B, n, d) latents; returns the logits (B, p * k, V) of every block this completes (k latents)."""
        self.pending = z if self.pending is None else torch.cat([self.pending, z], 1)
        full = (self.position + self.pending.shape[1]) // self.chunk * self.chunk - self.position
        return self._decode(full)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """Decode what is left (a ragged last block)."""
        return self._decode(0 if self.pending is None else self.pending.shape[1])

    def _decode(self, n: int) -> torch.Tensor:
        vae, c = self.vae, self.vae.config
        z, self.pending = self.pending[:, :n], self.pending[:, n:]
        if n == 0:
            return z.new_zeros(z.shape[0], 0, c.vocab_size)
        device = z.device
        pos = torch.arange(self.position, self.position + n, device=device)
        seen = torch.arange(0, self.position + n, device=device)
        if c.attention == "causal":
            mask = seen[None, :] <= pos[:, None]
        else:
            mask = (seen[None, :] // c.block_size) <= (pos[:, None] // c.block_size)
        rope = vae.rope(n, device, offset=self.position)
        h = vae.from_latent(z.to(vae.from_latent.weight.dtype))
        for block, slot in zip(vae.decoder, self.slots):
            h = block(h, rope, mask, slot)
        self.position += n
        h = vae.dec_norm(h)
        return vae.head(h).view(h.shape[0], -1, c.vocab_size)
