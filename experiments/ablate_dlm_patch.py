"""Cola DLM ablation: tokens per latent (2 halves the sequence the DiT sees).

    python experiments/ablate_dlm_patch.py                   # tiny preset, embedded offline assets
    python experiments/ablate_dlm_patch.py --axis dlm.vae.patch_size=...
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_dlm_patch.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"dlm.vae.patch_size": [1, 2]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_dlm_patch", axes, __doc__, method="dlm"))
