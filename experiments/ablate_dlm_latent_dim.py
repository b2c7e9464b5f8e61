"""Cola DLM ablation: VAE latent width.

    python experiments/ablate_dlm_latent_dim.py                   # tiny preset, embedded offline assets
    python experiments/ablate_dlm_latent_dim.py --axis dlm.vae.latent_dim=...
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_dlm_latent_dim.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"dlm.vae.latent_dim": [8, 16] if preset == "tiny" else [8, 16, 32, 64]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_dlm_latent_dim", axes, __doc__, method="dlm"))
