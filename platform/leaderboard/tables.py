"""What the Markdown and HTML tables share: the expanded frame, grouping, ranking, the columns of a table and the
text of its metric cells (CI and seed spread folded in, the Gen-PPL entropy flag).

Ranking. Rows are only ever ranked against rows of the same protocol name *and* protocol hash on the same
dataset: the renderers always group by (protocol, protocol_hash, dataset), whatever else is asked for.

Cells. A metric ``<m>`` with ``<m>_ci_low`` / ``<m>_ci_high`` (protocol v3) shows as ``value [low, high]`` (the
bootstrap CI, scaled like the metric: x100 for ROUGE, BERTScore, MAUVE); a row with a seed spread ``<m>_std`` but
no CI (protocol v2) shows ``mean ± std``. The CI and std columns are folded into the metric's cell, never columns
of their own (unless one is the sort metric). Gen-PPL never appears without the unigram entropy right after it.

Flags. A row whose unigram entropy is below ``ENTROPY_FLAG_RATIO`` (0.8) x the entropy of the table's human
row gets its Gen-PPL cell prefixed ``⚠``, with a legend line: a low Gen-PPL there is degenerate repetition, not
quality. A table without a human row flags nothing.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import pandas as pd

from latentlm.platform.evaluation.significance import higher_is_better

from .cells import fmt_metric_ci, fmt_metric_std, is_number, metric_label, missing
from .schema import CEILING_METHODS, CI_HIGH, CI_LOW, METRICS, STD_SUFFIX, LeaderboardError, json_object

CURATED_EXTRAS = ("gen_ppl", "entropy", "diversity")  # extra metrics listed right after METRICS, in this order
ENTROPY_FLAG_RATIO = 0.8  # Gen-PPL is flagged when the row's unigram entropy < this x the human row's
FLAG_MARK = "⚠"


def expand(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``axis.<name>`` columns (object dtype, None where a row lacks the axis) and one float column per
    extra metric in ``metrics_json`` (named after the metric; ``metric.<name>`` if that clashes). It leaves
    ``evidence_json`` alone (it is per-prompt data, not a metric)."""
    out = df.copy()
    axes = [json_object(v) for v in df["axes"]]
    for name in sorted({k for a in axes for k in a}):
        out[f"axis.{name}"] = pd.Series([a.get(name) for a in axes], index=df.index, dtype=object)
    extras = [json_object(v) for v in df["metrics_json"]]
    for name in sorted({k for e in extras for k in e}):
        column = name if name not in out.columns else f"metric.{name}"
        out[column] = pd.Series([e.get(name) for e in extras], index=df.index, dtype=float)
    return out


def axis_columns(expanded: pd.DataFrame) -> list[str]:
    return [c for c in expanded.columns if c.startswith("axis.")]


def _extra_order(name: str) -> tuple:
    return (CURATED_EXTRAS.index(name), "") if name in CURATED_EXTRAS else (len(CURATED_EXTRAS), name)


def metric_columns(expanded: pd.DataFrame) -> list[str]:
    """Metric columns of an ``expand``-ed frame in display order: ``METRICS``, then ``CURATED_EXTRAS``
    (Gen-PPL, entropy, diversity), then the other extra metrics by name (``_std`` spreads included)."""
    extras = sorted({k for v in expanded["metrics_json"] for k in json_object(v)}) if len(expanded) else []
    out = []
    for name in sorted(extras, key=_extra_order):  # the name expand gave it (prefixed when it clashed)
        prefixed = f"metric.{name}"
        out.append(prefixed if prefixed in expanded.columns or name not in expanded.columns else name)
    return list(METRICS) + out


def std_column(metric: str, available: Iterable[str]) -> str | None:
    """The column holding ``metric``'s seed spread (``<metric>_std``) when there is one."""
    candidate = metric + STD_SUFFIX
    return candidate if not metric.endswith(STD_SUFFIX) and candidate in set(available) else None


def check_metric(expanded: pd.DataFrame, sort_by: str) -> None:
    available = metric_columns(expanded)
    if sort_by not in available:
        raise LeaderboardError(f"unknown metric {sort_by!r} to sort by; available: {', '.join(available)}")


