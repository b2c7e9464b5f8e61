"""The continuation task of the evaluation protocol (TextLDM's; Cola DLM and the AR baseline use it too):
take the first window of each held-out document, split it uniformly at 40-60% of its length, use the prefix
as the condition, generate the continuation with every sampling seed and score it with the shared harness
(``harness.py``: ROUGE-1/2/L, BERTScore, MAUVE over sampling x k-means seeds, Gen-PPL, entropy, diversity),
plus the VAE's token reconstruction accuracy when the model has one, a human-ceiling row (a second set of
held-out continuations scored against the first) and the denoising progression of one sample.

Scorer models are protocol fields; the defaults are local (MiniLM for BERTScore, the embedded SmolLM2 for
MAUVE features, Gemma-3-270m for Gen-PPL), so numbers are not comparable with papers that use
roberta-large / gpt2-large.
"""
from __future__ import annotations

import inspect
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentlm.models.checkpoint import atomic_write_text
from latentlm.models.textldm import TextLDM, load_textldm

from . import harness, metrics
from .corpus import CorpusSpec, load_documents, split_documents
from .data import load_tokenizer, tokenize_windows
from .protocol import EvalProtocol

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What one evaluation produced: metrics per dataset, the human-ceiling rows per dataset, one denoising
    progression per dataset (when the model exposes its sampler steps) and the protocol it ran under."""
    protocol: EvalProtocol
    results: dict[str, dict[str, float]]
    ceiling: dict[str, dict[str, float]] = field(default_factory=dict)
    progressions: dict[str, dict] = field(default_factory=dict)


def write_metrics(out_dir: Path, evaluation: Evaluation, **extra) -> None:
    atomic_write_text(out_dir / "metrics.json", json.dumps(
        {"protocol": evaluation.protocol.to_dict(), "results": evaluation.results, "ceiling": evaluation.ceiling,
         "progressions": evaluation.progressions, **extra}, indent=2, default=str) + "\n")


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


def continuation_samples(documents: list[str], tokenizer, cfg, count: int | None = None) -> list[ContinuationSample]:
    """Deterministic samples: first window of each document (shuffled by eval.sample_seed), split uniformly in
    eval.split_range; documents under eval.min_tokens are skipped. Up to ``count`` (default num_samples)."""
    e, seq_len = cfg.eval, cfg.data.seq_len
    count = e.num_samples if count is None else count
    rng = random.Random(e.sample_seed)
    order = list(range(len(documents)))
    rng.shuffle(order)
    samples = []
    for index in order:
        ids = tokenizer(documents[index], add_special_tokens=False)["input_ids"][:seq_len - 1]
        if len(ids) < e.min_tokens:
            continue
        split = round(rng.uniform(*e.split_range) * len(ids))
        samples.append(ContinuationSample(index, ids[:split], ids[split:]))
        if len(samples) == count:
            break
    if not samples:
        raise ValueError(f"eval: no held-out sample has >= {e.min_tokens} tokens")
    return samples


def strip_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Cut at the first EOS and drop ids outside a compact vocabulary (-1, not decodable)."""
    ids = ids[:ids.index(eos_id)] if eos_id in ids else ids
    return [i for i in ids if i >= 0]


class ProgressionRecorder:
    """Collects the decoded text of one row of a batch after chosen sampler steps (the leaderboard's
    denoising-progression view)."""

    def __init__(self, steps: list[int], total_steps: int, tokenizer, eos_id: int, row: int = 0):
        self.wanted = {s for s in steps if s <= total_steps} | {total_steps}  # the final text always
        self.row, self.tokenizer, self.eos_id = row, tokenizer, eos_id
        self.steps: list[int] = []
        self.texts: list[str] = []

    def __call__(self, step: int, ids: torch.Tensor) -> None:
        if step in self.wanted and (not self.steps or step > self.steps[-1]):  # one sampler pass only
            self.steps.append(step)
            self.texts.append(self.tokenizer.decode(strip_at_eos(ids[self.row].tolist(), self.eos_id),
                                                    skip_special_tokens=True))


def _accepts_on_step(fn) -> bool:
    return "on_step" in inspect.signature(fn).parameters


