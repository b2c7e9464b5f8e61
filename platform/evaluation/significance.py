"""Confidence intervals and paired comparisons for leaderboard metrics.

A leaderboard row is one model evaluated on a few hundred prompts, so its numbers carry sampling noise from
three sources: *which prompts* were drawn, *which sampling seeds* were used and, for MAUVE, *which k-means
seeds* quantised the features. This module turns the per-prompt *evidence* the harness stores with every
row into

* :func:`bootstrap_ci`: a bootstrap interval of the row value (prompts and seeds resampled), centred on it;
* :func:`paired_difference`: a paired bootstrap test between two rows. Rows of one scoring protocol and
  dataset share their prompts, paired by index, so resampling the *same* prompt indices for both rows
  cancels prompt difficulty, which dominates the variance of either row alone. Sampling seeds are not a
  pairing (seed 1234 of two different models has nothing in common) and are resampled per row;
* :func:`not_significantly_worse`: the rows statistically tied with the best one;
* :func:`detectable_difference` / :func:`samples_needed`: the power of the protocol.

MAUVE is a distribution-level score, not a mean over prompts; it can still be bootstrapped cheaply because
the harness caches each point's k-means label (:func:`quantize`), so a replicate only rebuilds two
histograms of the resampled labels and recomputes the divergence curve (:func:`mauve_from_labels`,
vectorised). The quantisation itself is not redone per replicate; its variability is covered by resampling
k-means seeds.

Evidence format (a plain JSON-serialisable dict; every array is a nested list)::

    {
      "n": int,                                # prompts / references, paired by index across rows
      "seeds": [int, ...],                     # the S sampling seeds
      "per_prompt": {metric: [[float]*n]*S},   # rouge1, rouge2, rougeL, bertscore, entropy, gen_tokens, ...
                                               #   row value: mean over seeds of the mean over prompts
      "genppl": {"nll": [[float]*n]*S,         # summed NLL (nats) of each generation under the scorer
                 "tokens": [[int]*n]*S},       # predicted tokens of each generation (0 = skipped text)
                                               #   row value: mean over seeds of exp(sum nll / sum tokens)
      "mauve": {"buckets": int,                # k-means clusters
                "kmeans_seeds": [int]*K,
                "ref_labels": [[[int]*n]*K]*S, # cluster of reference i per (sampling seed, k-means seed)
                "gen_labels": [[[int]*n]*K]*S} # cluster of generation i, same quantisation
                                               #   row value: mean over (s, k) of MAUVE(ref hist, gen hist)
    }

Each of ``per_prompt``, ``genppl`` and ``mauve`` may be absent. Metric names: a key of ``per_prompt``,
``"gen_ppl"`` or ``"mauve"``. All randomness comes from ``numpy.random.default_rng(seed)``: results are
deterministic for a given ``seed``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "quantize",
    "mauve_from_labels",
    "mauve_from_histograms",
    "SeedChoice",
    "statistic",
    "bootstrap_ci",
    "Difference",
    "paired_difference",
    "not_significantly_worse",
    "higher_is_better",
    "detectable_difference",
    "samples_needed",
]

#: MAUVE's defaults (``compute_mauve``): the constant c and the points on the divergence curve.
MAUVE_SCALING = 5.0
MAUVE_WEIGHTS = np.linspace(1e-6, 1 - 1e-6, 25)

#: Cap on the elements one vectorised chunk of replicates gathers (keeps memory flat for large n).
_CHUNK_ELEMENTS = 1 << 22


# ------------------------------------------------------------------------------------------------- MAUVE
def quantize(ref_features: np.ndarray, gen_features: np.ndarray, buckets: int, seed: int,
             kmeans_num_redo: int = 5, kmeans_max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Per-point k-means labels of MAUVE's quantisation: ``(ref_labels, gen_labels)``, int64.

    The very steps of ``mauve.compute_mauve`` (``cluster_feats``) as ``metrics.mauve`` calls it: float32
    features stacked as ``[gen; ref]``, l2-normalised, PCA (``random_state=seed + 1``) cut to 90% explained
    variance, faiss k-means (``seed + 2``). ``cluster_feats`` only returns histograms; the labels are what a
    bootstrap over prompts needs, so ``mauve_from_labels(*quantize(p, q, b, s), b) == metrics.mauve(p, q, s, b)``.
    """
    import faiss
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    p = np.asarray(ref_features, dtype=np.float32)
    q = np.asarray(gen_features, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"features must be 2-D with the same width, got shapes {p.shape} and {q.shape}")
    data = normalize(np.vstack([q, p]), norm="l2", axis=1)
    pca = PCA(n_components=None, whiten=False, random_state=seed + 1).fit(data)
    keep = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= 0.9)) + 1
    data = pca.transform(data)[:, :keep].astype(np.float32)
    kmeans = faiss.Kmeans(data.shape[1], int(buckets), niter=kmeans_max_iter, verbose=False, nredo=kmeans_num_redo,
                          update_index=True, seed=seed + 2)
    # One OpenMP thread: a few hundred points cluster in milliseconds on one thread but can take a second with
    # threads spinning on a busy machine, and the labels must not depend on the thread count.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        kmeans.train(data)
        labels = kmeans.index.search(data, 1)[1].reshape(-1).astype(np.int64)
    finally:
        faiss.omp_set_num_threads(threads)
    return labels[len(q):], labels[: len(q)]


