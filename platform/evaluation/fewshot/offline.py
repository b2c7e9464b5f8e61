"""Offline few-shot tasks for the embedded default: built from held-out text, written as local lm-eval tasks.

The hub benchmarks cannot be reached offline, so two tasks in the protocol's format are made from the held-out
documents of an embedded corpus (``embedded:wiki``, ``embedded:shakespeare``: the test split when it is the
training corpus, all of it otherwise, the rule of ``continuation.held_out_documents``):

* ``latentlm_lastword`` (LAMBADA-style, 0 shots): a document's opening words up to a target word; the prompt is
  the passage without the word, correct iff the first generated word is it. Targets are real words: letters
  only, at least ``min_word_chars``, not all capitals (no speaker tags), not a function word such as "the" or
  "with", trailing punctuation dropped. Among the positions that give a prompt of ``lastword_tokens`` tokens, a
  word that already occurs in the passage is preferred (as in LAMBADA, whose words are guessable from the wider
  context), else any.
* ``latentlm_nextsentence`` (continuation MCQ, 0 shots): a document's sentences before sentence i (the context,
  cut from the left to fit), then four options: the first ``option_words`` words of sentence i and of three
  sentences from *other* held-out documents, in a seeded random order; the model generates option text after
  ``Answer:``, scored by ``scoring.match_option``. Options are sentence *openings* and there are no
  demonstrations because the tiny presets see 64-token windows: four whole Wikipedia sentences (median 26
  tokens each) alone would not fit, and a demonstration would double the prompt.

Budgets. ``LatentLM`` keeps the last ``seq_len - max_gen_toks`` tokens of a context, so prompt and generation must
share the model's window. The defaults fit the tiny presets' 64 tokens: last-word prompts of 20-32 tokens with the
protocol's 32 generated tokens; next-sentence prompts of at most 52 tokens with 12 generated (at most 32, as the
protocol says; an option is ~6-8 tokens, and the output is cut at its first newline anyway).
``OfflineTaskConfig.fit_window`` / ``from_experiment`` fit any window (128 tokens: 24-40 and 32, 52 and 32).

Token counts use ``tokenizer`` (default the embedded SmolLM2 tokenizer, a GPT-2-style byte-level BPE whose counts
are within ~2% of GPT-2's), without special tokens, on the exact prompt text; each row stores its
``prompt_tokens``. Everything is deterministic given the config (dataset, seed, n_docs, budgets, tokenizer).

Cache layout (``cache_dir``, default ``$LATENTLM_CACHE/fewshot``), one folder per build, named by the builder
version and a hash of the built data::

    <cache_dir>/offline-v<BUILDER_VERSION>-<16 hex of sha256 over the tasks' data hashes and max_gen_toks>/
        <task>.yaml      the lm-eval task (custom_dataset = hooks.load_local on <task>.jsonl), per built task
        <task>.jsonl     one document per line (the ``lastword`` / ``mcq`` local formats)
        manifest.json    per task: the config, the tokenizer, n, data_sha256, prompt token min/max/mean

Files are written atomically, and only when their content differs: a rebuild with the same config reuses them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from latentlm.models.checkpoint import atomic_write_text
from latentlm.models.config import require, require_positive

from ..protocol import OFFLINE_TAG, OFFLINE_TASKS  # noqa: F401  (re-exported: the package names them)
from . import scoring
from .hooks import local_mcq

BUILDER_VERSION = 1  # bump when the construction rules change: it names the cache directory and is the task version
MAX_GEN_TOKS = 32    # the protocol's generation cap
HOOKS = "latentlm.platform.evaluation.fewshot.hooks"

_WORD = re.compile(r"([A-Za-z]+)[.,;:!?]?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")
# not targets: a last word should carry content, as LAMBADA's do (these are guessed from syntax alone)
_FUNCTION_WORDS = frozenset("""the and but for nor not yet with from into onto upon over under about after before
    than then that this these those there their theirs them they what which who whom whose when where while why
    how are was were been being have has had does did doing its his her hers our ours your yours you she him
    can could would should shall will may might must also such some any all each both very only own same too
    near among through between against during without within around across along""".split())
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "no.", "mt.", "co.", "inc.", "ltd.", "ca.",
                  "b.", "d.", "fl.", "approx.", "gen.", "gov.", "lt.", "col.", "sgt.", "capt.", "rev.", "prof."}
_INITIAL = re.compile(r"[A-Z]\.")


@dataclass
class OfflineTaskConfig:
    dataset: str = "embedded:wiki"          # where the held-out text comes from
    corpus: str = "embedded:wiki"           # the training corpus: when ``dataset`` is it, only its test split is used
    text_field: str = "text"
    valid_fraction: float = 0.05            # the training split (data.*), so "held out" means what training left out
    test_fraction: float = 0.05
    split_seed: int = 0
    tokenizer: str = "embedded:smollm2"     # measures the prompt budgets (the embedded default's tokenizer)
    seed: int = 1234
    n_docs: int = 200                       # documents per task (fewer when fewer held-out documents qualify)
    # Budgets: prompt + generation must fit the model's window (LatentLM keeps the last window - max_gen_toks
    # context tokens); the defaults fit the tiny presets' 64 tokens, ``fit_window`` any other window.
    lastword_tokens: tuple[int, int] = (20, 32)   # prompt length range of latentlm_lastword
    lastword_gen_toks: int = 32             # its max_gen_toks: the protocol's 32
    min_word_chars: int = 3
    max_prompt_tokens: int = 52             # latentlm_nextsentence prompt cap
    nextsentence_gen_toks: int = 12         # its max_gen_toks (<= 32): a 4-word option is ~6-8 tokens
    context_tokens: tuple[int, int] = (8, 24)     # latentlm_nextsentence context range (before the options)
    option_words: int = 4                   # words of each sentence shown as an option
    n_options: int = 4
    cache_dir: str | None = None            # None: $LATENTLM_CACHE/fewshot

    def __post_init__(self):
        require_positive("fewshot.offline", n_docs=self.n_docs, option_words=self.option_words,
                         max_prompt_tokens=self.max_prompt_tokens, min_word_chars=self.min_word_chars)
        for name in ("lastword_tokens", "context_tokens"):
            lo, hi = getattr(self, name)
            require(1 <= lo <= hi, f"fewshot.offline.{name}", "a range (low, high) with 1 <= low <= high",
                    getattr(self, name))
        require(2 <= self.n_options <= len(scoring.LABELS), "fewshot.offline.n_options",
                f"2..{len(scoring.LABELS)}", self.n_options)
        for name in ("lastword_gen_toks", "nextsentence_gen_toks"):
            require(1 <= getattr(self, name) <= MAX_GEN_TOKS, f"fewshot.offline.{name}",
                    f"1..{MAX_GEN_TOKS} (the protocol's generation cap)", getattr(self, name))

    def fit_window(self, seq_len: int) -> "OfflineTaskConfig":
        """Budgets for a model of ``seq_len`` tokens, so that prompt + generation fit: latentlm_lastword generates
        32 tokens after a prompt of ``min(24, hi - 12)`` to ``hi = min(40, seq_len - 32)`` tokens;
        latentlm_nextsentence generates ``min(32, seq_len - 52)`` tokens (at least 12) after up to 52."""
        require(seq_len >= 64, "data.seq_len", ">= 64 tokens for the offline few-shot tasks (four options, a context "
                "and an answer)", seq_len)
        hi = min(40, seq_len - MAX_GEN_TOKS)
        gen = min(MAX_GEN_TOKS, max(12, seq_len - 52))
        return dataclasses.replace(self, lastword_tokens=(min(24, hi - 12), hi), lastword_gen_toks=MAX_GEN_TOKS,
                                   nextsentence_gen_toks=gen, max_prompt_tokens=min(52, seq_len - gen))

    @classmethod
    def from_experiment(cls, cfg, dataset: str | None = None, **overrides) -> "OfflineTaskConfig":
        """The config of an experiment's held-out text (its training corpus, split and tokenizer), with budgets
        fitted to its window (``data.seq_len``); ``overrides`` win."""
        d = cfg.data
        base = cls(dataset=dataset or d.corpus, corpus=d.corpus, text_field=d.text_field,
                   valid_fraction=d.valid_fraction, test_fraction=d.test_fraction, split_seed=d.split_seed,
                   tokenizer=d.tokenizer).fit_window(d.seq_len)
        return dataclasses.replace(base, **overrides)

    def cache_root(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        from latentlm.platform.data import assets
        return assets.cache_dir() / "fewshot"


@dataclass(frozen=True)
class BuiltTask:
    """One built offline task: the folder to pass to lm-eval (``TaskManager(include_path=...)``) and its files."""
    name: str
    directory: Path
    yaml_path: Path
    data_path: Path
    version: int
    data_sha256: str
    n: int
    dataset: str
    manifest: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- text
def count_tokens(tokenizer, texts: Sequence[str]) -> list[int]:
    """Token counts without special tokens (one batched call)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def sentences(text: str) -> list[str]:
    """Sentences of a document: split after . ! ? before a capital or quote, not after common abbreviations or
    initials ("Arthur C. Clarke")."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(" ".join(text.split())):
        last = out[-1].rsplit(" ", 1)[-1] if out else ""
        if last.lower() in _ABBREVIATIONS or _INITIAL.fullmatch(last):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return [s for s in out if s]


def _target_word(token: str, min_chars: int) -> str | None:
    match = _WORD.fullmatch(token)
    word = match.group(1) if match else None
    usable = word and len(word) >= min_chars and not word.isupper() and word.lower() not in _FUNCTION_WORDS
    return word if usable else None


def _held_out(config: OfflineTaskConfig) -> list[str]:
    from latentlm.platform.evaluation.continuation import held_out_documents
    return held_out_documents(SimpleNamespace(data=config), config.dataset)


# ------------------------------------------------------------------------------------------------- rows
def lastword_rows(documents: Sequence[str], tokenizer, config: OfflineTaskConfig) -> list[dict]:
    """``lastword`` rows from up to ``n_docs`` documents (shuffled by ``seed``), at most one per document."""
    lo, hi = config.lastword_tokens
    rng = random.Random(f"lastword:{config.seed}")
    order = list(range(len(documents)))
    rng.shuffle(order)
    rows = []
    for index in order:
        words = documents[index].split()[: hi + 8]   # a prompt of <= hi tokens has <= hi words
        ends = range(1, len(words))
        counts = count_tokens(tokenizer, [" ".join(words[:e]) for e in ends])
        targets = [_target_word(w, config.min_word_chars) for w in words]
        fits = [(e, n) for e, n in zip(ends, counts) if lo <= n <= hi and targets[e]]
        if not fits:
            continue
        earlier = [{scoring.first_word(w) for w in words[:e]} for e, _ in fits]
        seen = [(e, n) for (e, n), before in zip(fits, earlier) if targets[e].lower() in before]
        end, tokens = rng.choice(seen or fits)
        rows.append({"id": f"{index}", "doc_index": index, "context": " ".join(words[:end]),
                     "answer": targets[end], "prompt_tokens": tokens})
        if len(rows) == config.n_docs:
            break
    return rows


def _opening(sentence: str, words: int) -> str:
    return " ".join(sentence.split()[:words]).rstrip(".,;:!?")


def _trim_left(text: str, tokenizer, limit: int) -> str:
    """The longest word suffix of ``text`` with at most ``limit`` tokens."""
    words = text.split()
    counts = count_tokens(tokenizer, [" ".join(words[s:]) for s in range(len(words))])
    return next((" ".join(words[s:]) for s, n in enumerate(counts) if n <= limit), "")


def _with_distractors(gold: str, index: int, pool: list[tuple[int, str]], count: int,
                      rng: random.Random) -> list[str] | None:
    """``gold`` and ``count - 1`` openings of other documents, distinct after normalisation, shuffled; None when the
    pool has too few (bounded draws, so a tiny pool cannot loop forever)."""
    taken, options = {scoring.normalize(gold)}, [gold]
    for _ in range(50 * count):
        doc, text = pool[rng.randrange(len(pool))]
        norm = scoring.normalize(text)
        if doc != index and norm and norm not in taken:
            taken.add(norm)
            options.append(text)
            if len(options) == count:
                rng.shuffle(options)
                return options
    return None


def nextsentence_rows(documents: Sequence[str], tokenizer, config: OfflineTaskConfig) -> list[dict]:
    """``mcq`` rows: per document (shuffled by ``seed``) one sentence i >= 1 whose opening is the gold option,
    three openings of other documents' sentences as distractors, the preceding text as context."""
    lo, hi = config.context_tokens
    rng = random.Random(f"nextsentence:{config.seed}")
    split = [sentences(d) for d in documents]
    pool = [(d, _opening(s, config.option_words)) for d, ss in enumerate(split) for s in ss
            if len(s.split()) >= 3]
    order = list(range(len(documents)))
    rng.shuffle(order)
    rows = []
    for index in order:
        candidates = [i for i in range(1, len(split[index])) if len(split[index][i].split()) >= 3]
        if not candidates or len(pool) < config.n_options:
            continue
        i = rng.choice(candidates)
        gold = _opening(split[index][i], config.option_words)
        options = _with_distractors(gold, index, pool, config.n_options, rng)
        if options is None:
            continue
        answer = options.index(gold)
        shell = local_mcq({"context": "x", "options": options, "answer": answer}).prompt
        room = min(hi, config.max_prompt_tokens - count_tokens(tokenizer, [shell])[0] + 1)
        context = _trim_left(" ".join(split[index][:i]), tokenizer, room) if room >= lo else ""
        if not context or count_tokens(tokenizer, [context])[0] < lo:
            continue
        row = {"id": f"{index}:{i}", "doc_index": index, "context": context, "options": options, "answer": answer}
        tokens = count_tokens(tokenizer, [local_mcq(row).prompt])[0]
        if tokens > config.max_prompt_tokens:
            continue
        rows.append({**row, "prompt_tokens": tokens})
        if len(rows) == config.n_docs:
            break
    return rows


