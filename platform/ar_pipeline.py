"""One autoregressive-baseline run end to end: validate -> tokenize (the same data artifacts as the
diffusion methods) -> GPT training (Ray Train) -> TextLDM's continuation protocol (same harness, same
protocol hash as the matched diffusion config, so the rows rank in one table).

The stage is content-addressed like the others: a re-run or a sweep trial with the same GPT, data and
training config reuses the checkpoint.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors, read_json, write_json
from latentlm.models.config import ConfigError
from latentlm.models.gpt import GPT, gpt_param_count
from latentlm.models.vocab import CompactVocab

from .config import to_dict
from .data import artifact_key, load_tokenizer, prepare_data
from .dlm_pipeline import validate_dlm
from .evaluate import evaluate_checkpoint
from .launch import init_ray, run_stage, training_dataset
from .pipeline import StageCache, Trained
from .registry import SampleRequest, continue_prompt
from .train_ar import ar_train_loop

log = logging.getLogger(__name__)


def ar_stage_key(cfg) -> str:
    return artifact_key(data=to_dict(cfg.data), seed=cfg.seed, deepspeed=to_dict(cfg.deepspeed), gpt=to_dict(cfg.gpt),
                        train=to_dict(cfg.train))


class ARGenerator(torch.nn.Module):
    """A GPT checkpoint behind the interface the continuation protocol uses: ``generate(prompts, max_new,
    steps, cfg_scale, grid, generator)`` with tokenizer ids in and out (a compact vocabulary is mapped; its
    unknown class comes back as -1, which the protocol drops). ``steps``, ``cfg_scale`` and ``grid`` are
    diffusion-sampler knobs that do not act on an AR model: accepted and ignored; sampling follows
    ``gpt.temperature`` / ``gpt.top_p``, with ``eos_id`` suppressed until ``max_new`` tokens are out (the
    protocol scores exactly the reference's length). There is deliberately no ``reconstruct``: an AR model has no
    latent round trip, so the protocol has no reconstruction accuracy to report for it."""

    def __init__(self, cfg, checkpoint: str, use_ema: bool = True, eos_id: int | None = None):
        super().__init__()
        d = Path(checkpoint)
        self.cfg, self.eos_id = cfg, eos_id
        self.model = GPT(cfg.gpt)
        ema = d / "ema.safetensors"
        weights = load_tensors(ema if use_ema and ema.is_file() else d / "gpt.safetensors")
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
        self.model.eval()
        self.vocab = CompactVocab.from_checkpoint(d)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new: int, steps: int | None = None, cfg_scale: float | None = None,
                 grid: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        ids = prompts if self.vocab is None else self.vocab.encode(prompts)
        # the protocol asks for exactly max_new tokens: EOS may not end the continuation early
        eos = None
        if self.eos_id is not None:
            eos = self.eos_id if self.vocab is None else int(self.vocab.encode(torch.tensor([self.eos_id]))[0])
        out = self.model.generate(ids, max_new, generator=generator, min_new_tokens=max_new, eos_id=eos)
        return out if self.vocab is None else self.vocab.decode(out)


def load_ar(checkpoint: str, use_ema: bool = True, device="cpu") -> ARGenerator:
    """A GPT checkpoint directory -> generator, without Ray."""
    from .ar_config import ARExperimentConfig
    from .config import from_dict
    cfg = from_dict(ARExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    return ARGenerator(cfg, checkpoint, use_ema, load_tokenizer(cfg.data.tokenizer).eos_token_id).to(device)


def train_ar(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
             teacher_layers: list[int] | None = None) -> Trained:
    """Validate, prepare the data and train the GPT of one AR-baseline config (``teacher_layers``: unused, the
    GPT reads no teacher); no evaluation."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate_dlm(cfg)  # tokenizer loads, every corpus has documents
    init_ray()
    artifacts = prepare_data(cfg, data_root or run_dir.parent, False)
    cfg.gpt.vocab_size = artifacts.vocab_size  # the real (compact) vocabulary: sizing used an estimate
    facts.update(gpt_params=gpt_param_count(cfg.gpt), gpt_matched_count=gpt_param_count(cfg.gpt, cfg.match_count),
                 matched_params=cfg.matched_params)
    log.info("GPT: %d parameters, %d by the %s count (matched DiT: %s)", facts["gpt_params"],
             facts["gpt_matched_count"], cfg.match_count, cfg.matched_params or "none")
    write_json(run_dir / "config.json", to_dict(cfg))
    key = ar_stage_key(cfg)
    cache = StageCache(cache_root or run_dir)
    storage = (cache_root or run_dir) / "ray"
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": cfg.name, "trial": run_dir.name,
              "vocab": artifacts.vocab}
    checkpoint, seconds = cache.get_or_run("ar", key, lambda: run_stage(
        ar_train_loop, common, training_dataset(artifacts.train, ["tokens", "length"], cfg.data.materialize_max_mb),
        f"ar-{key}", storage, cfg.resources))
    return Trained({"ar": checkpoint}, {"ar": seconds}, facts, artifacts, cache)


def run_ar(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
           teacher_layers: list[int] | None = None) -> dict:
    """Train and evaluate one AR-baseline config."""
    trained = train_ar(cfg, run_dir, data_root, cache_root, teacher_layers)
    checkpoint = trained.checkpoints["ar"]
    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ARGenerator(cfg, checkpoint, cfg.eval.use_ema, trained.artifacts.eos_id).to(device)
    evaluation = evaluate_checkpoint(cfg, checkpoint, Path(run_dir).resolve() / "eval", model=model,
                                     ceiling_cache=trained.cache.ceiling_dir,
                                     token_counts=trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "checkpoint": checkpoint, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_ar(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved GPT checkpoint under ``cfg`` (``latentlm evaluate``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ARGenerator(cfg, str(checkpoint), cfg.eval.use_ema, load_tokenizer(cfg.data.tokenizer).eos_token_id)
    return evaluate_checkpoint(cfg, str(checkpoint), out_dir, model=model.to(device))


def sample_ar(model: ARGenerator, request: SampleRequest) -> torch.Tensor:
    """``latentlm sample``: the GPT continues a prompt; it has no start token to generate from nothing."""
    if not request.prompt_ids:
        raise ConfigError("--prompt: the AR baseline continues a prompt (it has no start token); give one")
    return continue_prompt(model, request)
