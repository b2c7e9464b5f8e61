"""LDLM stages as Ray Train functions: the joint stage (latent encoder + diffusion + decoders, one loss)
and the optional token-decoder post-training stage on noisy latents (encoder and diffusion frozen).

The joint stage streams precomputed, normalised token-encoder hidden states next to the tokens (the
frozen LM never runs in the training loop). With packed data (the default) every window is a full chunk
of the concatenated corpus, LDLM's fixed-length chunks; with per-document windows the padding is masked out
of the encoder's attention and of every loss term. The adaptive timestep sampler's statistics are summed over
workers at every refresh, so all ranks draw from the same density, and its state is checkpointed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.models.layers import masked_mean
from latentlm.models.ldlm import LDLM, PostTrainedDecoder
from latentlm.models.token_encoder import HiddenStats

from .config import from_dict, to_dict
from .engine import build_engine
from .tracking import start_tracking
from .train_vae import vocab_modules
from .training import (EMA, Throughput, WorkerContext, inject_fault, load_vocab, log_and_checkpoint,
                       mean_over_workers, micro_batches, resume, seed_everything, should_log,
                       stack_column, stream_batches, window_tokens, worker_context, write_checkpoint)

JOINT_METRICS = ("loss", "mse", "ce", "diffusion", "accuracy", "latent_norm")


def _experiment(config: dict):
    from .ldlm_config import LDLMExperimentConfig
    return from_dict(LDLMExperimentConfig, config["experiment"])


def micro_inputs(micro: dict, dim: int, stats: HiddenStats, vocab, device):
    """(normalised hidden states, model-vocab token ids, real-token mask or None) of one micro-batch."""
    ids, mask = window_tokens(micro, vocab, device)
    flat = stack_column(micro, "hidden", np.float32)
    hidden = stats.normalize(torch.from_numpy(flat).view(ids.shape[0], ids.shape[1], dim).to(device))
    return hidden, ids, mask


def all_reduce_sum(world_size: int):
    if world_size == 1:
        return None

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        # gloo/nccl reduce on the process group's device; the sampler keeps its state on the CPU
        device = torch.device("cuda") if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        moved = tensor.to(device)
        torch.distributed.all_reduce(moved)
        return moved.cpu()
    return reduce


def load_stats(path: str, dim: int, device) -> HiddenStats:
    stats = HiddenStats(dim)
    stats.load_state_dict(load_tensors(Path(path)))
    return stats.to(device)


def train_ldlm_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (LDLMExperimentConfig dict), run_dir, run_name, vocab,
    hidden_stats (safetensors path), and the test-only ``inject_fault``."""
    import ray.train
    cfg = _experiment(config)
    optim, dim = cfg.train.optim, cfg.ldlm.hidden_size
    wc = worker_context(cfg.resources)
    seed_everything(cfg.seed + wc.rank)
    vocab = load_vocab(config.get("vocab"), wc.device)
    stats = load_stats(config["hidden_stats"], dim, wc.device)
    model = LDLM(cfg.ldlm).to(wc.device)
    ema = EMA(model, optim.ema_decay) if optim.ema_decay > 0 else None
    engine = build_engine(model, optim, cfg.deepspeed, wc, optim.batch_size, name="ldlm")
    sampler = cfg.ldlm.make_timestep_sampler()
    noise_rng = torch.Generator(wc.device).manual_seed(cfg.seed * 1000 + wc.rank)  # per-rank noise, like per-sample
    time_rng = torch.Generator().manual_seed(cfg.seed * 7919 + wc.rank)
    generators = {"noise": noise_rng, "time": time_rng}

    def restore_extra(d: Path) -> None:
        if sampler is not None:
            sampler.load_state_dict(load_tensors(d / "timestep_sampler.safetensors"))
        if ema is not None:
            ema.shadow = load_tensors(d / "ema.safetensors", wc.device)

    start_step, epoch, skip = resume(engine, generators, wc, restore_extra)
    stream = stream_batches(ray.train.get_dataset_shard("train"), optim.batch_size, cfg.seed, epoch, skip)
    meter = Throughput(engine.num_params, wc.device, wc.world_size)
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"],
                             name=f"{config.get('trial', 'run')}-ldlm", directory=config["run_dir"],
                             config=to_dict(cfg))
    reduce = all_reduce_sum(wc.world_size)
    engine.module.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        sums = torch.zeros(len(JOINT_METRICS), device=wc.device)
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
            hidden, ids, mask = micro_inputs(micro, dim, stats, vocab, wc.device)
            n = ids.shape[0]
            t = sampler.sample(n, time_rng) if sampler is not None else torch.rand(n, generator=time_rng)
            out = engine(hidden, ids, step, t.to(wc.device), mask, noise_rng)
            engine.backward(out.loss)
            engine.step()
            if sampler is not None:
                sampler.observe(out.t, out.per_sample_diffusion)
            sums += torch.stack([getattr(out, name).detach().float() for name in JOINT_METRICS])
            meter.add(ids.numel() * wc.world_size)
        if sampler is not None:
            sampler.step(reduce)
        if ema is not None:
            with engine.gathered():
                ema.update(engine.module)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            means = mean_over_workers(sums / engine.accumulation, wc.world_size)
            metrics = {**dict(zip(JOINT_METRICS, means)), "grad_norm": engine.grad_norm, "lr": engine.lr,
                       **meter.metrics(), "step": step, "epoch": epoch}

            def modules():
                exported = {**vocab_modules(vocab), "hidden_stats": stats.state_dict()}
                if sampler is not None:
                    exported["timestep_sampler"] = sampler.state_dict()
                if ema is not None:
                    exported["ema"] = ema.state_dict()
                return exported

            def writer(d, step=step, epoch=epoch, index=index):
                write_checkpoint(d, engine, wc, generators, config=to_dict(cfg), modules=modules,
                                 state={"stage": "ldlm", "step": step, "epoch": epoch, "batch_index": index})
            log_and_checkpoint("ldlm", step, optim, metrics, wc, tracker, writer,
                               Path(config["run_dir"]) / "ldlm_metrics.jsonl")
    tracker.finish()


