"""LDLM stages as Ray Train functions: the joint stage (latent encoder + diffusion + decoders, one loss)
and the optional token-decoder post-training stage on noisy latents (encoder and diffusion frozen).

The joint stage streams precomputed, normalised token-encoder hidden states next to the tokens (the
frozen LM never runs in the training loop); with scratch embeddings (``ldlm.encoder_input``) it streams the
tokens alone and has no statistics. With packed data (the default) every window is a full chunk
of the concatenated corpus, LDLM's fixed-length chunks; with per-document windows the padding is masked out
of the encoder's attention and of every loss term. The adaptive timestep sampler's statistics are summed over
workers at every refresh, so all ranks draw from the same density, and its state is checkpointed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.models.layers import masked_mean
from latentlm.models.ldlm import LDLM, PostTrainedDecoder
from latentlm.models.token_encoder import HiddenStats
from latentlm.platform.config import from_dict
from latentlm.platform.training.loop import Stage, train_stage
from latentlm.platform.training.parts import (derive_seed, load_vocab, seed_everything, stack_column,
                                              window_tokens, worker_context)

JOINT_METRICS = ("loss", "mse", "ce", "diffusion", "accuracy", "latent_norm")


def _experiment(config: dict):
    from .config import LDLMExperimentConfig
    return from_dict(LDLMExperimentConfig, config["experiment"])


def micro_inputs(micro: dict, dim: int, stats: HiddenStats | None, vocab, device):
    """(normalised hidden states or None without ``stats`` (scratch embeddings), model-vocab token ids, real-token
    mask or None) of one micro-batch."""
    ids, mask = window_tokens(micro, vocab, device)
    if stats is None:
        return None, ids, mask
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


def load_stats(path: str | None, dim: int, device) -> HiddenStats | None:
    if path is None:  # scratch embeddings: no token encoder to normalise
        return None
    stats = HiddenStats(dim)
    stats.load_state_dict(load_tensors(Path(path)))
    return stats.to(device)


def build_ldlm_stage(cfg, wc, vocab=None, stats: HiddenStats | None = None) -> Stage:
    """The joint stage of ``cfg`` (an LDLMExperimentConfig) on ``wc``'s device, its LDLM freshly initialised from the
    global torch generator; micro-batches hold ``tokens``, ``length`` and, unless scratch embeddings (``stats``
    None), ``hidden`` (flattened ``ldlm.hidden_size`` features per token). No Ray: ``train_ldlm_loop`` runs it
    under Ray Train, experiments/gpu_check.py without."""
    dim = cfg.ldlm.hidden_size
    model = LDLM(cfg.ldlm)
    sampler = cfg.ldlm.make_timestep_sampler()
    # per-rank noise, like per-sample noise
    noise_rng = torch.Generator(wc.device).manual_seed(derive_seed(cfg.seed, "ldlm", "noise", wc.rank))
    time_rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "ldlm", "timesteps", wc.rank))
    reduce = all_reduce_sum(wc.world_size)

    def step(engine, micro, global_step: int):
        hidden, ids, mask = micro_inputs(micro, dim, stats, vocab, wc.device)
        n = ids.shape[0]
        t = sampler.sample(n, time_rng) if sampler is not None else torch.rand(n, generator=time_rng)
        out = engine(hidden, ids, global_step, t.to(wc.device), mask, noise_rng)
        if sampler is not None:
            sampler.observe(out.t, out.per_sample_diffusion)
        return out

    def modules() -> dict:
        exported = {} if stats is None else {"hidden_stats": stats.state_dict()}
        if sampler is not None:
            exported["timestep_sampler"] = sampler.state_dict()
        return exported

    def restore(d: Path) -> None:
        if sampler is not None:
            sampler.load_state_dict(load_tensors(d / "timestep_sampler.safetensors"))

    return Stage(
        "ldlm", "ldlm", model, cfg.train_joint.optim, JOINT_METRICS, step, vocab=vocab,
        generators={"noise": noise_rng, "time": time_rng},
        after_step=None if sampler is None else (lambda: sampler.step(reduce)), modules=modules, restore=restore)


def train_ldlm_loop(config: dict) -> None:
    """Ray Train function. ``config``: experiment (LDLMExperimentConfig dict), run_dir, run_name, vocab,
    hidden_stats (safetensors path; None with scratch embeddings), and the test-only ``inject_fault``."""
    cfg = _experiment(config)
    wc = worker_context(cfg.resources)
    seed_everything(derive_seed(cfg.seed, "ldlm", "torch", wc.rank))
    vocab = load_vocab(config.get("vocab"), wc.device)
    stats = load_stats(config["hidden_stats"], cfg.ldlm.hidden_size, wc.device)
    train_stage(config, cfg, wc, build_ldlm_stage(cfg, wc, vocab, stats))


def load_joint_model(checkpoint: str, cfg, device, use_ema: bool = True) -> LDLM:
    """The joint stage's LDLM (EMA weights when present and asked for), frozen, in eval mode."""
    model = LDLM(cfg.ldlm)
    d = Path(checkpoint)
    weights = load_tensors(d / "ema.safetensors") if use_ema and (d / "ema.safetensors").is_file() else \
        load_tensors(d / "ldlm.safetensors")
    model.load_state_dict(weights)
    return model.to(device).eval().requires_grad_(False)


