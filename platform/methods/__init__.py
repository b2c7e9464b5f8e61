"""The built-in method families, registered on import (``registry`` imports this package on first use).

Each family is one folder here (``textldm/``, ``ldlm/``, ``dlm/``, ``ar/``: its config and presets, training
stages, pipeline and generator) and one ``register()`` below that points at its modules; nothing here is
imported before it is used.
"""
from __future__ import annotations

from latentlm.platform.registry import Lazy, MethodSpec, register


def lazy(family: str, **targets: str) -> dict[str, Lazy]:
    """``field="module:attribute"`` of a module in ``methods/<family>/`` -> ``field=Lazy(...)``."""
    return {field: Lazy(f".methods.{family}.{target}") for field, target in targets.items()}


register(MethodSpec(
    name="textldm", label="TextLDM", summary="VAE then DiT (continuation)",
    stages=("vae", "dit"), final_stages=("dit",),
    **lazy("textldm", config="config:TextLDMConfig", build="config:build_config", presets="presets:PRESETS",
           train="pipeline:train_textldm", run="pipeline:run_textldm", load_generator="generator:load_textldm",
           evaluate="pipeline:evaluate_saved_textldm", sample="pipeline:sample_textldm",
           teacher_layers="config:textldm_teacher_layers", effective="config:textldm_effective")))

register(MethodSpec(
    name="ldlm", label="LDLM", summary="joint encoder/diffusion/decoder (unconditional)",
    stages=("joint", "post_decoder"), final_stages=("ldlm", "post_decoder"),
    **lazy("ldlm", config="config:LDLMExperimentConfig", build="config:build_ldlm_config",
           presets="config:LDLM_PRESETS", train="pipeline:train_ldlm", run="pipeline:run_ldlm",
           load_generator="generator:load_ldlm", evaluate="pipeline:evaluate_saved_ldlm",
           teacher_layers="config:ldlm_teacher_layers", effective="config:ldlm_effective",
           bundled="generator:bundled_checkpoints")))

register(MethodSpec(
    name="dlm", label="Cola DLM", summary="Cola DLM (Text VAE, then joint VAE + block-causal DiT)",
    stages=("vae", "joint"), final_stages=("dlm_joint",),
    **lazy("dlm", config="config:DLMExperimentConfig", build="config:build_dlm_config", presets="config:DLM_PRESETS",
           train="pipeline:train_dlm", run="pipeline:run_dlm", load_generator="generator:load_dlm",
           evaluate="pipeline:evaluate_saved_dlm", effective="config:dlm_effective")))

# the GPT baseline: no teacher, no knob that cannot act (its eval section is its matched config's)
register(MethodSpec(
    name="ar", label="AR (GPT)",
    summary="the GPT baseline matched to a diffusion config's DiT (size, data, token budget, protocol)",
    stages=("gpt",), final_stages=("ar",), baseline_of=("textldm", "dlm", "ldlm"),
    **lazy("ar", config="config:ARExperimentConfig", build="config:build_ar_config", presets="config:AR_PRESETS",
           train="pipeline:train_ar", run="pipeline:run_ar", load_generator="generator:load_ar",
           evaluate="pipeline:evaluate_saved_ar", sample="pipeline:sample_ar")))