@torch.no_grad()
def generate_continuations(model, samples: list[ContinuationSample], cfg, eos_id: int, seed: int,
                           recorder: ProgressionRecorder | None = None) -> list[list[int]]:
    """Generate each sample's continuation (up to the window's end, cut at EOS) with sampling seed ``seed``;
    batched by prompt length in the protocol's batch size and precision. ``recorder`` follows sample 0."""
    e, seq_len = cfg.eval, cfg.data.seq_len
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # for samplers that draw from the global generator
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs: dict[int, list[int]] = {}
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_length.setdefault(len(s.prompt_ids), []).append(i)
    for prompt_len, indices in sorted(by_length.items()):
        for start in range(0, len(indices), e.batch_size):
            chunk = indices[start:start + e.batch_size]
            prompts = torch.tensor([samples[i].prompt_ids for i in chunk], device=device)
            kwargs = {}
            if recorder is not None and 0 in chunk and _accepts_on_step(model.generate):
                recorder.row = chunk.index(0)
                kwargs["on_step"] = recorder
            with harness.sampler_precision(e.dtype, device):
                ids = model.generate(prompts, seq_len - prompt_len, steps=e.steps, cfg_scale=e.cfg_scale,
                                     grid=e.grid, generator=generator, **kwargs)
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


def evaluate_checkpoint(cfg, checkpoint_dir: str, out_dir: Path, model=None,
                        ceiling_cache: Path | None = None) -> Evaluation:
    """Run the continuation protocol on every eval dataset; writes samples and metrics under out_dir.
    ``model``: any object with TextLDM's ``generate`` (and optionally ``reconstruct``; ``generate`` may take
    ``on_step`` for the progression view); default: the TextLDM checkpoint. ``ceiling_cache``: a directory
    the human-ceiling rows are shared through (see ``harness.human_ceiling``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    e = cfg.eval
    protocol = EvalProtocol.from_config(cfg)
    if model is None:
        model = load_textldm(checkpoint_dir, use_ema=e.use_ema, device=device)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    scorers = harness.Scorers(e, device)
    evaluation = Evaluation(protocol, {})
    per_seed: dict[str, dict] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for dataset in e.datasets:
        t0 = time.time()
        docs = held_out_documents(cfg, dataset)
        drawn = continuation_samples(docs, tokenizer, cfg, count=2 * e.num_samples if e.human_ceiling else None)
        samples, others = drawn[:e.num_samples], drawn[e.num_samples:]
        recorder = ProgressionRecorder(e.progression_steps, e.steps, tokenizer, tokenizer.eos_token_id)
        generations = {seed: generate_continuations(model, samples, cfg, tokenizer.eos_token_id, seed,
                                                    recorder if index == 0 else None)
                       for index, seed in enumerate(e.sampling_seeds)}
        generation_seconds = time.time() - t0
        targets = [s.target_ids for s in samples]
        row, per_seed[dataset] = harness.score(e, scorers, tokenizer, generations, targets, paired=True)
        if hasattr(model, "reconstruct"):
            row["recon_acc"] = reconstruction_accuracy(model, docs, tokenizer, cfg)
        row.update({"sample_seconds_per_seq": generation_seconds / (len(generations) * len(samples)),
                    "eval_seconds": round(time.time() - t0, 1)})
        evaluation.results[dataset] = row
        if len(others) >= metrics.MIN_MAUVE_SAMPLES:
            evaluation.ceiling[dataset] = harness.human_ceiling(e, scorers, tokenizer, targets,
                                                                [s.target_ids for s in others], ceiling_cache,
                                                                protocol.scoring_hash)
        prompts = tokenizer.batch_decode([s.prompt_ids for s in samples], skip_special_tokens=True)
        refs = tokenizer.batch_decode(targets, skip_special_tokens=True)
        if recorder.texts:
            evaluation.progressions[dataset] = {"prompt": prompts[0], "reference": refs[0], "total_steps": e.steps,
                                                "steps": recorder.steps, "texts": recorder.texts}
        lines = [json.dumps({"seed": seed, "prompt": p, "generated": g, "reference": r})
                 for seed, ids in generations.items()
                 for p, g, r in zip(prompts, tokenizer.batch_decode(ids, skip_special_tokens=True), refs)]
        name = dataset.replace(":", "_").replace("/", "_")
        atomic_write_text(out_dir / f"samples_{name}.jsonl", "\n".join(lines) + "\n")
        log.info("eval %s: %s", dataset, row)
        write_metrics(out_dir, evaluation, per_seed=per_seed)
    return evaluation
