"""The continuation task of the evaluation protocol (TextLDM's; Cola DLM and the AR baseline use it too):
take the first window of each held-out document, split it uniformly at 40-60% of its length, use the prefix
as the condition and generate exactly as many tokens as the reference continuation holds, with every
sampling seed; score with the shared harness (``harness.py``: ROUGE-1/2/L, BERTScore, MAUVE over sampling x
k-means seeds, Gen-PPL, entropy, diversity, each with its bootstrap CI), plus the VAE's token
reconstruction accuracy when the model has one, the reference rows (a human ceiling: continuations of a
second set of held-out documents; the must-lose floors of ``floors.py``) and the denoising progression of
one sample. Continuations shorter than the protocol's floor (``eval.min_target_tokens``) are skipped.

Scorer models are protocol fields; the defaults are local (MiniLM for BERTScore, Gemma-3-270m for Gen-PPL and
MAUVE features, from one forward pass; not the SmolLM2 teacher that REPA aligns to), so numbers are not
comparable with papers that use roberta-large / gpt2-large.
"""
from __future__ import annotations

import inspect
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import torch

from latentlm.models.checkpoint import atomic_write_text
from latentlm.platform.data.corpus import CorpusSpec, load_documents, split_documents
from latentlm.platform.data.windows import document_ids, load_token_counts, load_tokenizer, tokenize_windows
from latentlm.platform import storage
from latentlm.platform.training.progress import progress

from . import floors, harness, metrics
from .protocol import EvalProtocol

log = logging.getLogger(__name__)
COUNT_DOCUMENTS = 5000  # train documents counted for the unigram floor when no data artifact is at hand


@dataclass
class Evaluation:
    """What one evaluation produced, per dataset: the model's metrics and per-prompt evidence, the reference
    rows (``human-ceiling`` and the ``floor:*`` rows, each a ``harness.Scored``), one denoising progression
    (when the model exposes its sampler steps), and the protocol it ran under."""
    protocol: EvalProtocol
    results: dict[str, dict[str, float]]
    evidence: dict[str, dict] = field(default_factory=dict)
    references: dict[str, dict[str, harness.Scored]] = field(default_factory=dict)
    progressions: dict[str, dict] = field(default_factory=dict)
    fewshot: dict[str, Any] = field(default_factory=dict)   # task -> fewshot.TaskResult (eval.fewshot.tasks)

    @property
    def ceiling(self) -> dict[str, dict[str, float]]:
        return {d: rows["human-ceiling"].row for d, rows in self.references.items() if "human-ceiling" in rows}


