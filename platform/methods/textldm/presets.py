"""Named presets: the same pipeline from a CPU laptop to a GPU cluster.

* ``tiny``  — the embedded offline default; the REPA ablation (2 VAEs, 2 DiTs, 2 eval sets with their
  reference rows, the two trials side by side) takes ~19 minutes from a fresh clone on a 2-core CPU box. The VAE predicts over the
  8,191 most used token ids + 1 unknown (``data.vocab_limit``; 93% of training tokens): the 49k-way output head would
  otherwise cost several times the rest of the step. One sampling seed: the bootstrap over the 128 prompts
  carries the sampling noise into every interval. Numbers at this scale only show that the pipeline works.
* ``small`` — a single-GPU study: ~88M-param VAE (50M of it the embedding and head), ~58M-param DiT, 256-token
  windows.
* ``paper`` — TextLDM's ablation scale: Qwen3-1.7B teacher and tokenizer, 1024 tokens, 350M VAE with 128 latent
  channels, 328M DiT (needs a multi-GPU cluster and hub access).
"""
from __future__ import annotations

import copy
from typing import Any

from latentlm.models.config import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": {"seq_len": 64, "max_train_windows": 6000, "teacher_windows": 1024, "teacher_batch_size": 32,
                 "vocab_limit": 8191},
        "vae": {"latent_dim": 16, "hidden_dim": 128, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 2,
                "tie_embeddings": True, "repa": {"projector_hidden": 256}},
        "dit": {"hidden_dim": 128, "depth": 4, "n_heads": 4},
        "train_vae": {"optim": {"steps": 224, "batch_size": 32, "lr": 2e-3, "log_every": 32}},
        "train_dit": {"optim": {"steps": 336, "batch_size": 32, "lr": 1e-3, "log_every": 84, "ema_decay": 0.995}},
        "eval": {"num_samples": 128, "sampling_seeds": [1234]},
    },
    "small": {
        "data": {"seq_len": 256, "teacher_windows": 50000, "teacher_batch_size": 32},
        "vae": {"latent_dim": 64, "hidden_dim": 512, "n_heads": 8, "encoder_layers": 6, "decoder_layers": 6,
                "repa": {"projector_hidden": 1024}},
        "dit": {"hidden_dim": 512, "depth": 12, "n_heads": 8},
        "train_vae": {"optim": {"steps": 20000, "batch_size": 64, "lr": 3e-4, "log_every": 100,
                                "checkpoint_every": 2000}},
        "train_dit": {"optim": {"steps": 50000, "batch_size": 128, "lr": 3e-4, "log_every": 100,
                                "checkpoint_every": 5000, "ema_decay": 0.9999}},
        "eval": {"num_samples": 1000},
    },
    "paper": {
        "data": {"corpus": "hf:Skylion007/openwebtext", "tokenizer": "Qwen/Qwen3-1.7B", "seq_len": 1024,
                 "teacher_windows": 2_000_000, "teacher_batch_size": 8, "teacher_placement": "streamed"},
        # The paper gives parameter counts, not shapes: VAE 350M of which 223M are the token embedding and LM head
        # (the same 223M in its 502M / 690M VAEs, so width is fixed and depth grows), DiT 328M, latent channels
        # 128, a linear REPA projection. Reconstructed: untied embedding and head at width 736 give the 223M over
        # Qwen3's 151,669 tokens; 10 + 10 blocks make 354M; heads, and an even encoder/decoder split, are ours.
        # The DiT keeps DiT-L's depth 24 and 16 heads, its width 864 makes 325M. Measured on the meta device in
        # tests/test_config.py; experiments/ablate_vae_size.py and ablate_dit_size.py hold the other paper sizes.
        "vae": {"latent_dim": 128, "hidden_dim": 736, "n_heads": 8, "encoder_layers": 10, "decoder_layers": 10,
                "repa": {"teacher": "Qwen/Qwen3-1.7B", "projector_hidden": 2048}},
        "dit": {"hidden_dim": 864, "depth": 24, "n_heads": 16},
        "train_vae": {"optim": {"steps": 200_000, "batch_size": 256, "lr": 1e-4, "log_every": 100,
                                "checkpoint_every": 5000}},
        "train_dit": {"optim": {"steps": 1_000_000, "batch_size": 256, "lr": 1e-4, "log_every": 100,
                                "checkpoint_every": 10_000, "ema_decay": 0.9999}},
        "eval": {"num_samples": 1000, "bertscore_model": "roberta-large", "bertscore_num_layers": 17,
                 "mauve_model": "gpt2-large", "mauve_max_length": 1024, "genppl_model": "gpt2-large",
                 "genppl_max_length": 1024},
        "resources": {"num_workers": 8, "use_gpu": "true"},
    },
}


def preset_overrides(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return copy.deepcopy(PRESETS[name])
