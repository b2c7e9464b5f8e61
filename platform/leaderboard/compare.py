"""Paired comparison of two leaderboard rows (``latentlm compare``): a paired bootstrap of A - B on every metric
both rows have evidence for. Rows must share dataset and scoring hash (the same prompts and scorers); a different
protocol hash (sampler settings) is allowed and noted."""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Iterable, Sequence

import pandas as pd

from latentlm.platform.evaluation import significance

from .cells import PERCENT_METRICS, fmt_value, metric_label, missing
from .marks import evidence_metrics
from .schema import CEILING_METHODS, LeaderboardError, check_evidence, is_int, json_object, scoring_key
from .tables import FLAG_MARK, entropy_threshold, expand, flag_legend

COMPARE_ORDER = ("mauve", "gen_ppl", "entropy", "rouge1", "rouge2", "rougeL", "bertscore")  # then the rest by name


def row_label(row: pd.Series) -> str:
    return f"{str(row['row_id'])[:12]} ({fmt_value(row['method'])} · {fmt_value(row['trial'])} · {row['dataset']})"


def _candidates(rows: pd.DataFrame, spec: str) -> pd.DataFrame:
    """Rows named by ``spec``: its exact row id, else the row ids it prefixes (>= 6 characters) and the rows
    of a trial of that name."""
    exact = rows[rows["row_id"] == spec]
    if len(exact):
        return exact
    named = rows["trial"] == spec
    if len(spec) >= 6:
        named |= rows["row_id"].str.startswith(spec.lower())
    return rows[named]


def find_row(df: pd.DataFrame, spec: str, dataset: str | None = None,
             sources: Sequence[str | os.PathLike] = ()) -> pd.Series:
    """The one row ``spec`` names in ``df``: a row id, a unique row-id prefix of at least 6 characters, or a
    trial name (a trial has a row per dataset: ``dataset`` picks one). Errors name the candidates, or the
    files searched (``sources``)."""
    rows = df if dataset is None else df[df["dataset"] == dataset]
    found = _candidates(rows, spec)
    if len(found) == 1:
        return found.iloc[0]
    if not len(found):
        where = ", ".join(map(str, sources)) or "the given rows"
        elsewhere = sorted(set(_candidates(df, spec)["dataset"])) if dataset is not None else []
        hint = f" (it names rows on dataset(s) {', '.join(elsewhere)})" if elsewhere else ""
        on = f" on dataset {dataset!r}" if dataset is not None else ""
        raise LeaderboardError(f"no row matches {spec!r}{on} (a row id, a row-id prefix of at least 6 characters, "
                               f"or a trial name) in {where}{hint}")
    listed = "; ".join(f"{row_label(r)} {r['protocol']} {str(r['protocol_hash'])[:8]}" for _, r in found.iterrows())
    raise LeaderboardError(f"{spec!r} matches {len(found)} rows: {listed}; name one by its row id (or a longer "
                           "prefix), or add --dataset NAME")


def check_compare_options(level: float, replicates: int, seed: int = 0) -> None:
    if not (isinstance(level, numbers.Real) and 0 < level < 1):
        raise LeaderboardError(f"--level: a confidence level in (0, 1), e.g. 0.95; got {level!r}")
    if not is_int(replicates) or replicates < 2:
        raise LeaderboardError(f"--replicates: at least 2 bootstrap replicates, got {replicates!r}")
    if not is_int(seed) or seed < 0:  # numpy's generator rejects it later, with a message naming a metric
        raise LeaderboardError(f"--seed: a non-negative integer, got {seed!r}")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired comparison of rows ``a`` and ``b`` over their ``n`` shared prompts: one
    ``significance.Difference`` (a - b) per metric both rows have evidence for."""
    a: pd.Series
    b: pd.Series
    n: int
    differences: tuple
    notes: tuple[str, ...]
    level: float
    replicates: int
    seed: int
    entropy_threshold: float | None = None  # ENTROPY_FLAG_RATIO x the matching human row's entropy, when known

    def flagged(self, which: str) -> bool:
        """Whether row ``which`` ("a" or "b") has its Gen-PPL flagged: entropy far below the human row's."""
        entropy = next((getattr(d, which) for d in self.differences if d.metric == "entropy"), None)
        return (self.entropy_threshold is not None and entropy is not None and math.isfinite(entropy)
                and entropy < self.entropy_threshold)


