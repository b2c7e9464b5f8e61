"""Results tables and the ``latentlm`` command line (without Ray), plus the packaging traps: the repo's
``platform/`` folder must not shadow the stdlib ``platform`` module, and the console script exists."""
from __future__ import annotations

import json
import platform as stdlib_platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentlm.platform import cli

REPO = Path(__file__).resolve().parents[1]


# -- CLI -------------------------------------------------------------------------------------------

@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start Ray fails the test."""
    import latentlm.platform.training.launch as launch
    # Import the pipeline before patching launch: importing it afterwards would bind the patched function
    # for good (monkeypatch would then "restore" the patch and break every later test).
    import latentlm.platform.methods.textldm.pipeline as pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("Ray must not be started for a config error")

    monkeypatch.setattr(launch, "init_ray", forbidden)
    monkeypatch.setattr(pipeline, "init_ray", forbidden)   # it holds its own reference
    import ray
    was_running = ray.is_initialized()  # a session-wide local cluster from earlier Ray tests may be up
    monkeypatch.setattr(ray, "init", forbidden)
    yield
    assert ray.is_initialized() == was_running


@pytest.mark.parametrize("argv, needle", [
    (["train", "--set", "vae.latent_dim=0"], "vae.latent_dim"),
    (["train", "--set", "train_vae.optim.stepz=3"], "train_vae.optim.stepz"),
    (["train", "--set", "novalue"], "novalue"),
    (["train", "--preset", "nope"], "preset"),
    (["train", "--set", "eval.split_range=[0.7, 0.3]"], "eval.split_range"),
])
def test_cli_config_error_exit_2(argv, needle, no_ray, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert needle in captured.err and "config error" in captured.err
    assert captured.out == ""


def test_cli_config_file_errors(tmp_path, no_ray, capsys):
    missing = tmp_path / "missing.yaml"
    assert cli.main(["train", "--config", str(missing)]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_vae:\n  optim:\n    stepz: 3\n")
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "train_vae.optim.stepz" in capsys.readouterr().err
    # --set wins over the file: the file's bad value is overridden
    good = tmp_path / "good.yaml"
    good.write_text("vae:\n  latent_dim: 0\n")
    assert cli.main(["train", "--config", str(good), "--set", "vae.latent_dim=8", "--set", "dit.depth=0"]) == 2
    err = capsys.readouterr().err
    assert "dit.depth" in err and "vae.latent_dim" not in err


def test_cli_usage_errors():
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_cli_info(monkeypatch, tmp_path, capsys):
    import torch
    from latentlm.platform.data import assets

    def no_install(*args, **kwargs):
        raise AssertionError("`latentlm info` must not install or convert anything")

    class NoSubprocess:
        run = check_call = check_output = Popen = staticmethod(no_install)

    monkeypatch.setattr(assets, "subprocess", NoSubprocess)
    monkeypatch.setattr(assets, "_convert_gguf", no_install)
    monkeypatch.setattr(assets, "package_dir", lambda name: (assets._find_package_dir(assets._package(name))
                                                             or no_install()))
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "cache"))
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["cuda"] == torch.cuda.is_available()
    assert all(m["presets"] == ["paper", "small", "tiny"] for m in info["methods"].values())  # per family
    assert info["cache"] == str(tmp_path / "cache")
    assert set(info["assets"]) == set(assets.PACKAGES)
    for name, entry in info["assets"].items():
        assert {"package", "version", "installed", "verified", "path", "cached"} <= set(entry), name
        assert entry["package"] == assets.PACKAGES[name].pip_name
        if not entry["installed"]:
            assert entry["path"] is None and entry["verified"] is False
    assert info["assets"]["smollm2"]["cached"] is None     # nothing converted into the fresh cache
    assert info["assets"]["gemma3"]["cached"] is None


# -- packaging traps -------------------------------------------------------------------------------

def test_stdlib_platform_not_shadowed():
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == stdlib_platform.system()
    assert not (REPO / "platform" / "__init__.py").exists() and not (REPO / "models" / "__init__.py").exists()


def test_pytest_collects_from_repo_root():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "tests/test_config.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "tests/test_config.py::" in out.stdout


def test_console_script():
    script = shutil.which("latentlm", path=str(Path(sys.executable).parent))
    assert script is not None, "the `latentlm` console script is not installed in the venv"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("train", "sample", "evaluate", "info"):
        assert command in out.stdout
    out = subprocess.run([script, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--set" in out.stdout and "--preset" in out.stdout
