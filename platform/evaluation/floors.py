"""Must-lose rows: degenerate generators scored by the same harness as every model, so each leaderboard
shows where "no model at all" lands and a metric that ranks one of them high is visibly broken.

Continuation task (each output as long as its reference continuation):

* ``floor:prompt-repeat``: the prompt's last ``span`` tokens repeated;
* ``floor:unigram``: tokens drawn independently from the training-token frequencies (one draw per sampling seed);
* ``floor:top-token``: the most frequent training token repeated;
* ``floor:other-document``: a real continuation of the same length taken from a *different* held-out document
  (fluent text that ignores the prompt: near the human ceiling on MAUVE, at the floor on ROUGE / BERTScore).

Unconditional task (full windows): ``floor:unigram`` and ``floor:top-token``.
The human ceiling (``human-ceiling``) is built by the same ``borrow`` rule from a disjoint set of documents.
"""
from __future__ import annotations

import numpy as np

PROMPT_SPAN = 8  # tokens of the prompt's end that the prompt-repeat floor cycles through


def repeat_tail(prompt: list[int], length: int, span: int = PROMPT_SPAN) -> list[int]:
    tail = prompt[-span:] or [0]
    return (tail * (length // len(tail) + 1))[:length]


def unigram(counts: np.ndarray, length: int, rng: np.random.Generator) -> list[int]:
    return rng.choice(len(counts), size=length, p=counts / counts.sum()).tolist()


def top_token(counts: np.ndarray, length: int) -> list[int]:
    return [int(np.argmax(counts))] * length


def borrow(tails: list[list[int]], start: int, length: int, exclude: int | None = None) -> list[int]:
    """The first ``length`` tokens of the first tail, scanning cyclically from ``start`` and skipping
    ``exclude``, that has at least ``length`` tokens (the longest one, cut, if none does)."""
    order = [(start + k) % len(tails) for k in range(len(tails))]
    candidates = [j for j in order if j != exclude] or order
    chosen = next((j for j in candidates if len(tails[j]) >= length), None)
    if chosen is None:
        chosen = max(candidates, key=lambda j: len(tails[j]))
    return tails[chosen][:length]


def continuation_floors(prompts: list[list[int]], lengths: list[int], tails: list[list[int]],
                        counts: np.ndarray | None, seeds: list[int]) -> dict[str, dict[int, list[list[int]]]]:
    """Floor name -> generations (sampling seed -> one id list per prompt, of that prompt's target length).
    ``tails``: each prompt's own document after the split (the other-document floor borrows from them);
    ``counts``: training-token frequencies over the tokenizer's ids (None: the frequency floors are skipped).
    Deterministic floors use the first sampling seed only (repeating them would only repeat identical rows)."""
    first = seeds[0]
    out = {"floor:prompt-repeat": {first: [repeat_tail(p, n) for p, n in zip(prompts, lengths)]},
           "floor:other-document": {first: [borrow(tails, i + 1, n, exclude=i) for i, n in enumerate(lengths)]}}
    if counts is not None and counts.sum() > 0:
        out["floor:unigram"] = {seed: [unigram(counts, n, np.random.default_rng([seed, i]))
                                       for i, n in enumerate(lengths)] for seed in seeds}
        out["floor:top-token"] = {first: [top_token(counts, n) for n in lengths]}
    return out


def window_floors(count: int, seq_len: int, counts: np.ndarray | None,
                  seeds: list[int]) -> dict[str, dict[int, list[list[int]]]]:
    """The unconditional task's floors: ``count`` windows of ``seq_len`` tokens each."""
    if counts is None or counts.sum() <= 0:
        return {}
    return {"floor:unigram": {seed: [unigram(counts, seq_len, np.random.default_rng([seed, i])) for i in range(count)]
                              for seed in seeds},
            "floor:top-token": {seeds[0]: [top_token(counts, seq_len) for _ in range(count)]}}