def mauve_from_histograms(p_hist: np.ndarray, q_hist: np.ndarray) -> np.ndarray:
    """Unsmoothed MAUVE of histogram pairs along the last axis (any leading batch shape).

    A vectorised ``compute_mauve`` tail (``get_divergence_curve_for_multinomials`` + two sklearn ``auc``):
    the library loops in Python per mixture weight, ~1 ms per score, too slow for thousands of bootstrap
    replicates. Same operations in the same order, so it agrees with the library to float rounding.
    """
    p = np.asarray(p_hist, dtype=np.float64)[..., None, :]
    q = np.asarray(q_hist, dtype=np.float64)[..., None, :]
    w = MAUVE_WEIGHTS[:, None]
    r = w * p + (1 - w) * q  # (..., 25, buckets); zero only where p and q both are, so KL(. || r) is finite
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_q = np.where((q != 0) & (r != 0), q * np.log(q / r), 0.0).sum(axis=-1)
        kl_p = np.where((p != 0) & (r != 0), p * np.log(p / r), 0.0).sum(axis=-1)
    batch = kl_q.shape[:-1]
    x = np.concatenate([np.ones(batch + (1,)), np.exp(-MAUVE_SCALING * kl_q), np.zeros(batch + (1,))], axis=-1)
    y = np.concatenate([np.zeros(batch + (1,)), np.exp(-MAUVE_SCALING * kl_p), np.ones(batch + (1,))], axis=-1)
    return 0.5 * (_sorted_area(x, y) + _sorted_area(y, x))


