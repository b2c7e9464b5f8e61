"""Teacher features into the trainers, under each ``data.teacher_placement`` (see ``teacher_plan.py``).

A stage that reads features asks ``feature_feed`` for its dataset and gets the same rows under every placement:
the token columns plus a feature column (fp16 hidden states of one teacher layer, flat per window), so its step
function never knows where they came from.

* cached: the stored Parquet shards (``windows.prepare_data`` computed them once, first ``teacher_windows``).
* streamed: the token shards, then ``map_batches`` with the frozen teacher as a pool of Ray Data actors (one GPU
  each when the cluster has GPUs), handed to Ray Train like any dataset; nothing is written. With
  ``data.ingest: per_rank`` each worker's split runs the teacher on its own rows only.
* inline: the token shards; the training loop runs the teacher on each micro-batch (``InlineTeacher``).

Features are computed by the same code path in all three (``windows.TeacherFeatures.states``: the teacher's
compute dtype, fp16 on the way out), so a streamed or inline feature equals the cached one for the same window
up to the batch composition's effect on the teacher's kernels (within fp16 rounding; tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .windows import TEACHER_BATCHES_PER_BLOCK, DataArtifacts, TeacherFeatures, teacher_column


@dataclass
class FeatureFeed:
    dataset: Any                  # ray.data.Dataset with the token columns and the feature column
    loop_config: dict             # extra training-loop config (inline: the teacher the loop runs)
    teacher_gpus: int = 0         # GPUs the streamed teacher actors hold (not available to the trainers)


def feature_feed(cfg, artifacts: DataArtifacts, columns: list[str], feature: str) -> FeatureFeed:
    """The dataset of a feature-reading stage: ``columns`` plus the teacher's features named ``feature``."""
    from latentlm.platform.training.launch import training_dataset
    d, placement = cfg.data, artifacts.teacher_placement
    if placement == "cached":
        return FeatureFeed(training_dataset(artifacts.vae_train, [*columns, artifacts.teacher_column],
                                            d.materialize_max_mb, artifacts.vae_windows,
                                            {artifacts.teacher_column: feature}), {})
    tokens = training_dataset(artifacts.train, columns, d.materialize_max_mb)
    if placement == "inline":
        return FeatureFeed(tokens, {"inline_teacher": {"model": artifacts.teacher_model, "layer": artifacts.teacher_layer,
                                                       "dtype": artifacts.teacher_dtype, "column": feature}})
    gpus = cluster_gpus()
    actors = d.teacher_actors or 1
    streamed = teacher_pass(tokens, cfg, artifacts, actors, gpus, {artifacts.teacher_layer: feature})
    return FeatureFeed(streamed, {}, actors if gpus else 0)


def teacher_pass(tokens, cfg, artifacts: DataArtifacts, actors: int, gpus: int, names: dict[int, str] | None = None):
    """``tokens`` through the frozen teacher as a pool of Ray Data actors (one GPU each when there are GPUs), the
    layer's features named by ``names``. No task of its own needs a whole CPU: next to trainers that hold a node's
    CPUs, a 1-CPU repartition or rename task would never be scheduled (a deadlock on a 2-core node)."""
    d = cfg.data
    streamed = tokens.map_batches(
        TeacherFeatures, fn_constructor_args=(artifacts.teacher_model, [artifacts.teacher_layer], artifacts.teacher_dtype,
                                              cfg.resources.torch_threads, names),
        batch_format="pyarrow", batch_size=d.teacher_batch_size, concurrency=actors, num_gpus=1 if gpus else 0,
        num_cpus=0.5)
    # An actor hands its output on in blocks of up to target_max_block_size bytes (128 MiB: ~1,800 windows of 64
    # tokens x 576 dims, many minutes of a CPU teacher): blocks of a few teacher batches let the first features
    # reach the trainers after seconds. (At paper scale a window's features are 4 MB, and this changes nothing.)
    window_bytes = d.seq_len * artifacts.teacher_dim * 2
    streamed.context.target_max_block_size = min(streamed.context.target_max_block_size,
                                                 TEACHER_BATCHES_PER_BLOCK * d.teacher_batch_size * window_bytes)
    return streamed


def cluster_gpus() -> int:
    import ray
    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0


class InlineTeacher:
    """The frozen teacher inside a training worker: adds one layer's features to each micro-batch, in the
    representation the cached and streamed placements deliver (flat fp16 per window)."""

    def __init__(self, model: str, layer: int, dtype: str, column: str, device: torch.device):
        from latentlm.models.teacher import FrozenTeacher
        self.teacher = FrozenTeacher(model, [layer], dtype=getattr(torch, dtype), device=device)
        self.layer, self.column, self.device = layer, column, device

    def add_features(self, micro: dict) -> dict:
        from latentlm.platform.training.parts import stack_column
        states = TeacherFeatures.states(self.teacher, stack_column(micro, "tokens"), self.device)
        return {**micro, self.column: states[self.layer]}


def inline_teacher(config: dict, device: torch.device) -> InlineTeacher | None:
    spec = config.get("inline_teacher")
    return None if spec is None else InlineTeacher(**spec, device=device)


def streamed_feature_stats(cfg, artifacts: DataArtifacts, windows: int) -> str:
    """LDLM's per-channel statistics of the token encoder's states over the first ``windows`` windows, for the
    placements that store no features: one teacher pass over those windows through Ray Data, only the moments
    kept (the file a cached pass over the same windows would write)."""
    from latentlm.platform.training.launch import training_dataset
    from .windows import feature_dir, write_feature_stats
    directory = feature_dir(Path(artifacts.root), artifacts.teacher_spec, windows, artifacts.teacher_dtype)

    def batches():
        tokens = training_dataset(artifacts.train, ["tokens", "length"], cfg.data.materialize_max_mb, windows)
        ds = teacher_pass(tokens, cfg, artifacts, cfg.data.teacher_actors or 1, cluster_gpus())
        for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
            yield {name: batch[name] for name in (teacher_column(artifacts.teacher_layer), "length")}

    return write_feature_stats(directory, batches, artifacts.teacher_layer, artifacts.teacher_dim, windows)
