"""TextVAE (TextLDM stage 1): one continuous latent per token, decoded in parallel.

Encoder: bidirectional Transformer over tokens -> per-position diagonal Gaussian q(z_i | x) of
``latent_dim`` channels (no sequence compression). Decoder: bidirectional Transformer over latents ->
vocabulary logits for every position at once (non-autoregressive). Loss:

    CE(x, decode(z)) + kl_weight * KL(q(z|x) || N(0, I)) + repa.weight * L_REPA

REPA aligns an encoder representation with a frozen LM's hidden states (see ``repa.py``); with REPA off
this is a plain KL-regularised VAE.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, check_fields, require, require_positive
from .layers import RotaryEmbedding, TransformerBlock, key_padding_mask, masked_mean, segment_mask
from .repa import REPAConfig, REPAProjector, repa_loss


@dataclass
class TextVAEConfig:
    vocab_size: int = 49152
    latent_dim: int = 64           # channels per token latent (TextLDM ablates 64 / 128)
    hidden_dim: int = 256
    n_heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    max_seq_len: int = 128
    tie_embeddings: bool = False   # share the token embedding with the output head (faster learning when small)
    kl_weight: float = 1e-4        # lambda_KL: value lost in the paper's text; small keeps recon near-perfect
    logvar_min: float = -30.0      # clamp for numerical safety of exp(logvar)
    logvar_max: float = 20.0
    repa: REPAConfig = field(default_factory=REPAConfig)

    def __post_init__(self):
        check_fields(self, "vae")
        require_positive("vae", vocab_size=self.vocab_size, latent_dim=self.latent_dim, hidden_dim=self.hidden_dim,
                         n_heads=self.n_heads, encoder_layers=self.encoder_layers,
                         decoder_layers=self.decoder_layers, max_seq_len=self.max_seq_len, mlp_ratio=self.mlp_ratio)
        require(self.hidden_dim % self.n_heads == 0 and (self.hidden_dim // self.n_heads) % 2 == 0,
                "vae.hidden_dim", f"a multiple of 2*n_heads ({2 * self.n_heads})", self.hidden_dim)
        require(self.kl_weight >= 0, "vae.kl_weight", "a value >= 0", self.kl_weight)
        align = self.repa.align_at
        if isinstance(align, int) and not 1 <= align <= self.encoder_layers:
            raise ConfigError(f"vae.repa.align_at: expected 'output', 'latent' or an encoder block in "
                              f"[1, {self.encoder_layers}], got {align!r}")


@dataclass
class VAEOutput:
    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    repa: torch.Tensor
    accuracy: torch.Tensor
    logits: torch.Tensor
    mu: torch.Tensor


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over channels, averaged over (masked) positions."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    return masked_mean(kl, mask)


class TextVAE(nn.Module):
    def __init__(self, config: TextVAEConfig, teacher_dim: int | None = None):
        super().__init__()
        self.config = c = config
        self.rope = RotaryEmbedding(c.hidden_dim // c.n_heads)
        self.embed = nn.Embedding(c.vocab_size, c.hidden_dim)
        self.encoder = nn.ModuleList(TransformerBlock(c.hidden_dim, c.n_heads, c.mlp_ratio, c.dropout)
                                     for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.hidden_dim)
        self.to_moments = nn.Linear(c.hidden_dim, 2 * c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, c.hidden_dim)
        self.decoder = nn.ModuleList(TransformerBlock(c.hidden_dim, c.n_heads, c.mlp_ratio, c.dropout)
                                     for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.hidden_dim)
        self.lm_head = nn.Linear(c.hidden_dim, c.vocab_size, bias=False)
        self.projector = None
        if c.repa.enabled:
            if teacher_dim is None:
                raise ConfigError("vae.repa.enabled: REPA needs the teacher's hidden size (teacher_dim)")
            source_dim = c.latent_dim if c.repa.align_at == "latent" else c.hidden_dim
            self.projector = REPAProjector(source_dim, teacher_dim, c.repa.projector_hidden, c.repa.projector_depth)
        self.apply(_init_weights)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    # -- encoder ---------------------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, segments: torch.Tensor | None = None):
        """tokens: (B, T) -> (mu, logvar, align_features); mu/logvar: (B, T, latent_dim). ``valid``: real
        tokens; ``segments`` (B, T) ids: each segment is encoded on its own (e.g. a prompt and its target)."""
        c = self.config
        rope = self.rope(tokens.shape[1], tokens.device)
        mask = key_padding_mask(valid) if segments is None else segment_mask(segments, valid)
        h = self.embed(tokens)
        align = None
        for i, block in enumerate(self.encoder, start=1):
            h = block(h, rope, mask)
            if c.repa.align_at == i:
                align = h
        h = self.encoder_norm(h)
        mu, logvar = self.to_moments(h).float().chunk(2, dim=-1)
        logvar = logvar.clamp(c.logvar_min, c.logvar_max)
        if c.repa.align_at == "output":
            align = h
        elif c.repa.align_at == "latent":
            align = mu
        return mu, logvar, align

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

    # -- decoder ---------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, T, latent_dim) -> logits (B, T, vocab), all positions in parallel."""
        rope = self.rope(z.shape[1], z.device)
        mask = key_padding_mask(valid)
        h = self.from_latent(z.to(self.from_latent.weight.dtype))
        for block in self.decoder:
            h = block(h, rope, mask)
        return self.lm_head(self.decoder_norm(h))

    # -- training objective ----------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None,
                teacher_features: torch.Tensor | None = None, align_mask: torch.Tensor | None = None) -> VAEOutput:
        """tokens/valid: (B, T); teacher_features: (B, T, teacher_dim) aligned token-for-token with ``tokens``;
        align_mask: (B, T) positions that take part in the REPA loss (defaults to ``valid``)."""
        mu, logvar, align = self.encode(tokens, valid)
        z = self.reparameterize(mu, logvar) if self.training else mu
        logits = self.decode(z, valid)
        ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none").view_as(tokens)
        recon = masked_mean(ce, valid)
        kl = gaussian_kl(mu, logvar, valid)
        loss = recon + self.config.kl_weight * kl
        alignment = torch.zeros((), device=tokens.device)
        if self.projector is not None:
            if teacher_features is None:
                raise ValueError("REPA is enabled but no teacher_features were given")
            alignment = repa_loss(self.projector(align), teacher_features, valid if align_mask is None else align_mask)
            loss = loss + self.config.repa.weight * alignment
        with torch.no_grad():
            hits = (logits.argmax(-1) == tokens).float()
            accuracy = masked_mean(hits, valid)
        return VAEOutput(loss, recon, kl, alignment, accuracy, logits, mu)

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        mu, _, _ = self.encode(tokens, valid)
        return self.decode(mu, valid).argmax(-1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