def _group_keys(group_by: Sequence[str]) -> list[str]:
    keys = [k for k in group_by if k not in ("protocol", "protocol_hash")]
    return ["protocol", "protocol_hash"] + keys  # never rank rows of different protocols together


def groups(expanded: pd.DataFrame, group_by: Sequence[str]):
    """(key, rows) per ranked table: ``group_by`` plus, always, the protocol name and hash."""
    keys = _group_keys(group_by)
    absent = [k for k in keys if k not in expanded.columns]
    if absent:
        raise LeaderboardError(f"cannot group by unknown column(s) {', '.join(absent)}")
    labels = expanded[keys].astype(str)
    for key in sorted(set(map(tuple, labels.to_numpy().tolist()))):
        mask = (labels == list(key)).all(axis=1)
        yield dict(zip(keys, key)), expanded[mask]


# what a table none of whose rows has the requested metric ranks by (a few-shot task under the default MAUVE sort)
OWN_METRICS = ("accuracy", "exact_match")


def group_sort(group: pd.DataFrame, sort_by: str, descending: bool) -> tuple[str, bool]:
    """(metric, descending) one table ranks by: ``sort_by`` when any of its rows has it, else the first of
    ``OWN_METRICS`` that its rows have, in that metric's better direction."""
    if sort_by in group and group[sort_by].notna().any():
        return sort_by, descending
    for metric in OWN_METRICS:
        if metric in group and group[metric].notna().any():
            return metric, higher_is_better(metric)
    return sort_by, descending


def rank(group: pd.DataFrame, sort_by: str, descending: bool) -> pd.DataFrame:
    group = group.sort_values("row_id", kind="stable")
    return group.sort_values(sort_by, ascending=not descending, na_position="last", kind="stable")


def row_std(row: pd.Series, std: str | None) -> Any:
    """The row's seed spread for a metric, or None for a single-seed row (its std is 0 by construction)."""
    if not std:
        return None
    seeds = row.get("seeds", row.get("metric.seeds"))
    return None if is_number(seeds) and float(seeds) == 1 else row[std]


def row_ci(row: pd.Series, ci: tuple[str, str] | None) -> tuple[float, float] | None:
    if ci is None or any(missing(row.get(c)) for c in ci):
        return None
    return float(row[ci[0]]), float(row[ci[1]])


def heading(key: dict, sort_by: str, descending: bool, n: int) -> tuple[str, str]:
    """A table's title and the note under it."""
    extra = [f"{k}={v}" for k, v in key.items() if k not in ("protocol", "protocol_hash", "dataset")]
    title = " · ".join([key["protocol"], *([key["dataset"]] if "dataset" in key else []), *extra])
    order = "descending, best first" if descending else "ascending, best first"
    scale = "" if sort_by in OWN_METRICS else "; ROUGE, BERTScore, MAUVE (and its spreads) and recon acc x100"
    note = (f"protocol hash {key['protocol_hash'][:12]} · {n} row{'s' if n != 1 else ''} · sorted by "
            f"{metric_label(sort_by)} ({order}){scale}")
    return title, note


@dataclasses.dataclass(frozen=True)
class MetricColumn:
    """One metric column of a table and the columns folded into its cell: the seed spread ``<m>_std`` and
    the bootstrap CI (``<m>_ci_low``, ``<m>_ci_high``)."""
    metric: str
    std: str | None = None
    ci: tuple[str, str] | None = None


def _ci_columns(metric: str, available: Iterable[str]) -> tuple[str, str] | None:
    """The columns holding ``metric``'s CI bounds when it has both."""
    available = set(available)
    low, high = metric + CI_LOW, metric + CI_HIGH
    if metric.endswith((STD_SUFFIX, CI_LOW, CI_HIGH)) or low not in available or high not in available:
        return None
    return low, high


def _entropy_beside_gen_ppl(names: list[str]) -> list[str]:
    """``names`` with ``entropy`` right after ``gen_ppl``: a low Gen-PPL can be mere repetition, which only
    the unigram entropy beside it reveals, so Gen-PPL is never shown alone."""
    if "gen_ppl" not in names:
        return names
    rest = [n for n in names if n != "entropy"]
    at = rest.index("gen_ppl") + 1
    return rest[:at] + ["entropy"] + rest[at:]


