"""Text metrics for the continuation protocol: lists of strings (or token ids) in, numbers out.

Everything here runs offline on CPU (or a given torch device) and imports no Ray:

* :func:`rouge`: n-gram / LCS overlap with the reference (``rouge_score``), each in [0, 1].
* :func:`bertscore`: mean BERTScore F1 against the reference with a *local* encoder directory.
* :class:`LMFeaturizer` + :func:`mauve`: distribution-level similarity of generations vs. human text.
* :func:`token_accuracy`: exact-match rate of predicted token ids.
* :func:`distinct_n`: lexical diversity (unique / total whitespace n-grams).

Unconditional-generation metrics (the LDLM / MDLM protocol):

* :class:`GenPPLScorer` / :func:`gen_ppl`: generative perplexity under a local causal LM (token-pooled).
* :func:`unigram_entropy`: mean per-sample entropy of the token distribution (catches repetition).
* :func:`ngram_diversity`: Su et al. (2022) diversity, the product of distinct-n over n = 2, 3, 4.

The heavy libraries (``bert_score``, ``mauve``/faiss, ``transformers``) are imported lazily, so importing this
module is cheap.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "rouge",
    "rouge_scores",
    "bertscore",
    "bertscore_scores",
    "LMFeaturizer",
    "mauve",
    "token_accuracy",
    "distinct_n",
    "GenPPLScorer",
    "gen_ppl",
    "unigram_entropy",
    "sample_entropies",
    "ngram_diversity",
    "MIN_MAUVE_SAMPLES",
]

#: MAUVE needs a handful of points per side for PCA + k-means to mean anything.
MIN_MAUVE_SAMPLES = 4

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_ROUGE_SCORER: Any = None
# (model, num_layers, device) -> bert_score.BERTScorer; avoids reloading the encoder on every call.
_BERT_SCORERS: dict[tuple[str, int, str], Any] = {}
# (model, max_length, device, dtype) -> GenPPLScorer; see gen_ppl.
_PPL_SCORERS: dict[tuple[str, int, str, str], "GenPPLScorer"] = {}


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, str):
            raise TypeError(f"{name} must be a list of strings, got a single str")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length, got {len(predictions)} predictions "
            f"and {len(references)} references"
        )
    if len(predictions) == 0:
        raise ValueError("predictions and references are empty; need at least one pair")


# ----------------------------------------------------------------------------------------------- ROUGE
def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measure of each prediction against its reference.

    Returns ``{"rouge1", "rouge2", "rougeL"}``: unigram overlap, bigram overlap and longest common
    subsequence F1, each averaged over pairs and in [0, 1] (1 = identical token sequence, 0 = no overlap).
    Uses ``rouge_score`` with the Porter stemmer; its tokenizer lowercases and keeps only ``[a-z0-9]``
    runs, so a text with no such characters (empty, punctuation-only, non-Latin script) scores 0 even
    against an identical reference.
    """
    return {key: float(values.mean()) for key, values in rouge_scores(predictions, references).items()}


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-pair ROUGE F-measures (the terms :func:`rouge` averages), one float64 array per ROUGE type."""
    global _ROUGE_SCORER
    _check_pairs(predictions, references)
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)
    out = {key: np.zeros(len(predictions), dtype=np.float64) for key in _ROUGE_TYPES}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        scores = _ROUGE_SCORER.score(ref, pred)  # rouge_score's order is (target, prediction)
        for key in _ROUGE_TYPES:
            out[key][i] = scores[key].fmeasure
    return out


# ------------------------------------------------------------------------------------------- BERTScore
def _bert_scorer(model: str, num_layers: int, batch_size: int, device: str) -> Any:
    key = (str(model), int(num_layers), str(device))
    scorer = _BERT_SCORERS.get(key)
    if scorer is None:
        from bert_score import BERTScorer

        scorer = BERTScorer(
            model_type=str(model),
            num_layers=int(num_layers),
            batch_size=batch_size,
            lang=None,
            rescale_with_baseline=False,
            idf=False,
            device=device,
        )
        _BERT_SCORERS[key] = scorer
    return scorer


def bertscore(
    predictions: list[str],
    references: list[str],
    model: str,
    num_layers: int,
    batch_size: int = 32,
    device: str = "cpu",
) -> float:
    """Mean BERTScore F1 of predictions against references (raw, no baseline rescaling, no idf).

    ``model`` is a local encoder directory (or a name already in the HF cache) and ``num_layers`` the layer
    whose embeddings are matched; it is required because custom models are not in bert_score's table.
    F1 is a greedy-matched cosine similarity: in [-1, 1], in practice (0, 1], 1 = identical text. Raw values
    depend on the encoder (MiniLM L6: ~0.94 paraphrase, ~0.1 unrelated) and are not comparable to published
    roberta-large numbers. A pair whose prediction or reference is empty/whitespace-only scores exactly 0
    (it is not sent to the model, so bert_score prints no warning). The scorer is cached per
    ``(model, num_layers, device)``.
    """
    return float(bertscore_scores(predictions, references, model, num_layers, batch_size, device).mean())


def bertscore_scores(predictions: list[str], references: list[str], model: str, num_layers: int,
                     batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """Per-pair BERTScore F1 (the terms :func:`bertscore` averages), float64; see :func:`bertscore`."""
    _check_pairs(predictions, references)
    keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    f1 = np.zeros(len(predictions), dtype=np.float64)
    if keep:
        scorer = _bert_scorer(model, num_layers, batch_size, device)
        _, _, f = scorer.score(
            [predictions[i] for i in keep], [references[i] for i in keep], batch_size=batch_size
        )
        f1[keep] = f.detach().cpu().double().numpy()
    return f1


# ------------------------------------------------------------------------------------------ featurizer
class LMFeaturizer:
    """Embed texts with a local transformer's final-layer hidden states (features for :func:`mauve`).

    ``pooling="last"``: hidden state of the last non-padding token (MAUVE's standard GPT-2 featurization;
    meaningful for causal LMs). ``pooling="mean"``: mean over non-padding tokens (the usual choice for
    bidirectional encoders like MiniLM). Texts are truncated to ``max_length`` tokens (capped at the model's
    position limit), right-padded, and batched by length; a text that tokenizes to nothing (e.g. ``""`` with a
    GPT-2 tokenizer) is fed a single eos (else bos/pad/unk) token. A text's feature does not depend on what it
    is batched with (up to float noise). Returns float32 ``(N, hidden_size)``.
    """

    def __init__(
        self,
        model: str,
        max_length: int = 256,
        pooling: str = "last",
        batch_size: int = 16,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        if max_length < 1 or batch_size < 1:
            raise ValueError(f"max_length and batch_size must be >= 1, got {max_length} and {batch_size}")
        self.model_name = str(model)
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = torch.device(device)
        kwargs: dict[str, Any] = {"local_files_only": True} if Path(model).is_dir() else {}
        tokenizer = AutoTokenizer.from_pretrained(self.model_name, **kwargs)
        try:
            net = AutoModel.from_pretrained(self.model_name, dtype=dtype, **kwargs)
        except ValueError:  # config class not mapped by AutoModel: take the causal LM's base model
            net = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype, **kwargs).base_model
        self._attach(net.to(self.device).eval(), tokenizer, max_length)

    @classmethod
    def over(cls, scorer: "GenPPLScorer", max_length: int = 256, pooling: str = "last",
             batch_size: int = 16) -> "LMFeaturizer":
        """The featurizer of ``scorer``'s causal LM (its base model and tokenizer, already loaded): the features
        :meth:`GenPPLScorer.score` computes alongside the NLL, for texts scored without one."""
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self = cls.__new__(cls)
        self.model_name, self.pooling, self.batch_size, self.device = scorer.model_name, pooling, batch_size, scorer.device
        self._attach(scorer.model.base_model, scorer.tokenizer, max_length)
        return self

    def _attach(self, net, tokenizer, max_length: int) -> None:
        self.model, self.tokenizer = net, tokenizer
        self.max_length = position_limit(net.config, max_length)
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None))
        self.fill_id = feature_fill_id(tokenizer)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return feature_ids(self.tokenizer, texts, self.max_length, self.fill_id)

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if len(texts) == 0:
            return out
        ids = self._encode(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # length-bucketed batches: less padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                mask[row, : len(ids[i])] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            out[idx] = pool_hidden(hidden, mask.sum(dim=1), self.pooling).cpu().numpy()
        return out


def position_limit(config, max_length: int) -> int:
    """``max_length`` capped at the model's position limit (when its config names one)."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(max_length, limit) if limit else max_length


