"""Training-step throughput: a bare PyTorch loop vs the same model and data under Ray Train, with and
without DeepSpeed ZeRO-1/2 (not a test; numbers depend on the machine).

Every variant trains the same TextVAE on the same fixed random batch with the same AdamW + warmup/cosine
schedule and clipping. Steps/s are measured inside the training process after warmup steps, so Ray's
start-up is excluded (it is listed separately as the fit's wall time). Ratios are against the bare loop
measured in this process.

    python experiments/bench_training.py                      # 30 timed steps, 1 worker
    python experiments/bench_training.py --steps 50 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

MODEL = {"vocab_size": 4096, "latent_dim": 16, "hidden_dim": 128, "n_heads": 4, "encoder_layers": 2,
         "decoder_layers": 2, "max_seq_len": 64, "repa": {"enabled": False}}
BATCH, SEQ_LEN, WARMUP = 16, 64, 3


def make_model():
    from latentlm.models.text_vae import TextVAE, TextVAEConfig
    torch.manual_seed(0)
    return TextVAE(TextVAEConfig(**MODEL))


def make_batch() -> torch.Tensor:
    return torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(0))


def optim_config(steps: int):
    from latentlm.platform.training.sections import OptimConfig
    return OptimConfig(steps=steps + WARMUP, batch_size=BATCH, warmup_steps=2, log_every=1)


def bare_loop(steps: int) -> float:
    """Steps/s of the plain loop the engines wrap: forward, backward, clip, AdamW, LR schedule."""
    from latentlm.platform.training.parts import make_optimizer
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokens, optim = make_model(), make_batch(), optim_config(steps)
    opt, sched = make_optimizer(model.parameters(), optim)
    for step in range(WARMUP + steps):
        if step == WARMUP:
            t0 = time.perf_counter()
        loss = model(tokens).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
    return steps / (time.perf_counter() - t0)


def ray_loop(config: dict) -> None:
    """The same step through ``engine.build_engine`` inside a Ray Train worker; rank 0 reports steps/s."""
    import ray.train
    from latentlm.platform.training.engine import build_engine
    from latentlm.platform.training.sections import DeepSpeedConfig, ResourcesConfig
    from latentlm.platform.training.parts import micro_batches, worker_context
    wc = worker_context(ResourcesConfig())
    ds = DeepSpeedConfig(enabled=config["zero_stage"] is not None, zero_stage=config["zero_stage"] or 0)
    engine = build_engine(make_model(), optim_config(config["steps"]), ds, wc, BATCH, "vae")
    batch = {"tokens": make_batch().numpy()}
    for step in range(WARMUP + config["steps"]):
        if step == WARMUP:
            t0 = time.perf_counter()
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
            engine.backward(engine(torch.from_numpy(micro["tokens"])).loss)
            engine.step()
    rate = config["steps"] / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:  # Train V2 only returns metrics that come with a checkpoint
        if wc.is_main:
            Path(d, "rate.json").write_text(json.dumps({"steps_per_s": rate}))
        ray.train.report({"steps_per_s": rate}, checkpoint=ray.train.Checkpoint.from_directory(d) if wc.is_main else None)


def ray_run(steps: int, workers: int, zero_stage: int | None, storage: str) -> tuple[float, float]:
    """(steps/s inside the workers, wall seconds of the whole fit)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    name = "torch" if zero_stage is None else f"zero{zero_stage}"
    trainer = TorchTrainer(ray_loop, train_loop_config={"steps": steps, "zero_stage": zero_stage},
                           scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name=name, storage_path=storage))
    t0 = time.perf_counter()
    result = trainer.fit()
    return result.metrics["steps_per_s"], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per variant (after 3 warmup)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (the global batch is split)")
    args = parser.parse_args(argv)
    from latentlm.platform.training.launch import init_ray
    init_ray(num_cpus=max(os.cpu_count() or 1, args.workers))
    params = sum(p.numel() for p in make_model().parameters())
    print(f"TextVAE {params / 1e6:.2f}M params, global batch {BATCH} x {SEQ_LEN} tokens, {args.steps} timed steps, "
          f"{args.workers} Ray worker(s), {os.cpu_count()} CPU(s)\n", flush=True)
    bare = bare_loop(args.steps)
    rows = [("bare PyTorch loop", bare, None)]
    with tempfile.TemporaryDirectory() as storage:
        for label, stage in (("Ray Train (no DeepSpeed)", None), ("Ray Train + DeepSpeed ZeRO-1", 1),
                             ("Ray Train + DeepSpeed ZeRO-2", 2)):
            rows.append((label, *ray_run(args.steps, args.workers, stage, storage)))
    print("| variant | steps/s | vs bare | fit wall (s) |\n|---|---:|---:|---:|")
    for label, rate, wall in rows:
        print(f"| {label} | {rate:.2f} | {rate / bare:.2f}x | {'-' if wall is None else f'{wall:.1f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
