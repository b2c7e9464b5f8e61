"""TextLDM ablation (a): REPA on vs off, same data, same seeds, same DiT recipe.

Trains a TextVAE with and without REPA, a DiT on each frozen VAE, evaluates both with the continuation
protocol on held-out Wikipedia (in domain) and Shakespeare (out of domain), and writes the table as CSV
and Markdown under the run directory.

    python experiments/ablate_repa.py                      # tiny preset, embedded offline assets
    python experiments/ablate_repa.py --preset small --set data.corpus=/data/owt2
    ray job submit --working-dir . -- python experiments/ablate_repa.py --preset paper
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from latentlm.platform.config import load_file, merge, parse_overrides
from latentlm.platform.experiment import build_config
from latentlm.platform.pipeline import run_textldm
from latentlm.platform.results import flatten, write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="tiny | small | paper (default: tiny)")
    parser.add_argument("--config", help="YAML/JSON file with config overrides")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--run-dir", default="runs/ablate_repa", help="where checkpoints and tables go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    overrides = merge(load_file(args.config) if args.config else {}, parse_overrides(args.set))
    arms = {"repa_on": {"vae": {"repa": {"enabled": True}}}, "repa_off": {"vae": {"repa": {"enabled": False}}}}
    configs = {name: build_config(args.preset, merge(overrides, arm)) for name, arm in arms.items()}  # validate all first
    root = Path(args.run_dir).resolve()
    rows, t0 = [], time.time()
    for name, cfg in configs.items():
        print(f"=== {name}: REPA {'on' if cfg.vae.repa.enabled else 'off'} ===", flush=True)
        out = run_textldm(cfg, root / name, data_root=root)
        axes = {"repa": "on" if cfg.vae.repa.enabled else "off",
                "repa_layer": cfg.vae.repa.layer if cfg.vae.repa.enabled else "-"}
        rows += flatten(name, axes, out["results"])
    csv_path, md_path = write_tables(rows, ["repa", "repa_layer", "dataset"], root)
    print(f"\nTextLDM REPA ablation ({args.preset} preset, {time.time() - t0:.0f}s; metrics x100)\n")
    print(md_path.read_text())
    print(f"written: {csv_path}\n         {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
