"""Teacher placement (cached / streamed / inline), the pre-flight plan and its cache budget, per-rank data.

The features a stage reads must not depend on where they were computed: streamed (Ray Data teacher actors, nothing
written) and inline (the trainer runs the teacher) equal the cached shards on the same windows, to fp16 rounding.
Per-rank ingest gives each worker disjoint rows whose union is the epoch, the same rows on every run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.platform.methods.textldm.config import build_config

FP16_TOLERANCE = 2e-3  # relative to the features' scale: fp16 keeps 11 significant bits (~5e-4); batch composition
                       # may change the teacher's float32 kernels' summation order


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def feature_rows(dataset, column: str, rows: int) -> np.ndarray:
    out = []
    for batch in dataset.iter_batches(batch_size=32, batch_format="numpy"):
        out.extend(np.asarray(x, dtype=np.float32) for x in batch[column])
        if len(out) >= rows:
            break
    return np.stack(out[:rows])


@pytest.fixture(scope="module")
def prepared(tiny_overrides, tmp_path_factory, ray_local):
    """One data root with the cached features of every training window (teacher_windows above the split's count):
    the tests compare their first windows, and the training test's cached run reads them all (one teacher pass)."""
    from latentlm.platform.data.windows import prepare_data
    root = tmp_path_factory.mktemp("placement")
    cfg = build_config("tiny", tiny_overrides(data={"teacher_windows": 4096}))
    return root, cfg, prepare_data(cfg, root, need_teacher=True)


@pytest.mark.ray
def test_streamed_and_inline_features_equal_cached_and_write_nothing(tiny_overrides, prepared):
    from latentlm.platform.data.teacher_feed import InlineTeacher, feature_feed
    from latentlm.platform.data.windows import prepare_data
    root, cached_cfg, cached = prepared
    cached_features = feature_feed(cached_cfg, cached, ["tokens", "length"], "teacher")
    assert cached_features.loop_config == {}
    reference = feature_rows(cached_features.dataset, "teacher", 64)

    before = files_under(root)
    streamed_cfg = build_config("tiny", tiny_overrides(data={"teacher_windows": 64, "teacher_placement": "streamed"}))
    streamed = prepare_data(streamed_cfg, root, need_teacher=True)
    assert streamed.vae_windows is None and streamed.vae_train == streamed.train  # every window, no shards
    feed = feature_feed(streamed_cfg, streamed, ["tokens", "length"], "teacher")
    got = feature_rows(feed.dataset, "teacher", 64)
    assert files_under(root) == before  # nothing written: not the features, not a manifest, not a lock
    scale = np.abs(reference).max()
    print(f"streamed vs cached: max |diff| {np.abs(got - reference).max():.2e} at feature scale {scale:.2f}")
    assert got.shape == reference.shape and np.abs(got - reference).max() <= FP16_TOLERANCE * scale

    inline_cfg = build_config("tiny", tiny_overrides(data={"teacher_placement": "inline"}))
    inline = prepare_data(inline_cfg, root, need_teacher=True)
    feed = feature_feed(inline_cfg, inline, ["tokens", "length"], "teacher")
    spec = feed.loop_config["inline_teacher"]
    assert spec["column"] == "teacher" and files_under(root) == before
    tokens = next(iter(feed.dataset.iter_batches(batch_size=16, batch_format="numpy")))
    micro = InlineTeacher(**spec, device=torch.device("cpu")).add_features(tokens)
    got = np.asarray(micro["teacher"], dtype=np.float32)
    assert np.abs(got - reference[:16]).max() <= FP16_TOLERANCE * scale


@pytest.mark.ray
def test_streamed_statistics_equal_cached_statistics(tiny_overrides, prepared):
    """LDLM standardises its encoder's states with per-channel statistics; without a cache they come from a teacher
    pass of their own over the same windows."""
    from latentlm.models.checkpoint import load_tensors
    from latentlm.platform.data.teacher_feed import streamed_feature_stats
    from latentlm.platform.data.windows import feature_stats, prepare_data
    root, cfg, cached = prepared
    from_cache = load_tensors(Path(feature_stats(cached.vae_train, cached.teacher_layer, cached.teacher_dim, 48)))
    streamed_cfg = build_config("tiny", tiny_overrides(data={"teacher_placement": "streamed"}))
    streamed = prepare_data(streamed_cfg, root, need_teacher=True)
    path = streamed_feature_stats(streamed_cfg, streamed, 48)
    assert "shards" not in {p.name for p in Path(path).parent.iterdir()}  # statistics only, no features
    from_stream = load_tensors(Path(path))
    assert from_cache.keys() == from_stream.keys()
    for key in from_cache:
        torch.testing.assert_close(from_stream[key], from_cache[key], rtol=1e-4, atol=1e-5)


def _train_vae(cfg, artifacts, run_dir: Path, workers: int) -> dict[int, float]:
    from latentlm.platform.config import to_dict
    from latentlm.platform.data.teacher_feed import feature_feed
    from latentlm.platform.methods.textldm.train_vae import train_vae_loop
    from latentlm.platform.training.launch import run_stage
    cfg.vae.vocab_size = artifacts.vocab_size
    cfg.resources.num_workers, cfg.resources.cpus_per_worker = workers, 0.5
    feed = feature_feed(cfg, artifacts, ["tokens", "length", "doc_id"], "teacher")
    run_dir.mkdir()
    config = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": run_dir.name, "vocab": artifacts.vocab,
              "teacher_dim": artifacts.teacher_dim, **feed.loop_config}
    run_stage(train_vae_loop, config, feed.dataset, run_dir.name, run_dir / "ray", cfg.resources, max_failures=0)
    lines = [json.loads(line) for line in (run_dir / "vae_metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["data_wait"] <= 1 for m in lines)
    return {m["step"]: m["loss"] for m in lines}


@pytest.mark.ray
def test_inline_trains_like_cached_and_streamed_trains_per_rank(tiny_overrides, tmp_path, prepared):
    """With every window cached (teacher_windows above the split's count) the three placements read the same rows
    in the same order: inline's losses are cached's (features equal, shown above). Streamed runs under two
    per-rank workers, each running the teacher actors' pipeline on its own split only."""
    from latentlm.platform.data.windows import prepare_data
    root, _, _ = prepared
    optim = {"optim": {"steps": 6, "batch_size": 16, "log_every": 2, "warmup_steps": 1}}

    def config(placement):
        return build_config("tiny", tiny_overrides(data={"teacher_windows": 4096, "teacher_placement": placement},
                                                   train_vae={**optim, "random_truncation": 0.0},
                                                   deepspeed={"enabled": False}))
    cached_cfg, inline_cfg, streamed_cfg = config("cached"), config("inline"), config("streamed")
    cached = _train_vae(cached_cfg, prepare_data(cached_cfg, root, True), tmp_path / "cached", 1)
    inline = _train_vae(inline_cfg, prepare_data(inline_cfg, root, True), tmp_path / "inline", 1)
    assert inline == pytest.approx(cached, rel=1e-5)
    streamed = _train_vae(streamed_cfg, prepare_data(streamed_cfg, root, True), tmp_path / "streamed", 2)
    assert sorted(streamed) == [2, 4, 6] and all(np.isfinite(list(streamed.values())))


def test_preflight_refuses_an_oversized_cache_naming_the_field(tiny_overrides):
    from latentlm.platform.data.teacher_plan import preflight
    cfg = build_config("tiny", tiny_overrides(data={"max_cache_bytes": 10_000}))
    with pytest.raises(ConfigError, match=r"data\.max_cache_bytes: .* set data\.teacher_placement=streamed"):
        preflight(cfg)
    # 128 windows x 32 tokens x 32 dims x 2 bytes = 262,144 bytes: under a budget of that size it passes
    cfg = build_config("tiny", tiny_overrides(data={"max_cache_bytes": 262_144}))
    assert preflight(cfg).cache_bytes == 262_144
    streamed = build_config("tiny", tiny_overrides(data={"max_cache_bytes": 10_000, "teacher_placement": "streamed"}))
    plan = preflight(streamed)  # stores nothing: no budget to exceed
    assert plan.cache_bytes == 0 and plan.windows is None
    optim = streamed.train_vae.optim
    assert plan.teacher_tokens == optim.steps * optim.batch_size * streamed.data.seq_len  # recomputed every epoch


def test_bad_placement_and_unloadable_teacher_fail_in_one_line(tiny_overrides, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.teacher_placement: expected one of"):
        build_config("tiny", tiny_overrides(data={"teacher_placement": "remote"}))
    from transformers import LlamaConfig
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4).save_pretrained(tmp_path)
    from latentlm.platform.data.teacher_plan import preflight
    cfg = build_config("tiny", tiny_overrides(data={"teacher_placement": "streamed"}, vae={"repa": {"teacher": str(tmp_path)}}))
    with pytest.raises(ConfigError, match=r"^vae\.repa\.teacher: .* holds a config but no weights"):
        preflight(cfg)


def test_cli_plan_prints_the_paper_estimate_without_ray(capsys, monkeypatch):
    """The paper preset streams (its 8.4 TB cache would be refused); the plan runs offline from the teacher's
    published shape and starts no Ray. (The estimate is read in-process; the refusal's one-line stderr is the
    command line's own, so it runs in a subprocess.)"""
    import ray
    from latentlm.platform import cli
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("`latentlm plan` started Ray"))
    assert cli.main(["plan", "--preset", "paper"]) == 0
    out = capsys.readouterr()
    assert "teacher plan (streamed): Qwen/Qwen3-1.7B" in out.out and "stores nothing" in out.out, out.err
    assert "52.4B teacher tokens" in out.out  # the VAE's 200,000 steps x 256 windows x 1,024 tokens
    refused = subprocess.run([sys.executable, "-m", "latentlm.platform.cli", "plan", "--preset", "paper", "--set",
                              "data.teacher_placement=cached"], capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]  # one line: no traceback, no Ray log
    assert refused.stderr.startswith("latentlm: config error: data.max_cache_bytes: ")
    assert "8.4 TB" in refused.stderr


# -- per-rank data ---------------------------------------------------------------------------------

def _record_rows(config: dict) -> None:
    """A training function that streams two epochs the way the loop does and writes the row ids it saw in each."""
    import ray.train
    from latentlm.platform.training.parts import RankFeed, WorkerContext, micro_batches, stream_batches
    ctx = ray.train.get_context()
    wc = WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), torch.device("cpu"))
    feed = RankFeed(True, wc)
    seen: list[list[int]] = [[], []]
    for epoch, _, batch in stream_batches(ray.train.get_dataset_shard("train"), feed.batch_size(config["batch"]), 7):
        if epoch == 2:
            break
        for micro in micro_batches(batch, config["batch"] // wc.world_size, 1, feed.split):
            seen[epoch].extend(int(i) for i in micro["row"])
    Path(config["out"], f"rank{wc.rank}.json").write_text(json.dumps(seen))


@pytest.mark.ray
def test_per_rank_workers_read_disjoint_rows_whose_union_is_the_epoch(tmp_path, ray_local):
    """Two workers under ``data.ingest: per_rank``: each epoch is split into disjoint halves covering it, and the
    second epoch's split (a new execution of the dataset) assigns every worker the same rows as the first."""
    import ray.cloudpickle
    import ray.data
    import ray.train
    from latentlm.platform.config import to_dict
    from latentlm.platform.training.launch import run_stage
    from latentlm.platform.training.sections import ResourcesConfig
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import a test module
    rows = ray.data.from_items([{"row": i} for i in range(96)])
    config = {"experiment": to_dict(build_config("tiny", {"data": {"ingest": "per_rank"}})), "batch": 16,
              "out": str(tmp_path)}

    def loop(c):
        _record_rows(c)
        ray.train.report({"done": 1})
    with pytest.raises(RuntimeError, match="without a checkpoint"):  # a record-only loop reports no checkpoint
        run_stage(loop, config, rows, "per-rank", tmp_path / "ray", ResourcesConfig(num_workers=2, cpus_per_worker=0.5),
                  max_failures=0)
    (a0, a1), (b0, b1) = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert not set(a0) & set(b0) and sorted(a0 + b0) == list(range(96))
    assert sorted(a0) == sorted(a1) and sorted(b0) == sorted(b1) and a0 != a1  # same rows, reshuffled
