"""The continuation task under protocol v3: which documents are held out, the target floor, exact-length
generation for every family's interface, and the AR baseline's EOS suppression."""
import json

import pytest
import torch

from latentlm.models.gpt import GPT, GPTConfig
from latentlm.platform.data.windows import load_tokenizer
from latentlm.platform.evaluation.continuation import continuation_samples, generate_continuations, held_out_documents
from latentlm.platform.methods.textldm.config import build_config


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    return load_tokenizer(str(tiny_lm_dir))


def test_a_dataset_only_in_eval_is_used_whole_the_training_corpus_only_its_test_split(tiny_corpus, tmp_path,
                                                                                     tiny_overrides):
    own = tmp_path / "mine.jsonl"
    own.write_text("".join(json.dumps({"text": f"the river city {i} ."}) + "\n" for i in range(60)))
    cfg = build_config("tiny", tiny_overrides(eval={"datasets": [str(tiny_corpus), str(own)]}))
    assert len(held_out_documents(cfg, str(own))) == 60                     # never trained on: all of it
    test_share = held_out_documents(cfg, str(tiny_corpus))
    assert 20 < len(test_share) < 80                                         # 10% of 400 documents


def test_continuations_under_the_floor_are_skipped(tiny_corpus, tok, tiny_overrides):
    docs = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    for floor in (4, 12):
        cfg = build_config("tiny", tiny_overrides(eval={"min_target_tokens": floor, "num_samples": 50}))
        samples = continuation_samples(docs, tok, cfg)
        assert samples and min(len(s.target_ids) for s in samples) >= floor
        for s in samples:  # the tail continues the target beyond the window
            assert s.tail_ids[:len(s.target_ids)] == s.target_ids
    with pytest.raises(ValueError, match="eval.min_target_tokens"):
        continuation_samples(["the river ."] * 5, tok,
                             build_config("tiny", tiny_overrides(eval={"min_target_tokens": 20, "min_tokens": 2})))


class _Stub(torch.nn.Module):
    """Returns ``length`` copies of the prompt's last id; records the lengths it was asked for."""

    def __init__(self, short_by: int = 0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.short_by, self.asked = short_by, []

    def generate(self, prompts, length, **_):
        self.asked.append((prompts.shape[1], length))
        return prompts[:, -1:].expand(-1, length - self.short_by).clone()


def test_each_sample_is_generated_at_exactly_its_reference_length(tiny_corpus, tok, tiny_overrides):
    docs = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    cfg = build_config("tiny", tiny_overrides(eval={"num_samples": 24, "batch_size": 5}))
    samples = continuation_samples(docs, tok, cfg)
    stub = _Stub()
    out = generate_continuations(stub, samples, cfg, seed=0)
    assert [len(x) for x in out] == [len(s.target_ids) for s in samples]
    assert all(row == [s.prompt_ids[-1]] * len(s.target_ids) for row, s in zip(out, samples))  # order kept
    assert {length for _, length in stub.asked} == {len(s.target_ids) for s in samples}
    with pytest.raises(ValueError, match="returned shape"):          # a sampler that stops early is a bug
        generate_continuations(_Stub(short_by=1), samples, cfg, seed=0)


class _EOSLover(GPT):
    """A GPT whose every next-token distribution puts most of its mass on EOS (id 3)."""

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        logits[..., 3] += 8.0
        return logits


def test_the_ar_baseline_never_ends_a_continuation_early():
    torch.manual_seed(0)
    gpt = _EOSLover(GPTConfig(vocab_size=7, hidden_dim=16, depth=1, n_heads=2, max_seq_len=32, temperature=1.0)).eval()
    prompts = torch.tensor([[1, 2], [4, 5]])
    free = gpt.generate(prompts, 12, generator=torch.Generator().manual_seed(1))
    assert (free == 3).float().mean() > 0.5                            # left alone it emits EOS
    held = gpt.generate(prompts, 12, generator=torch.Generator().manual_seed(1), min_new_tokens=12, eos_id=3)
    assert held.shape == (2, 12) and not (held == 3).any()
    partly = gpt.generate(prompts, 12, generator=torch.Generator().manual_seed(1), min_new_tokens=5, eos_id=3,
                          use_cache=False)
    assert not (partly[:, :5] == 3).any() and (partly[:, 5:] == 3).any()
