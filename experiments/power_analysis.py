"""How small a difference can a leaderboard's sample count detect? For every row with per-prompt evidence:
the smallest true difference between two models of that row's variability that a two-sided test at p < 0.05
detects with 80% power (``significance.detectable_difference``), and the prompt count that would detect a
given difference (``significance.samples_needed``; default 5 MAUVE points).

    python experiments/power_analysis.py runs/ablate_repa
    python experiments/power_analysis.py runs/ablate_repa/leaderboard.parquet --metric mauve --target 0.05
"""
from __future__ import annotations

import argparse
import json
import sys

from latentlm.platform import leaderboard
from latentlm.platform.evaluation import significance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("leaderboard", help="leaderboard file or sweep directory")
    parser.add_argument("--metric", default="mauve")
    parser.add_argument("--target", type=float, default=0.05, help="difference to size for (MAUVE 0.05 = 5 points)")
    parser.add_argument("--replicates", type=int, default=1000)
    args = parser.parse_args(argv)
    if not args.target > 0:
        print(f"--target: expected a difference > 0, got {args.target}", file=sys.stderr)
        return 2
    try:
        board = leaderboard.read(leaderboard.resolve_path(args.leaderboard))
    except (leaderboard.LeaderboardError, OSError) as err:
        print(f"power_analysis: {err}", file=sys.stderr)
        return 2
    scale = 100 if args.metric in leaderboard.PERCENT_METRICS else 1
    print(f"| row | dataset | prompts | {args.metric} | detectable difference (p<0.05, 80% power) | "
          f"prompts to detect {scale * args.target:g} |")
    print("|---|---|---:|---:|---:|---:|")
    for _, row in board.sort_values(["dataset", "method", "trial"]).iterrows():
        if not isinstance(row["evidence_json"], str):
            continue
        evidence = json.loads(row["evidence_json"])
        try:
            d = significance.detectable_difference(evidence, args.metric, replicates=args.replicates)
            n = significance.samples_needed(evidence, args.metric, args.target, replicates=args.replicates)
        except (ValueError, KeyError):
            continue  # no such metric in this row's evidence
        value = row.get(args.metric)
        shown = "-" if value is None or value != value else f"{scale * value:.2f}"
        # Below the measured count the 1/sqrt(n) rule is an extrapolation (MAUVE is biased at small n), so a
        # difference the row already resolves is reported as such, not as "1 prompt".
        needed = f"≤ {evidence['n']} (resolved now)" if n <= int(evidence["n"]) else str(n)
        print(f"| {row['method']} · {row['trial']} | {row['dataset']} | {evidence['n']} | {shown} | {scale * d:.2f} | "
              f"{needed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
