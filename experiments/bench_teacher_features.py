"""REPA teacher features: streaming precomputed features vs computing them inline (not a test).

The VAE-with-REPA step needs the frozen teacher's hidden states for every token. latentlm computes them
once (Ray Data actors, fp16 Parquet) and streams them to the trainers; the alternative runs the teacher
inside every training step. This script times the same VAE training steps both ways, in one process,
on the embedded default (SmolLM2-135M teacher, layer -3) or any preset/overrides:

    python experiments/bench_teacher_features.py [--steps 20] [--batch-size 16] [--set data.seq_len=64]

It reports steps/s of each mode, their ratio, and the one-time cost of the precompute pass.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    from latentlm.models.teacher import FrozenTeacher
    from latentlm.models.text_vae import TextVAE
    from latentlm.platform.data import assets
    from latentlm.platform.config import parse_overrides
    from latentlm.platform.data.windows import prepare_data
    from latentlm.platform.methods.textldm.config import build_config
    from latentlm.platform.training.launch import init_ray, training_dataset
    from latentlm.platform.training.parts import load_vocab, model_ids, stack_column

    windows = args.batch_size * (args.steps + 2)
    cfg = build_config(args.preset, {**parse_overrides(args.set), "data": {
        **parse_overrides(args.set).get("data", {}), "teacher_windows": windows}})
    init_ray()
    torch.set_num_threads(os.cpu_count() or 1)
    root = Path(tempfile.mkdtemp(prefix="bench-features-"))
    t0 = time.perf_counter()
    art = prepare_data(cfg, root, need_teacher=True)
    precompute_s = time.perf_counter() - t0
    cfg.vae.vocab_size = art.vocab_size
    vocab = load_vocab(art.vocab, "cpu")
    dataset = training_dataset(art.vae_train, ["tokens", "length", "doc_id", art.teacher_column], 10**6,
                               rename={art.teacher_column: "teacher"})

    def run(mode: str) -> float:
        torch.manual_seed(0)
        vae = TextVAE(cfg.vae, teacher_dim=art.teacher_dim)
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
        teacher = FrozenTeacher(assets.resolve_model(cfg.vae.repa.teacher), [art.teacher_layer]) \
            if mode == "inline" else None
        batches = dataset.iter_batches(batch_size=args.batch_size, batch_format="numpy", drop_last=True)
        times = []
        for step, batch in enumerate(batches):
            if step == args.steps + 1:
                break
            start = time.perf_counter()
            tokens = torch.from_numpy(stack_column(batch, "tokens"))
            if teacher is not None:
                feats = teacher(tokens)[art.teacher_layer].float()
            else:
                feats = torch.from_numpy(stack_column(batch, "teacher", np.float32)).view(*tokens.shape, -1)
            out = vae(model_ids(tokens, vocab), None, feats)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            if step > 0:  # the first step pays one-off costs
                times.append(time.perf_counter() - start)
        return len(times) / sum(times)

    streamed, inline = run("streamed"), run("inline")
    print(f"\nREPA teacher features, {args.preset} preset, batch {args.batch_size} x {cfg.data.seq_len} tokens, "
          f"teacher {cfg.vae.repa.teacher} layer {art.teacher_layer}")
    print("| mode | VAE steps/s | vs inline |\n|---|---|---|")
    print(f"| features streamed from Parquet | {streamed:.2f} | {streamed / inline:.1f}x |")
    print(f"| teacher run inline every step | {inline:.2f} | 1.0x |")
    print(f"\none-time precompute of {windows} windows (tokenize + teacher pass): {precompute_s:.1f} s; it pays "
          f"for itself after {precompute_s / (1 / inline - 1 / streamed):.0f} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
