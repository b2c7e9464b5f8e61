"""Bootstrap intervals and paired comparisons (``platform/evaluation/significance.py``): MAUVE from cached labels equals
``metrics.mauve``, statistics equal the harness's aggregation, and the paired bootstrap has the coverage,
power and size it claims on synthetic rows with a known truth."""
from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
from sklearn.metrics import auc

from latentlm.platform.evaluation import metrics
from latentlm.platform.evaluation import significance as sig

# The package's __init__ re-exports the function ``compute_mauve``, which shadows the submodule attribute.
mauve_lib = importlib.import_module("mauve.compute_mauve")


def per_prompt_evidence(values: np.ndarray, metric: str = "rouge1") -> dict:
    """Evidence of a row with one per-prompt metric; ``values`` is (seeds, n) or (n,)."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    return {"n": values.shape[1], "seeds": list(range(len(values))), "per_prompt": {metric: values.tolist()}}


def mauve_evidence(ref: np.ndarray, gens: list[np.ndarray], buckets: int, kmeans_seeds: list[int]) -> dict:
    """A row's MAUVE evidence built as the harness does (one quantisation per (sampling, k-means) seed);
    fewer k-means restarts/iterations than the protocol, to keep the tests fast."""
    ref_labels, gen_labels = [], []
    for gen in gens:
        pairs = [sig.quantize(ref, gen, buckets, k, kmeans_num_redo=1, kmeans_max_iter=25) for k in kmeans_seeds]
        ref_labels.append([r.tolist() for r, _ in pairs])
        gen_labels.append([g.tolist() for _, g in pairs])
    return {"n": len(ref), "seeds": list(range(len(gens))),
            "mauve": {"buckets": buckets, "kmeans_seeds": list(kmeans_seeds), "ref_labels": ref_labels,
                      "gen_labels": gen_labels}}


def library_mauve(p: np.ndarray, q: np.ndarray) -> float:
    """MAUVE of two histograms with the library's own helpers, exactly as ``compute_mauve`` does it."""
    weights = np.linspace(1e-6, 1 - 1e-6, 25)
    x, y = mauve_lib.get_divergence_curve_for_multinomials(p, q, weights, 5).T
    i1, i2 = np.argsort(x), np.argsort(y)
    return 0.5 * (auc(x[i1], y[i1]) + auc(y[i2], x[i2]))


# ----------------------------------------------------------------------------------------------- MAUVE
@pytest.mark.parametrize("n_p, n_q, dim, buckets, seed, shift", [
    (40, 40, 16, 4, 25, 0.0),
    (64, 50, 32, 6, 1, 0.0),
    (30, 36, 4, 2, 0, 0.0),
    (60, 60, 16, 5, 3, 2.0),  # different Gaussians: MAUVE is low
])
def test_mauve_from_quantized_labels_equals_metrics_mauve(n_p, n_q, dim, buckets, seed, shift):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n_p, dim))
    q = rng.normal(size=(n_q, dim)) + shift
    ref_labels, gen_labels = sig.quantize(p, q, buckets, seed)
    assert ref_labels.shape == (n_p,) and gen_labels.shape == (n_q,)
    ours = sig.mauve_from_labels(ref_labels, gen_labels, buckets)
    expected = metrics.mauve(p, q, seed=seed, num_buckets=buckets)
    assert ours == pytest.approx(expected, abs=1e-12)
    if shift:
        assert expected < 0.2


