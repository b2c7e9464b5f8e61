"""GPU check: every family's training stages (steps/s, tokens/s, MFU, peak memory, bf16-vs-fp32 loss agreement) and
each diffusion family's sampling tokens/s against its matched AR baseline (KV cache), in one call that fits a lent
GPU machine: under 8 minutes on one H100/H200 at the ``small`` preset (``--budget-s`` caps it). Not a test; the
numbers depend on the machine. It runs on CPU too (``--device cpu --steps 3 --preset tiny``, tests/test_gpu_check.py).

It needs no Ray, DeepSpeed, hub model or install: the stages are built by the families' own stage builders
(``build_*_stage`` in ``platform/methods/<family>/train*.py``, the ones Ray Train runs) and stepped by the platform's
engine (``engine.TorchEngine``, DeepSpeed off) in a loop that does what ``loop.train_stage`` does per step (batch
hook, micro-batches, backward, optimiser step, after-step hook, EMA) without Ray's data, logging or checkpoints. The
checkout is imported through the cluster shim (``cluster/pythonpath/latentlm/__init__.py``), so on the GPU machine,
from the repository root, with its own python3:

    PYTHONPATH=cluster/pythonpath python3 experiments/gpu_check.py --out $OUT    # small preset, <= --budget-s 420
    PYTHONPATH=cluster/pythonpath python3 experiments/gpu_check.py --device cpu --steps 3 --preset tiny --warmup 1 \\
        --compare-steps 2 --batch-size 2 --sample-lengths 16,32 --sample-batch 2 --out /tmp/gpu_check   # ~25 s CPU

Models have random weights and read random token ids (the vocabulary size from the config: the compact vocabulary's
``data.vocab_limit + 1``, else the tokenizer's known size); stages that read a frozen LM's features (TextLDM's VAE
with REPA, LDLM) get random features of its width (SmolLM2-135M's 576, the presets' teacher). Speed does not depend
on the values. Per (family, stage), at the stage's global batch (``optim.batch_size`` windows of ``data.seq_len``
tokens, one micro-batch):

* steps/s and tokens/s over ``--steps`` timed optimiser steps after ``--warmup`` untimed ones, under the engine's
  default precision (``deepspeed.precision: auto``: bf16 autocast on a bf16 GPU, fp32 on CPU), EMA included where
  the stage keeps one; a stage stops early at its share of the budget (the row says how many steps it timed);
* MFU = (6N + attention FLOPs per token) x tokens/s / peak bf16 FLOP/s (``platform/training/flops.py``: N the
  trainable parameters; attention 4 Tk d per query forward, x3 with backward, i.e. 12 L d T per token for L layers
  over T-token windows, counted from the shapes of every attention call of the warm-up steps; the peak from the
  device name, ``parts.peak_flops``, or ``LATENTLM_PEAK_FLOPS``); None on CPU and on unknown GPUs;
* peak memory: ``torch.cuda.max_memory_allocated`` over the stage (model, optimiser, steps); None on CPU;
* bf16 vs fp32: the stage rebuilt from the same seed (same initial weights, same batches, same random draws) and run
  ``--compare-steps`` steps under the other precision; reported: both loss curves and max |l_bf16 - l_fp32| / |l_fp32|.

Sampling, per diffusion family, as its protocol calls the generator (``eval.steps``, ``eval.cfg_scale``,
``eval.grid``, ``eval.dtype`` of the preset; ``--sample-batch`` sequences, a ``--prompt-len``-token random prompt):
tokens/s = batch x new tokens / wall seconds of one call after an untimed warm-up call, and the ratio to the matched
AR baseline (``build_ar_config`` with ``match: <family>:<preset>``, GPT sized to that family's diffusion network)
generating as many tokens the same way with its KV cache. TextLDM and Cola DLM continue the prompt by each of
``--sample-lengths`` (default 256 and 1024); both use rotary positions, so a length past the training window runs (the
row says ``beyond window``). LDLM is unconditional with a fixed number of latents (``ldlm.num_latents``, the window):
it cannot produce another length, so it is measured once at its window (128 at ``small``), against the GPT sampling
a window from one EOS as in the unconditional protocol.

Output: a printed table, ``<out>/gpu_check.json`` (device, torch version, date, settings, one row per stage and per
sampling point) and ``<out>/gpu_check.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import platform as std_platform
import statistics
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

FAMILIES = ("textldm", "ldlm", "dlm", "ar")
LABELS = {"textldm": "TextLDM", "ldlm": "LDLM", "dlm": "Cola DLM", "ar": "AR (GPT)"}
TEACHER_DIM = 576          # SmolLM2-135M's hidden size: the tiny/small presets' REPA teacher and LDLM token encoder
OFFLINE_VOCAB = {"embedded:smollm2": 49152}  # len(tokenizer) of the presets' embedded tokenizer (not on the GPU box)
SHARD_BATCHES = 4          # distinct random batches per pass over the stand-in dataset


# -- the stages ------------------------------------------------------------------------------------------------

@dataclass
class StagePlan:
    """One training stage to drive: ``build()`` returns its ``loop.Stage`` (after the caller seeded torch);
    ``features``: extra float columns the micro-batches carry (name -> width per token)."""
    family: str
    stage: str
    build: Callable[[], object]
    seq_len: int
    vocab_size: int
    features: dict[str, int] = field(default_factory=dict)
    note: str = ""


def vocab_size(data) -> int:
    """Classes the models predict: the compact vocabulary (``vocab_limit`` + unknown) or the tokenizer's size."""
    from latentlm.platform.methods.ar.config import vocab_estimate
    if not data.vocab_limit and data.tokenizer in OFFLINE_VOCAB:
        return OFFLINE_VOCAB[data.tokenizer]
    return vocab_estimate(data)


