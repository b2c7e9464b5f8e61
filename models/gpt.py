"""The matched autoregressive baseline: a GPT-style decoder-only Transformer over token ids.

Pre-LN blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual), a final
LayerNorm and an output head tied to the token embedding; positions are rotary (no parameters, as in the
DiTs it is matched against) or learned. Decoding keeps every layer's keys/values in a preallocated
``KVCache``, so each new token costs one forward over that token only; ``use_cache=False`` recomputes
the whole prefix every step (the reference the cache must match).

``matched_gpt_config`` sizes a GPT to a parameter budget (e.g. a diffusion model's DiT). Counting rule
(``gpt_param_count``, equal to ``count_params(GPT(config))``): every trainable parameter once -- the token
embedding (counted once when tied to the output head; an untied head counts again), learned position
embeddings when used, all blocks, the final LayerNorm.
"""
from __future__ import annotations

import dataclasses
from typing import Literal
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, check_fields, require, require_positive
from .layers import MLP, RotaryEmbedding, apply_rotary

MATCH_TOLERANCE = 0.05   # matched_gpt_config: |count / target - 1| allowed
PREFERRED_ASPECT = 32    # hidden_dim / depth preferred when both are free (GPT-2 small: 64, Pythia-14M: 21)


@dataclass
class GPTConfig:
    vocab_size: int = 49152
    max_seq_len: int = 64          # longest sequence (prompt + generated - 1) the model reads
    hidden_dim: int = 256
    depth: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    positions: Literal["rotary", "learned"] = "rotary"  # rotary: parameter-free, like the DiTs
    tie_embeddings: bool = True
    temperature: float = 1.0       # sampling: 0 = greedy
    top_p: float = 1.0             # sampling: nucleus mass kept (1 = full distribution)

    def __post_init__(self):
        require_positive("gpt", vocab_size=self.vocab_size, max_seq_len=self.max_seq_len,
                         hidden_dim=self.hidden_dim, depth=self.depth, n_heads=self.n_heads, mlp_ratio=self.mlp_ratio)
        check_fields(self, "gpt")
        even = 2 if self.positions == "rotary" else 1  # rotary rotates pairs of channels
        require(self.hidden_dim % (even * self.n_heads) == 0, "gpt.hidden_dim",
                f"a multiple of {'2*' if even == 2 else ''}n_heads ({even * self.n_heads})", self.hidden_dim)
        require(0 <= self.dropout < 1, "gpt.dropout", "in [0, 1)", self.dropout)
        require(self.temperature >= 0, "gpt.temperature", ">= 0 (0 = greedy)", self.temperature)
        require(0 < self.top_p <= 1, "gpt.top_p", "in (0, 1]", self.top_p)


class KVCache:
    """Keys/values of every layer for the tokens read so far, preallocated for ``max_len`` positions."""

    def __init__(self, depth: int, batch: int, n_heads: int, head_dim: int, max_len: int, device, dtype):
        shape = (depth, batch, n_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled (advanced once per forward, after every layer stored its part)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's (B, H, t, D) keys/values after the cached ones; return all of them."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, dim // n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.store(layer, k, v)
        p = self.dropout if self.training else 0.0
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=t > 1)
        elif t == 1:  # one new token sees every cached one: no mask
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # a chunk after a cached prefix: query i (position past + i) sees keys <= past + i
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.resid_drop(self.proj(out.transpose(1, 2).reshape(b, t, c)))


class GPTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x, rope=None, cache=None, layer: int = 0):
        x = x + self.attn(self.norm1(x), rope, cache, layer)
        return x + self.mlp(self.norm2(x))


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE of predicting token t+1 from positions <= t, over targets inside ``mask`` (B, T) bool (the
    valid, prefix-contiguous tokens: a window's document tokens and its closing EOS). Returns (loss, accuracy)."""
    pred, target = logits[:, :-1], tokens[:, 1:]
    valid = torch.ones_like(target, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    ce = F.cross_entropy(pred.float().reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    n = valid.sum().clamp_min(1)
    loss = (ce.view_as(target) * valid).sum() / n
    accuracy = ((pred.argmax(-1) == target) & valid).sum() / n
    return loss, accuracy.detach()


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.hidden_dim)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.hidden_dim) if c.positions == "learned" else None
        self.rope = RotaryEmbedding(c.hidden_dim // c.n_heads) if c.positions == "rotary" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(GPTBlock(c.hidden_dim, c.n_heads, c.mlp_ratio, c.dropout) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.hidden_dim)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled down with depth
            for proj in (block.attn.proj, block.mlp.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * c.depth))
        if c.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        c, p = self.config, self.tok_emb.weight
        return KVCache(c.depth, batch, c.n_heads, c.hidden_dim // c.n_heads, max_len or c.max_seq_len, p.device,
                       p.dtype)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, vocab) next-token logits. With ``cache``, ``tokens`` continue the cached
        positions and their keys/values are added to it."""
        b, t = tokens.shape
        start = 0 if cache is None else cache.length
        limit = self.config.max_seq_len if cache is None else min(self.config.max_seq_len, cache.capacity)
        if start + t > limit:
            raise ValueError(f"GPT: {start + t} positions exceed the limit of {limit} (gpt.max_seq_len / cache)")
        h = self.tok_emb(tokens)
        if self.pos_emb is not None:
            h = h + self.pos_emb(torch.arange(start, start + t, device=tokens.device))
        rope = None if self.rope is None else self.rope(t, tokens.device, offset=start)
        h = self.drop(h)
        for i, block in enumerate(self.blocks):
            h = block(h, rope, cache, i)
        if cache is not None:
            cache.length += t
        return self.head(self.norm(h))

    def loss(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token cross-entropy over the valid positions (see ``next_token_loss``)."""
        return next_token_loss(self(tokens), tokens, mask)[0]

    def _sample(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, V) logits -> (B,) ids: greedy at temperature 0, else ancestral with temperature and top-p.
        Exactly one multinomial draw per step, so cached and uncached decoding consume the same randomness."""
        c = self.config
        if c.temperature == 0:
            return logits.argmax(-1)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        probs = torch.softmax(logits / c.temperature, dim=-1)
        if c.top_p < 1:  # keep the smallest head of the sorted distribution whose mass reaches top_p
            sorted_p, order = probs.sort(-1, descending=True)
            sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p >= c.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new: int, generator: torch.Generator | None = None,
                 use_cache: bool = True, min_new_tokens: int = 0, eos_id: int | None = None) -> torch.Tensor:
        """Continue ``prompts`` (B, P >= 1) by ``max_new`` tokens, one at a time; returns (B, max_new).
        ``eos_id`` cannot be sampled among the first ``min_new_tokens`` new tokens (HF's ``min_new_tokens``).
        Runs in eval mode (no dropout) and restores the previous mode."""
        b, p = prompts.shape
        if p < 1:
            raise ValueError("GPT.generate: prompts need at least one token (the model has no BOS)")
        out = prompts.new_zeros(b, 0)
        if max_new <= 0:
            return out
        was_training = self.training

        def sample(logits: torch.Tensor, i: int) -> torch.Tensor:
            if eos_id is not None and i < min_new_tokens:
                logits = logits.clone()
                logits[:, eos_id] = float("-inf")
            return self._sample(logits, generator)

        self.eval()
        try:
            if use_cache:
                cache = self.new_cache(b, p + max_new - 1)  # the last sampled token is never read
                logits = self(prompts, cache)[:, -1]
                for i in range(max_new):
                    token = sample(logits, i)
                    out = torch.cat([out, token[:, None]], 1)
                    if i + 1 < max_new:
                        logits = self(token[:, None], cache)[:, -1]
            else:
                sequence = prompts
                for i in range(max_new):
                    token = sample(self(sequence)[:, -1], i)
                    out = torch.cat([out, token[:, None]], 1)
                    sequence = torch.cat([sequence, token[:, None]], 1)
        finally:
            self.train(was_training)
        return out


def count_params(model: nn.Module) -> int:
    """Trainable parameters, each counted once (tied weights are one parameter)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


COUNTS = ("total", "non_embedding")


def gpt_param_count(config: GPTConfig, count: str = "total") -> int:
    """``count_params(GPT(config))`` in closed form (no model is built; see the module docstring's rule).
    ``count="non_embedding"`` leaves out the token embedding, an untied head and learned positions: the
    Transformer stack alone, the like-for-like match for a DiT, which has no token table."""
    require(count in COUNTS, "count", f"one of {COUNTS}", count)
    d, v = config.hidden_dim, config.vocab_size
    h = int(d * config.mlp_ratio)
    per_layer = 4 * d * d + 2 * d * h + 9 * d + h  # 2 LayerNorms, qkv + proj, fc1 + fc2 (with biases)
    base = 2 * d  # final LayerNorm
    if count == "total":
        base += v * d * (1 if config.tie_embeddings else 2)  # embedding (+ untied head)
        if config.positions == "learned":
            base += config.max_seq_len * d
    return base + config.depth * per_layer


def _default_heads(width: int) -> int:
    return max(2, width // 64)


def matched_gpt_config(target_params: int, vocab_size: int, seq_len: int, *, tolerance: float = MATCH_TOLERANCE,
                       count: str = "total", **fixed) -> GPTConfig:
    """A GPTConfig whose parameter count (``gpt_param_count(config, count)``: embeddings included or not) is
    within ``tolerance`` of ``target_params``. ``fixed`` pins any other GPTConfig fields (e.g. ``depth=4, n_heads=4``); the
    search covers the free ones of ``hidden_dim`` and ``depth``:

    * widths: multiples of 2 * n_heads (n_heads fixed) or of 16 whose default head count max(2, width // 64)
      splits them into even head dims; depths: the two nearest the exact solution for each width;
    * choice: with both free, the shape whose hidden_dim / depth is nearest ``PREFERRED_ASPECT`` (ties: the
      closer count); with one of them fixed, the closest count.

    Raises ConfigError (a ValueError) naming the target when no shape is within tolerance."""
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(fixed) - (names - {"vocab_size", "max_seq_len"}))
    if unknown:
        raise ConfigError(f"matched_gpt_config: {unknown[0]!r} is not a GPTConfig field that can be fixed "
                          "(vocab_size and max_seq_len are arguments)")
    if target_params <= 0:
        raise ConfigError(f"matched_gpt_config: target_params must be > 0, got {target_params}")
    hi = target_params * (1 + tolerance)
    heads_fixed = fixed.get("n_heads")
    rotary = fixed.get("positions", "rotary") == "rotary"

    def make(width: int, depth: int) -> GPTConfig:
        return GPTConfig(**{**fixed, "vocab_size": vocab_size, "max_seq_len": seq_len, "hidden_dim": width,
                            "depth": depth, "n_heads": heads_fixed or _default_heads(width)})

    def widths():
        if "hidden_dim" in fixed:
            yield fixed["hidden_dim"]
            return
        step = (2 if rotary else 1) * heads_fixed if heads_fixed else 16
        width = step
        while True:
            heads = heads_fixed or _default_heads(width)
            if width % ((2 if rotary else 1) * heads) == 0:
                yield width
            width += step

    candidates, closest = [], None
    for width in widths():
        shallowest = make(width, fixed.get("depth", 1))
        smallest = gpt_param_count(shallowest, count)
        if closest is None:
            closest = (smallest / target_params - 1, shallowest)
        if smallest > hi and "hidden_dim" not in fixed:
            break  # counts grow with width: every wider shape overshoots too
        if "depth" in fixed:
            depths = [fixed["depth"]]
        else:
            per_layer = gpt_param_count(make(width, 2), count) - gpt_param_count(make(width, 1), count)
            exact = (target_params - (smallest - per_layer)) / per_layer
            depths = sorted({max(1, math.floor(exact)), max(1, math.ceil(exact))})
        for depth in depths:
            config = make(width, depth)
            error = gpt_param_count(config, count) / target_params - 1
            if closest is None or abs(error) < abs(closest[0]):
                closest = (error, config)
            if abs(error) <= tolerance:
                candidates.append((error, config))
        if "hidden_dim" in fixed:
            break
    if not candidates:
        near = "" if closest is None else (f"; the closest is {gpt_param_count(closest[1], count):,} "
                                           f"(hidden_dim {closest[1].hidden_dim}, depth {closest[1].depth})")
        raise ConfigError(f"matched_gpt_config: no GPT within {tolerance:.0%} of target_params={target_params:,} "
                          f"({count} count, vocab_size {vocab_size}, seq_len {seq_len}, fixed {fixed}){near}"
                          + ("; the token embedding alone has vocab_size x hidden_dim parameters"
                             if count == "total" else ""))
    if "depth" in fixed or "hidden_dim" in fixed:
        return min(candidates, key=lambda ec: abs(ec[0]))[1]
    return min(candidates, key=lambda ec: (abs(math.log(ec[1].hidden_dim / ec[1].depth / PREFERRED_ASPECT)),
                                           abs(ec[0])))[1]
