"""Tokenized windows and teacher features as Parquet artifacts with manifests.

A corpus is split into documents (deterministically), each document is tokenized, closed with EOS and
cut into fixed windows of ``seq_len`` tokens; the last window of a document is padded with the pad
(= EOS) token, so a generated target ends where the model emits EOS. Artifacts are content-addressed
(the key hashes everything that changes them) and shared by every run under the same root, so two
arms of an ablation reuse one tokenization and one teacher pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from latentlm.models.checkpoint import write_json
from latentlm.models.config import ConfigError

from . import assets
from .corpus import CorpusSpec, load_documents, split_documents

log = logging.getLogger(__name__)


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer
    path = assets.resolve_model(spec)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=Path(path).is_dir())
    if tok.eos_token_id is None:
        raise ConfigError(f"data.tokenizer: {spec} has no EOS token; latentlm needs one to end documents")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class Windows:
    tokens: np.ndarray   # (N, seq_len) int32
    lengths: np.ndarray  # (N,) int32: tokens before padding (document tokens + the closing EOS, if inside)
    doc_ids: np.ndarray  # (N,) int64: index of the source document within its split


def tokenize_windows(documents: list[str], tokenizer, seq_len: int, max_windows: int | None = None,
                     first_window_only: bool = False) -> Windows:
    """Tokenize, append EOS, cut into windows of ``seq_len`` and pad the tail with the pad token."""
    pad = tokenizer.pad_token_id
    rows, lengths, doc_ids = [], [], []
    batch = 256
    for start in range(0, len(documents), batch):
        encoded = tokenizer(documents[start:start + batch], add_special_tokens=False)["input_ids"]
        for offset, ids in enumerate(encoded):
            ids = list(ids) + [tokenizer.eos_token_id]
            chunks = range(0, len(ids), seq_len) if not first_window_only else [0]
            for i in chunks:
                chunk = ids[i:i + seq_len]
                rows.append(chunk + [pad] * (seq_len - len(chunk)))
                lengths.append(len(chunk))
                doc_ids.append(start + offset)
                if max_windows is not None and len(rows) >= max_windows:
                    return _windows(rows, lengths, doc_ids, seq_len)
    return _windows(rows, lengths, doc_ids, seq_len)


def _windows(rows, lengths, doc_ids, seq_len: int) -> Windows:
    return Windows(np.asarray(rows, dtype=np.int32).reshape(len(rows), seq_len),
                   np.asarray(lengths, dtype=np.int32), np.asarray(doc_ids, dtype=np.int64))


def artifact_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_parquet_atomic(table: pa.Table, path: Path) -> str:
    """Write ``table`` to ``path`` via a temp file + rename; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(path)
    return digest


def windows_table(w: Windows, teacher: np.ndarray | None = None) -> pa.Table:
    columns = {"tokens": pa.array(list(w.tokens), type=pa.list_(pa.int32())),
               "length": pa.array(w.lengths), "doc_id": pa.array(w.doc_ids)}
    if teacher is not None:  # (N, T, D) fp16, stored flat per row
        columns["teacher"] = pa.array(list(teacher.reshape(len(teacher), -1)), type=pa.list_(pa.float16()))
    return pa.table(columns)


def read_windows(path: Path) -> Windows:
    table = pq.read_table(path, columns=["tokens", "length", "doc_id"])
    return Windows(np.stack(table["tokens"].to_numpy(zero_copy_only=False)).astype(np.int32),
                   table["length"].to_numpy(), table["doc_id"].to_numpy())


@dataclass
class DataArtifacts:
    root: str
    train: str               # parquet: all training windows (DiT stage)
    vae_train: str           # parquet: the VAE's windows, with teacher features when REPA is on
    manifest: str
    vocab_size: int          # classes the VAE predicts: the tokenizer's size, or the compact vocab's
    vocab: str | None        # safetensors of the CompactVocab (data.vocab_limit), else None
    pad_id: int
    eos_id: int
    teacher_dim: int | None
    teacher_layer: int | None