def test_vectorised_mauve_equals_library_helpers_on_random_histograms():
    rng = np.random.default_rng(0)
    ps, qs = [], []
    for i in range(400):
        k = int(rng.integers(2, 20))
        pc = rng.integers(0, 6, size=k) * (rng.random(k) < 0.7)  # many empty buckets
        qc = rng.integers(0, 6, size=k) * (rng.random(k) < 0.7)
        pc[0] += pc.sum() == 0
        qc[-1] += qc.sum() == 0
        if i % 7 == 0:
            qc = pc.copy()  # p == q
        if i % 11 == 0:
            pc, qc = np.eye(k, dtype=int)[0], np.eye(k, dtype=int)[-1]  # disjoint supports
        ps.append(pc / pc.sum())
        qs.append(qc / qc.sum())
    for p, q in zip(ps, qs):
        assert float(sig.mauve_from_histograms(p, q)) == pytest.approx(library_mauve(p, q), abs=1e-12)
    # A batch is scored row by row: the same values as one at a time.
    counts = rng.integers(0, 4, size=(2, 30, 6))
    counts[:, :, 0] += 1
    batch_p, batch_q = counts / counts.sum(axis=-1, keepdims=True)
    one_by_one = [float(sig.mauve_from_histograms(p, q)) for p, q in zip(batch_p, batch_q)]
    np.testing.assert_allclose(sig.mauve_from_histograms(batch_p, batch_q), one_by_one, rtol=0, atol=1e-15)
    # The library's quirk, reproduced: for p == q every inner curve point is (1, 1) and its unstable argsort
    # breaks the ties either way, so MAUVE(p, p) is 1.0 or 0.75 depending on the histogram.
    assert float(sig.mauve_from_histograms(np.array([0.1, 0.2, 0.7]), np.array([0.1, 0.2, 0.7]))) == 1.0
    assert float(sig.mauve_from_histograms(np.array([0.5, 0.5]), np.array([0.5, 0.5]))) == 0.75


def test_mauve_from_labels_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="gen_labels"):
        sig.mauve_from_labels([0, 1, 1], [0, 2, 1], 2)


# ------------------------------------------------------------------------------------------- statistic
def tiny_evidence() -> dict:
    return {
        "n": 2, "seeds": [1234, 5678],
        "per_prompt": {"rouge1": [[0.2, 0.4], [0.6, 1.0]]},
        "genppl": {"nll": [[2.0, 4.0], [1.0, 0.0]], "tokens": [[1, 3], [2, 0]]},
        "mauve": {"buckets": 2, "kmeans_seeds": [25, 26],
                  "ref_labels": [[[0, 1], [0, 1]], [[1, 1], [0, 0]]],
                  "gen_labels": [[[0, 1], [1, 1]], [[0, 1], [0, 1]]]},
    }


def test_statistic_equals_hand_computed_row_values():
    ev = tiny_evidence()
    assert sig.statistic(ev, "rouge1") == pytest.approx((0.3 + 0.8) / 2)
    assert sig.statistic(ev, "rouge1", indices=[1, 1]) == pytest.approx((0.4 + 1.0) / 2)
    assert sig.statistic(ev, "rouge1", seed_choice=sig.SeedChoice(sampling=[1, 1])) == pytest.approx(0.8)
    # Gen-PPL: micro-average within a seed, plain mean over seeds.
    assert sig.statistic(ev, "gen_ppl") == pytest.approx((math.exp(6 / 4) + math.exp(1 / 2)) / 2)
    assert sig.statistic(ev, "gen_ppl", indices=[0, 0]) == pytest.approx((math.exp(4 / 2) + math.exp(2 / 4)) / 2)
    assert sig.statistic(ev, "gen_ppl", seed_choice=sig.SeedChoice(sampling=[0])) == pytest.approx(math.exp(1.5))
    # MAUVE: mean over every (sampling seed, k-means seed) pair of MAUVE(ref hist, gen hist).
    half, only_0, only_1 = np.array([0.5, 0.5]), np.array([1.0, 0.0]), np.array([0.0, 1.0])
    # (ref hist, gen hist) of (s, k) = (0, 0), (0, 1), (1, 0), (1, 1)
    grid = [library_mauve(half, half), library_mauve(half, only_1), library_mauve(only_1, half),
            library_mauve(only_0, half)]
    assert sig.statistic(ev, "mauve") == pytest.approx(np.mean(grid), abs=1e-15)
    assert sig.statistic(ev, "mauve", seed_choice=sig.SeedChoice(sampling=[0], kmeans=[0])) == grid[0]
    assert sig.statistic(ev, "mauve", seed_choice=sig.SeedChoice(kmeans=[1, 1])) == pytest.approx(
        (grid[1] + grid[3]) / 2, abs=1e-15)
    with pytest.raises(ValueError, match="seed_choice.kmeans"):
        sig.statistic(ev, "mauve", seed_choice=sig.SeedChoice(kmeans=[2]))
    with pytest.raises(ValueError, match="indices"):
        sig.statistic(ev, "rouge1", indices=[2])


