"""One autoregressive-baseline run end to end: validate -> tokenize (the same data artifacts as the
diffusion methods) -> GPT training (Ray Train) -> the matched config's protocol: TextLDM's continuation
protocol, or LDLM's unconditional one (same harness, same protocol hash as the matched diffusion config, so
the rows rank in one table).

The stage is content-addressed like the others: a re-run or a sweep trial with the same GPT, data and
training config reuses the checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from latentlm.models.checkpoint import write_json
from latentlm.models.gpt import gpt_param_count
from latentlm.platform.config import to_dict
from latentlm.platform.data.windows import artifact_key, load_tokenizer, prepare_data
from latentlm.platform.evaluation.continuation import Evaluation, evaluate_continuations
from latentlm.platform.evaluation.protocol import UnconditionalEvalConfig
from latentlm.platform.methods.dlm.pipeline import validate_dlm
from latentlm.platform.registry import SampleRequest, continue_prompt
from latentlm.platform.training.launch import init_ray, run_stage, training_dataset
from latentlm.platform.storage import publish, run_path
from latentlm.platform.training.stages import StageCache, Trained

from .generator import ARGenerator
from .train import ar_train_loop

log = logging.getLogger(__name__)


def ar_stage_key(cfg) -> str:
    # a window limit enters the key only when set: runs on every window keep their keys
    limit = {} if cfg.train_windows is None else {"train_windows": cfg.train_windows}
    return artifact_key(data=to_dict(cfg.data), seed=cfg.seed, deepspeed=to_dict(cfg.deepspeed), gpt=to_dict(cfg.gpt),
                        train_gpt=to_dict(cfg.train_gpt), **limit)


def evaluate_ar(cfg, checkpoint: str, out_dir: Path, eos_id: int, ceiling_cache: Path | None = None,
                token_counts: str | None = None) -> Evaluation:
    """Score a GPT checkpoint under its config's protocol: the matched method's (see ``config.eval_class``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ARGenerator.from_checkpoint(cfg, checkpoint, cfg.eval.use_ema, eos_id).to(device)
    if isinstance(cfg.eval, UnconditionalEvalConfig):
        from latentlm.platform.evaluation.unconditional import evaluate_windows
        return evaluate_windows(cfg, model, out_dir, ceiling_cache, token_counts)
    return evaluate_continuations(cfg, model, out_dir, ceiling_cache=ceiling_cache, token_counts=token_counts)


def train_ar(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
             teacher_layers: list[int] | None = None) -> Trained:
    """Validate, prepare the data and train the GPT of one AR-baseline config (``teacher_layers``: unused, the
    GPT reads no teacher); no evaluation."""
    run_dir = run_path(run_dir)  # a local path, or an object-store URI's mirror (platform/storage.py)
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate_dlm(cfg)  # tokenizer loads, every corpus has documents
    init_ray(resources=cfg.resources)
    artifacts = prepare_data(cfg, data_root or run_dir.parent, False)
    cfg.gpt.vocab_size = artifacts.vocab_size  # the real (compact) vocabulary: sizing used an estimate
    facts.update(gpt_params=gpt_param_count(cfg.gpt), gpt_matched_count=gpt_param_count(cfg.gpt, cfg.match_count),
                 matched_params=cfg.matched_params)
    log.info("GPT: %d parameters, %d by the %s count (matched DiT: %s)", facts["gpt_params"],
             facts["gpt_matched_count"], cfg.match_count, cfg.matched_params or "none")
    write_json(run_dir / "config.json", to_dict(cfg))
    publish(run_dir / "config.json")
    key = ar_stage_key(cfg)
    cache = StageCache(cache_root or run_dir)
    ray_storage = (cache_root or run_dir) / "ray"
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": cfg.name, "trial": run_dir.name,
              "vocab": artifacts.vocab}
    checkpoint, seconds = cache.get_or_run("ar", key, lambda: run_stage(
        ar_train_loop, common, training_dataset(artifacts.train, ["tokens", "length"], cfg.data.materialize_max_mb,
                                                cfg.train_windows),
        f"ar-{key}", ray_storage, cfg.resources))
    return Trained({"gpt": checkpoint}, {"gpt": seconds}, facts, artifacts, cache)


def run_ar(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
           teacher_layers: list[int] | None = None) -> dict:
    """Train and evaluate one AR-baseline config."""
    trained = train_ar(cfg, run_dir, data_root, cache_root, teacher_layers)
    checkpoint = trained.checkpoints["gpt"]
    t0 = time.time()
    evaluation = evaluate_ar(cfg, checkpoint, run_path(run_dir) / "eval", trained.artifacts.eos_id,
                             trained.cache.ceiling_dir, trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "checkpoint": checkpoint, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_ar(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved GPT checkpoint under ``cfg`` (``latentlm evaluate``): its match's protocol."""
    return evaluate_ar(cfg, str(checkpoint), out_dir, load_tokenizer(cfg.data.tokenizer).eos_token_id)


def sample_ar(model: ARGenerator, request: SampleRequest) -> torch.Tensor:
    """``latentlm sample``: the GPT continues the prompt; without one it starts a document after the EOS that
    precedes every document in the packed training stream."""
    if not request.prompt_ids:
        request = dataclasses.replace(request, prompt_ids=[model.eos_id])
    return continue_prompt(model, request)
