"""Ray Tune ablation sweeps: a declarative grid over config fields, validated before any trial starts.

Each trial is a Tune function that runs the method's pipeline (its training stages are TorchTrainer
jobs). Trials share upstream artifacts through the pipeline's content-addressed stage cache: one VAE
per VAE config, one DiT per (VAE, DiT) config, kept in ``<run-dir>/artifacts`` for every sweep under that
run dir, so evaluation-only axes (CFG scale, sampler steps) train nothing. Every evaluated trial lands in
``<run-dir>/<sweep>/leaderboard.parquet``, written by the driver alone: trials report their rows through Tune
(``report_rows``), so no node takes a lock on the file. Re-running the same sweep restores it with
``Tuner.restore``: finished trials are kept, unfinished ones run; a changed grid is a new Tune experiment
(``experiment_name``). ``--run-dir`` may be an object-store URI (``s3://bucket/runs``): trials on any node share
the run dir through it (``storage.py``), Tune keeps the experiment there, and the driver publishes the
leaderboard there.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from latentlm.models.checkpoint import write_json
from latentlm.models.config import ConfigError, require

from . import registry, storage
from .config import load_file, merge, parse_overrides, to_dict

log = logging.getLogger(__name__)
# Tune's TensorBoard logger renames every "dataset:metric" key with a warning line (dozens per trial)
logging.getLogger("tensorboardX.summary").setLevel(logging.ERROR)


# Every registered family by name (a live, read-only view of the registry).
METHODS = registry.methods()


@dataclass
class SweepSpec:
    name: str
    method: str = "textldm"
    preset: str = "tiny"
    axes: dict[str, list[Any]] = field(default_factory=dict)    # dotted config path -> values (grid)
    overrides: dict[str, Any] = field(default_factory=dict)     # applied to every trial
    max_concurrent_trials: int = 1
    run_dir: str = "runs"
    baseline: bool = False   # add the method's registered matched baseline (match <method>:<preset>) as a trial


@dataclass
class Trial:
    trial_id: str
    axes: dict[str, Any]
    overrides: dict[str, Any]
    method: str | None = None   # None: the sweep's method (the AR baseline trial names its own)


def baseline_trial(spec: SweepSpec) -> Trial:
    """The sweep method's matched baseline (the family registered with it in ``baseline_of``: the AR GPT), sized
    and budgeted against the sweep method's preset, on the same data and eval sections (the sweep's own ``data``
    / ``eval`` overrides included), so its rows share the protocol hash of the trials with default eval settings
    and rank in their tables."""
    baseline = registry.baseline_for(spec.method)
    matchable = [name for name in registry.names() if registry.baseline_for(name)]
    require(baseline is not None, "sweep.baseline",
            f"a sweep over {' or '.join(matchable)} (the methods a registered baseline is matched to)", spec.method)
    overrides = {"match": f"{spec.method}:{spec.preset}",
                 **{k: spec.overrides[k] for k in ("data", "eval", "seed") if k in spec.overrides}}
    trial = f"baseline:{baseline.name}"
    try:
        baseline.build(spec.preset, overrides)
    except ConfigError as err:
        raise ConfigError(f"sweep trial {trial}: {err}") from None
    return Trial(trial, {}, overrides, baseline.name)


def field_type(cls: type, path: str, spec_field: str) -> Any:
    """Walk dataclass fields along ``path``; ConfigError naming the axis if the method has no such field."""
    tp: Any = cls
    for part in path.split("."):
        fields = {f.name: f for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else {}
        if part not in fields:
            raise ConfigError(f"{spec_field}: the {cls.__name__} config has no field {path!r} "
                              f"(no {part!r} in {getattr(tp, '__name__', tp)})")
        tp = typing.get_type_hints(tp)[part]
    return tp


def nested(path: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def trial_id(axes: dict[str, Any]) -> str:
    """A readable, filesystem-safe name: ``repa.enabled=True,repa.layer=-3``."""
    def short(v):
        if isinstance(v, dict):
            return "_".join(short(x) for x in v.values())
        return "_".join(map(short, v)) if isinstance(v, list) else str(v)
    parts = [f"{'.'.join(k.split('.')[-2:])}={short(v)}" for k, v in axes.items()]
    text = ",".join(parts) or "base"
    return "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in text)[:120]


def effective(config: dict[str, Any], method: str = "textldm") -> dict[str, Any]:
    """Knobs that cannot act are reset to their defaults, so e.g. REPA-off trials that differ only in
    the (unused) REPA layer collapse into one trial."""
    return registry.get(method).effective(json.loads(json.dumps(config)))


def plan_trials(spec: SweepSpec) -> list[Trial]:
    """Validate the spec and expand the grid into distinct trials. Raises ConfigError naming the field."""
    require(spec.method in registry.methods(), "sweep.method", f"one of {sorted(registry.names())}", spec.method)
    require(bool(spec.name) and "/" not in spec.name, "sweep.name", "a non-empty name without '/'", spec.name)
    require(spec.max_concurrent_trials >= 1, "sweep.max_concurrent_trials", ">= 1", spec.max_concurrent_trials)
    method = registry.get(spec.method)
    builder, config_cls = method.build, method.config_cls
    for axis, values in spec.axes.items():
        field_type(config_cls, axis, f"sweep.axes.{axis}")
        require(isinstance(values, list) and len(values) > 0, f"sweep.axes.{axis}", "a non-empty list of values",
                values)
    trials, seen = [], set()
    names = list(spec.axes)
    for combo in itertools.product(*(spec.axes[a] for a in names)):
        axes = dict(zip(names, combo))
        overrides = spec.overrides
        for axis, value in axes.items():
            overrides = merge(overrides, nested(axis, value))
        try:
            config = builder(spec.preset, overrides)
        except ConfigError as err:
            raise ConfigError(f"sweep trial {trial_id(axes)}: {err}") from None
        fingerprint = json.dumps(effective(to_dict(config), spec.method), sort_keys=True, default=str)
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        trials.append(Trial(trial_id(axes), axes, overrides))
    if spec.baseline:
        trials.append(baseline_trial(spec))
    return trials


def result_identity(cfg) -> dict[str, Any]:
    """The config fields that can change a trial's numbers: where it ran, on how many workers and with
    which tracking do not, so the same trial from another machine or sweep maps to the same row."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("name", "run_dir", "resources", "wandb")}


