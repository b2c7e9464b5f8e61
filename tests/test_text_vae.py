"""TextVAE: shapes, key padding, KL / REPA losses against hand values, config validation, and that a tiny
VAE can actually learn to reconstruct a fixed batch."""
from __future__ import annotations

import math

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.models.repa import REPAConfig, REPAProjector, repa_loss
from latentlm.models.text_vae import TextVAE, TextVAEConfig, gaussian_kl, masked_mean

VOCAB, LATENT, HIDDEN = 50, 16, 64

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**overrides) -> TextVAEConfig:
    repa = overrides.pop("repa", REPAConfig(enabled=False))
    kwargs = dict(vocab_size=VOCAB, latent_dim=LATENT, hidden_dim=HIDDEN, n_heads=4, encoder_layers=2,
                  decoder_layers=2, max_seq_len=32, repa=repa)
    kwargs.update(overrides)
    return TextVAEConfig(**kwargs)


def tiny_vae(seed: int = 0, teacher_dim: int | None = None, **overrides) -> TextVAE:
    torch.manual_seed(seed)
    return TextVAE(tiny_config(**overrides), teacher_dim=teacher_dim).eval()


def random_tokens(b: int = 3, t: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (b, t), generator=g)


# -- shapes and padding ----------------------------------------------------------------------------

def test_encode_decode_shapes():
    vae = tiny_vae()
    tokens = random_tokens(3, 10)
    mu, logvar, align = vae.encode(tokens)
    assert mu.shape == (3, 10, LATENT) and logvar.shape == (3, 10, LATENT)
    assert align.shape == (3, 10, HIDDEN)  # default align_at="output"
    logits = vae.decode(mu)
    assert logits.shape == (3, 10, VOCAB)
    assert vae.reconstruct(tokens).shape == (3, 10)
    assert vae.reconstruct(tokens).dtype == torch.long


def test_key_padding_isolates_valid_positions():
    vae = tiny_vae()
    tokens = random_tokens(2, 12)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[0, 7:] = False
    valid[1, 4:] = False
    other = tokens.clone()
    g = torch.Generator().manual_seed(5)
    other[~valid] = (tokens[~valid] + torch.randint(1, VOCAB, tokens[~valid].shape, generator=g)) % VOCAB
    assert not torch.equal(other, tokens)

    mu_a, lv_a, h_a = vae.encode(tokens, valid)
    mu_b, lv_b, h_b = vae.encode(other, valid)
    torch.testing.assert_close(mu_a[valid], mu_b[valid], atol=1e-6, rtol=0)
    torch.testing.assert_close(lv_a[valid], lv_b[valid], atol=1e-6, rtol=0)
    torch.testing.assert_close(h_a[valid], h_b[valid], atol=1e-6, rtol=0)
    # padded positions are really different (so the comparison above is not vacuous)
    assert not torch.allclose(mu_a[~valid], mu_b[~valid])

    # the decoder's key padding too: garbage latents at padded positions do not leak into valid ones
    z_b = mu_a.clone()
    z_b[~valid] = torch.randn(int((~valid).sum()), LATENT, generator=g) * 5
    torch.testing.assert_close(vae.decode(mu_a, valid)[valid], vae.decode(z_b, valid)[valid], atol=1e-5, rtol=0)
    # ... and without the mask they would leak (the mask is doing the work)
    assert not torch.allclose(vae.decode(mu_a)[valid], vae.decode(z_b)[valid], atol=1e-5)

    # the loss only counts valid positions
    out_a, out_b = vae(tokens, valid), vae(other, valid)
    torch.testing.assert_close(out_a.recon, out_b.recon, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_a.kl, out_b.kl, atol=1e-6, rtol=0)


# -- KL ----------------------------------------------------------------------------------------------

def test_gaussian_kl_hand_values():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    expected = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - math.log(2.0))
    assert gaussian_kl(mu, logvar).item() == pytest.approx(expected, abs=1e-6)
    # standard normal posterior -> 0
    assert gaussian_kl(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0


def test_gaussian_kl_masked_mean():
    # position KLs: p0 = 0.5 * (4) = 2 (mu=2), p1 = 0.5*(0+e-1-1) (logvar=1), p2 = 0 (standard)
    mu = torch.tensor([[[2.0], [0.0], [0.0]]])
    logvar = torch.tensor([[[0.0], [1.0], [0.0]]])
    per_pos = [2.0, 0.5 * (math.e - 2.0), 0.0]
    assert gaussian_kl(mu, logvar).item() == pytest.approx(sum(per_pos) / 3, abs=1e-6)
    mask = torch.tensor([[True, True, False]])
    assert gaussian_kl(mu, logvar, mask).item() == pytest.approx((per_pos[0] + per_pos[1]) / 2, abs=1e-6)
    mask = torch.tensor([[False, True, False]])
    assert gaussian_kl(mu, logvar, mask).item() == pytest.approx(per_pos[1], abs=1e-6)
    # masked_mean with an all-False mask does not divide by zero
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


# -- REPA ------------------------------------------------------------------------------------------

def test_repa_loss_hand_values():
    a = torch.tensor([[[1.0, 2.0, 0.0]]])
    assert repa_loss(a, 3 * a).item() == pytest.approx(-1.0, abs=1e-6)       # same direction (scale-free)
    assert repa_loss(a, torch.tensor([[[-2.0, 1.0, 0.0]]])).item() == pytest.approx(0.0, abs=1e-6)
    assert repa_loss(a, -0.5 * a).item() == pytest.approx(1.0, abs=1e-6)     # opposite

    projected = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]]])           # cos = 1, 0, -1
    assert repa_loss(projected, teacher).item() == pytest.approx(0.0, abs=1e-6)  # -(1+0-1)/3
    mask = torch.tensor([[True, True, False]])
    assert repa_loss(projected, teacher, mask).item() == pytest.approx(-0.5, abs=1e-6)
    mask = torch.tensor([[True, False, False]])
    assert repa_loss(projected, teacher, mask).item() == pytest.approx(-1.0, abs=1e-6)
    # masked positions are ignored whatever they hold
    teacher2 = teacher.clone()
    teacher2[0, 1:] = torch.tensor([[7.0, -3.0], [0.5, 0.5]])
    assert repa_loss(projected, teacher2, mask).item() == pytest.approx(-1.0, abs=1e-6)


