"""LDLM token-encoder layer ablation (LDLM App. B.1): which hidden layer of the frozen LM the latent encoder
reads and the latent decoder reconstructs. All layers come from one teacher pass over the data.

    python experiments/ablate_ldlm_layer.py                    # tiny preset, embedded offline assets
    python experiments/ablate_ldlm_layer.py --axis token_encoder.layer=-1,-3,-6,-12
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_ldlm_layer.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"token_encoder.layer": [-1, -3] if preset == "tiny" else [-1, -3, -6, -9]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_ldlm_layer", axes, __doc__, method="ldlm"))
