"""lm-eval hooks of the eight Cola DLM paper tasks (the ``!function utils.*`` names in this folder's YAMLs).

Each task has ``<task>_text`` (doc_to_text), ``<task>_target`` (doc_to_target: the gold option text, or answer,
that a demonstration shows), ``<task>_results`` (process_results) and ``<task>_demos`` (the hand-written
demonstrations, ``fewshot_config.samples``); the logic lives in ``latentlm.platform.evaluation.fewshot``.
"""
from latentlm.platform.evaluation.fewshot.hooks import paper_hooks
from latentlm.platform.evaluation.fewshot.paper import race_questions  # noqa: F401  (cola_race's process_docs)

mmlu_text, mmlu_target, mmlu_results, mmlu_demos = paper_hooks("cola_mmlu")
race_text, race_target, race_results, race_demos = paper_hooks("cola_race")
storycloze_text, storycloze_target, storycloze_results, storycloze_demos = paper_hooks("cola_storycloze")
lambada_text, lambada_target, lambada_results, _ = paper_hooks("cola_lambada")
openbookqa_text, openbookqa_target, openbookqa_results, openbookqa_demos = paper_hooks("cola_openbookqa")
hellaswag_text, hellaswag_target, hellaswag_results, hellaswag_demos = paper_hooks("cola_hellaswag")
siqa_text, siqa_target, siqa_results, siqa_demos = paper_hooks("cola_siqa")
squad_text, squad_target, squad_results, squad_demos = paper_hooks("cola_squad")
