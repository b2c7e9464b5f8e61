"""A planted effect, detected: train the same config at 1x and at Kx the training steps (default 4x) and check
that the evaluation protocol ranks the longer run above the shorter one, with a paired bootstrap over the
shared prompts (p < 0.05 on MAUVE and Gen-PPL is the bar). A benchmark of the protocol, not a test: it trains
four models on the embedded default (the matched AR baseline and TextLDM by default, any registered family by
``--families``; every training stage the family declares is scaled).

    python experiments/bench_planted_effect.py                  # tiny preset, AR + TextLDM, 1x vs 4x
    python experiments/bench_planted_effect.py --families ar --scale 2

Writes ``<run-dir>/bench_planted_effect/results.{md,json}`` and a leaderboard of the four rows (with the
reference rows) beside them; stages are cached under ``<run-dir>`` like every sweep's, so a re-run only
re-scores.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from latentlm.models.checkpoint import atomic_write_text
from latentlm.models.config import ConfigError
from latentlm.platform import leaderboard, registry
from latentlm.platform.config import merge, parse_overrides
from latentlm.platform.evaluation import significance
from latentlm.platform.sweep import add_rows

METRICS = ("mauve", "gen_ppl", "entropy", "rouge1", "bertscore")


def scaled_overrides(family: str, preset: str, scale: int) -> dict:
    """Every training stage of ``family`` at ``scale`` x its preset's steps (warm-up kept, schedule stretched)."""
    method = registry.get(family)
    cfg = method.build(preset, {})
    return {section: {"optim": {"steps": getattr(cfg, section).optim.steps * scale}}
            for section in method.stage_sections.values()}


def compare(long_run, short_run, replicates: int) -> list[dict]:
    """Paired differences (long - short) of every metric on every dataset, with CI and p-value."""
    out = []
    for dataset, evidence in long_run.evidence.items():
        for metric in METRICS:
            try:
                d = significance.paired_difference(evidence, short_run.evidence[dataset], metric,
                                                   replicates=replicates)
            except ValueError:
                continue  # the task has no such metric
            better = d.difference > 0 if significance.higher_is_better(metric) else d.difference < 0
            out.append({"dataset": dataset, "metric": metric, "short": d.b, "long": d.a, "difference": d.difference,
                        "low": d.low, "high": d.high, "p_value": d.p_value,
                        "detected": bool(better and d.p_value < 0.05)})
    return discount_entropy_drops(out)


def discount_entropy_drops(comparisons: list[dict]) -> list[dict]:
    """A lower Gen-PPL bought with a significant entropy drop is the degenerate pattern the protocol guards
    against (repetitive text scores low perplexity), not an improvement: it does not count as detected."""
    fell = {r["dataset"] for r in comparisons
            if r["metric"] == "entropy" and r["difference"] < 0 and r["p_value"] < 0.05}
    for r in comparisons:
        r["entropy_fell"] = bool(r["detected"] and r["metric"] == "gen_ppl" and r["dataset"] in fell)
        if r["entropy_fell"]:
            r["detected"] = False
    return comparisons


def verdict(row: dict) -> str:
    if row["detected"]:
        return "yes"
    return "no (entropy fell)" if row.get("entropy_fell") else "no"


def markdown(results: dict) -> str:
    lines = [f"Planted effect: {results['scale']}x training steps vs 1x ({results['preset']} preset), paired bootstrap "
             f"over prompts ({results['replicates']} replicates); 'detected' = the longer run is better at p < 0.05 (a "
             "lower Gen-PPL with a significant entropy drop is not).",
             "", "| family | dataset | metric | 1x | Kx | Kx - 1x [95% CI] | p | detected |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for family, rows in results["families"].items():
        for r in rows["comparisons"]:
            scale = 100 if r["metric"] in ("mauve", "rouge1", "bertscore") else 1
            lines.append(f"| {family} | {r['dataset']} | {r['metric']} | {scale * r['short']:.2f} | "
                         f"{scale * r['long']:.2f} | {scale * r['difference']:+.2f} [{scale * r['low']:+.2f}, "
                         f"{scale * r['high']:+.2f}] | {r['p_value']:.3f} | {verdict(r)} |")
    lines += ["", "Wall time per family: " + ", ".join(f"{f} {r['seconds'] / 60:.1f} min"
                                                       for f, r in results["families"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--families", default="ar,textldm", help="comma-separated registered methods")
    parser.add_argument("--scale", type=int, default=4, help="training-step multiplier of the long run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--run-dir", default="runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.scale < 2:
            raise ConfigError(f"--scale: expected an integer >= 2, got {args.scale}")
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        user = parse_overrides(args.set)
        plans = {}
        for f in families:  # every config validated before anything trains
            method = registry.get(f)
            scaled = merge(user, scaled_overrides(f, args.preset, args.scale))
            plans[f] = {1: method.build(args.preset, user), args.scale: method.build(args.preset, scaled)}
    except ConfigError as err:
        print(f"config error: {err}")
        return 2
    root = Path(args.run_dir).resolve()
    out_dir = root / "bench_planted_effect"
    results = {"preset": args.preset, "scale": args.scale, "replicates": args.replicates, "families": {}}
    for family, configs in plans.items():
        t0, runs = time.time(), {}
        for scale, cfg in configs.items():
            trial = f"{family}-{scale}x"
            runs[scale] = registry.get(family).run(cfg, out_dir / "trials" / trial, data_root=root, cache_root=root)
            add_rows(out_dir / leaderboard.FILENAME, family, "bench_planted_effect", trial, {"steps": f"{scale}x"},
                     cfg, runs[scale], compute_seconds=sum(runs[scale]["stage_seconds"].values()))
        comparisons = compare(runs[args.scale]["evaluation"], runs[1]["evaluation"], args.replicates)
        results["families"][family] = {"comparisons": comparisons, "seconds": round(time.time() - t0, 1)}
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    atomic_write_text(out_dir / "results.md", text)
    leaderboard.render(out_dir / leaderboard.FILENAME, out_dir)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
