"""LDLM: a frozen token encoder, then a jointly trained encoder / latent diffusion / decoder (plus an optional
post-trained token decoder), scored under the unconditional protocol.

Modules: ``config`` (the experiment config, presets and ``build_ldlm_config``), ``train`` (the joint and
post-decoder stages), ``pipeline`` (validate, train, evaluate with the latent-interpolation probe),
``generator`` (``LDLMGenerator`` and ``load_ldlm``; plain PyTorch, no Ray).
"""
