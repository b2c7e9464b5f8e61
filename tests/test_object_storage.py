"""Run directories on object storage: a local S3-compatible server (moto, on loopback) stands in for S3.

The storage layer (``platform/storage.py``) mirrors a URI run dir node-locally and moves artifacts with
``publish`` / ``fetch``; a sweep with ``--run-dir s3://...`` must leave the same leaderboard rows as on disk, and a
second "node" (its own mirror) must find every stage the first one trained in the store, not retrain it.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from latentlm.models.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on loopback for the module, and the environment a client (this process, a subprocess
    and the Ray workers it starts) reaches it with."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "latentlm-test",
           "AWS_SECRET_ACCESS_KEY": "latentlm-test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env
    server.stop()


def new_bucket(s3_env) -> str:
    import boto3
    name = f"latentlm-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def keys(bucket: str, prefix: str = "") -> list[str]:
    import boto3
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_a_uri_run_dir_maps_to_one_mirror_path_and_back(tmp_path, monkeypatch):
    from latentlm.platform import storage
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "cache"))
    uri = "s3://bucket-a/runs/cfg/leaderboard.parquet"
    local = storage.mirror_path(uri)
    assert local == tmp_path / "cache" / "mirror" / "s3" / "bucket-a" / "runs" / "cfg" / "leaderboard.parquet"
    assert storage.remote_uri(local) == uri and storage.local_path(uri) == local
    assert storage.remote_uri(tmp_path / "x") == str((tmp_path / "x").resolve())  # a local path stays a path
    assert not storage.is_uri("/abs/path") and not storage.is_uri("C:\\runs") and storage.is_uri("gs://b/k")
    # a Ray Train loop config travels with URIs (the worker's node may mirror elsewhere) and comes back local
    config = {"vae_checkpoint": str(local.parent), "run_dir": str(local.parent), "steps": 3, "name": "x"}
    shipped = storage.portable(config)
    assert shipped["vae_checkpoint"] == "s3://bucket-a/runs/cfg" and shipped["steps"] == 3 and shipped["name"] == "x"
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "other-node"))
    monkeypatch.setattr(storage, "fetch", lambda path, refresh=False: Path(path))  # no store in this test
    arrived = storage.localize(shipped)
    assert arrived["run_dir"] == str(tmp_path / "other-node" / "mirror" / "s3" / "bucket-a" / "runs" / "cfg")


def test_published_artifacts_reach_a_node_that_never_had_them(s3_env, tmp_path, monkeypatch):
    from latentlm.platform import storage
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "node-a"))
    bucket = new_bucket(s3_env)
    root = storage.run_path(f"s3://{bucket}/runs")
    shards = root / "data" / "k" / "train"
    shards.mkdir(parents=True)
    (shards / "part-00000.parquet").write_bytes(b"\x00rows" * 100)
    (shards / ".part-00001.parquet.tmp").write_bytes(b"partial")  # temp and lock files stay on the node
    (shards.parent / "manifest.json.lock").write_text("")
    (shards.parent / "manifest.json").write_text('{"windows": 3}')
    storage.publish(shards)
    storage.publish(shards.parent / "manifest.json")
    assert keys(bucket) == ["runs/data/k/manifest.json", "runs/data/k/train/part-00000.parquet"]

    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "node-b"))  # another node: an empty mirror
    there = storage.run_path(f"s3://{bucket}/runs") / "data" / "k"
    assert not there.exists() and storage.exists(there / "manifest.json") and not storage.exists(there / "nope")
    assert storage.total_bytes(there / "train", ".parquet") == 500  # sized in the store, nothing downloaded
    assert storage.fetch(there / "train").is_dir() and not storage.fetch(there / "missing").exists()
    assert (there / "train" / "part-00000.parquet").read_bytes() == b"\x00rows" * 100
    assert sorted(p.name for p in (there / "train").iterdir()) == ["part-00000.parquet"]
    # a file another node rewrote: only a refresh sees the new content
    (shards.parent / "manifest.json").write_text('{"windows": 4}')
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "node-a"))
    storage.publish(shards.parent / "manifest.json")
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "node-b"))
    assert storage.fetch(there / "manifest.json").read_text() == '{"windows": 4}'  # first fetch: the new one
    (there / "manifest.json").write_text("stale")
    assert storage.fetch(there / "manifest.json").read_text() == "stale"
    assert storage.fetch(there / "manifest.json", refresh=True).read_text() == '{"windows": 4}'
    storage.delete(there / "manifest.json")
    assert not storage.exists(there / "manifest.json") and "runs/data/k/manifest.json" not in keys(bucket)


def test_bad_object_store_run_dirs_fail_in_one_line_before_ray(s3_env, monkeypatch, capsys):
    from latentlm.platform import storage
    from latentlm.platform.sweep import sweep_main
    import latentlm.platform.training.launch as launch
    bucket = new_bucket(s3_env)
    cases = {"nosuchscheme://bucket/runs": "run_dir nosuchscheme://bucket/runs: cannot open it as object storage",
             "s3://latentlm-missing-bucket/runs": "the bucket 'latentlm-missing-bucket' does not exist",
             f"s3://{bucket}": "name a folder inside the bucket"}
    for run_dir, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            storage.run_path(run_dir)
    monkeypatch.setattr(launch, "init_ray", lambda *a, **k: pytest.fail("Ray started for a bad run dir"))
    capsys.readouterr()
    assert sweep_main("bad", lambda preset: {}, "bad sweep", ["--run-dir", "s3://latentlm-missing-bucket/runs"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["config error: run_dir s3://latentlm-missing-bucket/runs: the bucket 'latentlm-missing-bucket' "
                   "does not exist (create it first)"]


def read_board(bucket: str, key: str):
    import boto3
    import pandas as pd
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


def run_sweep_script(args: list[str], env: dict, cache: Path) -> subprocess.CompletedProcess:
    """A sweep as a user runs it, its own local Ray cluster (short temp dir: Unix socket paths) and its own
    node-local cache, so its mirror of the bucket starts empty."""
    ray_tmp = tempfile.mkdtemp(prefix="ls3-", dir="/tmp")
    try:
        return subprocess.run([sys.executable, str(REPO / "experiments" / "ablate_cfg.py"), *args],
                              env={**os.environ, **env, "LATENTLM_CACHE": str(cache), "RAY_TMPDIR": ray_tmp},
                              capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.ray
def test_a_sweep_on_object_storage_leaves_the_rows_it_leaves_on_disk(cfg_sweep, s3_env, tmp_path, capsys):
    """The CFG sweep at scale 1.0 with ``--run-dir s3://...``: its rows equal the on-disk CFG sweep's (same row ids,
    same numbers), and everything it wrote is in the bucket. Then a second node, whose mirror is empty, runs the
    trial's pipeline under the same run dir and trains nothing: data, stage records and checkpoints come from the
    store."""
    code, config, disk_runs = cfg_sweep
    assert code == 0
    bucket = new_bucket(s3_env)
    run_dir = f"s3://{bucket}/runs"
    started = time.perf_counter()
    first = run_sweep_script(["--config", str(config), "--run-dir", run_dir, "--name", "cfg",
                              "--axis", "eval.cfg_scale=1.0"], s3_env, tmp_path / "node-a")
    print(f"sweep on object storage: {time.perf_counter() - started:.1f} s")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"leaderboard: {run_dir}/cfg/leaderboard.parquet" in first.stdout
    stored = keys(bucket)
    for expected in ("runs/cfg/leaderboard.parquet", "runs/cfg/leaderboard.md", "runs/cfg/leaderboard.html",
                     "runs/cfg/sweep.json", "runs/cfg/trials/eval.cfg_scale=1.0/config.json",
                     "runs/cfg/trials/eval.cfg_scale=1.0/eval/metrics.json"):
        assert expected in stored, expected
    for prefix in ("runs/artifacts/vae-", "runs/artifacts/dit-", "runs/ray/vae-", "runs/ray/dit-", "runs/cfg/tune/",
                   "runs/artifacts/references/"):
        assert any(k.startswith(prefix) for k in stored), prefix
    assert any(k.startswith("runs/data/") and k.endswith("/train/part-00000.parquet") for k in stored)
    assert any("/features/" in k and k.endswith("/shards/part-00000.parquet") for k in stored)  # REPA's features

    import pandas as pd
    board = read_board(bucket, "runs/cfg/leaderboard.parquet")
    disk = pd.read_parquet(disk_runs / "cfg" / "leaderboard.parquet").set_index("row_id")
    assert len(board) and set(board["row_id"]) <= set(disk.index)
    assert sorted(board.loc[board["method"] == "textldm", "trial"]) == ["eval.cfg_scale=1.0"]
    metrics = [c for c in board.columns if c.startswith(("mauve", "gen_ppl", "recon_acc", "rep", "bertscore"))]
    assert metrics
    for _, row in board.iterrows():
        on_disk = disk.loc[row["row_id"]]
        for column in metrics + ["protocol_hash", "config_hash"]:
            assert row[column] == on_disk[column] or (pd.isna(row[column]) and pd.isna(on_disk[column])), column
    model = board[board["method"] == "textldm"].iloc[0]
    assert model["checkpoint"].startswith(f"{run_dir}/ray/dit-")  # a row names its checkpoint in the store

    # another node, its mirror empty, runs the same trial's pipeline: everything comes from the store, nothing trains
    import yaml
    from latentlm.platform import registry, storage
    from latentlm.platform.methods.textldm import pipeline
    from latentlm.platform.training import launch
    cfg = registry.get("textldm").build("tiny", yaml.safe_load(config.read_text()))
    node_b = tmp_path / "node-b"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTLM_CACHE", str(node_b))
        mp.setattr(pipeline, "run_stage", lambda *a, **k: pytest.fail("a stage trained again on the second node"))
        for module in (launch, pipeline):
            mp.setattr(module, "training_dataset", lambda *a, **k: pytest.fail("a cached stage read its data"))
        runs = storage.run_path(run_dir)
        trained = pipeline.train_textldm(cfg, f"{run_dir}/cfg/trials/node-b", data_root=runs, cache_root=runs)
        assert storage.remote_uri(trained.checkpoints["dit"]) == model["checkpoint"]  # node-b's mirror of it
        # the URIs a user copies from the leaderboard: `latentlm evaluate/sample` and `latentlm leaderboard` take them
        from latentlm.platform import cli
        from latentlm.platform.hub import resolve_checkpoint
        assert resolve_checkpoint(model["checkpoint"]) == Path(trained.checkpoints["dit"])
        assert cli.main(["leaderboard", f"{run_dir}/cfg/"]) == 0
    assert trained.stage_seconds == {"vae": 0.0, "dit": 0.0}
    assert "eval.cfg_scale=1.0" in capsys.readouterr().out  # the leaderboard the command printed
    mirror = node_b / "mirror" / "s3" / bucket / "runs"
    for stage, checkpoint in trained.checkpoints.items():  # fetched whole to this node
        assert Path(checkpoint).is_relative_to(mirror) and (Path(checkpoint) / "state.json").is_file(), stage
    # the data artifact's manifest, vocabulary and token counts, and the features' manifest; not their shards
    assert Path(trained.artifacts.vocab).is_file() and Path(trained.artifacts.token_counts).is_file()
    assert list(mirror.glob("data/*/features/*/manifest.json")) and not list(mirror.glob("data/*/features/*/shards"))
    assert "runs/cfg/trials/node-b/config.json" in keys(bucket)
