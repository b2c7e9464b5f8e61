"""`latentlm evaluate` plumbing: which method a checkpoint belongs to, and v1 configs read under protocol v2.
(Scoring a real checkpoint again is covered end to end in test_ar_pipeline.py and test_dlm_pipeline.py.)"""
from __future__ import annotations

import json

import pytest

from latentlm.models.config import ConfigError
from latentlm.platform.config import from_dict, to_dict
from latentlm.platform.evaluation.protocol import EvalProtocol
from latentlm.platform.methods.ldlm.config import LDLMExperimentConfig, build_ldlm_config
from latentlm.platform.methods.textldm.config import TextLDMConfig, build_config
from latentlm.platform.reevaluate import checkpoint_method, load_config, migrate_eval_section


def _v1(config: dict, renames: dict) -> dict:
    """``config`` written the way protocol v1 named its eval fields."""
    section = dict(config["eval"])
    for old, new in renames.items():
        value = section.pop(new)
        section[old] = value[0] if old == "mauve_seed" else value
    return {**config, "eval": section}


def test_a_v1_textldm_config_reads_as_the_same_v2_config():
    cfg = build_config("tiny", {"eval": {"mauve_kmeans_seeds": [7]}})
    v1 = _v1(to_dict(cfg), {"seed": "sample_seed", "mauve_seed": "mauve_kmeans_seeds"})
    with pytest.raises(ConfigError, match="unknown config key eval.mauve_seed"):
        from_dict(TextLDMConfig, v1)  # unmigrated: the old name is refused, naming it
    migrated = from_dict(TextLDMConfig, migrate_eval_section(v1))
    assert migrated.eval == cfg.eval and EvalProtocol.from_config(migrated).hash == EvalProtocol.from_config(cfg).hash


def test_a_v1_ldlm_config_reads_as_the_same_v2_config():
    cfg = build_ldlm_config("tiny")
    v1 = _v1(to_dict(cfg), {"seeds": "sampling_seeds", "scorer_model": "genppl_model",
                            "scorer_max_length": "genppl_max_length"})
    assert from_dict(LDLMExperimentConfig, migrate_eval_section(v1)).eval == cfg.eval


def test_v2_configs_pass_unchanged_and_mixed_names_are_refused():
    config = to_dict(build_config("tiny"))
    assert migrate_eval_section(config) == config
    with pytest.raises(ConfigError, match="eval.seed: a v1 field next to its v2 name eval.sample_seed"):
        migrate_eval_section({**config, "eval": {**config["eval"], "seed": 3}})


def _checkpoint(tmp_path, stage: str, config: dict | None = None):
    (tmp_path / "state.json").write_text(json.dumps({"stage": stage, "step": 1}))
    (tmp_path / "config.json").write_text(json.dumps(config or {}))
    return tmp_path


@pytest.mark.parametrize("stage,method", [("dit", "textldm"), ("dlm_joint", "dlm"), ("ar", "ar"), ("ldlm", "ldlm"),
                                          ("post_decoder", "ldlm")])
def test_the_stage_names_the_method(tmp_path, stage, method):
    assert checkpoint_method(_checkpoint(tmp_path, stage)) == method


def test_intermediate_stages_and_non_checkpoints_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no state.json"):
        checkpoint_method(tmp_path)
    with pytest.raises(ConfigError, match="stage 'vae' cannot be evaluated on its own"):
        checkpoint_method(_checkpoint(tmp_path, "vae"))


def test_overrides_apply_on_top_of_the_saved_config(tmp_path):
    saved = _v1(to_dict(build_config("tiny")), {"seed": "sample_seed"})
    cfg = load_config(_checkpoint(tmp_path, "dit", saved), {"eval": {"steps": 7}})
    assert isinstance(cfg, TextLDMConfig) and cfg.eval.steps == 7 and cfg.eval.sample_seed == saved["eval"]["seed"]
