"""Significance marks of a ranked table: which rows are statistically tied with its best model row.

In each ranked table the best *model* row with evidence for the sort metric is the yardstick: never a floor (a
degenerate generator can win one metric, e.g. the top-token floor's tiny Gen-PPL) nor the human ceiling (a bound,
not a competitor). The other models and the floors with evidence are tested against it with
``significance.not_significantly_worse`` / ``paired_difference`` (paired bootstrap over prompts,
``SIGNIFICANCE_REPLICATES`` replicates, fixed ``SIGNIFICANCE_SEED``, so renders are deterministic): the best row
is marked ``best`` and the rows not significantly different from it at p < ``SIGNIFICANCE_ALPHA`` are marked
``≈``, in a narrow column after the rank, with a legend under the table (which also counts the rows without
evidence, which get no mark). Tables with fewer than two such rows, or no such model row (all v2 tables), have
no marks column.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Mapping

import pandas as pd

from latentlm.platform.evaluation import significance

from .cells import metric_label
from .schema import CEILING_METHODS, FLOOR_METHODS, json_object
from .tables import flag_legend, rank

SIGNIFICANCE_ALPHA = 0.05  # marks: rows whose paired test against the best gives p >= this are "tied"
SIGNIFICANCE_REPLICATES = 1000
SIGNIFICANCE_SEED = 0  # fixed, so a rendered table is the same every time
TIE_MARK, BEST_MARK = "≈", "best"


def evidence_metrics(evidence: Mapping[str, Any]) -> list[str]:
    """The metrics a row's evidence supports paired comparisons for (the format ``significance`` reads)."""
    out = [m for m, part in (("mauve", "mauve"), ("gen_ppl", "genppl")) if evidence.get(part)]
    per_prompt = evidence.get("per_prompt")
    return out + sorted(per_prompt) if isinstance(per_prompt, dict) else out


@functools.lru_cache(maxsize=64)
def _tied_with_best(evidence: tuple[tuple[str, str], ...], metric: str, higher: bool,
                    floors: tuple[tuple[str, str], ...] = ()) -> tuple[str | None, frozenset]:
    """(best row id, ids of the rows not significantly different from it) among the models' ``(row id,
    evidence JSON)``; the ``floors`` are tested against that best but can never be it. Cached: the Markdown
    and the HTML of one render test the same tables."""
    parsed = {row_id: json.loads(text) for row_id, text in evidence}
    kept = significance.not_significantly_worse(parsed, metric, higher_is_better=higher, alpha=SIGNIFICANCE_ALPHA,
                                                replicates=SIGNIFICANCE_REPLICATES, seed=SIGNIFICANCE_SEED)
    if not kept:
        return None, frozenset()
    points = {row_id: significance.statistic(parsed[row_id], metric) for row_id in sorted(kept)}
    best = (max if higher else min)(points, key=points.__getitem__)
    tied = set(kept - {best})
    for row_id, text in floors:
        diff = significance.paired_difference(parsed[best], json.loads(text), metric,
                                              replicates=SIGNIFICANCE_REPLICATES, seed=SIGNIFICANCE_SEED)
        if math.isfinite(diff.p_value) and diff.p_value >= SIGNIFICANCE_ALPHA:  # NaN (no value): untied
            tied.add(row_id)
    return best, frozenset(tied)


@dataclasses.dataclass(frozen=True)
class Marks:
    """Significance marks of one ranked table."""
    best: str | None = None
    tied: frozenset = frozenset()
    untested: int = 0  # competing rows without evidence for the metric
    error: str = ""

    @property
    def shown(self) -> bool:
        return self.best is not None or bool(self.error)

    def mark(self, row_id: str) -> str:
        return BEST_MARK if row_id == self.best else (TIE_MARK if row_id in self.tied else "")


def significance_marks(group: pd.DataFrame, metric: str, descending: bool) -> Marks:
    """Which rows of a table are tied with its best on ``metric`` (paired bootstrap over prompts). The best is
    a model: a floor is tested against it but never is it (a top-token floor would otherwise be the "best"
    Gen-PPL that every model is measured against); the human ceiling is a bound, not a competitor, and is not
    tested. Needs a model and one more row with evidence."""
    competitors = group[~group["method"].isin(CEILING_METHODS)]
    evidence, floors = {}, {}
    for row_id, method, text in zip(competitors["row_id"], competitors["method"], competitors["evidence_json"]):
        if metric in evidence_metrics(json_object(text)):
            (floors if method in FLOOR_METHODS else evidence)[row_id] = text
    if not evidence or len(evidence) + len(floors) < 2:
        return Marks()
    untested = len(competitors) - len(evidence) - len(floors)
    try:
        best, tied = _tied_with_best(tuple(sorted(evidence.items())), metric, descending, tuple(sorted(floors.items())))
    except (ValueError, KeyError, TypeError, IndexError) as err:  # rows not paired, or malformed evidence
        return Marks(untested=untested, error=str(err) or type(err).__name__)
    top = rank(competitors[competitors["row_id"].isin(list(evidence))], metric, descending).iloc[0]
    stored = competitors.set_index("row_id")[metric]
    if best is not None and not math.isclose(stored[best], top[metric], rel_tol=1e-9, abs_tol=1e-12):
        # the bootstrap's best must be the table's: otherwise the evidence does not back the stored values
        return Marks(untested=untested, error=f"the evidence ranks row {best[:12]} best, the table ranks "
                                              f"{top['row_id'][:12]} first (evidence and stored values disagree)")
    return Marks(best, tied, untested)


def _marks_legend(marks: Marks, metric: str, group: pd.DataFrame) -> str:
    label = metric_label(metric)
    if marks.error:
        return f"{TIE_MARK} marks not computed for {label}: {marks.error}"
    text = (f"{BEST_MARK} = the top model row by {label} (a floor is never the best); rows marked {TIE_MARK} are not "
            f"significantly different from the best at p < {SIGNIFICANCE_ALPHA:g}, paired bootstrap over prompts "
            f"({SIGNIFICANCE_REPLICATES} replicates)")
    if marks.untested:
        text += f"; {marks.untested} row(s) without per-prompt evidence for {label} are not tested"
    if group["method"].isin(CEILING_METHODS).any():
        text += "; the human ceiling is a bound, not a competitor, and is not tested"
    return text


def legends(marks: Marks, metric: str, group: pd.DataFrame, flagged: bool) -> list[str]:
    """The lines under a table: the marks legend when it has marks, the flag legend when a cell is flagged."""
    return ([_marks_legend(marks, metric, group)] if marks.shown else []) + ([flag_legend()] if flagged else [])