def _sorted_area(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Trapezoid area under (x, y) sorted by x, as ``sklearn.metrics.auc(x[argsort(x)], y[argsort(x)])``."""
    from scipy.integrate import trapezoid

    order = np.argsort(x, axis=-1)
    return trapezoid(np.take_along_axis(y, order, axis=-1), np.take_along_axis(x, order, axis=-1), axis=-1)


def _histograms(labels: np.ndarray, buckets: int) -> np.ndarray:
    """Normalised label histograms along the last axis: (..., m) labels -> (..., buckets)."""
    flat = labels.reshape(-1, labels.shape[-1])
    offsets = np.arange(len(flat))[:, None] * buckets
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * buckets).reshape(len(flat), buckets)
    return (counts / counts.sum(axis=1, keepdims=True)).reshape(labels.shape[:-1] + (buckets,))


def mauve_from_labels(ref_labels: Sequence[int] | np.ndarray, gen_labels: Sequence[int] | np.ndarray,
                      buckets: int) -> float:
    """MAUVE (unsmoothed, c = 5, 25 mixture weights) of the references' vs. the generations' cluster labels."""
    ref = np.asarray(ref_labels, dtype=np.int64)
    gen = np.asarray(gen_labels, dtype=np.int64)
    for name, labels in (("ref_labels", ref), ("gen_labels", gen)):
        if labels.ndim != 1 or len(labels) == 0 or labels.min() < 0 or labels.max() >= buckets:
            raise ValueError(f"{name} must be a non-empty 1-D array of labels in [0, {buckets})")
    return float(mauve_from_histograms(_histograms(ref, buckets), _histograms(gen, buckets)))


# --------------------------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class SeedChoice:
    """Which seeds a statistic uses, as positions (with repeats) into ``evidence["seeds"]`` and
    ``evidence["mauve"]["kmeans_seeds"]``; ``None`` = all of them once. A hierarchical bootstrap draws these."""
    sampling: Sequence[int] | None = None
    kmeans: Sequence[int] | None = None


@dataclass(frozen=True)
class _Row:
    """One row's evidence for one metric, as arrays, with a vectorised evaluator of the row value."""
    metric: str
    n: int
    arrays: tuple[np.ndarray, ...]  # per-prompt: (values,); gen_ppl: (nll, tokens); mauve: (ref, gen) labels
    buckets: int = 0

    @property
    def sampling_seeds(self) -> int:
        return self.arrays[0].shape[0]

    @property
    def kmeans_seeds(self) -> int:
        return self.arrays[0].shape[1] if self.metric == "mauve" else 1

    def values(self, idx: np.ndarray, samp: np.ndarray, km: np.ndarray) -> np.ndarray:
        """Row values of B replicates: prompt indices (B, m), sampling positions (B, S'), k-means (B, K')."""
        if self.metric == "mauve":
            ref, gen = self.arrays
            pick = (samp[:, :, None, None], km[:, None, :, None], idx[:, None, None, :])
            scores = mauve_from_histograms(_histograms(ref[pick], self.buckets), _histograms(gen[pick], self.buckets))
            return scores.reshape(len(idx), -1).mean(axis=-1)
        pick = (samp[:, :, None], idx[:, None, :])
        if self.metric == "gen_ppl":
            nll, tokens = self.arrays
            with np.errstate(divide="ignore", invalid="ignore"):  # a seed with no predicted token: NaN
                per_seed = np.exp(nll[pick].sum(axis=-1) / tokens[pick].sum(axis=-1))
            return per_seed.mean(axis=-1)
        return self.arrays[0][pick].mean(axis=-1).mean(axis=-1)


def _has(evidence: dict, metric: str) -> bool:
    """Whether ``evidence`` carries what ``metric`` needs (a row may lack paired metrics, Gen-PPL or MAUVE)."""
    if metric in ("gen_ppl", "mauve"):
        return bool(evidence.get({"gen_ppl": "genppl"}.get(metric, metric)))
    return metric in (evidence.get("per_prompt") or {})


def _row(evidence: dict, metric: str) -> _Row:
    """Parse and check the part of ``evidence`` that ``metric`` needs."""
    n = int(evidence["n"])
    per_prompt = evidence.get("per_prompt") or {}
    if not _has(evidence, metric):
        available = sorted(per_prompt) + [m for m in ("gen_ppl", "mauve") if _has(evidence, m)]
        raise ValueError(f"metric {metric!r} has no evidence in this row (available: {', '.join(available) or 'none'})")
    if metric == "mauve":
        m = evidence["mauve"]
        arrays = (np.asarray(m["ref_labels"], dtype=np.int64), np.asarray(m["gen_labels"], dtype=np.int64))
        buckets = int(m["buckets"])
        if any(a.ndim != 3 or a.shape[-1] != n for a in arrays) or arrays[0].shape != arrays[1].shape:
            raise ValueError(f"mauve evidence: labels must be (seeds, kmeans seeds, n={n}), got "
                             f"{arrays[0].shape} and {arrays[1].shape}")
        if min(a.min() for a in arrays) < 0 or max(a.max() for a in arrays) >= buckets:
            raise ValueError(f"mauve evidence: labels must lie in [0, {buckets})")
        return _Row(metric, n, arrays, buckets)
    if metric == "gen_ppl":
        arrays = (np.asarray(evidence["genppl"]["nll"], dtype=np.float64),
                  np.asarray(evidence["genppl"]["tokens"], dtype=np.float64))
    else:
        arrays = (np.asarray(per_prompt[metric], dtype=np.float64),)
    if any(a.ndim != 2 or a.shape[-1] != n for a in arrays) or arrays[0].shape != arrays[-1].shape:
        raise ValueError(f"{metric} evidence must be (seeds, n={n}), got {[a.shape for a in arrays]}")
    return _Row(metric, n, arrays)


def _positions(choice: Sequence[int] | None, count: int, what: str) -> np.ndarray:
    if choice is None:
        return np.arange(count)
    pos = np.asarray(choice, dtype=np.int64).reshape(-1)
    if len(pos) == 0 or pos.min() < 0 or pos.max() >= count:
        raise ValueError(f"seed_choice.{what} must be non-empty positions in [0, {count}), got {list(pos)}")
    return pos


def statistic(evidence: dict, metric: str, indices: Sequence[int] | np.ndarray | None = None,
              seed_choice: SeedChoice | None = None) -> float:
    """The row value of ``metric`` on the prompts ``indices`` (repeats allowed; ``None`` = all, in order),
    computed from the evidence exactly as the harness aggregates it (see the module docstring)."""
    row = _row(evidence, metric)
    idx = np.arange(row.n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= row.n:
        raise ValueError(f"indices must be non-empty prompt indices in [0, {row.n})")
    choice = seed_choice or SeedChoice()
    samp = _positions(choice.sampling, row.sampling_seeds, "sampling")
    km = _positions(choice.kmeans, row.kmeans_seeds, "kmeans")
    return float(row.values(idx[None], samp[None], km[None])[0])


# ------------------------------------------------------------------------------------------- bootstrap
def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _bootstrap(rows: Sequence[_Row], replicates: int, seed: int) -> np.ndarray:
    """Replicate row values, (len(rows), replicates): the same resampled prompts for every row, seeds
    (sampling, and k-means for MAUVE) resampled independently per row. Drawn in fixed-size chunks, so the
    result depends only on ``seed`` and the evidence shapes."""
    if replicates < 2:
        raise ValueError(f"replicates must be >= 2, got {replicates}")
    n = rows[0].n
    width = max(r.sampling_seeds * r.kmeans_seeds for r in rows)
    chunk = max(1, min(replicates, _CHUNK_ELEMENTS // (n * width)))
    rng = np.random.default_rng(seed)
    out = np.empty((len(rows), replicates))
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        idx = rng.integers(0, n, size=(b, n))
        for i, row in enumerate(rows):
            s, k = row.sampling_seeds, row.kmeans_seeds
            samp, km = rng.integers(0, s, size=(b, s)), rng.integers(0, k, size=(b, k))
            out[i, start : start + b] = row.values(idx, samp, km)
    return out


def bootstrap_ci(evidence: dict, metric: str, level: float = 0.95, replicates: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval ``(low, high)`` of the row value of ``metric``: the percentiles of the replicates
    shifted so that their mean is the row value.

    Hierarchical: every replicate resamples the prompts and the sampling seeds with replacement, and for
    MAUVE also the k-means seeds, so the interval covers all the variation a rerun of the protocol on new
    prompts with new seeds would show. Replicates that are NaN (Gen-PPL of a resample without a predicted
    token) are dropped. The shift matters for MAUVE only: a resample repeats prompts, which makes noisier
    histograms and lowers MAUVE, so raw percentiles can lie wholly below the point value; for means the
    replicates are already centred on it.
    """
    _check_level(level)
    values = _bootstrap([_row(evidence, metric)], replicates, seed)[0]
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    low, high = np.quantile(_centred(values, statistic(evidence, metric)), [(1 - level) / 2, (1 + level) / 2])
    if metric == "mauve":  # the shift must not leave MAUVE's range
        low, high = max(low, 0.0), min(high, 1.0)
    return float(low), float(high)


def _centred(replicates: np.ndarray, point: float) -> np.ndarray:
    """Replicates moved to have mean ``point`` (removes the resampling bias of MAUVE, keeps the spread)."""
    return replicates - replicates.mean() + point


@dataclass(frozen=True)
class Difference:
    """Paired comparison of two rows on one metric: ``difference = a - b`` on all prompts, its bootstrap
    interval ``[low, high]`` and the two-sided bootstrap p-value of "no difference"."""
    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    p_value: float
    replicates: int


def paired_difference(evidence_a: dict, evidence_b: dict, metric: str, level: float = 0.95,
                      replicates: int = 1000, seed: int = 0) -> Difference:
    """Paired bootstrap of ``value(a) - value(b)`` over the shared prompts.

    Each replicate uses the same prompt indices for both rows (the pairing that cancels prompt difficulty)
    and resamples each row's seeds independently. The B finite replicate differences are centred on the
    observed difference (as in :func:`bootstrap_ci`: two rows' MAUVE need not carry the same resampling
    bias) and give the percentile interval and the p-value
    ``min(1, 2 * min((#{d <= 0} + 1) / (B + 1), (#{d >= 0} + 1) / (B + 1)))``.
    """
    _check_level(level)
    rows = []
    for name, evidence in (("a", evidence_a), ("b", evidence_b)):
        try:
            rows.append(_row(evidence, metric))
        except ValueError as err:
            raise ValueError(f"row {name}: {err}") from None
    if rows[0].n != rows[1].n:
        raise ValueError(f"{metric}: rows are not paired: row a has {rows[0].n} prompts, row b has {rows[1].n}")
    a, b = statistic(evidence_a, metric), statistic(evidence_b, metric)
    values = _bootstrap(rows, replicates, seed)
    d = values[0] - values[1]
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return Difference(metric, a, b, a - b, math.nan, math.nan, math.nan, replicates)
    d = _centred(d, a - b)
    low, high = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    tail = min(np.count_nonzero(d <= 0) + 1, np.count_nonzero(d >= 0) + 1) / (len(d) + 1)
    return Difference(metric, a, b, a - b, float(low), float(high), float(min(1.0, 2 * tail)), replicates)


_HIGHER_IS_BETTER = {"gen_ppl": False, "mauve": True, "bertscore": True, "entropy": True, "diversity": True,
                     "accuracy": True, "exact_match": True}


def higher_is_better(metric: str) -> bool:
    """Direction of ``metric``: False for Gen-PPL, True for MAUVE, ROUGE, BERTScore, entropy, diversity and the
    few-shot protocol's accuracy / exact match."""
    if metric.startswith("rouge"):
        return True
    if metric not in _HIGHER_IS_BETTER:
        raise ValueError(f"metric {metric!r} has no better direction (known: gen_ppl, mauve, rouge*, bertscore, "
                         f"entropy, diversity, accuracy, exact_match)")
    return _HIGHER_IS_BETTER[metric]


_direction = higher_is_better  # the name is shadowed by not_significantly_worse's argument


def not_significantly_worse(evidences: dict[str, dict], metric: str, higher_is_better: bool | None = None,
                            alpha: float = 0.05, level: float = 0.95, replicates: int = 1000,
                            seed: int = 0) -> set[str]:
    """Keys of the rows statistically tied with the best one on ``metric``.

    The best row is the one with the best point value (``higher_is_better`` defaults to the metric's
    direction); every other row is compared with it by :func:`paired_difference` and kept unless
    ``p < alpha``. The best row is always kept. Rows without evidence for the metric, or with a NaN value,
    are left out, and so is a row whose difference from the best has no p-value (NaN: not estimable), since
    "tied" is a claim too; rows must share their prompts (same ``n``), else ``paired_difference`` raises.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    higher = _direction(metric) if higher_is_better is None else bool(higher_is_better)
    points = {key: statistic(ev, metric) for key, ev in evidences.items() if _has(ev, metric)}
    points = {key: value for key, value in points.items() if math.isfinite(value)}
    if not points:
        return set()
    best = (max if higher else min)(points, key=points.__getitem__)
    keep = {best}
    for key in points:
        if key != best:
            diff = paired_difference(evidences[best], evidences[key], metric, level, replicates, seed)
            if math.isfinite(diff.p_value) and diff.p_value >= alpha:
                keep.add(key)
    return keep


# --------------------------------------------------------------------------------------------- power
def _z_sum(alpha: float, power: float) -> float:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha!r} and {power!r}")
    z = NormalDist().inv_cdf
    return z(1 - alpha / 2) + z(power)


def detectable_difference(evidence: dict, metric: str, alpha: float = 0.05, power: float = 0.8,
                          replicates: int = 1000, seed: int = 0) -> float:
    """Smallest true difference between two independent models with this row's variability that a two-sided
    test at level ``alpha`` detects with probability ``power``:

        (z_{1 - alpha/2} + z_{power}) * sqrt(2) * SE

    with SE the bootstrap standard error of the row value (the same hierarchical bootstrap as
    :func:`bootstrap_ci`); sqrt(2) because the difference of two independent rows has variance 2 SE^2.
    Paired rows usually do better, since prompt difficulty cancels, so this is a conservative yardstick.
    """
    z = _z_sum(alpha, power)
    values = _bootstrap([_row(evidence, metric)], replicates, seed)[0]
    values = values[np.isfinite(values)]
    se = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return z * math.sqrt(2) * se


def samples_needed(evidence: dict, metric: str, difference: float, alpha: float = 0.05, power: float = 0.8,
                   replicates: int = 1000, seed: int = 0) -> int:
    """Prompt count n' at which :func:`detectable_difference` would equal ``difference``.

    SE scales as 1 / sqrt(n), so D(n') = D(n) * sqrt(n / n') and n' = ceil(n * (D(n) / difference)^2), at least 1.
    """
    if not difference > 0:
        raise ValueError(f"difference must be > 0, got {difference!r}")
    d = detectable_difference(evidence, metric, alpha, power, replicates, seed)
    if not math.isfinite(d):
        raise ValueError(f"{metric}: the bootstrap standard error is not finite")
    return max(1, math.ceil(round(int(evidence["n"]) * (d / difference) ** 2, 9)))
