"""Two-node failure drill on one machine: a node dies mid-run, comes back, and the job finishes from its last
checkpoint with the loss trajectory of an uninterrupted run.

    python cluster/drill.py                                   # the tiny preset's VAE stage, embedded data
    python cluster/drill.py --config my.yaml --set train_vae.optim.steps=24 --work-dir /tmp/drill --keep

What it does, all on this machine (own temp dirs and ports; it never calls ``ray stop``, which would stop every
Ray process on the machine):

1. starts a Ray head and a second node (``ray start --head`` / ``ray start --address``, 1 CPU each, each in a
   process session of its own, so that the drill can tell their processes apart);
2. submits, with ``ray job submit`` and ``cluster/runtime_env.yaml`` (this repository is the uploaded working
   dir), a job that trains the TextLDM VAE stage twice with 2 Ray Train workers of 1 CPU each under DeepSpeed
   ZeRO-2, so that one worker lands on each node: first an uninterrupted reference run, then the drilled run
   (``FailureConfig(max_failures=1)``, a checkpoint every ``checkpoint_every`` steps). The job waits for both
   nodes first (``resources.min_nodes``);
3. once the drilled run has a checkpoint (its metrics log shows two steps past it, so Ray Train has registered
   it), SIGKILLs every process of the second node (raylet, agents, its training worker: a lost machine) and
   starts the node again with the same command. Ray Train sees the worker group fail, places a new one on the
   head and the new node, and the workers resume from the last checkpoint;
4. checks that the job succeeded, that each run's workers ran on both nodes (the killed node before the kill,
   the restarted node after it; every worker records its node id), that the drilled run resumed from a
   checkpoint (not from step 0) and that its per-step metrics and final weights equal the reference run's.
   The comparison is exact: both runs have the same config, world size, threads and hardware, and a resume
   restores weights, optimizer, LR schedule, RNG streams and data position (tests/test_resume.py), so nothing
   may differ, not even by rounding. (Across different machines, e.g. a restarted cloud node of another CPU or
   GPU type, expect agreement to rounding only: ``--atol``.)
5. stops both nodes (SIGTERM, then SIGKILL, only the processes of these two nodes) and checks that none is
   left; removes the temp dirs unless ``--keep``.

A node that never joins fails the job after ``resources.nodes_timeout_s`` with a one-line error naming
``resources.min_nodes`` (``latentlm.platform.training.nodes``); the drill then reports it and cleans up.
tests/test_cluster_drill.py runs the drill on the test suite's tiny corpus (``make test``). ``cluster/README.md``
says what a real cluster needs instead of one machine.

The job's entrypoint is this file too: ``python cluster/drill.py job --work-dir DIR`` (used by the drill).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# the logged metrics that must not change (throughput and data-wait fractions are wall-clock measurements)
COMPARED = ("loss", "recon", "kl", "repa", "accuracy", "grad_norm", "lr", "epoch")
TOKEN_COLUMNS = ["tokens", "length", "doc_id"]
# The drill's own settings (a user's --config / --set come on top, then FIXED).
DEFAULTS = {"vae": {"repa": {"enabled": False}},
            "data": {"max_documents": 400, "max_train_windows": 512, "vocab_limit": 2047},
            "train_vae": {"optim": {"steps": 24, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 4}},
            "resources": {"nodes_timeout_s": 120},
            "wandb": False}
# What makes it the drill: ZeRO-2, one 1-CPU worker per node, both nodes present before training starts, every
# step logged (compared, and watched for the kill).
FIXED = {"deepspeed": {"enabled": True, "zero_stage": 2}, "train_vae": {"optim": {"log_every": 1}},
         "resources": {"num_workers": 2, "cpus_per_worker": 1, "min_nodes": 2}}


class DrillError(RuntimeError):
    """The drill failed: the message says at which point and why."""


# -- processes ----------------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every live, non-zombie process."""
    table = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state, ppid, _, sid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if state != "Z" and int(entry) != os.getpid():
            table[int(entry)] = (int(ppid), int(sid), cmd)
    return table


def with_descendants(roots: set[int], table: dict[int, tuple[int, int, str]]) -> set[int]:
    found, grown = set(roots), True
    while grown:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        found |= children
        grown = bool(children)
    return found


def signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class RayNode:
    """One ``ray start`` (the head when ``head_address`` is None), confined to its own temp dir and ports.

    ``ray start`` runs in a new session, so every daemon it leaves behind carries that session's id; with the
    processes whose command line names the node's temp dir and all their descendants (the workers, the job
    driver) those are the node's processes, and only those are signalled."""
    temp_dir: Path
    env: dict[str, str]
    head_address: str | None = None
    num_cpus: int = 1
    ports: dict[str, int] = field(default_factory=dict)
    sessions: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        names = ["agent", "metrics"] + (["gcs", "dashboard", "client"] if self.head_address is None else [])
        self.ports = dict(zip(names, free_ports(len(names))))

    @property
    def address(self) -> str:
        return self.head_address or f"127.0.0.1:{self.ports['gcs']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    def command(self) -> list[str]:
        # every port a second cluster on the machine could hold is chosen here (the dashboard agent's default,
        # 52365, taken by another cluster: the head comes up but every job submission fails)
        cmd = [RAY, "start", f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={self.ports['agent']}",
               f"--metrics-export-port={self.ports['metrics']}"]
        if self.head_address:
            return cmd + [f"--address={self.head_address}"]
        return cmd + ["--head", f"--port={self.ports['gcs']}", "--dashboard-host=127.0.0.1",
                      f"--dashboard-port={self.ports['dashboard']}", f"--ray-client-server-port={self.ports['client']}"]

    def start(self, timeout_s: float = 180) -> None:
        proc = subprocess.Popen(self.command(), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self.sessions.append(proc.pid)  # a new session's id is its leader's pid
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise DrillError(f"`{' '.join(self.command())}` did not return within {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            self.stop()
            raise DrillError(f"`{' '.join(self.command())}` failed ({proc.returncode}):\n{out[-3000:]}")

    def pids(self) -> set[int]:
        table = process_table()
        own = re.compile(rf"{re.escape(str(self.temp_dir))}(/|\s|$)")
        roots = {pid for pid, (_, sid, cmd) in table.items() if sid in self.sessions or own.search(cmd)}
        return with_descendants(roots, table)

    def cpu_seconds(self) -> float:
        """CPU time of the node's live processes, with that of the children they reaped (a raylet's workers)."""
        total = 0
        for pid in self.pids():
            try:
                total += sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]))
            except (OSError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def kill(self, timeout_s: float = 30) -> int:
        """SIGKILL every process of the node at once (a machine that is lost); returns how many there were."""
        killed = set()
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            signal_all(pids, signal.SIGKILL)
            killed |= pids
            time.sleep(0.2)
        return len(killed)

    def stop(self) -> None:
        stop_nodes(self)


def stop_nodes(*nodes: RayNode, grace_s: float = 3, rounds: int = 4) -> None:
    """SIGTERM, then SIGKILL in rounds until none is left (a daemon may start a worker between the scan and the
    signal; gcs_server ignores SIGTERM for a long while), all the nodes' processes together."""
    for attempt in range(rounds):
        pids = set().union(*(node.pids() for node in nodes))
        if not pids:
            return
        signal_all(pids, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and pids & set(process_table()):
            time.sleep(0.2)


def own_cpu_seconds() -> float:
    """This process's CPU time and its waited-for children's (the ``ray start`` and ``ray job submit`` CLIs)."""
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What every Ray process of the drill's nodes (and so the job driver and its workers) inherits."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
           # no node is drained here (a SIGKILL is no drain): no preemption-watcher actor per training attempt
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
           "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib")),
           # the job's `python` is this one's, as on a node whose image carries latentlm
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}
    env.pop("RAY_ADDRESS", None)
    return env


# -- the drill ----------------------------------------------------------------------------------------

@dataclass
class DrillReport:
    seconds: dict[str, float]           # phase -> wall seconds
    kill_step: int                      # the drilled run's last logged step when its node was killed
    resumed_from: int                   # the checkpoint step it resumed from
    killed_processes: int
    cpu_seconds: float                  # of the nodes' processes (the job, its workers) and of the drill
    placement: dict[str, list[list[str]]]  # run -> attempt -> node ids of its ranks
    losses: list[float]                 # the drilled run's per-step losses (= the reference's)
    max_difference: float

    def summary(self) -> str:
        phases = ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items())
        return (f"drill passed: node killed at step {self.kill_step} ({self.killed_processes} processes), resumed "
                f"from the step-{self.resumed_from} checkpoint, {len(self.losses)} steps equal to the uninterrupted "
                f"run (max |difference| {self.max_difference:g}); {phases}; CPU {self.cpu_seconds:.0f} s")


def drill_config(overrides: dict) -> dict:
    from latentlm.platform.config import merge
    return merge(merge(DEFAULTS, overrides), FIXED)


