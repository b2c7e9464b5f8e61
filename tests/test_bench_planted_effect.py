"""The planted-effect benchmark's verdicts (``experiments/bench_planted_effect.py``): what counts as the protocol
detecting that the longer-trained run is better. Fast and Ray-free: synthetic comparison rows."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "bench_planted_effect", Path(__file__).resolve().parents[1] / "experiments" / "bench_planted_effect.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def row(dataset: str, metric: str, difference: float, p_value: float) -> dict:
    better = difference > 0 if metric in ("mauve", "entropy", "rouge1") else difference < 0
    return {"dataset": dataset, "metric": metric, "short": 1.0, "long": 1.0 + difference, "difference": difference,
            "low": difference - 0.1, "high": difference + 0.1, "p_value": p_value,
            "detected": bool(better and p_value < 0.05)}


@pytest.mark.parametrize("entropy_change, entropy_p, counted", [
    (-0.45, 0.002, False),  # lower Gen-PPL bought with repetitive text: not an improvement
    (-0.02, 0.4, True),     # entropy unchanged: a real Gen-PPL gain
    (+0.10, 0.01, True),    # entropy rose: still a gain
])
def test_a_gen_ppl_gain_counts_only_if_entropy_did_not_fall(entropy_change, entropy_p, counted):
    rows = bench.discount_entropy_drops([row("d", "gen_ppl", -20.0, 0.002), row("d", "entropy", entropy_change,
                                                                                   entropy_p),
                                         row("other", "gen_ppl", -20.0, 0.002)])
    by = {(r["dataset"], r["metric"]): r for r in rows}
    assert by[("d", "gen_ppl")]["detected"] is counted
    assert bench.verdict(by[("d", "gen_ppl")]) == ("yes" if counted else "no (entropy fell)")
    assert by[("other", "gen_ppl")]["detected"]  # another dataset's entropy says nothing about this one


def test_a_worse_or_insignificant_gen_ppl_is_a_plain_no_whatever_entropy_did():
    rows = bench.discount_entropy_drops([row("d", "gen_ppl", +8.0, 0.44), row("d", "entropy", -0.06, 0.01),
                                         row("d", "mauve", -0.1, 0.5)])
    assert [bench.verdict(r) for r in rows] == ["no", "no", "no"]