def test_statistic_equals_the_harness_aggregation_and_survives_json():
    rng = np.random.default_rng(3)
    n, seeds = 50, 3
    values = rng.random((seeds, n))
    nll, tokens = rng.random((seeds, n)) * 40, rng.integers(0, 30, (seeds, n))
    ref_labels, gen_labels = rng.integers(0, 5, (seeds, 2, n)), rng.integers(0, 5, (seeds, 2, n))
    ev = {"n": n, "seeds": [0, 1, 2], "per_prompt": {"bertscore": values.tolist()},
          "genppl": {"nll": nll.tolist(), "tokens": tokens.tolist()},
          "mauve": {"buckets": 5, "kmeans_seeds": [25, 26], "ref_labels": ref_labels.tolist(),
                    "gen_labels": gen_labels.tolist()}}
    ev = json.loads(json.dumps(ev))
    # What harness.score computes: per seed, then np.mean over seeds (and over the (s, k) grid for MAUVE).
    assert sig.statistic(ev, "bertscore") == np.mean([float(v.mean()) for v in values])
    assert sig.statistic(ev, "gen_ppl") == pytest.approx(
        np.mean([math.exp(a.sum() / b.sum()) for a, b in zip(nll, tokens)]), rel=1e-15)
    grid = [[sig.mauve_from_labels(r, g, 5) for r, g in zip(rs, gs)] for rs, gs in zip(ref_labels, gen_labels)]
    assert sig.statistic(ev, "mauve") == np.mean(np.asarray(grid).ravel())


# ------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    ev = per_prompt_evidence(rng.normal(size=(2, 80)))
    low, high = sig.bootstrap_ci(ev, "rouge1", replicates=500, seed=4)
    assert (low, high) == sig.bootstrap_ci(ev, "rouge1", replicates=500, seed=4)
    assert (low, high) != sig.bootstrap_ci(ev, "rouge1", replicates=500, seed=5)
    assert low < sig.statistic(ev, "rouge1") < high
    narrow = sig.bootstrap_ci(ev, "rouge1", level=0.5, replicates=500, seed=4)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_resamples_sampling_and_kmeans_seeds():
    # Every prompt scores the same within a seed: only seed resampling can give the interval any width.
    ev = per_prompt_evidence(np.repeat([[0.0], [1.0]], 30, axis=1))
    assert sig.bootstrap_ci(ev, "rouge1", replicates=400) == pytest.approx((0.0, 1.0), abs=0.05)
    labels = np.arange(20) % 4
    ev = {"n": 20, "seeds": [0], "mauve": {"buckets": 4, "kmeans_seeds": [25, 26],
                                           "ref_labels": [[labels.tolist(), labels.tolist()]],
                                           "gen_labels": [[labels.tolist(), np.zeros(20, int).tolist()]]}}
    low, high = sig.bootstrap_ci(ev, "mauve", replicates=400)
    one_seed = sig.statistic(ev, "mauve", seed_choice=sig.SeedChoice(kmeans=[1]))
    assert low <= one_seed + 0.1 and high - low > 0.6   # the two k-means seeds' values (~0.07 and 1.0) are apart


