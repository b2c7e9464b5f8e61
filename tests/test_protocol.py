"""The versioned evaluation protocol: every field that changes a number changes the hash."""
import dataclasses

import pytest

from latentlm.models.config import ConfigError
from latentlm.platform.evaluation.protocol import (ContinuationEvalConfig, EvalProtocol, NOT_PROTOCOL, SAMPLER_FIELDS,
                                                   SPLIT_FIELDS, UnconditionalEvalConfig)
from latentlm.platform.methods.dlm.config import build_dlm_config
from latentlm.platform.methods.ldlm.config import build_ldlm_config
from latentlm.platform.methods.textldm.config import build_config

# A changed value for every field of each eval section (a new field without an entry here fails the test).
CHANGED = {
    "datasets": ["embedded:shakespeare"], "num_samples": 9, "sample_seed": 7, "sampling_seeds": [5],
    "mauve_kmeans_seeds": [3], "mauve_model": "y", "mauve_pooling": "mean", "mauve_max_length": 33,
    "genppl_model": "x", "genppl_max_length": 17, "diversity_ns": [1], "steps": 7, "grid": "uniform",
    "dtype": "bfloat16", "batch_size": 3, "use_ema": False, "human_ceiling": False, "progression_steps": [2],
    "min_tokens": 11, "split_range": [0.3, 0.7], "cfg_scale": 2.5, "bertscore_model": "z", "bertscore_num_layers": 3,
    "interpolation_pairs": 1, "interpolation_points": 4, "min_target_tokens": 5, "ci_level": 0.9,
    "bootstrap_replicates": 500, "bootstrap_seed": 3, "floors": False, "scorer_dtype": "bfloat16",
    "fewshot": {"tasks": ["latentlm_offline"], "n_docs": 5},
}
SPLIT_CHANGES = {"corpus": "embedded:shakespeare", "tokenizer": "other-tokenizer", "seq_len": 48, "valid_fraction": 0.07, "test_fraction": 0.07,
                 "split_seed": 9, "text_field": "body"}


def _build(family, eval_overrides=None, data=None):
    overrides = {"eval": eval_overrides or {}, "data": data or {}}
    return {"textldm": build_config, "ldlm": build_ldlm_config, "dlm": build_dlm_config}[family]("tiny", overrides)


@pytest.mark.parametrize("family,config_cls", [("textldm", ContinuationEvalConfig),
                                               ("ldlm", UnconditionalEvalConfig)])
def test_every_protocol_field_changes_the_hash(family, config_cls):
    base = EvalProtocol.from_config(_build(family))
    for f in dataclasses.fields(config_cls):
        value = CHANGED[f.name]
        if f.name == "grid" and family == "ldlm":
            value = "uniform"
        changed = EvalProtocol.from_config(_build(family, {f.name: value}))
        if f.name in NOT_PROTOCOL:  # which weights / extra rows / a view: the same protocol
            assert changed.hash == base.hash, f.name
        elif f.name in SAMPLER_FIELDS:  # ranked apart, plotted together
            assert changed.hash != base.hash and changed.scoring_hash == base.scoring_hash, f.name
        else:
            assert changed.hash != base.hash and changed.scoring_hash != base.scoring_hash, f.name
    for name in SPLIT_FIELDS:
        changed = EvalProtocol.from_config(_build(family, data={name: SPLIT_CHANGES[name]}))
        assert changed.hash != base.hash, name


def test_protocol_is_versioned_and_self_describing():
    protocol = EvalProtocol.from_config(build_config("tiny"))
    info = protocol.to_dict()
    assert protocol.name == info["name"] == "continuation/v3" and info["version"] == 3
    assert info["hash"] == protocol.hash and info["scoring_hash"] == protocol.scoring_hash
    assert info["sampler"] == {"steps": 50, "cfg_scale": 7.0, "grid": "schedule", "dtype": "float32", "batch_size": 32}
    assert {"length", "render", "genppl", "mauve", "intervals", "floors", "held_out"} <= set(info["rules"])
    assert info["data"]["tokenizer"] == build_config("tiny").data.tokenizer
    # a newer version of the same fields is a different protocol
    assert dataclasses.replace(protocol, version=2).hash != protocol.hash
    assert EvalProtocol.from_config(build_ldlm_config("tiny")).name == "unconditional/v3"


def test_families_on_the_same_settings_share_a_protocol():
    """Cola DLM is scored by the continuation protocol: with the same data split and eval fields as a TextLDM
    config its rows carry the same hash, so both rank in one table."""
    dlm = build_dlm_config("tiny")
    textldm = build_config("tiny", {"eval": {"grid": "uniform", "steps": 16, "datasets": ["embedded:wiki"], "num_samples": 64,
                                             "sampling_seeds": dlm.eval.sampling_seeds},
                                    "data": {"seq_len": 64, "vocab_limit": 8191}})
    assert EvalProtocol.from_config(textldm).to_dict()["data"] == EvalProtocol.from_config(dlm).to_dict()["data"]
    assert EvalProtocol.from_config(textldm).hash == EvalProtocol.from_config(dlm).hash


@pytest.mark.parametrize("field,value,expected", [
    ("sampling_seeds", [], "eval.sampling_seeds"), ("mauve_kmeans_seeds", [], "eval.mauve_kmeans_seeds"),
    ("dtype", "float16", "eval.dtype"), ("genppl_max_length", 1, "eval.genppl_max_length"),
    ("scorer_dtype", "float16", "eval.scorer_dtype"),
    ("progression_steps", [0], "eval.progression_steps"), ("ci_level", 1.0, "eval.ci_level"),
    ("ci_level", 0.0, "eval.ci_level"), ("ci_level", -0.5, "eval.ci_level"),
    ("bootstrap_replicates", 0, "eval.bootstrap_replicates"), ("min_target_tokens", 0, "eval.min_target_tokens"),
    ("min_target_tokens", 63, "eval.min_target_tokens")])
def test_bad_eval_fields_are_named(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        build_config("tiny", {"eval": {field: value}})


@pytest.mark.parametrize("family", ["textldm", "dlm", "ar"])
def test_a_target_floor_above_the_window_is_refused_naming_the_field(family):
    from latentlm.platform.methods.ar.config import build_ar_config
    build = {"textldm": build_config, "dlm": build_dlm_config, "ar": build_ar_config}[family]
    with pytest.raises(ConfigError, match=r"eval\.min_target_tokens: expected at most data\.seq_len - 2 = 62"):
        build("tiny", {"eval": {"min_target_tokens": 200}})


def test_the_target_floor_scales_with_the_window_and_is_stored_resolved():
    assert ContinuationEvalConfig().target_floor(1024) == 32 and ContinuationEvalConfig().target_floor(128) == 32
    assert ContinuationEvalConfig().target_floor(64) == 16
    assert ContinuationEvalConfig(min_target_tokens=5).target_floor(64) == 5
    derived = EvalProtocol.from_config(build_config("tiny"))
    explicit = EvalProtocol.from_config(build_config("tiny", {"eval": {"min_target_tokens": 16}}))
    assert derived.scoring["min_target_tokens"] == 16 and derived.hash == explicit.hash
