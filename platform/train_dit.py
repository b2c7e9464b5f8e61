"""Stage 2: TextDiT flow matching on the frozen VAE's latents, as a Ray Train function."""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors, read_json
from latentlm.models.dit import TextDiT
from latentlm.models.text_vae import TextVAE
from latentlm.models.textldm import LatentNormalizer, flow_matching_loss

from .config import from_dict, to_dict
from .tracking import start_tracking
from .train_vae import checkpoint_modules
from .training import (EMA, Throughput, format_metrics, load_vocab, log_and_checkpoint, make_optimizer,
                       model_ids, restore_optimizer, seed_everything,
                       stack_column, should_log, stream_batches, worker_context,
                       write_training_checkpoint)


def load_frozen_vae(cfg, vae_dir: str, device) -> TextVAE:
    state = read_json(Path(vae_dir) / "state.json")
    vae = TextVAE(cfg.vae, teacher_dim=state.get("teacher_dim") if cfg.vae.repa.enabled else None)
    vae.load_state_dict(load_tensors(Path(vae_dir) / "vae.safetensors"))
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def fit_normalizer(vae: TextVAE, stream, windows: int, latent_dim: int, device, world_size: int,
                   vocab=None) -> LatentNormalizer:
    """Per-channel mean/std of posterior means over ``windows`` windows (summed over all workers)."""
    total = torch.zeros(3, latent_dim, dtype=torch.float64, device=device)  # count, sum, sum of squares
    seen = 0
    while seen < max(1, windows // world_size):
        _, _, batch = next(stream)
        mu, _, _ = vae.encode(model_ids(torch.from_numpy(stack_column(batch, "tokens")).to(device), vocab))
        flat = mu.reshape(-1, latent_dim).double()
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


def split_point(seq_len: int, cfg, generator: torch.Generator) -> int:
    """Context length for this batch: 0 with prob uncond_prob (unconditional), else uniform in the range."""
    if float(torch.rand((), generator=generator)) < cfg.dit.uncond_prob:
        return 0
    lo, hi = cfg.train_dit.context_fraction
    frac = lo + (hi - lo) * float(torch.rand((), generator=generator))
    return min(seq_len - 1, max(1, round(frac * seq_len)))


def train_dit_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    from .experiment import TextLDMConfig
    cfg = from_dict(TextLDMConfig, config["experiment"])
    optim = cfg.train_dit.optim
    wc = worker_context(cfg.resources)
    seed_everything(cfg.seed + 17 + wc.rank)
    vae = load_frozen_vae(cfg, config["vae_checkpoint"], wc.device)
    vocab = load_vocab(config.get("vocab"), wc.device)
    dit = TextDiT(cfg.dit).to(wc.device)
    ema = EMA(dit, optim.ema_decay) if optim.ema_decay > 0 else None
    opt, sched = make_optimizer(dit.parameters(), optim)
    shard = ray.train.get_dataset_shard("train")
    start_step, epoch, skip = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    normalizer = LatentNormalizer(cfg.dit.latent_dim).to(wc.device)
    if checkpoint:
        with checkpoint.as_directory() as d:
            dit.load_state_dict(load_tensors(Path(d) / "dit.safetensors"))
            normalizer.load_state_dict(load_tensors(Path(d) / "normalizer.safetensors"))
            if ema is not None:
                ema.shadow = load_tensors(Path(d) / "ema.safetensors")
            restore_optimizer(Path(d), opt, sched)
            state = read_json(Path(d) / "state.json")
            start_step, epoch, skip = state["step"], state["epoch"], state["batch_index"] + 1
    else:
        per_worker = max(1, optim.batch_size // wc.world_size)
        normalizer = fit_normalizer(vae, stream_batches(shard, per_worker, cfg.seed + 99), cfg.train_dit.normalizer_windows,
                                    cfg.dit.latent_dim, wc.device, wc.world_size, vocab)
    model = ray.train.torch.prepare_model(dit) if wc.world_size > 1 else dit
    per_worker = max(1, optim.batch_size // wc.world_size)
    stream = stream_batches(shard, per_worker, cfg.seed, epoch, skip)
    split_rng = torch.Generator().manual_seed(cfg.seed * 7919 + start_step)  # same split on every worker
    meter = Throughput()
    vae_state = read_json(Path(config["vae_checkpoint"]) / "state.json")
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"], name="dit",
                             directory=config["run_dir"], config=to_dict(cfg))
    model.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        tokens = model_ids(torch.from_numpy(stack_column(batch, "tokens")).to(wc.device), vocab)
        s = split_point(tokens.shape[1], cfg, split_rng)
        with torch.no_grad():  # context and target are encoded separately: no leakage into the context
            target = normalizer.normalize(vae.encode(tokens[:, s:])[0])
            context = normalizer.normalize(vae.encode(tokens[:, :s])[0]) if s > 0 else None
        with wc.autocast():
            out = flow_matching_loss(model, context, target, cfg.train_dit.schedule, cfg.dit.cfg_dropout)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(dit)
        meter.add(tokens.numel() * wc.world_size)
        if should_log(step, optim):
            metrics = {"loss": out.loss.item(), "grad_norm": float(grad_norm), "lr": sched.get_last_lr()[0],
                       "context_len": s, "tokens_per_s": meter.rate(), "step": step, "epoch": epoch}

            def writer(d, step=step, epoch=epoch, index=index):
                # the VAE (and vocab) travel with the DiT: one self-contained export
                modules = {**checkpoint_modules(vae, vocab), "dit": dit.state_dict(),
                           "normalizer": normalizer.state_dict()}
                if ema is not None:
                    modules["ema"] = ema.state_dict()
                write_training_checkpoint(d, config=to_dict(cfg), modules=modules, optimizer=opt, scheduler=sched,
                                          state={"stage": "dit", "step": step, "epoch": epoch, "batch_index": index,
                                                 "teacher_dim": vae_state.get("teacher_dim"),
                                                 "vae_checkpoint": config["vae_checkpoint"]})
            log_and_checkpoint("dit", step, optim, metrics, wc, tracker, writer)
    tracker.finish()
