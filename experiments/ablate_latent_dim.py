"""TextLDM latent-dimension ablation (paper Table 2 group c: 64 beats 128 on MAUVE).

    python experiments/ablate_latent_dim.py [--preset small] [--axis vae.latent_dim=32,64,128]

Each latent size trains its own VAE and DiT (the DiT's latent_dim follows the VAE's).
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"vae.latent_dim": [8, 16, 32] if preset == "tiny" else [32, 64, 128]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_latent_dim", axes, __doc__))
