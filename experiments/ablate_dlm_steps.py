"""Cola DLM ablation: Euler steps per block (sampling-time axis: one trained model).

    python experiments/ablate_dlm_steps.py                   # tiny preset, embedded offline assets
    python experiments/ablate_dlm_steps.py --axis eval.steps=...
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_dlm_steps.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"eval.steps": [2, 8, 16] if preset == "tiny" else [1, 2, 4, 8, 16, 32]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_dlm_steps", axes, __doc__, method="dlm"))
