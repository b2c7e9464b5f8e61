"""The matched autoregressive baseline: a GPT sized to a diffusion config's DiT (within 5% of its parameter
count, embeddings included), trained on the same token windows for the same number of training tokens as
that DiT stage, and scored by the same continuation protocol (its rows rank beside the diffusion rows).

    python experiments/train_ar_baseline.py                        # GPT matched to TextLDM tiny
    python experiments/train_ar_baseline.py --axis match=textldm:tiny,dlm:tiny
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/train_ar_baseline.py --preset small

``--set gpt.temperature=0.7`` / ``gpt.top_p=0.9`` change sampling; ``--set budget=none`` with
``train.optim.steps=...`` trains for another budget. The default match follows the preset
(``textldm:<preset>``). Rank it beside a diffusion sweep by merging boards (same protocol hash):
``latentlm leaderboard runs/train_ar_baseline runs/ablate_repa``. Run under the same ``--run-dir`` as the
matched sweep, it reuses that sweep's tokenized data.
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"match": [f"textldm:{preset}"]}


if __name__ == "__main__":
    sys.exit(sweep_main("train_ar_baseline", axes, __doc__, method="ar"))
