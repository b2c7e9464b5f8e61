"""Training FLOPs per token for the model FLOPs utilisation (MFU) of a stage: 6N for the parameter matmuls plus
the attention score and value products, which 6N leaves out and which grow with the sequence (PaLM, App. B).

Per token, a forward pass costs 2 FLOPs per parameter (one multiply-add) and the backward pass twice that: 6N.
Each attention call with queries of length Tq over keys of length Tk in width d (heads x head dim) adds, per
query, Q.K^T and P.V: 2 x (2 Tk d) = 4 Tk d forward and twice that backward. For L self-attention layers over
T-token windows that is ``12 L d T`` per token (fwd + bwd), the term ``transformer_attention_flops`` writes out.

Conventions (as PaLM's and nanoGPT's MFU): N is every trainable parameter (embedding tables included); the full
Tq x Tk score matrix is counted whatever the mask (a causal or block-causal kernel may skip work: MFU is then
understated, never overstated); recomputation is not counted. Frozen modules run forward only: their attention
counts once (4 Tk d per query) in ``AttentionCounter``, their matmuls not at all (N holds trainable weights only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def transformer_attention_flops(layers: int, width: int, context: int) -> int:
    """Attention FLOPs per token of one training step (forward + backward) of ``layers`` self-attention layers of
    ``width`` over ``context`` keys: 12 * layers * width * context."""
    return 12 * layers * width * context


def training_flops_per_token(num_params: int, attention_per_token: float = 0.0) -> float:
    """6N + the attention FLOPs per token (``transformer_attention_flops`` or ``AttentionCounter.per_token``)."""
    return 6 * num_params + attention_per_token


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None) -> float | None:
    """Achieved FLOP/s over the device's peak; None without a known peak (CPU, an unlisted GPU)."""
    return None if not peak_flops else flops_per_token * tokens_per_s / peak_flops


class AttentionCounter(TorchFunctionMode):
    """Counts the attention FLOPs of everything run inside it, from the shapes of each
    ``F.scaled_dot_product_attention`` call (every attention of the models goes through it): 2 Tq Tk (Dqk + Dv)
    per batch row and head forward, x3 when any input needs a gradient (forward + backward), x1 otherwise.

        with AttentionCounter() as counter:
            loss = model(batch); loss.backward()
        counter.flops"""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (kwargs[name] if name in kwargs else args[i] for i, name in enumerate(("query", "key", "value")))
            rows = q.shape[:-2].numel()  # batch x heads
            forward = 2 * rows * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
            trained = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
            self.flops += forward * (3 if trained else 1)
        return func(*args, **kwargs)

    def per_token(self, tokens: int) -> float:
        return self.flops / max(tokens, 1)
