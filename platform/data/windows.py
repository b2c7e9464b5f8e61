"""Tokenized windows and teacher features as Parquet shards with manifests, produced by Ray Data.

A corpus is split into documents (deterministically) and each document is tokenized and closed with EOS.
``data.layout`` decides how documents become fixed windows of ``seq_len`` tokens:

* ``packed`` (default; MDLM's and LDLM's layout): the documents' token streams are concatenated in order
  and cut into full windows, so no window holds padding; a window may span document boundaries (the EOS
  between them says where). The trailing tokens that do not fill a last window are dropped.
* ``per_document``: every document starts a new window and its last window is padded with the pad (= EOS)
  token; the ``length`` column says where the real tokens end, and no loss counts the rest.

Every window keeps its provenance: ``doc_id`` / ``doc_offset`` (the document and token offset of its first
token) and ``segment_docs`` / ``segment_starts`` (each document it touches and the window position where
that document's tokens begin), so the documents can be rebuilt from the windows. Tokenization runs as a
Ray Data ``map_batches`` over the documents (packing happens in the driver over the ordered stream); the frozen teacher runs once as a pool of Ray Data actors (GPU
actors when the cluster has GPUs) and stores the hidden states of every requested layer (fp16) in one
pass, so a REPA-layer sweep never reruns it. The driver writes both from Ray Data's ordered stream
(``write_dataset_atomic``), so window order never depends on scheduling. Artifacts are content-addressed (the key hashes
everything that changes them) and shared by every run under the same root; a manifest marks each as
complete, so a cache hit is detected from the manifest, not recomputed. Under a run dir on object storage
(``platform/storage.py``) each artifact is published when written, manifest last, and fetched where read.
"""
from __future__ import annotations

import dataclasses
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
from latentlm.platform import storage
from latentlm.platform.training.engine import native_bf16
from latentlm.platform.training.progress import progress

from . import assets
from .corpus import CorpusSpec, load_documents, split_documents

log = logging.getLogger(__name__)
TRAIN_ROWS_PER_SHARD = 16384   # token windows: ~8 MB per shard at seq_len 128
FEATURE_ROWS_PER_SHARD = 512   # teacher windows: fp16 states are ~200 KB per window and layer at 128 x 768
TEACHER_BATCHES_PER_BLOCK = 2  # teacher batches per Ray Data block: the progress line moves every block
                               # (~25 s on one CPU core at the tiny preset)


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


LAYOUTS = ("packed", "per_document")


@dataclass
class Windows:
    tokens: np.ndarray          # (N, seq_len) int32
    lengths: np.ndarray         # (N,) int32: real tokens (document tokens + closing EOS); seq_len when packed
    doc_ids: np.ndarray         # (N,) int64: document of the window's first token (index within its split)
    doc_offsets: np.ndarray | None = None      # (N,) int32: offset of the first token within that document
    segment_docs: list[list[int]] | None = None    # per window: the documents it touches, in order
    segment_starts: list[list[int]] | None = None  # per window: where each of them starts in the window


def document_ids(documents: list[str], tokenizer) -> list[list[int]]:
    """Each document's token ids (no special tokens) closed with EOS: the unit both layouts cut."""
    out = []
    for start in range(0, len(documents), 256):
        encoded = tokenizer(documents[start:start + 256], add_special_tokens=False)["input_ids"]
        out.extend(list(ids) + [tokenizer.eos_token_id] for ids in encoded)
    return out


def tokenize_windows(documents: list[str], tokenizer, seq_len: int, max_windows: int | None = None,
                     first_window_only: bool = False) -> Windows:
    """Per-document windows: tokenize, append EOS, cut into windows of ``seq_len``, pad the tail."""
    return per_document_windows(document_ids(documents, tokenizer), range(len(documents)), tokenizer.pad_token_id,
                                seq_len, max_windows, first_window_only)


