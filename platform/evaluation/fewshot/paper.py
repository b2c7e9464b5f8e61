"""The eight benchmarks of the Cola DLM paper (dlm.md §5.1-5.2, Table 7): each Hugging Face dataset's document
as a protocol item.

| task            | hub dataset lm-eval uses, config     | split      | shots | options | anchor         |
|-----------------|--------------------------------------|------------|-------|---------|----------------|
| cola_mmlu       | cais/mmlu, all                       | test       | 2     | 4       | Answer:        |
| cola_race       | EleutherAI/race, high (per question) | test       | 2     | 4       | Answer:        |
| cola_storycloze | LSDSem/story_cloze, 2016 (*)         | test       | 2     | 2       | End:           |
| cola_lambada    | EleutherAI/lambada_openai, default   | test       | 0     | -       | (continuation) |
| cola_openbookqa | allenai/openbookqa, main             | test       | 2     | 4       | Answer:        |
| cola_hellaswag  | Rowan/hellaswag                      | validation | 2     | 4       | Answer:        |
| cola_siqa       | lighteval/siqa                       | validation | 2     | 3       | Answer:        |
| cola_squad      | rajpurkar/squad, plain_text          | validation | 1     | -       | Answer:        |

(*) its files are given out on request; see the note in ``tasks/cola_storycloze.yaml``.

HellaSwag, SIQA and SQuAD publish no test labels, so their validation splits are the evaluation sets (as in
lm-eval). RACE is scored per question (EleutherAI/race holds one row per article). SQuAD is v1.1 (lm-eval has
no v1.1 task; its ``squadv2`` uses ``lighteval/squad_v2``): the paper scores normalised exact match and gives no
abstention rule for v2's unanswerable questions.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import demos
from .items import FewshotDataError, LastWordItem, McqItem, QaItem, field, last_word_split
from .scoring import LABELS

Item = McqItem | QaItem | LastWordItem


def _letter_index(letter: Any, count: int, task: str, name: str) -> int:
    index = LABELS.find(letter.strip().upper()) if isinstance(letter, str) and len(letter.strip()) == 1 else -1
    if not 0 <= index < count:
        raise FewshotDataError(f"{task}: field {name!r} must be a letter A-{LABELS[count - 1]}, got {letter!r}")
    return index


def _index(value: Any, count: int, task: str, name: str, base: int) -> int:
    """A numeric label ("1", 2, ...) counted from ``base``, as a 0-based option index."""
    try:
        index = int(str(value).strip()) - base if not isinstance(value, bool) else -1
    except ValueError:
        index = -1
    if not 0 <= index < count:
        raise FewshotDataError(f"{task}: field {name!r} must be {base}..{count - 1 + base}, got {value!r}")
    return index


def mmlu(doc: Mapping) -> McqItem:
    t = "cola_mmlu"
    return McqItem((("Question", field(doc, "question", t, str)),), tuple(field(doc, "choices", t, list)),
                   field(doc, "answer", t, int))


def race(doc: Mapping) -> McqItem:
    t = "cola_race"
    options = tuple(field(doc, "options", t, list))
    return McqItem((("Article", field(doc, "article", t, str)), ("Question", field(doc, "question", t, str))),
                   options, _letter_index(field(doc, "answer", t), len(options), t, "answer"))


def storycloze(doc: Mapping) -> McqItem:
    t = "cola_storycloze"
    story = " ".join(field(doc, f"input_sentence_{i}", t, str).strip() for i in range(1, 5))
    options = (field(doc, "sentence_quiz1", t, str), field(doc, "sentence_quiz2", t, str))
    answer = _index(field(doc, "answer_right_ending", t), 2, t, "answer_right_ending", base=1)
    return McqItem((("Story", story),), options, answer, anchor="End:")


def lambada(doc: Mapping) -> LastWordItem:
    return last_word_split(field(doc, "text", "cola_lambada", str), "cola_lambada")


def openbookqa(doc: Mapping) -> McqItem:
    t = "cola_openbookqa"
    choices = field(doc, "choices", t, dict)
    texts, labels = field(choices, "text", f"{t} choices", list), field(choices, "label", f"{t} choices", list)
    key = str(field(doc, "answerKey", t, str)).strip()
    if key not in labels:
        raise FewshotDataError(f"{t}: field 'answerKey' {key!r} is none of the choice labels {labels}")
    return McqItem((("Question", field(doc, "question_stem", t, str)),), tuple(texts), labels.index(key))


def _clean_wikihow(text: str) -> str:
    """HellaSwag's WikiHow half carries markup: "[title]" marks a heading, other [...] spans are step tags."""
    text = re.sub(r"\s*\[title\]\s*", ". ", text.strip())
    text = re.sub(r"\[[^\]]*\]", " ", text)
    return " ".join(text.split())