def run_drill(overrides: dict, work_dir: Path, timeout_s: float = 600, atol: float = 0.0,
              temp_root: Path | None = None, keep: bool = False, log=print) -> DrillReport:
    """Run the drill (module docstring) with the TextLDM config ``overrides`` (on the ``tiny`` preset) in
    ``work_dir`` (config, data, runs). Raises DrillError saying what went wrong; stops every process it started
    either way."""
    import yaml
    from latentlm.platform.methods.textldm.config import build_config
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = drill_config(overrides)
    cfg = build_config("tiny", config)  # fails here, before any process starts, on a bad config
    (work_dir / "drill.yaml").write_text(yaml.safe_dump(config))
    # Ray's Unix sockets live under the temp dirs: short paths (107-byte limit), directly under /tmp
    root = Path(temp_root or tempfile.mkdtemp(prefix="drill", dir="/tmp"))
    env = node_env()
    head = RayNode(root / "head", env)
    node = RayNode(root / "node", env, head_address=head.address)
    seconds, clock, own_cpu = {}, [time.monotonic()], own_cpu_seconds()

    def phase(name: str, message: str) -> None:
        now = time.monotonic()
        seconds[name] = round(now - clock[-1], 1)
        clock.append(now)
        log(f"drill [{now - clock[0]:5.1f} s] {message}")

    try:
        head.start()
        node.start()
        phase("cluster up", f"head {head.address} (dashboard {head.dashboard}) and a second node are up")
        submit(head, work_dir)
        metrics = work_dir / "runs" / "drill" / "vae_metrics.jsonl"
        kill_at = cfg.train_vae.optim.checkpoint_every + 2  # step c+1's report returned: checkpoint c is registered
        kill_step = wait_for_step(head, metrics, kill_at, timeout_s)
        cpu = node.cpu_seconds()  # what the node's processes used before they were lost
        killed = node.kill()
        phase("to kill", f"killed the second node's {killed} processes after step {kill_step}")
        node.start()
        phase("node restart", "started the second node again")
        status = wait_for_job(head, timeout_s)
        phase("to finish", f"the job ended {status}")
        if status != "SUCCEEDED":
            raise DrillError(f"the job ended {status}: {job_error(head)}")
        cpu += head.cpu_seconds() + node.cpu_seconds()
        report = check(work_dir, cfg, kill_step, killed, atol, seconds, cpu + own_cpu_seconds() - own_cpu)
    finally:
        stop_nodes(node, head)
        left = sorted(node.pids() | head.pids())
        if not left and not keep:
            shutil.rmtree(root, ignore_errors=True)
        phase("stop", "stopped both nodes" + (f"; left running: {left}" if left else ""))
    if left:
        raise DrillError(f"processes of the drill's nodes survived the stop: {left}")
    seconds["total"] = round(clock[-1] - clock[0], 1)
    return report


def submit(head: RayNode, work_dir: Path, retry_s: float = 120) -> None:
    """``ray job submit`` of ``drill.py job`` with cluster/runtime_env.yaml; retried while the head's dashboard
    agent is still coming up ("No available agent to submit job")."""
    import yaml
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    cmd = [RAY, "job", "submit", "--address", head.dashboard, "--no-wait", "--submission-id", "drill",
           "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
           "python", "cluster/drill.py", "job", "--work-dir", str(work_dir)]
    deadline = time.monotonic() + retry_s
    while True:
        done = subprocess.run(cmd, env=head.env, capture_output=True, text=True, timeout=180, cwd=REPO)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline or "No available agent" not in done.stdout + done.stderr:
            raise DrillError(f"ray job submit failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        time.sleep(2)


def job_status(head: RayNode) -> str:
    from ray.job_submission import JobSubmissionClient
    return str(JobSubmissionClient(head.dashboard).get_job_status("drill").value)


def job_error(head: RayNode) -> str:
    """The job's error: the last line of its log that names one (e.g. resources.min_nodes' one-line error)."""
    from ray.job_submission import JobSubmissionClient
    logs = JobSubmissionClient(head.dashboard).get_job_logs("drill")
    errors = [line for line in logs.splitlines() if re.match(r"\w+(\.\w+)*(Error|Exception)\b", line)]
    return errors[-1] if errors else logs[-3000:]


def logged_steps(metrics: Path) -> list[int]:
    if not metrics.is_file():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]


