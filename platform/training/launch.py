"""Thin glue over Ray: start/connect a cluster and run a training stage as a TorchTrainer job."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from latentlm.platform import storage

log = logging.getLogger(__name__)

# Defaults that make Ray quiet, local-only and fast to report (see shared/stack-probe.md §0).
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",  # else every ray.train.report blocks ~1.9 s
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}


# Only for the local cluster init_ray starts itself, one machine: its node never drains, so Ray Train's per-run
# preemption-watcher actor (a process of its own, ~2 CPU-seconds a stage) has nothing to watch; and polling its few
# workers every 20 ms costs no measurable CPU, while every ray.train.report waits one poll (50 reports: 1.1 s
# instead of 5.0 s at 0.1 s).
LOCAL_CLUSTER_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                              "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.02"}


def worker_env() -> dict[str, str]:
    env = {k: os.environ.get(k, v) for k, v in RAY_ENV_DEFAULTS.items()}
    if os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        env["WANDB_MODE"] = "online"
    # where a run dir on object storage is mirrored, and which S3-compatible endpoint serves it (credentials are
    # the nodes' own: an instance role or their environment)
    for key in ("LATENTLM_CACHE", "HF_HOME", "WANDB_DIR", "TORCH_EXTENSIONS_DIR", "AWS_ENDPOINT_URL", "AWS_REGION",
                "AWS_DEFAULT_REGION"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def init_ray(num_cpus: int | None = None, temp_dir: str | None = None, resources=None) -> None:
    """Connect to the cluster in RAY_ADDRESS (``ray job submit`` sets it) or start a local one; then, with
    ``resources.min_nodes`` > 0 (a ``ResourcesConfig``), wait for that many nodes (``nodes.wait_for_min_nodes``)."""
    from .nodes import wait_for_min_nodes
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        for key, value in LOCAL_CLUSTER_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    # A job's own runtime_env may set some of these already; naming them again makes ray.init refuse to
    # merge the two, so only forward what the environment does not set.
    missing = {k: v for k, v in worker_env().items() if k not in os.environ}
    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    import ray
    if ray.is_initialized():
        return wait_for_min_nodes(resources)
    runtime_env = {"env_vars": worker_env()}
    if not local:
        ray.init(runtime_env={"env_vars": missing})  # an existing cluster refuses num_cpus/num_gpus
    else:
        runtime_env["env_vars"].update({key: os.environ[key] for key in LOCAL_CLUSTER_ENV_DEFAULTS})
        # The dashboard (loopback only) also serves the state API that Ray Train's placement-group
        # cleaner polls; without it that actor logs a warning every second.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                 _temp_dir=temp_dir)
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    wait_for_min_nodes(resources)


def use_gpu(setting: str) -> bool:
    if setting in ("true", "false"):
        return setting == "true"
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


def training_dataset(path: str, columns: list[str], materialize_max_mb: int, limit: int | None = None,
                     rename: dict[str, str] | None = None):
    """Parquet shards as a Ray Dataset of ``columns`` (first ``limit`` rows, columns renamed), rows in shard order.

    Large shards are streamed to the workers (``read_parquet``). Shards of at most ``materialize_max_mb`` are
    read once, here, into one in-memory Arrow table (``from_arrow``): re-reading a small file every epoch costs
    more than the epoch itself, and a ``read_parquet(...).materialize()`` schedules read tasks (about 3 CPU-seconds
    a stage; while a sweep's trials hold every core, a long wait for a free one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    if storage.total_bytes(path, ".parquet") <= materialize_max_mb * 2**20:
        local = storage.fetch(path)
        shards = sorted(local.rglob("*.parquet")) if local.is_dir() else [local]
        table = pa.concat_tables([pq.read_table(f, columns=columns) for f in shards])
        if limit is not None:
            table = table.slice(0, limit)
        if rename:
            table = table.rename_columns([rename.get(name, name) for name in table.column_names])
        return ray.data.from_arrow(table)
    dataset = ray.data.read_parquet(storage.remote_uri(path), columns=columns)  # the readers' nodes lack the mirror
    if limit is not None:
        dataset = dataset.limit(limit)
    if rename:
        dataset = dataset.rename_columns(rename)
    return dataset


def run_stage(loop: Callable[[dict], None], loop_config: dict[str, Any], dataset, name: str,
              storage_path: Path, resources, max_failures: int = 1, teacher_gpus: int = 0) -> str:
    """Run ``loop`` under a TorchTrainer over ``dataset``; return the final checkpoint's path.

    Runs are named, so re-running the same stage with the same storage resumes from its last checkpoint. The
    experiment's ``data.ingest`` decides whether each worker reads its own split of the dataset (per_rank:
    Ray Data ``streaming_split``, deterministic under ``preserve_order``) or the whole of it (replicated), see
    ``parts.stream_batches``. ``teacher_gpus``: GPUs a streamed teacher's actors hold, left out of the automatic
    worker count."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    import ray
    from .engine import check_batch_plans
    gpu = use_gpu(resources.use_gpu)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = resources.num_workers or (max(1, gpus - teacher_gpus) if gpu else 1)
    experiment = loop_config.get("experiment", {})
    if experiment:  # fail fast: a batch that does not split over the workers
        check_batch_plans(experiment, workers)
    per_rank = experiment.get("data", {}).get("ingest", "replicated") == "per_rank"
    ordered = DataConfig.default_ingest_options()
    ordered.preserve_order = True  # also what makes streaming_split's row assignment deterministic
    trainer = TorchTrainer(
        functools.partial(on_worker, loop),
        train_loop_config=storage.portable(loop_config),
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=["train"] if per_rank else [], execution_options=ordered),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": resources.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage.remote_uri(storage_path),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {name} finished without a checkpoint (error: {result.error})")
    uri = storage.remote_uri(storage_path)
    if storage.is_uri(uri):  # Ray names an object store's checkpoint by its key: return its mirrored path
        return str(storage.mirror_path(f"{urlparse(uri).scheme}://{result.checkpoint.path}"))
    return result.checkpoint.path


def on_worker(loop: Callable[[dict], None], config: dict) -> None:
    """Every Ray Train worker's entry: the mirrored artifacts the loop config names (earlier stages' checkpoints,
    the vocabulary, statistics) fetched to this worker's node, then the loop."""
    loop(storage.localize(config))