def prepare_data(cfg, root: Path, need_teacher: bool) -> DataArtifacts:
    """Tokenize the corpus once and (optionally) compute teacher features once; cached under ``root``."""
    d = cfg.data
    tokenizer = load_tokenizer(d.tokenizer)
    key = artifact_key(corpus=d.corpus, text_field=d.text_field, tokenizer=d.tokenizer, seq_len=d.seq_len,
                       max_documents=d.max_documents, valid=d.valid_fraction, test=d.test_fraction,
                       split_seed=d.split_seed, max_train_windows=d.max_train_windows)
    base = Path(root) / "data" / key
    manifest_path = base / "manifest.json"
    train_path = base / "train.parquet"
    if not manifest_path.is_file():
        t0 = time.time()
        docs = load_documents(CorpusSpec(d.corpus, d.text_field, max_documents=d.max_documents))
        split = split_documents(docs, d.valid_fraction, d.test_fraction, d.split_seed)
        if not split["train"]:
            raise ConfigError(f"data.corpus {d.corpus}: the train split is empty")
        windows = tokenize_windows(split["train"], tokenizer, d.seq_len, d.max_train_windows)
        digest = write_parquet_atomic(windows_table(windows), train_path)
        write_json(manifest_path, {
            "corpus": d.corpus, "tokenizer": d.tokenizer, "seq_len": d.seq_len, "documents": len(docs),
            "split_documents": {k: len(v) for k, v in split.items()}, "train_windows": int(len(windows.tokens)),
            "train_tokens": int(windows.lengths.sum()), "train_sha256": digest, "seconds": round(time.time() - t0, 2)})
        log.info("tokenized %d train windows in %.1fs -> %s", len(windows.tokens), time.time() - t0, base)
    vocab_path, vocab_size = None, len(tokenizer)
    if d.vocab_limit is not None:
        vocab_path, vocab_size = _compact_vocab(base, train_path, d.vocab_limit, len(tokenizer),
                                                [tokenizer.eos_token_id, tokenizer.pad_token_id])
    teacher_dim, layer = None, None
    if need_teacher:
        vae_train, teacher_dim, layer = _teacher_features(cfg, base, train_path)
    else:
        vae_train = str(_vae_subset(cfg, base, train_path))
    return DataArtifacts(str(base), str(train_path), vae_train, str(manifest_path), vocab_size, vocab_path,
                         tokenizer.pad_token_id, tokenizer.eos_token_id, teacher_dim, layer)


def _compact_vocab(base: Path, train_path: Path, limit: int, full_size: int, always_keep: list[int]):
    """Count token use over the training windows (real tokens only) and keep the ``limit`` most used ids."""
    from latentlm.models.checkpoint import load_tensors, save_tensors
    from latentlm.models.vocab import CompactVocab
    path = base / f"vocab_{limit}.safetensors"
    if not path.is_file():
        w = read_windows(train_path)
        real = np.arange(w.tokens.shape[1])[None] < w.lengths[:, None]
        counts = np.bincount(w.tokens[real], minlength=full_size)
        vocab = CompactVocab.from_counts(torch.from_numpy(counts), limit, always_keep)
        covered = counts[vocab.to_full[:-1].numpy()].sum() / max(1, counts.sum())
        save_tensors(path, vocab.tensors(), metadata={"coverage": f"{covered:.6f}", "limit": str(limit)})
        log.info("compact vocab: %d ids cover %.2f%% of training tokens", vocab.size - 1, 100 * covered)
    return str(path), CompactVocab.from_tensors(load_tensors(path)).size


def _vae_subset(cfg, base: Path, train_path: Path) -> Path:
    """The first ``teacher_windows`` windows: REPA-on and REPA-off VAEs train on exactly the same data."""
    n = cfg.data.teacher_windows
    path = base / f"vae_{n}.parquet"
    if not path.is_file():
        table = pq.read_table(train_path)
        write_parquet_atomic(table.slice(0, n), path)
    return path


def _teacher_features(cfg, base: Path, train_path: Path):
    from latentlm.models.teacher import FrozenTeacher
    repa, n = cfg.vae.repa, cfg.data.teacher_windows
    teacher_spec = assets.resolve_model(repa.teacher)
    teacher_key = artifact_key(teacher=repa.teacher, layer=repa.layer, n=n)
    path = base / "features" / f"{teacher_key}.parquet"
    meta_path = path.with_suffix(".json")
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return str(path), meta["teacher_dim"], meta["layer"]
    t0 = time.time()
    windows = read_windows(train_path)
    windows = Windows(windows.tokens[:n], windows.lengths[:n], windows.doc_ids[:n])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    teacher = FrozenTeacher(teacher_spec, [repa.layer], dtype=dtype, device=device)
    layer = teacher.layers[0]
    feats = np.zeros((len(windows.tokens), cfg.data.seq_len, teacher.hidden_size), dtype=np.float16)
    bs = cfg.data.teacher_batch_size
    from tqdm.auto import tqdm
    for i in tqdm(range(0, len(windows.tokens), bs), desc="teacher features", unit="batch"):
        ids = torch.from_numpy(windows.tokens[i:i + bs]).long().to(device)
        feats[i:i + bs] = teacher(ids)[layer].float().cpu().numpy().astype(np.float16)
    digest = write_parquet_atomic(windows_table(windows, feats), path)
    meta = {"teacher": repa.teacher, "layer": layer, "teacher_dim": teacher.hidden_size,
            "num_layers": teacher.num_layers, "windows": len(windows.tokens), "sha256": digest,
            "tokens_per_second": round(windows.tokens.size / (time.time() - t0), 1)}
    write_json(meta_path, meta)
    log.info("teacher features: %s", meta)
    return str(path), teacher.hidden_size, layer
