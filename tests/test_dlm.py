"""The Cola DLM bundle: joint loss, VAE strategies, conditional generation."""
from __future__ import annotations

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.models.dlm import ColaDLM, ColaDLMConfig


def config(**kw):
    base = dict(vae=dict(vocab_size=20, latent_dim=6, hidden_dim=32, n_heads=2, encoder_layers=1, decoder_layers=1),
                dit=dict(latent_dim=6, hidden_dim=32, depth=2, n_heads=2, block_size=4))
    base.update(kw)
    return ColaDLMConfig(**base)


def test_joint_loss_trains_vae_and_dit_and_the_reference_holds_the_encoder():
    torch.manual_seed(0)
    model = ColaDLM(config())
    reference = ColaDLM(config()).vae.eval().requires_grad_(False)
    tokens = torch.randint(0, 20, (4, 12))
    out = model.joint_loss(tokens, reference=reference)
    out.loss.backward()
    assert model.vae.to_mean.weight.grad.abs().sum() > 0 and model.dit.out.weight.grad is not None
    assert out.ref > 0 and torch.isfinite(out.logsnr)
    # the flow-matching gradient alone reaches the encoder (joint training shapes the latent space)
    model.zero_grad()
    from latentlm.models.block_dit import block_flow_matching_loss
    vae_out = model.vae(tokens)
    block_flow_matching_loss(model.dit, vae_out.z, model.config.schedule).backward()
    assert model.vae.to_mean.weight.grad.abs().sum() > 0


def test_joint_training_lowers_both_losses():
    torch.manual_seed(0)
    model = ColaDLM(config())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 20, (32, 12), generator=gen)
    history = []
    for _ in range(120):
        out = model.joint_loss(data[torch.randint(0, 32, (8,), generator=gen)], generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append((out.recon.item(), out.fm.item()))
    for k in range(2):
        assert sum(h[k] for h in history[-10:]) < 0.8 * sum(h[k] for h in history[:10])


@pytest.mark.parametrize("prompt_len,patch", [(6, 1), (0, 1), (4, 2)])
def test_generate_is_conditional_deterministic_and_cached_equals_uncached(prompt_len, patch):
    torch.manual_seed(0)
    model = ColaDLM(config(vae=dict(vocab_size=20, latent_dim=6, hidden_dim=32, n_heads=2, encoder_layers=1,
                                    decoder_layers=1, patch_size=patch))).eval()
    prompt = torch.randint(0, 20, (2, prompt_len))
    a = model.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    c = model.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1),
                       use_cache=False)
    assert a.shape == (2, 9) and torch.equal(a, b) and torch.equal(a, c)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="dlm.dit.latent_dim"):
        config(dit=dict(latent_dim=5, hidden_dim=32, depth=1, n_heads=2))
    with pytest.raises(ConfigError, match="dlm.vae_strategy"):
        config(vae_strategy="warm")


@pytest.mark.parametrize("attention", ["causal", "block_causal"])
def test_generation_streams_the_decoder_and_matches_one_full_decode(attention):
    """With a causal / block-causal VAE, generate() decodes each block as it is committed (decoder KV cache);
    the tokens equal one decoder pass over [prompt ; generated] latents."""
    from latentlm.models.block_dit import sample_blocks
    torch.manual_seed(0)
    model = ColaDLM(config(vae=dict(vocab_size=20, latent_dim=6, hidden_dim=32, n_heads=2, encoder_layers=1,
                                    decoder_layers=2, attention=attention, block_size=4))).double().eval()
    prompt = torch.randint(0, 20, (2, 6))
    got = model.generate(prompt, 9, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    prefix = model.vae.posterior(prompt)[0]
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 9, 6, generator=gen).double()
    latents = sample_blocks(model.dit, prefix, noise, 3, 2.0, generator=gen)  # the repaint noise: same stream
    want = model.vae.decode_logits(torch.cat([prefix, latents], 1), 15)[:, 6:].argmax(-1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_progression_reports_each_step_in_order_and_ends_at_the_output(attention):
    """The denoising progression: ids after Euler step 1 .. S of every block, the last call being the output
    itself; recording it does not change what is sampled."""
    torch.manual_seed(0)
    model = ColaDLM(config(vae=dict(vocab_size=20, latent_dim=6, hidden_dim=32, n_heads=2, encoder_layers=1,
                                    decoder_layers=1, attention=attention))).eval()
    prompt = torch.randint(0, 20, (2, 6))  # 6 latents, blocks of 4: the first generated block repaints two
    seen = []
    got = model.generate(prompt, 9, steps=4, cfg_scale=2.0, generator=torch.Generator().manual_seed(1),
                         on_step=lambda i, ids: seen.append((i, ids.clone())))
    plain = model.generate(prompt, 9, steps=4, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, plain)
    assert [i for i, _ in seen] == [1, 2, 3, 4] and all(ids.shape == (2, 9) for _, ids in seen)
    assert torch.equal(seen[-1][1], got)
    assert model.generate(prompt, 0, steps=4, on_step=lambda i, ids: None).shape == (2, 0)  # nothing to generate


def test_joint_loss_ignores_what_the_padding_holds():
    """Per-document windows: with a causal VAE and one-latent blocks, no real latent sees a later position, so
    every loss term must be unchanged when only the padding tokens change (they count in no term)."""
    torch.manual_seed(0)
    model = ColaDLM(config(vae=dict(vocab_size=20, latent_dim=6, hidden_dim=32, n_heads=2, encoder_layers=1,
                                    decoder_layers=1, attention="causal", mask_weight=0.5),
                           dit=dict(latent_dim=6, hidden_dim=32, depth=2, n_heads=2, block_size=1))).eval()
    tokens = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.arange(8)[None] < torch.tensor([8, 5, 2])[:, None]
    other = torch.where(mask, tokens, (tokens + 7) % 20)
    a = model.joint_loss(tokens, mask, model.vae, torch.Generator().manual_seed(3))
    b = model.joint_loss(other, mask, model.vae, torch.Generator().manual_seed(3))
    for name in ("loss", "fm", "recon", "kl", "mask", "ref", "accuracy"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), msg=name)
    unmasked = model.joint_loss(other, None, model.vae, torch.Generator().manual_seed(3))
    assert not torch.allclose(unmasked.recon, b.recon)


