"""The leaderboard as one self-contained HTML page: Jinja2 templates (``templates/``) with the CSS and JS of
``static/`` inlined and the SVG charts of ``plots``, so the page is one file that opens offline or as an
attachment. Python builds what each table, plot section and the progression viewer show; the templates lay it out.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from latentlm.models.checkpoint import atomic_write_text
from markupsafe import Markup

from .cells import PERCENT_METRICS, PERCENT_SPREADS, fmt_metric_std, fmt_value, is_number, metric_label, missing
from .markdown import to_markdown
from .marks import BEST_MARK, TIE_MARK, Marks, legends, significance_marks
from .plots import axis_plots, entropy_plots, slug
from .schema import CEILING_METHODS, FLOOR_METHODS, LeaderboardError, check_progression, utc_now
from .store import read
from .tables import (ENTROPY_FLAG_RATIO, MetricColumn, check_metric, entropy_threshold, expand, group_sort, groups,
                     heading, metric_cells, rank, row_std, spread_notes, table_columns)

_HERE = Path(__file__).parent


def _escape(value: Any) -> Any:
    """Autoescaping as ``html.escape`` writes it (``&#x27;``, ``&quot;``), as in the SVG fragments; values
    already marked safe (``Markup``: the charts, inlined files, script JSON) pass unchanged."""
    return value if hasattr(value, "__html__") else Markup(html.escape(str(value), quote=True))


def _static(name: str) -> Markup:
    """A file of ``static/``, inlined unchanged."""
    return Markup((_HERE / "static" / name).read_text(encoding="utf-8"))


_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True, finalize=_escape,
                          trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                          undefined=jinja2.StrictUndefined)
_ENV.globals["static"] = _static


def _data_value(value: Any) -> str:
    """A cell's sort key for the page's JS (``data-value``)."""
    if missing(value):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if is_number(value):
        return repr(float(value))
    return fmt_value(value)


def _value_columns(group: pd.DataFrame, axes: list[str], metrics: list[MetricColumn]) -> list[tuple[str, str, str]]:
    """(header, column, kind) of the columns that show a row's values: kind num/text decides the JS sort."""
    columns = [("method", "method", "text"), ("sweep", "sweep", "text"), ("trial", "trial", "text")]
    for a in axes:
        numeric = all(is_number(v) or isinstance(v, bool) or missing(v) for v in group[a])
        columns.append((a[len("axis."):], a, "num" if numeric else "text"))
    columns += [(metric_label(c.metric) + (" (x100)" if c.metric in PERCENT_METRICS | PERCENT_SPREADS else ""),
                 c.metric, "num") for c in metrics]
    return columns + [("seed", "seed", "num"), ("compute (s)", "compute_seconds", "num"),
                      ("checkpoint", "checkpoint", "text"), ("machine", "machine", "text"),
                      ("created (UTC)", "created_at", "text"), ("row", "row_id", "text"),
                      ("config", "config_hash", "text")]


def _metric_tip(row: pd.Series, column: MetricColumn, kind: str, flagged: bool, threshold: float | None) -> str:
    """The hover text of a metric cell: what the bracket or ± means, the seed spread behind a CI, the flag."""
    tips = []
    if kind == "ci":
        tips.append("value [bootstrap CI]")
        std = row_std(row, column.std)
        if not missing(std):
            tips.append("± " + fmt_metric_std(column.metric, row[column.metric], std).split(" ± ")[-1]
                        + " std over evaluation seeds")
    elif kind == "std":
        tips.append("mean ± std over evaluation seeds")
    if flagged:
        tips.append(f"unigram entropy {float(row['entropy']):.3g} < {threshold:.3g} "
                    f"({ENTROPY_FLAG_RATIO:.0%} of the human row's): low Gen-PPL from repetition")
    return "; ".join(tips)


def _cell(text: Any = "", value: Any = "", cls: str = "", title: Any = "", link: str = "") -> dict:
    """One ``<td>``: its text (or a link to the row's progression), sort value, class and hover text."""
    return {"text": text, "value": value, "cls": cls, "title": title, "link": link}


def _html_row(row: pd.Series, position: int, columns: list[tuple[str, str, str]], metrics: list[MetricColumn],
              marks: Marks, threshold: float | None, sort_by: str, with_progression: frozenset
              ) -> tuple[dict, bool, set[str]]:
    """One table row (rank, mark, ``columns``, progression link), whether a Gen-PPL cell in it is flagged, and what
    its metric cells show (``metric_cells``)."""
    shown = position if not missing(row[sort_by]) else ""
    mark = marks.mark(row["row_id"])
    cells = [_cell(shown or "-", shown, "num"),
             *([_cell(mark, {BEST_MARK: "2", TIE_MARK: "1"}.get(mark, ""), "mark")] if marks.shown else [])]
    texts = metric_cells(row, metrics, threshold)
    by_metric = {c.metric: (c, cell) for c, cell in zip(metrics, texts)}
    flagged = False
    for _, column, kind in columns:
        value, tip, cls = row.get(column), "", "num" if kind == "num" else ""
        if column in by_metric:
            metric, (text, what, flag) = by_metric[column]
            tip = _metric_tip(row, metric, what, flag, threshold)
            if flag:
                cls, flagged = "num flag", True
        elif column == "compute_seconds":
            text = "" if missing(value) else f"{float(value):.0f}"
        elif column in ("row_id", "config_hash"):
            text, cls = ("" if missing(value) else str(value)[:12]), "id"
        else:
            text = fmt_value(value)
        if column in ("row_id", "config_hash", "checkpoint") and text:
            tip = value
        cells.append(_cell(text, _data_value(value), cls, tip))
    if with_progression:  # the table has a progression column: link the rows that have one
        link = row["row_id"] if row["row_id"] in with_progression else ""
        cells.append(_cell(value="1" if link else "", link=link))
    kind = "ceiling" if row["method"] in CEILING_METHODS else ("floor" if row["method"] in FLOOR_METHODS else "")
    row_mark = {BEST_MARK: "best", TIE_MARK: "tied"}.get(mark, "")
    return {"id": row["row_id"], "kind": kind, "mark": row_mark, "cells": cells}, flagged, {k for _, k, _ in texts}


def _board(key: dict, group: pd.DataFrame, sort_by: str, descending: bool, progression_ids: frozenset) -> dict:
    """What ``board.html.j2`` shows of one ranked table."""
    sort_by, descending = group_sort(group, sort_by, descending)
    axes, metrics = table_columns(group, sort_by)
    marks = significance_marks(group, sort_by, descending)
    threshold = entropy_threshold(group)
    with_progression = progression_ids & set(group["row_id"])
    columns = _value_columns(group, axes, metrics)
    order = "descending" if descending else "ascending"
    first = [("#", None, "num"), *([(TIE_MARK, "_mark", "num")] if marks.shown else [])]  # rank, marks
    last = [("progression", "progression_json", "text")] if with_progression else []
    headers = [{"label": label, "kind": kind, "column": column or "rank", "order": order if column == sort_by else ""}
               for label, column, kind in first + columns + last]
    rows, flagged, kinds = [], False, set()
    for position, (_, row) in enumerate(rank(group, sort_by, descending).iterrows(), 1):
        line, flag, shown = _html_row(row, position, columns, metrics, marks, threshold, sort_by, with_progression)
        rows.append(line)
        flagged, kinds = flagged or flag, kinds | shown
    title, note = heading(key, sort_by, descending, len(group))
    note += spread_notes(group, kinds)
    if group["method"].isin(CEILING_METHODS).any():
        note += "; italic rows = reference ceiling (human vs human)"
    if group["method"].isin(FLOOR_METHODS).any():
        note += "; italic grey rows = floors (degenerate generators that must rank last; the trial names the kind)"
    protocols = sorted({t for t in group["protocol_json"] if isinstance(t, str) and t})
    board_id = slug("board", key.get("dataset", ""), *key.values())
    return {"id": board_id, "table_id": board_id[len("board-"):], "protocol": key["protocol"],
            "protocol_hash": key["protocol_hash"], "dataset": key.get("dataset", ""), "title": title, "note": note,
            "protocols": [json.dumps(json.loads(t), indent=2, sort_keys=True, ensure_ascii=False) for t in protocols],
            "sort_by": sort_by, "headers": headers, "rows": rows, "legends": legends(marks, sort_by, group, flagged)}


def _progression_entries(tables: list[tuple[dict, pd.DataFrame]], sort_by: str,
                         descending: bool) -> tuple[list[dict], int]:
    """The rows with a (valid) progression, in table order (group, then rank), and how many were skipped
    because their progression_json does not hold a valid progression (e.g. written by a newer version)."""
    entries, skipped = [], 0
    for _, group in tables:
        for _, row in rank(group, sort_by, descending).iterrows():
            text = row["progression_json"]
            if not isinstance(text, str) or not text:
                continue
            try:
                progression = check_progression(f"row {row['row_id']}", json.loads(text))
            except (LeaderboardError, ValueError):
                skipped += 1
                continue
            entries.append({"row_id": row["row_id"], "protocol_hash": row["protocol_hash"], "seed": row["seed"],
                            "label": " · ".join(fmt_value(row[c]) for c in ("method", "trial", "dataset")),
                            **{k: progression[k] for k in ("prompt", "reference", "total_steps", "steps", "texts")}})
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["label"]] = counts.get(entry["label"], 0) + 1
    for entry in entries:  # the same method/trial/dataset under several protocols or seeds: say which
        if counts[entry["label"]] > 1:
            entry["label"] += f" (protocol {entry['protocol_hash'][:8]}, seed {entry['seed']})"
    return entries, skipped


