"""One Cola DLM run end to end: validate -> tokenize -> VAE stage (Text VAE) -> joint stage (VAE + block
DiT) -> TextLDM's continuation protocol (the same harness and protocol hash, so both rank together).

Stages are content-addressed like TextLDM's: one pretrained VAE per VAE config, shared by every joint
strategy that starts from it; sampling-time axes (steps, CFG, first-block handling) retrain nothing.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from latentlm.models.checkpoint import write_json
from latentlm.models.config import ConfigError
from latentlm.platform.config import to_dict
from latentlm.platform.data.corpus import CorpusSpec, load_documents
from latentlm.platform.data.windows import artifact_key, load_tokenizer, prepare_data
from latentlm.platform.evaluation.continuation import evaluate_continuations
from latentlm.platform.training.launch import init_ray, run_stage, training_dataset
from latentlm.platform.training.parts import SEED_SCHEME
from latentlm.platform.storage import publish, run_path
from latentlm.platform.training.stages import StageCache, Trained

from .generator import ColaDLMGenerator
from .train import dlm_joint_loop, dlm_vae_loop


def validate_dlm(cfg) -> dict:
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    for dataset in [cfg.data.corpus, *cfg.eval.datasets]:
        if not load_documents(CorpusSpec(dataset, cfg.data.text_field, max_documents=1)):
            raise ConfigError(f"corpus {dataset}: no documents")
    return {"vocab_size": len(tokenizer)}


def dlm_stage_keys(cfg) -> dict[str, str]:
    """Content keys of the two stages. The VAE's ``block_size`` enters the VAE stage's key only for a
    block-causal VAE: a causal or bidirectional one trains identically at any block size (it only sets the streaming
    decoder's chunk), so a block-size sweep shares one pretrained VAE."""
    common = {"data": to_dict(cfg.data), "seed": [cfg.seed, SEED_SCHEME], "deepspeed": to_dict(cfg.deepspeed)}
    vae = to_dict(cfg.dlm.vae)
    if vae["attention"] != "block_causal":
        vae["block_size"] = None
    vae_key = artifact_key(**common, vae=vae, train_vae=to_dict(cfg.train_vae))
    joint_key = artifact_key(**common, vae_stage=vae_key if cfg.dlm.vae_strategy != "scratch" else None,
                             dlm=to_dict(cfg.dlm), train_joint=to_dict(cfg.train_joint))
    return {"vae": vae_key, "joint": joint_key}


def train_dlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
              teacher_layers: list[int] | None = None) -> Trained:
    """Validate, prepare the data and train (the VAE stage unless scratch, the joint stage) one Cola DLM
    config; no evaluation."""
    run_dir = run_path(run_dir)  # a local path, or an object-store URI's mirror (platform/storage.py)
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate_dlm(cfg)
    init_ray(resources=cfg.resources)
    artifacts = prepare_data(cfg, data_root or run_dir.parent, False)
    cfg.dlm.vae.vocab_size = artifacts.vocab_size
    write_json(run_dir / "config.json", to_dict(cfg))
    publish(run_dir / "config.json")
    keys = dlm_stage_keys(cfg)
    cache = StageCache(cache_root or run_dir)
    ray_storage = (cache_root or run_dir) / "ray"
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": cfg.name, "trial": run_dir.name,
              "vocab": artifacts.vocab}

    def dataset():
        return training_dataset(artifacts.train, ["tokens", "length"], cfg.data.materialize_max_mb)

    vae_ckpt, vae_seconds = None, 0.0
    if cfg.dlm.vae_strategy != "scratch":
        vae_ckpt, vae_seconds = cache.get_or_run("dlm_vae", keys["vae"], lambda: run_stage(
            dlm_vae_loop, common, dataset(), f"dlm_vae-{keys['vae']}", ray_storage, cfg.resources))
    joint_ckpt, joint_seconds = cache.get_or_run("dlm_joint", keys["joint"], lambda: run_stage(
        dlm_joint_loop, {**common, "vae_checkpoint": vae_ckpt}, dataset(), f"dlm_joint-{keys['joint']}",
        ray_storage, cfg.resources))
    return Trained({"vae": vae_ckpt, "joint": joint_ckpt}, {"vae": vae_seconds, "joint": joint_seconds},
                   facts, artifacts, cache)


def run_dlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
            teacher_layers: list[int] | None = None) -> dict:
    """Train (VAE stage, joint stage) and evaluate one Cola DLM config."""
    trained = train_dlm(cfg, run_dir, data_root, cache_root, teacher_layers)
    joint_ckpt = trained.checkpoints["joint"]
    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ColaDLMGenerator.from_checkpoint(cfg, joint_ckpt, cfg.eval.use_ema, trained.artifacts.eos_id).to(device)
    evaluation = evaluate_continuations(cfg, model, run_path(run_dir) / "eval",
                                        ceiling_cache=trained.cache.ceiling_dir,
                                        token_counts=trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "vae_checkpoint": trained.checkpoints["vae"],
            "joint_checkpoint": joint_ckpt, "checkpoint": joint_ckpt, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_dlm(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved joint-stage checkpoint under ``cfg``, its sampler section included (``latentlm evaluate``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    model = ColaDLMGenerator.from_checkpoint(cfg, checkpoint, cfg.eval.use_ema, eos).to(device)
    return evaluate_continuations(cfg, model, out_dir)
