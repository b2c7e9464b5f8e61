"""The autoregressive baseline: a GPT matched to a diffusion config's DiT (size, data, token budget) and scored
under that config's protocol.

Modules: ``config`` (the experiment config, the matching and ``build_ar_config``), ``train`` (the GPT stage),
``pipeline`` (validate, train, evaluate, sample), ``generator`` (``ARGenerator`` and ``load_ar``; plain
PyTorch, no Ray).
"""