@dataclass
class PostDecoderStep:
    loss: torch.Tensor
    ce: torch.Tensor
    accuracy: torch.Tensor


def build_post_decoder_stage(cfg, wc, joint: LDLM, vocab=None, stats: HiddenStats | None = None,
                             state: dict | None = None) -> Stage:
    """The post-decoder stage of ``cfg`` over the frozen joint model ``joint`` (on ``wc``'s device), its decoder
    freshly initialised from the global torch generator; micro-batches as in ``build_ldlm_stage``; ``state``: extra
    state.json fields. No Ray: ``post_decoder_loop`` runs it under Ray Train, experiments/gpu_check.py without."""
    post, dim = cfg.train_post_decoder, cfg.ldlm.hidden_size
    sigma = cfg.ldlm.decoder_noise if post.decoder_noise is None else post.decoder_noise
    decoder = PostTrainedDecoder(cfg.ldlm, post.layers, post.source)
    noise_rng = torch.Generator(wc.device).manual_seed(derive_seed(cfg.seed, "post_decoder", "noise", wc.rank))

    def step(engine, micro, _step):
        hidden, ids, mask = micro_inputs(micro, dim, stats, vocab, wc.device)
        with torch.no_grad():
            z = joint.encode(joint.encoder_inputs(ids, hidden), mask)
            z = z + sigma * torch.randn(z.shape, generator=noise_rng, device=z.device, dtype=z.dtype)
        logits = engine(z, joint.decoder)
        token_ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")
        ce = masked_mean(token_ce, mask)
        return PostDecoderStep(ce, ce, masked_mean((logits.argmax(-1) == ids).float(), mask))

    # the decoder is exported as trained (the LDLM generator reads post_decoder.safetensors): no EMA
    return Stage("post_decoder", "post_decoder", decoder, post.optim, ("ce", "accuracy"), step, vocab=vocab,
                 generators={"noise": noise_rng}, ema=False, state=state or {})


def post_decoder_loop(config: dict) -> None:
    """Ray Train function: a fresh ``PostTrainedDecoder`` learns tokens from noisy latents of the frozen joint
    model (LDLM App. B.2). ``config``: as the joint stage plus ``joint_checkpoint``."""
    cfg = _experiment(config)
    wc = worker_context(cfg.resources)
    seed_everything(derive_seed(cfg.seed, "post_decoder", "torch", wc.rank))
    vocab = load_vocab(config.get("vocab"), wc.device)
    stats = load_stats(config["hidden_stats"], cfg.ldlm.hidden_size, wc.device)
    joint = load_joint_model(config["joint_checkpoint"], cfg, wc.device, use_ema=cfg.eval.use_ema)
    train_stage(config, cfg, wc, build_post_decoder_stage(cfg, wc, joint, vocab, stats,
                                                          {"joint_checkpoint": config["joint_checkpoint"]}))