def test_repa_teacher_side_gets_no_gradient():
    torch.manual_seed(0)
    projector = REPAProjector(8, 6, 16, 3)
    h = torch.randn(2, 5, 8, requires_grad=True)
    teacher = torch.randn(2, 5, 6, requires_grad=True)
    loss = repa_loss(projector(h), teacher)
    loss.backward()
    assert teacher.grad is None
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())


def test_repa_projector_structure():
    projector = REPAProjector(8, 6, 16, 3)
    linears = [m for m in projector.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 6)]
    assert isinstance(projector.net[-1], torch.nn.Linear)  # no activation after the last layer


def test_default_repa_projector_is_one_linear_from_vae_hidden_to_teacher_hidden():
    """TextLDM's projection is linear; the image REPA MLP stays available as ``projector_depth: 3``."""
    vae = tiny_vae(teacher_dim=24, repa=REPAConfig(enabled=True))
    layers = [m for m in vae.projector.modules() if not list(m.children())]
    assert len(layers) == 1 and isinstance(layers[0], torch.nn.Linear)
    assert (layers[0].in_features, layers[0].out_features) == (HIDDEN, 24)
    mlp = tiny_vae(teacher_dim=24, repa=REPAConfig(enabled=True, projector_depth=3, projector_hidden=32))
    assert [type(m).__name__ for m in mlp.projector.net] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert [m.out_features for m in mlp.projector.net if isinstance(m, torch.nn.Linear)] == [32, 32, 24]


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_repa_config_refuses_a_projector_depth_that_is_not_a_positive_integer(depth):
    with pytest.raises(ConfigError, match=r"^vae\.repa\.projector_depth: expected an integer >= 1"):
        REPAConfig(projector_depth=depth)


def test_repa_off_builds_no_projector_and_loss_is_recon_plus_kl():
    vae = tiny_vae(kl_weight=0.37)
    assert vae.projector is None
    tokens = random_tokens()
    out = vae(tokens, teacher_features=torch.randn(3, 10, 7))  # teacher features are ignored when off
    assert out.repa.item() == 0.0
    assert torch.equal(out.loss, out.recon + 0.37 * out.kl)
    assert out.kl.item() > 0  # not trivially zero
    # eval mode uses the posterior mean: the forward logits are decode(mu)
    mu, _, _ = vae.encode(tokens)
    torch.testing.assert_close(out.logits, vae.decode(mu))


def test_repa_on_requires_teacher_dim_and_features():
    cfg = tiny_config(repa=REPAConfig(enabled=True, projector_hidden=32))
    with pytest.raises(ConfigError, match="teacher_dim"):
        TextVAE(cfg)
    vae = TextVAE(cfg, teacher_dim=24).eval()
    assert vae.projector is not None
    tokens = random_tokens()
    with pytest.raises(ValueError, match="teacher_features"):
        vae(tokens)
    teacher = torch.randn(3, 10, 24)
    out = vae(tokens, teacher_features=teacher)
    assert -1.0 <= out.repa.item() <= 1.0
    expected = out.recon + vae.config.kl_weight * out.kl + vae.config.repa.weight * out.repa
    torch.testing.assert_close(out.loss, expected)
    # REPA loss uses align_mask when given, else valid
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[:, 6:] = False
    align_mask = valid.clone()
    align_mask[:, :3] = False
    _, _, align = vae.encode(tokens, valid)
    manual = repa_loss(vae.projector(align), teacher, align_mask)
    torch.testing.assert_close(vae(tokens, valid, teacher, align_mask).repa, manual)
    torch.testing.assert_close(vae(tokens, valid, teacher).repa, repa_loss(vae.projector(align), teacher, valid))


def _capture_inputs(module: torch.nn.Module, store: list):
    return module.register_forward_hook(lambda m, args, out: store.append((args[0].detach(), out.detach())))


