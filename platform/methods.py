"""The built-in method families, registered on import (``registry`` imports this module on first use).

Each entry points at its family's own modules; nothing here is imported before it is used.
"""
from __future__ import annotations

from .registry import Lazy, MethodSpec, register

register(MethodSpec(
    name="textldm", label="TextLDM", summary="VAE then DiT (continuation)",
    config=Lazy(".experiment:TextLDMConfig"), build=Lazy(".experiment:build_config"),
    presets=Lazy(".presets:PRESETS"), stages={"vae": "train_vae", "dit": "train_dit"}, final_stages=("dit",),
    train=Lazy(".pipeline:train_textldm"), run=Lazy(".pipeline:run_textldm"),
    load_generator=Lazy("latentlm.models.textldm:load_textldm"), evaluate=Lazy(".evaluate:evaluate_checkpoint"),
    sample=Lazy(".pipeline:sample_textldm"),
    teacher_layers=Lazy(".experiment:textldm_teacher_layers"), effective=Lazy(".experiment:textldm_effective")))

register(MethodSpec(
    name="ldlm", label="LDLM", summary="joint encoder/diffusion/decoder (unconditional)",
    config=Lazy(".ldlm_config:LDLMExperimentConfig"), build=Lazy(".ldlm_config:build_ldlm_config"),
    presets=Lazy(".ldlm_config:LDLM_PRESETS"), stages={"joint": "train", "post_decoder": "post_decoder"},
    final_stages=("ldlm", "post_decoder"),
    train=Lazy(".ldlm_pipeline:train_ldlm"), run=Lazy(".ldlm_pipeline:run_ldlm"),
    load_generator=Lazy(".ldlm_pipeline:load_ldlm"), evaluate=Lazy(".ldlm_pipeline:evaluate_saved_ldlm"),
    bundled=Lazy(".ldlm_pipeline:bundled_checkpoints"),
    teacher_layers=Lazy(".ldlm_config:ldlm_teacher_layers"), effective=Lazy(".ldlm_config:ldlm_effective")))

register(MethodSpec(
    name="dlm", label="Cola DLM", summary="Cola DLM (Text VAE, then joint VAE + block-causal DiT)",
    config=Lazy(".dlm_config:DLMExperimentConfig"), build=Lazy(".dlm_config:build_dlm_config"),
    presets=Lazy(".dlm_config:DLM_PRESETS"), stages={"stage1": "stage1", "stage2": "stage2"},
    final_stages=("dlm_joint",),
    train=Lazy(".dlm_pipeline:train_dlm"), run=Lazy(".dlm_pipeline:run_dlm"),
    load_generator=Lazy(".dlm_pipeline:load_dlm"), evaluate=Lazy(".dlm_pipeline:evaluate_saved_dlm"),
    effective=Lazy(".dlm_config:dlm_effective")))

# the GPT baseline: no teacher, no knob that cannot act (its eval section is its matched config's)
register(MethodSpec(
    name="ar", label="AR (GPT)",
    summary="the GPT baseline matched to a diffusion config's DiT (size, data, token budget, protocol)",
    config=Lazy(".ar_config:ARExperimentConfig"), build=Lazy(".ar_config:build_ar_config"),
    presets=Lazy(".ar_config:AR_PRESETS"), stages={"ar": "train"}, final_stages=("ar",),
    train=Lazy(".ar_pipeline:train_ar"), run=Lazy(".ar_pipeline:run_ar"),
    load_generator=Lazy(".ar_pipeline:load_ar"), evaluate=Lazy(".ar_pipeline:evaluate_saved_ar"),
    sample=Lazy(".ar_pipeline:sample_ar"), baseline_of=("textldm", "dlm", "ldlm")))
