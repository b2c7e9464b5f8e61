"""Config files and overrides: YAML / JSON files and ``key=value`` overrides merged into dicts, which the one
strict loader (``latentlm.models.config.from_dict``, shared with the model configs) turns into dataclasses.

Every knob of every method is a dataclass field. Unknown keys and ill-typed values fail there, naming
the dotted field path, before any Ray or training resources are touched.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from latentlm.models.config import ConfigError, from_dict, overlay

__all__ = ["ConfigError", "from_dict", "to_dict", "merge", "parse_overrides", "load_file"]


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (update wins); the result shares no mutable state with either input."""
    return overlay(copy.deepcopy(base), copy.deepcopy(update))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["vae.latent_dim=32", "eval.datasets=[embedded:wiki]"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected the form key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        node[leaf] = value
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {path}: cannot parse ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