def table_columns(group: pd.DataFrame, sort_by: str, hidden: frozenset = frozenset()
                  ) -> tuple[list[str], list[MetricColumn]]:
    """The axis columns with a value, and the metric columns with a value: a ``<m>_std`` or ``<m>_ci_*``
    column is folded into ``<m>``'s cell unless it is itself the sort metric. Metrics in ``hidden`` are left
    out (never the sort metric); ``entropy`` always follows ``gen_ppl``."""
    axes = [c for c in axis_columns(group) if not group[c].map(missing).all()]
    present = [m for m in metric_columns(group) if m in group.columns and group[m].notna().any()
               and m.removeprefix("metric.") not in hidden]
    if sort_by not in present:
        present.append(sort_by)
    present = _entropy_beside_gen_ppl(present)
    columns = [MetricColumn(m, std_column(m, present), _ci_columns(m, present)) for m in present]
    folded = {c.std for c in columns if c.std} | {bound for c in columns if c.ci for bound in c.ci}
    return axes, [c for c in columns if c.metric not in folded or c.metric == sort_by]


def _metric_cell(row: pd.Series, column: MetricColumn) -> tuple[str, str]:
    """A metric cell's text and what it shows beside the value: "ci" (the bootstrap CI, preferred), "std"
    (mean ± std over seeds, for rows without a CI, e.g. protocol v2 rows) or ""."""
    value = row.get(column.metric)
    ci = row_ci(row, column.ci)
    if ci is not None and not missing(value):
        return fmt_metric_ci(column.metric, value, *ci), "ci"
    std = row_std(row, column.std)
    text = fmt_metric_std(column.metric, value, std)
    return text, ("std" if text and not missing(std) else "")


def _ci_note(group: pd.DataFrame) -> str:
    """What ``a [l, h]`` means, with the CI level when the rows' protocols agree on one."""
    levels = set()
    for text in group["protocol_json"]:
        scoring = json_object(text).get("scoring")
        if isinstance(scoring, dict) and is_number(scoring.get("ci_level")):
            levels.add(float(scoring["ci_level"]))
    level = f"{100 * levels.pop():g}% " if len(levels) == 1 else ""
    return f"a [l, h] = value and its {level}bootstrap CI (prompts and seeds resampled)"


def spread_notes(group: pd.DataFrame, kinds: set[str]) -> str:
    """The note's explanation of the CI and ± cells the table shows (``kinds`` from ``metric_cells``)."""
    note = "; " + _ci_note(group) if "ci" in kinds else ""
    return note + ("; a ± b = mean ± std over evaluation seeds" if "std" in kinds else "")


def entropy_threshold(group: pd.DataFrame) -> float | None:
    """``ENTROPY_FLAG_RATIO`` x the (mean) unigram entropy of the table's human-ceiling rows; None without one."""
    if "entropy" not in group.columns:
        return None
    human = group.loc[group["method"].isin(CEILING_METHODS), "entropy"].dropna()
    return ENTROPY_FLAG_RATIO * float(human.mean()) if len(human) else None


def _entropy_flagged(row: pd.Series, threshold: float | None) -> bool:
    """Whether the row's Gen-PPL needs the warning: its entropy is far below the human row's."""
    entropy = row.get("entropy")
    return (threshold is not None and row["method"] not in CEILING_METHODS and not missing(row.get("gen_ppl"))
            and is_number(entropy) and float(entropy) < threshold)


def flag_legend() -> str:
    return (f"{FLAG_MARK}: unigram entropy below {ENTROPY_FLAG_RATIO:.0%} of the human row's; low Gen-PPL here "
            "signals degenerate repetition, not quality")


def metric_cells(row: pd.Series, metrics: list[MetricColumn], threshold: float | None
                 ) -> list[tuple[str, str, bool]]:
    """(text, kind from ``_metric_cell``, flagged) per metric column; a flagged Gen-PPL is prefixed ⚠."""
    cells = []
    for column in metrics:
        text, kind = _metric_cell(row, column)
        flagged = column.metric == "gen_ppl" and bool(text) and _entropy_flagged(row, threshold)
        cells.append((f"{FLAG_MARK} {text}" if flagged else text, kind, flagged))
    return cells
