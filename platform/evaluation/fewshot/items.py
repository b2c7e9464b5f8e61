"""What one task document becomes under the protocol, and how it is rendered as a prompt.

Three kinds of item, each with the prompt the model sees (ending at the anchor, with no trailing newline or
space), the target text a demonstration shows after the anchor, and the scorer of a generation:

* :class:`McqItem`: labelled fields ("Question: ..."), the options on one line as ``(A) ... (B) ...``, the anchor;
  the model must generate the option *text*; scored by ``scoring.mcq_correct``;
* :class:`QaItem`: labelled fields and the anchor; scored by SQuAD exact match against any gold answer;
* :class:`LastWordItem`: the passage without its last word (no anchor: direct continuation); scored by the
  first generated word.

A missing or ill-typed document field raises :class:`FewshotDataError` naming the task and the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from . import scoring


class FewshotDataError(ValueError):
    """A task document (or task data file) lacks a field the task reads, or holds an unusable value."""


def field(doc: Mapping[str, Any], name: str, task: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``doc[name]``, or a one-line error naming the task, the field and the fields the document has."""
    if not isinstance(doc, Mapping) or name not in doc:
        have = ", ".join(sorted(doc)) if isinstance(doc, Mapping) else type(doc).__name__
        raise FewshotDataError(f"{task}: document has no field {name!r} (it has: {have})")
    value = doc[name]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FewshotDataError(f"{task}: field {name!r} must be {expected}, got {value!r}")
    return value


def options_line(options: Sequence[str]) -> str:
    """``(A) first (B) second ...`` (the protocol's option display)."""
    return " ".join(f"({scoring.LABELS[i]}) {text.strip()}" for i, text in enumerate(options))


def _lines(fields: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{label}: {text.strip()}" if label else text.strip() for label, text in fields]


@dataclass(frozen=True)
class McqItem:
    fields: tuple[tuple[str, str], ...]   # (label, text): "Question: ..." lines; an empty label shows the bare text
    options: tuple[str, ...]
    answer: int
    anchor: str = "Answer:"

    def __post_init__(self):
        if len(self.options) < 2 or not all(isinstance(o, str) and o.strip() for o in self.options):
            raise FewshotDataError(f"options must be >= 2 non-empty strings, got {list(self.options)!r}")
        if len(self.options) > len(scoring.LABELS):
            raise FewshotDataError(f"at most {len(scoring.LABELS)} options, got {len(self.options)}")
        if not 0 <= self.answer < len(self.options):
            raise FewshotDataError(f"answer must index the {len(self.options)} options, got {self.answer!r}")

    @property
    def prompt(self) -> str:
        return "\n".join([*_lines(self.fields), options_line(self.options), self.anchor])

    @property
    def target(self) -> str:
        return self.options[self.answer].strip()

    def correct(self, generation: str) -> bool:
        return scoring.mcq_correct(generation, self.options, self.answer)


@dataclass(frozen=True)
class QaItem:
    fields: tuple[tuple[str, str], ...]
    answers: tuple[str, ...]
    anchor: str = "Answer:"

    def __post_init__(self):
        if not self.answers or not all(isinstance(a, str) and a.strip() for a in self.answers):
            raise FewshotDataError(f"answers must be >= 1 non-empty strings, got {list(self.answers)!r}")

    @property
    def prompt(self) -> str:
        return "\n".join([*_lines(self.fields), self.anchor])

    @property
    def target(self) -> str:
        return self.answers[0].strip()

    def correct(self, generation: str) -> bool:
        return scoring.exact_match(generation, self.answers)


@dataclass(frozen=True)
class LastWordItem:
    passage: str   # the text before the target word, without a trailing space
    word: str

    def __post_init__(self):
        if not self.passage.strip() or not scoring.first_word(self.word):
            raise FewshotDataError(f"a last-word item needs a passage and a target word, got {self.passage!r} / "
                                   f"{self.word!r}")

    @property
    def prompt(self) -> str:
        return self.passage.rstrip()

    @property
    def target(self) -> str:
        return self.word

    def correct(self, generation: str) -> bool:
        return scoring.first_word_correct(generation, self.word)


def last_word_split(text: str, task: str) -> LastWordItem:
    """A passage split before its last space-separated word (LAMBADA's rule)."""
    passage, _, word = text.strip().rpartition(" ")
    if not passage:
        raise FewshotDataError(f"{task}: a passage needs at least two words, got {text!r}")
    return LastWordItem(passage, word)
