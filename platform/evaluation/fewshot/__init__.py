"""The Cola DLM few-shot generative protocol (dlm.md §5.2, Table 7) as lm-eval tasks.

Every task generates (``generate_until``, stop at the first newline, at most 32 new tokens) after a prompt that
ends at its anchor; the generation is normalised and scored: MCQ by the best-matching option text, LAMBADA-style
tasks by the first generated word, SQuAD by exact match. Modules, one job each:

    scoring    pure scorers: normalisation, ``match_option`` (the documented MCQ rule), first word, exact match
    items      a document as an item (``McqItem``, ``QaItem``, ``LastWordItem``) and its prompt
    demos      the hand-written demonstrations of the paper tasks
    paper      the eight paper datasets' documents as items (``PAPER_TASKS``)
    hooks      the functions lm-eval calls (``!function``) and the loader of local task data
    tasks/     the eight ``cola_*`` task YAMLs (tag ``cola_fewshot``) and their ``utils.py``
    taskfiles  checks of task YAMLs and local JSONL data (one-line errors naming file, line and field)
    offline    builds ``latentlm_lastword`` / ``latentlm_nextsentence`` from held-out embedded text
    protocol   ``FewshotProtocol``: name ``fewshot/<task>``, version, hash
    runner     ``run_fewshot``: lm-eval on an ``LM``, per-task accuracy, bootstrap CI, per-item evidence
    rows       ``fewshot_rows``: leaderboard rows of protocol ``fewshot/<task>``
"""
from .items import FewshotDataError
from .offline import OFFLINE_TAG, OFFLINE_TASKS, BuiltTask, OfflineTaskConfig, build_offline_tasks
from .paper import PAPER_TASKS
from .protocol import FewshotProtocol
from .rows import fewshot_rows
from .runner import PAPER_TASKS_DIR, BootstrapOptions, TaskResult, prepare_tasks, run_fewshot
from .scoring import best_option, exact_match, first_word_correct, match_option, normalize
from .taskfiles import LOCAL_FORMATS, check_rows, check_task_file

__all__ = [
    "BootstrapOptions", "BuiltTask", "FewshotDataError", "FewshotProtocol", "LOCAL_FORMATS", "OFFLINE_TAG",
    "OFFLINE_TASKS", "OfflineTaskConfig", "PAPER_TASKS", "PAPER_TASKS_DIR", "TaskResult", "best_option",
    "build_offline_tasks", "check_rows", "check_task_file", "exact_match", "fewshot_rows", "first_word_correct",
    "match_option", "normalize", "prepare_tasks", "run_fewshot",
]
