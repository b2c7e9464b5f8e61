"""The scoring harness every method family shares: given generations (token ids per sampling seed) and
held-out references, compute the protocol's metrics the same way for all of them.

Per sampling seed: Gen-PPL (``metrics.GenPPLScorer``, micro-averaged), unigram entropy, n-gram diversity,
mean generated length and, for paired tasks (continuation), ROUGE-1/2/L and BERTScore against each
generation's full reference. Across seeds: the mean and ``<metric>_std``. MAUVE: references length-matched
to each seed's generations, featurized by the protocol's LM, scored for every (sampling seed, k-means seed)
pair; reported as ``mauve`` (mean), ``mauve_std`` (over all pairs), ``mauve_kmeans_std`` (mean over
sampling seeds of the std over k-means seeds) and ``mauve_sampling_std`` (std over sampling seeds of the
mean over k-means seeds). The human ceiling scores a second, disjoint reference set as if it were a model.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from latentlm.models.checkpoint import atomic_write_text

from . import assets, metrics
from .protocol import ContinuationEvalConfig, ScoringConfig


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def length_match(references: list[list[int]], generations: list[list[int]]) -> list[list[int]]:
    """Reference i truncated to the token length of generation i (a shorter reference is kept whole). The
    reference of an empty generation is kept whole too: an empty text has no length to match, and matching
    it would hand a model that emits nothing empty references (a perfect MAUVE). Paired by index."""
    if len(references) != len(generations):
        raise ValueError(f"length_match: {len(references)} references for {len(generations)} generations")
    return [ref[:len(gen)] if gen else ref for ref, gen in zip(references, generations)]


def sampler_precision(dtype: str, device: str | torch.device):
    """The protocol's sampler dtype: bfloat16 autocast, or nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


class Scorers:
    """The protocol's scorer models, loaded once per evaluation on first use."""

    def __init__(self, e: ScoringConfig, device: str = "cpu"):
        self.e, self.device = e, device

    @cached_property
    def featurizer(self) -> metrics.LMFeaturizer:
        return metrics.LMFeaturizer(assets.resolve_model(self.e.mauve_model), max_length=self.e.mauve_max_length,
                                    pooling=self.e.mauve_pooling, device=self.device)

    @cached_property
    def genppl(self) -> metrics.GenPPLScorer:
        return metrics.GenPPLScorer(assets.resolve_model(self.e.genppl_model), max_length=self.e.genppl_max_length,
                                    batch_size=self.e.batch_size, device=self.device)

    def bertscore(self, predictions: list[str], references: list[str]) -> float:
        e = self.e
        return metrics.bertscore(predictions, references, assets.resolve_model(e.bertscore_model),
                                 e.bertscore_num_layers, device=self.device)


def _per_seed(e: ScoringConfig, scorers: Scorers, tokenizer, ids: list[list[int]], references: list[list[int]],
              paired: bool) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    ppl = scorers.genppl(texts)
    row = {"gen_ppl": ppl["gen_ppl"], "entropy": metrics.unigram_entropy(ids),
           "diversity": metrics.ngram_diversity(texts, e.diversity_ns), "gen_tokens": float(np.mean([len(x) for x in ids]))}
    if paired:
        ref_texts = tokenizer.batch_decode(references, skip_special_tokens=True)
        row.update(metrics.rouge(texts, ref_texts))
        row["bertscore"] = scorers.bertscore(texts, ref_texts)
    matched = tokenizer.batch_decode(length_match(references, ids), skip_special_tokens=True)
    return row, scorers.featurizer(texts), scorers.featurizer(matched)


def score(e: ScoringConfig, scorers: Scorers, tokenizer, generations: dict[int, list[list[int]]],
          references: list[list[int]], paired: bool) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Score ``generations`` (sampling seed -> one id list per reference, paired by index) against
    ``references``. Returns the aggregated row and the per-seed metrics (MAUVE per seed included)."""
    per_seed: dict[int, dict[str, float]] = {}
    mauve_grid: list[list[float]] = []
    for seed, ids in generations.items():
        row, gen_features, ref_features = _per_seed(e, scorers, tokenizer, ids, references, paired)
        scores = [metrics.mauve(ref_features, gen_features, seed=k) for k in e.mauve_kmeans_seeds]
        per_seed[seed] = {**row, "mauve": float(np.mean(scores))}
        mauve_grid.append(scores)
    out: dict[str, float] = {}
    for name in next(iter(per_seed.values())):
        if name != "mauve":
            out[name], out[f"{name}_std"] = mean_std([s[name] for s in per_seed.values()])
    grid = np.asarray(mauve_grid)
    out["mauve"], out["mauve_std"] = mean_std(grid.ravel().tolist())
    out["mauve_kmeans_std"] = float(np.mean([mean_std(r.tolist())[1] for r in grid]))
    out["mauve_sampling_std"] = mean_std(grid.mean(axis=1).tolist())[1]
    out.update({"samples": float(len(references)), "seeds": float(len(generations))})
    return out, per_seed


def human_ceiling(e: ScoringConfig, scorers: Scorers, tokenizer, references: list[list[int]],
                  others: list[list[int]], cache_dir: Path | None = None, scoring_hash: str = "") -> dict[str, float]:
    """The human-vs-human row: a disjoint set of held-out texts (``others``) scored as generations against
    ``references`` by the very same rules (one "sampling seed"; paired metrics do not apply).

    With ``cache_dir`` the row is stored under a key of exactly what it depends on (the protocol's
    ``scoring_hash``, which names the scorers and seeds, and both id lists): every trial of a sweep scores the
    same held-out halves, so the first trial computes the row and the others read it."""
    n = min(len(references), len(others))
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps([scoring_hash, references[:n], others[:n]]).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"human-{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
    row, _ = score(e, scorers, tokenizer, {0: others[:n]}, references[:n], paired=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(row, sort_keys=True) + "\n")  # concurrent trials write equal rows
    return row


def is_paired(e: ScoringConfig) -> bool:
    return isinstance(e, ContinuationEvalConfig)
