"""Cola DLM ablation: the VAE in the joint stage (paper Sec. 4.3, Fig. 3): frozen after its pretraining stage,
trained jointly at the DiT's learning rate (x1) or at x0.01, everything from scratch without the VAE stage, or
interval (cycles of dlm.interval_steps joint steps and as many frozen-VAE steps, from the pretrained VAE).

    python experiments/ablate_vae_strategy.py            # tiny preset, embedded offline assets
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_vae_strategy.py --preset small

One pretrained VAE is trained and shared by the four strategies that start from it.
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"dlm": [{"vae_strategy": "frozen"}, {"vae_strategy": "joint", "vae_lr_ratio": 1.0},
                    {"vae_strategy": "joint", "vae_lr_ratio": 0.01}, {"vae_strategy": "scratch"},
                    {"vae_strategy": "interval", "vae_lr_ratio": 1.0}]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_vae_strategy", axes, __doc__, method="dlm"))
