"""The unconditional task of the evaluation protocol (LDLM's; the AR baseline matched to LDLM uses it too):
generate ``num_samples`` full windows per sampling seed (LDLM: from Gaussian noise; any window sampler plugs
into ``evaluate_windows``) and score every token of them with the shared harness (``harness.py``: Gen-PPL
under a scorer LM that is not the token encoder, MAUVE against full held-out windows over sampling x k-means
seeds, unigram entropy, n-gram diversity; mean, std and bootstrap CI), next to the reference rows: the human
ceiling (windows of a second, disjoint set of held-out documents) and the must-lose floors. Both sides are
fixed-length windows of ``data.seq_len`` tokens: held-out documents are packed (concatenated with EOS) and
cut like the packed training data. Plus, when the family passes one (LDLM: ``methods/ldlm/pipeline.py``), the
latent-interpolation smoothness probe: decode points on the straight line between the latents of two real texts
and score them with the same scorer (a smooth latent space keeps Gen-PPL low along the whole path); a sampler
without latents skips it.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentlm.models.checkpoint import atomic_write_text
from latentlm.platform.data.windows import document_ids, packed_windows
from latentlm.platform import storage
from latentlm.platform.training.progress import progress

from . import floors, harness
from .continuation import (Evaluation, ProgressionRecorder, accepts_on_step, held_out_documents, scoring_setup,
                           write_metrics)

log = logging.getLogger(__name__)


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


def evaluate_windows(cfg, gen, out_dir: Path, ceiling_cache: Path | None = None, token_counts: str | None = None,
                     probe: Callable | None = None) -> Evaluation:
    """The unconditional protocol over every eval dataset (MAUVE references) for any window sampler ``gen``
    (see ``generate_ids``); writes samples, metrics and evidence. ``ceiling_cache``: a directory the reference
    rows are shared through (see ``harness.score_reference``); ``token_counts``: the data artifact's
    training-token counts (floors); ``probe``: the latent-interpolation probe (see LDLM's ``latent_probe``), or None
    for a sampler without latents, which skips it (no ``interp_ppl_*`` metrics, and metrics.json says why)."""
    e = cfg.eval
    protocol, tokenizer, scorers, counts = scoring_setup(cfg, token_counts)
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
    storage.publish(out_dir)  # samples, metrics and evidence: to the store when the run dir is on one
    return evaluation