def write_metrics(out_dir: Path, evaluation: Evaluation, **extra) -> None:
    atomic_write_text(out_dir / "metrics.json", json.dumps(
        {"protocol": evaluation.protocol.to_dict(), "results": evaluation.results,
         "references": {d: {name: r.row for name, r in rows.items()} for d, rows in evaluation.references.items()},
         "progressions": evaluation.progressions,
         "fewshot": {task: result.summary() for task, result in evaluation.fewshot.items()}, **extra},
        indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "evidence.json", json.dumps(
        {"results": evaluation.evidence,
         "references": {d: {name: r.evidence for name, r in rows.items()} for d, rows in evaluation.references.items()}},
        default=str) + "\n")


@dataclass
class ContinuationSample:
    doc_index: int
    prompt_ids: list[int]
    target_ids: list[int]
    tail_ids: list[int]   # the document from the split on, beyond the window (reference rows borrow from it)


def held_out_documents(cfg, dataset: str) -> list[str]:
    """The documents ``dataset`` contributes: the test split when it is the training corpus (the deterministic
    split), all of it otherwise (a dataset named only in ``eval.datasets`` was never trained on)."""
    d = cfg.data
    docs = load_documents(CorpusSpec(dataset, d.text_field))
    if dataset != d.corpus:
        return docs
    return split_documents(docs, d.valid_fraction, d.test_fraction, d.split_seed)["test"]


def continuation_samples(documents: list[str], tokenizer, cfg, count: int | None = None) -> list[ContinuationSample]:
    """Deterministic samples: first window of each document (shuffled by eval.sample_seed), split uniformly in
    eval.split_range; documents under eval.min_tokens and continuations under the target floor are skipped.
    Up to ``count`` (default num_samples)."""
    e, seq_len = cfg.eval, cfg.data.seq_len
    count = e.num_samples if count is None else count
    floor = e.target_floor(seq_len)
    rng = random.Random(e.sample_seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    samples = []
    for index in order:
        full = tokenizer(documents[index], add_special_tokens=False)["input_ids"]
        ids = full[:seq_len - 1]
        if len(ids) < e.min_tokens:
            continue
        split = round(rng.uniform(*e.split_range) * len(ids))
        if len(ids) - split < floor:
            continue
        samples.append(ContinuationSample(index, ids[:split], ids[split:], full[split:]))
        if len(samples) == count:
            break
    if not samples:
        raise ValueError(f"eval: no held-out document has >= {e.min_tokens} tokens and a continuation of >= "
                         f"{floor} tokens (eval.min_tokens, eval.min_target_tokens)")
    return samples


def strip_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Cut at the first EOS and drop ids outside a compact vocabulary (-1, not decodable)."""
    ids = ids[:ids.index(eos_id)] if eos_id in ids else ids
    return [i for i in ids if i >= 0]


class ProgressionRecorder:
    """Collects the rendered text of one row of a batch after chosen sampler steps (the leaderboard's
    denoising-progression view)."""

    def __init__(self, steps: list[int], total_steps: int, tokenizer, row: int = 0):
        self.wanted = {s for s in steps if s <= total_steps} | {total_steps}  # the final text always
        self.row, self.tokenizer = row, tokenizer
        self.steps: list[int] = []
        self.texts: list[str] = []

    def __call__(self, step: int, ids: torch.Tensor) -> None:
        if step in self.wanted and (not self.steps or step > self.steps[-1]):  # one sampler pass only
            self.steps.append(step)
            row = ids[self.row]  # a tensor row, or one id list per sample (ragged batches)
            self.texts.append(harness.render(self.tokenizer, [row.tolist() if torch.is_tensor(row) else list(row)])[0])


def accepts_on_step(fn) -> bool:
    return "on_step" in inspect.signature(fn).parameters


@torch.no_grad()
def generate_continuations(model, samples: list[ContinuationSample], cfg, seed: int,
                           recorder: ProgressionRecorder | None = None, label: str = "") -> list[list[int]]:
    """Generate each sample's continuation, exactly as many tokens as its reference, with sampling seed
    ``seed``; in the protocol's batch size and precision, batched in index order by a model that takes mixed
    lengths (``generate_ragged``), else by (prompt length, target length).
    ``recorder`` follows sample 0."""
    e = cfg.eval
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # for samplers that draw from the global generator
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs: dict[int, list[int]] = {}
    ragged = hasattr(model, "generate_ragged")  # one batch of mixed lengths (TextLDM), in index order
    if ragged:
        batches = [list(range(i, min(i + e.batch_size, len(samples)))) for i in range(0, len(samples), e.batch_size)]
    else:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault((len(s.prompt_ids), len(s.target_ids)), []).append(i)
        batches = [indices[i:i + e.batch_size] for _, indices in sorted(groups.items())
                   for i in range(0, len(indices), e.batch_size)]
    sampler = dict(steps=e.steps, cfg_scale=e.cfg_scale, grid=e.grid, generator=generator)
    with progress(len(samples), f"generate {label} seed {seed}", log, unit="seq") as bar:
        for chunk in batches:
            if recorder is not None and 0 in chunk and (ragged or accepts_on_step(model.generate)):
                recorder.row = chunk.index(0)
                sampler["on_step"] = recorder
            else:
                sampler.pop("on_step", None)
            prompts = [samples[i].prompt_ids for i in chunk]
            with harness.sampler_precision(e.dtype, device):
                if ragged:
                    rows = model.generate_ragged(prompts, [len(samples[i].target_ids) for i in chunk], **sampler)
                else:
                    target_len = len(samples[chunk[0]].target_ids)
                    ids = model.generate(torch.tensor(prompts, device=device), target_len, **sampler)
                    if tuple(ids.shape) != (len(chunk), target_len):
                        raise ValueError(f"{type(model).__name__}.generate returned shape {tuple(ids.shape)} for "
                                         f"{len(chunk)} prompts and {target_len} new tokens")
                    rows = ids.tolist()
            for i, row in zip(chunk, rows):
                outputs[i] = row
            bar.update(len(chunk))
    return [outputs[i] for i in range(len(samples))]


def training_token_counts(cfg, tokenizer, path: str | None = None) -> np.ndarray:
    """Training-token frequencies for the unigram floors: the data artifact's counts, or (when scoring a saved
    checkpoint without its run directory) a count over the first train-split documents of the corpus."""
    if path is not None and Path(path).is_file():
        return load_token_counts(path)
    d = cfg.data
    docs = load_documents(CorpusSpec(d.corpus, d.text_field, max_documents=d.max_documents))
    train = split_documents(docs, d.valid_fraction, d.test_fraction, d.split_seed)["train"][:COUNT_DOCUMENTS]
    ids = [t for doc in document_ids(train, tokenizer) for t in doc]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(tokenizer))


@torch.no_grad()
def reconstruction_accuracy(model, documents: list[str], tokenizer, cfg, max_windows: int = 256) -> float:
    """Token accuracy of ``model.reconstruct`` (a latent round trip: TextLDM's VAE, Cola DLM's) on up to
    ``max_windows`` windows of ``documents``."""
    w = tokenize_windows(documents, tokenizer, cfg.data.seq_len, max_windows)
    device = next(model.parameters()).device
    tokens = torch.from_numpy(w.tokens).long().to(device)
    mask = torch.arange(tokens.shape[1], device=device)[None] < torch.from_numpy(w.lengths).to(device)[:, None]
    predicted = torch.cat([model.reconstruct(tokens[i:i + 64]) for i in range(0, len(tokens), 64)])
    return metrics.token_accuracy(predicted, tokens, mask)


def scoring_setup(cfg, token_counts: str | None = None):
    """What both tasks set up before generating: the protocol, the tokenizer, the scorers (on the GPU when there
    is one) and, when the protocol has floors, the training-token counts (see ``training_token_counts``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    e = cfg.eval
    protocol = EvalProtocol.from_config(cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    scorers = harness.Scorers(e, device)
    counts = training_token_counts(cfg, tokenizer, token_counts) if e.floors else None
    return protocol, tokenizer, scorers, counts


def evaluate_continuations(cfg, model, out_dir: Path, ceiling_cache: Path | None = None,
                           token_counts: str | None = None) -> Evaluation:
    """Run the continuation protocol on every eval dataset; writes samples, metrics and evidence under out_dir.
    ``model``: any object with TextLDM's ``generate`` (and optionally ``reconstruct``; ``generate`` may take
    ``on_step`` for the progression view), loaded by its family (e.g. ``methods/textldm/generator.py``).
    ``ceiling_cache``: a directory the reference rows are shared through (see ``harness.score_reference``);
    ``token_counts``: the data artifact's training-token counts (for the unigram floors)."""
    e = cfg.eval
    protocol, tokenizer, scorers, counts = scoring_setup(cfg, token_counts)
    evaluation = Evaluation(protocol, {})
    per_seed: dict[str, dict] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for dataset in e.datasets:
        t0 = time.time()
        docs = held_out_documents(cfg, dataset)
        drawn = continuation_samples(docs, tokenizer, cfg, count=2 * e.num_samples if e.human_ceiling else None)
        samples, others = drawn[:e.num_samples], drawn[e.num_samples:]
        log.info("eval %s: %d prompts (continuations of %d-%d tokens), %d sampling seeds", dataset, len(samples),
                 min(len(s.target_ids) for s in samples), max(len(s.target_ids) for s in samples),
                 len(e.sampling_seeds))
        recorder = ProgressionRecorder(e.progression_steps, e.steps, tokenizer)
        generations = {seed: generate_continuations(model, samples, cfg, seed, recorder if index == 0 else None,
                                                    dataset)
                       for index, seed in enumerate(e.sampling_seeds)}
        generation_seconds = time.time() - t0
        targets = [s.target_ids for s in samples]
        log.info("eval %s: scoring %d generations", dataset, sum(map(len, generations.values())))
        scored = harness.score(e, scorers, tokenizer, generations, targets, paired=True, cache_dir=ceiling_cache,
                               label=dataset)
        row, per_seed[dataset] = scored.row, scored.per_seed
        if hasattr(model, "reconstruct"):
            row["recon_acc"] = reconstruction_accuracy(model, docs, tokenizer, cfg)
        row.update({"sample_seconds_per_seq": generation_seconds / (len(generations) * len(samples)),
                    "eval_seconds": round(time.time() - t0, 1)})
        evaluation.results[dataset], evaluation.evidence[dataset] = row, scored.evidence
        evaluation.references[dataset] = reference_rows(e, scorers, tokenizer, samples, others, counts,
                                                        ceiling_cache, protocol.scoring_hash)
        prompts = harness.render(tokenizer, [s.prompt_ids for s in samples])
        refs = harness.render(tokenizer, targets)
        if recorder.texts:
            evaluation.progressions[dataset] = {"prompt": prompts[0], "reference": refs[0], "total_steps": e.steps,
                                                "steps": recorder.steps, "texts": recorder.texts}
        lines = [json.dumps({"seed": seed, "prompt": p, "generated": g, "reference": r})
                 for seed, ids in generations.items()
                 for p, g, r in zip(prompts, harness.render(tokenizer, ids), refs)]
        name = dataset.replace(":", "_").replace("/", "_")
        atomic_write_text(out_dir / f"samples_{name}.jsonl", "\n".join(lines) + "\n")
        log.info("eval %s (%.0f s): %s", dataset, time.time() - t0,
                 {k: round(v, 4) for k, v in row.items() if not k.endswith(("_ci_low", "_ci_high"))})
        write_metrics(out_dir, evaluation, per_seed=per_seed)
    if e.fewshot.tasks:  # the few-shot generative protocol on the same generator: rows of its own protocols
        from .fewshot.runner import evaluate_fewshot
        evaluation.fewshot = evaluate_fewshot(cfg, model, out_dir / "fewshot")
        write_metrics(out_dir, evaluation, per_seed=per_seed)
    storage.publish(out_dir)  # samples, metrics and evidence: to the store when the run dir is on one
    return evaluation


def reference_rows(e, scorers, tokenizer, samples: list[ContinuationSample], others: list[ContinuationSample],
                   counts: np.ndarray | None, cache_dir: Path | None, scoring_hash: str) -> dict[str, harness.Scored]:
    """The human ceiling (continuations of the disjoint ``others``, each as long as its reference) and the
    floors, scored against the same references by the same harness (cached by content across trials)."""
    targets = [s.target_ids for s in samples]
    lengths = [len(t) for t in targets]
    rows: dict[str, harness.ReferenceRow] = {}
    if e.human_ceiling and len(others) >= metrics.MIN_MAUVE_SAMPLES:
        tails = [o.tail_ids for o in others]
        rows["human-ceiling"] = harness.human_ceiling(targets, [floors.borrow(tails, i, n)
                                                                for i, n in enumerate(lengths)])
    if e.floors:
        generated = floors.continuation_floors([s.prompt_ids for s in samples], lengths,
                                               [s.tail_ids for s in samples], counts, list(e.sampling_seeds))
        rows.update({name: harness.ReferenceRow(generations, targets, True) for name, generations in generated.items()})
    return harness.score_reference_rows(e, scorers, tokenizer, rows, cache_dir, scoring_hash)
