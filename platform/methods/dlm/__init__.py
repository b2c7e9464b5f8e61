"""Cola DLM: a Text VAE (the VAE stage), then the VAE jointly with a block-causal DiT (the joint stage), scored
under the continuation protocol.

Modules: ``config`` (the experiment config, presets and ``build_dlm_config``), ``train`` (both stages),
``pipeline`` (validate, train, evaluate), ``generator`` (``ColaDLMGenerator`` and ``load_dlm``; plain PyTorch,
no Ray).
"""
