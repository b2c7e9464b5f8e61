"""Leaderboards: one row per (evaluated trial, eval dataset) in one Parquet file, merged across sweeps and
machines without duplicates, rendered as Markdown and as one self-contained HTML page.

Identity. ``row_id`` = sha256 over (method, protocol_hash, dataset, config_hash, seed), where
``config_hash`` = sha256 of the trial's config as canonical JSON (sorted keys). Re-running a trial (a
restored sweep, the same sweep on another machine) maps to the same row and the newest ``created_at``
wins. Sweep, trial name, machine, checkpoint path and compute are deliberately *not* part of the identity,
so a config should hold what defines the model and its evaluation, not machine-local paths.

Ranking. Rows are only ever ranked against rows of the same protocol name *and* protocol hash on the same
dataset: the renderers always group by (protocol, protocol_hash, dataset), whatever else is asked for.

Storage. ``Leaderboard.add`` / ``merge`` read what is on disk, de-duplicate and write a temp file that
replaces the old one (``os.replace``) while holding ``<file>.lock`` (``filelock``), so concurrent trials on
one machine lose no rows and readers never see a torn file. Across machines, let each write its own file
and ``merge`` them (``latentlm leaderboard A B --merge-into C``). Reading checks the schema and names the
file on any problem; columns this version does not know (written by a newer one) are kept, not dropped.

Row schema (``COLUMNS``; one row per trial x eval dataset):
    row_id, method, sweep, trial, dataset, protocol, protocol_hash   strings
    axes            JSON object of the trial's ablation axes ({"vae.latent_dim": 16, ...})
    rouge1 rouge2 rougeL bertscore mauve recon_acc gen_tokens        float64, null when not measured
    metrics_json    JSON object of any other numeric metric (samples, eval_seconds, gen_ppl, ...)
    seed (int64), compute_seconds (float64, the trial's total), checkpoint, config_hash, machine,
    created_at (UTC ISO 8601)
``expand`` turns ``axes`` into ``axis.<name>`` columns and ``metrics_json`` into one column per metric.

Rendering never imports matplotlib: the per-axis plots are hand-written inline SVG (no fonts, no network).
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import numbers
import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from latentlm.models.checkpoint import atomic_write, atomic_write_text

SCHEMA_VERSION = 1
SCHEMA_KEY = b"latentlm.leaderboard.schema"
FILENAME = "leaderboard.parquet"

METRICS = ("rouge1", "rouge2", "rougeL", "bertscore", "mauve", "recon_acc", "gen_tokens")
PERCENT_METRICS = frozenset(("rouge1", "rouge2", "rougeL", "bertscore", "mauve", "recon_acc"))  # shown x100
METRIC_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bertscore": "BERTScore",
                 "mauve": "MAUVE", "recon_acc": "recon acc", "gen_tokens": "gen tokens"}
CEILING_METHODS = frozenset({"human"})  # reference rows (human-vs-human): ranked, drawn as lines in plots

SCHEMA = pa.schema([
    ("row_id", pa.string()), ("method", pa.string()), ("sweep", pa.string()), ("trial", pa.string()),
    ("dataset", pa.string()), ("protocol", pa.string()), ("protocol_hash", pa.string()), ("axes", pa.string()),
    *[(name, pa.float64()) for name in METRICS], ("metrics_json", pa.string()),
    ("seed", pa.int64()), ("compute_seconds", pa.float64()), ("checkpoint", pa.string()),
    ("config_hash", pa.string()), ("machine", pa.string()), ("created_at", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)
REQUIRED = ("row_id", "method", "dataset", "protocol", "protocol_hash", "config_hash", "seed", "created_at")


class LeaderboardError(ValueError):
    """A leaderboard file or row cannot be used. The message names the file (or the offending field)."""


# -- rows ------------------------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace; dataclasses, paths and numpy scalars allowed."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise LeaderboardError(f"not JSON-serialisable: {err}") from err


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_hash(config: Mapping[str, Any] | Any) -> str:
    return _sha256(canonical_json(config))


def make_row_id(method: str, protocol_hash: str, dataset: str, config_hash: str, seed: int) -> str:
    return _sha256(canonical_json([method, protocol_hash, dataset, config_hash, int(seed)]))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise LeaderboardError(f"{field}: expected a non-empty string, got {value!r}")
    return value


def _number(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LeaderboardError(f"{field}: expected a number, got {value!r}")
    value = float(value)
    return None if math.isnan(value) else value


def make_rows(method: str, sweep: str, trial: str, axes: Mapping[str, Any] | None,
              results: Mapping[str, Mapping[str, float]], protocol: str, protocol_hash: str, seed: int,
              compute_seconds: float | None, checkpoint: str | os.PathLike | None, config: Mapping[str, Any] | Any,
              *, machine: str | None = None, created_at: str | None = None) -> list[dict]:
    """One row per eval dataset of one evaluated trial. ``results`` maps dataset -> {metric: value};
    the metrics in ``METRICS`` get their own columns (missing ones null), any other numeric metric goes
    into ``metrics_json``. ``compute_seconds`` is the trial's total (repeated on each dataset's row)."""
    _text("method", method)
    _text("protocol", protocol)
    _text("protocol_hash", protocol_hash)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise LeaderboardError(f"seed: expected an integer, got {seed!r}")
    if not isinstance(results, Mapping) or not results:
        raise LeaderboardError(f"results: expected a non-empty {{dataset: {{metric: value}}}}, got {results!r}")
    chash = config_hash(config)
    axes_json = canonical_json(dict(axes or {}))
    compute = _number("compute_seconds", compute_seconds)
    created = created_at or utc_now()
    rows = []
    for dataset, values in results.items():
        _text("results dataset name", dataset)
        if not isinstance(values, Mapping):
            raise LeaderboardError(f"results[{dataset!r}]: expected {{metric: value}}, got {values!r}")
        known: dict[str, float | None] = {}
        extra: dict[str, float | None] = {}
        for key, value in values.items():
            number = _number(f"results[{dataset!r}][{key!r}]", value)
            if key in METRICS:
                known[key] = number
            elif key in COLUMNS:
                raise LeaderboardError(f"results[{dataset!r}]: metric name {key!r} clashes with a column name")
            else:
                extra[str(key)] = number
        rows.append({
            "row_id": make_row_id(method, protocol_hash, dataset, chash, int(seed)),
            "method": method, "sweep": str(sweep), "trial": str(trial), "dataset": dataset,
            "protocol": protocol, "protocol_hash": protocol_hash, "axes": axes_json,
            **{name: known.get(name) for name in METRICS}, "metrics_json": canonical_json(extra),
            "seed": int(seed), "compute_seconds": compute,
            "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
            "config_hash": chash, "machine": machine or socket.gethostname(), "created_at": created,
        })
    return rows


# -- storage ---------------------------------------------------------------------------------------

def empty_frame() -> pd.DataFrame:
    return _from_table(SCHEMA.empty_table(), "<empty>")


def resolve_path(path: str | os.PathLike) -> Path:
    """A leaderboard file, or a directory (existing, or written with a trailing slash) meaning
    ``<dir>/leaderboard.parquet``."""
    text = os.fspath(path)
    path = Path(text)
    return path / FILENAME if path.is_dir() or text.endswith(("/", os.sep)) else path


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_null(actual) or actual == expected:
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    return pa.types.is_floating(expected) and (pa.types.is_floating(actual) or pa.types.is_integer(actual))


def _from_table(table: pa.Table, source: str | os.PathLike) -> pd.DataFrame:
    meta = table.schema.metadata or {}
    if SCHEMA_KEY in meta:
        try:
            version = int(meta[SCHEMA_KEY])
        except ValueError:
            raise LeaderboardError(f"{source}: bad leaderboard schema version {meta[SCHEMA_KEY]!r}") from None
        if version > SCHEMA_VERSION:
            raise LeaderboardError(f"{source}: written with leaderboard schema {version}, this latentlm reads "
                                   f"up to {SCHEMA_VERSION}; upgrade latentlm")
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing:
        raise LeaderboardError(f"{source}: not a leaderboard file: missing column(s) {', '.join(missing)}")
    arrays, names = [], []
    for field in SCHEMA:  # known columns in canonical order; optional ones missing from old files -> null
        if field.name in table.column_names:
            column = table.column(field.name)
            if not _compatible(column.type, field.type):
                raise LeaderboardError(f"{source}: column {field.name!r} has type {column.type}, "
                                       f"expected {field.type}")
            column = column.cast(field.type)
            if field.name in REQUIRED and column.null_count:
                raise LeaderboardError(f"{source}: column {field.name!r} has {column.null_count} null value(s)")
        else:
            column = pa.nulls(table.num_rows, field.type)
        arrays.append(column)
        names.append(field.name)
    for name in table.column_names:  # columns from a newer writer: kept as they are
        if name not in COLUMNS:
            arrays.append(table.column(name))
            names.append(name)
    df = pa.table(arrays, names=names).to_pandas()
    for column in ("axes", "metrics_json"):
        for row_id, text in zip(df["row_id"], df[column]):
            if isinstance(text, str) and text:
                try:
                    ok = isinstance(json.loads(text), dict)
                except ValueError:
                    ok = False
                if not ok:
                    raise LeaderboardError(f"{source}: row {row_id}: {column} is not a JSON object: {text[:80]!r}")
    try:
        pd.to_datetime(df["created_at"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as err:
        raise LeaderboardError(f"{source}: column 'created_at' holds a value that is not an ISO time: {err}") from err
    return df


def read(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check one leaderboard file (or ``<dir>/leaderboard.parquet``)."""
    path = resolve_path(path)
    if not path.is_file():
        raise LeaderboardError(f"{path}: no such leaderboard file")
    try:  # one open file = one inode: a concurrent os.replace by a writer cannot mix two versions
        with pa.OSFile(str(path), "rb") as handle:
            table = pq.read_table(handle)
    except Exception as err:  # pyarrow raises several types for a damaged or non-Parquet file
        raise LeaderboardError(f"{path}: not a readable leaderboard (Parquet) file: {err}") from err
    return _from_table(table, path)


