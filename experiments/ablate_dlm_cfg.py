"""Cola DLM ablation: CFG scale, unconditional branch = current block without history (sampling-time axis).

    python experiments/ablate_dlm_cfg.py                   # tiny preset, embedded offline assets
    python experiments/ablate_dlm_cfg.py --axis eval.cfg_scale=...
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_dlm_cfg.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"eval.cfg_scale": [1.0, 3.0, 7.0] if preset == "tiny" else [1.0, 2.0, 3.0, 5.0, 7.0, 10.0]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_dlm_cfg", axes, __doc__, method="dlm"))
