"""Strict configs: from_dict / parse_overrides / merge / load_file, presets, cross-field validation and
teacher layer resolution. Pure Python: no Ray, no models, no files beyond tmp_path."""
from __future__ import annotations

import copy
import json
import re

import pytest

from latentlm.models.config import ConfigError
from latentlm.models.dlm import ColaDLMConfig
from latentlm.models.dlm_vae import DLMVAEConfig
from latentlm.models.flow import TimestepSchedule
from latentlm.models.repa import REPAConfig
from latentlm.models.text_vae import TextVAEConfig
from latentlm.models.teacher import resolve_layer
from latentlm.platform.config import from_dict, load_file, merge, parse_overrides, to_dict
from latentlm.platform.methods.textldm.config import TextLDMConfig, VAETrainConfig, build_config
from latentlm.platform.methods.textldm.presets import PRESETS
from latentlm.platform.training.sections import DataConfig, OptimConfig


# -- from_dict ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, dotted", [
    ({"bogus": 1}, "bogus"),
    ({"data": {"seq_lenn": 32}}, "data.seq_lenn"),
    ({"vae": {"repa": {"layerz": -3}}}, "vae.repa.layerz"),
    ({"train_vae": {"optim": {"stepz": 3}}}, "train_vae.optim.stepz"),
    ({"train_dit": {"schedule": {"nope": 1}}}, "train_dit.schedule.nope"),
])
def test_unknown_keys_rejected_at_any_depth(data, dotted):
    with pytest.raises(ConfigError, match="unknown config key " + re.escape(dotted)):
        from_dict(TextLDMConfig, data)


def test_unknown_key_message_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(TextLDMConfig, {"train_vae": {"optim": {"stepz": 3}}})
    assert "steps" in str(info.value) and "warmup_steps" in str(info.value)


@pytest.mark.parametrize("data, field, words", [
    ({"seed": "x"}, "seed", "integer"),
    ({"data": {"seq_len": "x"}}, "data.seq_len", "integer"),
    ({"data": {"seq_len": 32.5}}, "data.seq_len", "integer"),
    ({"wandb": "yes"}, "wandb", "true/false"),
    ({"eval": {"use_ema": 1}}, "eval.use_ema", "true/false"),
    ({"seed": True}, "seed", "integer"),                       # bool is not an int here
    ({"train_vae": {"optim": {"lr": "fast"}}}, "train_vae.optim.lr", "number"),
    ({"data": {"tokenizer": 3}}, "data.tokenizer", "string"),
    ({"eval": {"datasets": "embedded:wiki"}}, "eval.datasets", "list"),
    ({"eval": {"datasets": ["embedded:wiki", 3]}}, r"eval.datasets\[1\]", "string"),
    ({"eval": {"split_range": [0.4]}}, "eval.split_range", "2 values"),
    ({"eval": {"split_range": [0.1, 0.2, 0.3]}}, "eval.split_range", "2 values"),
    ({"train_vae": {"optim": {"betas": [0.9]}}}, "train_vae.optim.betas", "2 values"),
    ({"train_vae": {"optim": {"betas": 0.9}}}, "train_vae.optim.betas", "list"),
    ({"data": {"max_documents": "many"}}, "data.max_documents", "'many'"),
    ({"train_vae": 3}, "train_vae", "mapping"),
])
def test_type_errors_name_the_field(data, field, words):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as info:
        from_dict(TextLDMConfig, data)
    assert words.replace("\\", "") in str(info.value)


def test_numbers_are_coerced_sensibly():
    cfg = from_dict(TextLDMConfig, {"seed": 3.0, "train_vae": {"optim": {"lr": 1, "betas": [0.8, 0.9]}}})
    assert cfg.seed == 3 and isinstance(cfg.seed, int)
    assert cfg.train_vae.optim.lr == 1.0 and isinstance(cfg.train_vae.optim.lr, float)
    assert cfg.train_vae.optim.betas == (0.8, 0.9) and isinstance(cfg.train_vae.optim.betas, tuple)