def test_repa_align_at_encoder_block():
    vae = tiny_vae(teacher_dim=12, encoder_layers=3,
                   repa=REPAConfig(enabled=True, align_at=2, projector_hidden=32))
    assert vae.projector.net[0].in_features == HIDDEN
    block_io, proj_io = [], []
    _capture_inputs(vae.encoder[1], block_io)  # block index 2 (1-based) == encoder[1]
    _capture_inputs(vae.projector, proj_io)
    tokens = random_tokens()
    vae(tokens, teacher_features=torch.randn(3, 10, 12))
    assert len(block_io) == 1 and len(proj_io) == 1
    assert torch.equal(proj_io[0][0], block_io[0][1])  # projector input == output of encoder block 2
    _, _, align = vae.encode(tokens)
    assert torch.equal(align, block_io[0][1])

    # the REPA gradient reaches blocks 1..2 but not block 3 (which is after the alignment point)
    vae.train()
    vae.zero_grad()
    vae(tokens, teacher_features=torch.randn(3, 10, 12)).repa.backward()
    grad = lambda m: sum(0.0 if p.grad is None else p.grad.abs().sum().item() for p in m.parameters())
    assert grad(vae.encoder[0]) > 0 and grad(vae.encoder[1]) > 0
    assert grad(vae.encoder[2]) == 0.0
    assert grad(vae.decoder) == 0.0


def test_repa_align_at_latent_and_output():
    vae = tiny_vae(teacher_dim=12, repa=REPAConfig(enabled=True, align_at="latent", projector_hidden=32))
    assert vae.projector.net[0].in_features == LATENT
    tokens = random_tokens()
    mu, _, align = vae.encode(tokens)
    assert torch.equal(align, mu)

    vae = tiny_vae(teacher_dim=12, repa=REPAConfig(enabled=True, align_at="output", projector_hidden=32))
    assert vae.projector.net[0].in_features == HIDDEN
    norm_io = []
    _capture_inputs(vae.encoder_norm, norm_io)
    _, _, align = vae.encode(tokens)
    assert torch.equal(align, norm_io[0][1])  # normalised encoder output


# -- config validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("field, overrides", [
    ("vae.latent_dim", dict(latent_dim=0)),
    ("vae.latent_dim", dict(latent_dim=-4)),
    ("vae.vocab_size", dict(vocab_size=0)),
    ("vae.encoder_layers", dict(encoder_layers=0)),
    ("vae.hidden_dim", dict(hidden_dim=66, n_heads=4)),   # not divisible by heads
    ("vae.hidden_dim", dict(hidden_dim=60, n_heads=4)),   # head dim 15 is odd (RoPE needs even)
    ("vae.kl_weight", dict(kl_weight=-1e-3)),
])
def test_vae_config_validation(field, overrides):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        tiny_config(**overrides)


@pytest.mark.parametrize("align_at", ["middle", "", True, 1.5, None])
def test_repa_config_rejects_bad_align_at(align_at):
    with pytest.raises(ConfigError, match=r"vae\.repa\.align_at"):
        REPAConfig(align_at=align_at)


@pytest.mark.parametrize("align_at", [0, -1, 3])
def test_vae_config_rejects_out_of_range_block(align_at):
    with pytest.raises(ConfigError, match=r"vae\.repa\.align_at"):
        tiny_config(encoder_layers=2, repa=REPAConfig(enabled=True, align_at=align_at))


def test_vae_config_accepts_repa_dict_and_valid_blocks():
    cfg = tiny_config(encoder_layers=2, repa={"enabled": True, "align_at": 2})
    assert isinstance(cfg.repa, REPAConfig) and cfg.repa.align_at == 2
    with pytest.raises(ConfigError, match=r"vae\.repa\.projector_depth"):
        tiny_config(repa={"projector_depth": 0})
    with pytest.raises(ConfigError, match=r"vae\.repa\.weight"):
        REPAConfig(weight=-0.1)
    assert issubclass(ConfigError, ValueError)


# -- learning -----------------------------------------------------------------------------------------

def test_tiny_vae_learns_to_reconstruct_a_fixed_batch():
    torch.manual_seed(0)
    vae = TextVAE(tiny_config(encoder_layers=1, decoder_layers=1))
    tokens = random_tokens(8, 16, seed=3)
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3, weight_decay=0.0)

    def accuracy():
        vae.eval()
        acc = (vae.reconstruct(tokens) == tokens).float().mean().item()
        vae.train()
        return acc

    initial = accuracy()
    assert initial < 0.2
    acc, first_loss = initial, None
    for step in range(400):
        out = vae(tokens)
        first_loss = out.loss.item() if first_loss is None else first_loss
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 25 == 24:
            acc = accuracy()
            if acc > 0.95:
                break
    assert acc > 0.95, f"reconstruction accuracy {acc:.3f} after {step + 1} steps"
    assert out.loss.item() < 0.5 * first_loss
    vae.eval()
    assert vae(tokens).accuracy.item() == pytest.approx(acc, abs=1e-6)
