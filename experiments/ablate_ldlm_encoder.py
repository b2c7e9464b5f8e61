"""LDLM token-encoder ablation (LDLM Table 1, row "token encoder"): what the latent encoder reads. The frozen
LM's hidden states (``token_encoder.layer: -3``), its embedding layer (``layer: 0``, hidden_states[0]: the
GPT-2-embeddings arm) or a trainable embedding table from scratch (``ldlm.encoder_input: scratch``, no frozen LM
and no teacher pass). The frozen layers come from one teacher pass over the data.

    python experiments/ablate_ldlm_encoder.py                  # tiny preset, embedded offline assets
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_ldlm_encoder.py --preset small

Scratch embeddings train with ``recon_loss: ce`` (MSE onto a trainable table collapses it; see
``models/ldlm.py``), so ``--preset small`` / ``paper`` also run the frozen arms with CE: the like-for-like
comparison for the scratch arm. On tiny that arm is ``ablate_ldlm_recipe.py``'s "CE instead of MSE" (same joint
stage, shared through the stage cache under the same ``--run-dir``).
"""
import sys

from latentlm.platform.sweep import sweep_main

SCRATCH = {"encoder_input": "scratch", "recon_loss": "ce"}


def axes(preset: str) -> dict:
    frozen = [{"encoder_input": "frozen", "recon_loss": "mse"}]
    if preset != "tiny":
        frozen.append({"encoder_input": "frozen", "recon_loss": "ce"})
    # the scratch arm's token-encoder layer cannot act: its duplicates collapse to one trial
    return {"ldlm": [*frozen, SCRATCH], "token_encoder.layer": [-3, 0]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_ldlm_encoder", axes, __doc__, method="ldlm"))