def hellaswag(doc: Mapping) -> McqItem:
    t = "cola_hellaswag"
    context = f"{field(doc, 'activity_label', t, str).strip()}: {field(doc, 'ctx', t, str).strip()}"
    endings = tuple(_clean_wikihow(e) for e in field(doc, "endings", t, list))
    answer = _index(field(doc, "label", t, (str, int)), len(endings), t, "label", base=0)
    return McqItem((("Context", _clean_wikihow(context)),), endings, answer)


def siqa(doc: Mapping) -> McqItem:
    t = "cola_siqa"
    options = tuple(field(doc, f"answer{x}", t, str) for x in "ABC")
    return McqItem((("Context", field(doc, "context", t, str)), ("Question", field(doc, "question", t, str))),
                   options, _index(field(doc, "label", t, (str, int)), 3, t, "label", base=1))


def squad(doc: Mapping) -> QaItem:
    t = "cola_squad"
    answers = field(doc, "answers", t, dict)
    texts = field(answers, "text", f"{t} answers", list)
    if not texts:
        raise FewshotDataError(f"{t}: field 'answers' has no answer text (SQuAD 2.0 unanswerable questions are not "
                               f"part of this task)")
    return QaItem((("Context", field(doc, "context", t, str)), ("Question", field(doc, "question", t, str))),
                  tuple(texts))


def race_questions(dataset):
    """``process_docs`` of cola_race: EleutherAI/race holds one row per article with its questions in
    ``problems`` (a Python-literal list of {question, options, answer}); the protocol scores each question, so
    each becomes one document {article, question, options, answer}, the shape of the demonstrations."""
    def explode(batch: dict) -> dict:
        out = {"article": [], "question": [], "options": [], "answer": []}
        for article, problems in zip(batch["article"], batch["problems"]):
            for problem in ast.literal_eval(problems) if isinstance(problems, str) else problems:
                out["article"].append(article)
                for key in ("question", "options", "answer"):
                    out[key].append(field(problem, key, "cola_race problems"))
        return out
    missing = [c for c in ("article", "problems") if c not in dataset.column_names]
    if missing:
        raise FewshotDataError(f"cola_race: dataset has no column {missing[0]!r} (columns: "
                               f"{', '.join(dataset.column_names)})")
    return dataset.map(explode, batched=True, remove_columns=dataset.column_names)


@dataclass(frozen=True)
class PaperTask:
    name: str
    parse: Callable[[Mapping], Item]
    demos: list[dict]
    metric: str = "accuracy"

    def item(self, doc: Mapping) -> Item:
        """``parse(doc)``, its errors always naming the task (an item's own checks do not know it)."""
        try:
            return self.parse(doc)
        except FewshotDataError as err:
            if str(err).startswith(self.name):
                raise
            raise FewshotDataError(f"{self.name}: {err}") from None


PAPER_TASKS = {t.name: t for t in (
    PaperTask("cola_mmlu", mmlu, demos.MMLU),
    PaperTask("cola_race", race, demos.RACE),
    PaperTask("cola_storycloze", storycloze, demos.STORYCLOZE),
    PaperTask("cola_lambada", lambada, []),
    PaperTask("cola_openbookqa", openbookqa, demos.OPENBOOKQA),
    PaperTask("cola_hellaswag", hellaswag, demos.HELLASWAG),
    PaperTask("cola_siqa", siqa, demos.SIQA),
    PaperTask("cola_squad", squad, demos.SQUAD, metric="exact_match"),
)}