def test_optional_fields_accept_null():
    cfg = from_dict(TextLDMConfig, {"data": {"max_documents": None, "vocab_limit": None, "max_train_windows": None}})
    assert cfg.data.max_documents is None and cfg.data.vocab_limit is None and cfg.data.max_train_windows is None
    cfg = from_dict(TextLDMConfig, {"data": {"max_documents": 10, "vocab_limit": 100}})
    assert cfg.data.max_documents == 10 and cfg.data.vocab_limit == 100


def test_nested_dataclasses_accept_dicts():
    cfg = from_dict(TextLDMConfig, {"train_vae": {"optim": {"steps": 5, "warmup_steps": 2}, "random_truncation": 0.0},
                                    "vae": {"latent_dim": 8, "repa": {"enabled": False}},
                                    "dit": {"latent_dim": 8}})
    assert isinstance(cfg.train_vae, VAETrainConfig) and isinstance(cfg.train_vae.optim, OptimConfig)
    assert cfg.train_vae.optim.steps == 5 and cfg.train_vae.optim.warmup_steps == 2
    assert cfg.vae.repa.enabled is False and cfg.vae.repa.layer == -3   # untouched fields keep defaults
    assert isinstance(cfg.data, DataConfig)


def test_a_partial_section_keeps_its_owners_defaults():
    """Setting one key of a section whose owner gives it non-class defaults keeps the owner's other values:
    a Cola DLM ``dlm.schedule.loc`` sweep stays at the model's scale 1.0 (it silently got the class's 1.5)."""
    from latentlm.models.dlm import ColaDLMConfig
    from latentlm.platform.methods.dlm.config import build_dlm_config
    from latentlm.platform.methods.dlm.pipeline import dlm_stage_keys
    default = ColaDLMConfig().schedule
    assert (default.loc, default.scale) == (0.0, 1.0)
    shifted = from_dict(ColaDLMConfig, {"schedule": {"loc": 1.0}}).schedule
    assert (shifted.kind, shifted.loc, shifted.scale) == (default.kind, 1.0, 1.0)
    # the same holds through a preset, so loc = 0 is the default run and shares its checkpoints
    same = build_dlm_config("tiny", {"dlm": {"schedule": {"loc": 0.0}}})
    assert dlm_stage_keys(same) == dlm_stage_keys(build_dlm_config("tiny"))
    dit = from_dict(TextLDMConfig, {"train_dit": {"optim": {"lr": 1e-3}}}).train_dit.optim
    assert (dit.steps, dit.lr, dit.ema_decay) == (TextLDMConfig().train_dit.optim.steps, 1e-3,
                                                  TextLDMConfig().train_dit.optim.ema_decay)


