"""One Cola DLM run end to end: validate -> tokenize -> stage 1 (Text VAE) -> stage 2 (joint VAE + block
DiT) -> TextLDM's continuation protocol (the same harness and protocol hash, so both rank together).

Stages are content-addressed like TextLDM's: one stage-1 VAE per VAE config, shared by every stage-2
strategy that starts from it; sampling-time axes (steps, CFG, first-block handling) retrain nothing.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors, read_json, write_json
from latentlm.models.config import ConfigError
from latentlm.models.dlm import ColaDLM
from latentlm.models.vocab import CompactVocab

from .config import to_dict
from .corpus import CorpusSpec, load_documents
from .data import artifact_key, load_tokenizer, prepare_data
from .evaluate import evaluate_checkpoint
from .launch import init_ray, run_stage, training_dataset
from .pipeline import StageCache, Trained
from .train_dlm import dlm_stage1_loop, dlm_stage2_loop


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


class ColaDLMGenerator(torch.nn.Module):
    """A stage-2 checkpoint behind the interface the continuation protocol uses (``generate``,
    ``reconstruct``; tokenizer ids in and out, compact vocabularies mapped)."""

    def __init__(self, cfg, checkpoint: str, use_ema: bool = True, eos_id: int | None = None):
        super().__init__()
        d = Path(checkpoint)
        self.cfg, self.eos_id = cfg, eos_id
        self.model = ColaDLM(cfg.dlm)
        weights = load_tensors(d / ("ema.safetensors" if use_ema and (d / "ema.safetensors").is_file()
                                    else "joint.safetensors"))
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
        self.model.eval()
        self.vocab = CompactVocab.from_checkpoint(d)

    def _in(self, tokens):
        return tokens if self.vocab is None else self.vocab.encode(tokens)

    def _out(self, ids):
        return ids if self.vocab is None else self.vocab.decode(ids)

    @torch.no_grad()
    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._out(self.model.vae.reconstruct(self._in(tokens)))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, length: int, steps: int = 16, cfg_scale: float = 7.0, grid: str = "uniform",
                 generator: torch.Generator | None = None, on_step=None) -> torch.Tensor:
        """``on_step(i, ids)``: the denoising progression, see ``ColaDLM.generate``."""
        s, p = self.cfg.sampler, self.cfg.dlm.vae.patch_size
        multiple = self.cfg.dlm.dit.block_size * p if s.pad_prompt else p
        pad = (-prompt.shape[1]) % multiple
        if pad:  # left-pad with EOS: what precedes a document in the training stream
            fill = self.eos_id if self.eos_id is not None else 0
            prompt = torch.cat([torch.full((prompt.shape[0], pad), fill, dtype=prompt.dtype, device=prompt.device),
                                prompt], 1)
        progress = None if on_step is None else (lambda i, ids: on_step(i, self._out(ids)))
        ids = self.model.generate(self._in(prompt), length, steps, cfg_scale, generator, s.first_block, s.use_cache,
                                  on_step=progress)
        return self._out(ids)


def load_dlm(checkpoint: str, use_ema: bool = True, device="cpu") -> ColaDLMGenerator:
    """A stage-2 checkpoint directory -> generator, without Ray."""
    from .config import from_dict
    from .dlm_config import DLMExperimentConfig
    cfg = from_dict(DLMExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    return ColaDLMGenerator(cfg, checkpoint, use_ema, eos).to(device)


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
    model = ColaDLMGenerator(cfg, stage2_ckpt, cfg.eval.use_ema, trained.artifacts.eos_id).to(device)
    evaluation = evaluate_checkpoint(cfg, stage2_ckpt, Path(run_dir).resolve() / "eval", model=model,
                                     ceiling_cache=trained.cache.ceiling_dir,
                                     token_counts=trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "stage1_checkpoint": trained.checkpoints["stage1"],
            "stage2_checkpoint": stage2_ckpt, "checkpoint": stage2_ckpt, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_dlm(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved stage-2 checkpoint under ``cfg``, its sampler section included (``latentlm evaluate``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eos = load_tokenizer(cfg.data.tokenizer).eos_token_id
    model = ColaDLMGenerator(cfg, str(checkpoint), cfg.eval.use_ema, eos).to(device)
    return evaluate_checkpoint(cfg, str(checkpoint), out_dir, model=model)
