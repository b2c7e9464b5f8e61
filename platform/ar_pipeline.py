"""One autoregressive-baseline run end to end: validate -> tokenize (the same data artifacts as the
diffusion methods) -> GPT training (Ray Train) -> the matched config's protocol: TextLDM's continuation
protocol, or LDLM's unconditional one (same harness, same protocol hash as the matched diffusion config, so
the rows rank in one table).

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
from .evaluate import Evaluation, evaluate_checkpoint
from .launch import init_ray, run_stage, training_dataset
from .pipeline import StageCache, Trained
from .protocol import UnconditionalEvalConfig
from .registry import SampleRequest, continue_prompt
from .train_ar import ar_train_loop

log = logging.getLogger(__name__)


def ar_stage_key(cfg) -> str:
    # a window limit enters the key only when set: runs on every window keep their keys
    limit = {} if cfg.train_windows is None else {"train_windows": cfg.train_windows}
    return artifact_key(data=to_dict(cfg.data), seed=cfg.seed, deepspeed=to_dict(cfg.deepspeed), gpt=to_dict(cfg.gpt),
                        train=to_dict(cfg.train), **limit)


class ARGenerator(torch.nn.Module):
    """A GPT checkpoint behind the interfaces both protocols use, tokenizer ids in and out (a compact
    vocabulary is mapped; its unknown class comes back as -1). Continuation: ``generate(prompts, max_new,
    steps, cfg_scale, grid, generator)``, with ``eos_id`` suppressed until ``max_new`` tokens are out (the
    protocol scores exactly the reference's length). Unconditional: ``sample(n, steps, generator, grid)``,
    full windows. ``steps``, ``cfg_scale`` and ``grid`` are diffusion-sampler knobs that do not act on an AR
    model: accepted and ignored; sampling follows ``gpt.temperature`` / ``gpt.top_p``. There is deliberately
    no ``reconstruct`` and no latent space: an AR model has no latent round trip, so the protocols have no
    reconstruction accuracy or latent-interpolation probe to report for it."""

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

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    @property
    def generator_device(self) -> torch.device:
        return self.device  # token draws happen where the logits are

    def _continue(self, prompts: torch.Tensor, max_new: int, generator: torch.Generator | None,
                  eos_allowed: bool) -> torch.Tensor:
        ids = prompts if self.vocab is None else self.vocab.encode(prompts)
        eos = None
        if not eos_allowed and self.eos_id is not None:
            eos = self.eos_id if self.vocab is None else int(self.vocab.to_compact[self.eos_id])
        out = self.model.generate(ids, max_new, generator=generator, min_new_tokens=max_new, eos_id=eos)
        return out if self.vocab is None else self.vocab.decode(out)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new: int, steps: int | None = None, cfg_scale: float | None = None,
                 grid: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        # the protocol asks for exactly max_new tokens: EOS may not end the continuation early
        return self._continue(prompts, max_new, generator, eos_allowed=False)

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, generator: torch.Generator | None = None,
               grid: str | None = None) -> torch.Tensor:
        """``n`` unconditional windows of ``data.seq_len`` tokenizer ids, like the packed held-out windows they
        are scored against: each continues one EOS (the separator that precedes every document in the packed
        training stream; the GPT has no BOS) and may hold EOS, after which a new document begins, as in packed
        windows."""
        if self.eos_id is None:
            raise ValueError("ARGenerator.sample: needs eos_id, the token every window starts after")
        start = torch.full((n, 1), self.eos_id, dtype=torch.long, device=self.device)
        return self._continue(start, self.cfg.data.seq_len, generator, eos_allowed=True)


def load_ar(checkpoint: str, use_ema: bool = True, device="cpu") -> ARGenerator:
    """A GPT checkpoint directory -> generator, without Ray."""
    from .ar_config import ARExperimentConfig
    from .config import from_dict
    cfg = from_dict(ARExperimentConfig, read_json(Path(checkpoint) / "config.json"))
    return ARGenerator(cfg, checkpoint, use_ema, load_tokenizer(cfg.data.tokenizer).eos_token_id).to(device)


def evaluate_ar(cfg, checkpoint: str, out_dir: Path, eos_id: int, ceiling_cache: Path | None = None,
                token_counts: str | None = None) -> Evaluation:
    """Score a GPT checkpoint under its config's protocol: the matched method's (see ``ar_config.eval_class``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ARGenerator(cfg, checkpoint, cfg.eval.use_ema, eos_id).to(device)
    if isinstance(cfg.eval, UnconditionalEvalConfig):
        from .evaluate_uncond import evaluate_windows
        return evaluate_windows(cfg, model, out_dir, ceiling_cache, token_counts)
    return evaluate_checkpoint(cfg, checkpoint, out_dir, model=model, ceiling_cache=ceiling_cache,
                               token_counts=token_counts)


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
        ar_train_loop, common, training_dataset(artifacts.train, ["tokens", "length"], cfg.data.materialize_max_mb,
                                                cfg.train_windows),
        f"ar-{key}", storage, cfg.resources))
    return Trained({"ar": checkpoint}, {"ar": seconds}, facts, artifacts, cache)


def run_ar(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
           teacher_layers: list[int] | None = None) -> dict:
    """Train and evaluate one AR-baseline config."""
    trained = train_ar(cfg, run_dir, data_root, cache_root, teacher_layers)
    checkpoint = trained.checkpoints["ar"]
    t0 = time.time()
    evaluation = evaluate_ar(cfg, checkpoint, Path(run_dir).resolve() / "eval", trained.artifacts.eos_id,
                             trained.cache.ceiling_dir, trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "checkpoint": checkpoint, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_ar(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved GPT checkpoint under ``cfg`` (``latentlm evaluate``): its match's protocol."""
    return evaluate_ar(cfg, str(checkpoint), out_dir, load_tokenizer(cfg.data.tokenizer).eos_token_id)


def sample_ar(model: ARGenerator, request: SampleRequest) -> torch.Tensor:
    """``latentlm sample``: the GPT continues a prompt; it has no start token to generate from nothing."""
    if not request.prompt_ids:
        raise ConfigError("--prompt: the AR baseline continues a prompt (it has no start token); give one")
    return continue_prompt(model, request)
