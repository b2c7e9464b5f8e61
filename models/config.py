"""Validation helpers shared by every config dataclass.

Configs are plain dataclasses that validate themselves in ``__post_init__`` so that a bad value is
reported, naming its field, the moment the config is built: long before any cluster resources are used.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config field (or config file) holds a value that cannot work. The message names the field."""


def require(condition: bool, field: str, expected: str, got: object) -> None:
    if not condition:
        raise ConfigError(f"{field}: expected {expected}, got {got!r}")


def require_positive(owner: str, **fields: float) -> None:
    for name, value in fields.items():
        require(value is not None and value > 0, f"{owner}.{name}", "a value > 0", value)


def require_fraction(owner: str, **fields: float) -> None:
    for name, value in fields.items():
        require(0.0 <= value <= 1.0, f"{owner}.{name}", "a probability in [0, 1]", value)
