"""Cola DLM: a Text VAE (stage 1), then the VAE jointly with a block-causal DiT (stage 2), scored under the
continuation protocol.

Modules: ``config`` (the experiment config, presets and ``build_dlm_config``), ``train`` (both stages),
``pipeline`` (validate, train, evaluate), ``generator`` (``ColaDLMGenerator`` and ``load_dlm``; plain PyTorch,
no Ray).
"""
