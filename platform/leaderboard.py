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
                    ``<m>_std`` is the spread (std over evaluation seeds) of metric ``<m>``, ``<m>_ci_low`` and
                    ``<m>_ci_high`` its bootstrap confidence interval (same units as ``<m>``)
    seed (int64), compute_seconds (float64, the trial's total), checkpoint, config_hash, machine,
    created_at (UTC ISO 8601)
    protocol_json   optional: JSON object of the evaluation protocol ({"name", "version", "hash" (== protocol_hash),
                    "scoring_hash" (the protocol without its sampler section), ...its fields})
    progression_json  optional: the denoising progression of one fixed evaluation sample ({"prompt", "reference",
                    "total_steps", "steps": [1, 10, ...], "texts": [text after steps[i] sampler steps, ...]})
    evidence_json   optional (schema 2): the row's per-prompt evidence ({"n": prompts, "seeds", "per_prompt",
                    "genppl", "mauve"}, the format ``significance`` documents), which paired comparisons resample
Files written before the optional columns existed read as before (the columns come back null); schema-1 files lack
``evidence_json``. ``expand`` turns ``axes`` into ``axis.<name>`` columns and ``metrics_json`` into one column per
metric; it leaves ``evidence_json`` alone (it is per-prompt data, not a metric).

Reference rows. Human-ceiling rows (method ``human``, trial ``human-ceiling``) bound what a model can reach; floor
rows (method ``floor``, trial ``floor:prompt-repeat`` / ``floor:unigram`` / ``floor:top-token`` /
``floor:other-document``) are degenerate generators scored by the same harness that must rank at the bottom. Both
are ranked with the models and shown in italics (floors greyed, their kind as the trial name). Ceilings are dashed
lines in the per-axis plots; floors are left out of those (they have no axes, and lines at their far lower scores
would flatten the curves) and are shown in the tables and the Gen-PPL–entropy plane.

Cells. A metric ``<m>`` with ``<m>_ci_low`` / ``<m>_ci_high`` (protocol v3) shows as ``value [low, high]`` (the
bootstrap CI, scaled like the metric: x100 for ROUGE, BERTScore, MAUVE); a row with a seed spread ``<m>_std`` but
no CI (protocol v2) shows ``mean ± std``. The CI and std columns are folded into the metric's cell, never columns
of their own (unless one is the sort metric). Gen-PPL never appears without the unigram entropy right after it.

