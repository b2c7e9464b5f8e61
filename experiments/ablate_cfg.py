"""TextLDM classifier-free-guidance scale sweep (the paper found w = 7 best, diversity collapsing at 8).

    python experiments/ablate_cfg.py [--preset small] [--axis eval.cfg_scale=1,3,5,7,9]

CFG is a sampling-time axis: one VAE and one DiT are trained, then evaluated at every scale.
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"eval.cfg_scale": [1.0, 3.0, 5.0, 7.0, 9.0]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_cfg", axes, __doc__))
