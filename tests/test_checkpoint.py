"""Checkpoints: safetensors + JSON, exact round trips, atomic writes, no pickle anywhere."""
from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from latentlm.models import checkpoint as ckpt
from latentlm.models.checkpoint import load_module, load_tensors, read_json, save_module, save_tensors, write_json
from latentlm.models.dit import TextDiT, TextDiTConfig
from latentlm.models.repa import REPAConfig
from latentlm.models.text_vae import TextVAE, TextVAEConfig
from latentlm.platform.methods.textldm.generator import LatentNormalizer

pytestmark = pytest.mark.usefixtures("single_thread")
D = 8


def make_vae(seed: int) -> TextVAE:
    torch.manual_seed(seed)
    cfg = TextVAEConfig(vocab_size=40, latent_dim=D, hidden_dim=32, n_heads=2, encoder_layers=2, decoder_layers=1,
                        repa=REPAConfig(enabled=True, align_at=1, projector_hidden=16, projector_depth=2))
    return TextVAE(cfg, teacher_dim=12).eval()


def make_dit(seed: int) -> TextDiT:
    torch.manual_seed(seed)
    dit = TextDiT(TextDiTConfig(latent_dim=D, hidden_dim=32, depth=2, n_heads=2)).eval()
    with torch.no_grad():  # move away from adaLN-Zero so the output depends on every weight
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return dit


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_vae_roundtrip_gives_identical_outputs(tmp_path):
    vae = make_vae(0)
    tokens = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(2, 9, 12, generator=torch.Generator().manual_seed(1))
    save_module(tmp_path, "vae", vae)
    fresh = make_vae(1)
    assert not torch.equal(fresh.encode(tokens)[0], vae.encode(tokens)[0])
    assert load_module(tmp_path, "vae", fresh) is fresh
    for a, b in zip(vae.encode(tokens), fresh.encode(tokens)):
        assert torch.equal(a, b)
    mu = vae.encode(tokens)[0]
    assert torch.equal(vae.decode(mu), fresh.decode(mu))
    out_a, out_b = vae(tokens, teacher_features=teacher), fresh(tokens, teacher_features=teacher)
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(out_a.repa, out_b.repa)
    assert listing(tmp_path) == ["vae.safetensors"]


