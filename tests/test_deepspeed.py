"""DeepSpeed ZeRO under Ray Train on CPU: ZeRO stages 1, 2 and 3 with 2 workers reproduce a plain
single-process run's per-step losses, batch plans fail fast, bf16 runs (smoke), engine pieces.

How the runs are made comparable: ``data.ingest: replicated``, so every worker streams the whole dataset in the
same order and takes its rows of each global batch (``training.parts.stream_batches``), and the 2-worker runs see
exactly the single-process run's batches; the logged loss is the mean over the global batch (all ranks). Random
truncation is off and the VAE posterior variance is pinned to exp(-30) (``logvar_min = logvar_max =
-30``), because the ranks' posterior noise streams are independent by design (seeded per rank) and would
otherwise differ from the single process's. What remains is fp32 rounding: gradients are summed in a
different order (per-rank partial means + all-reduce / reduce-scatter vs one mean, 1 vs 2 intra-op
threads). Measured over 6 steps (lr 3e-3, losses 3.25 -> 2.75): max |loss difference| 2.4e-7 (ZeRO-1),
4.8e-7 (ZeRO-2, 2 accumulation steps), 2.4e-7 (ZeRO-3); final weights within 1.3e-6. The tolerances
below leave a 15-20x margin over that; a run whose batches differ by a single row is already off by
far more (see ``test_tolerance_detects_one_changed_row``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.models.config import ConfigError
from latentlm.platform.config import merge, to_dict
from latentlm.platform.methods.textldm.config import build_config
from latentlm.platform.training.engine import batch_plan, compute_dtype

STEPS = 6
LOSS_TOLERANCE = 1e-5     # absolute, per-step loss (module docstring: why, and what was measured)
WEIGHT_TOLERANCE = 2e-5   # absolute, final consolidated weights
TOKEN_COLUMNS = ["tokens", "length", "doc_id"]


# -- helpers shared with test_resume.py -------------------------------------------------------------

def vae_config(tiny_overrides, **sections):
    """A tiny VAE-stage config on 2 CPU workers (0.5 CPU each: Ray Data needs the rest, stack-probe gotcha 1)."""
    base = {"vae": {"repa": {"enabled": False}},
            "train_vae": {"optim": {"steps": STEPS, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2,
                                    "log_every": 1}},
            "resources": {"num_workers": 2, "cpus_per_worker": 0.5}}
    return build_config("tiny", tiny_overrides(**merge(base, sections)))


def prepare(cfg, tmp_path_factory):
    """Tokenize once per session (cached); returns (artifacts, VAE dataset, DiT dataset)."""
    from latentlm.platform.data.windows import prepare_data
    from latentlm.platform.training.launch import training_dataset
    artifacts = prepare_data(cfg, tmp_path_factory.getbasetemp() / "vae-data", need_teacher=False)
    limit = cfg.data.materialize_max_mb
    vae_data = training_dataset(artifacts.vae_train, TOKEN_COLUMNS, limit, artifacts.vae_windows)
    return artifacts, vae_data, training_dataset(artifacts.train, TOKEN_COLUMNS, limit)


def run_vae(cfg, data, run_dir: Path, max_failures: int = 0, **loop_extra) -> tuple[Path, dict[int, dict]]:
    """Train the VAE stage through ``launch.run_stage``; returns (checkpoint dir, metrics by step)."""
    from latentlm.platform.training.launch import run_stage
    from latentlm.platform.methods.textldm.train_vae import train_vae_loop
    artifacts, dataset, _ = data
    cfg.vae.vocab_size = artifacts.vocab_size
    run_dir.mkdir(parents=True, exist_ok=True)
    loop_config = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": run_dir.name,
                   "vocab": artifacts.vocab, "teacher_dim": None, **loop_extra}
    checkpoint = run_stage(train_vae_loop, loop_config, dataset, "vae", run_dir / "ray", cfg.resources,
                           max_failures=max_failures)
    return Path(checkpoint), read_metrics(run_dir / "vae_metrics.jsonl")


def read_metrics(path: Path) -> dict[int, dict]:
    """Metrics by step; a step redone after a restart keeps its last line."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {m["step"]: m for m in lines}


# -- ZeRO parity -----------------------------------------------------------------------------------

def parity_config(tiny_overrides, **deepspeed):
    return vae_config(tiny_overrides, vae={"logvar_min": -30.0, "logvar_max": -30.0},
                      train_vae={"random_truncation": 0.0}, deepspeed=deepspeed, data={"ingest": "replicated"})


