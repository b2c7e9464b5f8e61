"""The config sections every method family shares: data, optimiser, resources, DeepSpeed, and the
continuation protocol's eval section (``EvalConfig``). A family's experiment config composes them with its own
model and stage sections (``methods/<family>/config.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from latentlm.models.config import check_fields, require, require_fraction, require_positive
from latentlm.platform.evaluation.protocol import ContinuationEvalConfig



def require_seed(seed: int) -> None:
    """An experiment's ``seed`` is the entropy every random stream is derived from (``parts.derive_seed``: numpy's
    SeedSequence, which takes no negative entropy)."""
    require(seed >= 0, "seed", "an integer >= 0 (the entropy of every derived random stream)", seed)

@dataclass
class DataConfig:
    corpus: str = "embedded:wiki"          # embedded:wiki | local file/folder | hf:<dataset>
    text_field: str = "text"
    tokenizer: str = "embedded:smollm2"    # local dir, hub name or embedded asset (shared with the REPA teacher)
    seq_len: int = 64                      # tokens per training window (TextLDM: 1024)
    layout: Literal["packed", "per_document"] = "packed"                 # packed: documents concatenated with EOS, cut into full windows
                                           # (no padding) | per_document: a window per document, padded
    max_documents: int | None = None       # cap on corpus documents read (None: all)
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    max_train_windows: int | None = None   # cap on tokenized training windows (None: all)
    vocab_limit: int | None = None         # VAE vocab: the K most used ids (+ EOS/pad if rarer) + 1 unknown; null = full
    teacher_windows: int = 1024            # windows with precomputed teacher features (the REPA VAE trains on these)
    teacher_batch_size: int = 16
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = "auto"            # the frozen teacher's compute dtype for stored features (stored as fp16
                                           # either way): auto = bf16 where the hardware has it (GPU, AMX/AVX512-BF16
                                           # CPU: 2.5x faster), float32 elsewhere (emulated bf16 is ~8x slower)
    materialize_max_mb: int = 256          # smaller training sets are held in Ray's object store, larger ones
                                           # are streamed from Parquet every epoch
    teacher_placement: Literal["cached", "streamed", "inline"] = "cached"  # where the frozen teacher's features
                                           # come from: cached = computed once for the first teacher_windows
                                           # windows and stored | streamed = a Ray Data pipeline (teacher actors,
                                           # GPU when there are GPUs) feeds the trainers, nothing stored, every
                                           # window | inline = each trainer runs the teacher on its micro-batches
    max_cache_bytes: int = 500 * 10**9     # a cached plan that would store more fails before any run
    teacher_actors: int = 0                # teacher actors (one GPU each on a GPU cluster); 0: cached = one per
                                           # GPU (the pass runs before training), streamed = 1
    ingest: Literal["per_rank", "replicated"] = "per_rank"  # per_rank: each worker reads only its own rows
                                           # (Ray Data streaming_split) | replicated: every worker reads every row
                                           # and keeps its slice of each global batch (batches independent of the
                                           # worker count: a ZeRO run sees a single process's batches)

    def __post_init__(self):
        require_positive("data", seq_len=self.seq_len, teacher_windows=self.teacher_windows,
                         teacher_batch_size=self.teacher_batch_size, max_cache_bytes=self.max_cache_bytes)
        require(self.seq_len >= 8, "data.seq_len", "at least 8 tokens", self.seq_len)
        require(self.teacher_actors >= 0, "data.teacher_actors", ">= 0 (0 = automatic)", self.teacher_actors)
        check_fields(self, "data")
        require_fraction("data", valid_fraction=self.valid_fraction, test_fraction=self.test_fraction)
        require(self.valid_fraction + self.test_fraction < 1, "data.test_fraction",
                "valid_fraction + test_fraction < 1", self.valid_fraction + self.test_fraction)
        for name in ("max_documents", "max_train_windows", "vocab_limit"):
            value = getattr(self, name)
            require(value is None or value > 0, f"data.{name}", "a positive count or null", value)


@dataclass
class OptimConfig:
    steps: int = 300
    batch_size: int = 32                   # global batch (split over workers)
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1              # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0
    log_every: int = 25
    checkpoint_every: int = 0              # 0: only the final checkpoint
    ema_decay: float = 0.0                 # 0 disables EMA; DiT reference: 0.9999

    def __post_init__(self):
        require_positive("optim", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                         log_every=self.log_every)
        require(0 <= self.warmup_steps <= self.steps, "optim.warmup_steps", f"in [0, steps={self.steps}]",
                self.warmup_steps)
        require(0 <= self.ema_decay < 1, "optim.ema_decay", "in [0, 1)", self.ema_decay)
        require(self.checkpoint_every >= 0, "optim.checkpoint_every", ">= 0", self.checkpoint_every)


EvalConfig = ContinuationEvalConfig  # the continuation protocol's fields (see evaluation/protocol.py)


@dataclass
class ResourcesConfig:
    num_workers: int = 0                    # 0: one per GPU in the cluster when GPUs are used, else 1
    use_gpu: bool | Literal["auto", "true", "false"] = "auto"
    cpus_per_worker: float = 1.0
    torch_threads: int = 0                  # 0: every core of the node (CPU training)
    min_nodes: int = 0                      # > 0: init_ray waits for this many alive nodes (0: no wait)
    nodes_timeout_s: float = 600.0          # ... at most this long, then fails naming min_nodes

    def __post_init__(self):
        if isinstance(self.use_gpu, bool):  # YAML/CLI "true" arrives as a bool
            self.use_gpu = "true" if self.use_gpu else "false"
        require_positive("resources", cpus_per_worker=self.cpus_per_worker)
        require(self.num_workers >= 0, "resources.num_workers", ">= 0 (0 = automatic)", self.num_workers)
        require(self.min_nodes >= 0, "resources.min_nodes", ">= 0 (0 = do not wait for nodes)", self.min_nodes)
        require_positive("resources", nodes_timeout_s=self.nodes_timeout_s)
        check_fields(self, "resources")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO for the training stages. Gradient accumulation is derived:
    optim.batch_size = micro_batch_size * accumulation * world_size."""

    enabled: bool = True
    zero_stage: Literal[0, 1, 2, 3] = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU | fp32 | bf16 (fp16 is unsupported on CPU)
    micro_batch_size: int = 0        # per worker; 0: optim.batch_size / world_size (no accumulation)
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU (stage >= 1)
    offload_param: bool = False      # parameter offload to CPU (stage 3 only)

    def __post_init__(self):
        check_fields(self, "deepspeed")
        require(self.micro_batch_size >= 0, "deepspeed.micro_batch_size", ">= 0 (0 = automatic)",
                self.micro_batch_size)
        require(not self.offload_param or self.zero_stage == 3, "deepspeed.offload_param", "zero_stage 3",
                self.zero_stage)
