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
    metrics_json    JSON object of any other numeric metric (samples, eval_seconds, gen_ppl, ...); a metric
                    ``<m>_std`` is the spread (std over evaluation seeds) of metric ``<m>``
    seed (int64), compute_seconds (float64, the trial's total), checkpoint, config_hash, machine,
    created_at (UTC ISO 8601)
    protocol_json   optional: JSON object of the evaluation protocol ({"name", "version", "hash" (== protocol_hash),
                    "scoring_hash" (the protocol without its sampler section), ...its fields})
    progression_json  optional: the denoising progression of one fixed evaluation sample ({"prompt", "reference",
                    "total_steps", "steps": [1, 10, ...], "texts": [text after steps[i] sampler steps, ...]})
Files written before the two optional columns existed read as before (the columns come back null).
``expand`` turns ``axes`` into ``axis.<name>`` columns and ``metrics_json`` into one column per metric.

Plots. Unlike the tables, the per-axis plots group rows by (protocol name, scoring hash): a sweep over sampler steps or
CFG changes the protocol hash (the protocol fixes the sampler) but not what is scored, so its rows still get
one plot over that axis (rows without ``protocol_json`` fall back to their protocol hash).

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
                 "mauve": "MAUVE", "recon_acc": "recon acc", "gen_tokens": "gen tokens",
                 "gen_ppl": "Gen-PPL", "entropy": "entropy", "diversity": "diversity",
                 "mauve_kmeans_std": "MAUVE k-means std", "mauve_sampling_std": "MAUVE sampling std"}
PERCENT_SPREADS = frozenset(("mauve_kmeans_std", "mauve_sampling_std"))  # spreads of MAUVE: shown x100 too
MARKDOWN_HIDDEN = frozenset(("eval_seconds", "sample_seconds_per_seq", "samples", "seeds"))  # bookkeeping:
# the protocol fixes samples/seeds and timings on a shared box are no result; the HTML page keeps them
CURATED_EXTRAS = ("gen_ppl", "entropy", "diversity")  # extra metrics listed right after METRICS, in this order
STD_SUFFIX = "_std"  # metric "<m>_std" = spread of "<m>" over evaluation seeds: shown as "mean ± std"
CEILING_METHODS = frozenset({"human"})  # reference rows (human-vs-human): ranked, drawn as lines in plots

SCHEMA = pa.schema([
    ("row_id", pa.string()), ("method", pa.string()), ("sweep", pa.string()), ("trial", pa.string()),
    ("dataset", pa.string()), ("protocol", pa.string()), ("protocol_hash", pa.string()), ("axes", pa.string()),
    *[(name, pa.float64()) for name in METRICS], ("metrics_json", pa.string()),
    ("seed", pa.int64()), ("compute_seconds", pa.float64()), ("checkpoint", pa.string()),
    ("config_hash", pa.string()), ("machine", pa.string()), ("created_at", pa.string()),
    ("protocol_json", pa.string()), ("progression_json", pa.string()),  # optional; absent from older files
])
COLUMNS = tuple(SCHEMA.names)
JSON_COLUMNS = ("axes", "metrics_json", "protocol_json", "progression_json")  # each null or a JSON object
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


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _json_roundtrip(field: str, value: Any) -> Any:
    """``value`` as plain JSON data (what canonical_json writes and json.loads reads back)."""
    try:
        return json.loads(canonical_json(value))
    except LeaderboardError as err:
        raise LeaderboardError(f"{field}: {err}") from None


