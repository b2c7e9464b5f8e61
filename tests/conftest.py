"""Shared fixtures. Tests run offline, Ray-local and fast: tiny models built from configs, a tiny
word-level tokenizer and a tiny random Llama "teacher" made on the fly (no hub, no real assets), except
tests marked ``assets`` which load the real embedded default once, into a temporary LATENTLM_CACHE."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per pytest-xdist worker (set before torch loads): two workers with a thread per core each
    # oversubscribe the machine, and OpenMP's spin-waiting then makes a tiny model's test several times slower
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# (Ray Train's health-check interval is left to init_ray: its local-cluster default)
for key, value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)

WORDS = ("the a river city music people king war science old new small large early later north south "
         "language history water forest island mountain school book law art trade ship road bridge").split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + " ."


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: two workers, ``--dist loadgroup``) a test module runs on one worker, so
    its module-scoped fixtures (a trained run shared by several tests) are built once; the ``assets`` tests share
    one worker too, so the session's GGUF conversions happen once. Each worker starts its own ``ray_local``."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    groups = {}
    for item in items:
        group = "assets" if item.get_closest_marker("assets") else SHARED_GROUPS.get(item.path.stem, item.path.stem)
        item.add_marker(pytest.mark.xdist_group(group))
        groups[item] = group
    # longest groups first (with --no-loadscope-reorder, which `make test` passes, the workers take groups in this
    # order; pytest-xdist's own order is by test count, which put the longest groups last and left one worker idle)
    items.sort(key=lambda item: LONGEST_GROUPS.index(groups[item]) if groups[item] in LONGEST_GROUPS
               else len(LONGEST_GROUPS))


# modules that share a session fixture run on one worker, which builds it once
SHARED_GROUPS = {"test_sweep": "sweeps", "test_job_submit": "sweeps",  # all three use cfg_sweep (its stages, its rows)
                 "test_object_storage": "sweeps"}
# the groups that take longest, longest first (measured under `make test` on the 2-core box: 510 to 23 worker-s)
LONGEST_GROUPS = ["sweeps", "test_cluster_drill", "test_dlm_pipeline", "test_deepspeed", "test_ldlm_pipeline", "assets",
                  "test_teacher_placement", "test_ar_pipeline", "test_data", "test_harness", "test_pipeline",
                  "test_resume", "test_gpu_check", "test_lm_eval_model"]


@pytest.fixture(scope="session")
def asset_cache(tmp_path_factory):
    """A fresh LATENTLM_CACHE for the whole session (``assets`` tests convert into it, once)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("latentlm-cache")
        mp.setenv("LATENTLM_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def gemma3(asset_cache):
    """The embedded Gemma-3-270m Gen-PPL scorer, converted from its GGUF chunks once per session (~1 min)."""
    import time
    from latentlm.platform.data import assets
    start = time.perf_counter()
    path = assets.gemma3_dir()
    print(f"\nGemma-3-270m GGUF -> safetensors conversion: {time.perf_counter() - start:.1f} s")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A JSONL corpus of 400 synthetic documents (3-6 sentences each)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for _ in range(400):
            f.write(json.dumps({"text": " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A word-level tokenizer over WORDS plus a tiny random LlamaForCausalLM saved with it (teacher/scorer)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    vocab = {"<|endoftext|>": 0, "<unk>": 1, ".": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>", model_max_length=512)
    directory = tmp_path_factory.mktemp("tiny_lm")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, eos_token_id=0, pad_token_id=0))
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_overrides(tiny_corpus, tiny_lm_dir):
    """``tiny_overrides(**sections)``: config overrides for a ~1-minute TextLDM run on the tiny corpus,
    tokenizer and teacher (``sections`` are merged in, e.g. ``vae={"latent_dim": 4}``)."""
    from latentlm.platform.config import merge
    lm = str(tiny_lm_dir)
    base = {
        "data": {"corpus": str(tiny_corpus), "tokenizer": lm, "seq_len": 32, "teacher_windows": 128,
                 "teacher_batch_size": 32, "valid_fraction": 0.1, "test_fraction": 0.1, "vocab_limit": 24},
        "vae": {"latent_dim": 8, "hidden_dim": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                "repa": {"teacher": lm, "layer": -2, "projector_hidden": 32}},
        "dit": {"hidden_dim": 32, "depth": 2, "n_heads": 2},
        "train_vae": {"optim": {"steps": 40, "batch_size": 16, "lr": 3e-3, "log_every": 20}},
        "train_dit": {"optim": {"steps": 30, "batch_size": 16, "lr": 1e-3, "log_every": 15, "ema_decay": 0.9},
                      "normalizer_windows": 32},
        "eval": {"datasets": [str(tiny_corpus)], "num_samples": 8, "min_tokens": 10, "steps": 4, "batch_size": 8,
                 "bertscore_model": lm, "bertscore_num_layers": 2, "mauve_model": lm, "genppl_model": lm,
                 "sampling_seeds": [1, 2], "mauve_kmeans_seeds": [25, 26]},
        "wandb": False,
    }
    return lambda **sections: merge(base, sections)


@pytest.fixture(scope="session")
def micro_overrides(tiny_overrides):
    """``tiny_overrides`` with both TextLDM stages cut to 12 steps: for tests of the machinery around training
    (sweeps, their restore, job submission), not of what training learns."""
    from latentlm.platform.config import merge
    short = {"optim": {"steps": 12, "log_every": 6, "warmup_steps": 2}}
    return lambda **sections: tiny_overrides(**merge({"train_vae": short, "train_dit": short}, sections))


@pytest.fixture(scope="session")
def cfg_sweep(micro_overrides, tmp_path_factory, ray_local):
    """A TextLDM CFG sweep on ``micro_overrides`` (REPA at the main job's layer, -3): one VAE, one DiT, two
    evaluations under ``<root>/runs``. Returns (exit code, config file, runs dir). Its trained stages are reused
    by the tests of a sweep's restore and of ``ray job submit``, which are about those, not about training."""
    import yaml
    from latentlm.platform.sweep import sweep_main
    root = tmp_path_factory.mktemp("cfg_sweep")
    config = root / "micro.yaml"
    config.write_text(yaml.safe_dump(micro_overrides(vae={"repa": {"layer": -3}})))
    code = sweep_main("cfg", lambda preset: {"eval.cfg_scale": [1.0, 5.0]}, "CFG sweep",
                      ["--config", str(config), "--run-dir", str(root / "runs")])
    return code, config, root / "runs"


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models: one intra-op thread is fastest and immune to OpenMP spin-waits on a busy machine."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray cluster for the whole session, in its own temp dir; shut down and removed after.
    The dir is short and directly under /tmp: Ray's Unix sockets live in it and a socket path may not exceed 107
    bytes (pytest's temp dirs under pytest-xdist are too deep)."""
    import shutil
    import tempfile
    import ray
    from latentlm.platform.training.launch import init_ray
    temp_dir = tempfile.mkdtemp(prefix="lray-", dir="/tmp")
    init_ray(num_cpus=2, temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
