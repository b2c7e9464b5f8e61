"""Run few-shot tasks through lm-eval on any lm-eval ``LM`` and collect per-task results with their evidence.

``run_fewshot`` indexes the task folders (the eight paper tasks, ``task_dirs``, and the offline tasks it builds
when asked for one that no folder provides), checks every task file and local data file it is about to use,
runs ``lm_eval.simple_evaluate`` with ``log_samples=True`` and reads each task's per-item 0/1 scores back from the
logged samples: the accuracy (or exact match) is their mean, its 95% interval a percentile bootstrap over items
(``significance.bootstrap_ci``), and the vector itself is the evidence a paired comparison resamples.

Output under ``out_dir``: ``fewshot_results.json`` (per task: metric, value, interval, n, protocol) and
``fewshot_samples/<task>.jsonl`` (per item: doc_id, prompt, generation, target, correct), written atomically.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from latentlm.models.checkpoint import atomic_write_text
from latentlm.platform.evaluation import significance

from .items import FewshotDataError
from .offline import OFFLINE_TAG, OFFLINE_TASKS, OfflineTaskConfig, build_offline_tasks
from .protocol import FewshotProtocol, sampler_settings
from .taskfiles import check_task_file, task_files

log = logging.getLogger(__name__)
PAPER_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
RESULTS_FILE = "fewshot_results.json"
SAMPLES_DIR = "fewshot_samples"


@dataclass(frozen=True)
class TaskResult:
    """One task's result: ``value`` = mean of ``correct`` (per item, document order), its bootstrap interval."""
    task: str
    metric: str
    value: float
    n: int
    ci_low: float
    ci_high: float
    correct: tuple[float, ...]
    protocol: FewshotProtocol

    @property
    def dataset(self) -> str:
        return self.protocol.dataset

    @property
    def evidence(self) -> dict:
        return item_evidence(self.metric, self.correct, self.protocol.sampler.get("seed", 0))

    def metrics(self) -> dict[str, float]:
        return {self.metric: self.value, f"{self.metric}_ci_low": self.ci_low,
                f"{self.metric}_ci_high": self.ci_high, "samples": float(self.n)}

    def summary(self) -> dict:
        return {"task": self.task, "metric": self.metric, "value": self.value, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "n": self.n, "dataset": self.dataset, "protocol": self.protocol.to_dict()}


@dataclass(frozen=True)
class BootstrapOptions:
    level: float = 0.95
    replicates: int = 1000
    seed: int = 0

    def as_scoring(self) -> dict:
        """The protocol's ``scoring`` section (the continuation protocol's names, which the tables' notes read)."""
        return {"ci_level": self.level, "bootstrap_replicates": self.replicates, "bootstrap_seed": self.seed}


def item_evidence(metric: str, correct: Sequence[float], seed: int = 0) -> dict:
    """Per-item 0/1 scores as evidence in the format ``significance`` reads: one "seed", since a run samples each
    item once; rows of one scoring hash pair item by item."""
    return {"n": len(correct), "seeds": [seed], "per_prompt": {metric: [list(correct)]}}


def _choose(requested: Sequence[str], found: Mapping[str, Path]) -> tuple[dict[str, Path], set[str]]:
    """The task files behind the requested names (a task's own, or every task tagged with a requested tag), and
    every tag the found tasks carry."""
    from lm_eval.tasks._yaml_loader import load_yaml

    chosen, all_tags = {}, set()
    for name, path in found.items():
        tags = load_yaml(path, resolve_func=False).get("tag") or []
        tags = {tags} if isinstance(tags, str) else set(tags)
        all_tags |= tags
        if name in requested or tags & set(requested):
            chosen[name] = path
    return chosen, all_tags


def prepare_tasks(tasks: Sequence[str], task_dirs: Sequence[str | Path] = (), offline: OfflineTaskConfig | None = None,
                  include_defaults: bool = False) -> tuple[list[Path], list[str]]:
    """The task folders to index for ``tasks`` (offline tasks built when no folder has them) and the task names
    behind them (tags expanded here, not by lm-eval, which keeps only the last folder's members of a tag), after
    checking every task file and local data file they use. Raises ``FewshotDataError`` naming a file and field,
    or a name that no folder provides (passed on to lm-eval with ``include_defaults``)."""
    if isinstance(tasks, str) or not tasks:
        raise FewshotDataError(f"tasks: expected a non-empty list of task (or tag) names, got {tasks!r}")
    dirs = [PAPER_TASKS_DIR, *(Path(d) for d in task_dirs)]
    found = task_files(dirs)
    wanted = [t for t in OFFLINE_TASKS if t not in found and (t in tasks or OFFLINE_TAG in tasks)]
    if wanted:
        built = build_offline_tasks(offline, tasks=wanted)
        dirs += [b.directory for b in built.values()]
        found.update({name: b.yaml_path for name, b in built.items()})
    chosen, tags = _choose(tasks, found)
    unknown = [t for t in tasks if t not in chosen and t not in tags]
    if unknown and include_defaults:   # lm-eval's own tasks: indexed and checked by lm-eval
        return dirs, sorted(chosen) + unknown
    if unknown:
        raise FewshotDataError(f"tasks: unknown task {unknown[0]!r} (known: {', '.join(sorted(found))}; tags: "
                               f"{', '.join(sorted(tags))})")
    for path in chosen.values():
        check_task_file(path)
    return dirs, sorted(chosen)


