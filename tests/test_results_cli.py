"""Results tables and the ``latentlm`` command line (without Ray), plus the packaging traps: the repo's
``platform/`` folder must not shadow the stdlib ``platform`` module, and the console script exists."""
from __future__ import annotations

import csv
import io
import json
import platform as stdlib_platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentlm.platform import cli, results

REPO = Path(__file__).resolve().parents[1]

ROWS = [
    {"run": "repa", "repa": True, "dataset": "wiki", "recon_acc": 0.9876, "rouge1": 0.1234, "rouge2": 0.05,
     "rougeL": 0.1, "bertscore": 0.8, "mauve": 1.0, "samples": 8},
    {"run": "norepa", "repa": False, "dataset": "shakespeare", "rouge1": 0.0, "mauve": 0.00001, "extra": "x"},
]
KEYS = ["run", "repa", "dataset"]


# -- results ---------------------------------------------------------------------------------------

def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [c.strip() for c in line[2:-2].split(" | ")]


def test_to_markdown():
    text = results.to_markdown(ROWS, KEYS)
    lines = text.rstrip("\n").split("\n")
    assert text.endswith("\n") and len(lines) == 2 + len(ROWS)
    labels = [label for _, label in results.METRIC_COLUMNS]
    assert _cells(lines[0]) == KEYS + labels
    assert lines[1] == "|" + "---|" * (len(KEYS) + len(labels))
    assert _cells(lines[2]) == ["repa", "True", "wiki", "98.76", "12.34", "5.00", "10.00", "80.00", "100.00"]
    assert _cells(lines[3]) == ["norepa", "False", "shakespeare", "", "0.00", "", "", "", "0.00"]
    assert "samples" not in text and "extra" not in text      # only key and metric columns


def test_to_markdown_missing_key_column_and_empty():
    text = results.to_markdown([{"rouge1": 0.5}], ["run", "arm"])
    assert _cells(text.splitlines()[2])[:3] == ["", "", ""]
    empty = results.to_markdown([], ["run"])
    assert len(empty.splitlines()) == 2


def test_to_csv_union_of_keys():
    text = results.to_csv(ROWS)
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["run", "repa", "dataset", "recon_acc", "rouge1", "rouge2", "rougeL", "bertscore",
                                 "mauve", "samples", "extra"]
    rows = list(reader)
    assert len(rows) == 2
    assert rows[0]["rouge1"] == "0.1234" and rows[0]["extra"] == ""
    assert rows[1]["extra"] == "x" and rows[1]["recon_acc"] == "" and rows[1]["repa"] == "False"
    assert float(rows[1]["mauve"]) == 0.00001       # full precision in CSV


def test_flatten():
    rows = results.flatten("run1", {"repa": True}, {"wiki": {"rouge1": 0.1}, "shk": {"rouge1": 0.2}})
    assert rows == [{"run": "run1", "repa": True, "dataset": "wiki", "rouge1": 0.1},
                    {"run": "run1", "repa": True, "dataset": "shk", "rouge1": 0.2}]


def test_write_tables(tmp_path):
    csv_path, md_path = results.write_tables(ROWS, KEYS, tmp_path / "out")
    assert csv_path == tmp_path / "out" / "results.csv" and md_path == tmp_path / "out" / "results.md"
    assert csv_path.read_bytes() == results.to_csv(ROWS).encode()     # csv's own \r\n line ends, kept as is
    assert md_path.read_bytes() == results.to_markdown(ROWS, KEYS).encode()
    c2, m2 = results.write_tables(ROWS[:1], KEYS, tmp_path / "out", stem="ablation")
    assert c2.name == "ablation.csv" and m2.name == "ablation.md"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ablation.csv", "ablation.md",
                                                                    "results.csv", "results.md"]


# -- CLI -------------------------------------------------------------------------------------------

@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start Ray fails the test."""
    import latentlm.platform.launch as launch

    def forbidden(*args, **kwargs):
        raise AssertionError("Ray must not be started for a config error")

    monkeypatch.setattr(launch, "init_ray", forbidden)
    try:
        import latentlm.platform.pipeline as pipeline
        monkeypatch.setattr(pipeline, "init_ray", forbidden)   # it holds its own reference
    except ImportError:
        pass
    import ray
    monkeypatch.setattr(ray, "init", forbidden)
    yield
    assert not ray.is_initialized()


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
    from latentlm.platform import assets

    def no_install(*args, **kwargs):
        raise AssertionError("`latentlm info` must not install or convert anything")

    class NoSubprocess:
        run = check_call = check_output = Popen = staticmethod(no_install)

    monkeypatch.setattr(assets, "subprocess", NoSubprocess)
    monkeypatch.setattr(assets, "_convert_teacher", no_install)
    monkeypatch.setattr(assets, "package_dir", lambda name: (assets._find_package_dir(assets._package(name))
                                                             or no_install()))
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "cache"))
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["cuda"] == torch.cuda.is_available()
    assert info["presets"] == ["paper", "small", "tiny"]
    assert info["cache"] == str(tmp_path / "cache")
    assert set(info["assets"]) == set(assets.PACKAGES)
    for name, entry in info["assets"].items():
        assert {"package", "version", "installed", "verified", "path", "cached"} <= set(entry), name
        assert entry["package"] == assets.PACKAGES[name].pip_name
        if not entry["installed"]:
            assert entry["path"] is None and entry["verified"] is False
    assert info["assets"]["smollm2"]["cached"] is None     # nothing converted into the fresh cache


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
