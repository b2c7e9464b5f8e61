"""Corpus loading from local files and the hash-based split. Fast: no real assets are touched."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentlm.models.config import ConfigError
from latentlm.platform.data.corpus import CorpusSpec, load_documents, split_documents


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_txt_is_split_on_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First paragraph,\nsecond line.\n\n\n  Second one.  \n \nThird.\n\n")
    assert load_documents(CorpusSpec(source=str(path))) == [
        "First paragraph,\nsecond line.", "Second one.", "Third."]


def test_jsonl_uses_text_field_and_drops_empty(tmp_path):
    path = tmp_path / "a.jsonl"
    _write_jsonl(path, [{"body": "one", "id": 1}, {"body": "  "}, {"body": "two"}])
    path.write_text(path.read_text() + "\n")  # a trailing blank line is fine
    assert load_documents(CorpusSpec(source=str(path), text_field="body")) == ["one", "two"]


def test_parquet_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["alpha", "", None, "beta"], "n": [1, 2, 3, 4]}), path)
    assert load_documents(CorpusSpec(source=str(path))) == ["alpha", "beta"]


def test_folder_reads_supported_files_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("from b")
    _write_jsonl(tmp_path / "a.jsonl", [{"text": "from a"}])
    (tmp_path / "sub").mkdir()
    pq.write_table(pa.table({"text": ["from sub"]}), tmp_path / "sub" / "c.parquet")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / ".hidden.txt").write_text("ignored too")
    assert load_documents(CorpusSpec(source=str(tmp_path))) == ["from a", "from b", "from sub"]


def test_max_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(f"doc {i}" for i in range(10)))
    assert load_documents(CorpusSpec(source=str(path), max_documents=3)) == ["doc 0", "doc 1", "doc 2"]


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n\n")
    with pytest.raises(ConfigError, match=r"no documents found \(expected .*paragraphs"):
        load_documents(CorpusSpec(source=str(tmp_path / "empty.txt")))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ConfigError, match=r"no documents found \(expected \*\.txt, \*\.jsonl, \*\.parquet"):
        load_documents(CorpusSpec(source=str(tmp_path / "empty_dir")))


def test_missing_path_and_missing_field(tmp_path):
    with pytest.raises(ConfigError, match="no-such.jsonl"):
        load_documents(CorpusSpec(source=str(tmp_path / "no-such.jsonl")))
    path = tmp_path / "a.jsonl"
    _write_jsonl(path, [{"text": "ok"}, {"body": "no text here"}])
    with pytest.raises(ConfigError, match=r"a\.jsonl:2 has no field 'text'"):
        load_documents(CorpusSpec(source=str(path)))
    table = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"]}), table)
    with pytest.raises(ConfigError, match=r"a\.parquet has no column 'text'"):
        load_documents(CorpusSpec(source=str(table)))


@pytest.mark.parametrize("kwargs, field", [
    (dict(source=""), "corpus.source"),
    (dict(source="embedded:brown"), "corpus.source"),
    (dict(source="hf:"), "corpus.source"),
    (dict(text_field=""), "corpus.text_field"),
    (dict(split=""), "corpus.split"),
    (dict(max_documents=0), "corpus.max_documents"),
    (dict(max_documents=True), "corpus.max_documents"),
])
def test_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        CorpusSpec(**kwargs)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text\nx\n")
    with pytest.raises(ConfigError, match="corpus.source"):
        load_documents(CorpusSpec(source=str(path)))


DOCS = [f"synthetic document number {i}" for i in range(2000)]


def test_split_is_deterministic_disjoint_and_complete():
    a = split_documents(DOCS, seed=3)
    assert a == split_documents(list(DOCS), seed=3)
    assert set(a) == {"train", "valid", "test"}
    assert sorted(a["train"] + a["valid"] + a["test"]) == sorted(DOCS)
    assert not set(a["train"]) & set(a["valid"]) and not set(a["train"]) & set(a["test"])
    assert not set(a["valid"]) & set(a["test"])
    for docs in a.values():  # input order is kept inside each split
        assert docs == sorted(docs, key=DOCS.index)
    assert split_documents(DOCS, seed=4) != a


def test_split_fractions_are_roughly_respected():
    splits = split_documents(DOCS, valid_fraction=0.1, test_fraction=0.05)
    assert 150 <= len(splits["valid"]) <= 250  # expected 200, sd ~13
    assert 65 <= len(splits["test"]) <= 135  # expected 100, sd ~10
    assert split_documents(DOCS, valid_fraction=0.0, test_fraction=0.0)["train"] == DOCS


def test_appending_documents_never_moves_existing_ones():
    before = split_documents(DOCS[:1000])
    after = split_documents(DOCS)
    for name, docs in before.items():
        assert [d for d in after[name] if d in set(DOCS[:1000])] == docs


@pytest.mark.parametrize("kwargs", [
    dict(valid_fraction=-0.1), dict(test_fraction=1.5), dict(valid_fraction=0.6, test_fraction=0.6)])
def test_split_fractions_are_validated(kwargs):
    with pytest.raises(ConfigError, match="fraction"):
        split_documents(DOCS, **kwargs)
