"""Unconditional-generation metrics: Gen-PPL, unigram entropy, n-gram diversity (LDLM / MDLM protocol).

Exact values on hand-computed inputs; Gen-PPL against the model's own loss on the tiny random Llama from
conftest; one ``assets`` test with the real embedded Gemma-3-270m scorer."""
from __future__ import annotations

import math
import random
import shutil

import numpy as np
import pytest
import torch

from latentlm.platform.evaluation import metrics
from latentlm.platform.evaluation.metrics import GenPPLScorer, distinct_n, gen_ppl, ngram_diversity, unigram_entropy

TEXTS = [
    "the river city music people",
    "a king war science old new small large early later north south language",
    "history water",
    "forest island mountain school book law art trade ship road bridge the a river city music people king",
    "the the the the the the",
    "school book .",
]


# --------------------------------------------------------------------------------------- unigram entropy
def test_unigram_entropy_exact_values():
    assert unigram_entropy([[1, 1, 2, 2]]) == pytest.approx(math.log(2), abs=1e-12)
    assert unigram_entropy([[7, 7, 7, 7]]) == 0.0
    assert unigram_entropy([[1, 2, 3, 4]]) == pytest.approx(math.log(4), abs=1e-12)
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    assert unigram_entropy([[5, 5, 6, 9]]) == pytest.approx(1.5 * math.log(2), abs=1e-12)
    # per-sample entropies averaged over samples (not the entropy of the pooled tokens, which is ln 3 here)
    assert unigram_entropy([[1, 1, 2, 2], [3, 3, 3, 3]]) == pytest.approx(math.log(2) / 2, abs=1e-12)


def test_unigram_entropy_inputs_and_edge_cases():
    ids = [[1, 1, 2, 2], [1, 2, 3, 4]]
    expected = (math.log(2) + math.log(4)) / 2
    assert unigram_entropy(torch.tensor(ids)) == pytest.approx(expected, abs=1e-12)
    assert unigram_entropy(np.array(ids)) == pytest.approx(expected, abs=1e-12)
    # padding dropped first: [1, 1, 2, 2, 0, 0] scores as [1, 1, 2, 2]
    assert unigram_entropy([[1, 1, 2, 2, 0, 0]], ignore_ids=[0]) == pytest.approx(math.log(2), abs=1e-12)
    # empty samples are skipped, not averaged in as zeros; none left -> 0.0
    assert unigram_entropy([[1, 1, 2, 2], [], [0, 0]], ignore_ids={0}) == pytest.approx(math.log(2), abs=1e-12)
    assert unigram_entropy([]) == 0.0 and unigram_entropy([[]]) == 0.0
    with pytest.raises(TypeError):
        unigram_entropy("1 1 2 2")
    with pytest.raises(ValueError, match="2-D"):
        unigram_entropy(torch.tensor([1, 1, 2, 2]))


# -------------------------------------------------------------------------------------- n-gram diversity
def test_ngram_diversity_exact_values():
    assert ngram_diversity(["a b c d e f", "g h i j"]) == 1.0  # every 2/3/4-gram unique
    # the same text twice: 2-grams 3/6, 3-grams 2/4, 4-grams 1/2 unique
    assert ngram_diversity(["a b c d", "a b c d"]) == pytest.approx(0.5 ** 3)
    # within one text: 2-grams {ab, ba} of 5, 3-grams {aba, bab} of 4, 4-grams {abab, baba} of 3
    assert ngram_diversity(["a b a b a b"]) == pytest.approx(2 / 5 * 2 / 4 * 2 / 3)
    assert ngram_diversity(["a b a b a b"], ns=(2,)) == pytest.approx(2 / 5)
    assert ngram_diversity(["a b a b a b"]) < 1.0
    # pooled over the corpus: n-grams repeated *across* texts count as repeats
    assert ngram_diversity(["x y z", "x y z"], ns=(2, 3)) == pytest.approx(2 / 4 * 1 / 2)
    # case-sensitive whitespace tokens: {Ab, bc, cd} + {ab, bc, cd} has 4 unique of 6 (3 of 6 if case-folded)
    assert ngram_diversity(["A b c d", "a b c d"], ns=(2,)) == pytest.approx(4 / 6)