def per_document_windows(docs: list[list[int]], doc_ids, pad: int, seq_len: int, max_windows: int | None = None,
                         first_window_only: bool = False) -> Windows:
    rows, lengths, ids, offsets = [], [], [], []
    for doc_id, tokens in zip(doc_ids, docs):
        for i in (range(0, len(tokens), seq_len) if not first_window_only else [0]):
            chunk = tokens[i:i + seq_len]
            rows.append(chunk + [pad] * (seq_len - len(chunk)))
            lengths.append(len(chunk))
            ids.append(doc_id)
            offsets.append(i)
            if max_windows is not None and len(rows) >= max_windows:
                break
        if max_windows is not None and len(rows) >= max_windows:
            break
    return Windows(np.asarray(rows, dtype=np.int32).reshape(len(rows), seq_len), np.asarray(lengths, dtype=np.int32),
                   np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int32),
                   [[d] for d in ids], [[0] for _ in ids])


class WindowPacker:
    """Packs documents (in order) into full windows: feed ``add(doc_id, ids)``, collect ``windows()``.

    State is a buffer of the tokens not yet in a window plus where each buffered document starts, so the
    packing of document k never depends on how the stream was batched (the driver feeds Ray Data's ordered
    batches one after another)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.buffer: list[int] = []
        self.pieces: list[tuple[int, int, int]] = []   # (doc_id, buffer position, offset within the doc)
        self._rows: list[tuple[list[int], list[tuple[int, int, int]]]] = []

    def add(self, doc_id: int, ids: list[int]) -> None:
        self.pieces.append((int(doc_id), len(self.buffer), 0))
        self.buffer.extend(int(i) for i in ids)
        while len(self.buffer) >= self.seq_len:
            self._cut()

    def _cut(self) -> None:
        n = self.seq_len
        inside = [p for p in self.pieces if p[1] < n]
        rest = [(doc, pos - n, offset) for doc, pos, offset in self.pieces if pos >= n]
        self._rows.append((self.buffer[:n], inside))
        self.buffer = self.buffer[n:]
        if self.buffer and not (rest and rest[0][1] == 0):  # the document straddling the cut continues
            doc, pos, offset = inside[-1]
            rest.insert(0, (doc, 0, offset + n - pos))
        self.pieces = rest

    def windows(self) -> Windows:
        """The windows cut so far (and forget them)."""
        rows, self._rows = self._rows, []
        n = len(rows)
        tokens = np.asarray([r for r, _ in rows], dtype=np.int32).reshape(n, self.seq_len)
        return Windows(tokens, np.full(n, self.seq_len, dtype=np.int32),
                       np.asarray([p[0][0] for _, p in rows], dtype=np.int64),
                       np.asarray([p[0][2] for _, p in rows], dtype=np.int32),
                       [[d for d, _, _ in p] for _, p in rows], [[pos for _, pos, _ in p] for _, p in rows])


def packed_windows(docs: list[list[int]], doc_ids, seq_len: int) -> Windows:
    packer = WindowPacker(seq_len)
    for doc_id, ids in zip(doc_ids, docs):
        packer.add(doc_id, ids)
    return packer.windows()


def rebuild_documents(w: Windows) -> dict[int, list[int]]:
    """Each document's tokens as the windows hold them (padding dropped), from the provenance columns:
    the inverse of both layouts for every document the windows cover."""
    docs: dict[int, list[int]] = {}
    for row, length, starts, ids in zip(w.tokens, w.lengths, w.segment_starts, w.segment_docs):
        ends = list(starts[1:]) + [int(length)]
        for doc, start, end in zip(ids, starts, ends):
            docs.setdefault(int(doc), []).extend(int(t) for t in row[start:end])
    return docs


def artifact_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def windows_table(w: Windows, teacher: np.ndarray | None = None) -> pa.Table:
    columns = {"tokens": pa.array(list(w.tokens), type=pa.list_(pa.int32())),
               "length": pa.array(w.lengths), "doc_id": pa.array(w.doc_ids),
               "doc_offset": pa.array(w.doc_offsets, type=pa.int32()),
               "segment_docs": pa.array(w.segment_docs, type=pa.list_(pa.int64())),
               "segment_starts": pa.array(w.segment_starts, type=pa.list_(pa.int32()))}
    if teacher is not None:  # (N, T, D) fp16, stored flat per row
        columns["teacher"] = pa.array(list(teacher.reshape(len(teacher), -1)), type=pa.list_(pa.float16()))
    return pa.table(columns)


PROVENANCE = ("doc_offset", "segment_docs", "segment_starts")


def read_windows(path: Path) -> Windows:
    table = pq.read_table(path, columns=["tokens", "length", "doc_id", *PROVENANCE])
    return Windows(np.stack(table["tokens"].to_numpy(zero_copy_only=False)).astype(np.int32),
                   table["length"].to_numpy(), table["doc_id"].to_numpy(), table["doc_offset"].to_numpy(),
                   table["segment_docs"].to_pylist(), table["segment_starts"].to_pylist())


def cut_windows(batches, layout: str, seq_len: int, pad: int, max_windows: int | None = None):
    """Ordered batches of tokenized documents (``doc_id``, ``ids``) -> Arrow tables of windows in the chosen
    layout, up to ``max_windows`` windows in all."""
    packer, produced = WindowPacker(seq_len), 0
    for batch in batches:
        doc_ids, docs = batch["doc_id"].to_pylist(), batch["ids"].to_pylist()
        if layout == "packed":
            for doc_id, ids in zip(doc_ids, docs):
                packer.add(doc_id, ids)
            w = packer.windows()
        else:
            w = per_document_windows(docs, doc_ids, pad, seq_len)
        if max_windows is not None:
            w = _head(w, max_windows - produced)
        if len(w.tokens):
            produced += len(w.tokens)
            yield windows_table(w)
        if max_windows is not None and produced >= max_windows:
            return


def _head(w: Windows, n: int) -> Windows:
    return Windows(w.tokens[:n], w.lengths[:n], w.doc_ids[:n], w.doc_offsets[:n], w.segment_docs[:n],
                   w.segment_starts[:n])


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
    token_counts: str | None = None  # safetensors: training-token frequencies over the tokenizer's ids
    teacher_placement: str = "cached"  # data.teacher_placement (teacher_feed.py reads the features accordingly)
    teacher_spec: str | None = None    # the teacher as configured (keys the feature and statistics caches)
    teacher_model: str | None = None   # ... and as from_pretrained loads it (a local directory or a hub name)
    teacher_dtype: str | None = None   # the teacher's compute dtype


def teacher_column(layer: int) -> str:
    return f"teacher_{layer}"


def prepare_data(cfg, root: Path, need_teacher: bool, teacher_layers: list[int] | None = None) -> DataArtifacts:
    """Tokenize the corpus once and (optionally) compute teacher features once; cached under ``root``.

    ``teacher_layers`` adds layers to store in the same teacher pass (a sweep passes all it needs)."""
    d = cfg.data
    tokenizer = load_tokenizer(d.tokenizer)
    key = artifact_key(corpus=d.corpus, text_field=d.text_field, tokenizer=d.tokenizer, seq_len=d.seq_len, layout=d.layout,
                       max_documents=d.max_documents, valid=d.valid_fraction, test=d.test_fraction,
                       split_seed=d.split_seed, max_train_windows=d.max_train_windows)
    base = Path(root) / "data" / key
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / ".lock")):  # concurrent sweep trials prepare shared data once
        artifacts = _prepare_locked(cfg, tokenizer, base)
    if not need_teacher:
        return artifacts
    source = _teacher_source(cfg, teacher_layers or [])
    artifacts = dataclasses.replace(artifacts, teacher_column=teacher_column(source.layer), teacher_dim=source.dim,
                                    teacher_layer=source.layer, teacher_spec=source.spec, teacher_model=source.model,
                                    teacher_dtype=source.dtype)
    if d.teacher_placement != "cached":  # computed while training (teacher_feed.py): nothing to prepare
        return artifacts
    # a lock of its own: a trial that needs only the tokens trains while another computes the features
    with FileLock(str(base / ".features.lock")):
        vae_train = _teacher_features(cfg, base, Path(artifacts.train), source)
    return dataclasses.replace(artifacts, vae_train=vae_train)


def _ray_data():
    import ray.data
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # artifacts must not depend on scheduling
    context.enable_progress_bars = False
    return ray.data


def dir_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.parquet"))}


def write_shards_atomic(tables, directory: Path, rows_per_shard: int, total: int | None = None,
                        desc: str = "write") -> dict[str, str]:
    """Write an ordered stream of Arrow tables as ``part-00000.parquet``, ... of ``rows_per_shard`` rows each
    into a temp dir renamed into place; returns each shard's sha256. Shard boundaries depend only on row
    counts, so the same rows give the same files (reproducible digests). Progress (rows written, of ``total``
    when known) is logged as it goes."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pending: list[pa.Table] = []
    rows, index = 0, 0
    bar = progress(total, desc, log, unit="row")
    for table in tables:
        pending.append(table)
        rows += len(table)
        bar.update(len(table))
        while rows >= rows_per_shard:
            merged = pa.concat_tables(pending)
            pq.write_table(merged.slice(0, rows_per_shard), tmp / f"part-{index:05d}.parquet")
            index += 1
            pending, rows = [merged.slice(rows_per_shard)], rows - rows_per_shard
    if rows:
        pq.write_table(pa.concat_tables(pending), tmp / f"part-{index:05d}.parquet")
    bar.close()
    digests = dir_digests(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return digests


def write_dataset_atomic(dataset, directory: Path, rows_per_shard: int, total: int | None = None,
                         desc: str = "write") -> dict[str, str]:
    """Stream a Ray Dataset in order into shards (``write_shards_atomic``).

    The driver writes, not ``Dataset.write_parquet``: with Ray 2.60 a ``map_batches`` fused into the write
    reorders rows even under ``preserve_order`` (measured: 4 of 5 runs on 653 windows), whereas ordered
    iteration keeps it. Window order is part of the artifact (the VAE reads the first N windows), so it must
    not depend on scheduling."""
    # small batches: the driver's progress line moves while the actors work
    return write_shards_atomic(dataset.iter_batches(batch_size=min(rows_per_shard, 64), batch_format="pyarrow"),
                               directory, rows_per_shard, total, desc)


class TokenizeDocuments:
    """Ray Data UDF (one tokenizer per actor): documents -> their token ids closed with EOS."""

    def __init__(self, tokenizer: str):
        self.tokenizer = load_tokenizer(tokenizer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = document_ids(batch["text"].to_pylist(), self.tokenizer)
        return pa.table({"doc_id": batch["doc_id"], "ids": pa.array(ids, type=pa.list_(pa.int32()))})


class TeacherFeatures:
    """Ray Data UDF (one frozen teacher per actor): appends fp16 hidden states of each layer as columns (the
    cached and streamed placements; the inline one calls ``states`` from the training loop)."""

    def __init__(self, teacher: str, layers: list[int], dtype: str = "bfloat16", threads: int = 0,
                 names: dict[int, str] | None = None):
        from latentlm.models.teacher import FrozenTeacher
        self.names = names or {}  # layer -> output column (default teacher_<layer>)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":  # the actor's CPU reservation pins OMP to 1 thread; 0: every core of the node
            torch.set_num_threads(threads or os.cpu_count() or 1)
        dtype = getattr(torch, dtype)
        self.teacher = FrozenTeacher(teacher, layers, dtype=dtype, device=self.device)

    @staticmethod
    def states(teacher, tokens: np.ndarray, device) -> dict[int, np.ndarray]:
        """(N, T) token ids -> {layer: (N, T * hidden) fp16}: what every placement delivers."""
        hidden = teacher(torch.from_numpy(tokens.astype(np.int64)).to(device))
        return {layer: h.float().cpu().numpy().astype(np.float16).reshape(len(tokens), -1)
                for layer, h in hidden.items()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokens = np.stack(batch["tokens"].to_numpy(zero_copy_only=False))
        for layer, flat in self.states(self.teacher, tokens, self.device).items():
            batch = batch.append_column(self.names.get(layer, teacher_column(layer)),
                                        pa.array(list(flat), type=pa.list_(pa.float16())))
        return batch


def _prepare_locked(cfg, tokenizer, base: Path) -> DataArtifacts:
    d = cfg.data
    manifest_path = base / "manifest.json"
    train_dir = base / "train"
    if not storage.fetch(manifest_path).is_file():
        t0 = time.time()
        docs = load_documents(CorpusSpec(d.corpus, d.text_field, max_documents=d.max_documents))
        split = split_documents(docs, d.valid_fraction, d.test_fraction, d.split_seed)
        if not split["train"]:
            raise ConfigError(f"data.corpus {d.corpus}: the train split is empty")
        rd = _ray_data()
        ds = rd.from_items([{"doc_id": i, "text": t} for i, t in enumerate(split["train"])])
        ds = ds.map_batches(TokenizeDocuments, fn_constructor_args=(d.tokenizer,), batch_format="pyarrow",
                            batch_size=256, concurrency=1, num_cpus=0.5)
        # Ray Data tokenizes in parallel; the driver cuts windows from the ordered stream (packing carries
        # tokens across batches, so it cannot run per batch)
        tables = cut_windows(ds.iter_batches(batch_size=256, batch_format="pyarrow"), d.layout, d.seq_len,
                             tokenizer.pad_token_id, d.max_train_windows)
        shards = write_shards_atomic(tables, train_dir, rows_per_shard=TRAIN_ROWS_PER_SHARD,
                                     desc=f"tokenize {len(split['train'])} documents into {d.layout} windows")
        lengths = pq.read_table(train_dir, columns=["length"])["length"].to_numpy()
        if not len(lengths):
            raise ConfigError(f"data.corpus {d.corpus}: the train split holds fewer than data.seq_len = "
                              f"{d.seq_len} tokens, not one window")
        write_json(manifest_path, {
            "corpus": d.corpus, "tokenizer": d.tokenizer, "seq_len": d.seq_len, "layout": d.layout,
            "documents": len(docs), "split_documents": {k: len(v) for k, v in split.items()},
            "train_windows": int(len(lengths)), "train_tokens": int(lengths.sum()),
            "padding_tokens": int(len(lengths) * d.seq_len - lengths.sum()), "shards": shards,
            "seconds": round(time.time() - t0, 2)})
        storage.publish(train_dir)
        storage.publish(manifest_path)  # last: it marks the shards complete
        log.info("tokenized %d %s train windows (%.1f%% padding) into %d shards in %.1fs -> %s", len(lengths),
                 d.layout, 100 * (1 - lengths.sum() / (len(lengths) * d.seq_len)), len(shards), time.time() - t0, base)
    counts = token_counts(base, train_dir, len(tokenizer))
    vocab_path, vocab_size = None, len(tokenizer)
    if d.vocab_limit is not None:
        vocab_path, vocab_size = _compact_vocab(base, counts, d.vocab_limit,
                                                [tokenizer.eos_token_id, tokenizer.pad_token_id])
    # a cached placement trains the feature stages on the windows that have features (and the other arms of an
    # ablation on the same windows); streamed and inline compute features for every window
    vae_windows = d.teacher_windows if d.teacher_placement == "cached" else None
    return DataArtifacts(str(base), str(train_dir), str(train_dir), vae_windows, None, str(manifest_path),
                         vocab_size, vocab_path, tokenizer.pad_token_id, tokenizer.eos_token_id, None, None, counts,
                         d.teacher_placement)


def token_counts(base: Path, train_dir: Path, full_size: int) -> str:
    """How often every tokenizer id occurs among the real training tokens (padding excluded), counted once
    and stored as ``token_counts.safetensors``: the compact vocabulary and the unigram floor read it."""
    from latentlm.models.checkpoint import save_tensors
    path = base / "token_counts.safetensors"
    if not storage.fetch(path).is_file():
        table = pq.read_table(storage.fetch(train_dir), columns=["tokens", "length"])
        tokens = np.stack(table["tokens"].to_numpy(zero_copy_only=False)).astype(np.int64)
        real = np.arange(tokens.shape[1])[None] < table["length"].to_numpy()[:, None]
        counts = np.bincount(tokens[real], minlength=full_size)
        save_tensors(path, {"counts": torch.from_numpy(counts.astype(np.int64))})
        storage.publish(path)
    return str(path)


def load_token_counts(path: str | Path) -> np.ndarray:
    from latentlm.models.checkpoint import load_tensors
    return load_tensors(Path(path))["counts"].numpy()


def _compact_vocab(base: Path, counts_path: str, limit: int, always_keep: list[int]):
    """Keep the ``limit`` most used ids of the training tokens."""
    from latentlm.models.checkpoint import load_tensors, save_tensors
    from latentlm.models.vocab import CompactVocab
    path = base / f"vocab_{limit}.safetensors"
    if not storage.fetch(path).is_file():
        counts = load_token_counts(counts_path)
        vocab = CompactVocab.from_counts(torch.from_numpy(counts), limit, always_keep)
        covered = counts[vocab.to_full[:-1].numpy()].sum() / max(1, counts.sum())
        save_tensors(path, vocab.tensors(), metadata={"coverage": f"{covered:.6f}", "limit": str(limit)})
        storage.publish(path)
        log.info("compact vocab: %d ids cover %.2f%% of training tokens", vocab.size - 1, 100 * covered)
    return str(path), CompactVocab.from_tensors(load_tensors(path)).size


@dataclass
class TeacherSource:
    """The frozen teacher a method reads (``cfg.teacher_request()``: REPA's target for TextLDM, the token encoder
    for LDLM, so both share one cache), resolved: layers as non-negative indices, the compute dtype decided."""
    spec: str                   # as configured (keys caches)
    model: str                  # what from_pretrained loads
    layer: int                  # the layer the method reads
    layers: list[int]           # every layer a cached pass stores (the method's plus a sweep's others)
    dim: int
    num_layers: int
    dtype: str


def _teacher_source(cfg, extra_layers: list[int]) -> TeacherSource:
    from latentlm.models.teacher import load_teacher_config, resolve_layer, teacher_hidden_size, teacher_num_layers
    teacher, requested_layer = cfg.teacher_request()
    model = assets.resolve_model(teacher)
    teacher_cfg = load_teacher_config(model)
    num_layers = teacher_num_layers(teacher_cfg)
    layer = resolve_layer(requested_layer, num_layers)
    wanted = {layer, *(resolve_layer(x, num_layers, "data.teacher_layers") for x in extra_layers)}
    dtype = resolve_teacher_dtype(cfg.data.teacher_dtype, torch.cuda.is_available() or _cluster_gpus() > 0)
    return TeacherSource(teacher, model, layer, sorted(wanted), teacher_hidden_size(teacher_cfg), num_layers, dtype)


def _teacher_features(cfg, base: Path, train_dir: Path, source: TeacherSource) -> str:
    """Teacher hidden states for the first ``data.teacher_windows`` windows, every requested layer in one
    Ray Data pass, refused before it starts when the store would exceed ``data.max_cache_bytes``."""
    from .teacher_plan import check_cache_budget, human_bytes
    n = cfg.data.teacher_windows
    use_gpu = torch.cuda.is_available() or _cluster_gpus() > 0
    teacher, spec, dtype = source.spec, source.model, source.dtype
    directory = feature_dir(base, teacher, n, dtype)
    meta_path = directory / "manifest.json"
    mirrored = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    # refreshed: another node may have stored more layers since this node last read it (then its shards too)
    meta = json.loads(meta_path.read_text()) if storage.fetch(meta_path, refresh=True).is_file() else {"layers": []}
    if mirrored is not None and mirrored != meta:
        storage.fetch(directory / "shards", refresh=True)
    wanted = set(source.layers)
    if not wanted <= set(meta["layers"]):  # a miss: compute every layer asked for so far in one pass
        layers = sorted(wanted | set(meta["layers"]))
        size = n * cfg.data.seq_len * source.dim * 2 * len(layers)
        check_cache_budget(size, cfg.data.max_cache_bytes)
        log.info("teacher features: storing %s (%d windows x %d layers)", human_bytes(size), n, len(layers))
        t0 = time.time()
        rd = _ray_data()
        # Blocks of a few teacher batches: an actor returns its output block only when the block is done, so
        # one block of all n windows would keep the progress line silent until the very end.
        rows_per_block = TEACHER_BATCHES_PER_BLOCK * cfg.data.teacher_batch_size
        ds = rd.read_parquet(storage.remote_uri(train_dir)).limit(n)
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
        ds = ds.map_batches(TeacherFeatures, fn_constructor_args=(spec, layers, dtype, cfg.resources.torch_threads),
                            batch_format="pyarrow", batch_size=cfg.data.teacher_batch_size,
                            concurrency=cfg.data.teacher_actors or max(1, _cluster_gpus()),
                            num_gpus=1 if use_gpu else 0, num_cpus=0.5)
        # Half a CPU per actor: a whole one starves Ray Data's own read tasks on a 2-core node (deadlock).
        shards = write_dataset_atomic(ds, directory / "shards", rows_per_shard=FEATURE_ROWS_PER_SHARD, total=n,
                                      desc=f"teacher features (layers {layers})")
        for stale in directory.glob("stats_*.safetensors"):  # recomputed from the new shards on demand
            storage.delete(stale)
        meta = {"teacher": teacher, "layers": layers, "teacher_dim": source.dim,
                "num_layers": source.num_layers, "windows": n, "shards": shards,
                "tokens_per_second": round(n * cfg.data.seq_len / (time.time() - t0), 1)}
        write_json(meta_path, meta)
        storage.publish(directory / "shards")
        storage.publish(meta_path)  # last: it marks the shards complete
        log.info("teacher features: %s", {k: v for k, v in meta.items() if k != "shards"})
    return str(directory / "shards")


def resolve_teacher_dtype(setting: str, use_gpu: bool) -> str:
    """``data.teacher_dtype`` as computed: "auto" is bfloat16 on GPU actors or a CPU with bf16 units, float32
    on other CPUs (the driver's CPU stands for the cluster's CPU nodes). The resolved value keys the cache."""
    if setting != "auto":
        return setting
    return "bfloat16" if use_gpu or native_bf16("cpu") else "float32"


def feature_dir(base: Path, teacher: str, windows: int, dtype: str) -> Path:
    return Path(base) / "features" / artifact_key(teacher=teacher, windows=windows, dtype=dtype)


def feature_stats(shards: str, layer: int, dim: int, windows: int) -> str:
    """Per-channel mean/std of one layer's stored features over the real positions (padding excluded) of
    the first ``windows`` windows, computed once and stored next to the shards
    (``stats_<layer>_<windows>.safetensors``). LDLM standardises its token encoder's states with these."""
    return write_feature_stats(Path(shards).parent,
                               lambda: _feature_batches(storage.fetch(shards), [teacher_column(layer), "length"]),
                               layer, dim, windows)


def write_feature_stats(directory: Path, batches, layer: int, dim: int, windows: int) -> str:
    """``stats_<layer>_<windows>.safetensors`` in ``directory`` from ``batches()`` (dicts with the layer's flat
    features and ``length``), unless it is there already."""
    from latentlm.models.checkpoint import save_tensors
    from latentlm.models.token_encoder import HiddenStats
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"stats_{layer}_{windows}.safetensors"
    with storage.lock(path):
        if storage.fetch(path).is_file():
            return str(path)
        moments = torch.zeros(3, dim, dtype=torch.float64)
        seen = 0
        for batch in batches():
            column = batch[teacher_column(layer)]
            take = min(len(column), windows - seen)
            if take <= 0:
                break
            states = torch.from_numpy(np.stack(column[:take]).astype(np.float32).reshape(take, -1, dim))
            real = torch.arange(states.shape[1])[None] < torch.from_numpy(batch["length"][:take].astype(np.int64))[:, None]
            moments += HiddenStats.moments(states, real)
            seen += take
        stats = HiddenStats(dim).set_from_moments(moments)
        save_tensors(path, stats.state_dict(), metadata={"windows": str(seen), "layer": str(layer)})
        storage.publish(path)
    return str(path)


def _feature_batches(shards: Path, columns: list[str]):
    """Shards in file order (the order the training stream reads them) as dicts of numpy/object columns."""
    for file in sorted(shards.glob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256, columns=columns):
            yield {name: batch.column(name).to_numpy(zero_copy_only=False) for name in columns}


def _cluster_gpus() -> int:
    import ray
    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
