"""Cola DLM's Text VAE: logSNR control, patching of odd lengths, attention kinds, masking loss."""
from __future__ import annotations

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.models.dlm_vae import DLMTextVAE, DLMVAEConfig, attention_mask


def vae(**kw):
    base = dict(vocab_size=12, latent_dim=8, hidden_dim=32, n_heads=2, encoder_layers=1, decoder_layers=1)
    base.update(kw)
    torch.manual_seed(0)
    return DLMTextVAE(DLMVAEConfig(**base))


def train(model, steps, length=7, lr=3e-3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    out = None
    for _ in range(steps):
        tokens = torch.randint(0, 12, (32, length), generator=gen)
        out = model(tokens, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return out


def test_learnable_logsnr_moves_and_fixed_stays_put():
    fixed, learnable = vae(logsnr_mode="fixed", logsnr=1.5), vae(logsnr_mode="learnable", logsnr=1.5)
    assert "logsnr" not in dict(fixed.named_parameters()) and "logsnr" in dict(learnable.named_parameters())
    out_fixed = train(fixed, 40)
    out_learn = train(learnable, 40)
    assert float(fixed.logsnr) == 1.5
    assert abs(out_fixed.logsnr.item() - 1.5) < 1e-4  # measured == enforced
    value = learnable.logsnr.item()
    assert abs(value - 1.5) > 1e-2
    assert abs(out_learn.logsnr.item() - value) < 1e-2  # measured before the last update


def test_predicted_logvar_mode_measures_logsnr():
    out = train(vae(logsnr_mode="predicted"), 3)
    assert torch.isfinite(out.logsnr)


@pytest.mark.parametrize("length", [7, 8, 1])
def test_patch_size_two_round_trips_odd_lengths(length):
    model = vae(patch_size=2, attention="bidirectional", latent_dim=16)
    tokens = torch.randint(0, 12, (3, length))
    mean, _ = model.posterior(tokens)
    assert mean.shape == (3, -(-length // 2), 16)
    assert model.decode_logits(mean, length).shape == (3, length, 12)


def test_patch_size_two_learns_to_reconstruct_an_odd_length():
    model = vae(patch_size=2, attention="bidirectional", latent_dim=16, kl_weight=0.0, mask_weight=0.0,
                logsnr_mode="fixed", logsnr=6.0)
    train(model, 300, length=7, lr=5e-3)
    tokens = torch.randint(0, 12, (64, 7), generator=torch.Generator().manual_seed(99))
    assert (model.reconstruct(tokens) == tokens).float().mean() > 0.95


def test_attention_kinds():
    assert attention_mask("bidirectional", 4, 2) is None
    causal = attention_mask("causal", 4, 2)
    assert causal.tolist() == [[True, False, False, False], [True, True, False, False],
                               [True, True, True, False], [True, True, True, True]]
    block = attention_mask("block_causal", 5, 2)
    assert block[0, 1] and not block[1, 2] and block[3, 2] and block[4, 3] and not block[3, 4]
    # a causal encoder: latent i depends on tokens <= i only
    model = vae(attention="causal").eval()
    tokens = torch.randint(0, 12, (1, 6))
    changed = tokens.clone()
    changed[0, 4] = (changed[0, 4] + 1) % 12
    a, _ = model.posterior(tokens)
    b, _ = model.posterior(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_masking_loss_is_on_only_when_weighted():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (8, 10), generator=gen)
    assert vae(mask_ratio=0.3)(tokens, generator=gen).mask > 0
    assert vae(mask_weight=0.0)(tokens, generator=gen).mask == 0


def test_config_errors_name_the_field():
    for kw, field in ((dict(patch_size=3), "dlm.vae.patch_size"), (dict(attention="sparse"), "dlm.vae.attention"),
                      (dict(logsnr_mode="auto"), "dlm.vae.logsnr_mode"), (dict(mask_ratio=1.5), "dlm.vae.mask_ratio")):
        with pytest.raises(ConfigError, match=field):
            DLMVAEConfig(**kw)


@pytest.mark.parametrize("attention,patch", [("causal", 1), ("block_causal", 1), ("block_causal", 2)])
def test_streaming_decoder_matches_the_full_decode(attention, patch):
    """Decoding committed blocks one by one with the decoder's KV cache gives the full decode's logits, however
    the latents arrive (pieces smaller and larger than a block, a ragged tail)."""
    model = vae(attention=attention, block_size=4, patch_size=patch, decoder_layers=2).double().eval()
    z = torch.randn(3, 13, 8, dtype=torch.float64)
    want = model.decode_logits(z, 13 * patch)
    stream = model.streaming_decoder()
    pieces, start = [], 0
    for size in (3, 1, 6, 3):  # 13 latents in uneven pieces
        before = stream.position
        got = stream.feed(z[:, start:start + size])
        start += size
        assert stream.position % 4 == 0 and got.shape[1] == patch * (stream.position - before)  # whole blocks
        pieces.append(got)
    pieces.append(stream.flush())
    torch.testing.assert_close(torch.cat(pieces, 1), want, rtol=0, atol=1e-10)
    with pytest.raises(ConfigError, match="dlm.vae.attention"):
        vae(attention="bidirectional").streaming_decoder()


@pytest.mark.parametrize("patch", [1, 2])
def test_padding_counts_in_no_vae_loss_term(patch):
    """Hand-computed: recon CE and accuracy average over real tokens, KL over the latents that hold a real
    token (with patches, a latent of which any token is real)."""
    model = vae(patch_size=patch, mask_weight=0.0).eval()
    tokens = torch.randint(0, 12, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = model(tokens, mask, torch.Generator().manual_seed(5))
    mean, logvar = model.posterior(tokens)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    logits = model.decode_logits(mean + (0.5 * logvar).exp() * eps, 7)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
    torch.testing.assert_close(out.recon, ce[mask].mean())
    torch.testing.assert_close(out.accuracy, (logits.argmax(-1) == tokens)[mask].float().mean())
    real_latents = {1: mask, 2: torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)}[patch]
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(out.kl, kl[real_latents].mean())
