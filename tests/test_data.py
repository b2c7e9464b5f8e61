"""Tokenized windows and teacher-feature artifacts, with the tiny word-level tokenizer and tiny Llama
teacher from conftest (offline, CPU, no Ray)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.models.config import ConfigError
from latentlm.platform.config import merge
from latentlm.platform.data import windows as data_mod
from latentlm.platform.data.windows import (WindowPacker, artifact_key, document_ids, load_tokenizer, packed_windows,
                                            per_document_windows, prepare_data, read_windows, rebuild_documents,
                                            tokenize_windows, windows_table)
from latentlm.platform.methods.textldm.config import build_config

SEQ_LEN = 32
TEACHER_WINDOWS = 48


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    return load_tokenizer(str(tiny_lm_dir))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _words(n, offset=0):
    words = "the a river city music people king war science old new small large early later north".split()
    return " ".join(words[(offset + i) % len(words)] for i in range(n))


def overrides(corpus, lm_dir, **extra):
    lm = str(lm_dir)
    base = {
        "data": {"corpus": str(corpus), "tokenizer": lm, "seq_len": SEQ_LEN, "teacher_windows": TEACHER_WINDOWS,
                 "teacher_batch_size": 16, "valid_fraction": 0.1, "test_fraction": 0.1, "vocab_limit": 24},
        "vae": {"latent_dim": 8, "hidden_dim": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                "repa": {"teacher": lm, "layer": -2, "projector_hidden": 32}},
        "dit": {"hidden_dim": 32, "depth": 2, "n_heads": 2},
        "wandb": False,
    }
    return merge(base, extra)


# -- tokenize_windows ------------------------------------------------------------------------------

def test_tokenizer_has_eos_and_pad(tok):
    assert tok.eos_token_id == 0 and tok.pad_token_id == 0


def test_tokenize_windows_cuts_pads_and_counts(tok):
    seq_len = 8
    docs = [_words(5), _words(10, 3), _words(7, 1), _words(8, 2)]   # + EOS: 6, 11, 8, 9 tokens
    w = tokenize_windows(docs, tok, seq_len)
    assert w.tokens.dtype == np.int32 and w.lengths.dtype == np.int32 and w.doc_ids.dtype == np.int64
    assert w.tokens.shape == (6, seq_len)
    assert w.doc_ids.tolist() == [0, 1, 1, 2, 3, 3]
    assert w.lengths.tolist() == [6, 8, 3, 8, 8, 1]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for doc_id, doc in enumerate(docs):
        expected = _ids(tok, doc) + [eos]
        rows = w.tokens[w.doc_ids == doc_id]
        lengths = w.lengths[w.doc_ids == doc_id]
        # the windows concatenated over their real tokens give back the document + EOS
        assert np.concatenate([r[:n] for r, n in zip(rows, lengths)]).tolist() == expected
        # the tail is padded with the pad id; every window but the last is full
        assert all(n == seq_len for n in lengths[:-1])
        assert (rows[-1][lengths[-1]:] == pad).all()
    # a document of exactly seq_len - 1 tokens fills one window, ending in EOS
    assert w.tokens[3, -1] == eos and w.lengths[3] == seq_len
    # a document of exactly seq_len tokens spills only its EOS into a second window
    assert w.tokens[5, 0] == eos and w.lengths[5] == 1


def test_tokenize_windows_doc_ids_across_batches(tok):
    docs = [_words(1 + i % 4, i) for i in range(300)]   # more than the 256-document tokenizer batch
    w = tokenize_windows(docs, tok, 8)
    assert w.doc_ids.tolist() == list(range(300))
    assert w.lengths.tolist() == [2 + i % 4 for i in range(300)]
    for i in (0, 255, 256, 299):
        assert w.tokens[i, :w.lengths[i]].tolist() == _ids(tok, docs[i]) + [tok.eos_token_id]


def test_tokenize_windows_max_windows(tok):
    docs = [_words(10), _words(10, 1), _words(10, 2)]   # 2 windows each at seq_len 8
    full = tokenize_windows(docs, tok, 8)
    assert len(full.tokens) == 6
    for cap in (1, 3, 6, 100):
        w = tokenize_windows(docs, tok, 8, max_windows=cap)
        n = min(cap, 6)
        assert len(w.tokens) == len(w.lengths) == len(w.doc_ids) == n
        np.testing.assert_array_equal(w.tokens, full.tokens[:n])
        np.testing.assert_array_equal(w.doc_ids, full.doc_ids[:n])


def test_tokenize_windows_first_window_only(tok):
    docs = [_words(20), _words(3, 1), _words(7, 2)]
    w = tokenize_windows(docs, tok, 8, first_window_only=True)
    assert w.doc_ids.tolist() == [0, 1, 2]
    assert w.lengths.tolist() == [8, 4, 8]
    assert w.tokens[0].tolist() == _ids(tok, docs[0])[:8]       # cut before EOS
    assert w.tokens[1].tolist() == _ids(tok, docs[1]) + [0] * 5   # EOS + padding


def test_tokenize_windows_empty(tok):
    w = tokenize_windows([], tok, 8)
    assert len(w.tokens) == 0 and len(w.lengths) == 0 and len(w.doc_ids) == 0


# -- parquet artifacts -----------------------------------------------------------------------------

def test_windows_table_round_trip(tok, tmp_path):
    w = tokenize_windows([_words(10), _words(3, 4), _words(17, 2)], tok, 8)
    path = tmp_path / "w.parquet"
    pq.write_table(windows_table(w), path)
    back = read_windows(path)
    np.testing.assert_array_equal(back.tokens, w.tokens)
    np.testing.assert_array_equal(back.lengths, w.lengths)
    np.testing.assert_array_equal(back.doc_ids, w.doc_ids)
    np.testing.assert_array_equal(back.doc_offsets, w.doc_offsets)
    assert back.segment_docs == w.segment_docs and back.segment_starts == w.segment_starts
    assert back.tokens.dtype == np.int32 and back.tokens.shape == w.tokens.shape


# -- packed layout ---------------------------------------------------------------------------------

def test_packed_windows_have_no_padding_and_round_trip_provenance(tok):
    docs = document_ids([_words(10), _words(3, 4), _words(17, 2), _words(1), _words(6, 9)], tok)
    seq_len = 8
    w = packed_windows(docs, range(100, 105), seq_len)
    stream = [t for d in docs for t in d]
    assert len(w.tokens) == len(stream) // seq_len                          # full windows only
    assert (w.lengths == seq_len).all()
    np.testing.assert_array_equal(w.tokens.reshape(-1), stream[:len(w.tokens) * seq_len])  # no padding token added
    # provenance: first document and its offset, then every document the window touches
    starts = np.cumsum([0] + [len(d) for d in docs])
    for row in range(len(w.tokens)):
        first = int(np.searchsorted(starts, row * seq_len, side="right") - 1)
        assert w.doc_ids[row] == 100 + first and w.doc_offsets[row] == row * seq_len - starts[first]
        assert w.segment_starts[row][0] == 0 and w.segment_docs[row][0] == 100 + first
    rebuilt = rebuild_documents(w)
    covered = len(w.tokens) * seq_len
    for i, d in enumerate(docs):
        if starts[i + 1] <= covered:                                       # every fully packed document
            assert rebuilt[100 + i] == d
    assert rebuilt[max(rebuilt)] == docs[max(rebuilt) - 100][:covered - starts[max(rebuilt) - 100]]


def test_packing_does_not_depend_on_how_the_stream_is_batched(tok):
    docs = document_ids([_words(n, n) for n in (5, 11, 2, 30, 7, 7, 1)], tok)
    whole = packed_windows(docs, range(len(docs)), 6)
    packer, parts = WindowPacker(6), []
    for i, d in enumerate(docs):   # one document at a time, collecting after each
        packer.add(i, d)
        parts.append(packer.windows())
    np.testing.assert_array_equal(np.concatenate([p.tokens for p in parts if len(p.tokens)]), whole.tokens)
    assert sum((p.segment_docs for p in parts), []) == whole.segment_docs


def test_per_document_windows_round_trip_too(tok):
    docs = document_ids([_words(10), _words(3, 4), _words(17, 2)], tok)
    w = per_document_windows(docs, range(3), tok.pad_token_id, 8)
    assert rebuild_documents(w) == dict(enumerate(docs))
    assert (w.lengths < 8).any()                                            # the padded layout pads


def test_windows_table_with_teacher(tok, tmp_path):
    w = tokenize_windows([_words(10), _words(3, 4)], tok, 8)
    feats = np.random.default_rng(0).standard_normal((len(w.tokens), 8, 5)).astype(np.float16)
    table = windows_table(w, feats)
    assert table.column_names == ["tokens", "length", "doc_id", "doc_offset", "segment_docs", "segment_starts",
                                  "teacher"]
    assert table.schema.field("teacher").type == pa.list_(pa.float16())
    path = tmp_path / "f.parquet"
    pq.write_table(table, path)
    flat = np.stack(pq.read_table(path)["teacher"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(flat.reshape(feats.shape), feats)
    np.testing.assert_array_equal(read_windows(path).tokens, w.tokens)   # reading windows skips the features


def test_artifact_key():
    parts = {"corpus": "a.jsonl", "seq_len": 32, "max_documents": None, "valid": 0.1}
    key = artifact_key(**parts)
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert artifact_key(**dict(reversed(list(parts.items())))) == key   # order does not matter
    assert artifact_key(**parts) == key                                  # stable
    changed = [artifact_key(**{**parts, "corpus": "b.jsonl"}), artifact_key(**{**parts, "seq_len": 64}),
               artifact_key(**{**parts, "max_documents": 5}), artifact_key(**{**parts, "valid": 0.2}),
               artifact_key(**{**parts, "extra": 1}), artifact_key(**{k: v for k, v in parts.items() if k != "valid"})]
    assert key not in changed and len(set(changed)) == len(changed)


def test_teacher_dtype_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from latentlm.platform.training import engine
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not engine.native_bf16("cpu")
    assert data_mod.resolve_teacher_dtype("auto", use_gpu=False) == "float32"  # emulated bf16 is ~8x slower
    assert data_mod.resolve_teacher_dtype("auto", use_gpu=True) == "bfloat16"
    assert data_mod.resolve_teacher_dtype("bfloat16", use_gpu=False) == "bfloat16"  # asked for: kept
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert engine.native_bf16("cpu") and data_mod.resolve_teacher_dtype("auto", use_gpu=False) == "bfloat16"
    assert data_mod.resolve_teacher_dtype("float32", use_gpu=True) == "float32"
    # the resolved dtype keys the feature cache: features computed in another dtype are never reused
    assert data_mod.feature_dir(Path("r"), "t", 8, "float32") != data_mod.feature_dir(Path("r"), "t", 8, "bfloat16")


# -- prepare_data ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tiny_corpus, tiny_lm_dir, tmp_path_factory, single_thread, ray_local):
    root = tmp_path_factory.mktemp("data_root")
    cfg = build_config("tiny", overrides(tiny_corpus, tiny_lm_dir))
    torch.manual_seed(0)
    arts = prepare_data(cfg, root, need_teacher=True)
    return cfg, root, arts


def test_prepare_data_writes_manifest_and_train(prepared):
    cfg, root, arts = prepared
    base = Path(arts.root)
    assert base.parent == Path(root) / "data"
    manifest = json.loads(Path(arts.manifest).read_text())
    assert Path(arts.manifest) == base / "manifest.json" and Path(arts.train) == base / "train"
    train = read_windows(Path(arts.train))
    assert train.tokens.shape[1] == SEQ_LEN
    assert manifest["train_windows"] == len(train.tokens) > TEACHER_WINDOWS
    assert manifest["layout"] == "packed" and manifest["padding_tokens"] == 0
    assert manifest["train_tokens"] == int(train.lengths.sum()) == len(train.tokens) * SEQ_LEN
    assert manifest["shards"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                  for p in sorted(Path(arts.train).glob("*.parquet"))}
    assert len(manifest["shards"]) >= 1
    assert manifest["documents"] == 400 and sum(manifest["split_documents"].values()) == 400
    assert manifest["seq_len"] == SEQ_LEN
    assert arts.pad_id == 0 and arts.eos_id == 0
    assert arts.teacher_dim == 32 and arts.teacher_layer == 3        # 4 layers: -2 -> hidden_states[3]
    # the 24 most used ids, plus EOS/pad when they are not among them, plus one unknown class
    keep = load_tensors(Path(arts.vocab))["keep_ids"].tolist()
    assert arts.vocab_size == len(keep) + 1 and 24 <= len(keep) <= 25 and arts.eos_id in keep
    # packed: the only EOS tokens are the ones closing each document (no padding); every document but the
    # cut-off last one is closed inside the windows
    rebuilt = rebuild_documents(train)
    closed = [doc for doc, ids in rebuilt.items() if ids[-1] == arts.eos_id]
    assert (train.tokens == arts.eos_id).sum() == len(closed) == len(rebuilt) - (rebuilt[max(rebuilt)][-1] != 0)
    assert all(arts.eos_id not in ids[:-1] for ids in rebuilt.values())


def _split_documents(cfg):
    from latentlm.platform.data.corpus import CorpusSpec, load_documents, split_documents
    d = cfg.data
    documents = load_documents(CorpusSpec(d.corpus, d.text_field, max_documents=d.max_documents))
    return split_documents(documents, d.valid_fraction, d.test_fraction, d.split_seed)["train"]


def test_prepare_data_features_match_teacher(prepared, tiny_lm_dir):
    from latentlm.models.teacher import FrozenTeacher
    cfg, root, arts = prepared
    table = pq.read_table(arts.vae_train)
    assert table.num_rows == TEACHER_WINDOWS
    assert arts.teacher_column == "teacher_3" and arts.vae_windows == TEACHER_WINDOWS
    feats = np.stack(table["teacher_3"].to_numpy(zero_copy_only=False))
    assert feats.dtype == np.float16 and feats.shape == (TEACHER_WINDOWS, SEQ_LEN * 32)
    tokens = np.stack(table["tokens"].to_numpy(zero_copy_only=False))
    train = read_windows(Path(arts.train))
    np.testing.assert_array_equal(tokens, train.tokens[:TEACHER_WINDOWS])   # the first windows, in order
    teacher = FrozenTeacher(str(tiny_lm_dir), [cfg.vae.repa.layer])
    assert teacher.layers == [3]
    expected = teacher(torch.from_numpy(tokens).long())[3].float().numpy().astype(np.float16)
    np.testing.assert_allclose(feats.reshape(expected.shape).astype(np.float32), expected.astype(np.float32),
                               atol=1e-2, rtol=0)
    meta = json.loads((Path(arts.vae_train).parent / "manifest.json").read_text())
    assert meta["teacher_dim"] == 32 and meta["layers"] == [3] and meta["windows"] == TEACHER_WINDOWS
    assert meta["shards"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                              for p in sorted(Path(arts.vae_train).glob("*.parquet"))}


def test_train_windows_are_the_split_documents_in_order(prepared):
    """Ray Data tokenizes in parallel, yet the shards hold exactly what in-process packing of the train split
    gives, in document order, under fixed shard names (regression: Ray's write_parquet fused with map_batches
    reordered rows), and the provenance columns rebuild every document."""
    cfg, root, arts = prepared
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    docs = document_ids(_split_documents(cfg), tokenizer)
    expected = packed_windows(docs, range(len(docs)), cfg.data.seq_len)
    train = read_windows(Path(arts.train))
    np.testing.assert_array_equal(train.tokens, expected.tokens)
    np.testing.assert_array_equal(train.doc_ids, expected.doc_ids)
    np.testing.assert_array_equal(train.doc_offsets, expected.doc_offsets)
    assert train.segment_docs == expected.segment_docs and train.segment_starts == expected.segment_starts
    rebuilt = rebuild_documents(train)
    assert all(rebuilt[i] == docs[i] for i in range(max(rebuilt)))          # all but the cut-off last one
    assert sorted(p.name for p in Path(arts.train).glob("*.parquet")) == ["part-00000.parquet"]


def test_per_document_layout_pads_each_document(prepared, tiny_corpus, tiny_lm_dir):
    cfg, root, arts = prepared
    other = build_config("tiny", overrides(tiny_corpus, tiny_lm_dir, data={"layout": "per_document"}))
    out = prepare_data(other, root, need_teacher=False)
    assert out.root != arts.root                                           # the layout is part of the key
    train = read_windows(Path(out.train))
    expected = tokenize_windows(_split_documents(other), load_tokenizer(other.data.tokenizer), other.data.seq_len)
    np.testing.assert_array_equal(train.tokens, expected.tokens)
    np.testing.assert_array_equal(train.lengths, expected.lengths)
    manifest = json.loads(Path(out.manifest).read_text())
    assert manifest["layout"] == "per_document"
    assert manifest["padding_tokens"] == int(len(train.tokens) * SEQ_LEN - train.lengths.sum()) > 0
    # every training document is present and closed by exactly one EOS at its last real position
    last = train.tokens[np.arange(len(train.tokens)), train.lengths - 1]
    docs_with_eos = train.doc_ids[last == out.eos_id]
    assert docs_with_eos.tolist() == sorted(set(train.doc_ids.tolist()))
    assert rebuild_documents(train) == dict(enumerate(document_ids(_split_documents(other),
                                                                   load_tokenizer(other.data.tokenizer))))


def test_write_dataset_atomic_keeps_order_across_shards(ray_local, tmp_path):
    rows = [{"i": i, "x": [float(i)] * 3} for i in range(50)]
    ds = data_mod._ray_data().from_items(rows).map_batches(lambda b: b, batch_format="pyarrow", batch_size=7)
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.parquet").write_bytes(b"replaced, never mixed in")
    digests = data_mod.write_dataset_atomic(ds, target, rows_per_shard=16)
    assert sorted(digests) == [f"part-0000{k}.parquet" for k in range(4)]
    assert pq.read_table(target)["i"].to_pylist() == list(range(50))
    assert not list(tmp_path.glob(".out.tmp*"))


def test_prepare_data_second_call_is_a_cache_hit(prepared, monkeypatch):
    import latentlm.models.teacher as teacher_mod
    cfg, root, arts = prepared

    def boom(*args, **kwargs):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(teacher_mod, "FrozenTeacher", boom)
    monkeypatch.setattr(data_mod, "load_documents", boom)
    monkeypatch.setattr(data_mod, "cut_windows", boom)
    mtimes = {p: p.stat().st_mtime_ns for p in Path(arts.root).rglob("*") if p.is_file()}
    again = prepare_data(cfg, root, need_teacher=True)
    assert again == arts
    assert {p: p.stat().st_mtime_ns for p in Path(arts.root).rglob("*") if p.is_file()} == mtimes


def test_prepare_data_without_teacher(prepared, monkeypatch):
    import latentlm.models.teacher as teacher_mod
    cfg, root, arts = prepared
    monkeypatch.setattr(teacher_mod, "FrozenTeacher", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    off = prepare_data(cfg, root, need_teacher=False)
    assert off.root == arts.root and off.train == arts.train and off.teacher_dim is None and off.teacher_layer is None
    # REPA off reads the first teacher_windows training windows: the very windows the REPA VAE sees
    assert off.vae_train == off.train and off.teacher_column is None and off.vae_windows == TEACHER_WINDOWS
    subset = read_windows(Path(off.train))
    features = pq.read_table(arts.vae_train)
    np.testing.assert_array_equal(subset.tokens[:TEACHER_WINDOWS],
                                  np.stack(features["tokens"].to_numpy(zero_copy_only=False)))
    np.testing.assert_array_equal(subset.lengths[:TEACHER_WINDOWS], features["length"].to_numpy())


def test_a_second_layer_is_added_in_one_new_pass(prepared):
    cfg, root, arts = prepared
    both = prepare_data(cfg, root, need_teacher=True, teacher_layers=[-1])
    meta = json.loads((Path(both.vae_train).parent / "manifest.json").read_text())
    assert meta["layers"] == [3, 4] and both.teacher_column == "teacher_3"
    assert {"teacher_3", "teacher_4"} <= set(pq.read_schema(next(Path(both.vae_train).glob("*.parquet"))).names)


def test_prepare_data_key_changes_with_data_config(prepared, tiny_corpus, tiny_lm_dir):
    cfg, root, arts = prepared
    other = build_config("tiny", overrides(tiny_corpus, tiny_lm_dir, data={"split_seed": 1, "max_train_windows": 20}))
    out = prepare_data(other, root, need_teacher=False)
    assert out.root != arts.root
    assert len(read_windows(Path(out.train)).tokens) == 20
    assert out.vae_train == out.train


def test_prepare_data_empty_corpus(tmp_path, tiny_lm_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = build_config("tiny", overrides(empty, tiny_lm_dir))
    with pytest.raises(ConfigError, match="empty.jsonl"):
        prepare_data(cfg, tmp_path / "root", need_teacher=False)
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(ConfigError, match="blank.jsonl"):
        prepare_data(build_config("tiny", overrides(blank, tiny_lm_dir)), tmp_path / "root", need_teacher=True)
    assert not (tmp_path / "root" / "data").exists() or not any((tmp_path / "root" / "data").rglob("*.parquet"))


@pytest.mark.ray
def test_a_small_training_set_is_held_in_memory_with_the_rows_a_streamed_one_has(tmp_path, ray_local):
    """``training_dataset`` reads shards under ``materialize_max_mb`` into one Arrow table in the driver and streams
    larger ones with ``read_parquet``: the same rows, columns, names and order either way (limit and rename too)."""
    from latentlm.platform.training.launch import training_dataset
    rng = np.random.default_rng(0)
    for shard, start in (("part-0.parquet", 0), ("part-1.parquet", 25)):
        pq.write_table(pa.table({
            "tokens": pa.array([list(rng.integers(0, 50, 8)) for _ in range(25)], type=pa.list_(pa.int32())),
            "length": pa.array(np.arange(start, start + 25)),
            "teacher": pa.array([list(rng.standard_normal(4)) for _ in range(25)], type=pa.list_(pa.float16())),
            "doc_id": pa.array(np.arange(25))}), tmp_path / shard)

    def rows(max_mb):
        dataset = training_dataset(str(tmp_path), ["tokens", "length", "teacher"], max_mb, limit=40,
                                   rename={"teacher": "features"})
        return [{name: np.asarray(value).tolist() for name, value in row.items()} for row in dataset.iter_rows()]

    held, streamed = rows(max_mb=1), rows(max_mb=0)
    assert held == streamed
    assert len(held) == 40 and [row["length"] for row in held] == list(range(40))  # shard order, first 40 rows
    assert list(held[0]) == ["tokens", "length", "features"]