def test_paired_bootstrap_coverage_power_and_size():
    """200 synthetic datasets (n = 64): a shared per-prompt difficulty plus independent noise per row."""
    rng = np.random.default_rng(0)
    n, datasets, true_diff = 64, 200, 0.1
    covered = detected = false_alarms = 0
    for i in range(datasets):
        difficulty = rng.normal(0, 1.0, n)
        a = 0.5 + true_diff + difficulty + rng.normal(0, 0.3, n)
        b = 0.5 + difficulty + rng.normal(0, 0.3, n)
        ev_a, ev_b = per_prompt_evidence(a), per_prompt_evidence(b)
        d = sig.paired_difference(ev_a, ev_b, "rouge1", replicates=300, seed=i)
        assert d.difference == pytest.approx(a.mean() - b.mean()) and d.replicates == 300
        covered += d.low <= true_diff <= d.high
        big = sig.paired_difference(per_prompt_evidence(a + 0.5), ev_b, "rouge1", replicates=300, seed=i)
        detected += big.p_value < 0.05 and big.low > 0
        null = sig.paired_difference(per_prompt_evidence(b + rng.normal(0, 0.3, n)), ev_b, "rouge1",
                                     replicates=300, seed=i)
        false_alarms += null.p_value < 0.05
    assert 0.90 * datasets <= covered <= 0.99 * datasets
    assert detected == datasets
    assert false_alarms <= 0.15 * datasets


def test_pairing_beats_unpaired_noise():
    # Prompt difficulty dwarfs the difference: each row's own CI is wide, the paired one excludes zero.
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0, 3.0, 100)
    ev_a = per_prompt_evidence(difficulty + 0.3 + rng.normal(0, 0.2, 100))
    ev_b = per_prompt_evidence(difficulty + rng.normal(0, 0.2, 100))
    low_a, high_a = sig.bootstrap_ci(ev_a, "rouge1", replicates=500)
    d = sig.paired_difference(ev_a, ev_b, "rouge1", replicates=500)
    assert high_a - low_a > 0.5 and d.low > 0 and d.p_value < 0.01


def test_paired_difference_on_mauve():
    rng = np.random.default_rng(0)
    n, dim = 96, 16
    ref = rng.normal(size=(n, dim))
    close = mauve_evidence(ref, [rng.normal(size=(n, dim)) for _ in range(2)], 8, [25, 26])
    far = mauve_evidence(ref, [rng.normal(size=(n, dim)) + 0.6 for _ in range(2)], 8, [25, 26])
    d = sig.paired_difference(close, far, "mauve", replicates=500)
    assert d.difference > 0 and d.p_value < 0.05 and d.low > 0
    assert d.a == sig.statistic(close, "mauve") and d.b == sig.statistic(far, "mauve")
    same = sig.paired_difference(close, close, "mauve", replicates=500)
    assert same.difference == 0 and same.p_value > 0.5 and same.low < 0 < same.high
    # One sampling and one k-means seed: nothing but the (shared) prompts is resampled, every d is 0.
    single = {**close, "seeds": [0], "mauve": {**close["mauve"], "kmeans_seeds": [25],
                                                "ref_labels": [close["mauve"]["ref_labels"][0][:1]],
                                                "gen_labels": [close["mauve"]["gen_labels"][0][:1]]}}
    exact = sig.paired_difference(single, single, "mauve", replicates=200)
    assert (exact.difference, exact.low, exact.high, exact.p_value) == (0, 0, 0, 1.0)


def test_not_significantly_worse():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0, 1, 80)
    best = difficulty + 1.0 + rng.normal(0, 0.3, 80)
    rows = {"best": per_prompt_evidence(best), "twin": per_prompt_evidence(best.copy()),
            "close": per_prompt_evidence(best + rng.normal(0, 0.3, 80) - 0.01),
            "worse": per_prompt_evidence(difficulty + rng.normal(0, 0.3, 80)),
            "no-evidence": {"n": 80, "seeds": [0]}}
    tied = sig.not_significantly_worse(rows, "rouge1", higher_is_better=True, replicates=400)
    assert tied == {"best", "twin", "close"}
    # Lower is better: the "worse" row is now the best one and stands alone.
    assert sig.not_significantly_worse(rows, "rouge1", higher_is_better=False, replicates=400) == {"worse"}
    ppl = {k: {"n": 3, "seeds": [0], "genppl": {"nll": [nll], "tokens": [[10, 10, 10]]}}
           for k, nll in {"good": [20.0, 21.0, 19.0], "bad": [60.0, 61.0, 59.0]}.items()}
    assert sig.not_significantly_worse(ppl, "gen_ppl", sig.higher_is_better("gen_ppl"), replicates=200) == {"good"}
    assert sig.not_significantly_worse({}, "mauve", True) == set()


