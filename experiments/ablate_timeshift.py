"""Cola DLM ablation: logit-normal loc of the per-block flow-matching times (the paper's "timestep shift").

    python experiments/ablate_timeshift.py                   # tiny preset, embedded offline assets
    python experiments/ablate_timeshift.py --axis dlm.schedule.loc=...
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_timeshift.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"dlm.schedule.loc": [-1.0, 0.0, 1.0]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_timeshift", axes, __doc__, method="dlm"))