def protocol_json(protocol: str, protocol_hash: str, info: Mapping[str, Any] | Any) -> str:
    """Canonical JSON of an evaluation protocol object (a mapping or a dataclass) for the ``protocol_json``
    column. It must hold ``"hash"`` equal to the row's ``protocol_hash`` and a non-empty ``"scoring_hash"``
    (the protocol's hash without its sampler section); a ``"name"``, when present, must equal ``protocol``."""
    data = _json_roundtrip("protocol_info", info)
    if not isinstance(data, dict):
        raise LeaderboardError(f"protocol_info: expected a JSON object (mapping), got {type(info).__name__}")
    if data.get("hash") != protocol_hash:
        raise LeaderboardError(f"protocol_info: its 'hash' {data.get('hash')!r} is not the row's protocol_hash "
                               f"{protocol_hash!r} (the protocol object must be the one that was hashed)")
    if not isinstance(data.get("scoring_hash"), str) or not data["scoring_hash"]:
        raise LeaderboardError(f"protocol_info: expected a non-empty string 'scoring_hash' (the protocol hash "
                               f"without its sampler section), got {data.get('scoring_hash')!r}")
    if "name" in data and data["name"] != protocol:
        raise LeaderboardError(f"protocol_info: its 'name' {data['name']!r} is not the row's protocol {protocol!r}")
    return canonical_json(data)


def check_progression(where: str, value: Any) -> dict:
    """Validate one denoising progression ({"prompt": str, "reference": str, "total_steps": int >= 1,
    "steps": strictly increasing ints in [0, total_steps], "texts": one str per step}); returns it as plain
    JSON data. Errors start with ``where`` (e.g. the dataset)."""
    data = _json_roundtrip(where, value)
    if not isinstance(data, dict):
        raise LeaderboardError(f"{where}: expected a JSON object (mapping), got {type(value).__name__}")
    for key in ("prompt", "reference"):
        if not isinstance(data.get(key), str):
            raise LeaderboardError(f"{where}: {key!r} must be a string, got {data.get(key)!r}")
    total = data.get("total_steps")
    if not _integer(total) or total < 1:
        raise LeaderboardError(f"{where}: 'total_steps' must be a positive integer, got {total!r}")
    steps, texts = data.get("steps"), data.get("texts")
    if not isinstance(steps, list) or not steps or not all(_integer(s) for s in steps):
        raise LeaderboardError(f"{where}: 'steps' must be a non-empty list of integers, got {steps!r}")
    if any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 0 or steps[-1] > total:
        raise LeaderboardError(f"{where}: 'steps' must increase strictly within [0, total_steps={total}], "
                               f"got {steps!r}")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise LeaderboardError(f"{where}: 'texts' must be a list of strings")
    if len(texts) != len(steps):
        raise LeaderboardError(f"{where}: 'steps' and 'texts' differ in length ({len(steps)} vs {len(texts)})")
    return data