def test_dataclass_instances_pass_through_and_to_dict_round_trips():
    optim = OptimConfig(steps=7, warmup_steps=1)
    cfg = from_dict(TextLDMConfig, {"train_vae": {"optim": optim}})
    assert cfg.train_vae.optim is optim
    again = from_dict(TextLDMConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg


def test_from_dict_rejects_unknown_key_even_with_valid_siblings():
    with pytest.raises(ConfigError, match=r"unknown config key data\.corpuz"):
        from_dict(TextLDMConfig, {"data": {"seq_len": 32, "corpuz": "x"}})


# -- parse_overrides / merge / load_file -----------------------------------------------------------

def test_parse_overrides_nested_and_yaml_values():
    out = parse_overrides(["vae.latent_dim=32", "train_vae.optim.lr=0.002", "eval.datasets=[embedded:wiki, a.jsonl]",
                           "wandb=false", "data.max_documents=null", "name=hello", "vae.repa.enabled=true",
                           "eval.split_range=[0.3, 0.7]", "data.corpus=a=b", "run_dir="])
    assert out == {
        "vae": {"latent_dim": 32, "repa": {"enabled": True}},
        "train_vae": {"optim": {"lr": 0.002}},
        "eval": {"datasets": ["embedded:wiki", "a.jsonl"], "split_range": [0.3, 0.7]},
        "wandb": False,
        "data": {"max_documents": None, "corpus": "a=b"},
        "name": "hello",
        "run_dir": "",
    }
    assert isinstance(out["vae"]["latent_dim"], int) and isinstance(out["train_vae"]["optim"]["lr"], float)


def test_parse_overrides_feed_build_config():
    cfg = build_config("tiny", parse_overrides(["vae.latent_dim=32", "train_vae.optim.lr=0.002", "wandb=false",
                                                "data.max_documents=null", "eval.split_range=[0.3, 0.7]"]))
    assert cfg.vae.latent_dim == 32 and cfg.dit.latent_dim == 32
    assert cfg.train_vae.optim.lr == 0.002 and cfg.wandb is False and cfg.data.max_documents is None
    assert cfg.eval.split_range == (0.3, 0.7)


def test_parse_overrides_later_item_wins():
    assert parse_overrides(["a.b=1", "a.b=2", "a.c=3"]) == {"a": {"b": 2, "c": 3}}


@pytest.mark.parametrize("items", [["novalue"], ["vae.latent_dim"], ["a=1", "a.b=2"]])
def test_parse_overrides_malformed(items):
    with pytest.raises(ConfigError, match="override"):
        parse_overrides(items)


def test_parse_overrides_malformed_names_the_item():
    with pytest.raises(ConfigError, match="novalue"):
        parse_overrides(["novalue"])


def test_override_exponent_float():
    assert build_config("tiny", parse_overrides(["train_vae.optim.lr=1e-3"])).train_vae.optim.lr == 1e-3


def test_override_use_gpu_true():
    assert build_config("tiny", parse_overrides(["resources.use_gpu=true"])).resources.use_gpu == "true"


def test_merge_is_recursive_and_non_mutating():
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "x": [1, 2], "keep": 0}
    update = {"a": {"c": {"d": 20}, "new": 5}, "x": [9], "y": {"z": 1}}
    base_copy, update_copy = copy.deepcopy(base), copy.deepcopy(update)
    out = merge(base, update)
    assert out == {"a": {"b": 1, "c": {"d": 20, "e": 3}, "new": 5}, "x": [9], "y": {"z": 1}, "keep": 0}
    assert base == base_copy and update == update_copy


def test_merge_value_replaces_section_and_vice_versa():
    assert merge({"a": {"b": 1}}, {"a": 3}) == {"a": 3}
    assert merge({"a": 3}, {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert merge({}, {}) == {}


def test_load_file_yaml_and_json(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("vae:\n  latent_dim: 32\ntrain_vae:\n  optim:\n    lr: 0.001\neval:\n  datasets: [a, b]\n")
    assert load_file(y) == {"vae": {"latent_dim": 32}, "train_vae": {"optim": {"lr": 0.001}},
                            "eval": {"datasets": ["a", "b"]}}
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"vae": {"latent_dim": 16}, "wandb": False}))
    assert load_file(str(j)) == {"vae": {"latent_dim": 16}, "wandb": False}
    cfg = build_config("tiny", merge(load_file(y), parse_overrides(["vae.latent_dim=8"])))
    assert cfg.vae.latent_dim == 8 and cfg.dit.latent_dim == 8 and cfg.eval.datasets == ["a", "b"]


def test_load_file_missing(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_file(missing)
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path)   # a directory is not a config file


@pytest.mark.parametrize("name, text", [("list.yaml", "- a\n- b\n"), ("scalar.yaml", "3\n"),
                                        ("list.json", "[1, 2]")])
