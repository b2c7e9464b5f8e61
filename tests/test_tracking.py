import pytest

from latentlm.platform.training.tracking import start_tracking


def test_disabled_or_non_main_rank_logs_nothing(tmp_path):
    for enabled, main in ((False, True), (True, False)):
        tracker = start_tracking(enabled, main, project="p", group="g", name="n", directory=tmp_path, config={})
        tracker.log({"x": 1.0}, step=1)
        tracker.finish()
    assert not any(tmp_path.iterdir())


def test_offline_run_per_trial_grouped_by_sweep(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = start_tracking(True, True, project="latentlm", group="ablate_repa",
                             name="repa.enabled=True,repa.layer=-3-vae", directory=tmp_path, config={"a": 1})
    tracker.log({"vae/loss": 1.5}, step=1)
    run_id, group = tracker.run.id, tracker.run.group
    tracker.finish()
    assert group == "ablate_repa" and set(run_id) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert any(p.name.startswith("offline-run-") for p in (tmp_path / "wandb").iterdir())