def add_rows(path: Path, method: str, sweep: str, trial: str, axes: dict, cfg, out: dict,
             compute_seconds: float | None) -> None:
    """Merge ``trial_rows`` into the leaderboard file at ``path`` (a single process's writer; a sweep's trials hand
    their rows to the driver instead, see ``run_trial``)."""
    from . import leaderboard
    leaderboard.Leaderboard(path).add(trial_rows(method, sweep, trial, axes, cfg, out, compute_seconds))


def trial_rows(method: str, sweep: str, trial: str, axes: dict, cfg, out: dict,
               compute_seconds: float | None) -> list[dict]:
    """The trial's rows (one per eval dataset, with its protocol, evidence and denoising progressions) and the
    protocol's reference rows (the human ceiling, method ``human``, and the floors, method ``floor``), which
    every trial of the same protocol maps to the same row ids."""
    from . import leaderboard
    evaluation = out["evaluation"]
    protocol = evaluation.protocol
    info = protocol.to_dict()
    rows = leaderboard.make_rows(
        method=method, sweep=sweep, trial=trial, axes=axes, results=evaluation.results, protocol=protocol.name,
        protocol_hash=protocol.hash, seed=cfg.seed, compute_seconds=compute_seconds,
        checkpoint=storage.remote_uri(out["checkpoint"]),
        config=result_identity(cfg), protocol_info=info, progressions=evaluation.progressions,
        evidences=evaluation.evidence)
    names = sorted({name for references in evaluation.references.values() for name in references})
    for name in names:  # identity = the protocol and the reference's name: one row per protocol and dataset
        scored = {d: refs[name] for d, refs in evaluation.references.items() if name in refs}
        rows += leaderboard.make_rows(
            method="human" if name == "human-ceiling" else "floor", sweep=sweep, trial=name, axes={},
            results={d: s.row for d, s in scored.items()}, protocol=protocol.name, protocol_hash=protocol.hash,
            seed=0, compute_seconds=None, checkpoint=None, config={**info, "reference": name}, protocol_info=info,
            evidences={d: s.evidence for d, s in scored.items()})
    if evaluation.fewshot:  # eval.fewshot.tasks: rows of protocol fewshot/<task>, same trial, same identity
        from .evaluation.fewshot import fewshot_rows
        rows += fewshot_rows(evaluation.fewshot, method=method, sweep=sweep, trial=trial, axes=axes,
                             config=result_identity(cfg), seed=cfg.seed,
                             checkpoint=storage.remote_uri(out["checkpoint"]),
                             compute_seconds=compute_seconds)
    return rows


ROWS_FILE = "rows.parquet"  # in a trial's reported Tune checkpoint: its leaderboard rows, for the driver to merge