VOCAB_FIELD = {"textldm": ("vae",), "ldlm": ("ldlm",), "dlm": ("dlm", "vae"), "ar": ("gpt",)}  # vocab_size's section


def family_config(family: str, preset: str, overrides: dict | None = None):
    """``family``'s experiment config at ``preset`` + ``overrides``, its models' vocabulary set from the data section
    (the pipelines set it after tokenizing)."""
    from latentlm.platform import registry
    from latentlm.platform.config import merge

    def vocab(size: int) -> dict:
        section: dict = {"vocab_size": size}
        for key in reversed(VOCAB_FIELD[family]):
            section = {key: section}
        return merge(overrides or {}, section)
    build = registry.get(family).build
    return build(preset, vocab(vocab_size(build(preset, vocab(1)).data)))  # a placeholder to read the data section


def batch_overrides(family: str, batch_size: int | None) -> dict:
    """Every training stage's global batch set to ``batch_size`` (None: the preset's)."""
    from latentlm.platform import registry
    if batch_size is None:
        return {}
    return {section: {"optim": {"batch_size": batch_size}} for section in registry.get(family).stage_sections.values()}


def frozen(module: torch.nn.Module, device) -> torch.nn.Module:
    return module.to(device).eval().requires_grad_(False)


def textldm_plans(cfg, wc) -> list[StagePlan]:
    from latentlm.models.text_vae import TextVAE
    from latentlm.platform.methods.textldm.train_dit import build_dit_stage
    from latentlm.platform.methods.textldm.train_vae import build_vae_stage
    teacher_dim = TEACHER_DIM if cfg.vae.repa.enabled else None

    def dit():
        return build_dit_stage(cfg, wc, frozen(TextVAE(cfg.vae, teacher_dim), wc.device))

    common = dict(family="textldm", seq_len=cfg.data.seq_len, vocab_size=cfg.vae.vocab_size)
    return [StagePlan(stage="vae", build=lambda: build_vae_stage(cfg, wc, None, teacher_dim),
                      features={"teacher": teacher_dim} if teacher_dim else {},
                      note=f"REPA on random {teacher_dim}-d teacher features" if teacher_dim else "", **common),
            StagePlan(stage="dit", build=dit, note="frozen random VAE", **common)]


