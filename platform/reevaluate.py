"""``latentlm evaluate``: score any saved checkpoint under the current evaluation protocol.

A checkpoint directory holds ``state.json`` (whose ``stage`` names the method: its ``final_stages`` in the
registry) and ``config.json`` (the config it was trained with). ``--set`` overrides go on top, so the same
checkpoint can be scored with other sampler steps, CFG scales, seeds or datasets; the result carries the
protocol it was scored under.

Configs written before protocol v2 use the v1 names of a few eval fields, and older configs the earlier names of
some training sections (each experiment class's ``RENAMED_KEYS``). Both are renamed here (and the renames
logged), so an old checkpoint is scored, and labelled, under the current protocol; nothing in the result can be
mistaken for a v1 number.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from latentlm.models.checkpoint import read_json
from latentlm.models.config import ConfigError, rename_keys

from . import registry
from .config import from_dict, merge

log = logging.getLogger(__name__)

# v1 eval field -> v2 field (``mauve_seed`` was one k-means seed; v2 takes a list)
V1_EVAL_FIELDS = {"seed": "sample_seed", "seeds": "sampling_seeds", "scorer_model": "genppl_model",
                  "scorer_max_length": "genppl_max_length", "mauve_seed": "mauve_kmeans_seeds"}


def migrate_eval_section(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with v1 eval field names renamed to v2 (a new dict; v2 configs come back unchanged)."""
    section = dict(config.get("eval") or {})
    renamed = []
    for old, new in V1_EVAL_FIELDS.items():
        if old not in section:
            continue
        if new in section:
            raise ConfigError(f"eval.{old}: a v1 field next to its v2 name eval.{new}; keep one")
        value = section.pop(old)
        section[new] = [value] if new == "mauve_kmeans_seeds" and isinstance(value, int) else value
        renamed.append(f"eval.{old} -> eval.{new}")
    if renamed:
        log.warning("config written before protocol v2: renamed %s", ", ".join(renamed))
    return {**config, "eval": section} if "eval" in config else config


def checkpoint_method(checkpoint: Path) -> str:
    """The method family of a checkpoint directory, from its ``state.json``."""
    state_path = checkpoint / "state.json"
    if not state_path.is_file():
        raise ConfigError(f"checkpoint {checkpoint}: no state.json (expected a training checkpoint directory)")
    stage, evaluable = read_json(state_path).get("stage"), registry.final_stages()
    if stage not in evaluable:
        raise ConfigError(f"checkpoint {checkpoint}: stage {stage!r} cannot be evaluated on its own; expected "
                          f"the final stage of a method ({', '.join(sorted(evaluable))})")
    return evaluable[stage]


def load_config(checkpoint: Path, overrides: dict[str, Any] | None = None):
    """The checkpoint's saved config (old names migrated) with ``overrides`` applied, as its method's
    experiment dataclass."""
    cls = registry.get(checkpoint_method(checkpoint)).config_cls
    saved = rename_keys(cls, migrate_eval_section(read_json(checkpoint / "config.json")))
    return from_dict(cls, merge(saved, rename_keys(cls, overrides)))


def evaluate_saved(checkpoint: str | Path, overrides: dict[str, Any] | None = None, out_dir: Path | None = None):
    """Score one checkpoint; writes ``metrics.json`` and samples to ``out_dir`` (default ``<checkpoint>/eval``)."""
    checkpoint = Path(checkpoint)
    method = registry.get(checkpoint_method(checkpoint))
    return method.evaluate(load_config(checkpoint, overrides), checkpoint, Path(out_dir or checkpoint / "eval"))
