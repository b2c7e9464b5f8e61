"""The scoring harness every method family shares: given generations (token ids per sampling seed) and
held-out references, compute the protocol's metrics the same way for all of them.

Under protocol v3 a generation has exactly its reference's token length (the task asks each sampler for
that many tokens), and every id is scored: EOS and other special ids are rendered as their text (``render``),
so an early EOS cannot shorten what is scored and no rule lets a shorter output score better.

Per sampling seed: Gen-PPL (``metrics.GenPPLScorer``, micro-averaged), unigram entropy, n-gram diversity,
mean generated length and, for paired tasks (continuation), ROUGE-1/2/L and BERTScore against each
generation's reference. Across seeds: the mean and ``<metric>_std``. MAUVE: generation features against the
(whole) references' features, quantised for every (sampling seed, k-means seed) pair; reported as ``mauve``
(mean), ``mauve_std`` (over all pairs), ``mauve_kmeans_std`` (mean over sampling seeds of the std over
k-means seeds) and ``mauve_sampling_std`` (std over sampling seeds of the mean over k-means seeds).

Every scored row also carries its per-prompt *evidence* (``significance`` documents the format) and, for
each metric it covers, a bootstrap CI ``<metric>_ci_low`` / ``<metric>_ci_high`` (prompts resampled; for
MAUVE also the sampling and k-means seeds, on the cached quantisation). Reference rows (the human ceiling
and the must-lose floors) are scored by the very same code and cached by content (``score_reference``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from latentlm.models.checkpoint import atomic_write_text
from latentlm.platform import storage
from latentlm.platform.data import assets
from latentlm.platform.training.engine import native_bf16
from latentlm.platform.training.progress import progress

from . import metrics, significance
from .protocol import ContinuationEvalConfig, ScoringConfig

log = logging.getLogger(__name__)

CI_METRICS = ("mauve", "gen_ppl", "rouge1", "rouge2", "rougeL", "bertscore", "entropy")


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def render(tokenizer, id_lists: list[list[int]]) -> list[str]:
    """The texts that are scored: every id decoded, special ids (EOS included) as their own text, ids outside
    a compact vocabulary (-1) as the tokenizer's unknown token (EOS when it has none)."""
    unknown = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    return tokenizer.batch_decode([[i if i >= 0 else unknown for i in ids] for ids in id_lists],
                                  skip_special_tokens=False)


