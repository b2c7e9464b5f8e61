"""Final checkpoints through the hub API: export keeps the publishable files only (safetensors + JSON, a model card,
bundled checkpoints), ``from_pretrained`` loads a directory or a hub id into the same generator, and
``push_to_hub`` uploads exactly the export. The hub itself is replaced by a local folder (no network here)."""
from __future__ import annotations

import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

from latentlm.models.checkpoint import save_tensors, write_json
from latentlm.platform import hub
from latentlm.platform.cli import main
from latentlm.platform.config import to_dict

TRAINING_ONLY = {"optimizer.safetensors", "rng_rank0.safetensors", "deepspeed"}
REPO_ID = "lab/tiny-ar"  # a repository of the local stand-in hub (no network here)


def _with_training_files(directory: Path) -> None:
    save_tensors(directory / "optimizer.safetensors", {"exp_avg": torch.zeros(3)})
    save_tensors(directory / "rng_rank0.safetensors", {"torch": torch.zeros(3, dtype=torch.uint8)})
    (directory / "deepspeed" / "state").mkdir(parents=True)
    (directory / "deepspeed" / "state" / "mp_rank_00_model_states.pt").write_bytes(b"a pickle")


@pytest.fixture
def ar_checkpoint(tmp_path, tiny_overrides, single_thread) -> Path:
    """A final AR checkpoint as the AR stage writes it (random weights), with training-only files beside it."""
    from latentlm.models.gpt import GPT
    from latentlm.platform.methods.ar.config import build_ar_config
    base = tiny_overrides()
    cfg = build_ar_config("tiny", {"match": "none", "data": base["data"], "eval": base["eval"],
                                   "gpt": {"hidden_dim": 32, "depth": 2, "n_heads": 2, "vocab_size": 40}})
    directory = tmp_path / "ar_final"
    torch.manual_seed(0)
    save_tensors(directory / "gpt.safetensors", {f"model.{k}": v for k, v in GPT(cfg.gpt).state_dict().items()})
    write_json(directory / "config.json", to_dict(cfg))
    write_json(directory / "state.json", {"stage": "ar", "step": 30})
    _with_training_files(directory)
    return directory


def _continue(generator) -> torch.Tensor:
    return generator.generate(torch.tensor([[5, 6, 7], [8, 9, 10]]), 6, generator=torch.Generator().manual_seed(3))


def test_export_keeps_only_publishable_files_and_loads_into_the_same_generator(ar_checkpoint, tmp_path):
    out = hub.export_checkpoint(ar_checkpoint, tmp_path / "export", repo_id="lab/tiny-ar")
    assert {p.name for p in out.iterdir()} == {"config.json", "state.json", "gpt.safetensors", "README.md"}
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: latentlm\n") and "from_pretrained('lab/tiny-ar')" in card
    assert torch.equal(_continue(hub.from_pretrained(out, use_ema=False)),
                       _continue(hub.from_pretrained(ar_checkpoint, use_ema=False)))
    with pytest.raises(FileExistsError, match="already exists"):  # never over an existing export
        hub.export_checkpoint(ar_checkpoint, out)


def test_push_uploads_the_export_and_a_hub_id_loads_it_without_pickles(ar_checkpoint, tmp_path, monkeypatch):
    import huggingface_hub
    remote = tmp_path / "hub"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
            calls.append(("upload", repo_id, commit_message))
            shutil.copytree(folder_path, remote / repo_id, dirs_exist_ok=True)
            return "commit"

    def fake_download(repo_id, revision=None, token=None, cache_dir=None, allow_patterns=None):
        local = tmp_path / "cache" / repo_id
        for path in (remote / repo_id).rglob("*"):
            relative = path.relative_to(remote / repo_id).as_posix()
            if path.is_file() and any(fnmatch(relative, p) for p in allow_patterns):
                (local / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, local / relative)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert hub.push_to_hub(ar_checkpoint, "lab/tiny-ar") == "commit"
    assert calls[0] == ("create", "lab/tiny-ar", True) and calls[1][:2] == ("upload", "lab/tiny-ar")
    uploaded = {p.name for p in (remote / "lab/tiny-ar").iterdir()}
    assert not uploaded & TRAINING_ONLY and "gpt.safetensors" in uploaded
    (remote / "lab/tiny-ar" / "extra.pt").write_bytes(b"a pickle someone added")  # never downloaded
    generator = hub.from_pretrained(REPO_ID, use_ema=False)  # through the stand-in hub above
    assert not list((tmp_path / "cache").rglob("*.pt"))
    assert torch.equal(_continue(generator), _continue(hub.from_pretrained(ar_checkpoint, use_ema=False)))