def report_rows(metrics: dict, rows: list[dict]) -> None:
    """``tune.report`` with the trial's rows in a checkpoint: Tune persists it to the experiment's storage (shared
    or object storage on a cluster) and hands it to the driver, the leaderboard's one writer; no trial, on any
    node, writes the leaderboard file itself."""
    import tempfile
    from ray import tune
    from .leaderboard import write_rows
    with tempfile.TemporaryDirectory() as directory:
        write_rows(rows, Path(directory) / ROWS_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def collect_rows(checkpoints, path: Path) -> int:
    """The driver's side of ``report_rows``: the rows in the trials' reported checkpoints (None: a trial without
    one) merged into the leaderboard at ``path`` in one write; idempotent, since a trial's rows keep their row
    ids. Returns the rows merged."""
    from . import leaderboard
    frames = []
    for checkpoint in checkpoints:
        if checkpoint is None:
            continue
        with checkpoint.as_directory() as directory:
            if (Path(directory) / ROWS_FILE).is_file():
                frames.append(leaderboard.read(Path(directory) / ROWS_FILE))
    if frames:
        leaderboard.Leaderboard(path).merge_frames(*frames)
        storage.publish(path)
    return sum(len(f) for f in frames)


def rows_collector(path: Path):
    """A Tune callback (it runs in the driver) that merges each trial's rows as soon as the trial completes, so the
    leaderboard grows while the sweep runs; ``run_sweep`` collects every trial once more at the end."""
    from ray import tune

    class RowsCollector(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            collect_rows([trial.checkpoint], path)

    return RowsCollector()


def threads_per_trial(concurrent_trials: int) -> int:
    """Torch threads for each trial when concurrent trials share one node's cores (0: leave the default, every
    core). Each process taking every core oversubscribes them: measured on a 2-core CPU, a VAE step next to a
    Gen-PPL pass ran 2.4x slower at 2 threads each, while 1 thread each kept both at their 1-thread speed."""
    import ray
    if concurrent_trials <= 1 or len([n for n in ray.nodes() if n.get("Alive")]) != 1:
        return 0
    return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)) // concurrent_trials)


def run_trial(config: dict[str, Any], spec: dict[str, Any], root: str,
              methods: dict[str, registry.MethodSpec]) -> None:
    """One Tune trial: run the pipeline (stages shared through the cache) and report its leaderboard rows to the
    driver (``report_rows``). ``methods`` travel with the trial, so a family registered in the driver (not only a
    built-in) runs in the worker."""
    import torch

    from .training.progress import configure_logging
    configure_logging()  # the trial's own progress (data, evaluation) reaches the driver's console
    trial = json.loads(config["trial"])
    method_name = trial.get("method") or spec["method"]
    method = methods[method_name]
    cfg = method.build(spec["preset"], trial["overrides"])
    cfg.name = spec["name"]  # W&B groups a sweep's runs by its name
    cfg.resources.torch_threads = cfg.resources.torch_threads or threads_per_trial(spec["max_concurrent_trials"])
    torch.set_num_threads(cfg.resources.torch_threads or os.cpu_count() or 1)  # Tune pins OMP threads to 1
    root_path = storage.local_path(root)  # this node's mirror of a run dir on object storage
    # tokenized data, teacher features and trained stages (content-keyed) are shared by every sweep under
    # the same --run-dir: a CFG or steps sweep evaluates the model another sweep already trained
    out = method.run(cfg, root_path / "trials" / trial["trial_id"], data_root=root_path.parent,
                     cache_root=root_path.parent,
                     teacher_layers=spec["teacher_layers"])
    rows = trial_rows(method_name, spec["name"], trial["trial_id"], trial["axes"], cfg, out,
                      compute_seconds=sum(out["stage_seconds"].values()))
    report_rows({f"{dataset}/{metric}": value for dataset, metrics in out["results"].items()
                 for metric, value in metrics.items()}, rows)


def param_space(trials: list[Trial]) -> dict[str, Any]:
    """Tune's grid over the planned trials. Each trial travels as a JSON string, not a dict: Tune reads a
    dict like {"eval": {...}} (the overrides of an eval-only axis) as its own "eval" expression syntax."""
    from ray import tune
    return {"trial": tune.grid_search([json.dumps(dataclasses.asdict(t), sort_keys=True) for t in trials])}


def experiment_name(sweep: str, trials: list[Trial]) -> str:
    """The sweep's Tune experiment, one per grid: re-running a sweep restores it (finished trials kept, the rest
    run), while a changed grid (an axis value, ``--baseline``) is a new experiment, so no planned trial is
    silently dropped by restoring the old one."""
    grid = json.dumps([dataclasses.asdict(t) for t in trials], sort_keys=True)
    return f"{sweep}-{hashlib.sha256(grid.encode()).hexdigest()[:8]}"


