"""Stage 2: TextDiT flow matching on the frozen VAE's latents, as a Ray Train function."""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors, read_json
from latentlm.models.dit import TextDiT
from latentlm.models.text_vae import TextVAE
from latentlm.models.textldm import LatentNormalizer, flow_matching_loss

from .config import from_dict, to_dict
from .engine import build_engine
from .tracking import start_tracking
from .train_vae import vocab_modules
from .training import (EMA, Throughput, inject_fault, load_vocab, log_and_checkpoint, mean_over_workers,
                       micro_batches, resume, seed_everything, should_log, stream_batches, window_tokens,
                       worker_context, worker_rows, write_checkpoint)


def load_frozen_vae(cfg, vae_dir: str, device) -> TextVAE:
    state = read_json(Path(vae_dir) / "state.json")
    vae = TextVAE(cfg.vae, teacher_dim=state.get("teacher_dim") if cfg.vae.repa.enabled else None)
    vae.load_state_dict(load_tensors(Path(vae_dir) / "vae.safetensors"))
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def fit_normalizer(vae: TextVAE, stream, windows: int, latent_dim: int, device, world_size: int,
                   vocab=None) -> LatentNormalizer:
    """Per-channel mean/std of posterior means over the real tokens of ``windows`` windows (summed over all
    workers)."""
    total = torch.zeros(3, latent_dim, dtype=torch.float64, device=device)  # count, sum, sum of squares
    seen = 0
    while seen < max(1, windows // world_size):
        _, _, batch = next(stream)
        tokens, valid = window_tokens(batch, vocab, device)
        mu, _, _ = vae.encode(tokens, valid)
        flat = (mu if valid is None else mu[valid]).reshape(-1, latent_dim).double()
        total += torch.stack([torch.full_like(flat[0], flat.shape[0]), flat.sum(0), flat.pow(2).sum(0)])
        seen += mu.shape[0]
    if world_size > 1:
        torch.distributed.all_reduce(total)
    count, mean = total[0], total[1] / total[0]
    var = (total[2] / count - mean.pow(2)).clamp_min(0) * count / (count - 1)
    normalizer = LatentNormalizer(latent_dim).to(device)
    normalizer.mean.copy_(mean.float())
    normalizer.std.copy_(var.sqrt().float().clamp_min(1e-4))
    return normalizer


def split_points(lengths: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """Each sample's context length over its own real tokens: 0 (unconditional) with prob ``dit.uncond_prob``,
    else round(u * length) with u uniform in ``train_dit.context_fraction``, kept in [1, length - 1] so every
    target holds at least one real token. A window of one real token has no split: unconditional."""
    b = lengths.shape[0]
    lo, hi = cfg.train_dit.context_fraction
    uncond = torch.rand(b, generator=generator) < cfg.dit.uncond_prob
    fraction = lo + (hi - lo) * torch.rand(b, generator=generator)
    lengths = lengths.cpu()
    split = torch.minimum(torch.clamp(torch.round(fraction * lengths).long(), min=1), lengths - 1)
    return torch.where(uncond | (lengths < 2), torch.zeros_like(split), split)


@torch.no_grad()
def encode_window(vae: TextVAE, normalizer: LatentNormalizer, tokens: torch.Tensor, split: torch.Tensor,
                  valid: torch.Tensor | None):
    """Context and target of every sample encoded separately (no target information in the context latents),
    in one encoder pass: each position attends only within its own segment. Returns the normalised window
    latents and the (B, T) target mask."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    is_target = positions[None] >= split.to(tokens.device)[:, None]
    mu, _, _ = vae.encode(tokens, valid, segments=is_target.long())
    return normalizer.normalize(mu), is_target


def train_dit_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (TextLDMConfig dict), run_dir, run_name, vocab,
    vae_checkpoint, and the test-only ``inject_fault`` (see ``training.inject_fault``)."""
    import ray.train
    from .experiment import TextLDMConfig
    cfg = from_dict(TextLDMConfig, config["experiment"])
    optim = cfg.train_dit.optim
    wc = worker_context(cfg.resources)
    seed_everything(cfg.seed + 17 + wc.rank)
    vae = load_frozen_vae(cfg, config["vae_checkpoint"], wc.device)
    vocab = load_vocab(config.get("vocab"), wc.device)
    dit = TextDiT(cfg.dit).to(wc.device)
    ema = EMA(dit, optim.ema_decay) if optim.ema_decay > 0 else None
    engine = build_engine(dit, optim, cfg.deepspeed, wc, optim.batch_size, name="dit")
    split_rng = torch.Generator().manual_seed(cfg.seed * 7919)  # every rank draws the global batch's splits
    generators = {"split": split_rng}
    normalizer = LatentNormalizer(cfg.dit.latent_dim).to(wc.device)

    def restore_extra(d: Path) -> None:
        normalizer.load_state_dict(load_tensors(d / "normalizer.safetensors", wc.device))
        if ema is not None:
            ema.shadow = load_tensors(d / "ema.safetensors", wc.device)

    start_step, epoch, skip = resume(engine, generators, wc, restore_extra)
    shard = ray.train.get_dataset_shard("train")
    if start_step == 0:
        windows = worker_rows(stream_batches(shard, optim.batch_size, cfg.seed + 99), wc)
        normalizer = fit_normalizer(vae, windows, cfg.train_dit.normalizer_windows, cfg.dit.latent_dim, wc.device,
                                    wc.world_size, vocab)
    stream = stream_batches(shard, optim.batch_size, cfg.seed, epoch, skip)
    meter = Throughput(engine.num_params, wc.device, wc.world_size)
    vae_state = read_json(Path(config["vae_checkpoint"]) / "state.json")
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"],
                             name=f"{config.get('trial', 'run')}-dit",
                             directory=config["run_dir"], config=to_dict(cfg))
    engine.module.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        loss_sum = torch.zeros(1, device=wc.device)
        context_sum = torch.zeros((), device=wc.device)
        # splits are drawn for the whole global batch, so they do not depend on the number of workers
        batch["split"] = split_points(torch.from_numpy(batch["length"].astype("int64")), cfg, split_rng).numpy()
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
            tokens, valid = window_tokens(micro, vocab, wc.device)
            lengths = torch.from_numpy(micro["length"].astype("int64"))
            split = torch.from_numpy(micro["split"])
            latents, is_target = encode_window(vae, normalizer, tokens, split, valid)
            out = flow_matching_loss(engine, latents, is_target, cfg.train_dit.schedule, cfg.dit.cfg_dropout,
                                     valid=valid)
            engine.backward(out.loss)
            engine.step()
            loss_sum += out.loss.detach().float()
            context_sum += split.float().mean()
            meter.add(int(lengths.sum()) * wc.world_size)
        if ema is not None:
            with engine.gathered():
                ema.update(engine.module)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            loss, = mean_over_workers(loss_sum / engine.accumulation, wc.world_size)
            metrics = {"loss": loss, "grad_norm": engine.grad_norm, "lr": engine.lr,
                       "context_len": float(context_sum) / engine.accumulation,
                       **meter.metrics(), "step": step, "epoch": epoch}

            def modules():
                # the VAE (and vocab) travel with the DiT: one self-contained export
                exported = {"vae": vae.state_dict(), **vocab_modules(vocab), "normalizer": normalizer.state_dict()}
                if ema is not None:
                    exported["ema"] = ema.state_dict()
                return exported

            def writer(d, step=step, epoch=epoch, index=index):
                write_checkpoint(d, engine, wc, generators, config=to_dict(cfg), modules=modules,
                                 state={"stage": "dit", "step": step, "epoch": epoch, "batch_index": index,
                                        "teacher_dim": vae_state.get("teacher_dim"),
                                        "vae_checkpoint": config["vae_checkpoint"]})
            log_and_checkpoint("dit", step, optim, metrics, wc, tracker, writer,
                               Path(config["run_dir"]) / "dit_metrics.jsonl")
    tracker.finish()