def test_load_file_non_mapping(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")) as info:
        load_file(path)
    assert "mapping" in str(info.value)


@pytest.mark.parametrize("name, text", [("bad.yaml", "a: [1, 2\n"), ("bad.json", "{\"a\": ")])
def test_load_file_unparsable(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load_file(path)


# -- presets / build_config ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    cfg = build_config(name)
    assert cfg.preset == name
    assert cfg.dit.latent_dim == cfg.vae.latent_dim
    assert cfg.vae.max_seq_len >= cfg.data.seq_len and cfg.dit.max_seq_len >= cfg.data.seq_len
    assert cfg.train_vae.optim.warmup_steps <= cfg.train_vae.optim.steps


def test_build_config_does_not_mutate_presets_or_overrides():
    before = copy.deepcopy(PRESETS)
    overrides = {"vae": {"latent_dim": 32}, "data": {"seq_len": 96}}
    overrides_copy = copy.deepcopy(overrides)
    cfg = build_config("tiny", overrides)
    assert PRESETS == before and overrides == overrides_copy
    assert cfg.dit.latent_dim == 32 and cfg.vae.max_seq_len == 96 and cfg.dit.max_seq_len == 96
    assert build_config("tiny").vae.latent_dim == PRESETS["tiny"]["vae"]["latent_dim"]


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        build_config("nope")


@pytest.mark.parametrize("overrides, field", [
    ({"vae": {"latent_dim": 16}, "dit": {"latent_dim": 32}}, "dit.latent_dim"),
    ({"eval": {"split_range": [0.7, 0.3]}}, "eval.split_range"),
    ({"eval": {"split_range": [0.0, 0.5]}}, "eval.split_range"),
    ({"data": {"valid_fraction": 0.5, "test_fraction": 0.5}}, "valid_fraction + test_fraction"),
    ({"data": {"valid_fraction": 0.7, "test_fraction": 0.6}}, "test_fraction"),
    ({"train_vae": {"optim": {"steps": 10, "warmup_steps": 11}}}, "warmup_steps"),
    ({"train_dit": {"optim": {"steps": 10, "warmup_steps": 11}}}, "warmup_steps"),
    ({"train_dit": {"context_fraction": [0.5, 1.0]}}, "train_dit.context_fraction"),
    ({"data": {"seq_len": 64}, "vae": {"max_seq_len": 32}}, "vae.max_seq_len"),
    ({"data": {"seq_len": 64}, "dit": {"max_seq_len": 32}}, "dit.max_seq_len"),
    ({"vae": {"latent_dim": 0}}, "vae.latent_dim"),
    ({"data": {"seq_len": 4}}, "data.seq_len"),
    ({"data": {"teacher_dtype": "float16"}}, "data.teacher_dtype"),
    ({"resources": {"use_gpu": "maybe"}}, "resources.use_gpu"),
    ({"train_vae": {"optim": {"ema_decay": 0.99}}}, "train_vae.optim.ema_decay"),  # would be silently unused
])
def test_cross_field_validation(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("+", r"\+")):
        build_config("tiny", overrides)


def test_dit_latent_dim_follows_vae_unless_set():
    assert build_config("tiny", {"vae": {"latent_dim": 24}}).dit.latent_dim == 24
    assert build_config("tiny", {"vae": {"latent_dim": 24}, "dit": {"latent_dim": 24}}).dit.latent_dim == 24


# -- teacher layer resolution ----------------------------------------------------------------------

@pytest.mark.parametrize("layer, expected", [(-3, 28), (0, 0), (30, 30), (-31, 0), (-1, 30), (1, 1)])
def test_resolve_layer(layer, expected):
    assert resolve_layer(layer, 30) == expected


@pytest.mark.parametrize("layer", [31, -32, 100])
def test_resolve_layer_out_of_range(layer):
    with pytest.raises(ConfigError, match=r"vae\.repa\.layer") as info:
        resolve_layer(layer, 30)
    message = str(info.value)
    assert "-31" in message and "30" in message and str(layer) in message


def test_resolve_layer_custom_field():
    with pytest.raises(ConfigError, match="encoder.layer"):
        resolve_layer(5, 4, field="encoder.layer")


def test_section_validation_errors_carry_the_full_path():
    with pytest.raises(ConfigError, match=r"^train_vae\.optim\.steps: "):
        build_config("tiny", parse_overrides(["train_vae.optim.steps=0"]))
    with pytest.raises(ConfigError, match=r"^train_dit\.optim\.warmup_steps: "):
        build_config("tiny", parse_overrides(["train_dit.optim.warmup_steps=100000"]))


def test_the_ldlm_post_decoder_stage_refuses_an_ema_it_would_not_use():
    from latentlm.platform.methods.ldlm.config import build_ldlm_config
    with pytest.raises(ConfigError, match=r"train_post_decoder\.optim\.ema_decay"):
        build_ldlm_config("tiny", {"train_post_decoder": {"enabled": True, "optim": {"ema_decay": 0.99}}})
    assert build_ldlm_config("tiny", {"train_post_decoder": {"enabled": True}}).train_post_decoder.optim.ema_decay == 0


@pytest.mark.parametrize("make, message", [
    (lambda: TimestepSchedule("cosine"), "schedule.kind: expected one of ('uniform', 'logit_normal'), got 'cosine'"),
    (lambda: ColaDLMConfig(vae_strategy="warm"), "dlm.vae_strategy: expected one of"),
    (lambda: DLMVAEConfig(patch_size=3), "dlm.vae.patch_size: expected one of (1, 2), got 3"),
    (lambda: REPAConfig(align_at=True), "vae.repa.align_at: expected an integer or one of ('output', 'latent')"),
    (lambda: ColaDLMConfig(vae={"latent_dimm": 8}), "unknown config key dlm.vae.latent_dimm"),
    (lambda: TextVAEConfig(repa={"layer": "third"}), "vae.repa.layer: expected an integer"),
])
def test_model_configs_built_in_python_are_as_strict_as_loaded_ones(make, message):
    """The one strict loader also guards configs built directly: Literal enumerations and nested sections given as
    mappings are checked on construction (no permissive ``Section(**dict)`` shim that would take an unknown key)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_literal_fields_accept_their_values_and_nested_mappings_build_their_section():
    assert REPAConfig(align_at=2).align_at == 2 and REPAConfig(align_at="latent").align_at == "latent"
    cfg = ColaDLMConfig(vae={"latent_dim": 8}, dit={"latent_dim": 8}, schedule={"kind": "uniform"})
    assert isinstance(cfg.vae, DLMVAEConfig) and cfg.vae.latent_dim == 8 and cfg.schedule.kind == "uniform"


@pytest.mark.parametrize("family, old, new", [("dlm", "stage1", "train_vae"), ("dlm", "stage2", "train_joint"),
                                               ("ldlm", "train", "train_joint"),
                                               ("ldlm", "post_decoder", "train_post_decoder"), ("ar", "train", "train_gpt")])
def test_configs_written_with_the_old_stage_section_names_still_load(family, old, new, caplog):
    from latentlm.platform import registry
    method = registry.get(family)
    saved = to_dict(method.build("tiny", {}))
    saved[old] = saved.pop(new)
    saved[old]["optim"]["log_every"] = 7
    assert getattr(from_dict(method.config_cls, saved), new).optim.log_every == 7  # a checkpoint's config.json
    assert f"config key {old} is now {new}" in caplog.text
    # a user's override under the old name lands in the new section, over the preset's
    assert getattr(method.build("tiny", {old: {"optim": {"log_every": 9}}}), new).optim.log_every == 9
    with pytest.raises(ConfigError, match=f"^{old}: renamed to {new}, and both are set"):
        from_dict(method.config_cls, {**saved, new: {}})


@pytest.mark.parametrize("family", ["textldm", "ldlm", "dlm", "ar"])
def test_a_negative_seed_is_refused_naming_the_field(family):
    """Every random stream is derived from the seed by numpy's SeedSequence, which takes no negative entropy."""
    from latentlm.platform import registry
    with pytest.raises(ConfigError, match=r"^seed: expected an integer >= 0"):
        registry.get(family).build("tiny", {"seed": -1})


# -- TextLDM model sizes and sweep scripts -----------------------------------------------------------

def _textldm_sizes(preset: str, overrides: dict) -> tuple[float, float, float]:
    """(DiT, VAE, VAE embedding + head) parameters in millions, counted on the meta device (no memory)."""
    import torch
    from latentlm.models.dit import TextDiT
    from latentlm.models.text_vae import TextVAE
    from latentlm.platform.methods.ar.config import KNOWN_TOKENIZER_SIZES
    cfg = build_config(preset, overrides)
    # the pipeline sets the VAE's vocabulary from the tokenizer; the paper preset's is known offline
    cfg.vae.vocab_size = KNOWN_TOKENIZER_SIZES.get(cfg.data.tokenizer, cfg.vae.vocab_size)
    with torch.device("meta"):
        vae, dit = TextVAE(cfg.vae, teacher_dim=2048), TextDiT(cfg.dit)  # 2048: Qwen3-1.7B's hidden size
    count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters()) / 1e6
    return count(dit), count(vae), count(vae.embed, vae.lm_head)


def test_the_paper_preset_has_the_papers_dit_and_vae_sizes():
    """TextLDM's ablations use a 328M DiT and a 350M VAE, 223M of it token embedding and LM head."""
    dit, vae, embedding = _textldm_sizes("paper", {})
    assert dit == pytest.approx(328, rel=0.03) and vae == pytest.approx(350, rel=0.03)
    assert embedding == pytest.approx(223, rel=0.01)


def _script(name: str):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_textldm_experiment_scripts_plan_and_the_size_sweeps_span_the_papers_sizes():
    from latentlm.platform.sweep import SweepSpec, plan_trials
    expected = {"ablate_repa": 2, "ablate_latent_dim": 3, "ablate_schedule": 3, "ablate_cfg": 5,
                "ablate_vae_size": 3, "ablate_dit_size": 3}
    for name, count in expected.items():
        assert len(plan_trials(SweepSpec(name, axes=_script(name).axes("tiny")))) == count, name
    # paper group b: 350M / 502M / 690M VAEs around the same DiT; group e: 114M / 328M / 768M DiTs, one VAE
    for name, paper, column in (("ablate_vae_size", [350, 502, 690], 1), ("ablate_dit_size", [114, 328, 768], 0)):
        trials = plan_trials(SweepSpec(name, preset="paper", axes=_script(name).axes("paper")))
        sizes = [_textldm_sizes("paper", t.overrides) for t in trials]
        assert [s[column] for s in sizes] == pytest.approx(paper, rel=0.03), name
        assert len({s[1 - column] for s in sizes}) == 1, name  # the other network is the preset's in every trial
    for preset in ("tiny", "small"):  # every preset's sizes are valid configs that grow
        for name, column in (("ablate_vae_size", 1), ("ablate_dit_size", 0)):
            trials = plan_trials(SweepSpec(name, preset=preset, axes=_script(name).axes(preset)))
            sizes = [_textldm_sizes(preset, t.overrides)[column] for t in trials]
            assert sizes == sorted(sizes) and len(set(sizes)) == 3, (preset, name)


def test_a_linear_repa_projector_ignores_its_hidden_width_in_a_sweep():
    from latentlm.platform.sweep import SweepSpec, plan_trials
    assert len(plan_trials(SweepSpec("s", axes={"vae.repa.projector_hidden": [64, 128]}))) == 1
    mlp = {"vae": {"repa": {"projector_depth": 3}}}
    assert len(plan_trials(SweepSpec("s", axes={"vae.repa.projector_hidden": [64, 128]}, overrides=mlp))) == 2
