"""One LDLM run end to end: validate -> tokenize + token-encoder features (+ their statistics) ->
joint stage -> optional token-decoder post-training -> unconditional evaluation.

Stages are content-addressed through the same ``StageCache`` as TextLDM: a sweep that varies only
evaluation fields (sampler steps, seeds) retrains nothing, and sweeps over the token-encoder layer share
one teacher pass over the data.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentlm.models.checkpoint import write_json
from latentlm.models.config import ConfigError
from latentlm.models.teacher import load_teacher_config, resolve_layer, teacher_hidden_size, teacher_num_layers
from latentlm.models.token_encoder import TokenEncoder
from latentlm.platform.config import to_dict
from latentlm.platform.data import assets
from latentlm.platform.data.corpus import CorpusSpec, load_documents
from latentlm.platform.data.teacher_feed import FeatureFeed, feature_feed, streamed_feature_stats
from latentlm.platform.data.teacher_plan import preflight
from latentlm.platform.data.windows import artifact_key, feature_stats, load_tokenizer, prepare_data
from latentlm.platform.evaluation import harness
from latentlm.platform.evaluation.continuation import Evaluation
from latentlm.platform.evaluation.unconditional import evaluate_windows
from latentlm.platform.training.launch import init_ray, run_stage, training_dataset
from latentlm.platform.training.parts import SEED_SCHEME
from latentlm.platform.storage import publish, run_path
from latentlm.platform.training.stages import StageCache, Trained

from .generator import LDLMGenerator, saved_checkpoints
from .train import post_decoder_loop, train_ldlm_loop

log = logging.getLogger(__name__)


def validate_ldlm(cfg) -> dict:
    """Everything checkable before any cluster resource is used (token encoder, scorer, corpora)."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    facts = {"vocab_size": len(tokenizer), "hidden_size": cfg.ldlm.hidden_size}
    if cfg.uses_token_encoder:
        encoder_cfg = load_teacher_config(assets.resolve_model(cfg.token_encoder.model), "token_encoder.model")
        layers = teacher_num_layers(encoder_cfg)
        facts.update(encoder_layers=layers, hidden_size=teacher_hidden_size(encoder_cfg),
                     encoder_layer=resolve_layer(cfg.token_encoder.layer, layers, "token_encoder.layer"))
        if cfg.eval.genppl_model == cfg.token_encoder.model:
            raise ConfigError(f"eval.genppl_model: the Gen-PPL scorer must not be the token encoder "
                              f"({cfg.token_encoder.model}); it would grade the model by its own features")
    for dataset in [cfg.data.corpus, *cfg.eval.datasets]:
        if not load_documents(CorpusSpec(dataset, cfg.data.text_field, max_documents=1)):
            raise ConfigError(f"corpus {dataset}: no documents")
    return facts


def ldlm_stage_keys(cfg) -> dict[str, str]:
    # scratch embeddings read no token encoder: its fields cannot change what is trained
    common = {"data": to_dict(cfg.data), "seed": [cfg.seed, SEED_SCHEME], "deepspeed": to_dict(cfg.deepspeed),
              "token_encoder": to_dict(cfg.token_encoder) if cfg.uses_token_encoder else None}
    joint = artifact_key(**common, ldlm=to_dict(cfg.ldlm), train=to_dict(cfg.train_joint))
    post = artifact_key(joint=joint, post_decoder=to_dict(cfg.train_post_decoder), use_ema=cfg.eval.use_ema)
    return {"joint": joint, "post_decoder": post}


def train_ldlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
               teacher_layers: list[int] | None = None) -> Trained:
    """Validate, prepare the data and train (joint stage, optional post-decoder) one LDLM config; no
    evaluation."""
    run_dir = run_path(run_dir)  # a local path, or an object-store URI's mirror (platform/storage.py)
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = validate_ldlm(cfg)
    preflight(cfg, teacher_layers, log)
    init_ray(resources=cfg.resources)
    frozen = cfg.uses_token_encoder  # scratch embeddings: tokens only, no teacher pass, no statistics
    artifacts = prepare_data(cfg, data_root or run_dir.parent, frozen, teacher_layers)
    cfg.ldlm.vocab_size = artifacts.vocab_size
    stats = None
    if frozen:
        cfg.ldlm.hidden_size = artifacts.teacher_dim
        stats = (feature_stats(artifacts.vae_train, artifacts.teacher_layer, artifacts.teacher_dim,
                               cfg.token_encoder.stats_windows) if cfg.data.teacher_placement == "cached" else
                 streamed_feature_stats(cfg, artifacts, cfg.token_encoder.stats_windows))
    write_json(run_dir / "config.json", to_dict(cfg))
    publish(run_dir / "config.json")
    keys = ldlm_stage_keys(cfg)
    cache = StageCache(cache_root or run_dir)
    ray_storage = (cache_root or run_dir) / "ray"
    common = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": cfg.name, "trial": run_dir.name,
              "vocab": artifacts.vocab, "hidden_stats": stats}

    def feed() -> FeatureFeed:  # the same windows either way (cached: the first data.teacher_windows, else all)
        if not frozen:
            return FeatureFeed(training_dataset(artifacts.vae_train, ["tokens", "length"], cfg.data.materialize_max_mb,
                                                artifacts.vae_windows), {})
        return feature_feed(cfg, artifacts, ["tokens", "length"], "hidden")

    def run(loop, extra: dict, name: str) -> str:
        stage_feed = feed()
        return run_stage(loop, {**common, **stage_feed.loop_config, **extra}, stage_feed.dataset, name, ray_storage,
                         cfg.resources, teacher_gpus=stage_feed.teacher_gpus)

    joint_ckpt, joint_seconds = cache.get_or_run("ldlm", keys["joint"], lambda: run(
        train_ldlm_loop, {}, f"ldlm-{keys['joint']}"))
    post_ckpt, post_seconds = None, 0.0
    if cfg.train_post_decoder.enabled:
        post_ckpt, post_seconds = cache.get_or_run("post_decoder", keys["post_decoder"], lambda: run(
            post_decoder_loop, {"joint_checkpoint": joint_ckpt}, f"post_decoder-{keys['post_decoder']}"))
    return Trained({"joint": joint_ckpt, "post_decoder": post_ckpt}, {"joint": joint_seconds,
                                                                      "post_decoder": post_seconds},
                   facts, artifacts, cache)