@pytest.fixture(scope="module")
def data(tiny_overrides, tmp_path_factory, ray_local):
    return prepare(parity_config(tiny_overrides), tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tiny_overrides, data, tmp_path_factory):
    """The plain single-process run: 1 worker, no DeepSpeed, the whole global batch of 16 at once."""
    cfg = parity_config(tiny_overrides, enabled=False)
    cfg.resources.num_workers = 1
    return run_vae(cfg, data, tmp_path_factory.mktemp("reference"))


@pytest.mark.ray
@pytest.mark.parametrize("stage, micro_batch_size", [(1, 0), (2, 4), (3, 0)])
def test_zero_stages_match_single_process(tiny_overrides, data, reference, tmp_path, stage, micro_batch_size):
    """2 workers x ZeRO stage (stage 2 with micro-batch 4: 2 accumulation steps) vs the single process."""
    cfg = parity_config(tiny_overrides, enabled=True, zero_stage=stage, micro_batch_size=micro_batch_size)
    checkpoint, metrics = run_vae(cfg, data, tmp_path / "run")
    ref_checkpoint, ref_metrics = reference
    assert sorted(metrics) == sorted(ref_metrics) == list(range(1, STEPS + 1))
    diffs = [abs(metrics[s]["loss"] - ref_metrics[s]["loss"]) for s in ref_metrics]
    print(f"ZeRO-{stage}: max |loss - reference| = {max(diffs):.2e} over {STEPS} steps "
          f"(losses {ref_metrics[1]['loss']:.4f} -> {ref_metrics[STEPS]['loss']:.4f})")
    assert max(diffs) <= LOSS_TOLERANCE, diffs
    assert ref_metrics[STEPS]["loss"] < ref_metrics[1]["loss"]  # it trains
    for s in ref_metrics:
        assert metrics[s]["lr"] == pytest.approx(ref_metrics[s]["lr"], rel=1e-12)
        assert metrics[s]["grad_norm"] == pytest.approx(ref_metrics[s]["grad_norm"], rel=1e-3)

    # The consolidated export holds the full fp32 weights (gathered under ZeRO-3) and matches the reference.
    weights, ref_weights = load_tensors(checkpoint / "vae.safetensors"), load_tensors(ref_checkpoint / "vae.safetensors")
    assert weights.keys() == ref_weights.keys()
    worst = max(float((weights[k] - ref_weights[k]).abs().max()) for k in weights)
    print(f"ZeRO-{stage}: max |weight - reference| = {worst:.2e}")
    assert all(weights[k].shape == ref_weights[k].shape and weights[k].dtype == torch.float32 for k in weights)
    assert worst <= WEIGHT_TOLERANCE
    # Ray merged both ranks' checkpoint dirs: each rank's ZeRO shard is there.
    shards = {p.name for p in (checkpoint / "deepspeed" / "state").iterdir()}
    assert any("rank_0" in n for n in shards) and any("rank_1" in n for n in shards), shards
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors", "state.json", "config.json"} <= {
        p.name for p in checkpoint.iterdir()}


@pytest.mark.ray
def test_bf16_dit_stage_smoke(tiny_overrides, data, reference, tmp_path):
    """The DiT stage in bf16 under ZeRO-3 (EMA over gathered parameters) on the reference VAE, per-rank data;
    the export is fp32 and samples without Ray or DeepSpeed."""
    from latentlm.platform.methods.textldm.generator import load_textldm
    from latentlm.platform.training.launch import run_stage
    from latentlm.platform.methods.textldm.train_dit import train_dit_loop
    artifacts, _, dit_data = data
    cfg = parity_config(tiny_overrides, enabled=True, zero_stage=3, precision="bf16")
    cfg.data.ingest = "per_rank"  # each worker fits the normaliser on, then trains on, its own split
    cfg.vae.vocab_size = artifacts.vocab_size
    cfg.train_dit.optim.steps, cfg.train_dit.optim.log_every, cfg.train_dit.optim.warmup_steps = 4, 2, 1
    loop_config = {"experiment": to_dict(cfg), "run_dir": str(tmp_path), "run_name": "bf16", "vocab": artifacts.vocab,
                   "vae_checkpoint": str(reference[0])}
    checkpoint = Path(run_stage(train_dit_loop, loop_config, dit_data, "dit", tmp_path / "ray", cfg.resources,
                                max_failures=0))
    metrics = read_metrics(tmp_path / "dit_metrics.jsonl")
    assert sorted(metrics) == [2, 4] and all(np.isfinite(m["loss"]) for m in metrics.values())
    assert "mfu" not in metrics[4] and metrics[4]["tokens_per_s"] > 0  # MFU is GPU-only
    assert all(t.dtype == torch.float32 for t in load_tensors(checkpoint / "dit.safetensors").values())
    model = load_textldm(checkpoint)
    out = model.generate(torch.randint(3, 20, (2, 6)), 8, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8)


