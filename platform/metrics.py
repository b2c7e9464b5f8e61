"""Text metrics for the continuation protocol: lists of strings (or token ids) in, numbers out.

Everything here runs offline on CPU (or a given torch device) and imports no Ray:

* :func:`rouge`: n-gram / LCS overlap with the reference (``rouge_score``), each in [0, 1].
* :func:`bertscore`: mean BERTScore F1 against the reference with a *local* encoder directory.
* :class:`LMFeaturizer` + :func:`mauve`: distribution-level similarity of generations vs. human text.
* :func:`token_accuracy`: exact-match rate of predicted token ids.
* :func:`distinct_n`: lexical diversity (unique / total whitespace n-grams).

The heavy libraries (``bert_score``, ``mauve``/faiss, ``transformers``) are imported lazily, so importing this
module is cheap.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "rouge",
    "bertscore",
    "LMFeaturizer",
    "mauve",
    "token_accuracy",
    "distinct_n",
    "MIN_MAUVE_SAMPLES",
]

#: MAUVE needs a handful of points per side for PCA + k-means to mean anything.
MIN_MAUVE_SAMPLES = 4

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_ROUGE_SCORER: Any = None
# (model, num_layers, device) -> bert_score.BERTScorer; avoids reloading the encoder on every call.
_BERT_SCORERS: dict[tuple[str, int, str], Any] = {}


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
    global _ROUGE_SCORER
    _check_pairs(predictions, references)
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(_ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = _ROUGE_SCORER.score(ref, pred)  # rouge_score's order is (target, prediction)
        for key in _ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: totals[key] / len(predictions) for key in _ROUGE_TYPES}


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
    _check_pairs(predictions, references)
    keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    f1 = np.zeros(len(predictions), dtype=np.float64)
    if keep:
        scorer = _bert_scorer(model, num_layers, batch_size, device)
        _, _, f = scorer.score(
            [predictions[i] for i in keep], [references[i] for i in keep], batch_size=batch_size
        )
        f1[keep] = f.detach().cpu().double().numpy()
    return float(f1.mean())


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
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name, **kwargs)
        try:
            net = AutoModel.from_pretrained(self.model_name, dtype=dtype, **kwargs)
        except ValueError:  # config class not mapped by AutoModel: take the causal LM's base model
            net = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype, **kwargs).base_model
        self.model = net.to(self.device).eval()

        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.max_length = min(max_length, limit) if limit else max_length
        tok = self.tokenizer
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None))
        self.fill_id = next(
            (i for i in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, tok.unk_token_id, 0) if i is not None)
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [list(x) if len(x) > 0 else [self.fill_id] for x in ids]

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
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            if self.pooling == "last":
                last = mask.sum(dim=1) - 1  # right padding: index of the last real token
                pooled = hidden[torch.arange(len(idx), device=hidden.device), last]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1)
            out[idx] = pooled.cpu().numpy()
        return out


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


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over all texts (whitespace tokens, case-sensitive).

    In [0, 1]; 1 = no n-gram repeats anywhere in the corpus, near 0 = highly repetitive / mode-collapsed
    output. Texts shorter than ``n`` tokens contribute no n-grams; if no text has any, the result is 0.0.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        toks = text.split()
        grams.extend(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0
