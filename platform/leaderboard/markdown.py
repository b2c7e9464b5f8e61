"""The leaderboard as Markdown: one ranked table per (protocol, protocol hash, dataset), legends under each."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from .cells import fmt_seconds, fmt_value, metric_label, missing
from .marks import BEST_MARK, TIE_MARK, legends, significance_marks
from .schema import CEILING_METHODS, FLOOR_METHODS
from .tables import (check_metric, entropy_threshold, expand, group_sort, groups, heading, metric_cells, rank,
                     spread_notes, table_columns)

MARKDOWN_HIDDEN = frozenset(("eval_seconds", "sample_seconds_per_seq", "samples", "seeds"))  # bookkeeping:
# the protocol fixes samples/seeds and timings on a shared box are no result; the HTML page keeps them


def _reference_note(group: pd.DataFrame) -> str:
    note = ""
    if group["method"].isin(CEILING_METHODS).any():
        note += f"; {', '.join(sorted(CEILING_METHODS))} = reference ceiling"
    if group["method"].isin(FLOOR_METHODS).any():
        note += (f"; {', '.join(sorted(FLOOR_METHODS))} = must-lose reference (a degenerate generator, named by its "
                 "trial)")
    return note


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown_table(key: dict, group: pd.DataFrame, sort_by: str, descending: bool) -> str:
    sort_by, descending = group_sort(group, sort_by, descending)
    axes, metrics = table_columns(group, sort_by, MARKDOWN_HIDDEN)
    marks = significance_marks(group, sort_by, descending)
    threshold = entropy_threshold(group)
    headers = ["#", *([TIE_MARK] if marks.shown else []), "method", "sweep", "trial",
               *[a[len("axis."):] for a in axes],
               *[f"**{metric_label(c.metric)}**" if c.metric == sort_by else metric_label(c.metric) for c in metrics],
               "seed", "compute"]
    rows, kinds, flagged = [], set(), False
    for position, (_, row) in enumerate(rank(group, sort_by, descending).iterrows(), 1):
        cells = metric_cells(row, metrics, threshold)
        kinds |= {kind for _, kind, _ in cells}
        flagged |= any(flag for _, _, flag in cells)
        mark = marks.mark(row["row_id"])
        texts = [str(position) if not missing(row[sort_by]) else "-",
                 *([f"**{mark}**" if mark == BEST_MARK else mark] if marks.shown else []),
                 fmt_value(row["method"]), fmt_value(row["sweep"]), fmt_value(row["trial"]),
                 *[fmt_value(row[a]) for a in axes], *[text for text, _, _ in cells],
                 fmt_value(row["seed"]), fmt_seconds(row["compute_seconds"])]
        rows.append("| " + " | ".join(map(_md_cell, texts)) + " |")
    title, note = heading(key, sort_by, descending, len(group))
    note += spread_notes(group, kinds) + _reference_note(group)
    lines = [f"## {_md_cell(title)}", "", _md_cell(note), "", "| " + " | ".join(map(_md_cell, headers)) + " |",
             "|" + "---|" * len(headers), *rows]
    for legend in legends(marks, sort_by, group, flagged):
        lines += ["", _md_cell(legend)]
    return "\n".join(lines) + "\n"


def to_markdown(df: pd.DataFrame, sort_by: str = "mauve", group_by: Sequence[str] = ("protocol", "dataset"),
                descending: bool = True) -> str:
    """One Markdown table per (protocol, protocol_hash, dataset), ranked by ``sort_by``, with significance
    marks and the Gen-PPL entropy flag and their legends under it."""
    if not len(df):
        return "_No leaderboard rows._\n"
    expanded = expand(df)
    check_metric(expanded, sort_by)
    return "\n".join(_markdown_table(key, group, sort_by, descending) for key, group in groups(expanded, group_by))
