"""What every family's training stages share: the config sections (``sections``), the one Ray Train loop
(``loop``) over an optimisation engine (``engine``: plain PyTorch or DeepSpeed ZeRO) and its parts (``parts``:
worker set-up, optimiser, EMA, batch streaming, checkpoints), launching a stage on Ray (``launch``), the
content-addressed stage cache (``stages``), experiment tracking (``tracking``) and progress logging
(``progress``).
"""
