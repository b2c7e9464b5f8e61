"""Cola DLM ablation: how the first generated block is conditioned when the prompt ends inside it (paper §5.2,
Table 5): clean condition (the known prompt latents stay clean), partial repaint with r repeats over the first
gamma of the steps, left padding, right padding. A sampling-time axis: one trained model (with the random-length
clean prefixes all four modes rely on) is scored under each mode.

    python experiments/ablate_dlm_conditioning.py          # tiny preset, embedded offline assets
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python experiments/ablate_dlm_conditioning.py --preset small
"""
import sys

from latentlm.platform.sweep import sweep_main


def axes(preset: str) -> dict:
    # the paper's (r, gamma) values are lost; these span its worked example (r = 3 over the first half)
    repaints = [(1, 1.0), (3, 0.5)] if preset == "tiny" else [(1, 1.0), (1, 0.5), (1, 0.25), (3, 1.0), (3, 0.5),
                                                              (3, 0.25)]
    return {"sampler": [{"first_block": "clean"},
                        *({"first_block": "partial_repaint", "repaint_repeats": r, "repaint_fraction": gamma}
                          for r, gamma in repaints),
                        {"first_block": "left_pad"}, {"first_block": "right_pad"}]}


if __name__ == "__main__":
    sys.exit(sweep_main("ablate_dlm_conditioning", axes, __doc__, method="dlm"))
