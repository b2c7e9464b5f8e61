"""The one strict config loader and the validation helpers every config dataclass shares (model and platform).

Configs are plain dataclasses. ``from_dict`` builds one from a nested dict and rejects unknown keys and ill-typed
values, naming the dotted field path; each config validates itself in ``__post_init__`` (``check_fields`` for its
``Literal`` enumerations and nested sections, ``require*`` for ranges), so a bad value is reported the moment the
config is built, whether it came from a file, an override or Python: long before any cluster resources are used.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


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


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(config: Any, owner: str) -> None:
    """Validate what the types already say, for a config built in Python as well as from a file: a ``Literal``
    field holds one of its values, and a nested section given as a mapping is built strictly (unknown keys fail)."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        tp, value = hints[f.name], getattr(config, f.name)
        if _has_literal(tp) or (isinstance(value, dict) and dataclasses.is_dataclass(tp)):
            setattr(config, f.name, _coerce(tp, value, f"{owner}.{f.name}" if owner else f.name))


def _has_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Literal or any(
        typing.get_origin(a) is typing.Literal for a in typing.get_args(tp))


def rename_keys(cls: type, data: dict[str, Any] | None) -> dict[str, Any]:
    """``data`` with the top-level keys ``cls.RENAMED_KEYS`` lists (old name -> new name) under their new names,
    so a config file or checkpoint written before a rename still loads (each rename is logged once per load)."""
    data = dict(data or {})
    for old, new in getattr(cls, "RENAMED_KEYS", {}).items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(f"{old}: renamed to {new}, and both are set; keep {new}")
        log.warning("config key %s is now %s", old, new)
        data[new] = data.pop(old)
    return data


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys raise ConfigError naming them."""
    data = rename_keys(cls, data)
    hints = typing.get_type_hints(cls)
    # a section whose class follows another field's value (the AR baseline's eval follows its match) is built
    # as that class, on that class's defaults
    chosen = cls.section_classes(data) if hasattr(cls, "section_classes") else {}
    hints.update(chosen)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]!s} (valid keys{' of ' + path if path else ''}: "
                          f"{', '.join(sorted(fields))})")
    for name, value in data.items():
        default = _default_mapping(fields[name]) if isinstance(value, dict) and name not in chosen else None
        if default is not None:  # a partial section keeps the owner's defaults, not the section class's own
            data[name] = overlay(default, value)
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # e.g. a required field missing
        raise ConfigError(f"{path or cls.__name__}: {err}") from None
    except ConfigError as err:  # a section's own validation names itself ("optim.steps"): give the full path
        message, owner = str(err), str(err).split(":", 1)[0].split(".", 1)[0]
        if path and not message.startswith(path) and path.rsplit(".", 1)[-1] == owner:
            raise ConfigError(path + message[len(owner):]) from None
        raise


def _default_mapping(f: dataclasses.Field) -> dict[str, Any] | None:
    """A dataclass-valued field's default as a dict: ``schedule = field(default_factory=lambda:
    TimestepSchedule(loc=0.0, scale=1.0))`` must stay at scale 1.0 when a config sets only ``schedule.loc``."""
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        value = f.default
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else None


def overlay(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base`` recursively; ``update``'s values are kept as given (a dataclass instance passes
    through as itself), ``base`` is a fresh ``asdict`` copy, so nothing is shared with a default."""
    out = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = overlay(out[key], value) if both else value
    return out


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: expected {' or '.join(_describe(o) for o in options if o is not type(None))}, "
                          f"got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value




def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {typing.get_args(tp)}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))
