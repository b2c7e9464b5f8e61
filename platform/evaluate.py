"""TextLDM's continuation protocol: split each held-out sample uniformly at 40-60% of its length, use the
prefix as the condition, generate the continuation and compare it with the true one (ROUGE-1/2/L,
BERTScore, MAUVE), plus the VAE's token reconstruction accuracy on the same held-out text.

Scorer models are config fields; the defaults are local (MiniLM for BERTScore, the embedded SmolLM2 for
MAUVE features), so numbers are not comparable with papers that use roberta-large / gpt2-large.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentlm.models.checkpoint import atomic_write_text
from latentlm.models.textldm import TextLDM, load_textldm

from . import assets, metrics
from .corpus import CorpusSpec, load_documents, split_documents
from .data import load_tokenizer, tokenize_windows

log = logging.getLogger(__name__)
EVAL_PROTOCOL = "textldm-continuation/v1"
# Everything that changes a number without changing the model. The sampler's steps and CFG scale are
# model-side choices recorded as sweep axes, so they are left out.
PROTOCOL_FIELDS = ("datasets", "num_samples", "min_tokens", "split_range", "seed", "bertscore_model",
                   "bertscore_num_layers", "mauve_model", "mauve_pooling", "mauve_max_length", "mauve_seed")


def protocol_digest(protocol: str, cfg, fields: tuple[str, ...]) -> str:
    """Hash of an evaluation protocol: its name, the ``cfg.eval`` fields that change numbers and the data
    split. Rows with different hashes are never ranked together."""
    values = {name: getattr(cfg.eval, name) for name in fields}
    split = {k: getattr(cfg.data, k) for k in ("seq_len", "valid_fraction", "test_fraction", "split_seed",
                                               "tokenizer")}
    blob = json.dumps({"protocol": protocol, "eval": values, "split": split}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def protocol_hash(cfg) -> str:
    return protocol_digest(EVAL_PROTOCOL, cfg, PROTOCOL_FIELDS)


@dataclass
class ContinuationSample:
    doc_index: int
    prompt_ids: list[int]
    target_ids: list[int]


def held_out_documents(cfg, dataset: str) -> list[str]:
    """The test split of ``dataset`` under the experiment's deterministic split."""
    d = cfg.data
    docs = load_documents(CorpusSpec(dataset, d.text_field))
    return split_documents(docs, d.valid_fraction, d.test_fraction, d.split_seed)["test"]


def continuation_samples(documents: list[str], tokenizer, cfg) -> list[ContinuationSample]:
    """Deterministic samples: first window of each document, split uniformly in eval.split_range."""
    e, seq_len = cfg.eval, cfg.data.seq_len
    rng = random.Random(e.seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    samples = []
    for index in order:
        ids = tokenizer(documents[index], add_special_tokens=False)["input_ids"][:seq_len - 1]
        if len(ids) < e.min_tokens:
            continue
        split = round(rng.uniform(*e.split_range) * len(ids))
        samples.append(ContinuationSample(index, ids[:split], ids[split:]))
        if len(samples) == e.num_samples:
            break
    if not samples:
        raise ValueError(f"eval: no held-out sample has >= {e.min_tokens} tokens")
    return samples


def strip_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Cut at the first EOS and drop ids outside a compact vocabulary (-1, not decodable)."""
    ids = ids[:ids.index(eos_id)] if eos_id in ids else ids
    return [i for i in ids if i >= 0]


@torch.no_grad()
def generate_continuations(model: TextLDM, samples: list[ContinuationSample], cfg, eos_id: int) -> list[list[int]]:
    """Generate each sample's continuation (up to the window's end, cut at EOS); batched by prompt length."""
    e, seq_len = cfg.eval, cfg.data.seq_len
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(e.seed)
    outputs: dict[int, list[int]] = {}
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_length.setdefault(len(s.prompt_ids), []).append(i)
    for prompt_len, indices in sorted(by_length.items()):
        for start in range(0, len(indices), e.batch_size):
            chunk = indices[start:start + e.batch_size]
            prompts = torch.tensor([samples[i].prompt_ids for i in chunk], device=device)
            ids = model.generate(prompts, seq_len - prompt_len, steps=e.steps, cfg_scale=e.cfg_scale,
                                 grid=e.grid, generator=generator)
            for i, row in zip(chunk, ids.tolist()):
                outputs[i] = strip_at_eos(row, eos_id)
    return [outputs[i] for i in range(len(samples))]


@torch.no_grad()
def reconstruction_accuracy(model: TextLDM, documents: list[str], tokenizer, cfg, max_windows: int = 256) -> float:
    w = tokenize_windows(documents, tokenizer, cfg.data.seq_len, max_windows)
    device = next(model.parameters()).device
    tokens = torch.from_numpy(w.tokens).long().to(device)
    mask = torch.arange(tokens.shape[1], device=device)[None] < torch.from_numpy(w.lengths).to(device)[:, None]
    predicted = torch.cat([model.reconstruct(tokens[i:i + 64]) for i in range(0, len(tokens), 64)])
    return metrics.token_accuracy(predicted, tokens, mask)


def evaluate_checkpoint(cfg, checkpoint_dir: str, out_dir: Path, model=None) -> dict[str, dict[str, float]]:
    """Run the continuation protocol on every eval dataset; writes samples and metrics under out_dir.
    ``model``: any object with TextLDM's ``generate``/``reconstruct`` (default: the TextLDM checkpoint)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.eval.seed)
    if model is None:
        model = load_textldm(checkpoint_dir, use_ema=cfg.eval.use_ema, device=device)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    featurizer = metrics.LMFeaturizer(assets.resolve_model(cfg.eval.mauve_model), max_length=cfg.eval.mauve_max_length,
                                      pooling=cfg.eval.mauve_pooling, device=device)
    results: dict[str, dict[str, float]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for dataset in cfg.eval.datasets:
        t0 = time.time()
        docs = held_out_documents(cfg, dataset)
        samples = continuation_samples(docs, tokenizer, cfg)
        generated = generate_continuations(model, samples, cfg, tokenizer.eos_token_id)
        gen_text = tokenizer.batch_decode(generated, skip_special_tokens=True)
        ref_text = tokenizer.batch_decode([s.target_ids for s in samples], skip_special_tokens=True)
        prompts = tokenizer.batch_decode([s.prompt_ids for s in samples], skip_special_tokens=True)
        row = {**{k: v for k, v in metrics.rouge(gen_text, ref_text).items()},
               "bertscore": metrics.bertscore(gen_text, ref_text, assets.resolve_model(cfg.eval.bertscore_model),
                                              cfg.eval.bertscore_num_layers, device=device),
               "mauve": metrics.mauve(featurizer(gen_text), featurizer(ref_text), seed=cfg.eval.mauve_seed),
               "recon_acc": reconstruction_accuracy(model, docs, tokenizer, cfg),
               "gen_tokens": float(np.mean([len(g) for g in generated])),
               "samples": float(len(samples)), "eval_seconds": round(time.time() - t0, 1)}
        results[dataset] = row
        lines = [json.dumps({"prompt": p, "generated": g, "reference": r}) for p, g, r in
                 zip(prompts, gen_text, ref_text)]
        name = dataset.replace(":", "_").replace("/", "_")
        atomic_write_text(out_dir / f"samples_{name}.jsonl", "\n".join(lines) + "\n")
        log.info("eval %s: %s", dataset, row)
    atomic_write_text(out_dir / "metrics.json", json.dumps({"protocol": EVAL_PROTOCOL, "results": results},
                                                            indent=2) + "\n")
    return results
