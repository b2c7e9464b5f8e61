"""Cola DLM's block-causal DiT prior: flow matching over blocks of latents, bidirectional inside a block,
causal across blocks, each noisy block conditioned in-context on the *clean* history.

Training uses the two-stream layout (one forward for every block at once):

    sequence = [clean latents z_0 (T) ; noisy latents z_t (T)],  both at positions 0..T-1 (RoPE)
    clean query in block b  -> clean keys of blocks <= b           (the history encoder, block-causal)
    noisy query in block b  -> clean keys of blocks <  b  +  noisy keys of block b

so a block's prediction sees exactly its own noisy block and the clean blocks before it. Every block has its
own timestep (adaLN per token). Clean latents carry ``CLEAN_T`` (t = 1: data in this codebase's convention; the
released code tags them 0 because its t = 0 is data). The history is stop-gradiented (``sg(z0^(<b))`` of the
paper's visible set).

Random-length training (paper §5.2, [COMM]): with probability ``clean_prefix_prob`` a block's first L latents
(L uniform in 1 .. len-1) stay clean in the noisy stream, tagged as data and left out of the loss. It is what
makes the first generated block consistent when a prompt ends inside it (``FIRST_BLOCK_MODES``).

Inference commits blocks one at a time: after a block is denoised its clean latents run through the
network once (t = 1) and every layer's keys/values join a KV cache, so each denoising step of the next
block costs one forward over that block only (``BlockKVCache``). Convention of ``flow.py``: t = 0 noise,
t = 1 data, velocity = data - noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import require, require_positive
from .dit import TimestepEmbedder
from .layers import MLP, RotaryEmbedding, apply_rotary, masked_mean


CLEAN_T = 1.0  # the timestep tag of clean latents (history, a known prompt tail): data, as in flow.py

# How the first generated block treats a prompt that ends inside it (paper §5.2, Table 5):
#   clean            the known prompt latents stay exactly clean all along the trajectory, tagged as data
#                    (the paper's clean-condition repaint, its best strategy, and the released code's)
#   partial_repaint  the known latents are replaced by timestep-matched noisy copies (fresh noise every time) for
#                    the first ``guided_fraction`` of the steps, each such step repeated ``repaint_repeats`` times
#                    (denoise, re-noise, denoise again), then left to the model
#   left_pad         the caller pads the prompt on the left to a block multiple: no known latents in a new block
#   right_pad        the caller pads the prompt on the right to a block multiple: the response starts after padding
FIRST_BLOCK_MODES = ("clean", "partial_repaint", "left_pad", "right_pad")
PADDED_MODES = ("left_pad", "right_pad")


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


def noisy_stream_times(t_blocks: torch.Tensor, clean_prefix: torch.Tensor | None, length: int,
                       block_size: int) -> torch.Tensor:
    """(B, T) per-token times of the noisy stream: each block's t, ``CLEAN_T`` on its clean prefix."""
    blocks = block_index(length, block_size, t_blocks.device)
    t = t_blocks[:, blocks]
    if clean_prefix is None:
        return t
    offset = torch.arange(length, device=t_blocks.device) % block_size
    return torch.where(offset[None] < clean_prefix[:, blocks], torch.full_like(t, CLEAN_T), t)


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

    def forward(self, clean: torch.Tensor, noisy: torch.Tensor, t_blocks: torch.Tensor,
                clean_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Training: clean/noisy (B, T, d) latents, t_blocks (B, ceil(T / block_size)) the noisy blocks' times,
        ``clean_prefix`` (B, ceil(T / block_size)) how many leading latents of each noisy block are clean
        (tagged ``CLEAN_T``). Returns the predicted velocity of every noisy block (B, T, d)."""
        b, length, _ = noisy.shape
        h_clean, c_clean = self._embed(clean, torch.full((b, length), CLEAN_T, device=noisy.device), 0)
        h_noisy, c_noisy = self._embed(noisy, noisy_stream_times(t_blocks, clean_prefix, length,
                                                                 self.config.block_size), 1)
        h, c = torch.cat([h_clean, h_noisy], 1), torch.cat([c_clean, c_noisy], 1)
        cos, sin = self.rope(length, noisy.device)
        rope = (torch.cat([cos, cos]), torch.cat([sin, sin]))
        mask = two_stream_mask(length, self.config.block_size, noisy.device)
        for layer in self.layers:
            h, _ = layer(h, c, rope, mask)
        return self._head(h[:, length:], c[:, length:])

    def block_velocity(self, noisy_block: torch.Tensor, t: torch.Tensor, cache: BlockKVCache | None,
                       known: int = 0) -> torch.Tensor:
        """Inference: velocity of the block after the cached history. noisy_block (B, S, d), t (B,); its first
        ``known`` latents are clean (tagged ``CLEAN_T``, as random-length training shows them)."""
        start = 0 if cache is None else cache.length
        t_tokens = t[:, None].expand(-1, noisy_block.shape[1]).clone()
        t_tokens[:, :known] = CLEAN_T
        h, c = self._embed(noisy_block, t_tokens, 1)
        rope = self.rope(noisy_block.shape[1], noisy_block.device, offset=start)
        for i, layer in enumerate(self.layers):
            h, _ = layer(h, c, rope, past=None if cache is None else cache.layers[i])
        return self._head(h, c)

    @torch.no_grad()
    def commit(self, clean_block: torch.Tensor, cache: BlockKVCache) -> None:
        """Run a finished (or prompt) block through the clean stream (t = ``CLEAN_T``) and cache its keys/values."""
        start = cache.length
        h, c = self._embed(clean_block, torch.full(clean_block.shape[:2], CLEAN_T, device=clean_block.device), 0)
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


def check_first_block(mode: str, repeats: int = 1, guided_fraction: float = 1.0, field: str = "sampler") -> None:
    require(mode in FIRST_BLOCK_MODES, f"{field}.first_block", f"one of {list(FIRST_BLOCK_MODES)}", mode)
    require(isinstance(repeats, int) and repeats >= 1, f"{field}.repaint_repeats", "an integer >= 1", repeats)
    require(0 < guided_fraction <= 1, f"{field}.repaint_fraction", "in (0, 1]", guided_fraction)


def guided_steps(steps: int, guided_fraction: float) -> int:
    """Partial repaint guides the first ceil(fraction x steps) steps (at least one)."""
    return max(1, math.ceil(guided_fraction * steps - 1e-9))


def repaint_model_calls(steps: int, n_blocks: int, repeats: int, guided_fraction: float, cfg: bool) -> int:
    """Network calls of partial repaint: every block's steps, plus r - 1 repeats of each guided step of the first
    block; twice that with CFG's unconditional branch."""
    calls = steps * n_blocks + (repeats - 1) * guided_steps(steps, guided_fraction)
    return calls * (2 if cfg else 1)


@torch.no_grad()
def sample_blocks(model: BlockCausalDiT, prefix: torch.Tensor | None, noise: torch.Tensor, steps: int,
                  cfg_scale: float = 1.0, use_cache: bool = True, first_block: str = "clean",
                  repaint_repeats: int = 1, repaint_fraction: float = 1.0,
                  on_commit: Callable[[torch.Tensor], None] | None = None,
                  generator: torch.Generator | None = None,
                  on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Block-by-block generation after the clean ``prefix`` latents (B, P, d) or None.

    Blocks stay aligned to position 0 as in training. When P is not a multiple of the block size, the prompt's
    last k latents lie inside the first generated block and ``first_block`` says how they condition it (see
    ``FIRST_BLOCK_MODES``; the padding modes expect the caller to have padded the prompt to a block multiple).
    Each block of ``noise`` (B, N, d) is integrated with ``steps`` Euler steps from t = 0 (noise) to 1 (data),
    then committed as clean history. CFG's unconditional branch sees the current block only (history dropped,
    positions from 0; a clean known tail stays, as training shows it). ``use_cache=False`` recomputes the
    history every step (the reference the KV cache must match). The state is accumulated in float64.
    ``on_commit`` receives each block's new latents as it is committed (a streaming decoder's input);
    ``on_step(i, latents)`` receives the current block's new latents after its i-th step (the
    denoising-progression view); ``generator`` draws partial repaint's noise. Returns the N generated latents
    that follow the prefix."""
    check_first_block(first_block, repaint_repeats, repaint_fraction)
    size = model.config.block_size
    history = prefix if prefix is not None else noise[:, :0]
    require(first_block not in PADDED_MODES or history.shape[1] % size == 0, "prompt latents",
            f"a multiple of the block size ({size}) under sampler.first_block={first_block} (pad the prompt first)",
            history.shape[1])
    cut = history.shape[1] - history.shape[1] % size
    history, known = history[:, :cut], history[:, cut:]
    cache = None
    if use_cache:
        cache = BlockKVCache(len(model.layers))
        if history.shape[1]:
            model.commit_blocks(history, cache)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    guided = guided_steps(steps, repaint_fraction)
    work = torch.cat([known, noise], 1)  # the known prompt tail rides along in front of the first block's noise

    def randn(shape):
        device = generator.device if generator is not None else noise.device
        return torch.randn(shape, generator=generator, device=device, dtype=noise.dtype).to(noise.device).double()

    def velocity(x, t, clean_known):
        current = x.to(noise.dtype)
        if use_cache:
            v = model.block_velocity(current, t, cache, clean_known)
        else:
            v = _uncached_velocity(model, history, current, t, clean_known)
        if cfg_scale != 1.0 and history.shape[1] + clean_known:
            uncond = model.block_velocity(current, t, None, clean_known)
            v = uncond + cfg_scale * (v - uncond)
        return v.double()

    out = []
    for start in range(0, work.shape[1], size):
        x = work[:, start:start + size].double()
        k = known.shape[1] if start == 0 else 0
        clean_known = k if first_block == "clean" else 0
        if k and first_block == "partial_repaint":
            x[:, :k] = randn(x[:, :k].shape)  # the known positions start from noise like the rest of the block
        for i in range(steps):
            t_now, t_next = float(grid[i]), float(grid[i + 1])
            t = torch.full((x.shape[0],), t_now, device=x.device)
            repaint = k and first_block == "partial_repaint" and i < guided
            for repeat in range(repaint_repeats if repaint else 1):
                if repaint:  # the prompt positions: the clean prompt latents noised to the current time
                    x[:, :k] = t_now * known.double() + (1 - t_now) * randn(x[:, :k].shape)
                x = x + (t_next - t_now) * velocity(x, t, clean_known)
                if clean_known:
                    x[:, :k] = known.double()  # a fixed boundary condition: exactly clean at every step
                if repeat < repaint_repeats - 1:  # back from t_next to t_now along the path's forward kernel
                    scale = t_now / t_next
                    x = scale * x + math.sqrt(max(0.0, (1 - t_now) ** 2 - (scale * (1 - t_next)) ** 2)) * randn(x.shape)
            if on_step is not None:
                on_step(i + 1, x[:, k:].to(noise.dtype))
        if k:
            x[:, :k] = known.double()  # prompt positions are the prompt's, whatever the mode did with them
        block = x.to(noise.dtype)
        out.append(block[:, k:])
        if on_commit is not None:
            on_commit(block[:, k:])
        history = torch.cat([history, block], 1)
        if use_cache:
            model.commit(block, cache)
    return torch.cat(out, 1) if out else noise[:, :0]


def _uncached_velocity(model: BlockCausalDiT, history: torch.Tensor, current: torch.Tensor, t: torch.Tensor,
                       clean_known: int = 0):
    """The training-time two-stream forward over [history ; current]; the current block's velocity."""
    size = model.config.block_size
    clean = torch.cat([history, current], 1)  # the current block's clean slot is invisible to its queries
    noisy = torch.cat([torch.zeros_like(history), current], 1)
    n_blocks = -(-clean.shape[1] // size)
    t_blocks = t[:, None].expand(-1, n_blocks).contiguous()
    clean_prefix = torch.zeros(t_blocks.shape, dtype=torch.long, device=t.device)
    clean_prefix[:, -1] = clean_known
    return model(clean, noisy, t_blocks, clean_prefix)[:, history.shape[1]:]


def block_flow_matching_loss(model: BlockCausalDiT, latents: torch.Tensor, schedule,
                             generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                             clean_prefix_prob: float = 0.0) -> torch.Tensor:
    """Per-block conditional flow matching: every block draws its own t from ``schedule`` (a
    ``flow.TimestepSchedule``; logit-normal loc/scale = the paper's "timestep shift"), is interpolated
    between noise and data, and its velocity is predicted from [stop-gradient clean history ; noisy block].
    The gradient still reaches ``latents`` through the noisy block and the target (joint VAE training).
    ``mask`` (B, T) marks the latents of real tokens: padding latents count in no loss. With probability
    ``clean_prefix_prob`` a block keeps a random-length clean prefix (``random_clean_prefix``), out of the loss."""
    b, length, _ = latents.shape
    size = model.config.block_size
    n_blocks = -(-length // size)
    blocks = block_index(length, size, latents.device)
    t_blocks = schedule.sample(b * n_blocks, device=latents.device, generator=generator).view(b, n_blocks)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = t_blocks[:, blocks].unsqueeze(-1).to(latents.dtype)
    noisy = t * latents + (1 - t) * noise
    clean_prefix, known = None, None
    if clean_prefix_prob > 0:
        clean_prefix = random_clean_prefix(b, length, size, clean_prefix_prob, generator, latents.device)
        known = (torch.arange(length, device=latents.device) % size)[None] < clean_prefix[:, blocks]
        noisy = torch.where(known.unsqueeze(-1), latents.detach(), noisy)  # a clean prefix is history: stop-gradient
        mask = ~known if mask is None else mask & ~known
    velocity = model(latents.detach(), noisy, t_blocks, clean_prefix)
    squared = (velocity.float() - (latents - noise).float()).pow(2).mean(-1)
    return masked_mean(squared, mask)


def random_clean_prefix(batch: int, length: int, block_size: int, prob: float,
                        generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, n_blocks) lengths of each block's clean prefix: 0, or with probability ``prob`` uniform in
    1 .. len - 1 (a block of one latent has no partial prefix)."""
    n_blocks = -(-length // block_size)
    lengths = torch.tensor([min(block_size, length - i * block_size) for i in range(n_blocks)], device=device)
    chosen = torch.rand(batch, n_blocks, generator=generator, device=device) < prob
    draw = torch.rand(batch, n_blocks, generator=generator, device=device)
    prefix = 1 + (draw * (lengths - 1).clamp(min=0)).long()   # uniform in 1 .. len - 1
    return torch.where(chosen & (lengths > 1), prefix, torch.zeros_like(prefix))
