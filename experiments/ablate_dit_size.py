"""TextLDM DiT-size ablation (paper Table 2 group e: 114M / 328M / 768M DiTs, every metric improving with size).

    python experiments/ablate_dit_size.py                      # tiny preset, embedded offline assets
    python experiments/ablate_dit_size.py --axis dit.hidden_dim=96,128
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_dit_size.py --preset paper

Depth and heads stay the preset's and the width changes: 512 / 864 / 1344 on the paper preset (114M / 325M /
787M DiTs); the other presets scale their DiT's parameters by about the paper's ratios (0.35 : 1 : 2.3). All sizes
share one VAE. ``--baseline``'s GPT is matched to the preset's DiT (the middle size). The paper trained these
three DiTs for 2M steps instead of 1M (``--set train_dit.optim.steps=2000000``).
"""
import sys

from latentlm.platform.sweep import sweep_main

WIDTHS = {"tiny": [72, 128, 200], "small": [304, 512, 784], "paper": [512, 864, 1344]}


def axes(preset: str) -> dict:
    return {"dit.hidden_dim": WIDTHS[preset]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_dit_size", axes, __doc__))