def ldlm_plans(cfg, wc) -> list[StagePlan]:
    from latentlm.models.ldlm import LDLM
    from latentlm.models.token_encoder import HiddenStats
    from latentlm.platform.methods.ldlm.train import build_ldlm_stage, build_post_decoder_stage
    dim = cfg.ldlm.hidden_size  # the token encoder's width (the presets' default is SmolLM2's)

    def stats():
        return HiddenStats(dim).to(wc.device) if cfg.uses_token_encoder else None

    def post_decoder():
        return build_post_decoder_stage(cfg, wc, frozen(LDLM(cfg.ldlm), wc.device), None, stats())

    note = f"random {dim}-d token-encoder features" if cfg.uses_token_encoder else "scratch embeddings"
    post_note = note + ", frozen random joint model" + (
        "" if cfg.train_post_decoder.enabled else " (train_post_decoder is off in this preset: measured anyway)")
    common = dict(family="ldlm", seq_len=cfg.data.seq_len, vocab_size=cfg.ldlm.vocab_size,
                  features={"hidden": dim} if cfg.uses_token_encoder else {})
    return [StagePlan(stage="ldlm", build=lambda: build_ldlm_stage(cfg, wc, None, stats()), note=note, **common),
            StagePlan(stage="post_decoder", build=post_decoder, note=post_note, **common)]


def dlm_plans(cfg, wc) -> list[StagePlan]:
    from latentlm.models.dlm_vae import DLMTextVAE
    from latentlm.platform.methods.dlm.train import JOINT_METRICS, VAE_METRICS, build_dlm_stage, joint_module

    def vae():
        return build_dlm_stage(cfg, wc, "vae", DLMTextVAE(cfg.dlm.vae), cfg.train_vae.optim, VAE_METRICS)

    def joint():
        pretrained = DLMTextVAE(cfg.dlm.vae)  # stands in for the VAE stage's checkpoint (loaded twice by the loop)
        module, lr_multiplier = joint_module(cfg, wc, lambda device: copy.deepcopy(pretrained).to(device))
        return build_dlm_stage(cfg, wc, "joint", module, cfg.train_joint.optim, JOINT_METRICS, None, lr_multiplier)

    common = dict(family="dlm", seq_len=cfg.data.seq_len, vocab_size=cfg.dlm.vae.vocab_size)
    return [StagePlan(stage="dlm_vae", build=vae, **common),
            StagePlan(stage="dlm_joint", build=joint, note=f"vae_strategy {cfg.dlm.vae_strategy}, random VAE",
                      **common)]


def ar_plans(cfg, wc) -> list[StagePlan]:
    from latentlm.platform.methods.ar.train import build_ar_stage
    return [StagePlan(family="ar", stage="ar", build=lambda: build_ar_stage(cfg, wc), seq_len=cfg.data.seq_len,
                      vocab_size=cfg.gpt.vocab_size, note=f"GPT matched to {cfg.match}")]


PLANS = {"textldm": textldm_plans, "ldlm": ldlm_plans, "dlm": dlm_plans, "ar": ar_plans}


# -- driving a stage without Ray --------------------------------------------------------------------------------

class RandomShard:
    """Stands in for a Ray dataset shard in ``parts.stream_batches``: every pass yields the same ``SHARD_BATCHES``
    random numpy batches of full windows (``tokens``, ``length`` and the plan's feature columns, stored fp16 like
    the teacher features)."""

    def __init__(self, plan: StagePlan, batch_size: int, seed: int):
        rng = np.random.default_rng(seed)
        b, t = batch_size, plan.seq_len
        self.batches = [{"tokens": rng.integers(0, plan.vocab_size, (b, t), dtype=np.int64),
                         "length": np.full(b, t, dtype=np.int64),
                         **{name: rng.standard_normal((b, t * dim), dtype=np.float32).astype(np.float16)
                            for name, dim in plan.features.items()}}
                        for _ in range(SHARD_BATCHES)]

    def iter_batches(self, batch_size: int, **_):
        for batch in self.batches:
            assert len(batch["tokens"]) == batch_size, "RandomShard: built for another batch size"
            yield {name: column.copy() for name, column in batch.items()}  # prepare_batch may add columns


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Between stages on a GPU: the last stage's tensors back to the allocator, so peak memory is each stage's own."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