Marks. In each ranked table the best *model* row with evidence for the sort metric is the yardstick: never a
floor (a degenerate generator can win one metric, e.g. the top-token floor's tiny Gen-PPL) nor the human ceiling
(a bound, not a competitor). The other models and the floors with evidence are tested against it with
``significance.not_significantly_worse`` / ``paired_difference`` (paired bootstrap over prompts,
``SIGNIFICANCE_REPLICATES`` replicates, fixed ``SIGNIFICANCE_SEED``, so renders are deterministic): the best row
is marked ``best`` and the rows not significantly different from it at p < ``SIGNIFICANCE_ALPHA`` are marked
``≈``, in a narrow column after the rank, with a legend under the table (which also counts the rows without
evidence, which get no mark). Tables with fewer than two such rows, or no such model row (all v2 tables), have
no marks column.

Flags. A row whose unigram entropy is below ``ENTROPY_FLAG_RATIO`` (0.8) x the entropy of the table's human
row gets its Gen-PPL cell prefixed ``⚠``, with a legend line: a low Gen-PPL there is degenerate repetition, not
quality. A table without a human row flags nothing.

Comparisons. ``find_row`` / ``compare_rows`` / ``format_comparison`` back ``latentlm compare``: a paired bootstrap
of A - B on every metric both rows have evidence for. Rows must share dataset and scoring hash (the same prompts
and scorers); a different protocol hash (sampler settings) is allowed and noted.

Plots. Unlike the tables, the per-axis plots group rows by (protocol name, scoring hash): a sweep over sampler steps or
CFG changes the protocol hash (the protocol fixes the sampler) but not what is scored, so its rows still get
one plot over that axis (rows without ``protocol_json`` fall back to their protocol hash). The HTML page also
draws, per such group and dataset, the Gen-PPL–entropy plane: x = unigram entropy, y = Gen-PPL (log scale), one
point per row, human and floor rows labelled, CI error bars, the flag threshold as a dashed line.

Rendering never imports matplotlib: the plots are hand-written inline SVG (no fonts, no network).
"""
from __future__ import annotations

import dataclasses
import functools
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

SCHEMA_VERSION = 2  # 2: the optional evidence_json column
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
FLOOR_METHODS = frozenset({"floor"})  # must-lose reference rows (degenerate generators): ranked, not in axis plots
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"  # metric "<m>_ci_low"/"<m>_ci_high" = bootstrap CI of "<m>"
ENTROPY_FLAG_RATIO = 0.8  # Gen-PPL is flagged when the row's unigram entropy < this x the human row's
SIGNIFICANCE_ALPHA = 0.05  # marks: rows whose paired test against the best gives p >= this are "tied"
SIGNIFICANCE_REPLICATES = 1000
SIGNIFICANCE_SEED = 0  # fixed, so a rendered table is the same every time
TIE_MARK, BEST_MARK, FLAG_MARK = "≈", "best", "⚠"

SCHEMA = pa.schema([
    ("row_id", pa.string()), ("method", pa.string()), ("sweep", pa.string()), ("trial", pa.string()),
    ("dataset", pa.string()), ("protocol", pa.string()), ("protocol_hash", pa.string()), ("axes", pa.string()),
    *[(name, pa.float64()) for name in METRICS], ("metrics_json", pa.string()),
    ("seed", pa.int64()), ("compute_seconds", pa.float64()), ("checkpoint", pa.string()),
    ("config_hash", pa.string()), ("machine", pa.string()), ("created_at", pa.string()),
    ("protocol_json", pa.string()), ("progression_json", pa.string()),  # optional; absent from older files
    ("evidence_json", pa.string()),  # optional; absent from schema-1 files
])
COLUMNS = tuple(SCHEMA.names)
JSON_COLUMNS = ("axes", "metrics_json", "protocol_json", "progression_json", "evidence_json")  # null or JSON objects
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


def check_evidence(where: str, value: Any) -> dict:
    """Validate one row's per-prompt evidence (the format ``significance`` documents) as far as the leaderboard
    relies on it: a JSON object with an integer ``"n"`` >= 1 (the prompt count that pairs rows). Returns it as
    plain JSON data; errors start with ``where``."""
    data = _json_roundtrip(where, value)
    if not isinstance(data, dict):
        raise LeaderboardError(f"{where}: expected a JSON object (mapping), got {type(value).__name__}")
    if not _integer(data.get("n")) or data["n"] < 1:
        raise LeaderboardError(f"{where}: 'n' (the number of prompts) must be a positive integer, got "
                               f"{data.get('n')!r}")
    return data


def _per_dataset(field: str, values: Mapping[str, Any] | None, results: Mapping[str, Any], check) -> dict[str, str]:
    """``{dataset: canonical JSON}`` of an optional per-dataset mapping, each value checked by
    ``check(where, value)``; a dataset that is not in ``results`` is an error naming it."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise LeaderboardError(f"{field}: expected {{dataset: value}}, got {values!r}")
    out = {}
    for dataset, value in values.items():
        where = f"{field}[{dataset!r}]"
        if dataset not in results:
            raise LeaderboardError(f"{where}: no such dataset in results ({', '.join(map(repr, results))})")
        out[dataset] = canonical_json(check(where, value))
    return out


def make_rows(method: str, sweep: str, trial: str, axes: Mapping[str, Any] | None,
              results: Mapping[str, Mapping[str, float]], protocol: str, protocol_hash: str, seed: int,
              compute_seconds: float | None, checkpoint: str | os.PathLike | None, config: Mapping[str, Any] | Any,
              *, machine: str | None = None, created_at: str | None = None,
              protocol_info: Mapping[str, Any] | None = None,
              progressions: Mapping[str, Mapping[str, Any]] | None = None,
              evidences: Mapping[str, Mapping] | None = None) -> list[dict]:
    """One row per eval dataset of one evaluated trial. ``results`` maps dataset -> {metric: value};
    the metrics in ``METRICS`` get their own columns (missing ones null), any other numeric metric goes
    into ``metrics_json`` (name a seed spread ``<metric>_std``, a confidence interval ``<metric>_ci_low`` /
    ``<metric>_ci_high``). ``compute_seconds`` is the trial's total (repeated on each dataset's row).
    ``protocol_info`` (the evaluation protocol object, see ``protocol_json``) is stored on every row;
    ``progressions`` maps a dataset of ``results`` to the denoising progression of one fixed sample (see
    ``check_progression``) and ``evidences`` to its per-prompt evidence (see ``check_evidence``), each stored
    on that dataset's row."""
    _text("method", method)
    _text("protocol", protocol)
    _text("protocol_hash", protocol_hash)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise LeaderboardError(f"seed: expected an integer, got {seed!r}")
    if not isinstance(results, Mapping) or not results:
        raise LeaderboardError(f"results: expected a non-empty {{dataset: {{metric: value}}}}, got {results!r}")
    protocol_text = None if protocol_info is None else protocol_json(protocol, protocol_hash, protocol_info)
    progression_texts = _per_dataset("progressions", progressions, results, check_progression)
    evidence_texts = _per_dataset("evidences", evidences, results, check_evidence)
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
            "evidence_json": evidence_texts.get(dataset),
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
    if name == "gen_tokens":
        return f"{value:.1f}"
    # four significant digits; a value they round keeps its trailing zeros: an entropy of 2.9998 reads 3.000
    # (and its CI keeps those decimals), not 3 [3, 3], while an exact 80 stays 80
    text = f"{value:.4g}"
    return text if float(text) == value else f"{value:#.4g}".rstrip(".")


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


@dataclasses.dataclass(frozen=True)
class _MetricColumn:
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


def _table_columns(group: pd.DataFrame, sort_by: str, hidden: frozenset = frozenset()
                   ) -> tuple[list[str], list[_MetricColumn]]:
    """The axis columns with a value, and the metric columns with a value: a ``<m>_std`` or ``<m>_ci_*``
    column is folded into ``<m>``'s cell unless it is itself the sort metric. Metrics in ``hidden`` are left
    out (never the sort metric); ``entropy`` always follows ``gen_ppl``."""
    axes = [c for c in axis_columns(group) if not group[c].map(_missing).all()]
    present = [m for m in metric_columns(group) if m in group.columns and group[m].notna().any()
               and m.removeprefix("metric.") not in hidden]
    if sort_by not in present:
        present.append(sort_by)
    present = _entropy_beside_gen_ppl(present)
    columns = [_MetricColumn(m, _std_column(m, present), _ci_columns(m, present)) for m in present]
    folded = {c.std for c in columns if c.std} | {bound for c in columns if c.ci for bound in c.ci}
    return axes, [c for c in columns if c.metric not in folded or c.metric == sort_by]


def _decimals(text: str) -> int | None:
    """Decimals of a plain number as formatted (None for exponent notation)."""
    match = re.fullmatch(r"-?\d+(?:\.(\d+))?", text)
    return len(match.group(1) or "") if match else None


def _fmt_metric_ci(name: str, value: Any, low: Any, high: Any) -> str:
    """``value [low, high]``: the bounds scaled like the metric (x100 for ``PERCENT_METRICS``) and printed
    with the value's decimals; just the value when a bound is missing."""
    text = _fmt_metric(name, value)
    if not text or _missing(low) or _missing(high):
        return text
    scale = 100.0 if name in PERCENT_METRICS else 1.0
    digits = _decimals(text)
    bounds = [f"{scale * float(b):.{digits}f}" if digits is not None else f"{scale * float(b):.3g}" for b in (low, high)]
    return f"{text} [{bounds[0]}, {bounds[1]}]"


def _row_ci(row: pd.Series, ci: tuple[str, str] | None) -> tuple[float, float] | None:
    if ci is None or any(_missing(row.get(c)) for c in ci):
        return None
    return float(row[ci[0]]), float(row[ci[1]])


def _metric_cell(row: pd.Series, column: _MetricColumn) -> tuple[str, str]:
    """A metric cell's text and what it shows beside the value: "ci" (the bootstrap CI, preferred), "std"
    (mean ± std over seeds, for rows without a CI, e.g. protocol v2 rows) or ""."""
    value = row.get(column.metric)
    ci = _row_ci(row, column.ci)
    if ci is not None and not _missing(value):
        return _fmt_metric_ci(column.metric, value, *ci), "ci"
    std = _row_std(row, column.std)
    text = _fmt_metric_std(column.metric, value, std)
    return text, ("std" if text and not _missing(std) else "")


def _ci_note(group: pd.DataFrame) -> str:
    """What ``a [l, h]`` means, with the CI level when the rows' protocols agree on one."""
    levels = set()
    for text in group["protocol_json"]:
        scoring = _json_object(text).get("scoring")
        if isinstance(scoring, dict) and _is_number(scoring.get("ci_level")):
            levels.add(float(scoring["ci_level"]))
    level = f"{100 * levels.pop():g}% " if len(levels) == 1 else ""
    return f"a [l, h] = value and its {level}bootstrap CI (prompts and seeds resampled)"


# -- Gen-PPL entropy flag ----------------------------------------------------------------------------

def _entropy_threshold(group: pd.DataFrame) -> float | None:
    """``ENTROPY_FLAG_RATIO`` x the (mean) unigram entropy of the table's human-ceiling rows; None without one."""
    if "entropy" not in group.columns:
        return None
    human = group.loc[group["method"].isin(CEILING_METHODS), "entropy"].dropna()
    return ENTROPY_FLAG_RATIO * float(human.mean()) if len(human) else None


def _entropy_flagged(row: pd.Series, threshold: float | None) -> bool:
    """Whether the row's Gen-PPL needs the warning: its entropy is far below the human row's."""
    entropy = row.get("entropy")
    return (threshold is not None and row["method"] not in CEILING_METHODS and not _missing(row.get("gen_ppl"))
            and _is_number(entropy) and float(entropy) < threshold)


def _flag_legend() -> str:
    return (f"{FLAG_MARK}: unigram entropy below {ENTROPY_FLAG_RATIO:.0%} of the human row's; low Gen-PPL here "
            "signals degenerate repetition, not quality")


def _metric_cells(row: pd.Series, metrics: list[_MetricColumn], threshold: float | None
                  ) -> list[tuple[str, str, bool]]:
    """(text, kind from ``_metric_cell``, flagged) per metric column; a flagged Gen-PPL is prefixed ⚠."""
    cells = []
    for column in metrics:
        text, kind = _metric_cell(row, column)
        flagged = column.metric == "gen_ppl" and bool(text) and _entropy_flagged(row, threshold)
        cells.append((f"{FLAG_MARK} {text}" if flagged else text, kind, flagged))
    return cells


# -- significance marks ------------------------------------------------------------------------------

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
    from . import significance
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
class _Marks:
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


def _significance_marks(group: pd.DataFrame, metric: str, descending: bool) -> _Marks:
    """Which rows of a table are tied with its best on ``metric`` (paired bootstrap over prompts). The best is
    a model: a floor is tested against it but never is it (a top-token floor would otherwise be the "best"
    Gen-PPL that every model is measured against); the human ceiling is a bound, not a competitor, and is not
    tested. Needs a model and one more row with evidence."""
    competitors = group[~group["method"].isin(CEILING_METHODS)]
    evidence, floors = {}, {}
    for row_id, method, text in zip(competitors["row_id"], competitors["method"], competitors["evidence_json"]):
        if metric in evidence_metrics(_json_object(text)):
            (floors if method in FLOOR_METHODS else evidence)[row_id] = text
    if not evidence or len(evidence) + len(floors) < 2:
        return _Marks()
    untested = len(competitors) - len(evidence) - len(floors)
    try:
        best, tied = _tied_with_best(tuple(sorted(evidence.items())), metric, descending, tuple(sorted(floors.items())))
    except (ValueError, KeyError, TypeError, IndexError) as err:  # rows not paired, or malformed evidence
        return _Marks(untested=untested, error=str(err) or type(err).__name__)
    top = _rank(competitors[competitors["row_id"].isin(list(evidence))], metric, descending).iloc[0]
    stored = competitors.set_index("row_id")[metric]
    if best is not None and not math.isclose(stored[best], top[metric], rel_tol=1e-9, abs_tol=1e-12):
        # the bootstrap's best must be the table's: otherwise the evidence does not back the stored values
        return _Marks(untested=untested, error=f"the evidence ranks row {best[:12]} best, the table ranks "
                                               f"{top['row_id'][:12]} first (evidence and stored values disagree)")
    return _Marks(best, tied, untested)


def _marks_legend(marks: _Marks, metric: str, group: pd.DataFrame) -> str:
    label = _metric_label(metric)
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


# -- Markdown ----------------------------------------------------------------------------------------

def _reference_note(group: pd.DataFrame) -> str:
    note = ""
    if group["method"].isin(CEILING_METHODS).any():
        note += f"; {', '.join(sorted(CEILING_METHODS))} = reference ceiling"
    if group["method"].isin(FLOOR_METHODS).any():
        note += f"; {', '.join(sorted(FLOOR_METHODS))} = must-lose reference (a degenerate generator, named by its trial)"
    return note


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown_table(key: dict, group: pd.DataFrame, sort_by: str, descending: bool) -> str:
    axes, metrics = _table_columns(group, sort_by, MARKDOWN_HIDDEN)
    marks = _significance_marks(group, sort_by, descending)
    threshold = _entropy_threshold(group)
    headers = ["#", *([TIE_MARK] if marks.shown else []), "method", "sweep", "trial",
               *[a[len("axis."):] for a in axes],
               *[f"**{_metric_label(c.metric)}**" if c.metric == sort_by else _metric_label(c.metric) for c in metrics],
               "seed", "compute"]
    rows, kinds, flagged = [], set(), False
    for rank, (_, row) in enumerate(_rank(group, sort_by, descending).iterrows(), 1):
        cells = _metric_cells(row, metrics, threshold)
        kinds |= {kind for _, kind, _ in cells}
        flagged |= any(flag for _, _, flag in cells)
        mark = marks.mark(row["row_id"])
        texts = [str(rank) if not _missing(row[sort_by]) else "-",
                 *([f"**{mark}**" if mark == BEST_MARK else mark] if marks.shown else []),
                 _fmt_value(row["method"]), _fmt_value(row["sweep"]), _fmt_value(row["trial"]),
                 *[_fmt_value(row[a]) for a in axes], *[text for text, _, _ in cells],
                 _fmt_value(row["seed"]), _fmt_seconds(row["compute_seconds"])]
        rows.append("| " + " | ".join(map(_md_cell, texts)) + " |")
    title, note = _heading(key, sort_by, descending, len(group))
    if "ci" in kinds:
        note += "; " + _ci_note(group)
    if "std" in kinds:
        note += "; a ± b = mean ± std over evaluation seeds"
    note += _reference_note(group)
    lines = [f"## {_md_cell(title)}", "", _md_cell(note), "", "| " + " | ".join(map(_md_cell, headers)) + " |",
             "|" + "---|" * len(headers), *rows]
    legends = ([_marks_legend(marks, sort_by, group)] if marks.shown else []) + ([_flag_legend()] if flagged else [])
    for legend in legends:
        lines += ["", _md_cell(legend)]
    return "\n".join(lines) + "\n"


def to_markdown(df: pd.DataFrame, sort_by: str = "mauve", group_by: Sequence[str] = ("protocol", "dataset"),
                descending: bool = True) -> str:
    """One Markdown table per (protocol, protocol_hash, dataset), ranked by ``sort_by``, with significance
    marks and the Gen-PPL entropy flag (see the module docstring) and their legends under it."""
    if not len(df):
        return "_No leaderboard rows._\n"
    expanded = expand(df)
    _check_metric(expanded, sort_by)
    return "\n".join(_markdown_table(key, group, sort_by, descending) for key, group in _groups(expanded, group_by))


# -- paired comparison of two rows ---------------------------------------------------------------------

COMPARE_ORDER = ("mauve", "gen_ppl", "entropy", "rouge1", "rouge2", "rougeL", "bertscore")  # then the rest by name


def row_label(row: pd.Series) -> str:
    return f"{str(row['row_id'])[:12]} ({_fmt_value(row['method'])} · {_fmt_value(row['trial'])} · {row['dataset']})"


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
    if not _integer(replicates) or replicates < 2:
        raise LeaderboardError(f"--replicates: at least 2 bootstrap replicates, got {replicates!r}")
    if not _integer(seed) or seed < 0:  # numpy's generator rejects it later, with a message naming a metric
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
    return _entropy_threshold(expand(human)) if len(human) else None


def _row_evidence(row: pd.Series, name: str) -> dict:
    evidence = _json_object(row.get("evidence_json"))
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
    key_a, key_b = scoring_key(a["protocol_json"], a["protocol_hash"]), scoring_key(b["protocol_json"], b["protocol_hash"])
    if key_a != key_b:
        raise LeaderboardError(f"rows of different scoring protocols cannot be paired: A {row_label(a)} has "
                               f"{key_a[0]} {key_a[1]}, B {row_label(b)} has {key_b[0]} {key_b[1]}; such rows use "
                               "different prompts or scorers")
    if ev_a["n"] != ev_b["n"]:
        raise LeaderboardError(f"rows are not paired: A {row_label(a)} has evidence for {ev_a['n']} prompts, "
                               f"B {row_label(b)} for {ev_b['n']}")


def _compare_order(metrics: Iterable[str]) -> list[str]:
    return sorted(metrics, key=lambda m: (COMPARE_ORDER.index(m), "") if m in COMPARE_ORDER else (len(COMPARE_ORDER), m))


def compare_rows(a: pd.Series, b: pd.Series, level: float = 0.95, replicates: int = 1000,
                 seed: int = 0, board: pd.DataFrame | None = None) -> Comparison:
    """Paired bootstrap of A - B on every metric both rows have evidence for (``significance.paired_difference``).
    Rows must share dataset and scoring hash; a different protocol hash (sampler settings) only adds a note.
    With the ``board`` the rows come from, a Gen-PPL whose row's entropy is far below the human ceiling's is
    flagged as in the tables (``human_entropy_threshold``)."""
    from . import significance
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
    if _missing(value) or not math.isfinite(value):
        return "n/a"
    scaled = 100 * value if metric in PERCENT_METRICS else value
    return f"{scaled:{'+' if signed else ''}.{decimals}f}"


def _fmt_p(p: float) -> str:
    if _missing(p) or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _verdict(diff, alpha: float) -> str:
    """Which row is better, when the difference is significant at ``alpha``."""
    from . import significance
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
    head = [f"{c.a['protocol']} · {c.a['dataset']} · {c.n} prompts, paired by index · {scoring[0].replace('_', ' ')} "
            f"{scoring[1][:12]}",
            f"A = {row_label(c.a)}, protocol hash {str(c.a['protocol_hash'])[:12]}",
            f"B = {row_label(c.b)}, protocol hash {str(c.b['protocol_hash'])[:12]}", *c.notes, ""]
    table = [["metric", "A", "B", "A − B", f"{level} CI", "p", "verdict"]]
    for d in c.differences:
        label = _metric_label(d.metric) + (" (x100)" if d.metric in PERCENT_METRICS else "")
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
            foot += f"\n{_flag_legend()} ({c.entropy_threshold:.3g})"
    return "\n".join(head + lines + ["", foot]) + "\n"


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
table.leaderboard tr.floor{font-style:italic;background:#f1f2f5;color:#5a6272}
table.leaderboard td.mark{text-align:center}table.leaderboard tr[data-mark=best] td.mark{font-weight:700}
table.leaderboard td.flag{color:#b3261e}
p.legend{color:#5a6272;font-size:12.5px;margin:4px 0}
td.id{font-family:ui-monospace,Menlo,monospace;font-size:11.5px;color:#5a6272}
figure.axis-plot{display:inline-block;margin:8px 16px 16px 0;vertical-align:top}
svg.axis-plot-svg text{font:11px system-ui,sans-serif;fill:#1d2330}
svg.axis-plot-svg .grid{stroke:#e3e6ec}svg.axis-plot-svg .frame{stroke:#8a92a3;fill:none}
figure.plane-plot{display:inline-block;margin:8px 16px 16px 0;vertical-align:top}
svg.plane-plot-svg text{font:11px system-ui,sans-serif;fill:#1d2330}svg.plane-plot-svg text.point-label{font-size:10px}
svg.plane-plot-svg .grid{stroke:#e3e6ec}svg.plane-plot-svg .frame{stroke:#8a92a3;fill:none}
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


def _html_columns(group: pd.DataFrame, axes: list[str], metrics: list[_MetricColumn], marks: _Marks,
                  with_progression: bool) -> list[tuple[str, str | None, str]]:
    """(header, column, kind) of an HTML table: kind num/text decides the sort; "_mark" is the marks column."""
    columns = [("#", None, "num"), *([(TIE_MARK, "_mark", "num")] if marks.shown else []),
               ("method", "method", "text"), ("sweep", "sweep", "text"), ("trial", "trial", "text")]
    for a in axes:
        numeric = all(_is_number(v) or isinstance(v, bool) or _missing(v) for v in group[a])
        columns.append((a[len("axis."):], a, "num" if numeric else "text"))
    columns += [(_metric_label(c.metric) + (" (x100)" if c.metric in PERCENT_METRICS | PERCENT_SPREADS else ""),
                 c.metric, "num") for c in metrics]
    columns += [("seed", "seed", "num"), ("compute (s)", "compute_seconds", "num"),
                ("checkpoint", "checkpoint", "text"),
                ("machine", "machine", "text"), ("created (UTC)", "created_at", "text"), ("row", "row_id", "text"),
                ("config", "config_hash", "text")]
    if with_progression:
        columns.append(("progression", "progression_json", "text"))
    return columns


def _metric_tip(row: pd.Series, column: _MetricColumn, kind: str, flagged: bool, threshold: float | None) -> str:
    """The hover text of a metric cell: what the bracket or ± means, the seed spread behind a CI, the flag."""
    tips = []
    if kind == "ci":
        tips.append("value [bootstrap CI]")
        std = _row_std(row, column.std)
        if not _missing(std):
            tips.append("± " + _fmt_metric_std(column.metric, row[column.metric], std).split(" ± ")[-1]
                        + " std over evaluation seeds")
    elif kind == "std":
        tips.append("mean ± std over evaluation seeds")
    if flagged:
        tips.append(f"unigram entropy {float(row['entropy']):.3g} < {threshold:.3g} "
                    f"({ENTROPY_FLAG_RATIO:.0%} of the human row's): low Gen-PPL from repetition")
    return f' title="{_esc("; ".join(tips))}"' if tips else ""


def _html_row(row: pd.Series, rank: int, columns, metrics: list[_MetricColumn], marks: _Marks,
              threshold: float | None, sort_by: str, with_progression: frozenset) -> tuple[str, bool, set[str]]:
    """One ``<tr>``, whether a Gen-PPL cell in it is flagged, and what its metric cells show (``_metric_cell``)."""
    has_score = not _missing(row[sort_by])
    cells = [f'<td class="num" data-value="{rank if has_score else ""}">{rank if has_score else "-"}</td>']
    metric_cells = _metric_cells(row, metrics, threshold)
    by_metric = {c.metric: (c, cell) for c, cell in zip(metrics, metric_cells)}
    flagged = False
    for _, column, kind in columns[1:]:
        if column == "_mark":
            mark = marks.mark(row["row_id"])
            value = {BEST_MARK: "2", TIE_MARK: "1"}.get(mark, "")
            cells.append(f'<td class="mark" data-value="{value}">{_esc(mark)}</td>')
            continue
        if column == "progression_json":
            link = (f'<a href="#progression={_esc(row["row_id"])}">view</a>'
                    if row["row_id"] in with_progression else "")
            cells.append(f'<td data-value="{"1" if link else ""}">{link}</td>')
            continue
        value, tip, cls = row.get(column), "", ' class="num"' if kind == "num" else ""
        if column in by_metric:
            metric, (text, shown, flag) = by_metric[column]
            tip = _metric_tip(row, metric, shown, flag, threshold)
            if flag:
                cls, flagged = ' class="num flag"', True
        elif column == "compute_seconds":
            text = "" if _missing(value) else f"{float(value):.0f}"
        elif column in ("row_id", "config_hash"):
            text, cls = ("" if _missing(value) else str(value)[:12]), ' class="id"'
        else:
            text = _fmt_value(value)
        if column in ("row_id", "config_hash", "checkpoint") and text:
            tip = f' title="{_esc(value)}"'
        cells.append(f'<td{cls} data-value="{_esc(_data_value(value))}"{tip}>{_esc(text)}</td>')
    kind = "ceiling" if row["method"] in CEILING_METHODS else ("floor" if row["method"] in FLOOR_METHODS else "")
    mark = {BEST_MARK: "best", TIE_MARK: "tied"}.get(marks.mark(row["row_id"]), "")
    attrs = (f' class="{kind}"' if kind else "") + (f' data-mark="{mark}"' if mark else "")
    line = f'<tr data-row-id="{_esc(row["row_id"])}"{attrs}>{"".join(cells)}</tr>'
    return line, flagged, {kind for _, kind, _ in metric_cells}


def _html_table(key: dict, group: pd.DataFrame, sort_by: str, descending: bool,
                progression_ids: frozenset = frozenset()) -> str:
    axes, metrics = _table_columns(group, sort_by)
    marks = _significance_marks(group, sort_by, descending)
    threshold = _entropy_threshold(group)
    with_progression = progression_ids & set(group["row_id"])
    columns = _html_columns(group, axes, metrics, marks, bool(with_progression))
    head = []
    for label, column, kind in columns:
        attrs = f' data-type="{kind}" data-col="{_esc(column or "rank")}" scope="col"'
        if column == sort_by:
            attrs += f' class="sort-metric" aria-sort="{"descending" if descending else "ascending"}"'
        head.append(f"<th{attrs}>{_esc(label)}</th>")
    body, flagged, kinds = [], False, set()
    for rank, (_, row) in enumerate(_rank(group, sort_by, descending).iterrows(), 1):
        line, flag, shown = _html_row(row, rank, columns, metrics, marks, threshold, sort_by, with_progression)
        body.append(line)
        flagged, kinds = flagged or flag, kinds | shown
    title, note = _heading(key, sort_by, descending, len(group))
    if "ci" in kinds:
        note += "; " + _ci_note(group)
    if "std" in kinds:
        note += "; a ± b = mean ± std over evaluation seeds"
    if group["method"].isin(CEILING_METHODS).any():
        note += "; italic rows = reference ceiling (human vs human)"
    if group["method"].isin(FLOOR_METHODS).any():
        note += "; italic grey rows = floors (degenerate generators that must rank last; the trial names the kind)"
    legends = ([_marks_legend(marks, sort_by, group)] if marks.shown else []) + ([_flag_legend()] if flagged else [])
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
            f'<tbody>\n{chr(10).join(body)}\n</tbody></table></div>\n'
            + "".join(f'<p class="legend">{_esc(legend)}</p>\n' for legend in legends) + "</section>")


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
    (protocol name, scoring hash) group; see ``_plot_groups`` for the key and ``_axis_plot`` for the bars.
    Floor rows are left out: they have no axes, and lines at their (far lower) scores would flatten the curves;
    the tables rank them and the Gen-PPL–entropy plane shows them. Gen-PPL is never drawn alone: each Gen-PPL
    plot is followed by the unigram entropy over the same axis (when the rows have it)."""
    expanded = expand(df) if len(df) else df
    if not len(expanded):
        return []
    _check_metric(expanded, metric)
    metrics = [metric] + (["entropy"] if metric == "gen_ppl" and "entropy" in expanded.columns else [])
    plots = []
    for key, group in _plot_groups(expanded):
        ceilings = group[group["method"].isin(CEILING_METHODS)]
        models = group[~group["method"].isin(CEILING_METHODS | FLOOR_METHODS)]
        datasets = sorted(set(group["dataset"]))
        for axis in axis_columns(group):
            for name in metrics:
                rows = models[models[name].notna()]
                present = [v for v in rows[axis] if not _missing(v)]
                if len({_axis_value_key(v) for v in present}) < 2:
                    continue
                plots.append((key, axis[len("axis."):], _axis_plot(rows, ceilings, axis, name, key, datasets)))
    return plots


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis covering [lo, hi] (both > 0): decades, with 2 and 5 between them when the range
    spans at most two decades; the first and last tick bound the axis."""
    first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    last = max(last, first + 1)
    steps = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in steps if m * 10.0 ** e <= 10.0 ** last * 1.000001]
    low = max(t for t in ticks if t <= lo * 1.000001)
    high = min(t for t in ticks if t >= hi / 1.000001)
    if high <= low:  # every value on one tick (e.g. a single row at Gen-PPL 20): the axis needs a range
        high = min(t for t in ticks if t > low)
    return [round(t, 12) for t in ticks if low <= t <= high]


_PLANE_STYLE = {"model": "#0072B2", "human": "#009E73", "floor": "#D55E00"}  # kind -> colour


def _plane_points(rows: pd.DataFrame) -> list[dict]:
    """One point per row with a finite unigram entropy and a positive Gen-PPL, with its CIs where it has them."""
    points = []
    for _, row in rows.iterrows():
        x, y = row.get("entropy"), row.get("gen_ppl")
        if not (_is_number(x) and _is_number(y) and math.isfinite(x) and math.isfinite(y) and y > 0):
            continue
        method = row["method"]
        kind = "human" if method in CEILING_METHODS else ("floor" if method in FLOOR_METHODS else "model")
        y_ci = _row_ci(row, ("gen_ppl" + CI_LOW, "gen_ppl" + CI_HIGH))
        points.append({"row_id": row["row_id"], "kind": kind, "x": float(x), "y": float(y),
                       "x_ci": _row_ci(row, ("entropy" + CI_LOW, "entropy" + CI_HIGH)),
                       "y_ci": y_ci if y_ci and y_ci[0] > 0 else None,
                       "label": _fmt_value(row["trial"]) if kind != "model" else
                       f"{_fmt_value(method)} · {_fmt_value(row['trial'])}"})
    return points


def _plane_marker(kind: str, X: float, Y: float, tip: str, css: str = "point") -> str:
    """Models: filled circles; the human ceiling: a filled diamond; floors: hollow squares. ``css``: "point" for
    a row's point, "legend-marker" for the legend's sample (so a count of points never includes the legend)."""
    color, title = _PLANE_STYLE[kind], f"<title>{_esc(tip)}</title>"
    if kind == "human":
        return (f'<path class="{css}" data-kind="human" d="M{X:.1f} {Y - 6:.1f}l6 6l-6 6l-6 -6z" '
                f'fill="{color}">{title}</path>')
    if kind == "floor":
        return (f'<rect class="{css}" data-kind="floor" x="{X - 4.5:.1f}" y="{Y - 4.5:.1f}" width="9" height="9" '
                f'fill="#fff" stroke="{color}" stroke-width="1.8">{title}</rect>')
    return f'<circle class="{css}" data-kind="model" cx="{X:.1f}" cy="{Y:.1f}" r="4" fill="{color}">{title}</circle>'


def _plane_plot(key: dict, dataset: str, rows: pd.DataFrame, points: list[dict]) -> str:
    """One inline SVG: x = unigram entropy, y = Gen-PPL (log scale), one point per row, reference rows
    labelled, CI error bars both ways, and the entropy flag threshold as a dashed vertical line."""
    threshold = _entropy_threshold(rows)
    xs = [p["x"] for p in points] + [b for p in points if p["x_ci"] for b in p["x_ci"]]
    xs += [threshold] if threshold is not None else []
    ys = [p["y"] for p in points] + [b for p in points if p["y_ci"] for b in p["y_ci"]]
    xticks, yticks = _nice_ticks(min(xs), max(xs)), _log_ticks(min(ys), max(ys))
    width, height, left, right, top, bottom = 660, 360, 62, 190, 18, 50
    px0, px1, py0, py1 = left, width - right, top, height - bottom

    def tx(x: float) -> float:  # padded, so points on the extreme ticks stay off the frame
        pad = 0.04 * (px1 - px0)
        return px0 + pad + (x - xticks[0]) / (xticks[-1] - xticks[0]) * (px1 - px0 - 2 * pad)

    def ty(y: float) -> float:
        lo, hi = math.log(yticks[0]), math.log(yticks[-1])
        return py1 - (math.log(y) - lo) / (hi - lo) * (py1 - py0)

    out = [f'<svg class="plane-plot-svg" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'aria-label="Gen-PPL against unigram entropy, {_esc(dataset)}">',
           f'<rect class="frame" x="{px0}" y="{py0}" width="{px1 - px0}" height="{py1 - py0}"/>']
    for t in yticks:
        out.append(f'<line class="grid" x1="{px0}" x2="{px1}" y1="{ty(t):.1f}" y2="{ty(t):.1f}"/>'
                   f'<text x="{px0 - 6}" y="{ty(t) + 4:.1f}" text-anchor="end">{_esc(_fmt_tick(t))}</text>')
    for t in xticks:
        out.append(f'<line class="grid" x1="{tx(t):.1f}" x2="{tx(t):.1f}" y1="{py0}" y2="{py1}"/>'
                   f'<text x="{tx(t):.1f}" y="{py1 + 16}" text-anchor="middle">{_esc(_fmt_tick(t))}</text>')
    out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{height - 10}" text-anchor="middle">unigram entropy</text>'
               f'<text transform="translate(14 {(py0 + py1) / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f"Gen-PPL (log scale)</text>")
    if threshold is not None:
        X = tx(threshold)
        out.append(f'<line class="threshold" x1="{X:.1f}" x2="{X:.1f}" y1="{py0}" y2="{py1}" stroke="#b3261e" '
                   f'stroke-dasharray="5 4"><title>{ENTROPY_FLAG_RATIO:.0%} of the human row&#x27;s entropy: '
                   f"{threshold:.3g}</title></line>")
    for p in sorted(points, key=lambda p: p["kind"] != "model"):  # reference rows drawn on top
        X, Y, color = tx(p["x"]), ty(p["y"]), _PLANE_STYLE[p["kind"]]
        if p["x_ci"]:
            out.append(f'<path class="errorbar" data-axis="x" d="M{tx(p["x_ci"][0]):.1f} {Y:.1f}H{tx(p["x_ci"][1]):.1f}" '
                       f'stroke="{color}" stroke-width="1.1"/>')
        if p["y_ci"]:
            out.append(f'<path class="errorbar" data-axis="y" d="M{X:.1f} {ty(p["y_ci"][0]):.1f}V{ty(p["y_ci"][1]):.1f}" '
                       f'stroke="{color}" stroke-width="1.1"/>')
        out.append(_plane_marker(p["kind"], X, Y, f"{p['label']}: entropy {p['x']:.4g}, Gen-PPL {p['y']:.4g}"))
        if p["kind"] != "model":  # labelled on the side facing the plot's centre, so it stays inside
            right = X < (px0 + px1) / 2
            out.append(f'<text class="point-label" x="{X + (8 if right else -8):.1f}" y="{Y - 7:.1f}" '
                       f'text-anchor="{"start" if right else "end"}">{_esc(p["label"][:28])}</text>')
    legend = [("model", "model"), ("human", "human ceiling"), ("floor", "floor")]
    for i, (kind, text) in enumerate(k for k in legend if any(p["kind"] == k[0] for p in points)):
        y = py0 + 8 + 20 * i
        marker = _plane_marker(kind, px1 + 18, y, text, "legend-marker")
        out.append(f'{marker}<text x="{px1 + 30}" y="{y + 4}">{_esc(text)}</text>')
    if threshold is not None:
        y = py0 + 8 + 20 * 3
        out.append(f'<line x1="{px1 + 12}" x2="{px1 + 24}" y1="{y}" y2="{y}" stroke="#b3261e" stroke-dasharray="4 3"/>'
                   f'<text x="{px1 + 30}" y="{y + 4}">{ENTROPY_FLAG_RATIO:.0%} of human entropy</text>')
    out.append("</svg>")
    hashes = sorted(set(rows["protocol_hash"]))
    caption = (f"Gen-PPL (log scale) against unigram entropy, {dataset}: one point per row ({len(points)}); "
               "reference rows labelled; error bars: the bootstrap CIs of rows that have them. A low Gen-PPL at low "
               "entropy is degenerate repetition, not fluency")
    caption += (f"; rows left of the dashed line (below {ENTROPY_FLAG_RATIO:.0%} of the human row's entropy) are "
                f"flagged {FLAG_MARK} in the tables." if threshold is not None else ".")
    if len(hashes) > 1:
        caption += (f" The points span {len(hashes)} protocol hashes that share one scoring hash (they differ only "
                    "in sampler settings).")
    fig_id = _slug("plane", dataset, key["protocol"], key["scoring_hash"])
    return (f'<figure class="plane-plot" id="{fig_id}" data-protocol="{_esc(key["protocol"])}" '
            f'data-scoring-hash="{_esc(key["scoring_hash"] if key["by"] == "scoring_hash" else "")}" '
            f'data-dataset="{_esc(dataset)}" data-protocol-hash="{_esc(" ".join(hashes))}">\n{"".join(out)}\n'
            f"<figcaption>{_esc(caption)}</figcaption>\n</figure>")


def entropy_plots(df: pd.DataFrame) -> list[tuple[dict, str, str]]:
    """(plot-group key, dataset, figure HTML): the Gen-PPL–entropy plane of every (protocol name, scoring
    hash) group (as ``axis_plots``) and dataset that has a row with both metrics."""
    expanded = expand(df) if len(df) else df
    if not len(expanded) or "gen_ppl" not in expanded.columns or "entropy" not in expanded.columns:
        return []
    plots = []
    for key, group in _plot_groups(expanded):
        for dataset in sorted(set(group["dataset"])):
            rows = group[group["dataset"] == dataset]
            points = _plane_points(rows)
            if points:
                plots.append((key, dataset, _plane_plot(key, dataset, rows, points)))
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


def _plot_group_heading(key: dict) -> str:
    if key["by"] == "scoring_hash":
        n = len(key["protocol_hashes"])
        where = f"scoring hash {key['scoring_hash'][:12]}, {n} protocol hash{'es' if n != 1 else ''}"
    else:
        where = f"protocol hash {key['scoring_hash'][:12]}"
    return f"<h3>{_esc(key['protocol'])} ({_esc(where)})</h3>"


def _figures_by_group(plots: list[tuple[dict, str, str]]) -> list[str]:
    """The figures, each plot group introduced by a heading when there are several groups."""
    groups = {(k["protocol"], k["scoring_hash"]) for k, _, _ in plots}
    parts, current = [], None
    for key, _, figure in plots:
        if len(groups) > 1 and (key["protocol"], key["scoring_hash"]) != current:
            current = (key["protocol"], key["scoring_hash"])
            parts.append(_plot_group_heading(key))
        parts.append(figure)
    return parts


def _axis_plots_section(plots: list[tuple[dict, str, str]], sort_by: str) -> list[str]:
    shown = _metric_label(sort_by) + (" and unigram entropy" if sort_by == "gen_ppl" else "")
    parts = [f'<section id="axis-plots">\n<h2>Ablation axes: {_esc(shown)}</h2>']
    if not plots:
        parts.append('<p class="meta">No ablation axis has more than one value with a score.</p>')
    else:
        parts.append('<p class="meta">Plots group rows by protocol name and scoring hash (the protocol without its '
                     "sampler settings), so a sweep over sampler steps or CFG, whose rows differ in protocol hash, "
                     "is still drawn over that axis. Human ceilings are dashed lines; floors are left out (see the "
                     "tables and the Gen-PPL–entropy plane).</p>")
    return parts + _figures_by_group(plots) + ["</section>"]


def _plane_section(plots: list[tuple[dict, str, str]]) -> list[str]:
    parts = ['<section id="entropy-plane">\n<h2>Gen-PPL against unigram entropy</h2>']
    if not plots:
        parts.append('<p class="meta">No row has both Gen-PPL and unigram entropy.</p>')
    else:
        parts.append('<p class="meta">Gen-PPL alone rewards repetition: a model that repeats one token has a tiny '
                     "Gen-PPL. Read it together with the unigram entropy: good rows sit near the human ceiling on "
                     "both axes. One plot per protocol (name and scoring hash) and dataset.</p>")
    return parts + _figures_by_group(plots) + ["</section>"]


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
    progressions, skipped = _progression_entries(groups, sort_by, descending)
    parts.append(f'<p class="meta">{len(df)} rows · {len(groups)} table(s) · generated {_esc(utc_now()[:19])}Z · '
                 f"sorted by {_esc(_metric_label(sort_by))} ({'descending' if descending else 'ascending'}); click a "
                 "column header to re-sort. Rows are ranked only within one protocol (name and hash) and dataset. "
                 "Italic rows are reference ceilings and floors.</p>")
    titles = [_heading(key, sort_by, descending, 0)[0] for key, _ in groups]
    links = []
    for (key, _), title in zip(groups, titles):  # tables of one title (several protocol hashes): say which
        suffix = f" ({key['protocol_hash'][:8]})" if titles.count(title) > 1 else ""
        links.append(f'<a href="#{_slug("board", key.get("dataset", ""), *key.values())}">{_esc(title + suffix)}</a>')
    links.append('<a href="#axis-plots">ablation axes</a>')
    links.append('<a href="#entropy-plane">Gen-PPL vs entropy</a>')
    links.append('<a href="#progression">denoising progression</a>')
    parts.append(f'<nav id="contents">{" ".join(links)}</nav>')
    with_progression = frozenset(entry["row_id"] for entry in progressions)
    parts += [_html_table(key, group, sort_by, descending, with_progression) for key, group in groups]
    parts += _axis_plots_section(axis_plots(df, sort_by), sort_by)
    parts += _plane_section(entropy_plots(df))
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
