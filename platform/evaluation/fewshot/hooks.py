"""The functions lm-eval calls (``!function`` in the task YAMLs): prompt text, demonstration target, per-document
scoring, the fixed demonstrations, and the loader of local task data.

Every task is ``output_type: generate_until`` with ``until: ["\\n"]`` and ``max_gen_toks: 32``; lm-eval builds the
prompt as ``demo prompt + " " + demo target + "\\n\\n"`` per demonstration, then the test document's prompt,
which ends at the anchor. ``process_results`` gets the generation and returns the task's per-document 0/1 score
under its metric name (``accuracy``; ``exact_match`` for SQuAD), which the runner reads back from the logged
samples as the per-item evidence.
"""
from __future__ import annotations

from typing import Callable, Mapping

from .items import LastWordItem, McqItem
from .paper import PAPER_TASKS, Item
from .taskfiles import check_rows


def _hooks(parse: Callable[[Mapping], Item], metric: str, demos: list[dict]):
    def doc_to_text(doc: Mapping) -> str:
        return parse(doc).prompt

    def doc_to_target(doc: Mapping) -> str:
        return parse(doc).target

    def process_results(doc: Mapping, results: list) -> dict[str, float]:
        return {metric: float(parse(doc).correct(results[0] if results else ""))}

    def samples() -> list[dict]:
        return [dict(d) for d in demos]

    return doc_to_text, doc_to_target, process_results, samples


def paper_hooks(task: str):
    """(doc_to_text, doc_to_target, process_results, demonstrations) of one of the eight paper tasks."""
    spec = PAPER_TASKS[task]
    return _hooks(spec.item, spec.metric, spec.demos)


def local_mcq(doc: Mapping) -> McqItem:
    """A local ``mcq`` row: the context as bare text, the options, the anchor ``Answer:``."""
    return McqItem((("", doc["context"]),), tuple(doc["options"]), int(doc["answer"]))


def local_lastword(doc: Mapping) -> LastWordItem:
    return LastWordItem(doc["context"], doc["answer"])


mcq_text, mcq_target, mcq_results, _ = _hooks(local_mcq, "accuracy", [])
lastword_text, lastword_target, lastword_results, _ = _hooks(local_lastword, "accuracy", [])


def load_local(data_file: str, local_format: str, **_) -> dict:
    """``custom_dataset`` of a local task: the checked rows of ``data_file`` as the ``test`` split (lm-eval passes
    the task's metadata too, hence ``**_``)."""
    import datasets

    return {"test": datasets.Dataset.from_list(check_rows(data_file, local_format))}
