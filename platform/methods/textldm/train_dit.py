"""The DiT stage: TextDiT flow matching on the frozen VAE's latents, as a Ray Train function."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors, read_json
from latentlm.models.dit import TextDiT
from latentlm.models.text_vae import TextVAE
from latentlm.platform.config import from_dict
from latentlm.platform.training.loop import Stage, train_stage
from latentlm.platform.training.parts import (derive_seed, load_vocab, rank_feed, seed_everything, window_tokens,
                                              worker_context)

from .generator import LatentNormalizer, flow_matching_loss


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


@dataclass
class DiTStep:
    loss: torch.Tensor
    context_len: torch.Tensor  # mean context tokens of the micro-batch's splits


def build_dit_stage(cfg, wc, vae: TextVAE, vocab=None, state: dict | None = None) -> Stage:
    """The DiT stage of ``cfg`` (a TextLDMConfig) over the frozen ``vae`` (on ``wc``'s device), its DiT freshly
    initialised from the global torch generator; ``state``: extra state.json fields. Its ``on_start`` fits the
    latent normaliser on the data stream. No Ray: ``train_dit_loop`` runs it under Ray Train,
    experiments/gpu_check.py without."""
    optim = cfg.train_dit.optim
    dit = TextDiT(cfg.dit)
    # replicated data: every rank draws the splits of the whole global batch; per rank the loop reseeds the stream
    split_rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "dit", "splits"))
    normalizer = LatentNormalizer(cfg.dit.latent_dim).to(wc.device)

    def fit(shard, start_step: int) -> None:
        if start_step == 0:  # a resumed run reads the fitted normalizer from its checkpoint
            order = derive_seed(cfg.seed, "dit", "normalizer")
            windows = rank_feed(cfg, wc).rows(shard, optim.batch_size, order)
            normalizer.load_state_dict(fit_normalizer(vae, windows, cfg.train_dit.normalizer_windows,
                                                      cfg.dit.latent_dim, wc.device, wc.world_size,
                                                      vocab).state_dict())

    def draw_splits(batch: dict) -> None:
        # replicated: drawn for the whole global batch, independent of the worker count; per rank: this worker's rows
        batch["split"] = split_points(torch.from_numpy(batch["length"].astype("int64")), cfg, split_rng).numpy()

    def step(engine, micro, _step):
        tokens, valid = window_tokens(micro, vocab, wc.device)
        split = torch.from_numpy(micro["split"])
        latents, is_target = encode_window(vae, normalizer, tokens, split, valid)
        out = flow_matching_loss(engine, latents, is_target, cfg.train_dit.schedule, cfg.dit.cfg_dropout,
                                 valid=valid)
        return DiTStep(out.loss, split.float().mean())

    return Stage(
        "dit", "dit", dit, optim, ("loss", "context_len"), step, vocab=vocab, generators={"split": split_rng},
        prepare_batch=draw_splits, on_start=fit,
        # the VAE travels with the DiT: one self-contained export
        modules=lambda: {"vae": vae.state_dict(), "normalizer": normalizer.state_dict()},
        restore=lambda d: normalizer.load_state_dict(load_tensors(d / "normalizer.safetensors", wc.device)),
        state=state or {})


def train_dit_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (TextLDMConfig dict), run_dir, run_name, vocab,
    vae_checkpoint, and the test-only ``inject_fault`` (see ``training.parts.inject_fault``)."""
    from .config import TextLDMConfig
    cfg = from_dict(TextLDMConfig, config["experiment"])
    wc = worker_context(cfg.resources)
    seed_everything(derive_seed(cfg.seed, "dit", "torch", wc.rank))
    vae = load_frozen_vae(cfg, config["vae_checkpoint"], wc.device)
    vocab = load_vocab(config.get("vocab"), wc.device)
    vae_state = read_json(Path(config["vae_checkpoint"]) / "state.json")
    train_stage(config, cfg, wc, build_dit_stage(cfg, wc, vae, vocab, {
        "teacher_dim": vae_state.get("teacher_dim"), "vae_checkpoint": config["vae_checkpoint"]}))