def test_dit_and_normalizer_roundtrip_gives_identical_outputs(tmp_path):
    dit = make_dit(0)
    norm = LatentNormalizer(D).fit(torch.randn(50, D) * 3 + 1)
    x, ctx, t = torch.randn(2, 5, D), torch.randn(2, 3, D), torch.tensor([0.3, 0.8])
    save_module(tmp_path, "dit", dit)
    save_module(tmp_path, "normalizer", norm)
    fresh, fresh_norm = make_dit(1), LatentNormalizer(D)
    assert not torch.equal(fresh(x, t, ctx), dit(x, t, ctx))
    load_module(tmp_path, "dit", fresh)
    load_module(tmp_path, "normalizer", fresh_norm)
    assert torch.equal(fresh(x, t, ctx), dit(x, t, ctx))
    assert torch.equal(fresh.forward_with_cfg(x, t, ctx, 3.0), dit.forward_with_cfg(x, t, ctx, 3.0))
    assert torch.equal(fresh_norm.mean, norm.mean) and torch.equal(fresh_norm.std, norm.std)
    for (k, a), (k2, b) in zip(dit.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_load_module_strict_rejects_a_different_architecture(tmp_path):
    save_module(tmp_path, "dit", make_dit(0))
    torch.manual_seed(0)
    deeper = TextDiT(TextDiTConfig(latent_dim=D, hidden_dim=32, depth=3, n_heads=2))
    with pytest.raises(RuntimeError):
        load_module(tmp_path, "dit", deeper)


def test_saved_files_are_safetensors_not_pickle(tmp_path):
    dit = make_dit(0)
    save_module(tmp_path, "dit", dit)
    path = tmp_path / "dit.safetensors"
    raw = path.read_bytes()
    assert not raw.startswith(b"PK") and not raw.startswith(b"\x80")  # neither torch zip nor raw pickle
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert set(header) - {"__metadata__"} == set(dit.state_dict())
    loaded = load_file(str(path))
    assert set(loaded) == set(dit.state_dict())
    for k, v in dit.state_dict().items():
        assert torch.equal(loaded[k], v)


def test_no_pickle_is_used(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle / torch.save / torch.load must not be used for checkpoints")
    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    vae = make_vae(0)
    save_module(tmp_path, "vae", vae)
    fresh = load_module(tmp_path, "vae", make_vae(1))
    for k, v in vae.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    write_json(tmp_path / "state.json", {"step": 3})
    assert read_json(tmp_path / "state.json") == {"step": 3}


def test_save_tensors_roundtrip_metadata_and_awkward_tensors(tmp_path):
    shared = torch.arange(12.0)
    tensors = {
        "a": shared,
        "b": shared.view(3, 4),            # shares storage with "a"
        "c": torch.arange(6).view(2, 3).t(),  # non-contiguous, integer
        "d": torch.randn(2, 2, dtype=torch.bfloat16),
        "e": torch.tensor(True),
    }
    path = tmp_path / "nested" / "dir" / "t.safetensors"  # parents are created
    save_tensors(path, tensors, metadata={"format": "pt", "step": "7"})
    loaded = load_tensors(path)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "step": "7"}
    # the saved copies are independent of the caller's tensors
    shared.add_(1)
    assert torch.equal(load_tensors(path)["a"], torch.arange(12.0))


def test_save_tensors_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"x": torch.ones(3)})
    save_tensors(path, {"x": torch.full((3,), 2.0), "y": torch.zeros(1)})  # overwrite in place
    assert listing(tmp_path) == ["w.safetensors"]
    loaded = load_tensors(path)
    assert torch.equal(loaded["x"], torch.full((3,), 2.0)) and set(loaded) == {"x", "y"}

    # written to a temp file in the same directory, then swapped in with os.replace (never in place)
    calls = []
    real_replace = ckpt.os.replace

    def spy(src, dst):
        calls.append((str(src), str(dst)))
        # until the swap, the destination still holds the previous, complete checkpoint
        assert torch.equal(load_file(str(dst))["x"], torch.full((3,), 2.0))
        assert torch.equal(load_file(str(src))["x"], torch.full((3,), 3.0))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", spy)
    save_tensors(path, {"x": torch.full((3,), 3.0)})
    monkeypatch.undo()
    assert len(calls) == 1
    src, dst = calls[0]
    assert dst == str(path) and src != dst and os.path.dirname(src) == str(tmp_path)
    assert listing(tmp_path) == ["w.safetensors"]
    assert torch.equal(load_tensors(path)["x"], torch.full((3,), 3.0))


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"x": torch.ones(3)})
    with pytest.raises(Exception):
        save_tensors(path, {"x": torch.ones(3)}, metadata={"step": 1})  # non-str metadata: safetensors refuses
    assert torch.equal(load_tensors(path)["x"], torch.ones(3))


def test_failed_save_leaves_no_temp_files(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"x": torch.ones(3)})
    with pytest.raises(Exception):
        save_tensors(path, {"x": torch.ones(3)}, metadata={"step": 1})
    with pytest.raises(Exception):
        save_tensors(path, {"x": 3})  # not a tensor
    assert listing(tmp_path) == ["w.safetensors"]


def test_missing_files_raise_file_not_found_naming_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors") as info:
        load_tensors(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match="ghost.safetensors"):
        load_module(tmp_path, "ghost", make_dit(0))
    with pytest.raises(FileNotFoundError, match="state.json"):
        read_json(tmp_path / "state.json")
    # a directory of that name is not a checkpoint file either
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(FileNotFoundError):
        load_tensors(tmp_path / "dir.safetensors")


def test_json_roundtrip_is_atomic(tmp_path):
    write_json(tmp_path / "config.json", {"b": 1, "a": {"x": [1, 2]}, "p": tmp_path})
    write_json(tmp_path / "config.json", {"b": 2, "a": {"x": [3]}, "p": tmp_path})
    assert read_json(tmp_path / "config.json") == {"b": 2, "a": {"x": [3]}, "p": str(tmp_path)}
    assert listing(tmp_path) == ["config.json"]
