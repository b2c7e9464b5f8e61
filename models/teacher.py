"""A frozen pretrained LM whose hidden states are REPA targets (TextLDM) or latent-encoder inputs (LDLM).

Any Hugging Face model with ``output_hidden_states`` works: a local directory (the embedded SmolLM2
conversion) or a hub name such as ``Qwen/Qwen3-1.7B`` on a machine with hub access.
``hidden_states`` has ``num_layers + 1`` entries (index 0 is the embedding output), and layers are
addressed Python-style, so -3 is the third from last.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import ConfigError


def resolve_layer(layer: int, num_layers: int, field: str = "vae.repa.layer") -> int:
    """Validate a Python-style index into hidden_states (len num_layers + 1) and make it non-negative."""
    size = num_layers + 1
    if not -size <= layer < size:
        raise ConfigError(f"{field}: the teacher has {num_layers} layers, so hidden_states indices run from "
                          f"{-size} to {size - 1}; got {layer}")
    return layer % size


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def load_teacher_config(name_or_path: str, field: str = "teacher"):
    """The teacher's Hugging Face config; ConfigError (naming ``field``) when it cannot be read, and for a local
    directory without weight files (the teacher would fail later, inside a Ray actor or a training worker)."""
    from transformers import AutoConfig
    local = Path(name_or_path).is_dir()
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{field}: cannot load the model {name_or_path!r} (a local directory or a hub name "
                          f"reachable from here was expected): {str(err).splitlines()[0]}") from None
    if local and not any(next(Path(name_or_path).glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ConfigError(f"{field}: {name_or_path} holds a config but no weights ({', '.join(WEIGHT_FILES)})")
    return config


def teacher_num_layers(config) -> int:
    text = getattr(config, "text_config", None) or config
    return int(text.num_hidden_layers)


def teacher_hidden_size(config) -> int:
    text = getattr(config, "text_config", None) or config
    return int(text.hidden_size)


class FrozenTeacher(nn.Module):
    """Frozen LM returning hidden states at fixed layers. Runs in eval mode under inference_mode."""

    def __init__(self, name_or_path: str, layers: list[int], dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import AutoModel
        local = Path(name_or_path).is_dir()
        self.model = AutoModel.from_pretrained(name_or_path, local_files_only=local, dtype=dtype).to(device).eval()
        self.model.requires_grad_(False)
        self.num_layers = teacher_num_layers(self.model.config)
        self.hidden_size = teacher_hidden_size(self.model.config)
        self.layers = [resolve_layer(layer, self.num_layers) for layer in layers]

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """(B, T) -> {layer: (B, T, hidden_size)} for each requested (non-negative) layer index."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return {layer: out.hidden_states[layer] for layer in self.layers}
