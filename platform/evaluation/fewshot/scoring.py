"""Scoring of one generation under the few-shot generative protocol: pure functions, no model, no lm-eval.

Every score starts from the generation *truncated at its first newline* (the protocol's stop rule; lm-eval's
``until: ["\\n"]`` already cuts there, the scorer does it again so that an adapter that ignores ``until`` is
scored the same) and compares *normalised* text: lowercase, punctuation removed, the articles a/an/the removed,
whitespace collapsed (SQuAD's answer normalisation).

* **MCQ** (:func:`match_option`): the paper maps a generation to the "best-matching candidate option text" but
  does not give the matching function; ours, in order (``MCQ_RULE``):

  1. nothing left after truncation and normalisation -> no option;
  2. the normalised generation equals an option's normalised text -> that option (the first, if two options
     normalise alike);
  3. a label-only answer ("B", "(B)", "B)", "B.", "[b]", "option B", "answer: (B)") -> that option, if the
     label exists;
  4. a label followed by text ("(B) Paris", "B) Paris", "B. Paris") -> the text decides (rules 2 and 5 on the
     text alone), the label only when the text overlaps no option;
  5. otherwise the option with the highest token-overlap F1 (SQuAD's bag-of-tokens F1) with the generation;
     a tie for the highest F1, or no overlap at all, maps to no option.

  A generation that maps to no option is incorrect. The model is asked for the option *text*; rules 3-4 accept
  a label so that a model that answers with one is scored by what it chose, not failed on form.
* **Last word** (:func:`first_word_correct`, LAMBADA): the first generated word (the first whitespace-separated
  token with a letter or digit, punctuation stripped, lowercased) equals the target word treated alike.
* **Extractive QA** (:func:`exact_match`, SQuAD): the normalised generation equals a normalised gold answer.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

SCORER_VERSION = 1  # bump when a rule below changes: it is part of every few-shot protocol hash
LABELS = "ABCDEFGHIJ"
MCQ_RULE = ("generation cut at its first newline and SQuAD-normalised (lowercase, punctuation and articles removed, "
            "whitespace collapsed); empty -> no option; exact normalised option text -> that option (first of equals); "
            "a label-only answer ((B), B), B., option B) -> that option; label + text -> the text decides, the label "
            "when the text overlaps no option; else the unique highest token-F1 option; ties and zero overlap -> no "
            "option (incorrect)")
LASTWORD_RULE = ("first whitespace-separated token of the generation (cut at its first newline) that has a letter or "
                 "digit, punctuation stripped and lowercased, equals the target treated alike")
EXACT_MATCH_RULE = "generation cut at its first newline; SQuAD-normalised text equals a SQuAD-normalised gold answer"

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# "B", "(B)", "[B]", "B)", "B.", "B:", optionally after "option"/"answer"/"choice" (and a colon): the whole answer
_LABEL_ONLY = re.compile(r"^(?:(?:option|answer|choice)\s*:?\s*)?[(\[]?([a-z])[)\]]?[.:]?$", re.IGNORECASE)
# a decorated label ("(B)", "[B]", "B)", "B.", "B:") followed by text; a bare "A dog ..." is the article, not a label
_LABEL_THEN_TEXT = re.compile(r"^(?:(?:option|answer|choice)\s*:?\s*)?(?:[(\[]([a-z])[)\]]|([a-z])[).:])\s+(\S.*)$",
                              re.IGNORECASE)


def truncate(generation: str) -> str:
    """The generation up to its first newline (the protocol's stop rule)."""
    return generation.split("\n", 1)[0]


def normalize(text: str) -> str:
    """SQuAD normalisation: lowercase, punctuation removed, articles removed, whitespace collapsed."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 between two *normalised* texts (0 when either is empty)."""
    pred, ref = prediction.split(), reference.split()
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class OptionMatch:
    """Which option a generation maps to (``index`` None: none) and by which rule: ``empty``, ``exact``,
    ``label``, ``f1``, ``tie`` or ``no_overlap``; ``f1`` is the winning overlap F1 (1.0 for exact, 0.0 for label)."""
    index: int | None
    rule: str
    f1: float = 0.0


def _by_text(text: str, options: Sequence[str]) -> OptionMatch:
    """Rules 2 and 5 on already-truncated text."""
    norm = normalize(text)
    if not norm:
        return OptionMatch(None, "empty")
    normalised = [normalize(o) for o in options]
    if norm in normalised:
        return OptionMatch(normalised.index(norm), "exact", 1.0)
    scores = [token_f1(norm, o) for o in normalised]
    best = max(scores)
    if best == 0.0:
        return OptionMatch(None, "no_overlap")
    winners = [i for i, s in enumerate(scores) if math.isclose(s, best, rel_tol=0, abs_tol=1e-12)]
    return OptionMatch(winners[0], "f1", best) if len(winners) == 1 else OptionMatch(None, "tie", best)


def _label_index(letter: str, count: int) -> int | None:
    index = LABELS.find(letter.upper())
    return index if 0 <= index < count else None


def match_option(generation: str, options: Sequence[str]) -> OptionMatch:
    """Map a generation to one of ``options`` by the rules in the module docstring (``MCQ_RULE``)."""
    if not options:
        raise ValueError("match_option: options must be a non-empty list of option texts")
    text = truncate(generation).strip()
    by_text = _by_text(text, options)
    if by_text.rule == "exact":
        return by_text
    label_only = _LABEL_ONLY.match(text)
    if label_only:
        index = _label_index(label_only.group(1), len(options))
        return OptionMatch(index, "label") if index is not None else by_text
    labelled = _LABEL_THEN_TEXT.match(text)
    if labelled:
        rest = _by_text(labelled.group(3), options)
        index = _label_index(labelled.group(1) or labelled.group(2), len(options))
        if rest.rule in ("empty", "no_overlap") and index is not None:
            return OptionMatch(index, "label")
        return rest
    return by_text


def best_option(generation: str, options: Sequence[str]) -> int | None:
    """The index of the option ``generation`` maps to, or None (incorrect under any gold)."""
    return match_option(generation, options).index


def mcq_correct(generation: str, options: Sequence[str], answer: int) -> bool:
    return best_option(generation, options) == answer


def _word(token: str) -> str:
    return "".join(c for c in token.lower() if c not in _PUNCTUATION)


def first_word(generation: str) -> str:
    """The first generated word, normalised ('' when there is none): see ``LASTWORD_RULE``."""
    for token in truncate(generation).split():
        word = _word(token)
        if any(c.isalnum() for c in word):
            return word
    return ""


def first_word_correct(generation: str, target: str) -> bool:
    word = first_word(generation)
    return bool(word) and word == _word(target.strip())


def exact_match(generation: str, answers: Sequence[str]) -> bool:
    """SQuAD exact match against any gold answer; an empty (normalised) generation never matches."""
    prediction = normalize(truncate(generation))
    return bool(prediction) and any(prediction == normalize(a) for a in answers)