@dataclass
class StageRun:
    """What one drive of a stage measured."""
    precision: str
    num_params: int
    batch_size: int
    losses: list[float] = field(default_factory=list)   # every step's loss, warm-up included
    timed_steps: int = 0
    seconds: float = 0.0
    tokens: int = 0                       # real tokens of the timed steps (``loop.real_tokens``, as the loop's meter)
    attention_per_token: float = 0.0      # attention FLOPs per token of the warm-up steps (flops.AttentionCounter)
    peak_memory_gib: float | None = None


def drive(plan: StagePlan, wc, seed: int, precision: str, steps: int, warmup: int = 0,
          deadline: float = math.inf) -> StageRun:
    """Build ``plan``'s stage from ``seed`` and run ``warmup`` + ``steps`` optimiser steps at ``precision`` (the
    engine's ``deepspeed.precision``), as ``loop.train_stage`` steps; times the last ``steps`` (fewer when
    ``deadline``, in perf_counter seconds, passes) and counts the attention FLOPs of the warm-up steps."""
    from latentlm.platform.training.engine import build_engine, compute_dtype
    from latentlm.platform.training.flops import AttentionCounter
    from latentlm.platform.training.loop import real_tokens
    from latentlm.platform.training.parts import EMA, derive_seed, micro_batches, seed_everything, stream_batches
    from latentlm.platform.training.sections import DeepSpeedConfig
    device = wc.device
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(derive_seed(seed, plan.family, plan.stage, "torch"))
    stage = plan.build()
    optim = stage.optim
    model = stage.model.to(device)
    ema = EMA(model, optim.ema_decay) if stage.ema and optim.ema_decay > 0 else None
    engine = build_engine(model, optim, DeepSpeedConfig(enabled=False, precision=precision), wc,
                          optim.batch_size, stage.engine_name, stage.lr_multiplier)
    shard = RandomShard(plan, optim.batch_size, derive_seed(seed, plan.family, plan.stage, "data"))
    if stage.on_start is not None:
        stage.on_start(shard, 0)
    stream = stream_batches(shard, optim.batch_size, derive_seed(seed, stage.engine_name, "data"))
    bf16 = compute_dtype(precision, device) == torch.bfloat16
    run = StageRun("bf16" if bf16 else "fp32", engine.num_params, optim.batch_size)
    losses, warm_flops, warm_tokens, t0 = [], 0, 0, time.perf_counter()
    engine.module.train()
    for index in range(warmup + steps):
        timed = index >= warmup
        if index == warmup:
            sync(device)
            t0 = time.perf_counter()
        _, _, batch = next(stream)
        if stage.prepare_batch is not None:
            stage.prepare_batch(batch)
        with contextlib.nullcontext() if timed else AttentionCounter() as counter:
            for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
                out = stage.step(engine, micro, index + 1)
                engine.backward(out.loss)
                engine.step()
                losses.append(out.loss.detach().float())
                if timed:
                    run.tokens += real_tokens(micro)
                else:
                    warm_tokens += real_tokens(micro)
        if stage.after_step is not None:
            stage.after_step()
        if ema is not None:
            ema.update(engine.module)
        if timed:
            run.timed_steps += 1
            if time.perf_counter() > deadline:  # the engine's step already waited for the device (grad norm)
                break
        else:
            warm_flops += counter.flops
    sync(device)
    run.seconds = time.perf_counter() - t0
    run.losses = torch.stack(losses).tolist()
    run.attention_per_token = warm_flops / max(warm_tokens, 1)
    if device.type == "cuda":
        run.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return run


