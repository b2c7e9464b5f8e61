"""Cola DLM's block-causal DiT prior: flow matching over blocks of latents, bidirectional inside a block,
causal across blocks, each noisy block conditioned in-context on the *clean* history.

Training uses the two-stream layout (one forward for every block at once):

    sequence = [clean latents z_0 (T) ; noisy latents z_t (T)],  both at positions 0..T-1 (RoPE)
    clean query in block b  -> clean keys of blocks <= b           (the history encoder, block-causal)
    noisy query in block b  -> clean keys of blocks <  b  +  noisy keys of block b

so a block's prediction sees exactly its own noisy block and the clean blocks before it. Every block has its
own timestep (adaLN per token; clean tokens carry t = 0, as in the released code). The history is
stop-gradiented by the caller (``sg(z0^(<b))`` of the paper's visible set).

Inference commits blocks one at a time: after a block is denoised its clean latents run through the
network once (t = 0) and every layer's keys/values join a KV cache, so each denoising step of the next
block costs one forward over that block only (``BlockKVCache``). Convention of ``flow.py``: t = 0 noise,
t = 1 data, velocity = data - noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import require, require_positive
from .dit import TimestepEmbedder
from .layers import MLP, RotaryEmbedding, apply_rotary, masked_mean


@dataclass
class BlockDiTConfig:
    latent_dim: int = 16
    hidden_dim: int = 256
    depth: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    block_size: int = 16           # latents per block (Cola DLM: 16; 1 = a per-token causal prior)

    def __post_init__(self):
        require_positive("dlm.dit", latent_dim=self.latent_dim, hidden_dim=self.hidden_dim, depth=self.depth,
                         n_heads=self.n_heads, mlp_ratio=self.mlp_ratio, block_size=self.block_size)
        require(self.hidden_dim % self.n_heads == 0 and (self.hidden_dim // self.n_heads) % 2 == 0,
                "dlm.dit.hidden_dim", f"a multiple of 2*n_heads ({2 * self.n_heads})", self.hidden_dim)


def block_index(length: int, block_size: int, device=None) -> torch.Tensor:
    """(length,) block of each position; the last block may be shorter."""
    return torch.arange(length, device=device) // block_size


def two_stream_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """(2T, 2T) bool, True = may attend, over [clean (T) ; noisy (T)] (see the module docstring)."""
    b = block_index(length, block_size, device)
    q, k = b[:, None], b[None, :]
    clean_to_clean = k <= q
    noisy_to_clean = k < q
    noisy_to_noisy = k == q
    top = torch.cat([clean_to_clean, torch.zeros_like(clean_to_clean)], dim=1)
    bottom = torch.cat([noisy_to_clean, noisy_to_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)


def per_token_modulate(x, shift, scale):
    return x * (1 + scale) + shift


class BlockAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project(self, x, rope):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q, k, v, mask=None):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, t, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class BlockDiTLayer(nn.Module):
    """Pre-norm DiT block with per-token adaLN-Zero (shift, scale, gate for attention and MLP)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = BlockAttention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope, mask=None, past=None):
        """c: (B, T, dim) per-token conditioning. ``past``: cached (k, v) this layer's queries also see.
        Returns (output, (k, v) of this call's tokens)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        q, k, v = self.attn.project(per_token_modulate(self.norm1(x), shift1, scale1), rope)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        x = x + gate1 * self.attn.attend(q, keys, values, mask)
        x = x + gate2 * self.mlp(per_token_modulate(self.norm2(x), shift2, scale2))
        return x, (k, v)


class BlockKVCache:
    """Per-layer keys/values of the committed clean blocks (B, heads, L, head_dim)."""

    def __init__(self, depth: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth

    @property
    def length(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].shape[2]

    def append(self, layer: int, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        old = self.layers[layer]
        self.layers[layer] = kv if old is None else (torch.cat([old[0], kv[0]], 2), torch.cat([old[1], kv[1]], 2))


class BlockCausalDiT(nn.Module):
    def __init__(self, config: BlockDiTConfig):
        super().__init__()
        self.config = c = config
        self.input_proj = nn.Linear(c.latent_dim, c.hidden_dim)
        self.stream = nn.Embedding(2, c.hidden_dim)  # 0 = clean history, 1 = noisy block
        self.t_embedder = TimestepEmbedder(c.hidden_dim)
        self.rope = RotaryEmbedding(c.hidden_dim // c.n_heads)
        self.layers = nn.ModuleList(BlockDiTLayer(c.hidden_dim, c.n_heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(c.hidden_dim, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden_dim, 2 * c.hidden_dim))
        self.out = nn.Linear(c.hidden_dim, c.latent_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.stream.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in [*(lay.adaLN[-1] for lay in self.layers), self.final_adaLN[-1], self.out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _embed(self, z, t_tokens, stream: int):
        h = self.input_proj(z.to(self.input_proj.weight.dtype)) + self.stream.weight[stream]
        c = self.t_embedder(t_tokens.reshape(-1)).view(*t_tokens.shape, -1)
        return h, c

    def _head(self, h, c):
        shift, scale = self.final_adaLN(c).chunk(2, dim=-1)
        return self.out(per_token_modulate(self.final_norm(h), shift, scale))

    def forward(self, clean: torch.Tensor, noisy: torch.Tensor, t_blocks: torch.Tensor) -> torch.Tensor:
        """Training: clean/noisy (B, T, d) latents, t_blocks (B, ceil(T / block_size)) the noisy blocks' times.
        Returns the predicted velocity of every noisy block (B, T, d)."""
        b, length, _ = noisy.shape
        blocks = block_index(length, self.config.block_size, noisy.device)
        h_clean, c_clean = self._embed(clean, torch.zeros(b, length, device=noisy.device), 0)
        h_noisy, c_noisy = self._embed(noisy, t_blocks[:, blocks], 1)
        h, c = torch.cat([h_clean, h_noisy], 1), torch.cat([c_clean, c_noisy], 1)
        cos, sin = self.rope(length, noisy.device)
        rope = (torch.cat([cos, cos]), torch.cat([sin, sin]))
        mask = two_stream_mask(length, self.config.block_size, noisy.device)
        for layer in self.layers:
            h, _ = layer(h, c, rope, mask)
        return self._head(h[:, length:], c[:, length:])

    def block_velocity(self, noisy_block: torch.Tensor, t: torch.Tensor, cache: BlockKVCache | None) -> torch.Tensor:
        """Inference: velocity of the block after the cached history. noisy_block (B, S, d), t (B,)."""
        start = 0 if cache is None else cache.length
        h, c = self._embed(noisy_block, t[:, None].expand(-1, noisy_block.shape[1]), 1)
        rope = self.rope(noisy_block.shape[1], noisy_block.device, offset=start)
        for i, layer in enumerate(self.layers):
            h, _ = layer(h, c, rope, past=None if cache is None else cache.layers[i])
        return self._head(h, c)

    @torch.no_grad()
    def commit(self, clean_block: torch.Tensor, cache: BlockKVCache) -> None:
        """Run a finished (or prompt) block through the clean stream at t = 0 and cache its keys/values."""
        start = cache.length
        h, c = self._embed(clean_block, torch.zeros(clean_block.shape[:2], device=clean_block.device), 0)
        rope = self.rope(clean_block.shape[1], clean_block.device, offset=start)
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, c, rope, past=cache.layers[i])
            cache.append(i, kv)

    @torch.no_grad()
    def commit_blocks(self, clean: torch.Tensor, cache: BlockKVCache) -> None:
        """Commit a clean sequence (e.g. the encoded prompt) block by block, as training sees it."""
        size = self.config.block_size
        for start in range(0, clean.shape[1], size):
            self.commit(clean[:, start:start + size], cache)


@torch.no_grad()
def sample_blocks(model: BlockCausalDiT, prefix: torch.Tensor | None, noise: torch.Tensor, steps: int,
                  cfg_scale: float = 1.0, use_cache: bool = True, first_block: str = "repaint",
                  on_commit: Callable[[torch.Tensor], None] | None = None,
                  generator: torch.Generator | None = None,
                  on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Block-by-block generation after the clean ``prefix`` latents (B, P, d) or None.

    Blocks stay aligned to position 0 as in training. When P is not a multiple of the block size, the
    prompt's last r latents lie inside the first generated block: ``first_block="repaint"`` (clean-condition
    repaint) keeps them on the path of the clean prompt latents, t z_prompt + (1 - t) noise, at every step and
    exactly clean at the end; ``"partial"`` commits the partial block as history and starts the response at a
    block boundary that is shifted off the training grid (the paper's alternative; padding the prompt to a
    block multiple happens before encoding, see ``dlm.ColaDLM``). Each block of ``noise``
    (B, N, d) is integrated with ``steps`` Euler steps from t = 0 (noise) to 1 (data), then committed as clean
    history. CFG's unconditional branch sees the current block only (history dropped, positions from 0).
    ``use_cache=False`` recomputes the history every step (the reference the KV cache must match). The state
    is accumulated in float64. ``on_commit`` receives each block's new latents as it is committed (a
    streaming decoder's input); ``on_step(i, latents)`` receives the current block's new latents after its
    i-th Euler step (the denoising-progression view); ``generator`` draws the repaint noise. Returns the N
    generated latents that follow the prefix."""
    require(first_block in ("repaint", "partial"), "dlm.sampler.first_block", "'repaint' or 'partial'", first_block)
    size = model.config.block_size
    history = prefix if prefix is not None else noise[:, :0]
    known = history[:, :0]
    if first_block == "repaint" and history.shape[1] % size:
        cut = history.shape[1] - history.shape[1] % size
        history, known = history[:, :cut], history[:, cut:]
    cache = None
    if use_cache:
        cache = BlockKVCache(len(model.layers))
        if history.shape[1]:
            model.commit_blocks(history, cache)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    # the known prompt tail rides along in front of the first block's noise
    work = torch.cat([known, noise], 1)
    known_noise = known  # the repainted prompt tail's own noise, from the caller's generator
    if known.shape[1]:
        device = generator.device if generator is not None else known.device
        known_noise = torch.randn(known.shape, generator=generator, device=device, dtype=known.dtype).to(known.device)
    out = []
    for start in range(0, work.shape[1], size):
        x = work[:, start:start + size].double()
        r = known.shape[1] if start == 0 else 0
        if r:
            x[:, :r] = known_noise.double()
        for i in range(steps):
            t = torch.full((x.shape[0],), float(grid[i]), device=x.device)
            if r:  # repaint: the prompt positions follow the clean prompt's path
                x[:, :r] = float(grid[i]) * known.double() + (1 - float(grid[i])) * known_noise.double()
            current = x.to(noise.dtype)
            if use_cache:
                v = model.block_velocity(current, t, cache)
            else:
                v = _uncached_velocity(model, history, current, t)
            if cfg_scale != 1.0 and history.shape[1] + r:
                uncond = model.block_velocity(current, t, None)
                v = uncond + cfg_scale * (v - uncond)
            x = x + float(grid[i + 1] - grid[i]) * v.double()
            if on_step is not None:
                on_step(i + 1, x[:, r:].to(noise.dtype))
        if r:
            x[:, :r] = known.double()
        block = x.to(noise.dtype)
        out.append(block[:, r:])
        if on_commit is not None:
            on_commit(block[:, r:])
        history = torch.cat([history, block], 1)
        if use_cache:
            model.commit(block, cache)
    return torch.cat(out, 1) if out else noise[:, :0]


