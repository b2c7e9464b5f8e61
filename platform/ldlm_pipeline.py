"""One LDLM run end to end: validate -> tokenize + token-encoder features (+ their statistics) ->
joint stage -> optional token-decoder post-training -> unconditional evaluation.

Stages are content-addressed through the same ``StageCache`` as TextLDM: a sweep that varies only
evaluation fields (sampler steps, seeds) retrains nothing, and sweeps over the token-encoder layer share
one teacher pass over the data.
"""
from __future__ import annotations

import time
from pathlib import Path

from latentlm.models.checkpoint import read_json, write_json
from latentlm.models.config import ConfigError
from latentlm.models.teacher import load_teacher_config, resolve_layer, teacher_hidden_size, teacher_num_layers

from . import assets
from .config import from_dict, to_dict
from .corpus import CorpusSpec, load_documents
from .data import artifact_key, feature_stats, load_tokenizer, prepare_data
from .launch import init_ray, run_stage, training_dataset
from .ldlm_config import LDLMExperimentConfig
from .pipeline import StageCache, Trained
from .train_ldlm import post_decoder_loop, train_ldlm_loop


def validate_ldlm(cfg) -> dict:
    """Everything checkable before any cluster resource is used (token encoder, scorer, corpora)."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    encoder_cfg = load_teacher_config(assets.resolve_model(cfg.token_encoder.model))
    layers = teacher_num_layers(encoder_cfg)
    facts = {"vocab_size": len(tokenizer), "encoder_layers": layers,
             "encoder_layer": resolve_layer(cfg.token_encoder.layer, layers, "token_encoder.layer"),
             "hidden_size": teacher_hidden_size(encoder_cfg)}
    if cfg.eval.genppl_model == cfg.token_encoder.model:
        raise ConfigError(f"eval.genppl_model: the Gen-PPL scorer must not be the token encoder "
                          f"({cfg.token_encoder.model}); it would grade the model by its own features")
    for dataset in [cfg.data.corpus, *cfg.eval.datasets]:
        if not load_documents(CorpusSpec(dataset, cfg.data.text_field, max_documents=1)):
            raise ConfigError(f"corpus {dataset}: no documents")
    return facts


def ldlm_stage_keys(cfg) -> dict[str, str]:
    common = {"data": to_dict(cfg.data), "seed": cfg.seed, "deepspeed": to_dict(cfg.deepspeed),
              "token_encoder": to_dict(cfg.token_encoder)}
    joint = artifact_key(**common, ldlm=to_dict(cfg.ldlm), train=to_dict(cfg.train))
    post = artifact_key(joint=joint, post_decoder=to_dict(cfg.post_decoder), use_ema=cfg.eval.use_ema)
    return {"joint": joint, "post_decoder": post}


def train_ldlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
               teacher_layers: list[int] | None = None) -> Trained:
    """Validate, prepare the data and train (joint stage, optional post-decoder) one LDLM config; no
    evaluation."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate_ldlm(cfg)
    init_ray()
    artifacts = prepare_data(cfg, data_root or run_dir.parent, True, teacher_layers)
    cfg.ldlm.vocab_size, cfg.ldlm.hidden_size = artifacts.vocab_size, artifacts.teacher_dim
    stats = feature_stats(artifacts.vae_train, artifacts.teacher_layer, artifacts.teacher_dim,
                          cfg.token_encoder.stats_windows)
    write_json(run_dir / "config.json", to_dict(cfg))
    keys = ldlm_stage_keys(cfg)
    cache = StageCache(cache_root or run_dir)
    storage = (cache_root or run_dir) / "ray"
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": cfg.name, "trial": run_dir.name,
              "vocab": artifacts.vocab, "hidden_stats": stats}

    def dataset():
        return training_dataset(artifacts.vae_train, ["tokens", "length", artifacts.teacher_column],
                                cfg.data.materialize_max_mb, artifacts.vae_windows,
                                {artifacts.teacher_column: "hidden"})

    joint_ckpt, joint_seconds = cache.get_or_run("ldlm", keys["joint"], lambda: run_stage(
        train_ldlm_loop, common, dataset(), f"ldlm-{keys['joint']}", storage, cfg.resources))
    post_ckpt, post_seconds = None, 0.0
    if cfg.post_decoder.enabled:
        post_ckpt, post_seconds = cache.get_or_run("post_decoder", keys["post_decoder"], lambda: run_stage(
            post_decoder_loop, {**common, "joint_checkpoint": joint_ckpt}, dataset(),
            f"post_decoder-{keys['post_decoder']}", storage, cfg.resources))
    return Trained({"joint": joint_ckpt, "post_decoder": post_ckpt}, {"joint": joint_seconds,
                                                                      "post_decoder": post_seconds},
                   facts, artifacts, cache)


def run_ldlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
             teacher_layers: list[int] | None = None) -> dict:
    """Train and evaluate one LDLM config. Returns metrics per eval dataset, checkpoints and stage times."""
    from .evaluate_uncond import evaluate_ldlm
    trained = train_ldlm(cfg, run_dir, data_root, cache_root, teacher_layers)
    joint_ckpt, post_ckpt = trained.checkpoints["joint"], trained.checkpoints["post_decoder"]
    t0 = time.time()
    evaluation = evaluate_ldlm(cfg, joint_ckpt, post_ckpt, Path(run_dir).resolve() / "eval",
                               ceiling_cache=trained.cache.ceiling_dir, token_counts=trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "joint_checkpoint": joint_ckpt,
            "post_decoder_checkpoint": post_ckpt, "checkpoint": post_ckpt or joint_ckpt, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def saved_checkpoints(checkpoint: str | Path) -> tuple[str, str | None]:
    """(joint, post-decoder or None) of a final LDLM checkpoint: a post-decoder one names its joint stage, which
    an exported one (``hub.export_checkpoint``) carries inside it as ``joint/``."""
    state = read_json(Path(checkpoint) / "state.json")
    if state["stage"] == "post_decoder":
        bundled = Path(checkpoint) / "joint"
        return str(bundled) if bundled.is_dir() else state["joint_checkpoint"], str(checkpoint)
    return str(checkpoint), None


def bundled_checkpoints(checkpoint: Path) -> dict[str, Path]:
    """A post-decoder checkpoint's generator also reads its joint stage: exported with it as ``joint/``."""
    joint, post = saved_checkpoints(checkpoint)
    return {"joint": Path(joint)} if post is not None else {}


def load_ldlm(checkpoint: str | Path, use_ema: bool = True, device="cpu"):
    """A joint or post-decoder checkpoint directory -> ``LDLMGenerator`` under its saved config, without Ray."""
    from .evaluate_uncond import LDLMGenerator
    cfg = from_dict(LDLMExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    cfg.eval.use_ema = use_ema
    return LDLMGenerator(cfg, *saved_checkpoints(checkpoint), device)


def evaluate_saved_ldlm(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved joint or post-decoder checkpoint under ``cfg`` (``latentlm evaluate``)."""
    from .evaluate_uncond import evaluate_ldlm
    return evaluate_ldlm(cfg, *saved_checkpoints(checkpoint), out_dir)