def relative_differences(bf16: list[float], fp32: list[float]) -> list[float]:
    return [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(bf16, fp32)]


def check_stage(plan: StagePlan, wc, args, deadline: float, peak: float | None) -> dict:
    """One training row: the timed run at the engine's default precision, then the other precision's first steps
    from the same seed."""
    from latentlm.platform.training.flops import mfu, training_flops_per_token
    timed = drive(plan, wc, args.seed, "auto", args.steps, args.warmup, deadline)
    compare = min(args.compare_steps, len(timed.losses))
    other = drive(plan, wc, args.seed, "fp32" if timed.precision == "bf16" else "bf16", compare)
    losses = {timed.precision: timed.losses[:compare], other.precision: other.losses}
    tokens_per_s = timed.tokens / timed.seconds
    flops = training_flops_per_token(timed.num_params, timed.attention_per_token)
    return {"family": plan.family, "stage": plan.stage, "params": timed.num_params, "precision": timed.precision,
            "batch_size": timed.batch_size, "seq_len": plan.seq_len, "warmup_steps": args.warmup,
            "timed_steps": timed.timed_steps, "seconds": timed.seconds,
            "steps_per_s": timed.timed_steps / timed.seconds, "tokens_per_s": tokens_per_s,
            "flops_per_token": flops, "attention_flops_per_token": timed.attention_per_token,
            "mfu": mfu(flops, tokens_per_s, peak), "peak_memory_gib": timed.peak_memory_gib,
            "compare_steps": compare, "losses_bf16": losses["bf16"], "losses_fp32": losses["fp32"],
            "loss_rel_diff_max": max(relative_differences(losses["bf16"], losses["fp32"])), "note": plan.note}


# -- sampling ------------------------------------------------------------------------------------------------

@dataclass
class Sampler:
    """One generator, ready to time: ``call(length)`` generates ``batch`` x ``length`` tokens (the protocol's
    ``eval`` settings), ``window`` its training window, ``lengths``: the lengths it can produce (None: any)."""
    family: str
    call: Callable[[int], torch.Tensor]
    window: int
    dtype: str
    settings: str
    lengths: tuple[int, ...] | None = None