def _collect(task: str, samples: list[dict], config: Mapping, limit, sampler: Mapping,
             bootstrap: BootstrapOptions) -> tuple[TaskResult, list[dict]]:
    samples = sorted(samples, key=lambda s: s["doc_id"])
    metric = (config.get("metric_list") or [{}])[0].get("metric", "accuracy")
    correct = tuple(float(s[metric]) for s in samples)
    prompts = [s["arguments"][0][0] for s in samples]
    targets = [str(s["target"]) for s in samples]
    protocol = FewshotProtocol.from_run(task, config, prompts, targets, limit, bootstrap.as_scoring(), sampler)
    evidence = item_evidence(metric, correct, protocol.sampler.get("seed", 0))
    low, high = significance.bootstrap_ci(evidence, metric, bootstrap.level, bootstrap.replicates, bootstrap.seed)
    if set(correct) <= {0.0, 1.0}:   # bootstrap_ci centres its replicates, which can push a bound past 0 or 1
        low, high = max(0.0, low), min(1.0, high)
    result = TaskResult(task, metric, sum(correct) / len(correct), len(correct), low, high, correct, protocol)
    records = [{"doc_id": s["doc_id"], "prompt": p, "generation": s["filtered_resps"][0], "target": t,
                "correct": c} for s, p, t, c in zip(samples, prompts, targets, correct)]
    return result, records


def run_fewshot(lm, tasks: Sequence[str], out_dir: str | Path, limit: int | float | None = None, *,
                task_dirs: Sequence[str | Path] = (), offline: OfflineTaskConfig | None = None,
                sampler: Mapping[str, Any] | None = None, bootstrap: BootstrapOptions = BootstrapOptions(),
                include_defaults: bool = False) -> dict[str, TaskResult]:
    """Evaluate ``lm`` (an lm-eval ``LM``) on ``tasks`` (names or the tags ``cola_fewshot`` / ``latentlm_offline``)
    and return ``{task: TaskResult}``.

    ``limit``: lm-eval's (the first N documents, or a fraction). ``task_dirs``: more task folders (a task there
    replaces a same-named one here). ``offline``: how to build the offline tasks (default ``OfflineTaskConfig()``).
    ``sampler``: the model's sampler settings for the protocol (default: from ``lm.get_model_info()``).
    ``include_defaults``: also index lm-eval's own tasks (slow: thousands of YAMLs)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    dirs, names = prepare_tasks(tasks, task_dirs, offline, include_defaults)
    manager = TaskManager(include_path=[str(d) for d in dirs], include_defaults=include_defaults)
    results = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=True,
                              bootstrap_iters=0, random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    if sampler is None:
        sampler = sampler_settings(lm.get_model_info() if hasattr(lm, "get_model_info") else None)
    out_dir = Path(out_dir)
    out: dict[str, TaskResult] = {}
    for task, samples in sorted(results["samples"].items()):
        if not samples:
            raise FewshotDataError(f"{task}: lm-eval scored no documents (limit={limit!r})")
        result, records = _collect(task, samples, results["configs"][task], limit, sampler, bootstrap)
        atomic_write_text(out_dir / SAMPLES_DIR / f"{task}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        out[task] = result
        log.info("%s: %s = %.4f [%.4f, %.4f] over %d items", task, result.metric, result.value, result.ci_low,
                 result.ci_high, result.n)
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps({t: r.summary() for t, r in out.items()}, indent=2,
                                                         default=str) + "\n")
    return out


def evaluate_fewshot(cfg, generator, out_dir: str | Path) -> dict[str, TaskResult]:
    """``cfg.eval.fewshot`` on an in-memory generator of the family whose experiment config ``cfg`` is (the
    continuation evaluation's): the first sampling seed, the evaluation's batch size and interval settings, the
    offline tasks built from ``cfg``'s held-out text with budgets fitted to its window."""
    from latentlm.platform import registry

    from ..lm_eval_model import LatentLM
    e, f = cfg.eval, cfg.eval.fewshot
    lm = LatentLM.from_generator(generator, registry.family_of(cfg), cfg, seed=e.sampling_seeds[0],
                                 batch_size=e.batch_size)
    offline = OfflineTaskConfig.from_experiment(cfg, dataset=f.dataset, n_docs=f.n_docs)
    return run_fewshot(lm, f.tasks, out_dir, f.limit, task_dirs=f.task_dirs, offline=offline,
                       bootstrap=BootstrapOptions(e.ci_level, e.bootstrap_replicates, e.bootstrap_seed))