def run_sweep(spec: SweepSpec) -> Path:
    """Plan (validate), then run or restore the sweep; returns the sweep directory."""
    from ray import tune

    from .data.teacher_plan import preflight
    from .training.launch import init_ray
    trials = plan_trials(spec)
    root = storage.run_path(spec.run_dir) / spec.name
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "sweep.json", {**dataclasses.asdict(spec), "trials": [t.trial_id for t in trials]})
    storage.publish(root / "sweep.json")
    storage.fetch(root / "leaderboard.parquet", refresh=True)  # earlier runs' rows: this run merges into them
    method = registry.get(spec.method)
    methods = {name: registry.get(name) for name in {spec.method, *(t.method for t in trials if t.method)}}
    configs = [method.build(spec.preset, t.overrides) for t in trials if t.method is None]
    layers = method.teacher_layers(configs)  # every frozen-LM layer the sweep needs: one teacher pass
    log.info("sweep %s: %d trials: %s", spec.name, len(trials), [t.trial_id for t in trials])
    plans = {plan.summary() for plan in (preflight(c, layers, log=False) for c in configs) if plan is not None}
    for summary in sorted(plans):  # every distinct teacher plan, before Ray starts (a refused cache stops here)
        log.info(summary)
    init_ray(resources=max((c.resources for c in configs), key=lambda r: r.min_nodes, default=None))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec={**dataclasses.asdict(spec), "teacher_layers": layers},
                             root=storage.remote_uri(root),
                             methods=methods),
        {"cpu": 0.01})  # the trial driver idles while its TorchTrainer workers hold the CPUs/GPUs
    run_name = experiment_name(spec.name, trials)
    experiment = storage.remote_uri(root / "tune" / run_name)  # Tune keeps it in the store itself
    if tune.Tuner.can_restore(experiment):
        log.info("restoring interrupted sweep from %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(trials),
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent_trials),
            run_config=tune.RunConfig(name=run_name, storage_path=storage.remote_uri(root / "tune"),
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      callbacks=[rows_collector(root / "leaderboard.parquet")]))
    results = tuner.fit()
    # every finished trial's rows, failed trials or not (a restored sweep's earlier trials included)
    collect_rows([result.checkpoint for result in results], root / "leaderboard.parquet")
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} trials failed; first error: {errors[0]}")
    return root


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``vae.latent_dim=16,32`` -> ("vae.latent_dim", [16, 32]) (values parsed as YAML)."""
    import yaml
    if "=" not in text:
        raise ConfigError(f"--axis {text!r}: expected key.path=v1,v2,...")
    key, raw = text.split("=", 1)
    values = yaml.safe_load(f"[{raw}]")
    return key.strip(), values


def sweep_main(name: str, default_axes, description: str, argv: list[str] | None = None,
               method: str = "textldm", default_concurrency: Callable[[str], int] = lambda preset: 1) -> int:
    """Shared command line of the ``experiments/ablate_*.py`` scripts. ``default_axes(preset)`` gives the
    script's grid over ``method``'s config; ``--axis`` replaces or adds an axis; ``default_concurrency(preset)``
    is ``--max-concurrent-trials`` when the command line does not set it."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="tiny | small | paper (default: tiny)")
    parser.add_argument("--config", help="YAML/JSON file with config overrides for every trial")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2", help="set a sweep axis")
    parser.add_argument("--run-dir", default="runs", help="sweeps go to <run-dir>/<name>/")
    parser.add_argument("--name", default=name, help=f"sweep name (default: {name})")
    parser.add_argument("--max-concurrent-trials", type=int,
                        help="trials run at once (default: the script's, 1 unless it says otherwise); trials "
                             "sharing one node split its cores")
    parser.add_argument("--baseline", action="store_true",
                        help="also train and rank the matched AR baseline (TextLDM, Cola DLM and LDLM sweeps)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from . import leaderboard
    try:
        axes = dict(default_axes(args.preset))
        axes.update(parse_axis(a) for a in args.axis)
        overrides = merge(load_file(args.config) if args.config else {}, parse_overrides(args.set))
        spec = SweepSpec(name=args.name, method=method, preset=args.preset, axes=axes, overrides=overrides,
                         max_concurrent_trials=args.max_concurrent_trials or default_concurrency(args.preset),
                         run_dir=args.run_dir,
                         baseline=args.baseline)
        root = run_sweep(spec)
    except ConfigError as err:
        print(f"config error: {err}")
        return 2
    md_path, html_path = leaderboard.render(root / "leaderboard.parquet", root)
    storage.publish(md_path)
    storage.publish(html_path)
    print(f"\n{description.splitlines()[0]} ({args.preset} preset)\n")
    print(md_path.read_text())
    where = [storage.remote_uri(p) for p in (root / "leaderboard.parquet", md_path, html_path)]
    print(f"leaderboard: {where[0]}\n             {where[1]}\n             {where[2]}")
    return 0
