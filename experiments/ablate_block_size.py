"""Cola DLM ablation: block size of the DiT prior (and of a block-causal VAE); 1 = a per-token causal prior.

    python experiments/ablate_block_size.py                   # tiny preset, embedded offline assets
    python experiments/ablate_block_size.py --axis dlm.dit.block_size=...
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_block_size.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"dlm.dit.block_size": [4, 16] if preset == "tiny" else [1, 4, 16, 64]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_block_size", axes, __doc__, method="dlm"))
