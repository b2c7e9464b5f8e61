"""Proof of a pure refactor: train every training stage of every method family for a few steps with fixed
seeds and record the loss trajectories and the final weights, so two commits can be compared bit for bit.

    python experiments/check_identical_losses.py --out /tmp/before.json     # on the commit before
    python experiments/check_identical_losses.py --out /tmp/after.json      # on the commit after
    python experiments/check_identical_losses.py --compare /tmp/before.json /tmp/after.json

Each family runs its tiny preset (embedded offline assets) with every stage cut to ``--steps`` steps, a metrics
line at every step and the stages that are optional switched on (LDLM's post-decoder, the adaptive timestep
sampler refreshing within the run). Recorded per stage: every logged metric except wall-clock ones, and a
SHA-256 of every tensor file of the final checkpoint (what the next stage and the evaluation load). The
comparison prints the first difference per stage and exits 1 when anything differs. CPU only: GPU kernels
are not bit-reproducible across runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from latentlm.models.checkpoint import atomic_write_text, load_tensors
from latentlm.models.config import ConfigError
from latentlm.platform import registry
from latentlm.platform.config import merge

FAMILIES = tuple(registry.names())
WALL_CLOCK = frozenset({"tokens_per_s", "mfu"})  # differ run to run by nature
EXTRA = {"ldlm": {"train_post_decoder": {"enabled": True}, "ldlm": {"adaptive_update_every": 2}}}


def stage_overrides(method, cfg, steps: int) -> dict:
    """Every training stage ``method`` declares, cut to ``steps`` steps and logged at every step."""
    return {section: {"optim": {"steps": steps, "log_every": 1, "checkpoint_every": 0,
                                "warmup_steps": min(getattr(cfg, section).optim.warmup_steps, steps // 2)}}
            for section in method.stage_sections.values()}


def build(family: str, steps: int, user: dict):
    method = registry.get(family)
    base = merge(EXTRA.get(family, {}), merge({"wandb": False}, user))
    return method.build("tiny", merge(base, stage_overrides(method, method.build("tiny", base), steps)))


def weights_digest(checkpoint: Path) -> dict[str, str]:
    """file name -> SHA-256 over its tensors (name, dtype, shape, bytes) in name order, for every tensor file
    but the RNG states (the loss trajectories already show every draw)."""
    out = {}
    for path in sorted(p for p in Path(checkpoint).glob("*.safetensors") if not p.name.startswith("rng_")):
        h = hashlib.sha256()
        for name, tensor in sorted(load_tensors(path).items()):
            h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
        out[path.name] = h.hexdigest()
    return out


def trajectories(run_dir: Path) -> dict[str, list[dict]]:
    """``<stage>_metrics.jsonl`` -> the logged lines (the last line of a step wins, as on resume)."""
    out = {}
    for path in sorted(run_dir.glob("*_metrics.jsonl")):
        by_step = {}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            by_step[record["step"]] = {k: v for k, v in record.items() if k not in WALL_CLOCK}
        out[path.name.removesuffix("_metrics.jsonl")] = [by_step[s] for s in sorted(by_step)]
    return out


def record(configs: dict, steps: int, work: Path, data_root: Path) -> dict:
    result = {"steps": steps, "families": {}}
    for family, cfg in configs.items():
        run_dir = work / family
        method = registry.get(family)
        trained = method.train(cfg, run_dir, data_root=data_root, cache_root=run_dir)
        if list(trained.checkpoints) != list(method.stages):
            raise ConfigError(f"{family}: trained stages {list(trained.checkpoints)}, declared {list(method.stages)}")
        result["families"][family] = {
            "losses": trajectories(run_dir),
            "weights": {stage: weights_digest(Path(ckpt)) for stage, ckpt in trained.checkpoints.items() if ckpt}}
        logging.info("%s: %s", family, {s: len(v) for s, v in result["families"][family]["losses"].items()})
    return result


def differences(a: dict, b: dict) -> list[str]:
    """One line per stage (or weights file) that differs; empty when the two records are identical."""
    out = []
    for family in sorted(set(a["families"]) | set(b["families"])):
        fa, fb = a["families"].get(family), b["families"].get(family)
        if fa is None or fb is None:
            out.append(f"{family}: recorded on one side only")
            continue
        for stage in sorted(set(fa["losses"]) | set(fb["losses"])):
            la, lb = fa["losses"].get(stage), fb["losses"].get(stage)
            if la is None or lb is None:
                out.append(f"{family}/{stage}: logged on one side only")
                continue
            for step, (x, y) in enumerate(zip(la, lb), 1):
                diff = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
                if diff:
                    out.append(f"{family}/{stage} step {step}: " +
                               ", ".join(f"{k} {x.get(k)!r} vs {y.get(k)!r}" for k in diff))
                    break
            if len(la) != len(lb):
                out.append(f"{family}/{stage}: {len(la)} vs {len(lb)} logged steps")
        for stage in sorted(set(fa["weights"]) | set(fb["weights"])):
            wa, wb = fa["weights"].get(stage, {}), fb["weights"].get(stage, {})
            for name in sorted(set(wa) | set(wb)):
                if name in wa and wa[name] != wb.get(name):  # a file only the second run writes is no change
                    out.append(f"{family}/{stage}/{name}: " + ("missing" if name not in wb else "differs"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the record here (JSON)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two records")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--work-dir", help="where to train (default: a temporary directory)")
    parser.add_argument("--data-root", help="tokenized data and teacher features, reusable by the second run "
                                            "(default: inside the work dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        found = differences(a, b)
        stages = sum(len(f["losses"]) for f in a["families"].values())
        added = sorted(f"{family}/{stage}/{name}" for family, f in b["families"].items()
                       for stage, files in f["weights"].items() for name in files
                       if name not in a["families"].get(family, {}).get("weights", {}).get(stage, {}))
        print("\n".join(found) if found else f"identical: {len(a['families'])} families, {stages} stages, "
                                             f"{a['steps']} steps each, losses and final weights bit for bit")
        if added:
            print("written by the second run only: " + ", ".join(added))
        return 1 if found else 0
    if not args.out:
        parser.error("--out or --compare is required")
    from latentlm.platform.config import parse_overrides
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    try:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or args.steps < 2:
            raise ConfigError(f"--families: expected some of {', '.join(FAMILIES)}, got {unknown}" if unknown
                              else f"--steps: expected an integer >= 2, got {args.steps}")
        user = parse_overrides(args.set)
        configs = {f: build(f, args.steps, user) for f in families}  # all validated before anything trains
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="identical-losses-") as tmp:
        work = Path(args.work_dir or tmp).resolve()
        result = record(configs, args.steps, work, Path(args.data_root).resolve() if args.data_root
                        else work / "data")
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
