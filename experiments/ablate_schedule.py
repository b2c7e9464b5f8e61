"""TextLDM timestep-schedule ablation (paper Table 2 group f: logit-normal std 1.5 > 1.2 > uniform).

    python experiments/ablate_schedule.py [--preset small]

All trials share one VAE (the schedule only changes the DiT stage); the sampler's Euler grid follows
the training schedule (``eval.grid=schedule``).
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    return {"train_dit.schedule": [{"kind": "uniform"}, {"kind": "logit_normal", "loc": 0.0, "scale": 1.2},
                                   {"kind": "logit_normal", "loc": 0.0, "scale": 1.5}]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_schedule", axes, __doc__))
