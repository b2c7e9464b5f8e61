"""The Shakespeare corpus's text cleaning: a Gutenberg work as paragraphs of cleaned lines (no licence text,
stage directions, headings or cast list), cut into passages of about N words (``assets.shakespeare_documents``).
"""
from __future__ import annotations

import re

_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I)
_STAGE_DIRECTION = re.compile(r"[\[{][^\[\]{}]{0,800}[\]}]")  # [Enter ...], [Aside.], typos "{Aside.]"
_CAST_LIST = re.compile(r"^(dramatis personae|persons represented)\b", re.I)
# Act/scene headings; "PROLOGUE", "EPILOGUE" alone on a line go as all-caps headings, since as the
# first line of a speech they name a speaker (the Prologue in A Midsummer Night's Dream).
_SECTION = re.compile(r"^(ACT|SCENE)\b|^(Act|Scene)\b[\s.,:-]")
_BYLINE = re.compile(r"^by William Shakespeare\.?$", re.I)
_ROMAN = re.compile(r"^[IVXLC]+\.?$")


def _strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg headers, footers and licence text, whichever vintage is present.

    The files in the ``shakespeare`` package are already stripped, but a re-upload might not be.
    """
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    text = re.sub(r"<<.*?>>", " ", text, flags=re.S)  # the old "<<THIS ELECTRONIC VERSION ...>>" notices
    return "\n".join(line for line in text.splitlines() if "gutenberg" not in line.lower())


def _drop_stage_directions(text: str) -> str:
    """Remove bracketed stage directions, including nested and unbalanced ones.

    A direction that spans a blank line leaves a paragraph break behind. An unclosed "[" drops the
    rest of its line ("[Enter MENENIUS"), a stray "]" the start of its line ("vanish.]").
    """
    def replace(match: re.Match) -> str:
        return "\n\n" if re.search(r"\n[ \t]*\n", match.group()) else " "

    while True:  # innermost first: "[IMOGEN in bed [reading]; a LADY [attending.]]"
        text, n = _STAGE_DIRECTION.subn(replace, text)
        if not n:
            break
    text = re.sub(r"[\[{][^\n]*", " ", text)
    return re.sub(r"^[^\n]*[\]}]", " ", text, flags=re.M)


def _is_caps_header(line: str) -> bool:
    return not re.search(r"[a-z]", line) and bool(re.search(r"[A-Z]{3,}", line))


def work_paragraphs(text: str) -> list[list[str]]:
    """One work as paragraphs (speeches, stanzas) of cleaned lines.

    Drops stage directions, the title and byline, the cast list, act/scene headings (with the
    "SCENE: <place>" paragraph), all-caps headings and sonnet numbers. A speaker label (the first
    line of a speech, e.g. "HAMLET." or "Ber.") is kept and joined to the speech's first line.
    """
    paragraphs, in_cast_list = [], False
    text = _drop_stage_directions(_strip_gutenberg(text))
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.strip() for line in block.splitlines()]
        lines = [line for line in lines if re.search(r"[A-Za-z]", line) and not _BYLINE.match(line)]
        if not lines:
            continue
        if _CAST_LIST.match(lines[0]):
            in_cast_list = True
            continue
        if _SECTION.match(lines[0]):
            in_cast_list = False
            continue
        if in_cast_list or all(_is_caps_header(line) for line in lines):
            continue
        if len(lines) == 1 and _ROMAN.match(lines[0]):
            continue
        lines = lines[:1] + [line for line in lines[1:] if not _is_caps_header(line)]
        if len(lines) >= 2 and _looks_like_speaker(lines[0]):
            lines = [f"{lines[0]} {lines[1]}"] + lines[2:]
        elif len(lines) == 1 and _looks_like_speaker(lines[0]):
            continue  # a speech that was only a stage direction
        paragraphs.append(lines)
    return paragraphs


def _looks_like_speaker(line: str) -> bool:
    return len(line.split()) <= 4 and line.endswith(".") and (line[0].isupper() or line[0].isdigit())


def passages(paragraphs: list[list[str]], words_per_passage: int) -> list[str]:
    """Greedy cut into passages of about ``words_per_passage`` words.

    A passage ends at a paragraph boundary once it holds >= 3/4 of the target, or at a line boundary
    once it reaches the target; a short remainder (< 1/4) at the end of a work joins the last passage.
    """
    passages, buffer, count = [], [], 0

    def flush() -> None:
        nonlocal buffer, count
        passages.append(" ".join(" ".join(buffer).split()))
        buffer, count = [], 0

    for paragraph in paragraphs:
        for i, line in enumerate(paragraph):
            buffer.append(line)
            count += len(line.split())
            last = i == len(paragraph) - 1
            if count >= words_per_passage or (last and count >= 0.75 * words_per_passage):
                flush()
    if buffer:
        if passages and count < words_per_passage / 4:
            passages[-1] = " ".join([passages[-1], *" ".join(buffer).split()])
        else:
            flush()
    return passages