def feature_fill_id(tokenizer) -> int:
    """The id a featurizer feeds for a text that tokenizes to nothing: eos, else bos, pad, unk, 0."""
    return next(i for i in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id,
                            tokenizer.unk_token_id, 0) if i is not None)


def feature_ids(tokenizer, texts: Sequence[str], max_length: int, fill_id: int) -> list[list[int]]:
    """The ids a text is featurized from: the tokenizer's own encoding (its special tokens included, e.g.
    Gemma's BOS), cut to ``max_length``; ``[fill_id]`` when that is empty."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if len(texts) else []
    return [list(x) if len(x) > 0 else [fill_id] for x in ids]


def pool_hidden(hidden: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, D) right-padded final hidden states -> (B, D) float32: the state at each row's last real position
    (``lengths - 1``), or the mean over its first ``lengths`` positions."""
    hidden = hidden.float()
    if pooling == "last":
        return hidden[torch.arange(len(hidden), device=hidden.device), lengths - 1]
    m = (torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]).unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1)


# ----------------------------------------------------------------------------------------------- MAUVE
def mauve(
    p_features: np.ndarray,
    q_features: np.ndarray,
    seed: int = 25,
    num_buckets: int | str = "auto",
    kmeans_num_redo: int = 5,
    kmeans_max_iter: int = 500,
) -> float:
    """MAUVE between two sets of text features (e.g. human = P, model = Q), in (0, 1].

    ~1 means the two distributions are indistinguishable after quantization; values near 0 mean they are
    far apart. Features are PCA'd, clustered jointly with faiss k-means into ``num_buckets`` buckets and the
    two histograms compared. ``num_buckets="auto"`` uses ``max(2, min(len(p), len(q)) // 10)`` (MAUVE's own
    auto is ``round(min / 10)``). Deterministic for the same inputs and ``seed``. Needs at least
    :data:`MIN_MAUVE_SAMPLES` rows per side; scores from few samples are noisy, and they are only
    comparable at equal sample sizes and bucket counts.
    """
    import mauve as mauve_lib

    p = np.asarray(p_features, dtype=np.float32)
    q = np.asarray(q_features, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shapes {p.shape} and {q.shape}")
    if p.shape[1] != q.shape[1]:
        raise ValueError(f"p and q feature dims differ: {p.shape[1]} vs {q.shape[1]}")
    if len(p) < MIN_MAUVE_SAMPLES or len(q) < MIN_MAUVE_SAMPLES:
        raise ValueError(
            f"MAUVE needs at least {MIN_MAUVE_SAMPLES} samples per side, got {len(p)} p and {len(q)} q samples"
        )
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError("features contain NaN or inf")
    if num_buckets == "auto":
        buckets = max(2, min(len(p), len(q)) // 10)
    elif isinstance(num_buckets, (int, np.integer)) and not isinstance(num_buckets, bool):
        buckets = int(num_buckets)
        if not 2 <= buckets <= len(p) + len(q):
            raise ValueError(f"num_buckets must be in [2, {len(p) + len(q)}] (p + q samples), got {buckets}")
    else:
        raise ValueError(f"num_buckets must be an int or 'auto', got {num_buckets!r}")
    out = mauve_lib.compute_mauve(
        p_features=p,
        q_features=q,
        device_id=-1,
        verbose=False,
        seed=seed,
        num_buckets=buckets,
        kmeans_num_redo=kmeans_num_redo,
        kmeans_max_iter=kmeans_max_iter,
    )
    return float(out.mauve)


# ---------------------------------------------------------------------------------------- token level
def token_accuracy(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Fraction of positions where the predicted id equals the target id, in [0, 1].

    ``mask`` (same shape; bool or 0/1) selects the positions that count, e.g. non-padding / generated
    positions. Raises ValueError on shape mismatch or when no position is selected.
    """
    predicted, target = torch.as_tensor(predicted), torch.as_tensor(target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted and target shapes differ: {tuple(predicted.shape)} vs {tuple(target.shape)}")
    hits = predicted == target
    if mask is None:
        total = hits.numel()
        correct = int(hits.sum())
    else:
        mask = torch.as_tensor(mask, device=hits.device)
        if mask.shape != hits.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from predicted/target {tuple(hits.shape)}")
        mask = mask.bool()
        total = int(mask.sum())
        correct = int((hits & mask).sum())
    if total == 0:
        raise ValueError("token_accuracy: no positions to score (empty input or all-false mask)")
    return correct / total


def _tokens(item: str | Sequence[Any]) -> list:
    """Whitespace tokens of a string; a pre-tokenized sequence (e.g. token ids) as a list."""
    if isinstance(item, str):
        return item.split()
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return item.reshape(-1).tolist()
    return list(item)


def distinct_n(texts: Sequence[str] | Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over all texts (whitespace tokens, case-sensitive).

    In [0, 1]; 1 = no n-gram repeats anywhere in the corpus, near 0 = highly repetitive / mode-collapsed
    output. Texts shorter than ``n`` tokens contribute no n-grams; if no text has any, the result is 0.0.
    An item may also be a pre-tokenized sequence (a list / 1-D array of token ids), used as is.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[Any, ...]] = []
    for text in texts:
        toks = _tokens(text)
        grams.extend(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def ngram_diversity(texts: Sequence[str] | Sequence[Sequence[int]], ns: Sequence[int] = (2, 3, 4)) -> float:
    """Su et al. (2022) diversity: ``prod_{n in ns} (unique n-grams / total n-grams)``, corpus-pooled.

    Each factor is :func:`distinct_n` over the whole list (n-grams of all texts pooled, whitespace tokens,
    case-sensitive; pre-tokenized id sequences are used as is), i.e. ``prod_n (1 - rep-n)`` as in SimCTG's
    ``measure_repetition_and_diversity``. In [0, 1]: 1.0 = no repeated 2/3/4-gram anywhere, lower = more
    repetition. If some n has no n-gram at all (every text shorter than n tokens) its factor, and so the
    result, is 0.0.
    """
    if isinstance(ns, int) or len(ns) == 0:
        raise ValueError(f"ns must be a non-empty sequence of n-gram orders, got {ns!r}")
    result = 1.0
    for n in ns:
        result *= distinct_n(texts, int(n))
    return result


def unigram_entropy(token_id_lists: Sequence[Sequence[int]] | torch.Tensor | np.ndarray,
                    ignore_ids: Collection[int] = ()) -> float:
    """Mean per-sample unigram entropy in nats (Dieleman et al. 2022; LDLM appendix E).

    For each sample, ``H = -sum_v p_v ln p_v`` with ``p_v = count of token v / sample length`` (the empirical
    token distribution of that one sample), then the plain mean over samples. Degenerate, repetitive samples
    score low (a single repeated token: 0); a sample of L distinct tokens scores ``ln L``, the maximum. Input:
    a list of id lists or a 2-D tensor/array (one row per sample). Ids in ``ignore_ids`` (e.g. padding) are
    dropped first. Samples with no tokens left are skipped; if none remain the result is 0.0.
    """
    entropies = sample_entropies(token_id_lists, ignore_ids)
    entropies = entropies[~np.isnan(entropies)]
    return float(np.mean(entropies)) if len(entropies) else 0.0


def sample_entropies(token_id_lists: Sequence[Sequence[int]] | torch.Tensor | np.ndarray,
                     ignore_ids: Collection[int] = ()) -> np.ndarray:
    """Each sample's unigram entropy in nats (the terms :func:`unigram_entropy` averages); NaN for a sample
    with no tokens left after dropping ``ignore_ids``."""
    if isinstance(token_id_lists, str):
        raise TypeError("token_id_lists must be a list of token-id sequences, got a str")
    if isinstance(token_id_lists, (torch.Tensor, np.ndarray)) and token_id_lists.ndim != 2:
        raise ValueError(f"a tensor/array of token ids must be 2-D (samples, tokens), got {token_id_lists.ndim}-D")
    ignore = {int(i) for i in ignore_ids}
    entropies = []
    for sample in token_id_lists:
        ids = [int(i) for i in _tokens(sample) if int(i) not in ignore]
        if not ids:
            entropies.append(math.nan)
            continue
        counts = np.fromiter(Counter(ids).values(), dtype=np.float64)
        p = counts / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return np.asarray(entropies, dtype=np.float64)


# --------------------------------------------------------------------------------------------- Gen-PPL
class GenPPLScorer:
    """Generative perplexity of texts under a causal LM (MDLM / LDLM "Gen PPL").

    The exact rule, per text: tokenize with the scorer's tokenizer without its automatic special tokens
    (``add_special_tokens=False``), prepend the tokenizer's BOS id if it has one (Gemma: ``<bos>``; a
    tokenizer without BOS, e.g. the SmolLM2 teacher's, gets nothing) and keep the first ``max_length``
    ids (BOS included). Every id after the first is predicted from the ids before it, so a text of L ids
    contributes ``L - 1`` predicted tokens with negative log-likelihood ``nll_i = -sum log p(x_t | x_<t)``
    (natural log, float32 logits). With BOS, the first real token is scored too; no EOS is appended.

    Pooling (micro-average, the MDLM/LDLM convention): ``gen_ppl = exp(sum_i nll_i / sum_i (L_i - 1))``
    over all scored texts, i.e. every token weighs the same and long texts weigh more. ``gen_ppl_per_text``
    is the macro-average ``mean_i exp(nll_i / (L_i - 1))`` (dominated by the worst texts; reported for
    reference). A text with no predicted token is skipped and counted in ``skipped``: an empty or
    whitespace-only text (``not text.strip()``), one that tokenizes to nothing, and, without a BOS, a
    single-token text. If every text is skipped both perplexities are NaN.

    Batching: texts are sorted by length and right-padded; padding is masked out of the attention and the
    loss, so a text's score does not depend on what it is batched with (up to float noise). A batch holds at
    most ``batch_size`` texts and, when that would exceed ``max_logits`` logit values (the vocabulary times
    the padded tokens; Gemma has 262k ids), fewer, down to one text.
    """

    def __init__(
        self,
        model: str,
        max_length: int = 1024,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_logits: int = 1 << 28,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_length < 2 or batch_size < 1 or max_logits < 1:
            raise ValueError(f"need max_length >= 2, batch_size >= 1 and max_logits >= 1, got {max_length}, "
                             f"{batch_size} and {max_logits}")
        self.model_name = str(model)
        self.batch_size = batch_size
        self.max_logits = max_logits
        self.device = torch.device(device)
        kwargs: dict[str, Any] = {"local_files_only": True} if Path(model).is_dir() else {}
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype, **kwargs).to(self.device).eval()
        self.max_length = position_limit(self.model.config, max_length)
        tok = self.tokenizer
        self.bos_id = tok.bos_token_id
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None))
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """The scored ids of each text: ``[BOS] + ids`` (BOS if the tokenizer has one), cut to max_length.

        An empty or whitespace-only text (``not text.strip()``), or one that tokenizes to nothing, gives ``[]``.
        """
        texts = list(texts)
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        prefix = [] if self.bos_id is None else [int(self.bos_id)]
        return [(prefix + list(x))[: self.max_length] if text.strip() and len(x) else []
                for text, x in zip(texts, ids)]

    def nll(self, texts: Sequence[str], on_batch: Callable[[int], Any] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """Per text: summed NLL (nats, float64) and number of predicted tokens (0 = skipped text).
        ``on_batch(k)`` is called after each forward pass with the number of texts it scored (progress)."""
        totals, counts, _ = self.score(texts, on_batch)
        return totals, counts

    @torch.inference_mode()
    def score(self, texts: Sequence[str], on_batch: Callable[[int], Any] | None = None,
              features: tuple[int, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`nll`, and with ``features=(max_length, pooling)`` also each text's MAUVE features exactly as
        ``LMFeaturizer.over(self, max_length, pooling)`` computes them, from the same forward pass: a causal
        LM's final hidden states at a text's first k positions do not depend on what follows, so one pass over
        the longer of a text's two encodings serves both (two passes only when neither encoding is a prefix
        of the other). ``on_batch(k)``: after each forward pass, with the number of texts it finished."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str")
        texts = list(texts)
        ids = self.encode(texts)
        totals = np.zeros(len(ids), dtype=np.float64)
        counts = np.array([max(len(x) - 1, 0) for x in ids], dtype=np.int64)
        feats = None
        # (text, ids to run, predicted-token span of ``ids`` (0: none), feature length (0: none))
        passes = [(i, ids[i], len(ids[i]), 0) for i in range(len(ids)) if counts[i] > 0]
        if features is not None:
            max_length, pooling = features
            featurizer = LMFeaturizer.over(self, max_length, pooling)
            feats = np.zeros((len(texts), featurizer.dim), dtype=np.float32)
            fids = featurizer._encode(texts)
            passes = []
            for i, (g, f) in enumerate(zip(ids, fids)):
                g = g if counts[i] > 0 else []
                if g[:len(f)] == f:
                    passes.append((i, g, len(g), len(f)))
                elif f[:len(g)] == g:
                    passes.append((i, f, len(g), len(f)))
                else:
                    passes += [(i, g, len(g), 0), (i, f, 0, len(f))]
        remaining = Counter(p[0] for p in passes)
        passes.sort(key=lambda p: len(p[1]))
        start = 0
        while start < len(passes):
            # Ascending lengths: the window's last row sets the width; shrink the batch until the logits fit.
            rows = min(self.batch_size, len(passes) - start)
            while rows > 1 and rows * len(passes[start + rows - 1][1]) * self.vocab_size > self.max_logits:
                rows -= 1
            batch = passes[start : start + rows]
            start += rows
            width = max(len(p[1]) for p in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            lengths = torch.tensor([len(p[1]) for p in batch])
            for row, (_, run, span, _) in enumerate(batch):
                input_ids[row, : len(run)] = torch.tensor(run, dtype=torch.long)
                # Position t predicts id t+1; padding and positions past the span predict nothing (ignore_index).
                targets[row, : max(span - 1, 0)] = input_ids[row, 1:span]
            mask = (torch.arange(width)[None] < lengths[:, None]).long()
            input_ids, mask, targets = input_ids.to(self.device), mask.to(self.device), targets.to(self.device)
            out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=features is not None)
            token_nll = torch.nn.functional.cross_entropy(  # full-width logits: the reshape is a view
                out.logits.float().reshape(-1, out.logits.shape[-1]), targets.reshape(-1), reduction="none",
                ignore_index=-100).view(targets.shape).double().sum(dim=1).cpu().numpy()
            feature_rows = [row for row, p in enumerate(batch) if p[3] > 0]
            if feature_rows:
                pooled = pool_hidden(out.hidden_states[-1][feature_rows],
                                     torch.tensor([batch[r][3] for r in feature_rows], device=self.device), pooling)
                feats[[batch[r][0] for r in feature_rows]] = pooled.cpu().numpy()
            done = 0
            for row, (i, _, span, _) in enumerate(batch):
                if span > 0:
                    totals[i] = token_nll[row]
                remaining[i] -= 1
                done += remaining[i] == 0
            if on_batch is not None:
                on_batch(int(done))
        return totals, counts, feats

    def __call__(self, texts: Sequence[str]) -> dict[str, float]:
        """``{"gen_ppl", "gen_ppl_per_text", "nll", "tokens", "texts", "skipped"}`` (see the class docstring).

        ``nll`` is the pooled mean NLL per predicted token (``ln gen_ppl``), ``tokens`` the number of predicted
        tokens, ``texts`` the number of scored texts and ``skipped`` the number of texts skipped.
        """
        totals, counts = self.nll(texts)
        scored = counts > 0
        n_tokens = int(counts.sum())
        if n_tokens == 0:
            mean_nll = ppl = per_text = math.nan
        else:
            mean_nll = float(totals.sum() / n_tokens)
            ppl = math.exp(mean_nll)
            per_text = float(np.mean(np.exp(totals[scored] / counts[scored])))
        return {"gen_ppl": ppl, "gen_ppl_per_text": per_text, "nll": mean_nll, "tokens": n_tokens,
                "texts": int(scored.sum()), "skipped": int((~scored).sum())}


def gen_ppl(
    texts: Sequence[str],
    model_dir: str,
    max_length: int = 1024,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Generative perplexity of ``texts`` under the causal LM in ``model_dir``: :class:`GenPPLScorer`'s result.

    The scorer is cached per ``(model_dir, max_length, device, dtype)``, so repeated calls load the model once.
    """
    key = (str(model_dir), int(max_length), str(device), str(dtype))
    scorer = _PPL_SCORERS.get(key)
    if scorer is None:
        scorer = _PPL_SCORERS[key] = GenPPLScorer(model_dir, max_length=max_length, batch_size=batch_size,
                                                  device=device, dtype=dtype)
    scorer.batch_size = batch_size
    return scorer(texts)