def _script_json(obj: Any) -> Markup:
    """JSON safe inside a <script> element: no '<', '>' or '&' (so no '</script>' or '<!--'), and no
    U+2028/U+2029; JSON.parse reads the \\u escapes back to the same text."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return Markup(text)


def _figures_by_group(plots: list[tuple[dict, str, str]]) -> list[tuple[dict | None, Markup]]:
    """(plot-group key to head it with, or None, figure): a heading per plot group when there are several."""
    several = len({(k["protocol"], k["scoring_hash"]) for k, _, _ in plots}) > 1
    out, current = [], None
    for key, _, figure in plots:
        group = (key["protocol"], key["scoring_hash"])
        out.append((key if several and group != current else None, Markup(figure)))
        current = group
    return out


def html_page(df: pd.DataFrame, title: str = "latentlm leaderboard", sort_by: str = "mauve",
              descending: bool = True) -> str:
    """The whole page as a string: inline CSS, inline SVG plots, a few lines of inline JS; no network."""
    if not len(df):
        return _ENV.get_template("page.html.j2").render(title=title, boards=[])
    expanded = expand(df)
    check_metric(expanded, sort_by)
    tables = list(groups(expanded, ("dataset",)))
    entries, skipped = _progression_entries(tables, sort_by, descending)
    progression_ids = frozenset(entry["row_id"] for entry in entries)
    boards = [_board(key, group, sort_by, descending, progression_ids) for key, group in tables]
    titles = [board["title"] for board in boards]
    for board in boards:  # tables of one title (several protocol hashes): the contents say which
        shared = titles.count(board["title"]) > 1
        board["link"] = board["title"] + (f" ({board['protocol_hash'][:8]})" if shared else "")
    data = {e["row_id"]: {k: e[k] for k in ("label", "prompt", "reference", "total_steps", "steps", "texts")}
            for e in entries}
    return _ENV.get_template("page.html.j2").render(
        title=title, boards=boards, rows=len(df), generated=utc_now()[:19], sort_label=metric_label(sort_by),
        order="descending" if descending else "ascending",
        axis_title=metric_label(sort_by) + (" and unigram entropy" if sort_by == "gen_ppl" else ""),
        axis_figures=_figures_by_group(axis_plots(df, sort_by)), plane_figures=_figures_by_group(entropy_plots(df)),
        entries=entries, skipped=skipped, progression_data=_script_json(data))


def to_html(df: pd.DataFrame, path: str | os.PathLike, title: str = "latentlm leaderboard", sort_by: str = "mauve",
            descending: bool = True) -> Path:
    """Write the self-contained page atomically (a directory means ``<dir>/leaderboard.html``); returns its path."""
    text = os.fspath(path)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        path = path / "leaderboard.html"
    atomic_write_text(path, html_page(df, title, sort_by, descending))
    return path


def render(path: str | os.PathLike, out_dir: str | os.PathLike, sort_by: str = "mauve",
           title: str = "latentlm leaderboard", descending: bool = True) -> tuple[Path, Path]:
    """Write ``leaderboard.md`` and ``leaderboard.html`` for one leaderboard file into ``out_dir``."""
    df = read(path)
    out_dir = Path(out_dir)
    markdown, page = to_markdown(df, sort_by, descending=descending), html_page(df, title, sort_by, descending)
    md_path, html_path = out_dir / "leaderboard.md", out_dir / "leaderboard.html"
    atomic_write_text(md_path, f"# {title}\n\n{markdown}")
    atomic_write_text(html_path, page)
    return md_path, html_path