def load_joint_model(checkpoint: str, cfg, device, use_ema: bool = True) -> LDLM:
    """The joint stage's LDLM (EMA weights when present and asked for), frozen, in eval mode."""
    model = LDLM(cfg.ldlm)
    d = Path(checkpoint)
    weights = load_tensors(d / "ema.safetensors") if use_ema and (d / "ema.safetensors").is_file() else \
        load_tensors(d / "ldlm.safetensors")
    model.load_state_dict(weights)
    return model.to(device).eval().requires_grad_(False)


def post_decoder_loop(config: dict) -> None:
    """Ray Train function: a fresh ``PostTrainedDecoder`` learns tokens from noisy latents of the frozen joint
    model (LDLM App. B.2). ``config``: as the joint stage plus ``joint_checkpoint``."""
    import ray.train
    cfg = _experiment(config)
    post, dim = cfg.post_decoder, cfg.ldlm.hidden_size
    optim = post.optim
    sigma = cfg.ldlm.decoder_noise if post.decoder_noise is None else post.decoder_noise
    wc: WorkerContext = worker_context(cfg.resources)
    seed_everything(cfg.seed + 101 + wc.rank)
    vocab = load_vocab(config.get("vocab"), wc.device)
    stats = load_stats(config["hidden_stats"], dim, wc.device)
    joint = load_joint_model(config["joint_checkpoint"], cfg, wc.device, use_ema=cfg.eval.use_ema)
    decoder = PostTrainedDecoder(cfg.ldlm, post.layers, post.source).to(wc.device)
    engine = build_engine(decoder, optim, cfg.deepspeed, wc, optim.batch_size, name="post_decoder")
    noise_rng = torch.Generator(wc.device).manual_seed(cfg.seed * 1000 + 7 + wc.rank)
    generators = {"noise": noise_rng}
    start_step, epoch, skip = resume(engine, generators, wc)
    stream = stream_batches(ray.train.get_dataset_shard("train"), optim.batch_size, cfg.seed + 5, epoch, skip)
    meter = Throughput(engine.num_params, wc.device, wc.world_size)
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"],
                             name=f"{config.get('trial', 'run')}-post_decoder", directory=config["run_dir"],
                             config=to_dict(cfg))
    engine.module.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        sums = torch.zeros(2, device=wc.device)
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
            hidden, ids, mask = micro_inputs(micro, dim, stats, vocab, wc.device)
            with torch.no_grad():
                z = joint.encode(hidden, mask)
                z = z + sigma * torch.randn(z.shape, generator=noise_rng, device=z.device, dtype=z.dtype)
            logits = engine(z, joint.decoder)
            token_ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")
            ce = masked_mean(token_ce, mask)
            engine.backward(ce)
            engine.step()
            accuracy = masked_mean((logits.argmax(-1) == ids).float(), mask)
            sums += torch.stack([ce.detach().float(), accuracy])
            meter.add((ids.numel() if mask is None else int(mask.sum())) * wc.world_size)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            ce_mean, acc_mean = mean_over_workers(sums / engine.accumulation, wc.world_size)
            metrics = {"ce": ce_mean, "accuracy": acc_mean, "grad_norm": engine.grad_norm, "lr": engine.lr,
                       **meter.metrics(), "step": step, "epoch": epoch}

            def writer(d, step=step, epoch=epoch, index=index):
                write_checkpoint(d, engine, wc, generators, config=to_dict(cfg), modules=lambda: {},
                                 state={"stage": "post_decoder", "step": step, "epoch": epoch, "batch_index": index,
                                        "joint_checkpoint": config["joint_checkpoint"]})
            log_and_checkpoint("post_decoder", step, optim, metrics, wc, tracker, writer,
                               Path(config["run_dir"]) / "post_decoder_metrics.jsonl")
    tracker.finish()

