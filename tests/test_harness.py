"""The shared scoring harness: length matching, determinism, MAUVE's seed spread, the human ceiling."""
import random

import pytest

from latentlm.platform import harness
from latentlm.platform.protocol import ContinuationEvalConfig, UnconditionalEvalConfig


def test_length_match_truncates_and_keeps_shorter_references_and_those_of_empty_generations():
    refs = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10], [11, 12, 13]]
    gens = [[0, 0], [0, 0, 0, 0], [], [0, 0, 0]]
    # truncated to 2; shorter reference kept whole; an empty generation's reference kept whole (not emptied:
    # that would reward empty output); equal length kept
    assert harness.length_match(refs, gens) == [[1, 2], [6, 7], [8, 9, 10], [11, 12, 13]]
    assert harness.length_match([], []) == []
    with pytest.raises(ValueError, match="3 references for 2 generations"):
        harness.length_match(refs[:3], gens[:2])


@pytest.fixture(scope="module")
def word_tokenizer(tiny_lm_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def _texts_as_ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_same_generations_scored_twice_give_identical_numbers(tiny_corpus, tiny_lm_dir, word_tokenizer, single_thread):
    import json
    lm = str(tiny_lm_dir)
    e = ContinuationEvalConfig(num_samples=12, sampling_seeds=[0, 1], mauve_kmeans_seeds=[25, 26, 27], mauve_model=lm,
                               genppl_model=lm, bertscore_model=lm, bertscore_num_layers=2, batch_size=4)
    docs = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    ids = _texts_as_ids(word_tokenizer, docs[:36])
    refs, gens = [x[:12] for x in ids[:12]], {0: [x[:10] for x in ids[12:24]], 1: [x[:14] for x in ids[24:36]]}
    first, per_seed = harness.score(e, harness.Scorers(e), word_tokenizer, gens, refs, paired=True)
    second, _ = harness.score(e, harness.Scorers(e), word_tokenizer, gens, refs, paired=True)  # fresh scorers
    assert first == second
    for name in ("rouge1", "rouge2", "rougeL", "bertscore", "gen_ppl", "entropy", "diversity", "gen_tokens"):
        assert name in first and f"{name}_std" in first, name
    assert first["gen_tokens"] == 12.0 and first["gen_tokens_std"] == pytest.approx(2 ** 0.5 * 2)
    assert first["seeds"] == 2 and first["samples"] == 12 and set(per_seed) == {0, 1}
    # the spread is over every (sampling seed, k-means seed) pair; its two components are reported too
    assert first["mauve"] == pytest.approx(sum(s["mauve"] for s in per_seed.values()) / 2)
    assert first["mauve_std"] >= max(first["mauve_kmeans_std"], 0) and first["mauve_sampling_std"] >= 0
    # unpaired tasks (unconditional) have no ROUGE / BERTScore
    u = UnconditionalEvalConfig(num_samples=12, sampling_seeds=[0], mauve_kmeans_seeds=[25], mauve_model=lm,
                                genppl_model=lm, batch_size=4)
    unpaired, _ = harness.score(u, harness.Scorers(u), word_tokenizer, {0: gens[0]}, refs, paired=False)
    assert "rouge1" not in unpaired and "bertscore" not in unpaired and unpaired["mauve_std"] == 0.0


class _RefusesToScore:
    """Scorers that fail when used: a cached human ceiling must not touch them."""

    def __getattr__(self, name):
        raise RuntimeError(f"recomputed (scorers.{name} used)")


def test_human_ceiling_is_cached_by_scoring_protocol_and_texts(tiny_corpus, tiny_lm_dir, word_tokenizer, single_thread,
                                                              tmp_path):
    import json
    lm = str(tiny_lm_dir)
    e = UnconditionalEvalConfig(num_samples=12, sampling_seeds=[0], mauve_kmeans_seeds=[25], mauve_model=lm,
                                genppl_model=lm, batch_size=4)
    docs = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    ids = [x[:12] for x in _texts_as_ids(word_tokenizer, docs[:26])]
    refs, others = ids[:12], ids[12:24]
    cached = harness.human_ceiling(e, harness.Scorers(e), word_tokenizer, refs, others, tmp_path, "scoring-a")
    assert cached == harness.human_ceiling(e, harness.Scorers(e), word_tokenizer, refs, others)  # = uncached row
    assert len(list(tmp_path.glob("human-*.json"))) == 1
    again = harness.human_ceiling(e, _RefusesToScore(), word_tokenizer, refs, others, tmp_path, "scoring-a")
    assert again == cached  # read back exactly, nothing scored
    for changed in (dict(scoring_hash="scoring-b"), dict(others=[*others[:-1], ids[24]])):
        args = {"references": refs, "others": others, "scoring_hash": "scoring-a", **changed}
        with pytest.raises(RuntimeError, match="recomputed"):  # another protocol or other texts: a new row
            harness.human_ceiling(e, _RefusesToScore(), word_tokenizer, cache_dir=tmp_path, **args)


def test_human_ceiling_is_near_the_top_on_the_embedded_data(single_thread):
    """Held-out wiki text against held-out wiki text, ranked with degraded 'models' of the same texts by the
    protocol's own MAUVE features (the embedded SmolLM2): the ceiling must sit at the top (within one place)."""
    from latentlm.platform.data import load_tokenizer
    from latentlm.platform.evaluate import held_out_documents
    from latentlm.platform.evaluate_uncond import reference_windows
    from latentlm.platform.experiment import build_config
    cfg = build_config("tiny")
    e = UnconditionalEvalConfig(num_samples=48, sampling_seeds=[0], mauve_kmeans_seeds=[25, 26],
                                genppl_model="embedded:smollm2", batch_size=16)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    ids, _ = reference_windows(held_out_documents(cfg, "embedded:wiki"), tokenizer, 48, 3 * e.num_samples)
    refs, humans, spare = ids[:48], ids[48:96], ids[96:144]
    assert len(spare) == 48
    rng = random.Random(0)
    unigram_pool = [t for x in spare for t in x]
    models = {
        "unigram": [[rng.choice(unigram_pool) for _ in x] for x in spare],      # right words, no order
        "shuffled": [rng.sample(x, len(x)) for x in spare],                     # each text's words permuted
        "repeat": [(x[:4] * 12)[:len(x)] for x in spare],                       # degenerate loops
        "truncated": [x[:6] for x in spare],                                    # real but too short
    }
    scorers = harness.Scorers(e)
    ceiling = harness.human_ceiling(e, scorers, tokenizer, refs, humans)
    scores = {name: harness.score(e, scorers, tokenizer, {0: gen}, refs, paired=False)[0]["mauve"]
              for name, gen in models.items()}
    ranking = sorted([*scores.items(), ("human", ceiling["mauve"])], key=lambda kv: -kv[1])
    assert [name for name, _ in ranking].index("human") <= 1, ranking
    assert ceiling["mauve"] > max(scores["repeat"], scores["unigram"]), ranking
    assert ceiling["gen_ppl"] < 100 and ceiling["entropy"] > 2.5  # real text under a real scorer
