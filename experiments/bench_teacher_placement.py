"""Where the frozen teacher runs: trainer steps/s and data-wait fraction of the three placements (not a test).

The TextLDM VAE stage with REPA reads the teacher's hidden states for every token. ``data.teacher_placement``
decides where they come from (``platform/data/teacher_plan.py``): ``cached`` (one teacher pass stored as Parquet
before training), ``streamed`` (Ray Data teacher actors feed the trainers, nothing stored) or ``inline`` (the
trainer runs the teacher every step). This script trains the same VAE stage under Ray Train once per placement,
on the embedded default (SmolLM2-135M teacher) or any preset/overrides, and reads the stage's own metrics:

    python experiments/bench_teacher_placement.py [--steps 30] [--warmup 10] [--set data.seq_len=64]

For each placement it prints steps/s and ``data_wait`` (the fraction of the trainer's time spent waiting for its
next batch) over the steps after ``--warmup`` (which pay the pipeline's start-up), their ratio to cached, and the
one-time cost of the cached pass. The target for ``streamed`` is data_wait < 5% once the teacher actors have the
hardware to keep up (one GPU actor per ~N trainers, ``data.teacher_actors``); when they do not, the training loop
itself warns, and so does this script's summary.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

TARGET_WAIT = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=30, help="training steps per placement")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the measurement")
    parser.add_argument("--placements", default="cached,streamed,inline")
    parser.add_argument("--out", help="write the table here as JSON")
    args = parser.parse_args(argv)

    from latentlm.platform.config import merge, parse_overrides, to_dict
    from latentlm.platform.data.teacher_feed import feature_feed
    from latentlm.platform.data.teacher_plan import preflight
    from latentlm.platform.data.windows import prepare_data
    from latentlm.platform.methods.textldm.config import build_config
    from latentlm.platform.methods.textldm.train_vae import train_vae_loop
    from latentlm.platform.training.launch import init_ray, run_stage

    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    root = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    rows = []
    init_ray()
    for placement in args.placements.split(","):
        overrides = merge(parse_overrides(args.set), {
            "data": {"teacher_placement": placement}, "wandb": False,
            "train_vae": {"optim": {"steps": args.steps, "log_every": args.warmup, "checkpoint_every": 0}}})
        cfg = build_config(args.preset, overrides)
        preflight(cfg)
        t0 = time.perf_counter()
        artifacts = prepare_data(cfg, root, need_teacher=True)
        prepare_s = time.perf_counter() - t0
        cfg.vae.vocab_size = artifacts.vocab_size
        feed = feature_feed(cfg, artifacts, ["tokens", "length", "doc_id"], "teacher")
        run_dir = root / placement
        run_dir.mkdir()
        loop_config = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": placement, "trial": placement,
                       "vocab": artifacts.vocab, "teacher_dim": artifacts.teacher_dim, **feed.loop_config}
        t0 = time.perf_counter()
        run_stage(train_vae_loop, loop_config, feed.dataset, f"vae-{placement}", run_dir / "ray", cfg.resources,
                  max_failures=0, teacher_gpus=feed.teacher_gpus)
        stage_s = time.perf_counter() - t0
        metrics = [json.loads(line) for line in (run_dir / "vae_metrics.jsonl").read_text().splitlines()]
        measured = [m for m in metrics if m["step"] > args.warmup]
        tokens_per_step = cfg.train_vae.optim.batch_size * cfg.data.seq_len
        # per-interval means weighted by interval length (each logged value covers the steps since the last one)
        spans = [m["step"] - p["step"] for p, m in zip(metrics, metrics[1:]) if m["step"] > args.warmup]
        seconds = sum(s * tokens_per_step / m["tokens_per_s"] for s, m in zip(spans, measured))
        wait = sum(s * tokens_per_step / m["tokens_per_s"] * m["data_wait"] for s, m in zip(spans, measured))
        rows.append({"placement": placement, "steps_per_s": sum(spans) / seconds, "data_wait": wait / seconds,
                     "prepare_s": prepare_s, "stage_s": stage_s})

    base = next((r for r in rows if r["placement"] == "cached"), rows[0])
    print(f"\nteacher placement, {args.preset} preset, VAE stage with REPA, steps {args.warmup + 1}-{args.steps} "
          f"(batch {cfg.train_vae.optim.batch_size} x {cfg.data.seq_len} tokens, teacher {cfg.vae.repa.teacher})")
    print(f"| placement | steps/s | vs {base['placement']} | data wait | data prep before training | stage wall |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['placement']} | {r['steps_per_s']:.2f} | {r['steps_per_s'] / base['steps_per_s']:.2f}x | "
              f"{r['data_wait']:.0%} | {r['prepare_s']:.1f} s | {r['stage_s']:.1f} s |")
    for r in rows:
        if r["placement"] == "streamed" and r["data_wait"] > TARGET_WAIT:
            print(f"\nwarning: streamed trainers waited {r['data_wait']:.0%} of their time (target < "
                  f"{TARGET_WAIT:.0%}): the teacher actors do not keep up on this hardware; give them GPUs "
                  f"(data.teacher_actors, one GPU each) or cache the features")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