def prompts(batch: int, length: int, vocab: int, seed: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(device)


def protocol_dtype(e, args) -> str:
    return e.dtype if args.sample_dtype == "protocol" else args.sample_dtype


def textldm_sampler(cfg, args, device) -> Sampler:
    from latentlm.models.dit import TextDiT
    from latentlm.models.text_vae import TextVAE
    from latentlm.platform.methods.textldm.generator import LatentNormalizer, TextLDM
    vae = TextVAE(cfg.vae, TEACHER_DIM if cfg.vae.repa.enabled else None)
    model = TextLDM(vae, TextDiT(cfg.dit), LatentNormalizer(cfg.dit.latent_dim), cfg.train_dit.schedule)
    model = model.to(device).eval()
    e, prompt = cfg.eval, prompts(args.sample_batch, args.prompt_len, cfg.vae.vocab_size, args.seed, device)

    def call(length: int) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(args.seed)
        return model.generate(prompt, length, steps=e.steps, cfg_scale=e.cfg_scale, grid=e.grid, generator=generator)
    return Sampler("textldm", call, cfg.data.seq_len, protocol_dtype(e, args),
                   f"{e.steps} Euler steps, CFG {e.cfg_scale:g}, prompt {args.prompt_len}")


def dlm_sampler(cfg, args, device) -> Sampler:
    from latentlm.models.dlm import ColaDLM
    from latentlm.platform.methods.dlm.generator import ColaDLMGenerator
    gen = ColaDLMGenerator(cfg, ColaDLM(cfg.dlm), eos_id=0).to(device)
    e, prompt = cfg.eval, prompts(args.sample_batch, args.prompt_len, cfg.dlm.vae.vocab_size, args.seed, device)

    def call(length: int) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(args.seed)
        return gen.generate(prompt, length, steps=e.steps, cfg_scale=e.cfg_scale, grid=e.grid, generator=generator)
    settings = (f"{e.steps} steps per block of {cfg.dlm.dit.block_size}, CFG {e.cfg_scale:g}, "
                f"KV cache {'on' if cfg.sampler.use_cache else 'off'}, prompt {args.prompt_len}")
    return Sampler("dlm", call, cfg.data.seq_len, protocol_dtype(e, args), settings)


def ldlm_sampler(cfg, args, device) -> Sampler:
    from latentlm.models.ldlm import LDLM
    from latentlm.models.token_encoder import HiddenStats
    from latentlm.platform.methods.ldlm.generator import LDLMGenerator
    stats = HiddenStats(cfg.ldlm.hidden_size) if cfg.uses_token_encoder else None
    gen = LDLMGenerator(cfg, LDLM(cfg.ldlm), stats, device=device)
    e = cfg.eval

    def call(length: int) -> torch.Tensor:
        generator = torch.Generator(LDLMGenerator.generator_device).manual_seed(args.seed)
        return gen.sample(args.sample_batch, e.steps, generator, e.grid)
    return Sampler("ldlm", call, cfg.data.seq_len, protocol_dtype(e, args),
                   f"{e.steps} steps ({cfg.sampler.kind}), unconditional", (cfg.ldlm.num_latents,))


def ar_sampler(args, device, family: str, matched, longest: int) -> Sampler:
    """The GPT matched to ``family``'s diffusion network at ``args.preset`` (same vocabulary), continuing the same
    prompts with its KV cache, or (LDLM) sampling windows from one EOS as the unconditional protocol does; positions
    for ``longest`` new tokens (rotary: no parameter changes)."""
    from latentlm.models.gpt import GPT
    from latentlm.platform.methods.ar.config import build_ar_config
    from latentlm.platform.methods.ar.generator import ARGenerator
    vocab = vocab_size(matched.data)
    cfg = build_ar_config(args.preset, {"match": f"{family}:{args.preset}", "gpt": {
        "vocab_size": vocab, "max_seq_len": max(args.prompt_len + longest, matched.data.seq_len + 1)}})
    gen = ARGenerator(cfg, GPT(cfg.gpt), eos_id=0).to(device)
    unconditional = family == "ldlm"
    prompt = (torch.zeros(args.sample_batch, 1, dtype=torch.long, device=device) if unconditional else
              prompts(args.sample_batch, args.prompt_len, vocab, args.seed, device))

    def call(length: int) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(args.seed)
        return gen.generate(prompt, length, generator=generator)
    g = cfg.gpt
    return Sampler("ar", call, cfg.data.seq_len, protocol_dtype(cfg.eval, args),
                   f"GPT {g.hidden_dim} x {g.depth} matched to {family}:{args.preset}, KV cache, T={g.temperature:g}"
                   + (", from one EOS" if unconditional else f", prompt {args.prompt_len}"))


SAMPLERS = {"textldm": textldm_sampler, "ldlm": ldlm_sampler, "dlm": dlm_sampler}


def time_sampler(sampler: Sampler, length: int, device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed warm-up call, under the sampler's dtype."""
    from latentlm.platform.evaluation.harness import sampler_precision
    times = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), sampler_precision(sampler.dtype, device):
            ids = sampler.call(length)
        sync(device)
        if tuple(ids.shape)[1] != length:
            raise ValueError(f"{sampler.family}: generated {tuple(ids.shape)} for {length} new tokens")
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sampling_rows(family: str, args, device, deadline: float) -> list[dict]:
    """One row per measured length: the family's tokens/s, its matched GPT's at the same length, the ratio."""
    cfg = family_config(family, args.preset)
    sampler = SAMPLERS[family](cfg, args, device)
    ar = ar_sampler(args, device, family, cfg, max(args.sample_lengths))
    rows = []
    asked = ", ".join(map(str, args.sample_lengths))
    for length in args.sample_lengths if sampler.lengths is None else sampler.lengths:
        notes = []
        if sampler.lengths is not None:  # one measurement stands for every asked length
            notes.append(f"generates only its {length}-token window (asked: {asked})")
        elif args.prompt_len + length > sampler.window:
            notes.append(f"beyond the {sampler.window}-token training window (rotary positions: runs untrained)")
        row = {"family": family, "length": length, "batch": args.sample_batch, "dtype": sampler.dtype,
               "settings": sampler.settings, "ar_settings": ar.settings, "note": "; ".join(notes)}
        if time.perf_counter() > deadline:
            rows.append({**row, "error": "skipped: --budget-s spent"})
            continue
        try:
            seconds = time_sampler(sampler, length, device, args.sample_repeats)
            ar_seconds = time_sampler(ar, length, device, args.sample_repeats)
            tokens = args.sample_batch * length
            row.update(seconds=seconds, tokens_per_s=tokens / seconds, ar_seconds=ar_seconds,
                       ar_tokens_per_s=tokens / ar_seconds, vs_ar=ar_seconds / seconds)
        except Exception as exc:  # e.g. out of memory at 1024: keep the other rows
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(f"  sampling {LABELS[family]:8s} L={length:5d}: " + (row.get("error") or
              f"{row['tokens_per_s']:.0f} tok/s vs AR {row['ar_tokens_per_s']:.0f} tok/s ({row['vs_ar']:.2f}x)"),
              flush=True)
    return rows


# -- report --------------------------------------------------------------------------------------------------

def fmt(value, spec: str = ".3g", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"GPU check, preset `{report['preset']}`: {report['device']} | torch {report['torch']} | "
             f"{report['date']} | {report['total_s']:.0f} s. Random weights and data; peak "
             f"{fmt(report['peak_flops'], '.3g', 'unknown')} FLOP/s.", "",
             "| family | stage | params | precision | batch x seq | timed steps | steps/s | tokens/s | MFU | "
             "peak mem GiB | bf16 vs fp32 loss (max rel. diff, steps) | note |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["training"]:
        if r.get("error"):
            lines.append(f"| {LABELS[r['family']]} | {r['stage']} | | | | | | | | | | {r['error']} |")
            continue
        lines.append(f"| {LABELS[r['family']]} | {r['stage']} | {r['params'] / 1e6:.1f}M | {r['precision']} | "
                     f"{r['batch_size']} x {r['seq_len']} | {r['timed_steps']} | {r['steps_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {fmt(r['mfu'], '.1%')} | {fmt(r['peak_memory_gib'], '.1f')} | "
                     f"{r['loss_rel_diff_max']:.2e} ({r['compare_steps']}) | {r['note']} |")
    lines += ["", "| family | new tokens | batch | dtype | tokens/s | matched AR tokens/s | vs AR | settings | note |",
              "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for r in report["sampling"]:
        if r.get("error"):
            lines.append(f"| {LABELS[r['family']]} | {r['length']} | {r['batch']} | {r['dtype']} | | | | "
                         f"{r['settings']} | {r['error']} |")
            continue
        lines.append(f"| {LABELS[r['family']]} | {r['length']} | {r['batch']} | {r['dtype']} | "
                     f"{r['tokens_per_s']:.0f} | {r['ar_tokens_per_s']:.0f} | {r['vs_ar']:.2f}x | "
                     f"{r['settings']}; AR: {r['ar_settings']} | {r['note']} |")
    lines += ["", "MFU = (6N + attention FLOPs per token) x tokens/s / peak (platform/training/flops.py). bf16 vs "
              "fp32: same seed, init and batches; max |l_bf16 - l_fp32| / |l_fp32| over the first steps. vs AR: "
              "tokens/s over the matched GPT's at the same length (> 1: faster)."]
    return "\n".join(lines) + "\n"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {std_platform.processor() or std_platform.machine()} ({torch.get_num_threads()} threads)"


def parse_lengths(text: str) -> list[int]:
    lengths = [int(x) for x in text.split(",") if x.strip()]
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive comma-separated lengths, got {text!r}")
    return lengths


def parse_families(text: str) -> list[str]:
    families = [x.strip() for x in text.split(",") if x.strip()]
    if not families or set(families) - set(FAMILIES):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(FAMILIES)}, got {text!r}")
    return families


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--preset", default="small", help="every family's preset (tiny, small)")
    parser.add_argument("--families", type=parse_families, default=list(FAMILIES), help="comma list of families")
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per stage")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (attention FLOPs counted)")
    parser.add_argument("--compare-steps", type=int, default=5, help="first steps of the bf16-vs-fp32 comparison")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="every stage's global batch in windows (default: the preset's optim.batch_size)")
    parser.add_argument("--sample-lengths", type=parse_lengths, default=[256, 1024], help="new tokens per sample")
    parser.add_argument("--sample-batch", type=int, default=32, help="sequences per sampling call")
    parser.add_argument("--sample-repeats", type=int, default=1, help="timed sampling calls (median), after a warm-up")
    parser.add_argument("--sample-dtype", choices=("protocol", "float32", "bfloat16"), default="protocol",
                        help="sampler precision (protocol: each config's eval.dtype)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens of the continuation samplers")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="wall-clock budget: training stages stop timing at their share, sampling points past "
                             "it are skipped (the startup and the last point may overrun it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    counts = (args.steps, args.warmup, args.compare_steps, args.sample_batch, args.sample_repeats, args.prompt_len,
              args.batch_size or 1)
    if min(counts) < 1:
        parser.error("--steps, --warmup, --compare-steps, --batch-size, --sample-batch, --sample-repeats and "
                     "--prompt-len must be >= 1")

    from latentlm.models.checkpoint import atomic_write_text
    from latentlm.platform.training.parts import WorkerContext, peak_flops
    start = time.perf_counter()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    wc = WorkerContext(0, 1, device)
    peak = peak_flops(device)
    report = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
              "cuda": torch.version.cuda, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "preset": args.preset, "peak_flops": peak, "args": vars(args), "training": [], "sampling": []}
    print(f"{report['device']} | torch {report['torch']} | preset {args.preset} | budget {args.budget_s:.0f} s",
          flush=True)
    # the training stages share 60% of the budget (each its share of what is left), sampling the rest
    train_end = start + 0.6 * args.budget_s
    plans = [plan for family in args.families for plan in PLANS[family](
        family_config(family, args.preset, batch_overrides(family, args.batch_size)), wc)]
    for i, plan in enumerate(plans):
        deadline = time.perf_counter() + max(0.0, train_end - time.perf_counter()) / (len(plans) - i)
        try:
            row = check_stage(plan, wc, args, deadline, peak)
        except Exception as exc:  # e.g. out of memory: keep the other stages
            traceback.print_exc()
            row = {"family": plan.family, "stage": plan.stage, "error": f"{type(exc).__name__}: {exc}"}
        report["training"].append(row)
        print(f"  train {LABELS[plan.family]:8s} {plan.stage:13s}: " + (row.get("error") or (
            f"{row['steps_per_s']:.2f} steps/s, {row['tokens_per_s']:.0f} tok/s, MFU {fmt(row['mfu'], '.1%')}, "
            f"peak {fmt(row['peak_memory_gib'], '.1f')} GiB, bf16/fp32 loss {row['loss_rel_diff_max']:.1e}")),
            flush=True)
        free_memory(device)
    for family in (f for f in args.families if f in SAMPLERS):
        try:
            report["sampling"] += sampling_rows(family, args, device, start + args.budget_s)
        except Exception as exc:
            traceback.print_exc()
            report["sampling"].append({"family": family, "length": 0, "batch": args.sample_batch, "dtype": "",
                                       "settings": "", "error": f"{type(exc).__name__}: {exc}"})
        free_memory(device)
    report["total_s"] = time.perf_counter() - start
    out = Path(args.out)
    table = markdown(report)
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "gpu_check.md", table)
    print("\n" + table + f"\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
