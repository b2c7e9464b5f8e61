"""Leaderboard rows: the Parquet schema, row identity and the checks every row passes before it is stored.

Identity. ``row_id`` = sha256 over (method, protocol_hash, dataset, config_hash, seed), where
``config_hash`` = sha256 of the trial's config as canonical JSON (sorted keys). Re-running a trial (a
restored sweep, the same sweep on another machine) maps to the same row and the newest ``created_at``
wins. Sweep, trial name, machine, checkpoint path and compute are deliberately *not* part of the identity,
so a config should hold what defines the model and its evaluation, not machine-local paths.

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
``evidence_json``.

Reference rows. Human-ceiling rows (method ``human``, trial ``human-ceiling``) bound what a model can reach; floor
rows (method ``floor``, trial ``floor:prompt-repeat`` / ``floor:unigram`` / ``floor:top-token`` /
``floor:other-document``) are degenerate generators scored by the same harness that must rank at the bottom.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: the optional evidence_json column
SCHEMA_KEY = b"latentlm.leaderboard.schema"
FILENAME = "leaderboard.parquet"

METRICS = ("rouge1", "rouge2", "rougeL", "bertscore", "mauve", "recon_acc", "gen_tokens")
STD_SUFFIX = "_std"  # metric "<m>_std" = spread of "<m>" over evaluation seeds: shown as "mean ± std"
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"  # metric "<m>_ci_low"/"<m>_ci_high" = bootstrap CI of "<m>"
CEILING_METHODS = frozenset({"human"})  # reference rows (human-vs-human): ranked, drawn as lines in plots
FLOOR_METHODS = frozenset({"floor"})  # must-lose reference rows (degenerate generators): ranked, not in axis plots

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


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_hash(config: Mapping[str, Any] | Any) -> str:
    return sha256_hex(canonical_json(config))


def make_row_id(method: str, protocol_hash: str, dataset: str, config_hash: str, seed: int) -> str:
    return sha256_hex(canonical_json([method, protocol_hash, dataset, config_hash, int(seed)]))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def json_object(text: Any) -> dict:
    """A JSON-object column's value as a dict ({} for null)."""
    return json.loads(text) if isinstance(text, str) and text else {}


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


def is_int(value: Any) -> bool:
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
    if not is_int(total) or total < 1:
        raise LeaderboardError(f"{where}: 'total_steps' must be a positive integer, got {total!r}")
    steps, texts = data.get("steps"), data.get("texts")
    if not isinstance(steps, list) or not steps or not all(is_int(s) for s in steps):
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
    if not is_int(data.get("n")) or data["n"] < 1:
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