def test_a_difference_without_p_value_is_not_a_tie(monkeypatch):
    """A row whose difference from the best cannot be estimated (NaN p) is not marked as tied with it."""
    rows = {"best": per_prompt_evidence(np.full(20, 2.0)), "other": per_prompt_evidence(np.full(20, 1.0))}
    untestable = sig.Difference("rouge1", 2.0, 1.0, 1.0, math.nan, math.nan, math.nan, 100)
    monkeypatch.setattr(sig, "paired_difference", lambda *args, **kwargs: untestable)
    assert sig.not_significantly_worse(rows, "rouge1", higher_is_better=True, replicates=100) == {"best"}


def test_higher_is_better():
    assert not sig.higher_is_better("gen_ppl")
    assert all(sig.higher_is_better(m) for m in ("mauve", "rouge1", "rouge2", "rougeL", "bertscore", "entropy"))
    with pytest.raises(ValueError, match="gen_tokens"):
        sig.higher_is_better("gen_tokens")


def test_bad_input():
    ev = per_prompt_evidence(np.arange(10.0))
    for level in (0, 1, 1.5):
        with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
            sig.bootstrap_ci(ev, "rouge1", level=level)
        with pytest.raises(ValueError, match="level"):
            sig.paired_difference(ev, ev, "rouge1", level=level)
    with pytest.raises(ValueError, match=r"10.*12"):
        sig.paired_difference(ev, per_prompt_evidence(np.arange(12.0)), "rouge1")
    for call in (lambda: sig.statistic(ev, "bleu"), lambda: sig.bootstrap_ci(ev, "bleu"),
                 lambda: sig.paired_difference(ev, ev, "bleu"), lambda: sig.bootstrap_ci(ev, "mauve")):
        with pytest.raises(ValueError, match="bleu|mauve"):
            call()
    with pytest.raises(ValueError, match="row b.*gen_ppl"):
        sig.paired_difference({"n": 1, "seeds": [0], "genppl": {"nll": [[1.0]], "tokens": [[1]]}},
                              {"n": 1, "seeds": [0]}, "gen_ppl")
    with pytest.raises(ValueError, match=r"n=10"):
        sig.statistic({"n": 10, "per_prompt": {"rouge1": [[0.0] * 9]}}, "rouge1")


# ---------------------------------------------------------------------------------------------- power
def test_detectable_difference_scales_as_one_over_sqrt_n_and_samples_needed_inverts_it():
    rng = np.random.default_rng(7)
    values = rng.normal(size=(1, 50))
    ev, tiled = per_prompt_evidence(values), per_prompt_evidence(np.tile(values, 4))
    d = sig.detectable_difference(ev, "rouge1", replicates=2000)
    d4 = sig.detectable_difference(tiled, "rouge1", replicates=2000)
    se = values.std() / math.sqrt(50)  # the bootstrap SE of a mean is the plug-in std / sqrt(n)
    assert d == pytest.approx((1.959964 + 0.841621) * math.sqrt(2) * se, rel=0.08)
    assert d4 / d == pytest.approx(0.5, abs=0.05)
    assert sig.samples_needed(ev, "rouge1", d, replicates=2000) == 50
    assert sig.samples_needed(ev, "rouge1", d / 2, replicates=2000) == 200
    assert sig.samples_needed(ev, "rouge1", d4, replicates=2000) == pytest.approx(200, rel=0.2)
    assert sig.detectable_difference(ev, "rouge1", alpha=0.01, replicates=2000) > d
    with pytest.raises(ValueError, match="difference"):
        sig.samples_needed(ev, "rouge1", 0.0)
    with pytest.raises(ValueError, match="alpha"):
        sig.detectable_difference(ev, "rouge1", alpha=1.0)
