"""Tune sweeps: spec validation before any trial, shared upstream stages, leaderboard rows, restore."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from latentlm.models.config import ConfigError
from latentlm.platform.sweep import SweepSpec, parse_axis, plan_trials, sweep_main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("axes, field", [
    ({"vae.latnt_dim": [8]}, "sweep.axes.vae.latnt_dim"),          # unknown axis
    ({"vae.latent_dim": []}, "sweep.axes.vae.latent_dim"),          # empty value list
    ({"ldlm.warmup_steps": [0, 100]}, "sweep.axes.ldlm.warmup_steps"),  # an axis TextLDM does not have
    ({"vae.latent_dim": [8, -1]}, "vae.latent_dim"),                # a bad value, caught while planning
])
def test_bad_specs_fail_before_any_trial_naming_the_field(axes, field, monkeypatch, tmp_path):
    import latentlm.platform.training.launch as launch
    monkeypatch.setattr(launch, "init_ray", lambda *a, **k: pytest.fail("Ray started for an invalid sweep"))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        plan_trials(SweepSpec("bad", axes=axes, run_dir=str(tmp_path)))
    argv = ["--run-dir", str(tmp_path)] + [f"--axis={k}={','.join(map(str, v))}" for k, v in axes.items()]
    assert sweep_main("bad", lambda preset: {}, "bad sweep", argv) == 2


def test_unknown_method_and_grid_expansion():
    with pytest.raises(ConfigError, match="sweep.method"):
        plan_trials(SweepSpec("x", method="nope"))
    trials = plan_trials(SweepSpec("x", axes={"vae.repa.enabled": [False, True], "vae.repa.layer": [-3, -1]}))
    # REPA-off ignores the layer: 2 x 2 grid -> 3 distinct trials
    assert [t.trial_id for t in trials] == ["repa.enabled=False,repa.layer=-3", "repa.enabled=True,repa.layer=-3",
                                           "repa.enabled=True,repa.layer=-1"]
    assert trials[2].overrides["vae"]["repa"] == {"enabled": True, "layer": -1}
    assert parse_axis("eval.cfg_scale=1,3.5") == ("eval.cfg_scale", [1, 3.5])


def test_baseline_trial_is_the_matched_ar_on_the_sweeps_data_and_eval():
    from latentlm.platform.sweep import METHODS
    overrides = {"eval": {"num_samples": 16}, "data": {"max_documents": 500}, "vae": {"latent_dim": 8}}
    trials = plan_trials(SweepSpec("x", axes={"vae.repa.enabled": [False]}, overrides=overrides, baseline=True))
    assert [t.trial_id for t in trials] == ["repa.enabled=False", "baseline:ar"]
    baseline = trials[-1]
    assert baseline.method == "ar" and trials[0].method is None
    # the sweep's data / eval overrides travel (so its rows rank with the trials'), its model overrides do not
    assert baseline.overrides == {"match": "textldm:tiny", "eval": {"num_samples": 16},
                                  "data": {"max_documents": 500}}
    ar = METHODS["ar"].build("tiny", baseline.overrides)
    assert ar.eval.num_samples == 16 and ar.data.max_documents == 500
    assert plan_trials(SweepSpec("x", axes={"vae.repa.enabled": [False]}))[-1].method is None  # opt-in
    with pytest.raises(ConfigError, match="sweep.baseline"):
        plan_trials(SweepSpec("x", method="ar", baseline=True))


def test_an_ldlm_sweeps_baseline_is_scored_under_ldlms_unconditional_protocol():
    import importlib.util
    from latentlm.platform.methods.ldlm.config import build_ldlm_config
    from latentlm.platform.evaluation.protocol import EvalProtocol
    from latentlm.platform.sweep import METHODS
    spec = importlib.util.spec_from_file_location("ablate_ldlm_recipe", REPO / "experiments" / "ablate_ldlm_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    overrides = {"eval": {"num_samples": 16}, "ldlm": {"decoder_noise": 0.5}}
    trials = plan_trials(SweepSpec("x", method="ldlm", axes=module.axes("tiny"), overrides=overrides, baseline=True))
    assert len(trials) == 5 and trials[-1].trial_id == "baseline:ar"
    assert trials[-1].overrides == {"match": "ldlm:tiny", "eval": {"num_samples": 16}}
    ar = METHODS["ar"].build("tiny", trials[-1].overrides)
    ldlm = build_ldlm_config("tiny", trials[0].overrides)
    assert EvalProtocol.from_config(ar).hash == EvalProtocol.from_config(ldlm).hash


@pytest.mark.ray
def test_a_changed_grid_is_a_new_tune_experiment_and_the_same_grid_restores():
    from latentlm.platform.sweep import experiment_name
    spec = SweepSpec("s", method="textldm", axes={"vae.latent_dim": [4, 8]})
    same = experiment_name("s", plan_trials(spec))
    assert same == experiment_name("s", plan_trials(SweepSpec("s", method="textldm", axes={"vae.latent_dim": [4, 8]})))
    for changed in (SweepSpec("s", axes={"vae.latent_dim": [4, 16]}), SweepSpec("s", axes=spec.axes, baseline=True)):
        assert experiment_name("s", plan_trials(changed)) != same


def test_eval_only_axes_survive_tunes_variant_resolution():
    """An axis that only touches ``eval`` makes overrides like {"eval": {...}}, which Tune would take for its
    "eval" expression syntax if the trial travelled as a dict."""
    from ray.tune.search.variant_generator import generate_variants
    from latentlm.platform.sweep import SweepSpec, param_space, plan_trials
    trials = plan_trials(SweepSpec("s", method="dlm", axes={"eval.steps": [2, 8]}))
    assert trials[0].overrides == {"eval": {"steps": 2}}
    resolved = [json.loads(config["trial"]) for _, config in generate_variants(param_space(trials))]
    assert [t["overrides"] for t in resolved] == [{"eval": {"steps": 2}}, {"eval": {"steps": 8}}]


@pytest.mark.parametrize("nodes, cpus, concurrent, expected", [
    (1, 2, 2, 1), (1, 8, 2, 4), (1, 2, 3, 1), (1, 2, 1, 0), (2, 16, 2, 0)])
def test_concurrent_trials_on_one_node_split_its_cores(monkeypatch, nodes, cpus, concurrent, expected):
    """Trials sharing one node get cores // trials torch threads each (2 threads each on 2 cores ran a VAE
    step 2.4x slower); one trial, or trials spread over a cluster, keep the default (0: every core)."""
    import ray

    from latentlm.platform import sweep
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * nodes + [{"Alive": False}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": float(cpus)})
    assert sweep.threads_per_trial(concurrent) == expected


def test_a_script_sets_its_default_concurrency_and_the_command_line_overrides_it(monkeypatch):
    from latentlm.platform import sweep
    seen = []
    monkeypatch.setattr(sweep, "run_sweep", lambda spec: seen.append(spec.max_concurrent_trials) or 1 / 0)
    for argv, expected in (([], 2), (["--max-concurrent-trials", "1"], 1), (["--preset", "small"], 1)):
        with pytest.raises(ZeroDivisionError):
            sweep_main("t", lambda preset: {}, "doc", argv, default_concurrency=lambda p: 2 if p == "tiny" else 1)
        assert seen[-1] == expected


@pytest.mark.ray
def test_cfg_sweep_trains_once_and_fills_the_leaderboard(cfg_sweep):
    import pandas as pd
    code, config, runs = cfg_sweep
    assert code == 0
    records = sorted(p.name.split("-")[0] for p in (runs / "artifacts").glob("*.json"))
    assert records == ["dit", "vae"]  # CFG is a sampling-time axis: one VAE, one DiT, two evaluations
    board = pd.read_parquet(runs / "cfg" / "leaderboard.parquet")
    models, humans = board[board["method"] == "textldm"], board[board["method"] == "human"]
    assert sorted(models["trial"]) == ["eval.cfg_scale=1.0", "eval.cfg_scale=5.0"]
    assert board["row_id"].is_unique and models["checkpoint"].nunique() == 1
    # CFG is part of the protocol: two protocol hashes, each with its human-ceiling row
    assert models["protocol_hash"].nunique() == 2 and set(humans["protocol_hash"]) == set(models["protocol_hash"])
    assert all(json.loads(text)["hash"] == h for text, h in zip(board["protocol_json"], board["protocol_hash"]))
    assert (runs / "cfg" / "leaderboard.md").is_file() and (runs / "cfg" / "leaderboard.html").is_file()
    # one writer: each trial reported its rows in a Tune checkpoint (persisted to the experiment's storage), the
    # driver merged them; no trial wrote the leaderboard
    reported = [pd.read_parquet(p) for p in (runs / "cfg" / "tune").rglob("rows.parquet")]
    assert len(reported) == 2 and set(pd.concat(reported)["row_id"]) == set(board["row_id"])
    # a second sweep under the same --run-dir evaluates the model the first one trained
    assert sweep_main("steps", lambda preset: {"eval.steps": [3]}, "steps sweep",
                      ["--config", str(config), "--run-dir", str(runs)]) == 0
    assert sorted(p.name.split("-")[0] for p in (runs / "artifacts").glob("*.json")) == records
    steps = pd.read_parquet(runs / "steps" / "leaderboard.parquet")
    assert set(steps.loc[steps["method"] == "textldm", "checkpoint"]) == set(models["checkpoint"])


@pytest.mark.ray
def test_interrupted_sweep_is_restored_and_each_trial_lands_once(cfg_sweep, tmp_path):
    """Kill the sweep driver after its first trial; running it again finishes the rest via Tuner.restore. The
    trials differ in a sampling knob and find their data prepared and their stages trained (the CFG sweep's)."""
    import pandas as pd
    _, config, trained = cfg_sweep
    runs = tmp_path / "runs"
    for cached in ("artifacts", "data"):  # stage records, and the tokenized windows with teacher features
        shutil.copytree(trained / cached, runs / cached)
    # one trial at a time: the first run is killed once its first trial lands, so a second trial running beside
    # it would be evaluated twice
    cmd = [sys.executable, str(REPO / "experiments" / "ablate_cfg.py"), "--config", str(config),
           "--run-dir", str(runs), "--axis", "eval.cfg_scale=2.0,3.0", "--max-concurrent-trials", "1"]
    # its own short Ray temp dir (Unix socket paths must stay under 107 bytes), removed with the test
    ray_tmp = tempfile.mkdtemp(prefix="lr-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    board_path = runs / "ablate_cfg" / "leaderboard.parquet"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 400
        while not board_path.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(1)
        assert board_path.is_file(), "the first trial never finished:\n" + (tmp_path / "first.log").read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
        first.wait()
    first_board = pd.read_parquet(board_path)
    assert len(first_board[first_board["method"] == "textldm"]) == 1
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    board = pd.read_parquet(board_path)
    models = board[board["method"] == "textldm"]
    assert sorted(models["trial"]) == ["eval.cfg_scale=2.0", "eval.cfg_scale=3.0"]
    # no stage was trained again: both rows score the CFG sweep's checkpoint
    assert sorted(p.name for p in (runs / "artifacts").glob("*.json")) == \
        sorted(p.name for p in (trained / "artifacts").glob("*.json"))
    cfg_board = pd.read_parquet(trained / "cfg" / "leaderboard.parquet")
    assert set(models["checkpoint"]) == set(cfg_board.loc[cfg_board["method"] == "textldm", "checkpoint"])
    # one ceiling row and one row per floor for each protocol (CFG is part of it), however many runs scored them
    for _, rows in board.groupby("protocol_hash"):
        assert (rows["method"] == "human").sum() == 1 and (rows["method"] == "floor").sum() == 4
    assert board["row_id"].is_unique
    sweep = json.loads((runs / "ablate_cfg" / "sweep.json").read_text())
    assert sweep["trials"] == ["eval.cfg_scale=2.0", "eval.cfg_scale=3.0"]
    shutil.rmtree(ray_tmp, ignore_errors=True)