# ------------------------------------------------------------------------------------------------ files
def _task_yaml(name: str, data_path: Path, local_format: str, gen_toks: int, metadata: dict) -> str:
    """The lm-eval task file (generated, so it is plain data: JSON is YAML, but ``!function`` must be a tag)."""
    lines = [
        f"# Generated by latentlm.platform.evaluation.fewshot.offline (builder v{BUILDER_VERSION}); do not edit.",
        f"task: {name}",
        f"tag:\n  - {OFFLINE_TAG}",
        f"custom_dataset: !function {HOOKS}.load_local",
        f"dataset_kwargs:\n  data_file: {json.dumps(str(data_path))}\n  local_format: {local_format}",
        "test_split: test",
        "output_type: generate_until",
        f"doc_to_text: !function {HOOKS}.{local_format}_text",
        f"doc_to_target: !function {HOOKS}.{local_format}_target",
        f"process_results: !function {HOOKS}.{local_format}_results",
        "num_fewshot: 0",
        'target_delimiter: " "',
        'fewshot_delimiter: "\\n\\n"',
        f'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: {gen_toks}',
        "metric_list:\n  - metric: accuracy\n    aggregation: mean\n    higher_is_better: true",
        "metadata: " + json.dumps(metadata, sort_keys=True),
    ]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def _stats(values: list[int]) -> dict:
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 2)}


