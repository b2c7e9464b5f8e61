"""LDLM decoder-input noise ablation: a sigma_dec grid (LDLM Table 1 / Figure 4: non-monotonic; too little
gives a rough latent space, too much collapses generations).

    python experiments/ablate_decoder_noise.py                 # tiny preset, embedded offline assets
    python experiments/ablate_decoder_noise.py --axis ldlm.decoder_noise=0,0.5,1,3
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_decoder_noise.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"ldlm.decoder_noise": [0.0, 0.1, 1.0] if preset == "tiny" else [0.0, 0.5, 1.0, 2.0, 3.0, 5.0]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_decoder_noise", axes, __doc__, method="ldlm"))
