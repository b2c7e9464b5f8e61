"""TextLDM VAE-size ablation (paper Table 2 group b: 350M / 502M / 690M VAEs, the 350M best on ROUGE).

    python experiments/ablate_vae_size.py                      # tiny preset, embedded offline assets
    python experiments/ablate_vae_size.py --axis 'vae={encoder_layers: 3, decoder_layers: 3}'
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_vae_size.py --preset paper

The paper's three VAEs share their 223M token embedding and LM head, so the width is fixed and the encoder and
decoder grow in depth: 10 / 21 / 36 blocks each on the paper preset (354M / 497M / 692M). The other presets scale
their depth by about the same ratios (1 : 2.1 : 3.6). Each size trains its own VAE and DiT.
"""
import sys

from latentlm.platform.sweep import sweep_main

LAYERS = {"tiny": [2, 4, 7], "small": [6, 13, 22], "paper": [10, 21, 36]}  # encoder = decoder blocks


def axes(preset: str) -> dict:
    return {"vae": [{"encoder_layers": n, "decoder_layers": n} for n in LAYERS[preset]]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_vae_size", axes, __doc__))