def human_entropy_threshold(board: pd.DataFrame, row: pd.Series) -> float | None:
    """The Gen-PPL flag threshold of ``row``'s tables: ``ENTROPY_FLAG_RATIO`` x the mean unigram entropy of the
    human-ceiling rows on its protocol name, scoring key and dataset; None without such a row."""
    key = (row["protocol"], scoring_key(row["protocol_json"], row["protocol_hash"]), row["dataset"])
    human = board[board["method"].isin(CEILING_METHODS)]
    human = human[[(p, scoring_key(t, h), d) == key for p, t, h, d in
                   zip(human["protocol"], human["protocol_json"], human["protocol_hash"], human["dataset"])]]
    return entropy_threshold(expand(human)) if len(human) else None


def _row_evidence(row: pd.Series, name: str) -> dict:
    evidence = json_object(row.get("evidence_json"))
    if not evidence:
        raise LeaderboardError(f"row {name} {row_label(row)} has no per-prompt evidence: it predates protocol v3's "
                               f"per-prompt evidence (its protocol is {row['protocol']}); re-evaluate it under v3 "
                               "to compare it")
    return check_evidence(f"row {name} {row_label(row)}: evidence_json", evidence)


def _check_pairable(a: pd.Series, b: pd.Series, ev_a: dict, ev_b: dict) -> None:
    """Paired rows must share their prompts: one dataset, one scoring protocol, one prompt count."""
    if a["dataset"] != b["dataset"]:
        raise LeaderboardError(f"rows of different datasets cannot be paired: A {row_label(a)} is on "
                               f"{a['dataset']!r}, B {row_label(b)} on {b['dataset']!r}")
    key_a, key_b = (scoring_key(row["protocol_json"], row["protocol_hash"]) for row in (a, b))
    if key_a != key_b:
        raise LeaderboardError(f"rows of different scoring protocols cannot be paired: A {row_label(a)} has "
                               f"{key_a[0]} {key_a[1]}, B {row_label(b)} has {key_b[0]} {key_b[1]}; such rows use "
                               "different prompts or scorers")
    if ev_a["n"] != ev_b["n"]:
        raise LeaderboardError(f"rows are not paired: A {row_label(a)} has evidence for {ev_a['n']} prompts, "
                               f"B {row_label(b)} for {ev_b['n']}")


def _compare_order(metrics: Iterable[str]) -> list[str]:
    return sorted(metrics, key=lambda m:
                  (COMPARE_ORDER.index(m), "") if m in COMPARE_ORDER else (len(COMPARE_ORDER), m))


def compare_rows(a: pd.Series, b: pd.Series, level: float = 0.95, replicates: int = 1000,
                 seed: int = 0, board: pd.DataFrame | None = None) -> Comparison:
    """Paired bootstrap of A - B on every metric both rows have evidence for (``significance.paired_difference``).
    Rows must share dataset and scoring hash; a different protocol hash (sampler settings) only adds a note.
    With the ``board`` the rows come from, a Gen-PPL whose row's entropy is far below the human ceiling's is
    flagged as in the tables (``human_entropy_threshold``)."""
    check_compare_options(level, replicates, seed)
    ev_a, ev_b = _row_evidence(a, "A"), _row_evidence(b, "B")
    _check_pairable(a, b, ev_a, ev_b)
    metrics = _compare_order(set(evidence_metrics(ev_a)) & set(evidence_metrics(ev_b)))
    if not metrics:
        raise LeaderboardError(f"rows A {row_label(a)} and B {row_label(b)} share no metric with per-prompt evidence")
    differences = []
    for metric in metrics:
        try:
            differences.append(significance.paired_difference(ev_a, ev_b, metric, level, replicates, seed))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise LeaderboardError(f"{metric}: cannot compare A {row_label(a)} with B {row_label(b)}: {err}") from None
    notes = []
    if a["protocol_hash"] != b["protocol_hash"]:
        notes.append(f"note: the rows differ in sampler settings (protocol hashes {str(a['protocol_hash'])[:12]} vs "
                     f"{str(b['protocol_hash'])[:12]}); they share prompts and scorers, so they are paired")
    if a["row_id"] == b["row_id"]:
        notes.append("note: A and B are the same row")
    threshold = human_entropy_threshold(board, a) if board is not None else None
    return Comparison(a, b, int(ev_a["n"]), tuple(differences), tuple(notes), float(level), int(replicates), int(seed),
                      threshold)


