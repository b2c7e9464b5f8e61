"""cluster/: the manifests parse, name files that exist, agree with each other and with the code.

Fast and offline: nothing here starts Ray or talks to a cloud (tests/test_job_submit.py submits a real job).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
AWS, RAYJOB, RUNTIME_ENV, README = (CLUSTER / n for n in ("aws.yaml", "rayjob.yaml", "runtime_env.yaml", "README.md"))
DOCKERFILE = CLUSTER / "Dockerfile"
REQUIRED_EXCLUDES = {".venv", ".cache", "runs", ".git", "wandb"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, [d.get("kind") for d in docs]
    return jobs[0]


def pod_specs(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def test_every_manifest_parses():
    manifests = sorted(CLUSTER.glob("*.yaml"))
    assert {p.name for p in manifests} >= {"aws.yaml", "rayjob.yaml", "runtime_env.yaml"}
    for path in manifests:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


# --- cluster launcher (AWS) ---------------------------------------------------------------------------

def test_aws_launcher_config_is_complete():
    cfg = load(AWS)
    assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(cfg)
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu_types = {t["node_config"]["InstanceType"].split(".")[0] for t in workers.values()}
    assert gpu_types & {"g5", "g6", "p4d", "p5"}, gpu_types
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    assert cfg["idle_timeout_minutes"] > 0
    commands = " ".join(cfg["setup_commands"])
    assert "pip install" in commands and "-e ~/latentlm" in commands


def test_aws_launcher_config_passes_rays_own_validation():
    """What `ray up` does before touching AWS: fill in the provider's defaults, check the JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(load(AWS)))


def test_aws_file_mounts_exist_and_carry_the_package():
    cfg = load(AWS)
    mounts = cfg["file_mounts"]
    assert mounts
    for remote, local in mounts.items():
        assert (REPO / local).exists(), f"file_mounts {remote}: {local} is not in the repository"
    # `pip install -e ~/latentlm` needs pyproject.toml, its readme and the package directories it maps.
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"],
              *project["tool"]["setuptools"]["package-dir"].values()]
    installed_from = [local for remote, local in mounts.items() if remote.rstrip("/") == "~/latentlm"]
    assert installed_from, mounts
    root = (REPO / installed_from[0]).resolve()
    for rel in needed:
        assert (root / rel).exists(), rel
    for heavy in REQUIRED_EXCLUDES:
        assert heavy in cfg["rsync_exclude"], heavy


# --- KubeRay RayJob ----------------------------------------------------------------------------------

def test_rayjob_manifest_shape():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["entrypoint"].split()[:2] == ["python", "experiments/ablate_repa.py"]
    assert "--preset small" in spec["entrypoint"]
    import ray
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    specs = pod_specs(job)
    assert "head" in specs and len(specs) >= 2
    images = set()
    for name, pod in specs.items():
        (container,) = pod["containers"]
        images.add(container["image"])
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests), name
        assert requests.get("nvidia.com/gpu") == limits.get("nvidia.com/gpu"), name
    assert len(images) == 1, images
    gpu_groups = [n for n, p in specs.items() if n != "head" and "nvidia.com/gpu" in p["containers"][0]["resources"]["limits"]]
    assert gpu_groups


def test_rayjob_volumes_claims_exist_in_the_manifest():
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for name, pod in pod_specs(rayjob()).items():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in pod["containers"][0].get("volumeMounts", []):
            assert mount["name"] in volumes, (name, mount)
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, (name, v)


def test_rayjob_entrypoint_is_a_real_script_accepting_its_flags():
    entrypoint = shlex.split(rayjob()["spec"]["entrypoint"])
    assert entrypoint[0] == "python"
    script = REPO / entrypoint[1]
    assert script.is_file(), script
    flags = {arg.split("=", 1)[0] for arg in entrypoint[2:] if arg.startswith("--")}
    assert flags
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in flags:
        assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", done.stdout), f"{script.name} --help lacks {flag}"
    # The run dir must be absolute on a cluster: a relative one lands in the job's unpacked working dir.
    run_dir = entrypoint[entrypoint.index("--run-dir") + 1]
    assert run_dir.startswith("/"), run_dir
    mounts = {m["mountPath"] for p in pod_specs(rayjob()).values() for m in p["containers"][0].get("volumeMounts", [])}
    assert any(run_dir == m or run_dir.startswith(m.rstrip("/") + "/") for m in mounts), (run_dir, mounts)


def test_rayjob_runtime_env_matches_runtime_env_yaml():
    job_env = yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"])
    working_dir = job_env.pop("working_dir")
    assert working_dir.startswith("/") or "://" in working_dir, working_dir
    assert job_env == load(RUNTIME_ENV)


# --- runtime_env -----------------------------------------------------------------------------------

def test_runtime_env_keeps_the_upload_small():
    env = load(RUNTIME_ENV)
    assert REQUIRED_EXCLUDES <= set(env["excludes"])
    # A runtime_env pip install runs in an empty scratch dir, so "-e ." would not find the repository.
    assert "pip" not in env and "uv" not in env and "conda" not in env


def test_runtime_env_upload_excludes_the_venv(tmp_path):
    """Zip the working dir the way `ray job submit` does; nothing excluded may be in it. .gitignore is
    ignored here on purpose: the excludes must suffice on their own (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1)."""
    import zipfile
    from ray._private.runtime_env.packaging import create_package
    env = load(RUNTIME_ENV)
    package = tmp_path / "wd.zip"
    create_package(str(REPO), package, include_gitignore=False, excludes=env["excludes"])
    names = zipfile.ZipFile(package).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert not tops & REQUIRED_EXCLUDES, sorted(tops & REQUIRED_EXCLUDES)
    assert {"experiments", "platform", "models", "cluster", "pyproject.toml"} <= tops
    assert not [n for n in names if "/__pycache__/" in n or n.startswith("__pycache__/")]
    assert package.stat().st_size < 20 * 2**20, package.stat().st_size


