import torch

from latentlm.models.checkpoint import load_module, save_module
from latentlm.models.text_vae import TextVAE, TextVAEConfig


def tiny(**kw):
    return TextVAEConfig(vocab_size=40, latent_dim=8, hidden_dim=32, n_heads=2, encoder_layers=1, decoder_layers=1,
                         repa={"enabled": False}, **kw)


def test_tied_embeddings_share_one_parameter_and_survive_a_round_trip(tmp_path):
    torch.manual_seed(0)
    vae = TextVAE(tiny(tie_embeddings=True))
    assert vae.lm_head.weight is vae.embed.weight
    untied = TextVAE(tiny())
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in vae.parameters()) == 40 * 32
    save_module(tmp_path, "vae", vae)
    again = load_module(tmp_path, "vae", TextVAE(tiny(tie_embeddings=True)))
    assert again.lm_head.weight is again.embed.weight
    x = torch.randint(0, 40, (2, 7))
    assert torch.equal(vae.eval()(x).logits, again.eval()(x).logits)
