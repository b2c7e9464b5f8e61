"""The unconditional task of the evaluation protocol (LDLM's; the AR baseline matched to LDLM uses it too):
generate ``num_samples`` full windows per sampling seed (LDLM: from Gaussian noise; any window sampler plugs
into ``evaluate_windows``) and score every token of them with the shared harness (``harness.py``: Gen-PPL
under a scorer LM that is not the token encoder, MAUVE against full held-out windows over sampling x k-means
seeds, unigram entropy, n-gram diversity; mean, std and bootstrap CI), next to the reference rows: the human
ceiling (windows of a second, disjoint set of held-out documents) and the must-lose floors. Both sides are
fixed-length windows of ``data.seq_len`` tokens: held-out documents are packed (concatenated with EOS) and
cut like the packed training data. Plus, for LDLM, the latent-interpolation smoothness probe: decode points
on the straight line between the latents of two real texts and score them with the same scorer (a smooth
latent space keeps Gen-PPL low along the whole path); a sampler without latents skips it.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentlm.models.checkpoint import atomic_write_text, load_tensors
from latentlm.models.ldlm import LDLM, PostTrainedDecoder
from latentlm.models.token_encoder import HiddenStats, TokenEncoder
from latentlm.models.vocab import CompactVocab

from . import assets, floors, harness
from .data import document_ids, load_tokenizer, packed_windows
from .evaluate import (Evaluation, ProgressionRecorder, accepts_on_step, held_out_documents, training_token_counts,
                       write_metrics)
from .progress import progress
from .protocol import EvalProtocol
from .train_ldlm import load_joint_model

log = logging.getLogger(__name__)


class LDLMGenerator:
    """A trained LDLM for inference: samples latents, decodes them (jointly trained or post-trained token
    decoder) and maps ids back to the tokenizer's vocabulary."""
    generator_device = "cpu"  # latent noise is drawn on the CPU and moved: samples do not depend on the device

    def __init__(self, cfg, joint_checkpoint: str, post_checkpoint: str | None = None, device="cpu"):
        self.cfg, self.device = cfg, device
        self.model: LDLM = load_joint_model(joint_checkpoint, cfg, device, use_ema=cfg.eval.use_ema)
        d = Path(joint_checkpoint)
        self.vocab = CompactVocab.from_checkpoint(d)
        self.vocab = self.vocab.to(device) if self.vocab is not None else None
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
        """``n`` windows of tokenizer ids; ``on_step(step, ids)`` sees the decoded latents after each step."""
        decoded = None if on_step is None else lambda step, z: on_step(step, self.decode(z))
        return self.decode(self.model.sample_latents(n, steps, generator, grid, self.device, decoded))


def generate_ids(gen, tokenizer, seed: int, cfg, recorder: ProgressionRecorder | None = None) -> list[list[int]]:
    """``num_samples`` full-window generations with sampling seed ``seed``. ``gen`` is any window sampler:
    ``sample(n, steps, generator, grid[, on_step])`` -> (n, data.seq_len) tokenizer ids, ``device`` (the
    sampler precision's) and ``generator_device`` (where the seeded generator draws); ``recorder`` follows
    sample 0 through a sampler that reports its steps (``on_step``)."""
    e = cfg.eval
    generator = torch.Generator(device=gen.generator_device).manual_seed(seed)
    follow = recorder is not None and accepts_on_step(gen.sample)
    ids: list[list[int]] = []
    with progress(e.num_samples, f"generate seed {seed}", log, unit="seq") as bar:
        for start in range(0, e.num_samples, e.batch_size):
            n = min(e.batch_size, e.num_samples - start)
            extra = {"on_step": recorder} if follow and start == 0 else {}
            with harness.sampler_precision(e.dtype, gen.device):
                rows = gen.sample(n, e.steps, generator, e.grid, **extra)
            if tuple(rows.shape) != (n, cfg.data.seq_len):
                raise ValueError(f"{type(gen).__name__}.sample returned shape {tuple(rows.shape)} for {n} windows "
                                 f"of {cfg.data.seq_len} tokens")
            ids.extend(rows.tolist())
            bar.update(n)
    return ids


def reference_windows(documents: list[str], tokenizer, seq_len: int, n: int
                      ) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
    """Held-out documents packed into full windows of ``seq_len`` tokens, as the training data is: the first
    ``n`` windows (the references) and up to ``n`` further windows that share no document with them (the
    human ceiling's). Returns both id lists and the references' token windows."""
    w = packed_windows(document_ids(documents, tokenizer), range(len(documents)), seq_len)
    used = {doc for docs in w.segment_docs[:n] for doc in docs}
    others = [i for i in range(n, len(w.tokens)) if not used & set(w.segment_docs[i])][:n]
    return w.tokens[:n].tolist(), w.tokens[others].tolist(), w.tokens[:n]


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
        curve.append(scorer(harness.render(tokenizer, ids.tolist()))["gen_ppl"])
    return curve