def test_ngram_diversity_token_ids_and_edge_cases():
    assert ngram_diversity([[1, 2, 1, 2, 1, 2]]) == pytest.approx(ngram_diversity(["a b a b a b"]))
    assert ngram_diversity([np.array([1, 2, 3, 4, 5])]) == 1.0
    assert distinct_n([[1, 1, 1]], 1) == pytest.approx(1 / 3)
    assert distinct_n(["a a a"], 1) == pytest.approx(1 / 3)  # the str path is unchanged
    assert ngram_diversity(["a b c"]) == 0.0  # no 4-gram at all
    assert ngram_diversity([]) == 0.0
    with pytest.raises(ValueError):
        ngram_diversity(["a b c d"], ns=())
    with pytest.raises(TypeError):
        ngram_diversity("a b c d")


# ------------------------------------------------------------------------------------------------ Gen-PPL
@pytest.fixture(scope="module")
def scorer(tiny_lm_dir, single_thread):
    return GenPPLScorer(str(tiny_lm_dir), max_length=64, batch_size=4)


def _manual(model, id_lists):
    """Summed NLL and predicted-token count per text, from the model's own (mean) loss on one text."""
    totals, counts = [], []
    with torch.no_grad():
        for ids in id_lists:
            x = torch.tensor([ids])
            loss = model(input_ids=x, labels=x).loss.item()  # mean over len(ids) - 1 shifted targets
            totals.append(loss * (len(ids) - 1))
            counts.append(len(ids) - 1)
    return np.array(totals), np.array(counts)


def test_gen_ppl_equals_manual_computation(scorer, tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, local_files_only=True).eval()
    assert tok.bos_token_id is None  # the tiny tokenizer has no BOS: nothing prepended
    ids = [tok(t, add_special_tokens=False).input_ids for t in TEXTS]
    assert scorer.encode(TEXTS) == ids
    totals, counts = _manual(model, ids)

    out = scorer(TEXTS)
    assert out["tokens"] == counts.sum() == sum(len(x) - 1 for x in ids)
    assert out["texts"] == len(TEXTS) and out["skipped"] == 0
    assert out["nll"] == pytest.approx(totals.sum() / counts.sum(), rel=1e-5)
    assert out["gen_ppl"] == pytest.approx(math.exp(totals.sum() / counts.sum()), rel=1e-5)
    assert out["gen_ppl_per_text"] == pytest.approx(np.mean(np.exp(totals / counts)), rel=1e-5)
    assert out["gen_ppl"] != pytest.approx(out["gen_ppl_per_text"], rel=1e-3)  # micro != macro here
    # random init over 33 ids: close to uniform
    assert 10 < out["gen_ppl"] < 100


def test_gen_ppl_is_batch_invariant(tiny_lm_dir, scorer):
    reference_totals, reference_counts = scorer.nll(TEXTS)
    rng = random.Random(0)
    for batch_size, max_logits in [(1, 1 << 28), (2, 1 << 28), (16, 1 << 28), (16, 1)]:
        other = GenPPLScorer(str(tiny_lm_dir), max_length=64, batch_size=batch_size, max_logits=max_logits)
        batches: list[int] = []
        totals, counts = other.nll(TEXTS, on_batch=batches.append)
        np.testing.assert_array_equal(counts, reference_counts)
        # progress: one call per forward pass, covering every scored text once
        assert sum(batches) == int((counts > 0).sum()) and max(batches) <= batch_size
        np.testing.assert_allclose(totals, reference_totals, rtol=1e-5)
        # the same text among different company, in a different order
        order = list(range(len(TEXTS)))
        rng.shuffle(order)
        mixed = [TEXTS[i] for i in order] + ["war war war king king", "bridge road ship"]
        totals, _ = other.nll(mixed)
        np.testing.assert_allclose(totals[: len(TEXTS)], reference_totals[order], rtol=1e-5)
    assert scorer(list(reversed(TEXTS)))["gen_ppl"] == pytest.approx(scorer(TEXTS)["gen_ppl"], rel=1e-6)