def wait_for_step(head: RayNode, metrics: Path, step: int, timeout_s: float) -> int:
    """Wait until ``metrics`` logs ``step`` (polled every 50 ms: the run must not finish before the kill)."""
    deadline, last_status = time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline:
        steps = logged_steps(metrics)
        if steps and steps[-1] >= step:
            return steps[-1]
        if time.monotonic() - last_status > 2:
            last_status = time.monotonic()
            status = job_status(head)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                raise DrillError(f"the job ended {status} before the drilled run reached step {step}: "
                                 f"{job_error(head)}")
        time.sleep(0.05)
    raise DrillError(f"the drilled run did not reach step {step} within {timeout_s:.0f} s")


def wait_for_job(head: RayNode, timeout_s: float) -> str:
    deadline, status = time.monotonic() + timeout_s, "PENDING"
    while time.monotonic() < deadline:
        status = job_status(head)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    return status


def read_metrics(path: Path) -> dict[int, dict]:
    """Metrics by step; a step redone after a restart keeps its last line."""
    return {m["step"]: m for m in map(json.loads, path.read_text().splitlines())}


def check(work_dir: Path, cfg, kill_step: int, killed: int, atol: float, seconds: dict, cpu: float) -> DrillReport:
    """The drill's verdict on the finished job (module docstring, step 4)."""
    summary = json.loads((work_dir / "summary.json").read_text())
    placement = check_placement(work_dir, summary["nodes"])
    resumed_from = resumed_step(work_dir / "runs" / "drill" / "vae_metrics.jsonl", cfg.train_vae.optim.checkpoint_every)
    losses, worst = compare_runs(work_dir, summary["checkpoints"], cfg.train_vae.optim.steps, atol)
    return DrillReport(seconds, kill_step, resumed_from, killed, cpu, placement, losses, worst)


def check_placement(work_dir: Path, nodes: list[dict]) -> dict[str, list[list[str]]]:
    """run -> attempt -> node id of each rank, from the workers' records; every attempt must have run on the head
    and one other node, the drilled run's second attempt on the restarted node."""
    alive = {n["node_id"]: n["alive"] for n in nodes}
    head = next(n["node_id"] for n in nodes if n["head"])
    placement = {}
    for run in ("reference", "drill"):
        attempts: dict[bool, list[dict]] = {}
        for worker in map(json.loads, (work_dir / "runs" / run / "workers.jsonl").read_text().splitlines()):
            attempts.setdefault(worker["resumed"], []).append(worker)
        placement[run] = [[w["node_id"] for w in sorted(ws, key=lambda w: w["rank"])]
                          for _, ws in sorted(attempts.items())]
        for ranks in placement[run]:
            if len(ranks) != 2 or head not in ranks or len(set(ranks)) != 2:
                raise DrillError(f"{run}: the workers of an attempt ran on nodes {ranks}, not on the head ({head}) "
                                 f"and the second node")
    if len(placement["reference"]) != 1 or len(placement["drill"]) != 2:
        raise DrillError(f"expected one attempt of the reference run and two of the drilled run (before and after "
                         f"the kill), got {placement}")
    before, after = ({i for i in ranks if i != head} for ranks in placement["drill"])
    if before == after or any(alive[i] for i in before) or not all(alive[i] for i in after):
        raise DrillError(f"the drilled run resumed on node {after}, not on the restarted node (killed: {before})")
    return placement


def resumed_step(metrics: Path, every: int) -> int:
    """The checkpoint step the drilled run resumed from: where its logged steps start over."""
    steps = logged_steps(metrics)
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    if restart is None:
        raise DrillError(f"the drilled run logged steps {steps}: no restart (the run finished before the kill?)")
    step = steps[restart] - 1
    if step < every or step % every:
        raise DrillError(f"the drilled run resumed at step {step + 1}, not after a checkpoint (every {every} steps)")
    return step