def buckets_for(n: int) -> int:
    """MAUVE's quantisation size for n texts per side (``metrics.mauve``'s "auto")."""
    return max(2, n // 10)


def sampler_precision(dtype: str, device: str | torch.device):
    """The protocol's sampler dtype: bfloat16 autocast, or nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


class Scorers:
    """The protocol's scorer models, loaded once per evaluation on first use."""

    def __init__(self, e: ScoringConfig, device: str = "cpu"):
        self.e, self.device = e, device
        self._reference_features: dict[str, np.ndarray] = {}  # key of the references -> their features
        if e.scorer_dtype == "bfloat16" and not native_bf16(device):
            log.warning("eval.scorer_dtype bfloat16 on %s, which has no bf16 units: the scorers run emulated bf16, "
                        "several times slower than float32", device)

    @property
    def shared_lm(self) -> bool:
        """MAUVE's featurizer is the Gen-PPL scorer (the default): one model, one forward pass per text."""
        return self.e.mauve_model == self.e.genppl_model

    @cached_property
    def featurizer(self) -> metrics.LMFeaturizer:
        e = self.e
        if self.shared_lm:
            return metrics.LMFeaturizer.over(self.genppl, e.mauve_max_length, e.mauve_pooling)
        return metrics.LMFeaturizer(assets.resolve_model(e.mauve_model), max_length=e.mauve_max_length,
                                    pooling=e.mauve_pooling, device=self.device, dtype=getattr(torch, e.scorer_dtype))

    @cached_property
    def genppl(self) -> metrics.GenPPLScorer:
        log.info("loading the Gen-PPL scorer %s", self.e.genppl_model)
        return metrics.GenPPLScorer(assets.resolve_model(self.e.genppl_model), max_length=self.e.genppl_max_length,
                                    batch_size=self.e.batch_size, device=self.device,
                                    dtype=getattr(torch, self.e.scorer_dtype))

    def lm_scores(self, texts: list[str], on_batch=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per text: Gen-PPL's summed NLL and predicted-token count, and MAUVE's features; from one forward
        pass of the shared model when ``shared_lm``."""
        e = self.e
        if self.shared_lm:
            return self.genppl.score(texts, on_batch, features=(e.mauve_max_length, e.mauve_pooling))
        nll, counts = self.genppl.nll(texts, on_batch)
        return nll, counts, self.featurizer(texts)

    def reference_features(self, texts: list[str], cache_dir: Path | None = None) -> np.ndarray:
        """MAUVE features of the references, computed once per ``Scorers`` (every row scored against the same
        references reuses them: the model row, the ceiling, each floor); with ``cache_dir`` also stored under a
        key of the featurizer settings and the texts, so the trials of a sweep featurize them once."""
        e = self.e
        blob = json.dumps([e.mauve_model, e.mauve_pooling, e.mauve_max_length, e.scorer_dtype, texts])
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        if key not in self._reference_features:
            self._reference_features[key] = self._reference_features_from(texts, cache_dir, key)
        return self._reference_features[key]

    def _reference_features_from(self, texts: list[str], cache_dir: Path | None, key: str) -> np.ndarray:
        path = None if cache_dir is None else Path(cache_dir) / f"features-{key}.npy"
        if path is not None and storage.fetch(path).is_file():
            return np.load(path)
        log.info("MAUVE features of %d reference texts (%s)", len(texts), self.e.mauve_model)
        features = self.featurizer(texts)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, features)
            os.replace(tmp, path)
            storage.publish(path)
        return features

    def bertscore(self, predictions: list[str], references: list[str]) -> np.ndarray:
        e = self.e
        return metrics.bertscore_scores(predictions, references, assets.resolve_model(e.bertscore_model),
                                        e.bertscore_num_layers, device=self.device)


@dataclass
class Scored:
    """One scored row: the aggregated metrics (CIs included), the per-seed metrics and the per-prompt evidence
    that paired comparisons between rows resample."""
    row: dict[str, float]
    evidence: dict
    per_seed: dict[int, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"row": self.row, "evidence": self.evidence}


def _check_lengths(generations: dict[int, list[list[int]]], references: list[list[int]]) -> None:
    for seed, ids in generations.items():
        if len(ids) != len(references):
            raise ValueError(f"harness: seed {seed} has {len(ids)} generations for {len(references)} references")


def score(e: ScoringConfig, scorers: Scorers, tokenizer, generations: dict[int, list[list[int]]],
          references: list[list[int]], paired: bool, cache_dir: Path | None = None, label: str = "") -> Scored:
    """Score ``generations`` (sampling seed -> one id list per reference, paired by index) against
    ``references``; ``cache_dir`` shares the references' features between calls (see
    ``Scorers.reference_features``); ``label`` names the row in the progress lines."""
    _check_lengths(generations, references)
    # three phases per seed (Gen-PPL with the features, paired metrics, MAUVE): a line every phase or so
    bar = progress(3 * len(generations), f"score {label} ({len(references)} texts x {len(generations)} seeds)",
                   log, unit="phase")
    ref_texts = render(tokenizer, references)
    ref_features = scorers.reference_features(ref_texts, cache_dir)  # the same for every seed and row
    buckets = buckets_for(len(references))
    per_seed: dict[int, dict[str, float]] = {}
    per_prompt: dict[str, list[list[float]]] = {}
    nll_rows, token_rows, ref_labels, gen_labels, grid = [], [], [], [], []
    for seed, ids in generations.items():
        texts = render(tokenizer, ids)
        # the longest phase (a 262k-vocabulary LM over every text): its own line every interval
        ppl_bar = progress(len(texts), f"Gen-PPL and features {label} seed {seed}", log, unit="text")
        nll, counts, gen_features = scorers.lm_scores(texts, on_batch=ppl_bar.update)
        ppl_bar.close()
        bar.update()
        entropies = np.nan_to_num(metrics.sample_entropies(ids), nan=0.0)
        values = {"entropy": entropies, "gen_tokens": np.asarray([len(x) for x in ids], dtype=np.float64)}
        if paired:
            values.update(metrics.rouge_scores(texts, ref_texts))
            values["bertscore"] = scorers.bertscore(texts, ref_texts)
        bar.update()
        row = {name: float(v.mean()) for name, v in values.items()}
        row["gen_ppl"] = math.exp(nll.sum() / counts.sum()) if counts.sum() else math.nan
        row["diversity"] = metrics.ngram_diversity(texts, e.diversity_ns)
        for name, v in values.items():
            per_prompt.setdefault(name, []).append(v.tolist())
        nll_rows.append(nll.tolist())
        token_rows.append(counts.tolist())
        labels = [significance.quantize(ref_features, gen_features, buckets, k) for k in e.mauve_kmeans_seeds]
        scores = [significance.mauve_from_labels(r, g, buckets) for r, g in labels]
        ref_labels.append([r.tolist() for r, _ in labels])
        gen_labels.append([g.tolist() for _, g in labels])
        per_seed[seed] = {**row, "mauve": float(np.mean(scores))}
        grid.append(scores)
        bar.update()
    bar.close()
    out: dict[str, float] = {}
    for name in next(iter(per_seed.values())):
        if name != "mauve":
            out[name], out[f"{name}_std"] = mean_std([s[name] for s in per_seed.values()])
    grid_arr = np.asarray(grid)
    out["mauve"], out["mauve_std"] = mean_std(grid_arr.ravel().tolist())
    out["mauve_kmeans_std"] = float(np.mean([mean_std(r.tolist())[1] for r in grid_arr]))
    out["mauve_sampling_std"] = mean_std(grid_arr.mean(axis=1).tolist())[1]
    out.update({"samples": float(len(references)), "seeds": float(len(generations))})
    evidence = {"n": len(references), "seeds": [int(s) for s in generations], "per_prompt": per_prompt,
                "genppl": {"nll": nll_rows, "tokens": token_rows},
                "mauve": {"buckets": buckets, "kmeans_seeds": list(e.mauve_kmeans_seeds), "ref_labels": ref_labels,
                          "gen_labels": gen_labels}}
    for name in CI_METRICS:
        if name in out and (name in per_prompt or name in ("mauve", "gen_ppl")):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = significance.bootstrap_ci(
                evidence, name, level=e.ci_level, replicates=e.bootstrap_replicates, seed=e.bootstrap_seed)
    return Scored(out, evidence, per_seed)


def score_reference(e: ScoringConfig, scorers: Scorers, tokenizer, generations: dict[int, list[list[int]]],
                    references: list[list[int]], paired: bool, cache_dir: Path | None = None,
                    scoring_hash: str = "", label: str = "reference row", wait: bool = True) -> Scored | None:
    """``score`` for a reference row (the human ceiling, a floor), whose texts do not depend on any trained
    model: every trial of a sweep scores the same ones. With ``cache_dir`` the row is stored under a key of
    exactly what it depends on (the protocol's ``scoring_hash``, which names the scorers and seeds, and the
    texts), so the first trial computes it and the others read it; a trial that finds another one scoring the
    row waits for it, or with ``wait=False`` returns None at once (``score_reference_rows`` does other rows)."""
    if cache_dir is None:
        return score(e, scorers, tokenizer, generations, references, paired, None, label)
    blob = json.dumps([scoring_hash, paired, references, sorted(generations.items())])
    path = Path(cache_dir) / f"reference-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        return None
    try:
        if storage.fetch(path).is_file():
            cached = json.loads(path.read_text())
            return Scored(cached["row"], cached["evidence"])
        scored = score(e, scorers, tokenizer, generations, references, paired, cache_dir, label)
        atomic_write_text(path, json.dumps(scored.to_json(), sort_keys=True) + "\n")
        storage.publish(path)
        return scored
    finally:
        lock.release()


@dataclass
class ReferenceRow:
    """What a reference row scores: generations (sampling seed -> one id list per reference), the references
    they are scored against, and whether the paired metrics apply."""
    generations: dict[int, list[list[int]]]
    references: list[list[int]]
    paired: bool


def score_reference_rows(e: ScoringConfig, scorers: Scorers, tokenizer, rows: dict[str, ReferenceRow],
                         cache_dir: Path | None = None, scoring_hash: str = "") -> dict[str, Scored]:
    """Every row of ``rows`` through ``score_reference``. Concurrent trials split the work instead of scoring
    the same rows twice: a first pass skips the rows another trial is scoring, a second waits for them."""
    out: dict[str, Scored] = {}
    for wait in (False, True):
        for name, row in rows.items():
            if name not in out:
                scored = score_reference(e, scorers, tokenizer, row.generations, row.references, row.paired,
                                         cache_dir, scoring_hash, name, wait=wait)
                if scored is not None:
                    out[name] = scored
    return {name: out[name] for name in rows}


def human_ceiling(references: list[list[int]], others: list[list[int]]) -> ReferenceRow:
    """The human-vs-human row: a disjoint set of held-out texts (``others``, one per reference, each of its
    reference's length) scored as generations against ``references`` by the very same rules (one "sampling
    seed"; paired metrics do not apply: the texts are not continuations of these prompts)."""
    n = min(len(references), len(others))
    return ReferenceRow({0: others[:n]}, references[:n], False)


def is_paired(e: ScoringConfig) -> bool:
    return isinstance(e, ContinuationEvalConfig)
