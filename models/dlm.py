"""Cola DLM: a Text VAE, a block-causal DiT prior over its latents, and conditional decoding.

    stage 1   VAE alone: CE + beta KL + masking loss
    stage 2   joint: VAE loss + flow matching of the DiT on the VAE's posterior samples, with the gradient
              reaching the encoder through the noisy blocks and targets; the VAE's learning rate is
              ``vae_lr_ratio`` x the DiT's (``vae_strategy``: joint / frozen / scratch / interval), and a
              reference regulariser (MSE to the frozen stage-1 encoder's means, ``ref_weight``) holds the latent
              space in place; random-length clean block prefixes (``clean_prefix_prob``) train the conditioning
              that the first generated block uses.
    inference prompt -> clean latents (posterior means) -> block-by-block generation with a KV cache
              (``block_dit.sample_blocks``; ``first_block`` for a prompt that ends inside a block) -> the causal
              VAE decoder over [prompt ; generated] latents.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .block_dit import BlockCausalDiT, BlockDiTConfig, block_flow_matching_loss, check_first_block, sample_blocks
from .config import check_fields, require
from .dlm_vae import DLMTextVAE, DLMVAEConfig, latent_mask
from .flow import TimestepSchedule
from .layers import masked_mean


@dataclass
class ColaDLMConfig:
    vae: DLMVAEConfig = field(default_factory=DLMVAEConfig)
    dit: BlockDiTConfig = field(default_factory=BlockDiTConfig)
    # the "timestep shift": logit-normal loc/scale of the per-block flow-matching times (t = 1 is data here,
    # so a larger loc means *less* noise; the paper's loc is on its noise-at-1 axis: loc_paper = -loc)
    schedule: TimestepSchedule = field(default_factory=lambda: TimestepSchedule("logit_normal", 0.0, 1.0))
    # joint: stage 1, then VAE + DiT | frozen: stage 1, then the DiT only | scratch: no stage 1, everything from
    # random weights | interval: stage 1, then cycles of interval_steps joint steps and interval_steps frozen-VAE steps
    vae_strategy: Literal["joint", "frozen", "scratch", "interval"] = "joint"
    vae_lr_ratio: float = 1.0     # joint / interval: VAE LR = ratio x DiT LR (the paper compares x1 and x0.01)
    interval_steps: int = 50      # interval: k (the paper's value is lost; 50 gives 4 cycles in the tiny preset)
    ref_weight: float = 1.0       # stage-2 reference-encoder regulariser (0: off)
    fm_weight: float = 1.0
    # per-block probability of a random-length clean prefix in training ([COMM]'s default 0.05): what makes
    # clean-condition first blocks (and the other first-block modes) consistent with training
    clean_prefix_prob: float = 0.05

    def __post_init__(self):
        check_fields(self, "dlm")
        require(self.dit.latent_dim == self.vae.latent_dim, "dlm.dit.latent_dim",
                f"dlm.vae.latent_dim ({self.vae.latent_dim})", self.dit.latent_dim)
        require(self.vae_lr_ratio >= 0, "dlm.vae_lr_ratio", ">= 0", self.vae_lr_ratio)
        require(self.ref_weight >= 0 and self.fm_weight > 0, "dlm.ref_weight/fm_weight", ">= 0 / > 0",
                (self.ref_weight, self.fm_weight))
        require(isinstance(self.interval_steps, int) and self.interval_steps >= 1, "dlm.interval_steps",
                "an integer >= 1", self.interval_steps)
        require(0 <= self.clean_prefix_prob <= 1, "dlm.clean_prefix_prob", "in [0, 1]", self.clean_prefix_prob)


@dataclass
class JointOutput:
    loss: torch.Tensor
    fm: torch.Tensor
    vae: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    mask: torch.Tensor
    ref: torch.Tensor
    accuracy: torch.Tensor
    logsnr: torch.Tensor


class ColaDLM(nn.Module):
    def __init__(self, config: ColaDLMConfig):
        super().__init__()
        self.config = config
        self.vae = DLMTextVAE(config.vae)
        self.dit = BlockCausalDiT(config.dit)

    def joint_loss(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                   reference: DLMTextVAE | None = None, generator: torch.Generator | None = None) -> JointOutput:
        """Stage 2: VAE loss + per-block flow matching on the posterior samples (+ reference regulariser)."""
        c = self.config
        out = self.vae(tokens, mask, generator)
        real = latent_mask(mask, c.vae.patch_size)  # latents of real tokens: padding counts in no loss
        fm = block_flow_matching_loss(self.dit, out.z, c.schedule, generator, real, c.clean_prefix_prob)
        ref = torch.zeros((), device=tokens.device)
        if reference is not None and c.ref_weight > 0:
            with torch.no_grad():
                ref_mean, _ = reference.posterior(tokens)
            ref = masked_mean((out.mean.float() - ref_mean.float()).pow(2).mean(-1), real)
        loss = c.fm_weight * fm + out.loss + c.ref_weight * ref
        return JointOutput(loss, fm.detach(), out.loss.detach(), out.recon, out.kl, out.mask, ref.detach(),
                           out.accuracy, out.logsnr)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_tokens: int, steps: int = 16, cfg_scale: float = 7.0,
                 generator: torch.Generator | None = None, first_block: str = "clean",
                 use_cache: bool = True, on_step=None, repaint_repeats: int = 1,
                 repaint_fraction: float = 1.0) -> torch.Tensor:
        """prompt (B, P) ids (P a multiple of the patch size; a block multiple under the padding modes, which
        pad at the token level, see ``ColaDLMGenerator``) -> (B, new_tokens) ids.

        ``on_step(i, ids)``, for i = 1 .. steps after generation, receives the continuation decoded from every
        block as it stood after its own i-th Euler step (block-wise sampling has no global step; this is
        what the sample looked like "at step i" of each block's denoising); the last call gets the output."""
        check_first_block(first_block, repaint_repeats, repaint_fraction)
        p = self.config.vae.patch_size
        require(prompt.shape[1] % p == 0, "prompt length", f"a multiple of dlm.vae.patch_size ({p})",
                prompt.shape[1])
        prefix = self.vae.posterior(prompt)[0] if prompt.shape[1] else None
        n_latents = -(-new_tokens // p)
        # drawn on the generator's device (the continuation protocol passes a CUDA generator on GPU), so CPU
        # draws are unchanged
        noise = torch.randn(prompt.shape[0], n_latents, self.config.vae.latent_dim, generator=generator,
                            device=generator.device if generator is not None else "cpu")
        noise = noise.to(prompt.device)
        total = prompt.shape[1] + new_tokens
        snapshots: dict[int, list[torch.Tensor]] = {}  # step -> each block's new latents after that step
        record = None if on_step is None else (lambda i, block: snapshots.setdefault(i, []).append(block))
        sampling = dict(first_block=first_block, repaint_repeats=repaint_repeats, repaint_fraction=repaint_fraction,
                        generator=generator, on_step=record)
        if self.config.vae.attention == "bidirectional":  # the decoder needs the whole sequence at once
            latents = sample_blocks(self.dit, prefix, noise, steps, cfg_scale, use_cache, **sampling)
            logits = self._decode_all(prefix, latents, total)  # conditional decoding
        else:  # stream: decode each block as it is committed, with a KV cache over the decoded blocks
            decoder = self.vae.streaming_decoder()
            pieces = [] if prefix is None else [decoder.feed(prefix)]
            sample_blocks(self.dit, prefix, noise, steps, cfg_scale, use_cache,
                          on_commit=lambda block: pieces.append(decoder.feed(block)), **sampling)
            logits = torch.cat([*pieces, decoder.flush()], 1)[:, :total]
        ids = logits[:, prompt.shape[1]:].argmax(-1)
        if on_step is not None:
            for i in sorted(set(snapshots) - {steps}):  # none when nothing is generated
                partial = self._decode_all(prefix, torch.cat(snapshots[i], 1), total)
                on_step(i, partial[:, prompt.shape[1]:].argmax(-1))
            on_step(steps, ids)
        return ids

    def _decode_all(self, prefix: torch.Tensor | None, latents: torch.Tensor, total: int) -> torch.Tensor:
        """Conditional decoding of [prompt ; generated] latents in one decoder pass."""
        return self.vae.decode_logits(latents if prefix is None else torch.cat([prefix, latents], 1), total)