def test_a_post_trained_ldlm_decoder_is_exported_with_its_joint_stage(tmp_path, tiny_lm_dir, single_thread):
    """The post-decoder's generator reads the joint checkpoint it names by path; the export carries it as joint/,
    so the exported directory samples the same windows after the original joint directory is gone."""
    from latentlm.models.ldlm import LDLM, PostTrainedDecoder
    from latentlm.models.token_encoder import HiddenStats
    from latentlm.platform.methods.ldlm.config import build_ldlm_config
    lm = str(tiny_lm_dir)
    cfg = build_ldlm_config("tiny", {"data": {"tokenizer": lm, "seq_len": 8}, "token_encoder": {"model": lm},
                                     "eval": {"use_ema": False}, "train_post_decoder": {"enabled": True}})
    cfg.ldlm.vocab_size, cfg.ldlm.hidden_size = 40, 32
    joint, post = tmp_path / "joint_stage", tmp_path / "post_stage"
    torch.manual_seed(0)
    save_tensors(joint / "ldlm.safetensors", LDLM(cfg.ldlm).state_dict())
    save_tensors(joint / "hidden_stats.safetensors", HiddenStats(cfg.ldlm.hidden_size).state_dict())
    save_tensors(post / "post_decoder.safetensors",
                 PostTrainedDecoder(cfg.ldlm, cfg.train_post_decoder.layers, cfg.train_post_decoder.source).state_dict())
    for directory, state in ((joint, {"stage": "ldlm", "step": 5}),
                             (post, {"stage": "post_decoder", "step": 5, "joint_checkpoint": str(joint)})):
        write_json(directory / "config.json", to_dict(cfg))
        write_json(directory / "state.json", state)
    _with_training_files(joint)

    def windows(directory):
        return hub.from_pretrained(directory, use_ema=False).sample(2, 3, torch.Generator().manual_seed(1))

    expected = windows(post)
    out = hub.export_checkpoint(post, tmp_path / "export")
    assert {p.name for p in (out / "joint").iterdir()} == {"config.json", "state.json", "ldlm.safetensors",
                                                           "hidden_stats.safetensors"}
    shutil.rmtree(joint)
    assert torch.equal(windows(out), expected)


def test_cli_names_a_missing_checkpoint_and_an_existing_export(ar_checkpoint, tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"latentlm: checkpoint {tmp_path / 'nowhere'}: no such directory"
    assert main(["export", str(ar_checkpoint), str(tmp_path / "out")]) == 0
    assert main(["export", str(ar_checkpoint), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_evaluate_of_a_checkpoint_prints_only_its_json_result(ar_checkpoint, tmp_path, capsys):
    import json
    assert main(["evaluate", str(ar_checkpoint), "--out", str(tmp_path / "eval"), "--set", "eval.num_samples=4",
                 "--set", "eval.sampling_seeds=[1]"]) == 0
    result = json.loads(capsys.readouterr().out)  # libraries' progress prints go to stderr
    assert result["protocol"] == "continuation/v3" and (tmp_path / "eval" / "metrics.json").is_file()


def test_a_generator_from_in_memory_modules_equals_the_one_loaded_from_its_checkpoint(ar_checkpoint):
    """Generators are built from modules (what the generation benchmark does, writing nothing to disk); loading a
    checkpoint is only reading those modules' weights."""
    from latentlm.models.gpt import GPT
    from latentlm.platform.methods.ar.generator import ARGenerator
    loaded = hub.from_pretrained(ar_checkpoint, use_ema=False)
    torch.manual_seed(0)  # the fixture's weights
    in_memory = ARGenerator(loaded.cfg, GPT(loaded.cfg.gpt), eos_id=loaded.eos_id)
    assert torch.equal(_continue(in_memory), _continue(loaded))


def test_cli_samples_an_ar_checkpoint_with_and_without_a_prompt(ar_checkpoint, capsys):
    """Without a prompt the GPT starts a document after EOS, as every document starts in its training stream."""
    for prompt in ([], ["--prompt", "the river"]):
        assert main(["sample", str(ar_checkpoint), "--num", "2", "--length", "5", "--no-ema", *prompt]) == 0
        assert capsys.readouterr().out.count("---\n") == 2


def test_a_cola_dlm_generator_in_memory_equals_its_exported_checkpoint(tmp_path, tiny_lm_dir, single_thread):
    from latentlm.models.dlm import ColaDLM
    from latentlm.platform.methods.dlm.config import build_dlm_config
    from latentlm.platform.methods.dlm.generator import ColaDLMGenerator
    cfg = build_dlm_config("tiny", {"data": {"tokenizer": str(tiny_lm_dir), "seq_len": 16},
                                    "eval": {"fewshot": {"tasks": []}}})   # the offline tasks need 64 tokens
    cfg.dlm.vae.vocab_size = 40
    torch.manual_seed(0)
    model = ColaDLM(cfg.dlm)
    directory = tmp_path / "dlm_final"
    save_tensors(directory / "joint.safetensors", model.state_dict())
    write_json(directory / "config.json", to_dict(cfg))
    write_json(directory / "state.json", {"stage": "dlm_joint", "step": 4})
    _with_training_files(directory)
    in_memory = ColaDLMGenerator(cfg, model, eos_id=0)
    exported = hub.from_pretrained(hub.export_checkpoint(directory, tmp_path / "export"), use_ema=False)
    prompt = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    run = [g.generate(prompt, 8, steps=2, generator=torch.Generator().manual_seed(0)) for g in (in_memory, exported)]
    assert run[0].shape == (2, 8) and torch.equal(run[0], run[1])
