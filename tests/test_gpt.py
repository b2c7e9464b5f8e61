"""The GPT baseline model: KV-cached decoding equals recomputation, causality, learning, parameter matching."""
from __future__ import annotations

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.models.gpt import GPT, GPTConfig, count_params, gpt_param_count, matched_gpt_config, next_token_loss

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread beats OpenMP on a busy box


def small(**kw) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 23, "max_seq_len": 24, "hidden_dim": 32, "depth": 2, "n_heads": 4, **kw})


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_kv_cached_logits_equal_the_full_forward(positions):
    torch.manual_seed(0)
    model = GPT(small(positions=positions)).double().eval()
    tokens = torch.randint(0, 23, (3, 14))
    full = model(tokens)
    cache = model.new_cache(3)
    pieces = [model(tokens[:, :5], cache), model(tokens[:, 5:6], cache), model(tokens[:, 6:10], cache)]
    pieces += [model(tokens[:, i:i + 1], cache) for i in range(10, 14)]  # prefill, one, a chunk, then one by one
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.8, 0.9)])
def test_cached_generation_equals_uncached(temperature, top_p):
    torch.manual_seed(0)
    model = GPT(small(temperature=temperature, top_p=top_p)).double()
    prompts = torch.randint(0, 23, (4, 6))
    runs = [model.generate(prompts, 12, generator=torch.Generator().manual_seed(7), use_cache=cached)
            for cached in (True, False, True)]
    assert runs[0].shape == (4, 12) and runs[0].dtype == torch.long
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert model.training  # generate restores the mode it found
    if temperature > 0:  # sampling really samples: another seed, other tokens
        other = model.generate(prompts, 12, generator=torch.Generator().manual_seed(8))
        assert not torch.equal(other, runs[0])


def test_tiny_top_p_is_greedy_and_limits_are_enforced():
    torch.manual_seed(0)
    nucleus = GPT(small(top_p=1e-6))
    greedy = GPT(small(temperature=0.0))
    greedy.load_state_dict(nucleus.state_dict())
    prompts = torch.randint(0, 23, (2, 4))
    assert torch.equal(nucleus.generate(prompts, 8, generator=torch.Generator().manual_seed(1)),
                       greedy.generate(prompts, 8))
    assert nucleus.generate(prompts, 0).shape == (2, 0)
    assert greedy.generate(prompts, 20).shape == (2, 20)  # 4 + 20 - 1 = 23 positions read <= 24
    with pytest.raises(ValueError, match="positions"):
        greedy.generate(prompts, 22)
    with pytest.raises(ValueError, match="at least one token"):
        greedy.generate(prompts[:, :0], 3)


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    a = torch.randint(0, 23, (2, 16))
    b = a.clone()
    b[:, 9:] = torch.randint(0, 23, (2, 7))
    la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :9], lb[:, :9])
    assert not torch.allclose(la[:, 9:], lb[:, 9:])


def test_loss_falls_when_overfitting_and_ignores_masked_targets():
    torch.manual_seed(0)
    model = GPT(small())
    tokens = torch.randint(0, 23, (8, 16))
    mask = torch.arange(16)[None] < torch.tensor([16, 16, 12, 16, 9, 16, 16, 5])[:, None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = model.loss(tokens, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    # only targets inside the mask count: garbage after a window's length changes nothing
    noisy = tokens.clone()
    noisy[~mask] = (noisy[~mask] + 1) % 23
    with torch.no_grad():
        torch.testing.assert_close(model.loss(noisy, mask), model.loss(tokens, mask))
        _, accuracy = next_token_loss(model(tokens), tokens, mask)
    assert accuracy > 0.9


@pytest.mark.parametrize("kw", [{}, {"positions": "learned"}, {"tie_embeddings": False}, {"mlp_ratio": 2.5}])
def test_closed_form_count_equals_the_module(kw):
    config = small(**kw)
    assert gpt_param_count(config) == count_params(GPT(config))


def _dit_targets() -> dict[str, int]:
    """The DiTs the tiny presets build (TextLDM: platform/methods/textldm/train_dit.py; Cola DLM: models/dlm.py)."""
    from latentlm.models.block_dit import BlockCausalDiT
    from latentlm.models.dit import TextDiT
    from latentlm.platform.methods.dlm.config import build_dlm_config
    from latentlm.platform.methods.textldm.config import build_config
    with torch.device("meta"):
        return {"textldm": count_params(TextDiT(build_config("tiny").dit)),
                "dlm": count_params(BlockCausalDiT(build_dlm_config("tiny").dlm.dit))}


def test_matched_config_is_within_five_percent():
    targets = _dit_targets()
    cases = [(targets["textldm"], 16384, 64, {}), (targets["textldm"], 16384, 64, {"depth": 4, "n_heads": 4}),
             (targets["dlm"], 16384, 64, {"depth": 4, "n_heads": 4}), (5_000_000, 1000, 128, {}),
             (57_701_952, 49152, 256, {"depth": 12, "n_heads": 8}), (2_000_000, 50, 32, {"positions": "learned"}),
             (800_000, 300, 64, {"hidden_dim": 96})]
    for target, vocab, seq_len, fixed in cases:
        config = matched_gpt_config(target, vocab, seq_len, **fixed)
        assert abs(gpt_param_count(config) / target - 1) <= 0.05, (target, fixed, config)
        with torch.device("meta"):  # the closed form is what the search used: check it against the module
            assert count_params(GPT(config)) == gpt_param_count(config)
        assert (config.vocab_size, config.max_seq_len) == (vocab, seq_len)
        assert all(getattr(config, k) == v for k, v in fixed.items())


def test_impossible_target_names_it():
    with pytest.raises(ValueError, match="target_params=1,000 .*closest is"):
        matched_gpt_config(1000, 16384, 64)  # the embedding alone is 16x the target
    with pytest.raises(ValueError, match="target_params=300,000"):
        matched_gpt_config(300_000, 100, 64, hidden_dim=32, depth=2)
    with pytest.raises(ValueError, match="not a GPTConfig field"):
        matched_gpt_config(300_000, 100, 64, width=32)


def test_config_errors_name_the_field():
    for kw, field in (({"hidden_dim": 30}, "gpt.hidden_dim"), ({"positions": "alibi"}, "gpt.positions"),
                      ({"top_p": 0.0}, "gpt.top_p"), ({"temperature": -1.0}, "gpt.temperature"),
                      ({"depth": 0}, "gpt.depth")):
        with pytest.raises(ConfigError, match=field):
            small(**kw)
