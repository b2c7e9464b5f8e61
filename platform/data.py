"""Tokenized windows and teacher features as Parquet shards with manifests, produced by Ray Data.

A corpus is split into documents (deterministically), each document is tokenized, closed with EOS and
cut into fixed windows of ``seq_len`` tokens; the last window of a document is padded with the pad
(= EOS) token, so a generated target ends where the model emits EOS. Tokenization runs as a Ray Data
``map_batches`` over the documents; the frozen teacher runs once as a pool of Ray Data actors (GPU
actors when the cluster has GPUs) and stores the hidden states of every requested layer (fp16) in one
pass, so a REPA-layer sweep never reruns it. The driver writes both from Ray Data's ordered stream
(``write_dataset_atomic``), so window order never depends on scheduling. Artifacts are content-addressed (the key hashes
everything that changes them) and shared by every run under the same root; a manifest marks each as
complete, so a cache hit is detected from the manifest, not recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from filelock import FileLock

from latentlm.models.checkpoint import write_json
from latentlm.models.config import ConfigError

from . import assets
from .corpus import CorpusSpec, load_documents, split_documents

log = logging.getLogger(__name__)
TRAIN_ROWS_PER_SHARD = 16384   # token windows: ~8 MB per shard at seq_len 128
FEATURE_ROWS_PER_SHARD = 512   # teacher windows: fp16 states are ~200 KB per window and layer at 128 x 768


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer
    path = assets.resolve_model(spec)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=Path(path).is_dir())
    if tok.eos_token_id is None and tok.sep_token_id is not None:
        tok.eos_token = tok.sep_token  # masked LMs (BERT, MiniLM) end a segment with [SEP]
    if tok.eos_token_id is None:
        raise ConfigError(f"data.tokenizer: {spec} has no EOS (or SEP) token; latentlm needs one to end documents")
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
    train: str                  # parquet shards: all training windows (DiT stage)
    vae_train: str              # parquet shards the VAE reads: the teacher-feature shards when REPA is on
    vae_windows: int            # the VAE trains on the first N windows (REPA on and off alike)
    teacher_column: str | None  # column of vae_train with the REPA layer's features
    manifest: str
    vocab_size: int             # classes the VAE predicts: the tokenizer's size, or the compact vocab's
    vocab: str | None           # safetensors of the CompactVocab (data.vocab_limit), else None
    pad_id: int
    eos_id: int
    teacher_dim: int | None
    teacher_layer: int | None


def teacher_column(layer: int) -> str:
    return f"teacher_{layer}"


def prepare_data(cfg, root: Path, need_teacher: bool, teacher_layers: list[int] | None = None) -> DataArtifacts:
    """Tokenize the corpus once and (optionally) compute teacher features once; cached under ``root``.

    ``teacher_layers`` adds layers to store in the same teacher pass (a sweep passes all it needs)."""
    d = cfg.data
    tokenizer = load_tokenizer(d.tokenizer)
    key = artifact_key(corpus=d.corpus, text_field=d.text_field, tokenizer=d.tokenizer, seq_len=d.seq_len,
                       max_documents=d.max_documents, valid=d.valid_fraction, test=d.test_fraction,
                       split_seed=d.split_seed, max_train_windows=d.max_train_windows)
    base = Path(root) / "data" / key
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / ".lock")):  # concurrent sweep trials prepare shared data once
        return _prepare_locked(cfg, tokenizer, base, need_teacher, teacher_layers or [])


def _ray_data():
    import ray.data
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # artifacts must not depend on scheduling
    context.enable_progress_bars = False
    return ray.data


def dir_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.parquet"))}


def write_dataset_atomic(dataset, directory: Path, rows_per_shard: int) -> dict[str, str]:
    """Stream ``dataset`` in order into ``part-00000.parquet``, ... in a temp dir renamed into place; returns
    each shard's sha256.

    The driver writes, not ``Dataset.write_parquet``: with Ray 2.60 a ``map_batches`` fused into the write
    reorders rows even under ``preserve_order`` (measured: 4 of 5 runs on 653 windows), whereas ordered
    iteration keeps it. Window order is part of the artifact (the VAE reads the first N windows), so it must
    not depend on scheduling; fixed shard names also make the digests reproducible."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for index, batch in enumerate(dataset.iter_batches(batch_size=rows_per_shard, batch_format="pyarrow")):
        pq.write_table(batch, tmp / f"part-{index:05d}.parquet")
    digests = dir_digests(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return digests


class TokenizeWindows:
    """Ray Data UDF (one tokenizer per actor): documents -> fixed windows (Arrow list columns)."""

    def __init__(self, tokenizer: str, seq_len: int):
        self.tokenizer, self.seq_len = load_tokenizer(tokenizer), seq_len

    def __call__(self, batch: pa.Table) -> pa.Table:
        w = tokenize_windows(batch["text"].to_pylist(), self.tokenizer, self.seq_len)
        doc_ids = np.asarray(batch["doc_id"].to_numpy())[w.doc_ids] if len(w.doc_ids) else w.doc_ids
        return windows_table(Windows(w.tokens, w.lengths, doc_ids))


class TeacherFeatures:
    """Ray Data UDF (one frozen teacher per actor): appends fp16 hidden states of each layer as columns."""

    def __init__(self, teacher: str, layers: list[int]):
        from latentlm.models.teacher import FrozenTeacher
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)  # the actor's 1-CPU reservation pins OMP to 1 thread
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.teacher = FrozenTeacher(teacher, layers, dtype=dtype, device=self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokens = np.stack(batch["tokens"].to_numpy(zero_copy_only=False)).astype(np.int64)
        states = self.teacher(torch.from_numpy(tokens).to(self.device))
        for layer, hidden in states.items():
            flat = hidden.float().cpu().numpy().astype(np.float16).reshape(len(tokens), -1)
            batch = batch.append_column(teacher_column(layer), pa.array(list(flat), type=pa.list_(pa.float16())))
        return batch


def _prepare_locked(cfg, tokenizer, base: Path, need_teacher: bool, extra_layers: list[int]) -> DataArtifacts:
    d = cfg.data
    manifest_path = base / "manifest.json"
    train_dir = base / "train"
    if not manifest_path.is_file():
        t0 = time.time()
        docs = load_documents(CorpusSpec(d.corpus, d.text_field, max_documents=d.max_documents))
        split = split_documents(docs, d.valid_fraction, d.test_fraction, d.split_seed)
        if not split["train"]:
            raise ConfigError(f"data.corpus {d.corpus}: the train split is empty")
        rd = _ray_data()
        ds = rd.from_items([{"doc_id": i, "text": t} for i, t in enumerate(split["train"])])
        ds = ds.map_batches(TokenizeWindows, fn_constructor_args=(d.tokenizer, d.seq_len), batch_format="pyarrow",
                            batch_size=256, concurrency=1, num_cpus=0.5)
        if d.max_train_windows is not None:
            ds = ds.limit(d.max_train_windows)
        shards = write_dataset_atomic(ds, train_dir, rows_per_shard=TRAIN_ROWS_PER_SHARD)
        lengths = pq.read_table(train_dir, columns=["length"])["length"].to_numpy()
        write_json(manifest_path, {
            "corpus": d.corpus, "tokenizer": d.tokenizer, "seq_len": d.seq_len, "documents": len(docs),
            "split_documents": {k: len(v) for k, v in split.items()}, "train_windows": int(len(lengths)),
            "train_tokens": int(lengths.sum()), "shards": shards, "seconds": round(time.time() - t0, 2)})
        log.info("tokenized %d train windows into %d shards in %.1fs -> %s", len(lengths), len(shards),
                 time.time() - t0, base)
    vocab_path, vocab_size = None, len(tokenizer)
    if d.vocab_limit is not None:
        vocab_path, vocab_size = _compact_vocab(base, train_dir, d.vocab_limit, len(tokenizer),
                                                [tokenizer.eos_token_id, tokenizer.pad_token_id])
    vae_train, column, teacher_dim, layer = str(train_dir), None, None, None
    if need_teacher:
        vae_train, teacher_dim, layer = _teacher_features(cfg, base, train_dir, extra_layers)
        column = teacher_column(layer)
    return DataArtifacts(str(base), str(train_dir), vae_train, d.teacher_windows, column, str(manifest_path),
                         vocab_size, vocab_path, tokenizer.pad_token_id, tokenizer.eos_token_id, teacher_dim, layer)


def _compact_vocab(base: Path, train_dir: Path, limit: int, full_size: int, always_keep: list[int]):
    """Count token use over the training windows (real tokens only) and keep the ``limit`` most used ids."""
    from latentlm.models.checkpoint import load_tensors, save_tensors
    from latentlm.models.vocab import CompactVocab
    path = base / f"vocab_{limit}.safetensors"
    if not path.is_file():
        w = read_windows(train_dir)
        real = np.arange(w.tokens.shape[1])[None] < w.lengths[:, None]
        counts = np.bincount(w.tokens[real], minlength=full_size)
        vocab = CompactVocab.from_counts(torch.from_numpy(counts), limit, always_keep)
        covered = counts[vocab.to_full[:-1].numpy()].sum() / max(1, counts.sum())
        save_tensors(path, vocab.tensors(), metadata={"coverage": f"{covered:.6f}", "limit": str(limit)})
        log.info("compact vocab: %d ids cover %.2f%% of training tokens", vocab.size - 1, 100 * covered)
    return str(path), CompactVocab.from_tensors(load_tensors(path)).size


def _teacher_features(cfg, base: Path, train_dir: Path, extra_layers: list[int]):
    """Teacher hidden states for the first ``data.teacher_windows`` windows, every requested layer in one
    Ray Data pass. The teacher and its layer come from ``cfg.teacher_request()`` (REPA target for TextLDM,
    token encoder for LDLM), so both methods share one cache."""
    from latentlm.models.teacher import load_teacher_config, resolve_layer, teacher_hidden_size, teacher_num_layers
    teacher, requested_layer = cfg.teacher_request()
    n = cfg.data.teacher_windows
    spec = assets.resolve_model(teacher)
    teacher_cfg = load_teacher_config(spec)
    num_layers = teacher_num_layers(teacher_cfg)
    layer = resolve_layer(requested_layer, num_layers)
    wanted = {layer, *(resolve_layer(x, num_layers, "data.teacher_layers") for x in extra_layers)}
    directory = feature_dir(base, teacher, n)
    meta_path = directory / "manifest.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"layers": []}
    if not wanted <= set(meta["layers"]):  # a miss: compute every layer asked for so far in one pass
        layers = sorted(wanted | set(meta["layers"]))
        t0 = time.time()
        rd = _ray_data()
        use_gpu = torch.cuda.is_available() or _cluster_gpus() > 0
        ds = rd.read_parquet(str(train_dir)).limit(n)
        ds = ds.map_batches(TeacherFeatures, fn_constructor_args=(spec, layers), batch_format="pyarrow",
                            batch_size=cfg.data.teacher_batch_size, concurrency=max(1, _cluster_gpus()),
                            num_gpus=1 if use_gpu else 0, num_cpus=0.5)
        # Half a CPU per actor: a whole one starves Ray Data's own read tasks on a 2-core node (deadlock).
        shards = write_dataset_atomic(ds, directory / "shards", rows_per_shard=FEATURE_ROWS_PER_SHARD)
        for stale in directory.glob("stats_*.safetensors"):  # recomputed from the new shards on demand
            stale.unlink()
        meta = {"teacher": teacher, "layers": layers, "teacher_dim": teacher_hidden_size(teacher_cfg),
                "num_layers": num_layers, "windows": n, "shards": shards,
                "tokens_per_second": round(n * cfg.data.seq_len / (time.time() - t0), 1)}
        write_json(meta_path, meta)
        log.info("teacher features: %s", {k: v for k, v in meta.items() if k != "shards"})
    return str(directory / "shards"), meta["teacher_dim"], layer


def feature_dir(base: Path, teacher: str, windows: int) -> Path:
    return Path(base) / "features" / artifact_key(teacher=teacher, windows=windows)


def feature_stats(shards: str, layer: int, dim: int, windows: int) -> str:
    """Per-channel mean/std of one layer's stored features over every position of the first ``windows``
    windows (LDLM trains on whole windows, EOS padding included), computed once and stored next to the
    shards (``stats_<layer>_<windows>.safetensors``). LDLM standardises its token encoder's states with these."""
    from latentlm.models.checkpoint import save_tensors
    from latentlm.models.token_encoder import HiddenStats
    path = Path(shards).parent / f"stats_{layer}_{windows}.safetensors"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return str(path)
        moments = torch.zeros(3, dim, dtype=torch.float64)
        seen = 0
        for batch in _feature_batches(Path(shards), [teacher_column(layer)]):
            column = batch[teacher_column(layer)]
            take = min(len(column), windows - seen)
            if take <= 0:
                break
            states = np.stack(column[:take]).astype(np.float32).reshape(take, -1, dim)
            moments += HiddenStats.moments(torch.from_numpy(states))
            seen += take
        stats = HiddenStats(dim).set_from_moments(moments)
        save_tensors(path, stats.state_dict(), metadata={"windows": str(seen), "layer": str(layer)})
    return str(path)


def _feature_batches(shards: Path, columns: list[str]):
    """Shards in file order (the order the training stream reads them) as dicts of numpy/object columns."""
    for file in sorted(shards.glob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256, columns=columns):
            yield {name: batch.column(name).to_numpy(zero_copy_only=False) for name in columns}


def _cluster_gpus() -> int:
    import ray
    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