def test_gen_ppl_skips_empty_texts_and_truncates(scorer, tiny_lm_dir):
    # without a BOS, a one-token text has nothing to predict either
    out = scorer(["", "   ", "river", *TEXTS])
    assert out["skipped"] == 3 and out["texts"] == len(TEXTS)
    assert out["gen_ppl"] == pytest.approx(scorer(TEXTS)["gen_ppl"], rel=1e-6)
    nothing = scorer(["", "\n"])
    assert nothing["skipped"] == 2 and nothing["tokens"] == 0 and math.isnan(nothing["gen_ppl"])
    assert math.isnan(scorer([])["gen_ppl"])
    with pytest.raises(TypeError):
        scorer("the river")

    short = GenPPLScorer(str(tiny_lm_dir), max_length=5)
    long_text = TEXTS[3]  # 18 words
    assert short.encode([long_text]) == [scorer.encode([long_text])[0][:5]]
    assert short([long_text])["tokens"] == 4


def test_gen_ppl_prepends_bos(tiny_lm_dir, tmp_path, single_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tmp_path / "with_bos"
    shutil.copytree(tiny_lm_dir, directory)
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tok.bos_token = "<|endoftext|>"
    tok.save_pretrained(directory)
    bos_scorer = GenPPLScorer(str(directory), max_length=64)
    assert bos_scorer.bos_id == 0
    ids = [[0] + tok(t, add_special_tokens=False).input_ids for t in TEXTS]
    assert bos_scorer.encode(TEXTS) == ids
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    totals, counts = _manual(model, ids)
    out = bos_scorer(TEXTS + ["river"])  # with a BOS, a one-token text is scored (1 predicted token)
    assert out["skipped"] == 0 and out["tokens"] == counts.sum() + 1
    assert bos_scorer(TEXTS)["gen_ppl"] == pytest.approx(math.exp(totals.sum() / counts.sum()), rel=1e-5)


def test_gen_ppl_function_caches_the_scorer(tiny_lm_dir, scorer, single_thread):
    first = gen_ppl(TEXTS, str(tiny_lm_dir), max_length=64)
    cached = [s for key, s in metrics._PPL_SCORERS.items() if key[0] == str(tiny_lm_dir)]
    assert len(cached) == 1
    assert gen_ppl(TEXTS, str(tiny_lm_dir), max_length=64, batch_size=1) == pytest.approx(first, rel=1e-6)
    assert [s for key, s in metrics._PPL_SCORERS.items() if key[0] == str(tiny_lm_dir)] == cached
    assert first["gen_ppl"] == pytest.approx(scorer(TEXTS)["gen_ppl"], rel=1e-6)


# ------------------------------------------------------------------------------------------ real scorer
@pytest.mark.assets
def test_gemma3_gen_ppl_real_text_beats_shuffled_words(gemma3):
    from latentlm.platform.data import assets

    docs = assets.wiki_documents()[:8]
    rng = random.Random(0)
    shuffled = []
    for doc in docs:
        words = doc.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    scorer = GenPPLScorer(str(gemma3), max_length=128, batch_size=8)
    real, mixed = scorer(docs), scorer(shuffled)
    print(f"\nGemma-3-270m Gen-PPL, 8 wiki summaries (<= 128 tokens): real {real['gen_ppl']:.1f} "
          f"(per-text {real['gen_ppl_per_text']:.1f}), shuffled words {mixed['gen_ppl']:.1f}, "
          f"{real['tokens']} / {mixed['tokens']} tokens")
    assert scorer.bos_id == 2 and all(ids[0] == 2 for ids in scorer.encode(docs))
    assert real["skipped"] == mixed["skipped"] == 0
    assert real["gen_ppl"] < 40
    assert mixed["gen_ppl"] > 5 * real["gen_ppl"]
    # padding does not leak into Gemma's scores either: 3 texts in one padded batch vs one at a time
    batched, _ = scorer.nll(docs[:3])
    scorer.batch_size = 1
    alone, _ = scorer.nll(docs[:3])
    np.testing.assert_allclose(batched, alone, rtol=1e-4)
