"""experiments/gpu_check.py on CPU at the tiny preset, run as on the GPU machine (the checkout on PYTHONPATH through
the cluster shim, no Ray, DeepSpeed, mauve-text or W&B importable), and the FLOPs count behind its MFU."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentlm.platform.training.flops import (AttentionCounter, mfu, training_flops_per_token,
                                              transformer_attention_flops)
from latentlm.platform.training.parts import peak_flops

ROOT = Path(__file__).resolve().parents[1]
STAGES = {("textldm", "vae"), ("textldm", "dit"), ("ldlm", "ldlm"), ("ldlm", "post_decoder"), ("dlm", "dlm_vae"),
          ("dlm", "dlm_joint"), ("ar", "ar")}
# what the GPU machine's python lacks (None in sys.modules: "import ray" raises ImportError, find_spec says absent)
ABSENT = ("ray", "deepspeed", "mauve", "wandb", "datasets", "lm_eval", "bert_score", "rouge_score", "faiss", "sklearn",
          "scipy", "gguf", "accelerate", "matplotlib")
# the smallest run that still takes every path: a warm-up step, timed steps, a two-step bf16 comparison
ARGV = ["--device", "cpu", "--steps", "3", "--preset", "tiny", "--warmup", "1", "--compare-steps", "2",
        "--batch-size", "2", "--sample-lengths", "16,32", "--sample-batch", "2"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    code = ("import runpy, sys\n"
            f"for name in {ABSENT!r}:\n    sys.modules[name] = None\n"
            "sys.argv = ['experiments/gpu_check.py', *sys.argv[1:]]\n"
            "runpy.run_path('experiments/gpu_check.py', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": "cluster/pythonpath", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *ARGV, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (out / "gpu_check.md").is_file()
    return {**json.loads((out / "gpu_check.json").read_text()), "markdown": (out / "gpu_check.md").read_text()}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_every_stage_has_finite_throughput_flops_and_loss_agreement(report):
    assert report["device_type"] == "cpu" and report["torch"] == torch.__version__ and report["date"]
    rows = {(r["family"], r["stage"]): r for r in report["training"]}
    assert set(rows) == STAGES
    for key, r in rows.items():
        assert "error" not in r, (key, r)
        assert r["timed_steps"] == 3 and r["precision"] == "fp32" and r["batch_size"] == 2
        for name in ("steps_per_s", "tokens_per_s", "flops_per_token", "attention_flops_per_token",
                     "loss_rel_diff_max"):
            assert finite(r[name]) and r[name] >= 0, (key, name, r[name])
        assert r["tokens_per_s"] == pytest.approx(r["steps_per_s"] * r["batch_size"] * r["seq_len"])
        assert r["attention_flops_per_token"] > 0 and r["flops_per_token"] > 6 * r["params"]
        assert len(r["losses_bf16"]) == len(r["losses_fp32"]) == r["compare_steps"] == 2
        assert all(finite(x) for x in r["losses_bf16"] + r["losses_fp32"])
        assert r["loss_rel_diff_max"] < 0.05, (key, r["losses_bf16"], r["losses_fp32"])  # same init, same batches
        assert f"| {r['stage']} |" in report["markdown"]
    # the GPT's attention term is the hand count 12 L d T (all its attention is trained self-attention)
    ar = rows[("ar", "ar")]
    assert ar["attention_flops_per_token"] == pytest.approx(ar["flops_per_token"] - 6 * ar["params"])


def test_mfu_and_peak_memory_are_absent_on_cpu(report):
    assert report["peak_flops"] is None
    assert all(r["mfu"] is None and r["peak_memory_gib"] is None for r in report["training"])
    assert peak_flops(torch.device("cpu")) is None and mfu(1e9, 1e3, None) is None


def test_sampling_rows_against_the_matched_ar_baseline(report):
    rows = {(r["family"], r["length"]): r for r in report["sampling"]}
    assert set(rows) == {("textldm", 16), ("textldm", 32), ("dlm", 16), ("dlm", 32), ("ldlm", 64)}
    for key, r in rows.items():
        assert "error" not in r, (key, r)
        assert all(finite(r[name]) and r[name] > 0 for name in ("tokens_per_s", "ar_tokens_per_s", "vs_ar"))
        assert r["vs_ar"] == pytest.approx(r["tokens_per_s"] / r["ar_tokens_per_s"])
        assert f"matched to {key[0]}:tiny" in r["ar_settings"]
    assert "window" in rows[("ldlm", 64)]["note"]  # LDLM samples its fixed window whatever length was asked


def test_attention_counter_matches_the_hand_count_of_a_gpt():
    """L layers of causal self-attention in width d over T tokens: 12 L d T FLOPs per token forward + backward
    (QK^T and PV, 2 T d each per query, x3 with the backward), a third of it forward only."""
    from latentlm.models.gpt import GPT, GPTConfig
    layers, width, seq, batch = 3, 32, 16, 2
    model = GPT(GPTConfig(vocab_size=50, hidden_dim=width, depth=layers, n_heads=4, max_seq_len=seq))
    tokens = torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(0))
    with AttentionCounter() as counter:
        model.loss(tokens).backward()
    assert transformer_attention_flops(layers, width, seq) == 12 * 3 * 32 * 16 == 18432
    assert counter.per_token(batch * seq) == 18432
    with torch.no_grad(), AttentionCounter() as counter:
        model(tokens)
    assert counter.flops == 18432 * batch * seq // 3
    assert training_flops_per_token(1000, 18432) == 6 * 1000 + 18432
    assert mfu(100.0, 10.0, 1000.0) == pytest.approx(1.0)


def test_attention_counter_counts_cross_attention_shapes():
    """Queries Tq over keys Tk, head dims Dqk and Dv: 2 Tq Tk (Dqk + Dv) per batch row and head (a frozen call)."""
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    with AttentionCounter() as counter:
        F.scaled_dot_product_attention(q, k, v)
        F.scaled_dot_product_attention(query=q, key=k, value=v)
    assert counter.flops == 2 * (2 * 3) * (2 * 5 * 7 * (8 + 4))