def latent_probe(gen: LDLMGenerator, cfg) -> Callable:
    """``interpolation_probe`` over ``gen``'s latents as ``evaluate_windows`` calls it: (reference windows,
    tokenizer, Gen-PPL scorer) -> curve; the frozen token encoder that maps text to latents is loaded per call."""
    def probe(windows: np.ndarray, tokenizer, scorer) -> list[float]:
        encoder = TokenEncoder(assets.resolve_model(cfg.token_encoder.model), cfg.token_encoder.layer, gen.stats,
                               device=gen.device)
        return interpolation_probe(gen, encoder, windows, tokenizer, scorer, cfg.eval.interpolation_pairs,
                                   cfg.eval.interpolation_points)
    return probe


def evaluate_ldlm(cfg, joint_checkpoint: str, post_checkpoint: str | None, out_dir: Path,
                  ceiling_cache: Path | None = None, token_counts: str | None = None) -> Evaluation:
    """A trained LDLM under the unconditional protocol, its latent-interpolation probe included."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = LDLMGenerator(cfg, joint_checkpoint, post_checkpoint, device)
    return evaluate_windows(cfg, gen, out_dir, ceiling_cache, token_counts, latent_probe(gen, cfg))


def evaluate_windows(cfg, gen, out_dir: Path, ceiling_cache: Path | None = None, token_counts: str | None = None,
                     probe: Callable | None = None) -> Evaluation:
    """The unconditional protocol over every eval dataset (MAUVE references) for any window sampler ``gen``
    (see ``generate_ids``); writes samples, metrics and evidence. ``ceiling_cache``: a directory the reference
    rows are shared through (see ``harness.score_reference``); ``token_counts``: the data artifact's
    training-token counts (floors); ``probe``: the latent-interpolation probe (see ``latent_probe``), or None
    for a sampler without latents, which skips it (no ``interp_ppl_*`` metrics, and metrics.json says why)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    e = cfg.eval
    protocol = EvalProtocol.from_config(cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    scorers = harness.Scorers(e, device)
    counts = training_token_counts(cfg, tokenizer, token_counts) if e.floors else None
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    recorder = ProgressionRecorder(e.progression_steps, e.steps, tokenizer)
    generations = {seed: generate_ids(gen, tokenizer, seed, cfg, recorder if index == 0 else None)
                   for index, seed in enumerate(e.sampling_seeds)}
    generation_seconds = time.time() - t0
    evaluation = Evaluation(protocol, {})
    per_seed: dict[str, dict] = {}
    curve: list[float] | None = None
    skipped = None if probe is not None else f"{type(gen).__name__} has no latent space to interpolate in"
    if skipped:
        log.info("eval: latent-interpolation probe skipped: %s", skipped)
    for index, dataset in enumerate(e.datasets):
        docs = held_out_documents(cfg, dataset)
        refs, others, ref_windows = reference_windows(docs, tokenizer, cfg.data.seq_len, e.num_samples)
        if len(refs) < e.num_samples:
            raise ValueError(f"eval.num_samples: {dataset} has only {len(refs)} held-out windows of "
                             f"{cfg.data.seq_len} tokens, {e.num_samples} requested")
        log.info("eval %s: scoring %d windows x %d seeds", dataset, len(refs), len(generations))
        scored = harness.score(e, scorers, tokenizer, generations, refs, paired=False, cache_dir=ceiling_cache,
                               label=dataset)
        row, per_seed[dataset] = scored.row, scored.per_seed
        # the same scorer on real text: the floor to aim at
        row["reference_gen_ppl"] = scorers.genppl(harness.render(tokenizer, refs))["gen_ppl"]
        if index == 0 and probe is not None:
            curve = probe(ref_windows, tokenizer, scorers.genppl)
        if curve:
            row["interp_ppl_mean"], row["interp_ppl_max"] = float(np.mean(curve)), float(np.max(curve))
        row.update({"sample_seconds_per_seq": generation_seconds / (len(e.sampling_seeds) * e.num_samples),
                    "eval_seconds": round(time.time() - t0, 1)})
        evaluation.results[dataset], evaluation.evidence[dataset] = row, scored.evidence
        rows: dict[str, harness.ReferenceRow] = {}
        if e.human_ceiling and len(others) == len(refs):
            rows["human-ceiling"] = harness.human_ceiling(refs, others)
        if e.floors:
            rows.update({name: harness.ReferenceRow(floor, refs, False) for name, floor in floors.window_floors(
                len(refs), cfg.data.seq_len, counts, list(e.sampling_seeds)).items()})
        evaluation.references[dataset] = harness.score_reference_rows(e, scorers, tokenizer, rows, ceiling_cache,
                                                                      protocol.scoring_hash)
        if recorder.texts:
            evaluation.progressions[dataset] = {"prompt": "", "reference": "", "total_steps": e.steps,
                                                "steps": recorder.steps, "texts": recorder.texts}
        log.info("eval %s: %s", dataset, {k: round(v, 4) for k, v in row.items()
                                          if not k.endswith(("_ci_low", "_ci_high"))})
    lines = [json.dumps({"seed": seed, "text": text}) for seed, ids in generations.items()
             for text in harness.render(tokenizer, ids)]
    atomic_write_text(out_dir / "samples.jsonl", "\n".join(lines) + "\n")
    write_metrics(out_dir, evaluation, per_seed=per_seed, interpolation_curve=curve,
                  **({"interpolation_skipped": skipped} if skipped else {}))
    return evaluation