def _compare_decimals(diff) -> int:
    """Decimals for one metric's line: 2 for percent metrics (shown x100), else 4 significant digits of the
    larger row value, so the values, the difference and its CI line up."""
    if diff.metric in PERCENT_METRICS:
        return 2
    size = max((abs(v) for v in (diff.a, diff.b) if math.isfinite(v) and v), default=1.0)
    return max(0, 3 - math.floor(math.log10(size)))


def _fmt_compare(metric: str, value: float, decimals: int, signed: bool = False) -> str:
    if missing(value) or not math.isfinite(value):
        return "n/a"
    scaled = 100 * value if metric in PERCENT_METRICS else value
    return f"{scaled:{'+' if signed else ''}.{decimals}f}"


def _fmt_p(p: float) -> str:
    if missing(p) or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _verdict(diff, alpha: float) -> str:
    """Which row is better, when the difference is significant at ``alpha``."""
    if not (math.isfinite(diff.p_value) and diff.p_value < alpha):
        return "no significant difference"
    try:
        higher = significance.higher_is_better(diff.metric)
    except ValueError:
        return "differ"
    return "A better" if (diff.difference > 0) == higher else "B better"


def _aligned(rows: list[list[str]], left: frozenset = frozenset({0})) -> list[str]:
    """Rows as text columns: the columns in ``left`` left-aligned, the others (numbers) right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def format_comparison(c: Comparison) -> str:
    level = f"{100 * c.level:g}%"
    scoring = scoring_key(c.a["protocol_json"], c.a["protocol_hash"])
    head = [f"{c.a['protocol']} · {c.a['dataset']} · {c.n} prompts, paired by index · "
            f"{scoring[0].replace('_', ' ')} {scoring[1][:12]}",
            f"A = {row_label(c.a)}, protocol hash {str(c.a['protocol_hash'])[:12]}",
            f"B = {row_label(c.b)}, protocol hash {str(c.b['protocol_hash'])[:12]}", *c.notes, ""]
    table = [["metric", "A", "B", "A − B", f"{level} CI", "p", "verdict"]]
    for d in c.differences:
        label = metric_label(d.metric) + (" (x100)" if d.metric in PERCENT_METRICS else "")
        digits = _compare_decimals(d)
        ci = f"[{_fmt_compare(d.metric, d.low, digits, True)}, {_fmt_compare(d.metric, d.high, digits, True)}]"
        shown = {which: _fmt_compare(d.metric, getattr(d, which), digits) for which in ("a", "b")}
        if d.metric == "gen_ppl":
            shown = {which: f"{FLAG_MARK} {text}" if c.flagged(which) else text for which, text in shown.items()}
        table.append([label, shown["a"], shown["b"],
                      _fmt_compare(d.metric, d.difference, digits, True), ci, _fmt_p(d.p_value),
                      _verdict(d, 1 - c.level)])
    lines = _aligned(table, frozenset({0, len(table[0]) - 1}))
    foot = (f"A − B and its {level} CI: paired bootstrap over prompts (the same resampled prompts for both rows, "
            f"seeds resampled per row; {c.replicates} replicates, seed {c.seed}); p: two-sided test of no difference; "
            f"verdict at p < {1 - c.level:.3g}")
    if any(d.metric == "gen_ppl" for d in c.differences):
        if c.entropy_threshold is None:
            foot += "\nno human-ceiling row on this protocol and dataset: Gen-PPL is not checked against its entropy"
        elif c.flagged("a") or c.flagged("b"):
            foot += f"\n{flag_legend()} ({c.entropy_threshold:.3g})"
    return "\n".join(head + lines + ["", foot]) + "\n"