def write_tasks(rows: dict[str, list[dict]], config: OfflineTaskConfig, tokenizer_name: str) -> dict[str, BuiltTask]:
    """Write each task's rows as a local lm-eval task, all in one cache folder (one folder, because lm-eval keeps
    one folder's view of a tag: tasks of one tag in two include folders would hide each other)."""
    for name, task_rows in rows.items():
        if not task_rows:
            raise ValueError(f"fewshot.offline: no document of {config.dataset} qualifies for {name} (n_docs="
                             f"{config.n_docs}; check lastword_tokens / context_tokens / max_prompt_tokens)")
    data = {name: "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in task_rows)
            for name, task_rows in sorted(rows.items())}
    digests = {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in data.items()}
    gen_toks = {"latentlm_lastword": config.lastword_gen_toks, "latentlm_nextsentence": config.nextsentence_gen_toks}
    identity = {name: [digests[name], gen_toks[name]] for name in data}   # what the folder's files depend on
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    directory = config.cache_root() / f"offline-v{BUILDER_VERSION}-{key}"
    settings = dataclasses.asdict(config)
    settings.pop("cache_dir")   # where the cache lives is not what was built
    built = {}
    for name, text in data.items():
        local_format = "lastword" if name == "latentlm_lastword" else "mcq"
        metadata = {"version": BUILDER_VERSION, "dataset": config.dataset, "data_sha256": digests[name],
                    "n": len(rows[name]), "options": None if local_format == "lastword" else config.n_options,
                    "anchor": "" if local_format == "lastword" else "Answer:"}
        data_path, yaml_path = directory / f"{name}.jsonl", directory / f"{name}.yaml"
        _write_if_changed(data_path, text)
        _write_if_changed(yaml_path, _task_yaml(name, data_path, local_format, gen_toks[name], metadata))
        manifest = {"task": name, "builder_version": BUILDER_VERSION, "config": settings, "tokenizer": tokenizer_name,
                    "n": len(rows[name]), "data_sha256": digests[name],
                    "prompt_tokens": _stats([r["prompt_tokens"] for r in rows[name]])}
        built[name] = BuiltTask(name, directory, yaml_path, data_path, BUILDER_VERSION, digests[name], len(rows[name]),
                                config.dataset, manifest)
    _write_if_changed(directory / "manifest.json",
                      json.dumps({n: b.manifest for n, b in built.items()}, indent=2, sort_keys=True) + "\n")
    return built


