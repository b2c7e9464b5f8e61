"""The method registry: each family is one ``MethodSpec`` that declares its config, presets, training stages,
generator, evaluation and what a sweep needs. ``cli``, ``reevaluate``, ``sweep`` and the benchmarks look
families up here (by name, or by a checkpoint's stage) and never branch on a family's name, so a new family
is one ``register()`` call. ``methods/__init__.py`` declares the built-in four; each
family's code is one folder, ``methods/<name>/``.

Importing this module is cheap and Ray-free: a spec names heavy modules as ``Lazy("module:attribute")``,
imported on first use.
"""
from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypedDict

from latentlm.models.config import ConfigError


@dataclass(frozen=True)
class Lazy:
    """An attribute named ``"module:attribute"`` (a module starting with "." is under ``latentlm.platform``),
    imported when first resolved or called."""
    target: str

    def resolve(self) -> Any:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module, "latentlm.platform"), attribute)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)


def resolve(value: Any) -> Any:
    return value.resolve() if isinstance(value, Lazy) else value


class _RunResult(TypedDict):
    results: dict[str, dict[str, float]]   # eval dataset -> metric -> value
    evaluation: Any                        # continuation.Evaluation: protocol, evidence, reference rows
    checkpoint: str                        # the final stage's checkpoint directory
    stage_seconds: dict[str, float]        # per training stage, plus "eval"


class RunOutput(_RunResult, total=False):
    """What ``MethodSpec.run`` returns (a family adds its own keys, e.g. one ``<stage>_checkpoint`` each)."""
    facts: dict                            # derived while validating (vocabulary size, ...)


@dataclass
class SampleRequest:
    """What ``latentlm sample`` asks of a generator: tokenizer ids in, (num, length) ids out."""
    prompt_ids: list[int]        # empty: no prompt
    num: int
    length: int
    steps: int
    cfg_scale: float
    generator: Any               # torch.Generator

    def prompts(self):
        import torch
        return torch.tensor([self.prompt_ids] * self.num, dtype=torch.long)


def continue_prompt(generator, request: SampleRequest):
    """The continuation protocol's call: ``generate(prompts, new_tokens, steps=, cfg_scale=, generator=)``."""
    return generator.generate(request.prompts(), request.length, steps=request.steps, cfg_scale=request.cfg_scale,
                              generator=request.generator)


def sample_unconditional(generator, request: SampleRequest):
    """The unconditional protocol's call: ``sample(n, steps, generator)`` (full windows; no prompt, no length)."""
    return generator.sample(request.num, request.steps, request.generator)


def stage_section(stage: str) -> str:
    return f"train_{stage}"


def no_teacher(configs: list) -> list[int]:
    return []


def nothing_bundled(checkpoint: Path) -> dict[str, Path]:
    return {}


def unchanged(config: dict) -> dict:
    return config


@dataclass(frozen=True)
class MethodSpec:
    """One method family. Callables take the family's experiment config (``cfg``) where they take a config."""
    name: str                        # --method, a sweep's method, the leaderboard's method column
    label: str                       # for people: tables, plots
    summary: str                     # one line of `latentlm train --help`
    # the experiment dataclass (sweep axes are its field paths), with the sections the platform reads: name, seed,
    # data (split, tokenizer), eval (the protocol: its type is the task), resources
    config: type | Lazy
    build: Callable[[str, dict | None], Any]   # (preset, overrides) -> checked config (ConfigError names the field)
    presets: Mapping[str, Any] | Lazy          # preset name -> its overrides
    # training stages in order (the keys of stages.Trained.checkpoints); stage <s> is configured by the config
    # section ``train_<s>``, which holds its ``optim``
    stages: tuple[str, ...]
    final_stages: tuple[str, ...]    # state.json "stage" of the checkpoints it evaluates and samples from
    train: Callable[..., Any]        # (cfg, run_dir, data_root, cache_root, teacher_layers) -> stages.Trained
    run: Callable[..., RunOutput]    # the same arguments: train, then evaluate
    load_generator: Callable[[str | Path, bool, str], Any]   # (checkpoint, use_ema, device), its saved config
    evaluate: Callable[[Any, Path, Path], Any]   # (cfg, final checkpoint, out dir) -> Evaluation under cfg
    sample: Callable[[Any, SampleRequest], Any] | None = None  # (generator, request) -> ids; None: the task's call
    teacher_layers: Callable[[list], list[int]] = no_teacher   # every frozen-LM layer these configs read
    effective: Callable[[dict], dict] = unchanged   # a config dict with knobs that cannot act reset to defaults
    baseline_of: tuple[str, ...] = ()   # methods it is the matched baseline of (its config's `match: method:preset`)
    # (final checkpoint) -> {folder: checkpoint} its generator also reads, published inside it as that folder
    bundled: Callable[[Path], dict[str, Path]] = nothing_bundled

    @property
    def config_cls(self) -> type:
        return resolve(self.config)

    @property
    def stage_sections(self) -> dict[str, str]:
        """Training stage -> its config section (``train_<stage>``, the one naming scheme of every family)."""
        return {stage: stage_section(stage) for stage in self.stages}

    @property
    def preset_names(self) -> list[str]:
        return sorted(resolve(self.presets))

    @property
    def task(self) -> str:
        """The evaluation task, from the type of the config's ``eval`` section."""
        from .evaluation.protocol import ContinuationEvalConfig
        section = typing.get_type_hints(self.config_cls)["eval"]
        return "continuation" if issubclass(section, ContinuationEvalConfig) else "unconditional"

    @property
    def sampler(self) -> Callable[[Any, SampleRequest], Any]:
        if self.sample is not None:
            return self.sample
        return continue_prompt if self.task == "continuation" else sample_unconditional


_METHODS: dict[str, MethodSpec] = {}


def _builtins() -> None:
    from . import methods  # noqa: F401  (registers the built-in families on first import)


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add a family (``replace``: over one of the same name). Its final stages must be its own: a checkpoint's
    stage names exactly one family."""
    _builtins()
    if not spec.name or any(c in spec.name for c in ":/, "):
        raise ConfigError(f"method name: expected a non-empty name without ':', '/', ',' or spaces, got {spec.name!r}")
    if spec.name in _METHODS and not replace:
        raise ConfigError(f"method {spec.name!r} is already registered")
    for other in _METHODS.values():
        shared = set(spec.final_stages) & set(other.final_stages)
        if other.name != spec.name and shared:
            raise ConfigError(f"method {spec.name!r}: stage(s) {sorted(shared)} already belong to {other.name!r}")
    _METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def methods() -> Mapping[str, MethodSpec]:
    """Every registered family by name, in registration order (a live, read-only view)."""
    _builtins()
    return MappingProxyType(_METHODS)


def names() -> list[str]:
    return list(methods())


def get(name: str) -> MethodSpec:
    if name not in methods():
        raise ConfigError(f"method: expected one of {names()}, got {name!r}")
    return _METHODS[name]


def family_of(cfg) -> str:
    """The family whose experiment config ``cfg`` is."""
    for spec in methods().values():
        if isinstance(cfg, spec.config_cls):
            return spec.name
    raise ConfigError(f"config: expected the experiment config of one of {names()}, got {type(cfg).__name__}")


def final_stages() -> dict[str, str]:
    """state.json ``stage`` -> the family whose final checkpoints carry it."""
    return {stage: spec.name for spec in methods().values() for stage in spec.final_stages}


def baseline_for(method: str) -> MethodSpec | None:
    """The family registered as the matched baseline of ``method``, if any."""
    return next((spec for spec in methods().values() if method in spec.baseline_of), None)