def test_init_ray_under_a_job_forwards_only_variables_the_job_does_not_set(monkeypatch):
    """Ray refuses to merge a driver's runtime_env with the job's when both name the same variable
    ("Failed to merge the Job's runtime env"), even with equal values: init_ray must leave those out."""
    import ray
    from latentlm.platform.training import launch
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    for key in launch.RAY_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    job_env = {**load(RUNTIME_ENV).get("env_vars", {}), "HF_HUB_OFFLINE": "0"}
    for key, value in job_env.items():
        monkeypatch.setenv(key, str(value))  # inside a job the driver's environment carries them
    launch.init_ray()
    forwarded = calls[0]["runtime_env"]["env_vars"]
    assert not set(forwarded) & set(job_env) and "WANDB_MODE" in forwarded
    assert os.environ["HF_HUB_OFFLINE"] == "0"  # the job's value wins


def test_only_a_local_cluster_turns_off_the_preemption_watcher_and_polls_workers_often(monkeypatch):
    """One machine never drains a node, so the local cluster init_ray starts runs no preemption-watcher actor per
    stage; a cluster (RAY_ADDRESS) keeps Ray's default, and a value the user sets wins."""
    import ray
    from latentlm.platform.training import launch
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    for key in (*launch.RAY_ENV_DEFAULTS, "RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"):
        monkeypatch.setenv(key, "")  # recorded, so what init_ray sets is undone after the test
        monkeypatch.delenv(key)
    launch.init_ray(num_cpus=1)
    assert calls[-1]["runtime_env"]["env_vars"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"  # read by the controller TorchTrainer starts
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.02"  # few workers on one machine: poll often
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    launch.init_ray(num_cpus=1)
    assert calls[-1]["runtime_env"]["env_vars"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
    for key in ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    launch.init_ray()
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in calls[-1]["runtime_env"]["env_vars"]
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"  # a cluster's many workers: Ray's cost per poll


def test_runtime_env_pythonpath_imports_the_uploaded_copy(tmp_path):
    """PYTHONPATH=cluster/pythonpath makes latentlm importable from a bare copy of the repo (as unpacked by
    Ray), ahead of any installed latentlm; the stdlib's `platform` stays the stdlib's."""
    entries = load(RUNTIME_ENV)["env_vars"]["PYTHONPATH"].split(os.pathsep)
    for entry in entries:
        assert not entry.startswith("/") and (REPO / entry / "latentlm" / "__init__.py").is_file(), entry
    copy = tmp_path / "_ray_pkg_copy"
    for name in ("platform", "models", "cluster"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import os, platform; os.chdir('/'); import latentlm.platform.config as c, latentlm.models.config as m; "
            "platform.system(); print(c.__file__); print(m.__file__); print(platform.__file__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(entries)}
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config_file, models_file, stdlib_platform = done.stdout.split()
    assert Path(config_file) == copy / "platform" / "config.py"
    assert Path(models_file) == copy / "models" / "config.py"
    assert not stdlib_platform.startswith(str(copy)), stdlib_platform  # not shadowed by the repo's platform/


# --- consistency across files ------------------------------------------------------------------------

def cluster_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(CLUSTER.iterdir()) if p.is_file()}


def test_every_referenced_script_and_cluster_file_exists():
    pattern = re.compile(r"\b((?:experiments|cluster)/[\w./-]*\w)")
    found = set()
    for name, text in cluster_texts().items():
        for ref in pattern.findall(text):
            found.add(ref)
            assert (REPO / ref).exists(), f"{name} refers to {ref}, which does not exist"
    assert "experiments/ablate_repa.py" in found and "cluster/runtime_env.yaml" in found


def test_readme_mentions_each_file():
    text = README.read_text()
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file() and path != README and "__pycache__" not in path.parts:
            assert path.name in text, f"cluster/README.md does not mention {path.relative_to(CLUSTER)}"
    for command in ("ray up", "ray job submit", "kubectl apply", "WANDB_API_KEY", "--preset paper"):
        assert command in text, command


def test_versions_and_asset_pins_agree():
    import ray
    from latentlm.platform.data.assets import PACKAGES
    aws, docker = load(AWS), DOCKERFILE.read_text()
    images = [aws["docker"]["image"], *re.findall(r"^FROM\s+(\S+)", docker, re.M)]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-"), image
    pins = {f"{p.pip_name}=={p.version}" for p in PACKAGES.values()}
    for where, text in (("aws.yaml setup_commands", " ".join(aws["setup_commands"])), ("Dockerfile", docker)):
        assert pins <= set(text.split()), (where, pins - set(text.split()))


def test_cluster_nodes_enable_hub_access():
    """The platform defaults to offline; a cluster running `--preset paper` needs the hub. It is switched on
    on the nodes so every Ray process (not only job drivers) inherits it."""
    aws = load(AWS)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = " ".join(aws[key])
        assert "HF_HUB_OFFLINE=0" in commands and "TRANSFORMERS_OFFLINE=0" in commands, key
    for name, pod in pod_specs(rayjob()).items():
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env.get("HF_HUB_OFFLINE") == "0" and env.get("TRANSFORMERS_OFFLINE") == "0", name
        assert "WANDB_API_KEY" in env, name
    assert re.search(r"^ENV .*HF_HUB_OFFLINE=0", DOCKERFILE.read_text(), re.M)