def _to_table(df: pd.DataFrame, source: str = "rows") -> pa.Table:
    arrays, names = [], []
    for field in SCHEMA:
        values = df[field.name] if field.name in df.columns else [None] * len(df)
        try:
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as err:
            raise LeaderboardError(f"{source}: column {field.name!r}: {err}") from err
        names.append(field.name)
    for name in df.columns:
        if name not in COLUMNS:
            try:
                arrays.append(pa.array(df[name], from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                arrays.append(pa.array([None if pd.isna(v) else str(v) for v in df[name]], type=pa.string()))
            names.append(str(name))
    table = pa.table(arrays, names=names)
    return table.replace_schema_metadata({SCHEMA_KEY: str(SCHEMA_VERSION).encode()})


def _normalise(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, source: str = "rows") -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty and not len(df.columns):
        return empty_frame()
    return _from_table(_to_table(df, source), source)


def combine(*frames: pd.DataFrame) -> pd.DataFrame:
    """Union of leaderboard frames, one row per row_id: the newest created_at wins (ties: the later frame)."""
    frames = tuple(f for f in frames if len(f))
    if not frames:
        return empty_frame()
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    when = pd.to_datetime(df["created_at"], utc=True, format="ISO8601")
    df = (df.assign(_when=when.to_numpy(), _order=range(len(df)))
            .sort_values(["_when", "_order"], kind="stable")
            .drop_duplicates("row_id", keep="last")
            .sort_values(["_when", "row_id"], kind="stable"))
    return df.drop(columns=["_when", "_order"]).reset_index(drop=True)


class Leaderboard:
    """One leaderboard Parquet file (a directory means ``<dir>/leaderboard.parquet``)."""

    def __init__(self, path: str | os.PathLike, lock_timeout: float = 120.0):
        self.path = resolve_path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Leaderboard({str(self.path)!r})"

    def frame(self) -> pd.DataFrame:
        """The stored rows (an empty frame when the file does not exist yet)."""
        return read(self.path) if self.path.exists() else empty_frame()

    def __len__(self) -> int:
        return len(self.frame())

    def add(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Merge rows (from ``make_rows``) into the file; returns the number of rows stored."""
        return self._update(_normalise(rows))

    def merge(self, *other_paths: str | os.PathLike) -> int:
        """Merge other leaderboard files (other sweeps/machines) into this one; returns the rows stored."""
        return self._update(*(read(p) for p in other_paths))

    def _update(self, *frames: pd.DataFrame) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.lock_path), timeout=self.lock_timeout):
                merged = combine(self.frame(), *frames)  # a damaged file raises here and is left untouched
                table = _to_table(merged, str(self.path))
                atomic_write(self.path, lambda tmp: pq.write_table(table, tmp))
        except Timeout as err:
            raise LeaderboardError(f"{self.path}: could not take the lock {self.lock_path} within "
                                   f"{self.lock_timeout:g}s (another writer holds it)") from err
        return len(merged)


# -- views -----------------------------------------------------------------------------------------

def _json_object(text: Any) -> dict:
    return json.loads(text) if isinstance(text, str) and text else {}


def expand(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``axis.<name>`` columns (object dtype, None where a row lacks the axis) and one float column per
    extra metric in ``metrics_json`` (named after the metric; ``metric.<name>`` if that clashes)."""
    out = df.copy()
    axes = [_json_object(v) for v in df["axes"]]
    for name in sorted({k for a in axes for k in a}):
        out[f"axis.{name}"] = pd.Series([a.get(name) for a in axes], index=df.index, dtype=object)
    extras = [_json_object(v) for v in df["metrics_json"]]
    for name in sorted({k for e in extras for k in e}):
        column = name if name not in out.columns else f"metric.{name}"
        out[column] = pd.Series([e.get(name) for e in extras], index=df.index, dtype=float)
    return out


def axis_columns(expanded: pd.DataFrame) -> list[str]:
    return [c for c in expanded.columns if c.startswith("axis.")]


def metric_columns(expanded: pd.DataFrame) -> list[str]:
    extras = sorted({k for v in expanded["metrics_json"] for k in _json_object(v)}) if len(expanded) else []
    return list(METRICS) + [e if e not in COLUMNS else f"metric.{e}" for e in extras]


def _metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def _check_metric(expanded: pd.DataFrame, sort_by: str) -> None:
    available = metric_columns(expanded)
    if sort_by not in available:
        raise LeaderboardError(f"unknown metric {sort_by!r} to sort by; available: {', '.join(available)}")


def _group_keys(group_by: Sequence[str]) -> list[str]:
    keys = [k for k in group_by if k not in ("protocol", "protocol_hash")]
    return ["protocol", "protocol_hash"] + keys  # never rank rows of different protocols together


def _groups(expanded: pd.DataFrame, group_by: Sequence[str]):
    keys = _group_keys(group_by)
    missing = [k for k in keys if k not in expanded.columns]
    if missing:
        raise LeaderboardError(f"cannot group by unknown column(s) {', '.join(missing)}")
    labels = expanded[keys].astype(str)
    for key in sorted(set(map(tuple, labels.to_numpy().tolist()))):
        mask = (labels == list(key)).all(axis=1)
        yield dict(zip(keys, key)), expanded[mask]


def _rank(group: pd.DataFrame, sort_by: str, descending: bool) -> pd.DataFrame:
    group = group.sort_values("row_id", kind="stable")
    return group.sort_values(sort_by, ascending=not descending, na_position="last", kind="stable")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt_metric(name: str, value: Any) -> str:
    if _missing(value):
        return ""
    value = float(value)
    if name in PERCENT_METRICS:
        return f"{100 * value:.2f}"
    return f"{value:.1f}" if name == "gen_tokens" else f"{value:.4g}"


def _fmt_value(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return canonical_json(value)
    return str(value)


def _fmt_seconds(value: Any) -> str:
    if _missing(value):
        return ""
    value = float(value)
    if value < 120:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _heading(key: dict, sort_by: str, descending: bool, n: int) -> tuple[str, str]:
    extra = [f"{k}={v}" for k, v in key.items() if k not in ("protocol", "protocol_hash", "dataset")]
    title = " · ".join([key["protocol"], *([key["dataset"]] if "dataset" in key else []), *extra])
    order = "descending, best first" if descending else "ascending, best first"
    scale = "; metrics x100 except gen tokens and extra metrics"
    note = (f"protocol hash {key['protocol_hash'][:12]} · {n} row{'s' if n != 1 else ''} · sorted by "
            f"{_metric_label(sort_by)} ({order}){scale}")
    return title, note


def _table_columns(group: pd.DataFrame) -> tuple[list[str], list[str]]:
    axes = [c for c in axis_columns(group) if not group[c].map(_missing).all()]
    metrics = [m for m in metric_columns(group) if m in group.columns and group[m].notna().any()]
    return axes, metrics


def to_markdown(df: pd.DataFrame, sort_by: str = "mauve", group_by: Sequence[str] = ("protocol", "dataset"),
                descending: bool = True) -> str:
    """One Markdown table per (protocol, protocol_hash, dataset), ranked by ``sort_by``."""
    if not len(df):
        return "_No leaderboard rows._\n"
    expanded = expand(df)
    _check_metric(expanded, sort_by)

    def cell(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    parts = []
    for key, group in _groups(expanded, group_by):
        axes, metrics = _table_columns(group)
        if sort_by not in metrics:
            metrics.append(sort_by)
        title, note = _heading(key, sort_by, descending, len(group))
        headers = ["#", "method", "sweep", "trial", *[a[len("axis."):] for a in axes],
                   *[f"**{_metric_label(m)}**" if m == sort_by else _metric_label(m) for m in metrics],
                   "seed", "compute"]
        lines = [f"## {cell(title)}", "", cell(note), "", "| " + " | ".join(map(cell, headers)) + " |",
                 "|" + "---|" * len(headers)]
        for rank, (_, row) in enumerate(_rank(group, sort_by, descending).iterrows(), 1):
            cells = [str(rank) if not _missing(row[sort_by]) else "-", _fmt_value(row["method"]),
                     _fmt_value(row["sweep"]), _fmt_value(row["trial"]), *[_fmt_value(row[a]) for a in axes],
                     *[_fmt_metric(m, row[m]) for m in metrics], _fmt_value(row["seed"]),
                     _fmt_seconds(row["compute_seconds"])]
            lines.append("| " + " | ".join(map(cell, cells)) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# -- HTML ------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 4px}h3{font-size:15px;margin:18px 0 4px}
p.meta,p.board-meta,figcaption{color:#5a6272;font-size:12.5px;margin:2px 0 8px}
nav#contents{font-size:13px}nav#contents a{margin-right:12px}
.scroll{overflow-x:auto;max-width:100%}
table.leaderboard{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
table.leaderboard th,table.leaderboard td{padding:4px 9px;border-bottom:1px solid #e3e6ec;text-align:left;
  white-space:nowrap}
table.leaderboard th{background:#f3f5f9;cursor:pointer;user-select:none;position:sticky;top:0}
table.leaderboard th[data-type=num],table.leaderboard td.num{text-align:right}
table.leaderboard th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
table.leaderboard th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
table.leaderboard th.sort-metric{color:#0b57d0}
table.leaderboard tbody tr:nth-child(even){background:#fafbfd}
table.leaderboard tbody tr:hover{background:#eef3ff}
table.leaderboard tr.ceiling{font-style:italic;background:#fff8e6}
td.id{font-family:ui-monospace,Menlo,monospace;font-size:11.5px;color:#5a6272}
figure.axis-plot{display:inline-block;margin:8px 16px 16px 0;vertical-align:top}
svg.axis-plot-svg text{font:11px system-ui,sans-serif;fill:#1d2330}
svg.axis-plot-svg .grid{stroke:#e3e6ec}svg.axis-plot-svg .frame{stroke:#8a92a3;fill:none}
"""

_JS = """
(function () {
  function key(cell, numeric) {
    var v = cell ? cell.getAttribute("data-value") : null;
    if (v === null || v === "") return null;
    if (!numeric) return v.toLowerCase();
    var x = parseFloat(v);
    return isNaN(x) ? null : x;
  }
  function sortBy(table, th, col, order) {
    var numeric = th.getAttribute("data-type") === "num", body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows), sign = order === "descending" ? -1 : 1;
    rows.sort(function (a, b) {
      var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
      if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);  /* empty cells last */
      return x < y ? -sign : (x > y ? sign : 0);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", order);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.leaderboard"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      function toggle() {
        var now = th.getAttribute("aria-sort"), numeric = th.getAttribute("data-type") === "num";
        var order = now ? (now === "descending" ? "ascending" : "descending") : (numeric ? "descending" : "ascending");
        sortBy(table, th, col, order);
      }
      th.addEventListener("click", toggle);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); }
      });
    });
  });
})();
"""

_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(prefix: str, readable: Any, *key: Any) -> str:
    """A stable HTML id: a readable part plus a hash of the full key (unique even when readable parts clash)."""
    text = re.sub(r"[^a-z0-9]+", "-", str(readable).lower()).strip("-")[:40].strip("-")
    digest = _sha256(canonical_json([str(readable), *map(str, key)]))[:8]
    return f"{prefix}-{text}-{digest}" if text else f"{prefix}-{digest}"


def _data_value(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if _is_number(value):
        return repr(float(value))
    return _fmt_value(value)


def _html_table(key: dict, group: pd.DataFrame, sort_by: str, descending: bool) -> str:
    axes, metrics = _table_columns(group)
    if sort_by not in metrics:
        metrics.append(sort_by)
    # (header, column, kind): kind num/text decides the sort; cells carry data-value for the script
    columns = [("#", None, "num"), ("method", "method", "text"), ("sweep", "sweep", "text"),
               ("trial", "trial", "text")]
    for a in axes:
        numeric = all(_is_number(v) or isinstance(v, bool) or _missing(v) for v in group[a])
        columns.append((a[len("axis."):], a, "num" if numeric else "text"))
    columns += [(_metric_label(m) + (" (x100)" if m in PERCENT_METRICS else ""), m, "num") for m in metrics]
    columns += [("seed", "seed", "num"), ("compute (s)", "compute_seconds", "num"),
                ("checkpoint", "checkpoint", "text"),
                ("machine", "machine", "text"), ("created (UTC)", "created_at", "text"), ("row", "row_id", "text"),
                ("config", "config_hash", "text")]
    head = []
    for label, column, kind in columns:
        attrs = f' data-type="{kind}" data-col="{_esc(column or "rank")}" scope="col"'
        if column == sort_by:
            attrs += f' class="sort-metric" aria-sort="{"descending" if descending else "ascending"}"'
        head.append(f"<th{attrs}>{_esc(label)}</th>")
    body = []
    for rank, (_, row) in enumerate(_rank(group, sort_by, descending).iterrows(), 1):
        has_score = not _missing(row[sort_by])
        cells = [f'<td class="num" data-value="{rank if has_score else ""}">{rank if has_score else "-"}</td>']
        for label, column, kind in columns[1:]:
            value = row[column]
            if column in metrics:
                text = _fmt_metric(column, value)
            elif column == "compute_seconds":
                text = "" if _missing(value) else f"{float(value):.0f}"
            elif column in ("row_id", "config_hash"):
                text = "" if _missing(value) else str(value)[:12]
            else:
                text = _fmt_value(value)
            cls = ' class="num"' if kind == "num" else (' class="id"' if column in ("row_id", "config_hash") else "")
            tip = f' title="{_esc(value)}"' if column in ("row_id", "config_hash", "checkpoint") and text else ""
            cells.append(f'<td{cls} data-value="{_esc(_data_value(value))}"{tip}>{_esc(text)}</td>')
        ceiling = ' class="ceiling"' if row["method"] in CEILING_METHODS else ""
        body.append(f'<tr data-row-id="{_esc(row["row_id"])}"{ceiling}>{"".join(cells)}</tr>')
    title, note = _heading(key, sort_by, descending, len(group))
    board_id = _slug("board", key.get("dataset", ""), *key.values())
    return (f'<section class="board" id="{board_id}" data-protocol="{_esc(key["protocol"])}" '
            f'data-protocol-hash="{_esc(key["protocol_hash"])}" data-dataset="{_esc(key.get("dataset", ""))}">\n'
            f"<h2>{_esc(title)}</h2>\n<p class=\"board-meta\">{_esc(note)}</p>\n"
            f'<div class="scroll"><table class="leaderboard" id="table-{board_id[len("board-"):]}" '
            f'data-sort-metric="{_esc(sort_by)}">\n<thead><tr>{"".join(head)}</tr></thead>\n'
            f'<tbody>\n{chr(10).join(body)}\n</tbody></table></div>\n</section>')


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo < 1e-12 * max(1.0, abs(lo), abs(hi)):
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    ticks = [math.floor(lo / step + 1e-9) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(ticks[-1] + step)
    return [round(t, 12) for t in ticks]


def _fmt_tick(value: float) -> str:
    return f"{value:.4g}"


def _axis_value_key(value: Any) -> tuple:
    if isinstance(value, bool):
        return (0, int(value), "")
    if _is_number(value):
        return (1, float(value), "")
    return (2, 0.0, _fmt_value(value))


def _stats(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def _axis_plot(rows: pd.DataFrame, ceilings: pd.DataFrame, axis: str, metric: str, protocol_key: dict,
               datasets: list[str]) -> str:
    """One inline SVG: x = axis value, y = metric (mean over rows sharing that value: seeds and the other
    axes; bars +-1 std; faint dots = single rows), one colour per dataset; ceiling rows as dashed lines."""
    name = axis[len("axis."):]
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    data = rows[[axis, "dataset", metric]]
    data = data[~data[axis].map(_missing) & data[metric].notna()]
    values = sorted({_axis_value_key(v): v for v in data[axis]}.items())
    numeric = all(k[0] == 1 for k, _ in values)
    xs = [float(v) for _, v in values] if numeric else list(range(len(values)))
    log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    width, height, left, right, top, bottom = 660, 340, 62, 210, 18, 50
    px0, px1, py0, py1 = left, width - right, top, height - bottom

    def tx(x: float) -> float:
        if numeric:
            lo, hi = (math.log(min(xs)), math.log(max(xs))) if log_x else (min(xs), max(xs))
            x = math.log(x) if log_x else x
            pad = 0.06 * (px1 - px0)
            return px0 + pad + (x - lo) / (hi - lo) * (px1 - px0 - 2 * pad)
        step = (px1 - px0) / len(values)
        return px0 + step * (x + 0.5)

    series: dict[str, list[tuple[float, float, float, int, list[float]]]] = {}
    all_y: list[float] = []
    for dataset in datasets:
        points = []
        for index, (k, v) in enumerate(values):
            at_x = data[axis].map(lambda a, k=k: not _missing(a) and _axis_value_key(a) == k)
            mask = (data["dataset"] == dataset) & at_x
            ys = [scale * float(y) for y in data.loc[mask, metric]]
            if ys:
                mean, std, n = _stats(ys)
                points.append((xs[index], mean, std, n, ys))
                all_y += ys + [mean - std, mean + std]
        if points:
            series[dataset] = points
    ceiling_lines = {}
    for dataset in datasets:
        ys = [scale * float(y) for y in ceilings.loc[ceilings["dataset"] == dataset, metric].dropna()]
        if ys:
            ceiling_lines[dataset] = sum(ys) / len(ys)
    if not all_y:  # only ceiling rows have scores: scale to them
        all_y = list(ceiling_lines.values())
    ticks = _nice_ticks(min(all_y), max(all_y))
    ylo, yhi = ticks[0], ticks[-1]

    def ty(y: float) -> float:
        return py1 - (y - ylo) / (yhi - ylo) * (py1 - py0)

    label = _metric_label(metric) + (" (x100)" if scale != 1.0 else "")
    out = [f'<svg class="axis-plot-svg" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'aria-label="{_esc(label)} by {_esc(name)}">',
           f'<rect class="frame" x="{px0}" y="{py0}" width="{px1 - px0}" height="{py1 - py0}"/>']
    for t in ticks:
        y = ty(t)
        out.append(f'<line class="grid" x1="{px0}" x2="{px1}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text x="{px0 - 6}" y="{y + 4:.1f}" text-anchor="end">{_esc(_fmt_tick(t))}</text>')
    for (k, v), x in zip(values, xs):
        X = tx(x)
        tick = _fmt_tick(float(v)) if numeric else _fmt_value(v)
        out.append(f'<line class="grid" x1="{X:.1f}" x2="{X:.1f}" y1="{py1}" y2="{py1 + 4}"/>'
                   f'<text x="{X:.1f}" y="{py1 + 16}" text-anchor="middle">{_esc(tick[:18])}</text>')
    out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{height - 10}" text-anchor="middle">'
               f'{_esc(name)}{" (log scale)" if log_x else ""}</text>')
    out.append(f'<text transform="translate(14 {(py0 + py1) / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{_esc(label)}</text>')
    step = (px1 - px0) / max(1, len(values))
    for i, dataset in enumerate(datasets):
        color = _PALETTE[i % len(_PALETTE)]
        if dataset in ceiling_lines and ylo <= ceiling_lines[dataset] <= yhi:  # off-scale ones: legend only
            y = ty(ceiling_lines[dataset])
            out.append(f'<line class="ceiling" x1="{px0}" x2="{px1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                       f'stroke-dasharray="5 4" stroke-width="1.2"><title>{_esc(dataset)}: human ceiling '
                       f'{ceiling_lines[dataset]:.4g}</title></line>')
        points = series.get(dataset)
        if not points:
            continue
        offset = 0.0 if numeric else (i - (len(datasets) - 1) / 2) * min(10.0, 0.5 * step / max(1, len(datasets)))
        group = [f'<g class="series" data-dataset="{_esc(dataset)}">']
        if numeric and len(points) > 1:
            path = " ".join(f"{tx(p[0]):.1f},{ty(p[1]):.1f}" for p in points)
            group.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        for x, mean, std, n, ys in points:
            X = tx(x) + offset
            for y in ys if n > 1 else []:
                group.append(f'<circle cx="{X:.1f}" cy="{ty(y):.1f}" r="2.2" fill="{color}" fill-opacity="0.3"/>')
            if std > 0:
                y0, y1 = ty(mean - std), ty(mean + std)
                group.append(f'<path class="errorbar" d="M{X:.1f} {y0:.1f}V{y1:.1f}M{X - 4:.1f} {y0:.1f}h8'
                             f'M{X - 4:.1f} {y1:.1f}h8" stroke="{color}" stroke-width="1.2"/>')
            xv = _fmt_value(values[xs.index(x)][1])
            group.append(f'<circle class="point" cx="{X:.1f}" cy="{ty(mean):.1f}" r="4" fill="{color}">'
                         f'<title>{_esc(dataset)} · {_esc(name)}={_esc(xv)}: {mean:.4g}'
                         f'{f" ± {std:.2g}" if n > 1 else ""} (n={n})</title></circle>')
        group.append("</g>")
        out += group
    legend_y = py0 + 6
    for i, dataset in enumerate(datasets):
        if dataset not in series and dataset not in ceiling_lines:
            continue
        color = _PALETTE[i % len(_PALETTE)]
        out.append(f'<circle cx="{px1 + 16}" cy="{legend_y}" r="4" fill="{color}"/>'
                   f'<text x="{px1 + 26}" y="{legend_y + 4}">{_esc(dataset[:30])}</text>')
        legend_y += 18
        if dataset in ceiling_lines:
            value = ceiling_lines[dataset]
            where = "" if ylo <= value <= yhi else (" (above)" if value > yhi else " (below)")
            out.append(f'<line x1="{px1 + 10}" x2="{px1 + 22}" y1="{legend_y}" y2="{legend_y}" stroke="{color}" '
                       f'stroke-dasharray="4 3"/><text x="{px1 + 26}" y="{legend_y + 4}">human ceiling '
                       f'{value:.4g}{where}</text>')
            legend_y += 18
    out.append("</svg>")
    fig_id = _slug("plot", name, protocol_key["protocol"], protocol_key["protocol_hash"])
    n_rows = len(data)
    caption = (f"{label} by {name}: mean over the {n_rows} row(s) sharing each value (seeds and other axes), "
               f"bars ±1 std where n>1; {'line' if numeric else 'grouped points'} per dataset.")
    return (f'<figure class="axis-plot" id="{fig_id}" data-axis="{_esc(name)}" data-metric="{_esc(metric)}" '
            f'data-kind="{"numeric" if numeric else "categorical"}" data-protocol="{_esc(protocol_key["protocol"])}" '
            f'data-protocol-hash="{_esc(protocol_key["protocol_hash"])}">\n{"".join(out)}\n'
            f"<figcaption>{_esc(caption)}</figcaption>\n</figure>")


def axis_plots(df: pd.DataFrame, metric: str = "mauve") -> list[tuple[dict, str, str]]:
    """(protocol key, axis name, figure HTML) for every axis with more than one value within a protocol."""
    expanded = expand(df) if len(df) else df
    if not len(expanded):
        return []
    _check_metric(expanded, metric)
    plots = []
    for key, group in _groups(expanded, ()):
        ceilings = group[group["method"].isin(CEILING_METHODS)]
        rows = group[~group["method"].isin(CEILING_METHODS) & group[metric].notna()]
        datasets = sorted(set(group["dataset"]))
        for axis in axis_columns(group):
            present = [v for v in rows[axis] if not _missing(v)]
            if len({_axis_value_key(v) for v in present}) < 2:
                continue
            plots.append((key, axis[len("axis."):], _axis_plot(rows, ceilings, axis, metric, key, datasets)))
    return plots


def html_page(df: pd.DataFrame, title: str = "latentlm leaderboard", sort_by: str = "mauve",
              descending: bool = True) -> str:
    """The whole page as a string: inline CSS, inline SVG plots, a few lines of inline JS; no network."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{_esc(title)}</title>\n"
             f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{_esc(title)}</h1>"]
    if not len(df):
        parts.append('<p class="meta">No leaderboard rows.</p>\n</body>\n</html>\n')
        return "\n".join(parts)
    expanded = expand(df)
    _check_metric(expanded, sort_by)
    groups = list(_groups(expanded, ("dataset",)))
    plots = axis_plots(df, sort_by)
    parts.append(f'<p class="meta">{len(df)} rows · {len(groups)} table(s) · generated {_esc(utc_now()[:19])}Z · '
                 f"sorted by {_esc(_metric_label(sort_by))} ({'descending' if descending else 'ascending'}); click a "
                 "column header to re-sort. Rows are ranked only within one protocol (name and hash) and dataset. "
                 "Italic rows are reference ceilings.</p>")
    links = [f'<a href="#{_slug("board", key.get("dataset", ""), *key.values())}">'
             f'{_esc(_heading(key, sort_by, descending, 0)[0])}</a>' for key, _ in groups]
    links.append('<a href="#axis-plots">ablation axes</a>')
    parts.append(f'<nav id="contents">{" ".join(links)}</nav>')
    parts += [_html_table(key, group, sort_by, descending) for key, group in groups]
    parts.append(f'<section id="axis-plots">\n<h2>Ablation axes: {_esc(_metric_label(sort_by))}</h2>')
    if not plots:
        parts.append('<p class="meta">No ablation axis has more than one value with a score.</p>')
    protocols = {(k["protocol"], k["protocol_hash"]) for k, _, _ in plots}
    current = None
    for key, _, figure in plots:
        if len(protocols) > 1 and (key["protocol"], key["protocol_hash"]) != current:
            current = (key["protocol"], key["protocol_hash"])
            parts.append(f"<h3>{_esc(key['protocol'])} (protocol hash {_esc(key['protocol_hash'][:12])})</h3>")
        parts.append(figure)
    parts.append(f"</section>\n<script>{_JS}</script>\n</body>\n</html>\n")
    return "\n".join(parts)


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
