"""TextLDM REPA ablation: REPA on/off x teacher layer (paper Table 2 groups a and d).

    python experiments/ablate_repa.py                          # tiny preset, embedded offline assets
    python experiments/ablate_repa.py --axis vae.repa.layer=-3,-1
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_repa.py --preset small

REPA-off trials ignore the layer axis (they collapse into one trial). The tiny preset sweeps only the
third-from-last layer: two trials, run side by side (one core each on a 2-core CPU; --max-concurrent-trials 1
runs them one after the other).
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"vae.repa.enabled": [False, True], "vae.repa.layer": [-3] if preset == "tiny" else [-3, -1]}


def concurrency(preset: str) -> int:
    return 2 if preset == "tiny" else 1


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_repa", axes, __doc__, default_concurrency=concurrency))