def compare_runs(work_dir: Path, checkpoints: dict[str, str], total: int, atol: float) -> tuple[list[float], float]:
    """The drilled run's per-step metrics and final weights against the reference run's; returns the drilled
    run's losses and the largest difference found."""
    from latentlm.models.checkpoint import load_tensors
    ref, got = (read_metrics(work_dir / "runs" / run / "vae_metrics.jsonl") for run in ("reference", "drill"))
    if sorted(ref) != sorted(got) or sorted(got) != list(range(1, total + 1)):
        raise DrillError(f"logged steps differ: reference {sorted(ref)}, drilled {sorted(got)}")
    worst = 0.0
    for step in range(1, total + 1):
        for key in (k for k in COMPARED if k in ref[step]):
            a, b = ref[step][key], got[step].get(key)
            difference = abs(a - b) if isinstance(a, float) and isinstance(b, float) else (0.0 if a == b else math.inf)
            worst = max(worst, difference)
            if difference > atol:
                raise DrillError(f"step {step}: {key} {b!r} after the drill, {a!r} uninterrupted (atol {atol:g})")
    ref_weights, weights = (load_tensors(Path(checkpoints[run]) / "vae.safetensors") for run in ("reference", "drill"))
    for name, tensor in ref_weights.items():
        difference = float((weights[name] - tensor).abs().max())
        worst = max(worst, difference)
        if difference > atol:
            raise DrillError(f"final weights differ: {name} by {difference:g} (atol {atol:g})")
    return [got[s]["loss"] for s in range(1, total + 1)], worst


# -- the job (runs on the cluster) ---------------------------------------------------------------------

def recording_loop(config: dict) -> None:
    """The VAE stage's Ray Train loop, after recording where this worker runs (rank, node id, whether it
    resumes from a checkpoint) to ``<run_dir>/workers.jsonl``."""
    import ray
    import ray.train
    from latentlm.platform.methods.textldm.train_vae import train_vae_loop
    record = {"rank": ray.train.get_context().get_world_rank(), "node_id": ray.get_runtime_context().get_node_id(),
              "resumed": ray.train.get_checkpoint() is not None, "pid": os.getpid(), "time": time.time()}
    with open(Path(config["run_dir"]) / "workers.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    train_vae_loop(config)


def job_main(argv: list[str]) -> int:
    """The job: wait for both nodes, tokenize, train the reference run, then the drilled run (which the drill
    interrupts), and write ``summary.json`` (final checkpoints, the cluster's nodes)."""
    import logging
    import yaml
    from latentlm.models.checkpoint import atomic_write_text
    from latentlm.platform.config import to_dict
    from latentlm.platform.data.windows import prepare_data
    from latentlm.platform.methods.textldm.config import build_config
    from latentlm.platform.training.launch import init_ray, run_stage, training_dataset
    parser = argparse.ArgumentParser(prog="drill.py job")
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work_dir = Path(args.work_dir)
    cfg = build_config("tiny", yaml.safe_load((work_dir / "drill.yaml").read_text()))
    init_ray(resources=cfg.resources)  # resources.min_nodes: both nodes, or a one-line error after the wait
    import ray
    artifacts = prepare_data(cfg, work_dir, need_teacher=False)
    cfg.vae.vocab_size = artifacts.vocab_size
    dataset = training_dataset(artifacts.vae_train, TOKEN_COLUMNS, cfg.data.materialize_max_mb, artifacts.vae_windows)
    checkpoints = {}
    for run, max_failures in (("reference", 0), ("drill", 1)):
        run_dir = work_dir / "runs" / run
        run_dir.mkdir(parents=True, exist_ok=True)
        loop_config = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": f"drill-{run}",
                       "trial": run, "vocab": artifacts.vocab, "teacher_dim": None}
        checkpoints[run] = run_stage(recording_loop, loop_config, dataset, "vae", run_dir / "ray", cfg.resources,
                                     max_failures=max_failures)
    nodes = [{"node_id": n["NodeID"], "alive": n["Alive"], "head": "node:__internal_head__" in n["Resources"]}
             for n in ray.nodes()]
    atomic_write_text(work_dir / "summary.json", json.dumps({"checkpoints": checkpoints, "nodes": nodes}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["job"]:
        return job_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TextLDM config overrides (YAML) on the tiny preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override")
    parser.add_argument("--work-dir", help="config, data and runs (default: a temporary directory, removed)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for each wait (default 600)")
    parser.add_argument("--atol", type=float, default=0.0, help="allowed |difference| per metric (default: exact)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and the nodes' temp dirs")
    args = parser.parse_args(argv)
    from latentlm.models.config import ConfigError
    from latentlm.platform.config import load_file, merge, parse_overrides
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="drill-work-"))
    try:
        overrides = merge(load_file(args.config) if args.config else {}, parse_overrides(args.set))
        report = run_drill(overrides, work, args.timeout, args.atol, keep=args.keep)
    except ConfigError as err:
        print(f"drill: config error: {err}", file=sys.stderr)
        return 2
    except DrillError as err:
        print(f"drill failed: {err}", file=sys.stderr)
        return 1
    finally:
        if not args.work_dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