def build_offline_tasks(config: OfflineTaskConfig | None = None, tasks: Sequence[str] = OFFLINE_TASKS,
                        tokenizer: Any = None, documents: Sequence[str] | None = None) -> dict[str, BuiltTask]:
    """Build (or reuse) the offline tasks: ``{name: BuiltTask}``, all in one folder (``BuiltTask.directory``, the
    include path for lm-eval). ``tokenizer`` (an HF tokenizer, or anything with its batch call) defaults to
    ``config.tokenizer``; ``documents`` to the held-out documents of ``config.dataset``."""
    config = config or OfflineTaskConfig()
    unknown = [t for t in tasks if t not in OFFLINE_TASKS]
    require(bool(tasks) and not unknown, "fewshot.offline.tasks", f"a non-empty subset of {OFFLINE_TASKS}", list(tasks))
    name = config.tokenizer if tokenizer is None else getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    if tokenizer is None:
        from latentlm.platform.data.windows import load_tokenizer
        tokenizer = load_tokenizer(config.tokenizer)
    documents = _held_out(config) if documents is None else list(documents)
    builders: dict[str, Callable] = {"latentlm_lastword": lastword_rows, "latentlm_nextsentence": nextsentence_rows}
    return write_tasks({t: builders[t](documents, tokenizer, config) for t in tasks}, config, str(name))