def test_interval_strategy_alternates_exactly_k_joint_and_k_frozen_steps():
    """Interval with k = 3: the VAE's weights move at optimiser steps 1-3, 7-9, ... and stay bit-identical at
    steps 4-6, 10-12 (learning rate exactly 0), while the DiT moves at every step."""
    from types import SimpleNamespace

    from latentlm.platform.methods.dlm.train import vae_lr_multiplier
    from latentlm.platform.training.parts import make_optimizer
    torch.manual_seed(0)
    model = ColaDLM(config(vae_strategy="interval", interval_steps=3, vae_lr_ratio=0.5))
    vae_ids = {id(p) for p in model.vae.parameters()}
    factor = vae_lr_multiplier(model.config)
    optim = SimpleNamespace(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), warmup_steps=0, steps=12, min_lr_ratio=1.0)
    opt, schedule = make_optimizer(model.parameters(), optim, lambda p: factor if id(p) in vae_ids else 1.0)
    tokens = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(1))
    moved = []
    for step in range(1, 13):
        vae_before = [p.detach().clone() for p in model.vae.parameters()]
        dit_before = model.dit.out.weight.detach().clone()
        model.joint_loss(tokens, generator=torch.Generator().manual_seed(step)).loss.backward()
        opt.step()
        schedule.step()
        opt.zero_grad()
        vae_moved = [not torch.equal(a, p) for a, p in zip(vae_before, model.vae.parameters())]
        assert len(set(vae_moved)) == 1  # all VAE weights move together, or none does
        assert not torch.equal(dit_before, model.dit.out.weight)
        moved.append(vae_moved[0])
    assert moved == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    assert vae_lr_multiplier(config(vae_strategy="joint", vae_lr_ratio=0.01)) == 0.01
    with pytest.raises(ConfigError, match="dlm.interval_steps"):
        config(vae_strategy="interval", interval_steps=0)


@pytest.mark.parametrize("mode,expected", [
    ("left_pad", [9, 9, 9, 1, 2, 3, 4, 5]),      # to a block multiple, EOS before the prompt
    ("right_pad", [1, 2, 3, 4, 5, 9, 9, 9]),     # to a block multiple, the response starts after the padding
    ("clean", [9, 1, 2, 3, 4, 5]),               # to a patch multiple only: the tail stays inside a block
    ("partial_repaint", [9, 1, 2, 3, 4, 5])])
def test_generator_pads_prompts_as_the_first_block_mode_says(mode, expected):
    from latentlm.platform.methods.dlm.config import build_dlm_config
    from latentlm.platform.methods.dlm.generator import ColaDLMGenerator
    cfg = build_dlm_config("tiny", {"dlm": {"vae": {"patch_size": 2, "block_size": 2}, "dit": {"block_size": 2}},
                                    "sampler": {"first_block": mode}})
    generator = ColaDLMGenerator(cfg, torch.nn.Identity(), eos_id=9)
    assert generator.pad_prompt(torch.tensor([[1, 2, 3, 4, 5]])).tolist() == [expected]
