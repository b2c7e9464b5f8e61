"""Checkpoints as safetensors + JSON: loadable anywhere (no Ray, no pickle), written atomically.

Layout of a checkpoint directory:
    config.json              the resolved config the modules were built from
    <name>.safetensors       one file per module (or tensor dict), e.g. vae, dit, ema, optimizer
    state.json               small non-tensor training state (step, data position, ...)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same directory + fsync + rename: readers see the old file or the new
    one, never a torn one, and a failed write leaves neither a temp file nor a damaged original.
    ``write(tmp_path)`` produces the content; an existing file's permissions are kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # durable before it becomes visible
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # safetensors refuses shared/non-contiguous storage: store independent contiguous copies.
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    return load_file(str(path), device=str(device))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is this a latentlm checkpoint directory?)")
    return json.loads(path.read_text())


def save_module(directory: Path, name: str, module: torch.nn.Module) -> None:
    save_tensors(Path(directory) / f"{name}.safetensors", module.state_dict())


def load_module(directory: Path, name: str, module: torch.nn.Module, strict: bool = True) -> torch.nn.Module:
    module.load_state_dict(load_tensors(Path(directory) / f"{name}.safetensors"), strict=strict)
    return module


def load_stage_weights(directory: Path, name: str, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """A stage's module weights: ``ema.safetensors`` when it was saved and ``use_ema``, else ``<name>.safetensors``
    (keys without the ``model.`` prefix a wrapped module saves)."""
    directory = Path(directory)
    ema = directory / "ema.safetensors"
    weights = load_tensors(ema if use_ema and ema.is_file() else directory / f"{name}.safetensors")
    return {k.removeprefix("model."): v for k, v in weights.items()}
