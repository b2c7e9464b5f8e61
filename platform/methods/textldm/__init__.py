"""TextLDM: a Text VAE, then a DiT over its latents (flow matching), scored under the continuation protocol.

Modules: ``config`` (the experiment config and ``build_config``), ``presets`` (tiny / small / paper),
``train_vae`` and ``train_dit`` (the two training stages), ``pipeline`` (validate, train, evaluate, sample),
``generator`` (the inference bundle and ``load_textldm``; plain PyTorch, no Ray).
"""