def _uncached_velocity(model: BlockCausalDiT, history: torch.Tensor, current: torch.Tensor, t: torch.Tensor):
    """The training-time two-stream forward over [history ; current]; the current block's velocity."""
    size = model.config.block_size
    clean = torch.cat([history, current], 1)  # the current block's clean slot is invisible to its queries
    noisy = torch.cat([torch.zeros_like(history), current], 1)
    n_blocks = -(-clean.shape[1] // size)
    t_blocks = t[:, None].expand(-1, n_blocks).contiguous()
    return model(clean, noisy, t_blocks)[:, history.shape[1]:]


def block_flow_matching_loss(model: BlockCausalDiT, latents: torch.Tensor, schedule,
                             generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-block conditional flow matching: every block draws its own t from ``schedule`` (a
    ``flow.TimestepSchedule``; logit-normal loc/scale = the paper's "timestep shift"), is interpolated
    between noise and data, and its velocity is predicted from [stop-gradient clean history ; noisy block].
    The gradient still reaches ``latents`` through the noisy block and the target (joint VAE training).
    ``mask`` (B, T) marks the latents of real tokens: padding latents count in no loss."""
    b, length, _ = latents.shape
    n_blocks = -(-length // model.config.block_size)
    blocks = torch.arange(length, device=latents.device) // model.config.block_size
    t_blocks = schedule.sample(b * n_blocks, device=latents.device, generator=generator).view(b, n_blocks)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = t_blocks[:, blocks].unsqueeze(-1).to(latents.dtype)
    noisy = t * latents + (1 - t) * noise
    velocity = model(latents.detach(), noisy, t_blocks)
    squared = (velocity.float() - (latents - noise).float()).pow(2).mean(-1)
    return masked_mean(squared, mask)
