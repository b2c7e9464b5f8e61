"""LDLM recipe ablation: reconstruction loss x diffusion-to-encoder warmup x timestep sampler
(LDLM Table 1, rows "reconstruction loss", "warmup" and "timestep sampling").

    python experiments/ablate_ldlm_recipe.py                   # tiny preset, embedded offline assets
    python experiments/ablate_ldlm_recipe.py --axis ldlm.recon_loss=mse,ce,ce+mse
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_ldlm_recipe.py --preset small

The tiny preset varies one part at a time around the full recipe (MSE, warmup, adaptive sampler) so it
fits a 2-core CPU box; ``--preset small`` (or ``paper``) runs the full grid.
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    if preset == "tiny":  # the full recipe and three single-part ablations; see the README results
        return {"ldlm": [{"recon_loss": "mse", "warmup_steps": 250, "timestep_sampler": "adaptive"},
                         {"recon_loss": "ce", "warmup_steps": 250, "timestep_sampler": "adaptive"},
                         {"recon_loss": "mse", "warmup_steps": 0, "timestep_sampler": "adaptive"},
                         {"recon_loss": "mse", "warmup_steps": 250, "timestep_sampler": "uniform"}]}
    return {"ldlm.recon_loss": ["mse", "ce", "ce+mse"], "ldlm.warmup_steps": [0, 5000, 10000],
            "ldlm.timestep_sampler": ["uniform", "adaptive"]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_ldlm_recipe", axes, __doc__, method="ldlm"))
