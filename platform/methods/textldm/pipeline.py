"""One TextLDM run end to end: validate -> tokenize (+ teacher features) -> VAE -> DiT -> evaluate.

Stages are content-addressed (``training/stages.py``): a stage's key hashes every config section that can
change its output, and its checkpoint path is recorded under ``<root>/artifacts``. A stage whose key was already
trained is reused -- by a re-run of an interrupted pipeline, and by every sweep trial that shares it (one VAE
per VAE config, one DiT per (VAE, DiT) config; evaluation-only axes such as the CFG scale retrain nothing).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from latentlm.models.checkpoint import write_json
from latentlm.models.config import ConfigError
from latentlm.models.teacher import load_teacher_config, resolve_layer, teacher_hidden_size, teacher_num_layers
from latentlm.platform.config import to_dict
from latentlm.platform.data import assets
from latentlm.platform.data.corpus import CorpusSpec, load_documents
from latentlm.platform.data.teacher_feed import FeatureFeed, feature_feed
from latentlm.platform.data.teacher_plan import preflight
from latentlm.platform.data.windows import artifact_key, load_tokenizer, prepare_data
from latentlm.platform.evaluation.continuation import Evaluation, evaluate_continuations
from latentlm.platform.registry import SampleRequest, continue_prompt
from latentlm.platform.training.launch import init_ray, run_stage, training_dataset
from latentlm.platform.training.parts import SEED_SCHEME
from latentlm.platform.storage import publish, run_path
from latentlm.platform.training.stages import StageCache, Trained

from .generator import load_textldm
from .train_dit import train_dit_loop
from .train_vae import train_vae_loop

log = logging.getLogger(__name__)

def validate(cfg) -> dict:
    """Everything that can be checked before any cluster resource is used. Returns derived facts."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    facts = {"vocab_size": len(tokenizer)}
    if cfg.vae.repa.enabled:
        teacher_cfg = load_teacher_config(assets.resolve_model(cfg.vae.repa.teacher), "vae.repa.teacher")
        layers = teacher_num_layers(teacher_cfg)
        facts["teacher_layer"] = resolve_layer(cfg.vae.repa.layer, layers)
        facts["teacher_layers"], facts["teacher_dim"] = layers, teacher_hidden_size(teacher_cfg)
    for dataset in [cfg.data.corpus, *cfg.eval.datasets]:
        if not load_documents(CorpusSpec(dataset, cfg.data.text_field, max_documents=1)):
            raise ConfigError(f"corpus {dataset}: no documents")
    return facts


def stage_keys(cfg) -> dict[str, str]:
    """Content keys of the training stages (what each stage's output depends on)."""
    common = {"data": to_dict(cfg.data), "seed": [cfg.seed, SEED_SCHEME], "deepspeed": to_dict(cfg.deepspeed)}
    vae = artifact_key(**common, vae=to_dict(cfg.vae), train_vae=to_dict(cfg.train_vae))
    dit = artifact_key(vae=vae, dit=to_dict(cfg.dit), train_dit=to_dict(cfg.train_dit), **common)
    return {"vae": vae, "dit": dit}


def train_textldm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
                  teacher_layers: list[int] | None = None) -> Trained:
    """Validate, prepare the data and train (VAE, DiT) for one TextLDM config; no evaluation.

    ``data_root``/``cache_root`` (default: the run dir's parent / the run dir) let several runs share
    tokenized data, teacher features and trained stages."""
    run_dir = run_path(run_dir)  # a local path, or an object-store URI's mirror (platform/storage.py)
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate(cfg)
    preflight(cfg, teacher_layers, log)
    init_ray(resources=cfg.resources)
    artifacts = prepare_data(cfg, data_root or run_dir.parent, cfg.vae.repa.enabled, teacher_layers)
    cfg.vae.vocab_size = artifacts.vocab_size
    write_json(run_dir / "config.json", to_dict(cfg))
    publish(run_dir / "config.json")
    keys = stage_keys(cfg)
    cache = StageCache(cache_root or run_dir)
    ray_storage = (cache_root or run_dir) / "ray"
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": cfg.name, "trial": run_dir.name,
              "vocab": artifacts.vocab}
    token_columns = ["tokens", "length", "doc_id"]
    limit = cfg.data.materialize_max_mb

    def train_vae() -> str:  # the feed is read only when the stage is not cached
        feed = (feature_feed(cfg, artifacts, token_columns, "teacher") if cfg.vae.repa.enabled else
                FeatureFeed(training_dataset(artifacts.vae_train, token_columns, limit, artifacts.vae_windows), {}))
        return run_stage(train_vae_loop, {**common, **feed.loop_config, "teacher_dim": artifacts.teacher_dim},
                         feed.dataset, f"vae-{keys['vae']}", ray_storage, cfg.resources, teacher_gpus=feed.teacher_gpus)

    vae_ckpt, vae_seconds = cache.get_or_run("vae", keys["vae"], train_vae)
    dit_ckpt, dit_seconds = cache.get_or_run("dit", keys["dit"], lambda: run_stage(
        train_dit_loop, {**common, "vae_checkpoint": vae_ckpt}, training_dataset(artifacts.train, token_columns, limit),
        f"dit-{keys['dit']}", ray_storage, cfg.resources))
    return Trained({"vae": vae_ckpt, "dit": dit_ckpt}, {"vae": vae_seconds, "dit": dit_seconds}, facts, artifacts,
                   cache)


def run_textldm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
                teacher_layers: list[int] | None = None) -> dict:
    """Train (VAE, DiT) and evaluate one TextLDM config. Returns metrics per eval dataset and paths."""
    trained = train_textldm(cfg, run_dir, data_root, cache_root, teacher_layers)
    dit_ckpt = trained.checkpoints["dit"]
    t0 = time.time()
    evaluation = evaluate_saved_textldm(cfg, dit_ckpt, run_path(run_dir) / "eval",
                                        ceiling_cache=trained.cache.ceiling_dir,
                                        token_counts=trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "vae_checkpoint": trained.checkpoints["vae"],
            "dit_checkpoint": dit_ckpt, "checkpoint": dit_ckpt, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_textldm(cfg, checkpoint: str | Path, out_dir: Path, ceiling_cache: Path | None = None,
                           token_counts: str | None = None) -> Evaluation:
    """Score a saved DiT checkpoint under ``cfg``'s continuation protocol (``latentlm evaluate``; ``run_textldm``
    passes the run's reference cache and training-token counts)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_textldm(checkpoint, use_ema=cfg.eval.use_ema, device=device)
    return evaluate_continuations(cfg, model, out_dir, ceiling_cache=ceiling_cache, token_counts=token_counts)


def sample_textldm(model, request: SampleRequest):
    """``latentlm sample``: the prompt's continuation, or without a prompt ``num`` unconditional sequences."""
    if request.prompt_ids:
        return continue_prompt(model, request)
    return model.generate(None, request.length, steps=request.steps, generator=request.generator,
                          batch_size=request.num)
