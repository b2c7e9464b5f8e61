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
                       micro_batches, model_ids, resume, seed_everything, should_log, stack_column, stream_batches,
                       worker_context, worker_rows, write_checkpoint)


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
    split_rng = torch.Generator().manual_seed(cfg.seed * 7919)  # the same split on every rank
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
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
            tokens = model_ids(torch.from_numpy(stack_column(micro, "tokens")).to(wc.device), vocab)
            s = split_point(tokens.shape[1], cfg, split_rng)
            with torch.no_grad():  # context and target are encoded separately: no leakage into the context
                target = normalizer.normalize(vae.encode(tokens[:, s:])[0])
                context = normalizer.normalize(vae.encode(tokens[:, :s])[0]) if s > 0 else None
            out = flow_matching_loss(engine, context, target, cfg.train_dit.schedule, cfg.dit.cfg_dropout)
            engine.backward(out.loss)
            engine.step()
            loss_sum += out.loss.detach().float()
            meter.add(tokens.numel() * wc.world_size)
        if ema is not None:
            with engine.gathered():
                ema.update(engine.module)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            loss, = mean_over_workers(loss_sum / engine.accumulation, wc.world_size)
            metrics = {"loss": loss, "grad_norm": engine.grad_norm, "lr": engine.lr, "context_len": s,
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
