"""Leaderboard files: read and check one Parquet file, merge frames without duplicates, write under a lock.

``Leaderboard.add`` / ``merge`` read what is on disk, de-duplicate and write a temp file that replaces the old one
(``os.replace``) while holding ``<file>.lock`` (``filelock``), so concurrent trials on one machine lose no rows and
readers never see a torn file. Across machines, let each write its own file and ``merge`` them (``latentlm
leaderboard A B --merge-into C``). Reading checks the schema and names the file on any problem; columns this version
does not know (written by a newer one) are kept, not dropped.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from latentlm.models.checkpoint import atomic_write

from .schema import COLUMNS, FILENAME, JSON_COLUMNS, REQUIRED, SCHEMA, SCHEMA_KEY, SCHEMA_VERSION, LeaderboardError


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


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Rows (from ``make_rows``) as a standalone leaderboard file, written atomically (a sweep trial's rows)."""
    table = _to_table(_normalise(rows), str(path))
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


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

    def merge_frames(self, *frames: pd.DataFrame) -> int:
        """Merge frames read with ``read`` (e.g. a sweep's trials' row files) in one write; returns the rows stored."""
        return self._update(*frames)

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
