"""One Cola DLM run end to end: validate -> tokenize -> stage 1 (Text VAE) -> stage 2 (joint VAE + block
DiT) -> TextLDM's continuation protocol (the same harness and protocol hash, so both rank together).

Stages are content-addressed like TextLDM's: one stage-1 VAE per VAE config, shared by every stage-2
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
from latentlm.platform.training.stages import StageCache, Trained

from .generator import ColaDLMGenerator
from .train import dlm_stage1_loop, dlm_stage2_loop


def validate_dlm(cfg) -> dict:
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    for dataset in [cfg.data.corpus, *cfg.eval.datasets]:
        if not load_documents(CorpusSpec(dataset, cfg.data.text_field, max_documents=1)):
            raise ConfigError(f"corpus {dataset}: no documents")
    return {"vocab_size": len(tokenizer)}


def dlm_stage_keys(cfg) -> dict[str, str]:
    """Content keys of the two stages. The VAE's ``block_size`` enters stage 1's key only for a block-causal
    VAE: a causal or bidirectional one trains identically at any block size (it only sets the streaming
    decoder's chunk), so a block-size sweep shares one stage-1 VAE."""
    common = {"data": to_dict(cfg.data), "seed": cfg.seed, "deepspeed": to_dict(cfg.deepspeed)}
    vae = to_dict(cfg.dlm.vae)
    if vae["attention"] != "block_causal":
        vae["block_size"] = None
    stage1 = artifact_key(**common, vae=vae, stage1=to_dict(cfg.stage1))
    model = {k: v for k, v in to_dict(cfg.dlm).items()}
    stage2 = artifact_key(**common, stage1=stage1 if cfg.dlm.vae_strategy != "scratch" else None, dlm=model,
                          stage2=to_dict(cfg.stage2))
    return {"stage1": stage1, "stage2": stage2}


def train_dlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
              teacher_layers: list[int] | None = None) -> Trained:
    """Validate, prepare the data and train (stage 1 unless scratch, stage 2) one Cola DLM config; no
    evaluation."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate_dlm(cfg)
    init_ray()
    artifacts = prepare_data(cfg, data_root or run_dir.parent, False)
    cfg.dlm.vae.vocab_size = artifacts.vocab_size
    write_json(run_dir / "config.json", to_dict(cfg))
    keys = dlm_stage_keys(cfg)
    cache = StageCache(cache_root or run_dir)
    storage = (cache_root or run_dir) / "ray"
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": cfg.name, "trial": run_dir.name,
              "vocab": artifacts.vocab}

    def dataset():
        return training_dataset(artifacts.train, ["tokens", "length"], cfg.data.materialize_max_mb)

    stage1_ckpt, stage1_seconds = None, 0.0
    if cfg.dlm.vae_strategy != "scratch":
        stage1_ckpt, stage1_seconds = cache.get_or_run("dlm_stage1", keys["stage1"], lambda: run_stage(
            dlm_stage1_loop, common, dataset(), f"dlm_stage1-{keys['stage1']}", storage, cfg.resources))
    stage2_ckpt, stage2_seconds = cache.get_or_run("dlm_stage2", keys["stage2"], lambda: run_stage(
        dlm_stage2_loop, {**common, "stage1_checkpoint": stage1_ckpt}, dataset(), f"dlm_stage2-{keys['stage2']}",
        storage, cfg.resources))
    return Trained({"stage1": stage1_ckpt, "stage2": stage2_ckpt}, {"stage1": stage1_seconds,
                                                                    "stage2": stage2_seconds},
                   facts, artifacts, cache)


def run_dlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
            teacher_layers: list[int] | None = None) -> dict:
    """Train (stage 1, stage 2) and evaluate one Cola DLM config."""
    trained = train_dlm(cfg, run_dir, data_root, cache_root, teacher_layers)
    stage2_ckpt = trained.checkpoints["stage2"]
    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ColaDLMGenerator.from_checkpoint(cfg, stage2_ckpt, cfg.eval.use_ema, trained.artifacts.eos_id).to(device)
    evaluation = evaluate_continuations(cfg, model, Path(run_dir).resolve() / "eval",
                                        ceiling_cache=trained.cache.ceiling_dir,
                                        token_counts=trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "stage1_checkpoint": trained.checkpoints["stage1"],
            "stage2_checkpoint": stage2_ckpt, "checkpoint": stage2_ckpt, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_dlm(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved stage-2 checkpoint under ``cfg``, its sampler section included (``latentlm evaluate``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    model = ColaDLMGenerator.from_checkpoint(cfg, checkpoint, cfg.eval.use_ema, eos).to(device)
    return evaluate_continuations(cfg, model, out_dir)