@pytest.mark.ray
def test_bad_micro_batch_fails_before_training(tiny_overrides, data, tmp_path):
    cfg = parity_config(tiny_overrides, micro_batch_size=3)
    with pytest.raises(ConfigError, match=r"deepspeed.micro_batch_size: train_vae.optim.batch_size = 16 .* 3 x 2"):
        run_vae(cfg, data, tmp_path / "run")
    assert not (tmp_path / "run" / "ray").exists()  # no trainer was started


# -- engine pieces (no Ray) ------------------------------------------------------------------------

def test_batch_plan():
    assert batch_plan(16, 0, 2) == (8, 1)
    assert batch_plan(16, 4, 2) == (4, 2)
    assert batch_plan(32, 2, 4) == (2, 4)
    assert batch_plan(7, 7, 1) == (7, 1)
    with pytest.raises(ConfigError, match=r"deepspeed.micro_batch_size: optim.batch_size = 16 .* 3 x 2 workers"):
        batch_plan(16, 3, 2)
    with pytest.raises(ConfigError, match=r"0 \(automatic: optim.batch_size / workers = 7\) x 2 workers"):
        batch_plan(15, 0, 2)
    with pytest.raises(ConfigError, match="deepspeed.micro_batch_size"):
        batch_plan(2, 0, 4)  # fewer rows than workers


def test_compute_dtype():
    cpu = torch.device("cpu")
    assert compute_dtype("auto", cpu) == torch.float32
    assert compute_dtype("bf16", cpu) == torch.bfloat16
    assert compute_dtype("fp32", cpu) == torch.float32


def test_peak_flops_table(monkeypatch):
    from latentlm.platform.training import parts as training
    assert training.peak_flops(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert training.peak_flops(torch.device("cuda")) == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert training.peak_flops(torch.device("cuda")) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert training.peak_flops(torch.device("cuda")) == 362e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert training.peak_flops(torch.device("cuda")) is None  # no MFU rather than a wrong one
    monkeypatch.setenv("LATENTLM_PEAK_FLOPS", "1e15")
    assert training.peak_flops(torch.device("cuda")) == 1e15
    meter = training.Throughput(1000, torch.device("cuda"), world_size=2)
    meter.add(10_000)
    rates = meter.metrics()
    assert rates["mfu"] == pytest.approx(6 * 1000 * rates["tokens_per_s"] / 2e15)


def test_tolerance_detects_one_changed_row():
    """The parity tolerance discriminates: the same 6-step run with one of 16 rows of each batch
    replaced drifts from the original by far more than LOSS_TOLERANCE."""
    from latentlm.models.text_vae import TextVAE, TextVAEConfig
    from latentlm.platform.training.engine import TorchEngine
    from latentlm.platform.training.sections import OptimConfig
    from latentlm.platform.training.parts import WorkerContext

    def losses(change_row: bool) -> list[float]:
        torch.manual_seed(0)
        vae = TextVAE(TextVAEConfig(vocab_size=25, latent_dim=8, hidden_dim=32, n_heads=2, encoder_layers=1,
                                    decoder_layers=1, max_seq_len=32, logvar_min=-30.0, logvar_max=-30.0,
                                    repa={"enabled": False}))
        optim = OptimConfig(steps=STEPS, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1)
        engine = TorchEngine(vae, optim, WorkerContext(0, 1, torch.device("cpu")), 16, 1, torch.float32, "vae")
        out = []
        for step in range(STEPS):
            tokens = torch.randint(0, 25, (16, 32), generator=torch.Generator().manual_seed(step))
            if change_row:
                tokens[-1] = torch.randint(0, 25, (32,), generator=torch.Generator().manual_seed(100 + step))
            loss = engine(tokens).loss
            engine.backward(loss)
            engine.step()
            out.append(loss.item())
        return out

    drift = max(abs(a - b) for a, b in zip(losses(False), losses(True)))
    print(f"one changed row in 16: max loss drift {drift:.2e}")
    assert drift > 100 * LOSS_TOLERANCE, drift
