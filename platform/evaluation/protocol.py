"""The versioned evaluation protocol: one object that fixes everything that changes a reported number.

Users set it through a config's ``eval`` section (``ContinuationEvalConfig`` for TextLDM, Cola DLM and the
AR baseline; ``UnconditionalEvalConfig`` for LDLM) and ``EvalProtocol.from_config(cfg)`` freezes it: the
task, the data split (datasets, tokenizer, window length, split fractions and seed), the sample count and
prompt/target split rule, the scorer models with their pooling and max lengths, the EOS and reference
length-matching rules, the sampler (steps, CFG scale, time grid, dtype, batch size) and every seed (the
sampling seeds and MAUVE's k-means seeds). Its ``hash`` is stored in every leaderboard row and rows of
different hashes are never ranked together; ``scoring_hash`` leaves the sampler out, so a sweep over sampler
steps or CFG can still be *plotted* on one axis (each point its own protocol).

Rules that live in code rather than in fields are spelled out in ``RULES`` and hashed with the rest: edit a
rule's code, edit its text (and bump ``PROTOCOL_VERSION`` when old numbers stop being comparable).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from latentlm.models.config import check_fields, require, require_positive

PROTOCOL_VERSION = 3
TASKS = ("continuation", "unconditional")
SAMPLER_FIELDS = ("steps", "cfg_scale", "grid", "dtype", "batch_size")
# weights / extra rows (fewshot: rows of their own protocols, fewshot/<task>) / a view
NOT_PROTOCOL = ("use_ema", "human_ceiling", "floors", "progression_steps", "fewshot")
RULES = {
    "length": "continuation: each generation has exactly its reference continuation's token length (samplers are "
              "asked for that many tokens; the AR baseline suppresses EOS until it is reached); unconditional: "
              "generations and references are full windows of seq_len tokens; references are never truncated",
    "sampling": "one generator per sampling seed; batches of batch_size samples, in prompt order for samplers "
                "that take mixed lengths in one batch (TextLDM), else grouped by (prompt, target) length; noise "
                "drawn batch by batch, sample by sample",
    "render": "every generated id is scored: EOS and other special ids are rendered as their text, ids outside "
              "a compact vocabulary as the tokenizer's unknown token (EOS when it has none)",
    "genppl": "scorer tokenization without special tokens, BOS prepended when the scorer has one, first "
              "genppl_max_length ids; micro-average exp(sum NLL / sum predicted tokens) over all texts of a seed",
    "mauve": "features of the configured LM (last-token or mean pooling of its final hidden states, the "
             "tokenizer's own special tokens included, first mauve_max_length ids) of the generations and of the "
             "whole references, buckets max(2, n // 10); reported as the mean and std over every (sampling seed, "
             "k-means seed) pair",
    "paired": "ROUGE (F1, stemmed) and BERTScore (F1) compare each generation with its reference continuation",
    "aggregate": "per-seed metrics are averaged over the sampling seeds; *_std is the sample std over seeds",
    "intervals": "<metric>_ci_low/_ci_high: percentile bootstrap (bootstrap_replicates, bootstrap_seed) over "
                 "prompts and sampling seeds; MAUVE also over k-means seeds, on the cached quantisation",
    "continuation_split": "the first seq_len - 1 tokens of each held-out document (shuffled by sample_seed), "
                          "split at round(u * length), u ~ U(split_range); documents under min_tokens and "
                          "continuations under the target floor skipped",
    "held_out": "a dataset that is the training corpus contributes its test split; any other dataset, never "
                "trained on, is used whole",
    "human_ceiling": "continuations (or windows) of a second, disjoint set of held-out documents, each as long as "
                     "its reference, scored as if it were a model's generations",
    "floors": "must-lose rows scored the same way: the prompt's last tokens repeated, a unigram sampler over "
              "training-token frequencies, the most frequent training token repeated, and a real continuation "
              "taken from a different document",
}


@dataclass
class ScoringConfig:
    """Evaluation fields every task shares (a config's ``eval`` section)."""
    datasets: list[str] = field(default_factory=lambda: ["embedded:wiki", "embedded:shakespeare"])
    num_samples: int = 64                    # generations per sampling seed and dataset
    sample_seed: int = 1234                  # which held-out documents (and prompt splits) are drawn
    sampling_seeds: list[int] = field(default_factory=lambda: [1234, 1235])
    mauve_kmeans_seeds: list[int] = field(default_factory=lambda: [25, 26, 27])
    mauve_model: str = "embedded:gemma3"     # paper-comparable: gpt2-large; not the REPA/LDLM teacher (SmolLM2)
    mauve_pooling: Literal["last", "mean"] = "last"
    mauve_max_length: int = 128
    genppl_model: str = "embedded:gemma3"    # Gen-PPL scorer (LDLM: GPT-2 Large)
    genppl_max_length: int = 256
    scorer_dtype: Literal["float32", "bfloat16"] = "float32"            # compute dtype of the frozen MAUVE featurizer and Gen-PPL scorer; in the
                                             # scoring hash, so one value for every machine: bfloat16 is 0.05% off on
                                             # Gen-PPL and 1.3-2.5x faster on GPUs and AMX CPUs, ~8x slower on AVX2
    diversity_ns: list[int] = field(default_factory=lambda: [2, 3, 4])
    steps: int = 50
    grid: Literal["schedule", "uniform"] = "schedule"
    dtype: Literal["float32", "bfloat16"] = "float32"  # sampler compute dtype (bfloat16: autocast)
    batch_size: int = 32                     # in the protocol: it orders the sampler's noise draws
    ci_level: float = 0.95                   # confidence level of every reported interval
    bootstrap_replicates: int = 1000         # resamples behind each interval and paired comparison
    bootstrap_seed: int = 0
    use_ema: bool = True
    human_ceiling: bool = True               # also score held-out references against each other (a "human" row)
    floors: bool = True                      # also score the must-lose rows (degenerate generators)
    progression_steps: list[int] = field(default_factory=lambda: [1, 10, 20, 30, 40, 50])  # denoising view

    def __post_init__(self):
        require(len(self.datasets) > 0, "eval.datasets", "at least one dataset", self.datasets)
        require(len(self.sampling_seeds) > 0, "eval.sampling_seeds", "at least one seed", self.sampling_seeds)
        require(len(self.mauve_kmeans_seeds) > 0, "eval.mauve_kmeans_seeds", "at least one seed",
                self.mauve_kmeans_seeds)
        require_positive("eval", num_samples=self.num_samples, steps=self.steps, batch_size=self.batch_size,
                         mauve_max_length=self.mauve_max_length, bootstrap_replicates=self.bootstrap_replicates)
        require(0 < self.ci_level < 1, "eval.ci_level", "a confidence level in (0, 1), e.g. 0.95", self.ci_level)
        require(self.genppl_max_length >= 2, "eval.genppl_max_length", ">= 2", self.genppl_max_length)
        check_fields(self, "eval")
        require(len(self.diversity_ns) > 0 and all(n >= 1 for n in self.diversity_ns), "eval.diversity_ns",
                "a non-empty list of n >= 1", self.diversity_ns)
        require(all(s >= 1 for s in self.progression_steps), "eval.progression_steps", "steps >= 1",
                self.progression_steps)


# the few-shot offline tasks built from held-out text (evaluation/fewshot/offline.py), named here so that checking a
# config does not import the few-shot package (pandas, the leaderboard) in every Ray worker
OFFLINE_TASKS = ("latentlm_lastword", "latentlm_nextsentence")
OFFLINE_TAG = "latentlm_offline"


@dataclass
class FewshotConfig:
    """The few-shot generative protocol (``evaluation/fewshot``) run after the continuation evaluation, on the same
    generator: its rows are protocol ``fewshot/<task>``, next to the continuation rows."""
    tasks: list[str] = field(default_factory=list)   # task names or tags (latentlm_offline, cola_fewshot); [] = none
    limit: int | None = None            # the first N documents of each task (lm-eval's --limit); None: all
    n_docs: int = 200                   # latentlm_offline tasks: items built per task
    dataset: str | None = None          # latentlm_offline tasks' held-out text; None: the training corpus
    task_dirs: list[str] = field(default_factory=list)   # more lm-eval task folders (a same-named task there wins)

    def __post_init__(self):
        require(self.limit is None or self.limit >= 1, "eval.fewshot.limit", "a document count >= 1 or null",
                self.limit)
        require_positive("eval.fewshot", n_docs=self.n_docs)


@dataclass
class ContinuationEvalConfig(ScoringConfig):
    """Prefix -> continuation (TextLDM's protocol; Cola DLM and the AR baseline use it too)."""
    min_tokens: int = 24                    # documents shorter than this are skipped
    min_target_tokens: int | None = None    # continuations shorter than this are skipped; None: min(32, seq_len // 4)
    split_range: tuple[float, float] = (0.4, 0.6)  # prompt/target split, uniform in this fraction of the length
    cfg_scale: float = 7.0
    bertscore_model: str = "embedded:minilm"   # paper-comparable: roberta-large
    bertscore_num_layers: int = 6
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)

    def __post_init__(self):
        super().__post_init__()
        require_positive("eval", min_tokens=self.min_tokens, bertscore_num_layers=self.bertscore_num_layers)
        require(self.min_target_tokens is None or self.min_target_tokens >= 1, "eval.min_target_tokens",
                "a token count >= 1 or null", self.min_target_tokens)

    def target_floor(self, seq_len: int) -> int:
        """The shortest continuation scored: ``min_target_tokens``, by default 32 tokens at seq_len >= 128
        and a quarter of the window below (16 at the tiny preset's 64)."""
        return self.min_target_tokens if self.min_target_tokens is not None else min(32, seq_len // 4)

    def check_window(self, seq_len: int) -> None:
        """The floor must leave room for a prompt inside the window (whose first seq_len - 1 tokens are
        split): an error naming the field otherwise."""
        floor = self.target_floor(seq_len)
        require(floor <= seq_len - 2, "eval.min_target_tokens",
                f"at most data.seq_len - 2 = {seq_len - 2} (a prompt token and the continuation fit the window)",
                floor)
        lo, hi = self.split_range
        require(0 < lo <= hi < 1, "eval.split_range", "0 < low <= high < 1", self.split_range)
        require(self.cfg_scale >= 0, "eval.cfg_scale", ">= 0", self.cfg_scale)
        offline = sorted(set(self.fewshot.tasks) & {OFFLINE_TAG, *OFFLINE_TASKS})
        require(not offline or seq_len >= 64, "eval.fewshot.tasks", f"no offline task ({offline}) below data.seq_len "
                f"64 (their prompts, options and answers need a 64-token window; data.seq_len is {seq_len}): set "
                "eval.fewshot.tasks=[] or a longer window", self.fewshot.tasks)


@dataclass
class UnconditionalEvalConfig(ScoringConfig):
    """Noise -> text (LDLM's protocol), plus its latent-interpolation probe."""
    datasets: list[str] = field(default_factory=lambda: ["embedded:wiki"])   # MAUVE references (held-out text)
    sampling_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 100                  # sampler steps (LDLM sweeps 8..1024)
    grid: Literal["log_snr", "uniform"] = "log_snr"
    interpolation_pairs: int = 8      # latent-interpolation smoothness probe: pairs of real texts ...
    interpolation_points: int = 9     # ... and points along each path (ends included)
    progression_steps: list[int] = field(default_factory=lambda: [1, 25, 50, 75, 100])

    def __post_init__(self):
        super().__post_init__()
        require(self.interpolation_pairs >= 0, "eval.interpolation_pairs", ">= 0", self.interpolation_pairs)
        require(self.interpolation_points >= 2, "eval.interpolation_points", ">= 2", self.interpolation_points)


SPLIT_FIELDS = ("corpus", "tokenizer", "seq_len", "valid_fraction", "test_fraction", "split_seed", "text_field")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalProtocol:
    task: str
    data: dict       # the held-out split: tokenizer, window, fractions, split seed, text field
    scoring: dict    # datasets, sample counts, scorers, seeds, task-specific fields
    sampler: dict    # steps, cfg_scale (continuation), grid, dtype, batch_size
    version: int = PROTOCOL_VERSION

    def __post_init__(self):
        require(self.task in TASKS, "protocol.task", f"one of {TASKS}", self.task)

    @property
    def name(self) -> str:
        return f"{self.task}/v{self.version}"

    @classmethod
    def from_config(cls, cfg) -> "EvalProtocol":
        """The protocol of an experiment config (any family): its ``eval`` section and data split."""
        e = cfg.eval
        task = "continuation" if isinstance(e, ContinuationEvalConfig) else "unconditional"
        require(isinstance(e, ScoringConfig), "eval", "a ContinuationEvalConfig or UnconditionalEvalConfig", type(e))
        values = {f.name: getattr(e, f.name) for f in dataclasses.fields(e) if f.name not in NOT_PROTOCOL}
        sampler = {k: values.pop(k) for k in SAMPLER_FIELDS if k in values}
        if isinstance(e, ContinuationEvalConfig):  # the derived floor is what scores; store its value
            values["min_target_tokens"] = e.target_floor(cfg.data.seq_len)
        data = {k: getattr(cfg.data, k) for k in SPLIT_FIELDS}
        return cls(task, json.loads(json.dumps(data)), json.loads(json.dumps(values)), json.loads(json.dumps(sampler)))

    def _body(self, with_sampler: bool) -> dict:
        body = {"name": self.name, "version": self.version, "task": self.task, "rules": RULES, "data": self.data,
                "scoring": self.scoring}
        return {**body, "sampler": self.sampler} if with_sampler else body

    @property
    def hash(self) -> str:
        return _digest(self._body(True))

    @property
    def scoring_hash(self) -> str:
        """The hash without the sampler: equal for rows that differ only in sampler settings."""
        return _digest(self._body(False))

    def to_dict(self) -> dict:
        """Everything, plus both hashes: what a leaderboard row's ``protocol_json`` holds."""
        return {**self._body(True), "hash": self.hash, "scoring_hash": self.scoring_hash}