def make_rows(method: str, sweep: str, trial: str, axes: Mapping[str, Any] | None,
              results: Mapping[str, Mapping[str, float]], protocol: str, protocol_hash: str, seed: int,
              compute_seconds: float | None, checkpoint: str | os.PathLike | None, config: Mapping[str, Any] | Any,
              *, machine: str | None = None, created_at: str | None = None,
              protocol_info: Mapping[str, Any] | None = None,
              progressions: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """One row per eval dataset of one evaluated trial. ``results`` maps dataset -> {metric: value};
    the metrics in ``METRICS`` get their own columns (missing ones null), any other numeric metric goes
    into ``metrics_json`` (name a seed spread ``<metric>_std``). ``compute_seconds`` is the trial's total
    (repeated on each dataset's row). ``protocol_info`` (the evaluation protocol object, see ``protocol_json``)
    is stored on every row; ``progressions`` maps a dataset of ``results`` to the denoising progression of
    one fixed sample (see ``check_progression``), stored on that dataset's row."""
    _text("method", method)
    _text("protocol", protocol)
    _text("protocol_hash", protocol_hash)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise LeaderboardError(f"seed: expected an integer, got {seed!r}")
    if not isinstance(results, Mapping) or not results:
        raise LeaderboardError(f"results: expected a non-empty {{dataset: {{metric: value}}}}, got {results!r}")
    protocol_text = None if protocol_info is None else protocol_json(protocol, protocol_hash, protocol_info)
    progression_texts: dict[str, str] = {}
    if progressions is not None:
        if not isinstance(progressions, Mapping):
            raise LeaderboardError(f"progressions: expected {{dataset: progression}}, got {progressions!r}")
        for dataset, progression in progressions.items():
            if dataset not in results:
                raise LeaderboardError(f"progressions[{dataset!r}]: no such dataset in results "
                                       f"({', '.join(map(repr, results))})")
            where = f"progressions[{dataset!r}]"
            progression_texts[dataset] = canonical_json(check_progression(where, progression))
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
            "protocol_json": protocol_text, "progression_json": progression_texts.get(dataset),
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
    for column in JSON_COLUMNS:
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


def _extra_order(name: str) -> tuple:
    return (CURATED_EXTRAS.index(name), "") if name in CURATED_EXTRAS else (len(CURATED_EXTRAS), name)


def metric_columns(expanded: pd.DataFrame) -> list[str]:
    """Metric columns of an ``expand``-ed frame in display order: ``METRICS``, then ``CURATED_EXTRAS``
    (Gen-PPL, entropy, diversity), then the other extra metrics by name (``_std`` spreads included)."""
    extras = sorted({k for v in expanded["metrics_json"] for k in _json_object(v)}) if len(expanded) else []
    out = []
    for name in sorted(extras, key=_extra_order):  # the name expand gave it (prefixed when it clashed)
        prefixed = f"metric.{name}"
        out.append(prefixed if prefixed in expanded.columns or name not in expanded.columns else name)
    return list(METRICS) + out


def _metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def _std_column(metric: str, available: Iterable[str]) -> str | None:
    """The column holding ``metric``'s seed spread (``<metric>_std``) when there is one."""
    candidate = metric + STD_SUFFIX
    return candidate if not metric.endswith(STD_SUFFIX) and candidate in set(available) else None


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
    if name in PERCENT_METRICS or name in PERCENT_SPREADS:
        return f"{100 * value:.2f}"
    return f"{value:.1f}" if name == "gen_tokens" else f"{value:.4g}"


def _fmt_metric_std(name: str, value: Any, std: Any) -> str:
    """``mean ± std``: the std scaled like its metric (x100 for ``PERCENT_METRICS``) and printed with the
    mean's decimals; just the mean when there is no std."""
    text = _fmt_metric(name, value)
    if not text or _missing(std):
        return text
    spread = (100.0 if name in PERCENT_METRICS else 1.0) * abs(float(std))
    match = re.fullmatch(r"-?\d+(?:\.(\d+))?", text)
    return f"{text} ± {spread:.{len(match.group(1) or '')}f}" if match else f"{text} ± {spread:.2g}"


def _row_std(row: pd.Series, std_column: str | None) -> Any:
    """The row's seed spread for a metric, or None for a single-seed row (its std is 0 by construction)."""
    if not std_column:
        return None
    seeds = row.get("seeds", row.get("metric.seeds"))
    return None if _is_number(seeds) and float(seeds) == 1 else row[std_column]


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
    scale = "; ROUGE, BERTScore, MAUVE (and its spreads) and recon acc x100"
    note = (f"protocol hash {key['protocol_hash'][:12]} · {n} row{'s' if n != 1 else ''} · sorted by "
            f"{_metric_label(sort_by)} ({order}){scale}")
    return title, note


def _table_columns(group: pd.DataFrame, sort_by: str, hidden: frozenset = frozenset()
                   ) -> tuple[list[str], list[tuple[str, str | None]]]:
    """The axis columns with a value, and the metric columns with a value as (metric, its std column or
    None): a ``<m>_std`` column is folded into ``<m>``'s cell unless it is itself the sort metric. Metrics
    in ``hidden`` are left out (never the sort metric)."""
    axes = [c for c in axis_columns(group) if not group[c].map(_missing).all()]
    present = [m for m in metric_columns(group) if m in group.columns and group[m].notna().any()
               and m.removeprefix("metric.") not in hidden]
    if sort_by not in present:
        present.append(sort_by)
    pairs = {m: _std_column(m, present) for m in present}
    folded = {std for std in pairs.values() if std}
    return axes, [(m, std) for m, std in pairs.items() if m not in folded or m == sort_by]


def _has_std(metrics: list[tuple[str, str | None]]) -> bool:
    return any(std for _, std in metrics)


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
        axes, metrics = _table_columns(group, sort_by, MARKDOWN_HIDDEN)
        title, note = _heading(key, sort_by, descending, len(group))
        if _has_std(metrics):
            note += "; a ± b = mean ± std over evaluation seeds"
        if group["method"].isin(CEILING_METHODS).any():
            note += f"; {', '.join(sorted(CEILING_METHODS))} = reference ceiling"
        headers = ["#", "method", "sweep", "trial", *[a[len("axis."):] for a in axes],
                   *[f"**{_metric_label(m)}**" if m == sort_by else _metric_label(m) for m, _ in metrics],
                   "seed", "compute"]
        lines = [f"## {cell(title)}", "", cell(note), "", "| " + " | ".join(map(cell, headers)) + " |",
                 "|" + "---|" * len(headers)]
        for rank, (_, row) in enumerate(_rank(group, sort_by, descending).iterrows(), 1):
            cells = [str(rank) if not _missing(row[sort_by]) else "-", _fmt_value(row["method"]),
                     _fmt_value(row["sweep"]), _fmt_value(row["trial"]), *[_fmt_value(row[a]) for a in axes],
                     *[_fmt_metric_std(m, row[m], _row_std(row, std)) for m, std in metrics],
                     _fmt_value(row["seed"]),
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
details.protocol{font-size:12px;margin:0 0 8px}details.protocol pre{background:#f6f7fa;padding:8px;overflow-x:auto;
  max-height:320px}
table.progression{border-collapse:collapse;font-size:13px;max-width:980px}
table.progression th{text-align:right;vertical-align:top;white-space:nowrap;padding:5px 10px;color:#5a6272;
  font-weight:600;font-variant-numeric:tabular-nums}
table.progression td{padding:5px 10px;white-space:pre-wrap;word-break:break-word;border-bottom:1px solid #e3e6ec}
table.progression td:empty::after{content:"(empty)";color:#8a92a3;font-style:italic}
table.progression tr.prompt td{background:#f3f5f9}table.progression tr.reference td{background:#eef8f1}
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

_PROGRESSION_JS = """
(function () {
  var select = document.getElementById("progression-select"), view = document.getElementById("progression-view");
  var data = document.getElementById("progression-data");
  if (!select || !view || !data) return;
  var rows = JSON.parse(data.textContent);
  function line(kind, head, text) {
    var tr = document.createElement("tr"), th = document.createElement("th"), td = document.createElement("td");
    tr.className = kind; th.scope = "row"; th.textContent = head; td.textContent = text;
    tr.appendChild(th); tr.appendChild(td);
    return tr;
  }
  function show(id) {
    var p = Object.prototype.hasOwnProperty.call(rows, id) ? rows[id] : null;
    if (!p) return false;
    var body = document.createElement("tbody");
    body.appendChild(line("prompt", "prompt", p.prompt));
    for (var i = 0; i < p.steps.length; i++) {
      var tr = line("step", "step " + p.steps[i] + " / " + p.total_steps, p.texts[i]);
      tr.setAttribute("data-step", String(p.steps[i]));
      body.appendChild(tr);
    }
    body.appendChild(line("reference", "reference", p.reference));
    view.replaceChild(body, view.tBodies[0]);
    view.setAttribute("data-row-id", id);
    select.value = id;
    return true;
  }
  function fromHash() {  /* #progression=<row_id> picks a row (links in the tables use it) */
    var m = /^#progression=(.+)$/.exec(window.location.hash);
    if (m && show(decodeURIComponent(m[1]))) document.getElementById("progression").scrollIntoView();
  }
  select.addEventListener("change", function () {
    show(select.value);
    try { history.replaceState(null, "", "#progression=" + encodeURIComponent(select.value)); } catch (e) {}
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
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


def _html_table(key: dict, group: pd.DataFrame, sort_by: str, descending: bool,
                progression_ids: frozenset = frozenset()) -> str:
    axes, metrics = _table_columns(group, sort_by)
    stds = dict(metrics)
    # (header, column, kind): kind num/text decides the sort; cells carry data-value for the script
    columns = [("#", None, "num"), ("method", "method", "text"), ("sweep", "sweep", "text"),
               ("trial", "trial", "text")]
    for a in axes:
        numeric = all(_is_number(v) or isinstance(v, bool) or _missing(v) for v in group[a])
        columns.append((a[len("axis."):], a, "num" if numeric else "text"))
    columns += [(_metric_label(m) + (" (x100)" if m in PERCENT_METRICS | PERCENT_SPREADS else ""), m, "num")
                for m, _ in metrics]
    columns += [("seed", "seed", "num"), ("compute (s)", "compute_seconds", "num"),
                ("checkpoint", "checkpoint", "text"),
                ("machine", "machine", "text"), ("created (UTC)", "created_at", "text"), ("row", "row_id", "text"),
                ("config", "config_hash", "text")]
    with_progression = progression_ids & set(group["row_id"])
    if with_progression:
        columns.append(("progression", "progression_json", "text"))
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
            if column == "progression_json":
                link = (f'<a href="#progression={_esc(row["row_id"])}">view</a>'
                        if row["row_id"] in with_progression else "")
                cells.append(f'<td data-value="{"1" if link else ""}">{link}</td>')
                continue
            tip = ""
            if column in stds:
                std = _row_std(row, stds[column])
                text = _fmt_metric_std(column, value, std)
                if not _missing(std) and text:
                    tip = ' title="mean ± std over evaluation seeds"'
            elif column == "compute_seconds":
                text = "" if _missing(value) else f"{float(value):.0f}"
            elif column in ("row_id", "config_hash"):
                text = "" if _missing(value) else str(value)[:12]
            else:
                text = _fmt_value(value)
            cls = ' class="num"' if kind == "num" else (' class="id"' if column in ("row_id", "config_hash") else "")
            if column in ("row_id", "config_hash", "checkpoint") and text:
                tip = f' title="{_esc(value)}"'
            cells.append(f'<td{cls} data-value="{_esc(_data_value(value))}"{tip}>{_esc(text)}</td>')
        ceiling = ' class="ceiling"' if row["method"] in CEILING_METHODS else ""
        body.append(f'<tr data-row-id="{_esc(row["row_id"])}"{ceiling}>{"".join(cells)}</tr>')
    title, note = _heading(key, sort_by, descending, len(group))
    if _has_std(metrics):
        note += "; a ± b = mean ± std over evaluation seeds"
    if group["method"].isin(CEILING_METHODS).any():
        note += "; italic rows = reference ceiling (human vs human)"
    protocols = sorted({t for t in group["protocol_json"] if isinstance(t, str) and t})
    details = "".join(f'<details class="protocol"><summary>protocol object{f" {i + 1}" if len(protocols) > 1 else ""}'
                      f'</summary><pre>{_esc(json.dumps(json.loads(t), indent=2, sort_keys=True, ensure_ascii=False))}'
                      f"</pre></details>\n" for i, t in enumerate(protocols))
    board_id = _slug("board", key.get("dataset", ""), *key.values())
    return (f'<section class="board" id="{board_id}" data-protocol="{_esc(key["protocol"])}" '
            f'data-protocol-hash="{_esc(key["protocol_hash"])}" data-dataset="{_esc(key.get("dataset", ""))}">\n'
            f"<h2>{_esc(title)}</h2>\n<p class=\"board-meta\">{_esc(note)}</p>\n{details}"
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
    """One inline SVG: x = axis value, y = metric, one colour per dataset, ceiling rows as dashed lines.
    A point is the mean over the rows sharing that value (seeds and the other axes; faint dots = those
    rows). Its error bar is +-1 std: *across those rows* when there are several, or, when the point is a
    single row, *that row's own* ``<metric>_std`` (the spread over its evaluation seeds) if it has one."""
    name = axis[len("axis."):]
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    std_column = _std_column(metric, rows.columns)
    data = rows[[axis, "dataset", metric] + ([std_column] if std_column else [])]
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

    # (x, mean, std, n, ys, source): source "rows" = std across the n rows, "seeds" = the single row's own
    # <metric>_std, "" = no spread known
    series: dict[str, list[tuple[float, float, float, int, list[float], str]]] = {}
    all_y: list[float] = []
    sources: set[str] = set()
    for dataset in datasets:
        points = []
        for index, (k, v) in enumerate(values):
            at_x = data[axis].map(lambda a, k=k: not _missing(a) and _axis_value_key(a) == k)
            mask = (data["dataset"] == dataset) & at_x
            ys = [scale * float(y) for y in data.loc[mask, metric]]
            if ys:
                mean, std, n = _stats(ys)
                source = "rows" if n > 1 else ""
                if n == 1 and std_column and not _missing(data.loc[mask, std_column].iloc[0]):
                    std, source = scale * abs(float(data.loc[mask, std_column].iloc[0])), "seeds"
                sources.add(source)
                points.append((xs[index], mean, std, n, ys, source))
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
        for x, mean, std, n, ys, source in points:
            X = tx(x) + offset
            for y in ys if n > 1 else []:
                group.append(f'<circle cx="{X:.1f}" cy="{ty(y):.1f}" r="2.2" fill="{color}" fill-opacity="0.3"/>')
            if std > 0:
                y0, y1 = ty(mean - std), ty(mean + std)
                group.append(f'<path class="errorbar" data-source="{source}" d="M{X:.1f} {y0:.1f}V{y1:.1f}'
                             f'M{X - 4:.1f} {y0:.1f}h8M{X - 4:.1f} {y1:.1f}h8" stroke="{color}" stroke-width="1.2"/>')
            xv = _fmt_value(values[xs.index(x)][1])
            spread = {"rows": f" ± {std:.2g} (std across {n} rows)",
                      "seeds": f" ± {std:.2g} (the row's std over seeds)"}.get(source, "")
            group.append(f'<circle class="point" cx="{X:.1f}" cy="{ty(mean):.1f}" r="4" fill="{color}">'
                         f'<title>{_esc(dataset)} · {_esc(name)}={_esc(xv)}: {mean:.4g}{_esc(spread)} (n={n})'
                         f'</title></circle>')
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
    hashes = sorted(set(rows.loc[data.index, "protocol_hash"]))
    fig_id = _slug("plot", name, protocol_key["protocol"], protocol_key["scoring_hash"], metric)
    bars = []
    if "rows" in sources:
        bars.append("±1 std across the rows sharing a value where there are several")
    if "seeds" in sources:
        bars.append(f"the row's own ±1 std over evaluation seeds ({metric}{STD_SUFFIX}) where a point is one row")
    caption = (f"{label} by {name}: each point is the mean over the {len(data)} row(s) sharing that value "
               f"(seeds and other axes); error bars: {'; '.join(bars) or 'none (no spread known)'}; "
               f"{'line' if numeric else 'grouped points'} per dataset.")
    if len(hashes) > 1:
        caption += (f" The points span {len(hashes)} protocol hashes ({', '.join(h[:12] for h in hashes)}) that "
                    f"share one scoring hash ({protocol_key['scoring_hash'][:12]}): they differ only in sampler "
                    "settings (steps, CFG, grid, dtype), so they are compared here but ranked in separate tables.")
    return (f'<figure class="axis-plot" id="{fig_id}" data-axis="{_esc(name)}" data-metric="{_esc(metric)}" '
            f'data-kind="{"numeric" if numeric else "categorical"}" data-protocol="{_esc(protocol_key["protocol"])}" '
            f'data-scoring-hash="{_esc(protocol_key["scoring_hash"] if protocol_key["by"] == "scoring_hash" else "")}" '
            f'data-protocol-hash="{_esc(" ".join(hashes))}">\n{"".join(out)}\n'
            f"<figcaption>{_esc(caption)}</figcaption>\n</figure>")


def scoring_key(protocol_text: Any, protocol_hash: str) -> tuple[str, str]:
    """("scoring_hash", h) from a row's ``protocol_json`` when it has one, else ("protocol_hash", its hash)."""
    try:
        info = json.loads(protocol_text) if isinstance(protocol_text, str) and protocol_text else None
    except ValueError:
        info = None
    scoring = info.get("scoring_hash") if isinstance(info, dict) else None
    if isinstance(scoring, str) and scoring:
        return "scoring_hash", scoring
    return "protocol_hash", str(protocol_hash)


def _plot_groups(expanded: pd.DataFrame):
    """(key, rows) per (protocol name, scoring key); key = {"protocol", "scoring_hash" (the scoring hash, or
    the protocol hash for rows without protocol_json), "by", "protocol_hashes"}."""
    keys = [scoring_key(t, h) for t, h in zip(expanded["protocol_json"], expanded["protocol_hash"])]
    labels = pd.DataFrame({"protocol": expanded["protocol"].astype(str).to_numpy(),
                           "by": [k[0] for k in keys], "scoring_hash": [k[1] for k in keys]}, index=expanded.index)
    for protocol, by, scoring in sorted(set(map(tuple, labels.to_numpy().tolist()))):
        mask = (labels["protocol"] == protocol) & (labels["by"] == by) & (labels["scoring_hash"] == scoring)
        group = expanded[mask]
        yield {"protocol": protocol, "scoring_hash": scoring, "by": by,
               "protocol_hashes": sorted(set(group["protocol_hash"]))}, group


def axis_plots(df: pd.DataFrame, metric: str = "mauve") -> list[tuple[dict, str, str]]:
    """(plot-group key, axis name, figure HTML) for every axis with more than one scored value within one
    (protocol name, scoring hash) group; see ``_plot_groups`` for the key and ``_axis_plot`` for the bars."""
    expanded = expand(df) if len(df) else df
    if not len(expanded):
        return []
    _check_metric(expanded, metric)
    plots = []
    for key, group in _plot_groups(expanded):
        ceilings = group[group["method"].isin(CEILING_METHODS)]
        rows = group[~group["method"].isin(CEILING_METHODS) & group[metric].notna()]
        datasets = sorted(set(group["dataset"]))
        for axis in axis_columns(group):
            present = [v for v in rows[axis] if not _missing(v)]
            if len({_axis_value_key(v) for v in present}) < 2:
                continue
            plots.append((key, axis[len("axis."):], _axis_plot(rows, ceilings, axis, metric, key, datasets)))
    return plots


def _progression_entries(groups: list[tuple[dict, pd.DataFrame]], sort_by: str,
                         descending: bool) -> tuple[list[dict], int]:
    """The rows with a (valid) progression, in table order (group, then rank), and how many were skipped
    because their progression_json does not hold a valid progression (e.g. written by a newer version)."""
    entries, skipped = [], 0
    for _, group in groups:
        for _, row in _rank(group, sort_by, descending).iterrows():
            text = row["progression_json"]
            if not isinstance(text, str) or not text:
                continue
            try:
                progression = check_progression(f"row {row['row_id']}", json.loads(text))
            except (LeaderboardError, ValueError):
                skipped += 1
                continue
            entries.append({"row_id": row["row_id"], "protocol_hash": row["protocol_hash"], "seed": row["seed"],
                            "label": " · ".join(_fmt_value(row[c]) for c in ("method", "trial", "dataset")),
                            **{k: progression[k] for k in ("prompt", "reference", "total_steps", "steps", "texts")}})
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["label"]] = counts.get(entry["label"], 0) + 1
    for entry in entries:  # the same method/trial/dataset under several protocols or seeds: say which
        if counts[entry["label"]] > 1:
            entry["label"] += f" (protocol {entry['protocol_hash'][:8]}, seed {entry['seed']})"
    return entries, skipped


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' (so no '</script>' or '<!--'), and no
    U+2028/U+2029; JSON.parse reads the \\u escapes back to the same text."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _progression_body(entry: dict) -> str:
    """The view's rows (the script builds the same ones when another row is chosen)."""
    lines = [f'<tr class="prompt"><th scope="row">prompt</th><td>{_esc(entry["prompt"])}</td></tr>']
    for step, text in zip(entry["steps"], entry["texts"]):
        lines.append(f'<tr class="step" data-step="{step}"><th scope="row">step {step} / {entry["total_steps"]}</th>'
                     f"<td>{_esc(text)}</td></tr>")
    lines.append(f'<tr class="reference"><th scope="row">reference</th><td>{_esc(entry["reference"])}</td></tr>')
    return "\n".join(lines)


def _progression_section(entries: list[dict], skipped: int) -> str:
    parts = ['<section id="progression">', "<h2>Denoising progression</h2>"]
    note = ("One fixed evaluation sample per row: its prompt, the text decoded from the sampler's state after "
            "each recorded step, and the reference continuation.")
    if skipped:
        note += f" {skipped} row(s) with an unreadable progression are not listed."
    parts.append(f'<p class="meta">{_esc(note)}</p>')
    if not entries:
        parts.append('<p class="meta">No row has a recorded denoising progression.</p>\n</section>')
        return "\n".join(parts)
    options = "".join(f'<option value="{_esc(e["row_id"])}"{" selected" if i == 0 else ""}>{_esc(e["label"])}</option>'
                      for i, e in enumerate(entries))
    data = {e["row_id"]: {k: e[k] for k in ("label", "prompt", "reference", "total_steps", "steps", "texts")}
            for e in entries}
    first = entries[0]
    parts += [f'<p><label for="progression-select">row</label> <select id="progression-select">{options}</select></p>',
              f'<table class="progression" id="progression-view" data-row-id="{_esc(first["row_id"])}">'
              f"<tbody>\n{_progression_body(first)}\n</tbody></table>",
              f'<script type="application/json" id="progression-data">{_script_json(data)}</script>', "</section>"]
    return "\n".join(parts)


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
    progressions, skipped = _progression_entries(groups, sort_by, descending)
    parts.append(f'<p class="meta">{len(df)} rows · {len(groups)} table(s) · generated {_esc(utc_now()[:19])}Z · '
                 f"sorted by {_esc(_metric_label(sort_by))} ({'descending' if descending else 'ascending'}); click a "
                 "column header to re-sort. Rows are ranked only within one protocol (name and hash) and dataset. "
                 "Italic rows are reference ceilings.</p>")
    titles = [_heading(key, sort_by, descending, 0)[0] for key, _ in groups]
    links = []
    for (key, _), title in zip(groups, titles):  # tables of one title (several protocol hashes): say which
        suffix = f" ({key['protocol_hash'][:8]})" if titles.count(title) > 1 else ""
        links.append(f'<a href="#{_slug("board", key.get("dataset", ""), *key.values())}">{_esc(title + suffix)}</a>')
    links.append('<a href="#axis-plots">ablation axes</a>')
    links.append('<a href="#progression">denoising progression</a>')
    parts.append(f'<nav id="contents">{" ".join(links)}</nav>')
    with_progression = frozenset(entry["row_id"] for entry in progressions)
    parts += [_html_table(key, group, sort_by, descending, with_progression) for key, group in groups]
    parts.append(f'<section id="axis-plots">\n<h2>Ablation axes: {_esc(_metric_label(sort_by))}</h2>')
    if not plots:
        parts.append('<p class="meta">No ablation axis has more than one value with a score.</p>')
    else:
        parts.append('<p class="meta">Plots group rows by protocol name and scoring hash (the protocol without its '
                     "sampler settings), so a sweep over sampler steps or CFG, whose rows differ in protocol hash, "
                     "is still drawn over that axis.</p>")
    plot_groups = {(k["protocol"], k["scoring_hash"]) for k, _, _ in plots}
    current = None
    for key, _, figure in plots:
        if len(plot_groups) > 1 and (key["protocol"], key["scoring_hash"]) != current:
            current = (key["protocol"], key["scoring_hash"])
            if key["by"] == "scoring_hash":
                where = (f"scoring hash {key['scoring_hash'][:12]}, {len(key['protocol_hashes'])} "
                         f"protocol hash{'es' if len(key['protocol_hashes']) != 1 else ''}")
            else:
                where = f"protocol hash {key['scoring_hash'][:12]}"
            parts.append(f"<h3>{_esc(key['protocol'])} ({_esc(where)})</h3>")
        parts.append(figure)
    parts.append("</section>")
    parts.append(_progression_section(progressions, skipped))
    parts.append(f"<script>{_JS}</script>\n<script>{_PROGRESSION_JS}</script>\n</body>\n</html>\n")
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
