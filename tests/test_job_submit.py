"""`ray job submit` of the main job against a real local Ray head (what a cluster user does).

Starts `ray start --head` in its own temp dir with its own ports, submits
`python experiments/ablate_repa.py --preset tiny` with this repo as the uploaded working dir and
cluster/runtime_env.yaml's settings, waits for SUCCEEDED and checks the result rows.

Stopping the head: `ray stop` has no per-cluster scope (it kills every Ray process on the machine,
including other people's test clusters), so it is never called here. `LocalHead.stop` instead finds the
processes of *this* head and only those: `ray start` runs in a new session, so every daemon it leaves
behind carries that session id; to that it adds the processes whose command line names this head's temp
dir (gcs_server, raylet, dashboard, monitor, log monitor: `--temp-dir=<tmp>` / `<tmp>/session_...`) or its
GCS address (the Ray client server: `--address=<ip>:<gcs port>`), and all their descendants (workers,
agents, the job driver, whose command lines Ray rewrites to `ray::...`). It sends them SIGTERM, waits, and
SIGKILLs what is left (gcs_server ignores SIGTERM for a long while), rescanning each round for processes
started meanwhile. The new session also keeps the
daemons out of pytest's process group: without it, a signal Ray sends to its group on shutdown reaches
pytest as a KeyboardInterrupt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).with_name("ray"))
JOB_TIMEOUT_S = 600


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) for every live process we can read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":  # zombies are gone already, only not reaped yet
            out[int(entry)] = (int(fields[1]), int(fields[4]), cmd)
    return out


class LocalHead:
    """A `ray start --head` confined to one temp dir and freshly picked ports, stoppable on its own."""

    def __init__(self, temp_dir: Path, num_cpus: int = 2, env: dict[str, str] | None = None):
        self.temp_dir = Path(temp_dir)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        (self.gcs_port, self.dashboard_port, self.agent_port, self.client_port,
         self.metrics_port) = _free_ports(5)
        self.num_cpus = num_cpus
        # Every Ray process of the head (and so the job driver and its workers) inherits this environment.
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.session_id: int | None = None

    def start(self, attempts: int = 2) -> None:
        """``ray start --head``; on a loaded machine the raylet can miss Ray's node-registration timeout ("The
        current node timed out during startup"), so a failed start is cleaned up and tried once more."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except AssertionError:
                self.stop()
                if attempt == attempts - 1:
                    raise

    def _start_once(self) -> None:
        # The fixed default ports (dashboard 8265, dashboard agent 52365, Ray client 10001) collide with
        # other Ray clusters on a shared machine: with the agent port taken, the head comes up but every
        # submission fails with "No available agent to submit job". So every fixed port is chosen here.
        cmd = [RAY, "start", "--head", f"--num-cpus={self.num_cpus}", f"--port={self.gcs_port}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--dashboard-agent-listen-port={self.agent_port}", f"--ray-client-server-port={self.client_port}",
               f"--metrics-export-port={self.metrics_port}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats"]
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.session_id = proc.pid  # the new session's id is its leader's pid, `ray start` itself
        stdout, stderr = proc.communicate(timeout=180)
        done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        if done.returncode != 0:
            raise AssertionError(f"ray start failed:\n{done.stdout}\n{done.stderr}")

    def ray(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=check, cwd=REPO)

    def submit(self, runtime_env: dict, entrypoint: list[str], submission_id: str, ready_timeout: float = 120) -> None:
        """Submit without waiting; retry while the head's dashboard agent is still coming up."""
        args = ["job", "submit", "--address", self.dashboard, "--no-wait", "--submission-id", submission_id,
                "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
        deadline = time.time() + ready_timeout
        while True:
            done = self.ray(*args, timeout=180)
            if done.returncode == 0:
                return
            if time.time() > deadline or "No available agent" not in done.stdout + done.stderr:
                raise AssertionError(f"ray job submit failed:\n{done.stdout}\n{done.stderr}")
            time.sleep(3)

    def wait(self, submission_id: str, timeout: float) -> str:
        """Poll the job's status through the SDK (the CLI's `ray job status` output is meant for humans)."""
        from ray.job_submission import JobSubmissionClient
        client = JobSubmissionClient(self.dashboard)
        deadline, status = time.time() + timeout, "UNKNOWN"
        while time.time() < deadline:
            status = str(client.get_job_status(submission_id).value)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(3)
        return status

    def logs(self, submission_id: str) -> str:
        out = self.ray("job", "logs", "--address", self.dashboard, submission_id)
        return out.stdout + out.stderr

    def pids(self) -> set[int]:
        procs = _processes()
        own = re.compile(rf"(--temp-dir={re.escape(str(self.temp_dir))}(\s|$)|{re.escape(str(self.temp_dir))}/session_"
                         rf"|address=[\w.\-]+:{self.gcs_port}(\s|$))")
        mine = {pid for pid, (_, sid, cmd) in procs.items() if sid == self.session_id or own.search(cmd)}
        grown = True
        while grown:
            children = {pid for pid, (ppid, _, _) in procs.items() if ppid in mine and pid not in mine}
            mine |= children
            grown = bool(children)
        return mine

    def stop(self, grace_s: float = 15, rounds: int = 5) -> None:
        """SIGTERM, then SIGKILL in rounds until none is left: a daemon may spawn a process (a worker, an agent)
        between the scan and the signal, and a SIGKILLed process stays visible until the kernel reaps it."""
        for attempt in range(rounds):
            pids = self.pids()
            if not pids:
                return
            sig = signal.SIGTERM if attempt == 0 else signal.SIGKILL
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + grace_s
            while time.time() < deadline and any(_alive(pid) for pid in pids):
                time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _result_rows(run_dir: Path) -> list[dict]:
    """The sweep's leaderboard: one row per trial x dataset at <run-dir>/<sweep name>/leaderboard.parquet."""
    import pyarrow.parquet as pq
    boards = sorted(run_dir.glob("*/leaderboard.parquet"))
    assert len(boards) == 1, boards
    return pq.read_table(boards[0]).to_pylist()


def test_ray_job_submit_runs_the_main_job(cfg_sweep, tmp_path):
    """The job finds the REPA-on stages trained (the CFG sweep's stage records: same config) and trains REPA-off."""
    t0 = time.time()
    _, cfg_path, trained = cfg_sweep
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "artifacts", run_dir / "artifacts")
    # The same runtime_env a user submits with (cluster/runtime_env.yaml); the working dir is this repo.
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    # Caches go where `make` puts them, not to ~/.cache; set on the head (not in the runtime_env: init_ray
    # forwards TORCH_EXTENSIONS_DIR itself, and Ray refuses a job whose runtime_env names it too).
    node_env = {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
                "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib")),
                # the job's `python` is this environment's, as on a cluster node whose image carries latentlm
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # A short temp dir of its own: Ray's Unix sockets live under it and pytest's tmp_path is too long for
    # the 107-byte socket path limit. LATENTLM_TEST_HEAD_CPUS only exists to diagnose CPU deadlocks.
    head = LocalHead(Path(tempfile.mkdtemp(prefix="rjs", dir="/tmp")),
                     num_cpus=int(os.environ.get("LATENTLM_TEST_HEAD_CPUS", "2")), env=node_env)
    try:
        head.start()
        t_up = time.time()
        # 1. Where does the job import latentlm from? The uploaded copy, on the driver and on a worker (the
        #    venv's editable install points at this checkout and would hide a broken runtime_env).
        probe = ("import os, ray, latentlm.platform.config as c\n"
                 "from latentlm.platform.training.launch import init_ray\n"
                 "init_ray()\n"
                 "f = ray.remote(num_cpus=0)(lambda: __import__('latentlm.models.dit').models.dit.__file__)\n"
                 "print('LATENTLM', c.__file__, ray.get(f.remote()), flush=True)\n")
        head.submit(runtime_env, ["python", "-c", probe], "probe")
        status, probe_logs = head.wait("probe", 180), head.logs("probe")
        assert status == "SUCCEEDED", probe_logs
        driver_file, worker_file = re.search(r"LATENTLM (\S+) (\S+)", probe_logs).groups()
        for path in (driver_file, worker_file):
            assert "working_dir_files" in path and not path.startswith(str(REPO)), probe_logs
        t_probe = time.time()

        # 2. The main job, on the tiny test assets (absolute paths: the job's cwd is the unpacked upload).
        head.submit(runtime_env, ["python", "experiments/ablate_repa.py", "--preset", "tiny",
                                  "--config", str(cfg_path), "--run-dir", str(run_dir)], "ablate")
        status = head.wait("ablate", JOB_TIMEOUT_S)
        if status != "SUCCEEDED":
            cluster_file = head.temp_dir / "ray_current_cluster"
            state = head.ray("status", "--address", cluster_file.read_text().strip()).stdout \
                if cluster_file.exists() else "?"  # shows pending resource demands (a CPU deadlock)
            raise AssertionError(f"job ended {status}\n--- ray status:\n{state}\n--- ray job logs:\n"
                                 f"{head.logs('ablate')[-20000:]}")
        t_job = time.time()
    finally:
        head.stop()
        leftover = head.pids()
        if not leftover:
            shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert not leftover, f"processes of the local head survived: {sorted(leftover)}"

    rows = _result_rows(run_dir)
    humans = [row for row in rows if row["method"] == "human"]
    floors = {row["trial"] for row in rows if row["method"] == "floor"}
    rows = [row for row in rows if row["method"] == "textldm"]
    assert len(floors) == 4, floors  # the must-lose rows land beside the ceiling
    assert humans and {h["protocol_hash"] for h in humans} == {row["protocol_hash"] for row in rows}  # the ceiling
    assert {"trial", "dataset", "axes", "rouge1", "mauve"} <= set(rows[0]), sorted(rows[0])
    axes = [json.loads(row["axes"]) for row in rows]
    assert {a.get("vae.repa.enabled") for a in axes} == {False, True}, axes  # REPA off and on
    assert len({row["trial"] for row in rows}) == len(rows), rows  # one dataset: one row per trial
    assert {row["dataset"] for row in rows} == set(yaml.safe_load(cfg_path.read_text())["eval"]["datasets"]), rows
    # REPA on scores the CFG sweep's model; REPA off was trained by the job, on the cluster
    import pyarrow.parquet as pq
    cfg_board = pq.read_table(trained / "cfg" / "leaderboard.parquet").to_pylist()
    on = {row["checkpoint"] for row, a in zip(rows, axes) if a["vae.repa.enabled"]}
    assert on == {row["checkpoint"] for row in cfg_board if row["method"] == "textldm"}, on
    records = sorted(p.name.split("-")[0] for p in (run_dir / "artifacts").glob("*.json"))
    assert records == ["dit", "dit", "vae", "vae"], records
    for row in rows:
        for key in ("rouge1", "mauve"):
            assert 0.0 <= float(row[key]) <= 1.0, (key, row)
    print(f"\nleaderboard: {len(rows)} rows; head up {t_up - t0:.0f}s, probe job {t_probe - t_up:.0f}s, "
          f"ablate job {t_job - t_probe:.0f}s, total {time.time() - t0:.0f}s")
