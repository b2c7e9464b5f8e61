"""One TextLDM run end to end: validate -> tokenize (+ teacher features) -> VAE -> DiT -> evaluate.

Every stage writes into ``<run_dir>`` and is skipped when its output already exists, so re-running
an interrupted pipeline continues where it stopped. Shared data artifacts live in ``<root>/data``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from latentlm.models.checkpoint import read_json, write_json
from latentlm.models.config import ConfigError
from latentlm.models.teacher import load_teacher_config, resolve_layer, teacher_hidden_size, teacher_num_layers

from . import assets
from .config import to_dict
from .corpus import CorpusSpec, load_documents
from .data import load_tokenizer, prepare_data
from .evaluate import evaluate_checkpoint
from .launch import init_ray, run_stage, training_dataset
from .train_dit import train_dit_loop
from .train_vae import train_vae_loop

log = logging.getLogger(__name__)


def validate(cfg) -> dict:
    """Everything that can be checked before any cluster resource is used. Returns derived facts."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if cfg.vae.vocab_size != len(tokenizer):
        cfg.vae.vocab_size = len(tokenizer)  # the tokenizer decides; the field exists for hub users' records
    facts = {"vocab_size": len(tokenizer)}
    if cfg.vae.repa.enabled:
        teacher_cfg = load_teacher_config(assets.resolve_model(cfg.vae.repa.teacher))
        layers = teacher_num_layers(teacher_cfg)
        facts["teacher_layer"] = resolve_layer(cfg.vae.repa.layer, layers)
        facts["teacher_layers"], facts["teacher_dim"] = layers, teacher_hidden_size(teacher_cfg)
    for dataset in [cfg.data.corpus, *cfg.eval.datasets]:
        if not load_documents(CorpusSpec(dataset, cfg.data.text_field, max_documents=1)):
            raise ConfigError(f"corpus {dataset}: no documents")
    return facts


def _stage(run_dir: Path, name: str, run) -> str:
    """Run a stage once: its result (a checkpoint path) is recorded in run_dir/stages.json."""
    record_path = run_dir / "stages.json"
    record = read_json(record_path) if record_path.is_file() else {}
    if name in record and Path(record[name]["checkpoint"]).is_dir():
        log.info("stage %s already done: %s", name, record[name]["checkpoint"])
        return record[name]["checkpoint"]
    t0 = time.time()
    checkpoint = run()
    record = read_json(record_path) if record_path.is_file() else {}
    record[name] = {"checkpoint": checkpoint, "seconds": round(time.time() - t0, 1)}
    write_json(record_path, record)
    return checkpoint


def run_textldm(cfg, run_dir: Path, data_root: Path | None = None) -> dict:
    """Train (VAE, DiT) and evaluate one TextLDM config. Returns metrics per eval dataset and paths."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate(cfg)
    init_ray()
    artifacts = prepare_data(cfg, data_root or run_dir.parent, need_teacher=cfg.vae.repa.enabled)
    cfg.vae.vocab_size = artifacts.vocab_size
    write_json(run_dir / "config.json", to_dict(cfg))
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": f"{cfg.name}-{run_dir.name}",
              "vocab": artifacts.vocab}
    token_columns = ["tokens", "length", "doc_id"]
    limit = cfg.data.materialize_max_mb
    vae_ckpt = _stage(run_dir, "vae", lambda: run_stage(
        train_vae_loop, {**common, "teacher_dim": artifacts.teacher_dim},
        training_dataset(artifacts.vae_train, None if cfg.vae.repa.enabled else token_columns, limit),
        "vae", run_dir / "ray", cfg.resources))
    dit_ckpt = _stage(run_dir, "dit", lambda: run_stage(
        train_dit_loop, {**common, "vae_checkpoint": vae_ckpt}, training_dataset(artifacts.train, token_columns, limit),
        "dit", run_dir / "ray", cfg.resources))
    results = evaluate_checkpoint(cfg, dit_ckpt, run_dir / "eval")
    stages = read_json(run_dir / "stages.json")
    return {"results": results, "vae_checkpoint": vae_ckpt, "dit_checkpoint": dit_ckpt, "facts": facts,
            "stage_seconds": {k: v["seconds"] for k, v in stages.items()}}
