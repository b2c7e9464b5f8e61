"""LDLM's unconditional protocol: generate ``num_samples`` full windows per seed from Gaussian noise, cut
each at its first EOS, and score the set with

* Gen-PPL under a scorer LM that is not the token encoder (``metrics.GenPPLScorer``: BOS-prefixed,
  micro-averaged over all predicted tokens),
* MAUVE against held-out windows of each eval dataset, references length-matched to the generations
  (the first ``seq_len`` tokens of each held-out document, cut at EOS like the generations),
* unigram entropy (per sample, averaged) and n-gram diversity (Su et al., corpus level),

each reported as mean and standard deviation over the seeds; plus the latent-interpolation smoothness
probe: decode points on the straight line between the latents of two real texts and score them with the
same scorer (a smooth latent space keeps Gen-PPL low along the whole path).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from latentlm.models.checkpoint import atomic_write_text, load_tensors
from latentlm.models.ldlm import LDLM, PostTrainedDecoder
from latentlm.models.token_encoder import HiddenStats, TokenEncoder
from latentlm.models.vocab import CompactVocab

from . import assets, metrics
from .data import load_tokenizer, tokenize_windows
from .evaluate import held_out_documents, protocol_digest, strip_at_eos
from .train_ldlm import load_joint_model

log = logging.getLogger(__name__)
UNCOND_PROTOCOL = "ldlm-unconditional/v1"
PROTOCOL_FIELDS = ("datasets", "num_samples", "seeds", "scorer_model", "scorer_max_length", "mauve_model",
                   "mauve_pooling", "mauve_max_length", "mauve_seed", "diversity_ns", "interpolation_pairs",
                   "interpolation_points")


def uncond_protocol_hash(cfg) -> str:
    return protocol_digest(UNCOND_PROTOCOL, cfg, PROTOCOL_FIELDS)


class LDLMGenerator:
    """A trained LDLM for inference: samples latents, decodes them (jointly trained or post-trained token
    decoder) and maps ids back to the tokenizer's vocabulary."""

    def __init__(self, cfg, joint_checkpoint: str, post_checkpoint: str | None = None, device="cpu"):
        self.cfg, self.device = cfg, device
        self.model: LDLM = load_joint_model(joint_checkpoint, cfg, device, use_ema=cfg.eval.use_ema)
        d = Path(joint_checkpoint)
        self.vocab = (CompactVocab.from_tensors(load_tensors(d / "vocab.safetensors")).to(device)
                      if (d / "vocab.safetensors").is_file() else None)
        self.stats = HiddenStats(cfg.ldlm.hidden_size)
        self.stats.load_state_dict(load_tensors(d / "hidden_stats.safetensors"))
        self.post = None
        if post_checkpoint is not None:
            self.post = PostTrainedDecoder(cfg.ldlm, cfg.post_decoder.layers, cfg.post_decoder.source)
            self.post.load_state_dict(load_tensors(Path(post_checkpoint) / "post_decoder.safetensors"))
            self.post = self.post.to(device).eval()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Clean latents -> tokenizer ids (-1 for a compact vocabulary's unknown class)."""
        logits = self.post(z, self.model.decoder) if self.post is not None else \
            self.model.token_decoder(self.model.decoder(z))
        ids = logits.argmax(-1)
        return self.vocab.decode(ids) if self.vocab is not None else ids

    @torch.no_grad()
    def sample(self, n: int, steps: int, generator: torch.Generator, grid: str = "log_snr", on_step=None):
        return self.decode(self.model.sample_latents(n, steps, generator, grid, self.device, on_step))


def generate_texts(gen: LDLMGenerator, tokenizer, n: int, seed: int, cfg) -> tuple[list[str], list[list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    ids: list[list[int]] = []
    for start in range(0, n, cfg.eval.batch_size):
        rows = gen.sample(min(cfg.eval.batch_size, n - start), cfg.eval.steps, generator, cfg.eval.grid)
        ids.extend(strip_at_eos(row, tokenizer.eos_token_id) for row in rows.tolist())
    return tokenizer.batch_decode(ids, skip_special_tokens=True), ids


def reference_windows(documents: list[str], tokenizer, seq_len: int, n: int) -> tuple[list[str], np.ndarray]:
    """Length-matched references: the first ``seq_len`` tokens of the first ``n`` held-out documents, cut at
    EOS exactly like the generations. Returns their texts and token windows."""
    w = tokenize_windows(documents, tokenizer, seq_len, max_windows=n, first_window_only=True)
    ids = [strip_at_eos(row[:length].tolist(), tokenizer.eos_token_id) for row, length in zip(w.tokens, w.lengths)]
    return tokenizer.batch_decode(ids, skip_special_tokens=True), w.tokens


@torch.no_grad()
def interpolation_probe(gen: LDLMGenerator, encoder: TokenEncoder, windows: np.ndarray, tokenizer, scorer,
                        pairs: int, points: int) -> list[float]:
    """Gen-PPL (pooled over ``pairs`` pairs of real texts) at each of ``points`` evenly spaced points on the
    straight line between the two texts' latents; the ends are the texts' own reconstructions."""
    if pairs == 0 or len(windows) < 2 * pairs:
        return []
    tokens = torch.from_numpy(windows[: 2 * pairs].astype(np.int64)).to(gen.device)
    z = gen.model.encode(encoder(tokens))
    a, b = z[0::2], z[1::2]
    curve = []
    for lam in torch.linspace(0, 1, points).tolist():
        ids = gen.decode((1 - lam) * a + lam * b)
        texts = tokenizer.batch_decode([strip_at_eos(r, tokenizer.eos_token_id) for r in ids.tolist()],
                                       skip_special_tokens=True)
        curve.append(scorer(texts)["gen_ppl"])
    return curve


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def evaluate_ldlm(cfg, joint_checkpoint: str, post_checkpoint: str | None, out_dir: Path) -> dict[str, dict[str, float]]:
    """The unconditional protocol over every eval dataset (MAUVE references); writes samples and metrics."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    e = cfg.eval
    gen = LDLMGenerator(cfg, joint_checkpoint, post_checkpoint, device)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    scorer = metrics.GenPPLScorer(assets.resolve_model(e.scorer_model), max_length=e.scorer_max_length,
                                  batch_size=e.batch_size, device=device)
    featurizer = metrics.LMFeaturizer(assets.resolve_model(e.mauve_model), max_length=e.mauve_max_length,
                                      pooling=e.mauve_pooling, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    per_seed: list[dict[str, float]] = []
    generations: dict[int, list[str]] = {}
    for seed in e.seeds:
        texts, ids = generate_texts(gen, tokenizer, e.num_samples, seed, cfg)
        generations[seed] = texts
        per_seed.append({**{k: v for k, v in scorer(texts).items() if k in ("gen_ppl", "gen_ppl_per_text")},
                         "entropy": metrics.unigram_entropy(ids),
                         "diversity": metrics.ngram_diversity(texts, e.diversity_ns),
                         "gen_tokens": float(np.mean([len(x) for x in ids]))})
    generation_seconds = time.time() - t0
    features = {seed: featurizer(texts) for seed, texts in generations.items()}
    results: dict[str, dict[str, float]] = {}
    curve: list[float] = []
    for index, dataset in enumerate(e.datasets):
        docs = held_out_documents(cfg, dataset)
        ref_texts, ref_windows = reference_windows(docs, tokenizer, cfg.data.seq_len, e.num_samples)
        ref_features = featurizer(ref_texts)
        row: dict[str, float] = {}
        for name in per_seed[0]:
            row[name], row[f"{name}_std"] = mean_std([s[name] for s in per_seed])
        row["mauve"], row["mauve_std"] = mean_std([metrics.mauve(ref_features, features[s], seed=e.mauve_seed)
                                                   for s in e.seeds])
        row["reference_gen_ppl"] = scorer(ref_texts)["gen_ppl"]  # the same scorer on real text: the floor to aim at
        if index == 0:
            encoder = TokenEncoder(assets.resolve_model(cfg.token_encoder.model), cfg.token_encoder.layer, gen.stats,
                                   device=device)
            curve = interpolation_probe(gen, encoder, ref_windows, tokenizer, scorer, e.interpolation_pairs,
                                        e.interpolation_points)
            del encoder
        if curve:
            row["interp_ppl_mean"], row["interp_ppl_max"] = float(np.mean(curve)), float(np.max(curve))
        row.update({"samples": float(e.num_samples), "seeds": float(len(e.seeds)),
                    "sample_seconds_per_seq": generation_seconds / (len(e.seeds) * e.num_samples),
                    "eval_seconds": round(time.time() - t0, 1)})
        results[dataset] = row
        log.info("eval %s: %s", dataset, row)
    lines = [json.dumps({"seed": seed, "text": text}) for seed, texts in generations.items() for text in texts]
    atomic_write_text(out_dir / "samples.jsonl", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "metrics.json", json.dumps(
        {"protocol": UNCOND_PROTOCOL, "results": results, "per_seed": per_seed, "interpolation_curve": curve},
        indent=2) + "\n")
    return results