@torch.no_grad()
def interpolation_probe(gen: LDLMGenerator, encoder: TokenEncoder | None, windows: np.ndarray, tokenizer, scorer,
                        pairs: int, points: int) -> list[float]:
    """Gen-PPL (pooled over ``pairs`` pairs of real texts) at each of ``points`` evenly spaced points on the
    straight line between the two texts' latents; the ends are the texts' own reconstructions. ``encoder``:
    the frozen token encoder, None with scratch embeddings (the model's own table reads the tokens)."""
    if pairs == 0 or len(windows) < 2 * pairs:
        return []
    tokens = torch.from_numpy(windows[: 2 * pairs].astype(np.int64)).to(gen.device)
    if encoder is None:
        model_ids = gen.vocab.encode(tokens) if gen.vocab is not None else tokens
        z = gen.model.encode(gen.model.encoder_inputs(model_ids))
    else:
        z = gen.model.encode(encoder(tokens))
    a, b = z[0::2], z[1::2]
    curve = []
    for lam in torch.linspace(0, 1, points).tolist():
        ids = gen.decode((1 - lam) * a + lam * b)
        curve.append(scorer(harness.render(tokenizer, ids.tolist()))["gen_ppl"])
    return curve


def latent_probe(gen: LDLMGenerator, cfg) -> Callable:
    """``interpolation_probe`` over ``gen``'s latents as ``evaluate_windows`` calls it: (reference windows,
    tokenizer, Gen-PPL scorer) -> curve; the frozen token encoder that maps text to latents is loaded per call."""
    def probe(windows: np.ndarray, tokenizer, scorer) -> list[float]:
        encoder = None if not cfg.uses_token_encoder else TokenEncoder(
            assets.resolve_model(cfg.token_encoder.model), cfg.token_encoder.layer, gen.stats, device=gen.device)
        return interpolation_probe(gen, encoder, windows, tokenizer, scorer, cfg.eval.interpolation_pairs,
                                   cfg.eval.interpolation_points)
    return probe


def evaluate_ldlm(cfg, joint_checkpoint: str, post_checkpoint: str | None, out_dir: Path,
                  ceiling_cache: Path | None = None, token_counts: str | None = None) -> Evaluation:
    """A trained LDLM under the unconditional protocol, its latent-interpolation probe included."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = LDLMGenerator.from_checkpoints(cfg, joint_checkpoint, post_checkpoint, device)
    return evaluate_windows(cfg, gen, out_dir, ceiling_cache, token_counts, latent_probe(gen, cfg))


def run_ldlm(cfg, run_dir: Path, data_root: Path | None = None, cache_root: Path | None = None,
             teacher_layers: list[int] | None = None) -> dict:
    """Train and evaluate one LDLM config. Returns metrics per eval dataset, checkpoints and stage times."""
    trained = train_ldlm(cfg, run_dir, data_root, cache_root, teacher_layers)
    joint_ckpt, post_ckpt = trained.checkpoints["joint"], trained.checkpoints["post_decoder"]
    t0 = time.time()
    evaluation = evaluate_ldlm(cfg, joint_ckpt, post_ckpt, run_path(run_dir) / "eval",
                               ceiling_cache=trained.cache.ceiling_dir, token_counts=trained.artifacts.token_counts)
    return {"results": evaluation.results, "evaluation": evaluation, "joint_checkpoint": joint_ckpt,
            "post_decoder_checkpoint": post_ckpt, "checkpoint": post_ckpt or joint_ckpt, "facts": trained.facts,
            "stage_seconds": {**trained.stage_seconds, "eval": round(time.time() - t0, 1)}}


def evaluate_saved_ldlm(cfg, checkpoint: str | Path, out_dir: Path):
    """Score a saved joint or post-decoder checkpoint under ``cfg`` (``latentlm evaluate``)."""
    return evaluate_ldlm(cfg, *saved_checkpoints(checkpoint), out_dir)
