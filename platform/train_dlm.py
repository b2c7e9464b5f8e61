"""Cola DLM stages as Ray Train functions.

* ``dlm_stage1_loop``: Text VAE pretraining (reconstruction + KL + masking loss), the measured VAE logSNR
  in every log line.
* ``dlm_stage2_loop``: joint VAE + block-causal DiT. ``dlm.vae_strategy``: ``joint`` starts from the stage-1
  VAE and trains it at ``vae_lr_ratio`` x the DiT's learning rate, regularised towards the frozen stage-1
  encoder; ``frozen`` trains the DiT only; ``scratch`` trains everything from random initialisation.
"""
from __future__ import annotations

from pathlib import Path

import torch

from latentlm.models.checkpoint import load_tensors
from latentlm.models.dlm import ColaDLM
from latentlm.models.dlm_vae import DLMTextVAE

from .config import from_dict, to_dict
from .engine import build_engine
from .tracking import start_tracking
from .train_vae import vocab_modules
from .training import (EMA, Throughput, inject_fault, load_vocab, log_and_checkpoint, mean_over_workers,
                       micro_batches, model_ids, resume, seed_everything, should_log, stack_column, stream_batches,
                       worker_context, write_checkpoint)

STAGE1_METRICS = ("loss", "recon", "kl", "mask", "accuracy", "logsnr")
STAGE2_METRICS = ("loss", "fm", "vae", "recon", "kl", "mask", "ref", "accuracy", "logsnr")


def _experiment(config: dict):
    from .dlm_config import DLMExperimentConfig
    return from_dict(DLMExperimentConfig, config["experiment"])


def _tokens(micro: dict, vocab, device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(stack_column(micro, "tokens")).to(device)
    lengths = torch.from_numpy(micro["length"].astype("int64")).to(device)
    mask = torch.arange(tokens.shape[1], device=device)[None] < lengths[:, None]
    return model_ids(tokens, vocab), mask


def load_stage1_vae(cfg, checkpoint: str, device) -> DLMTextVAE:
    vae = DLMTextVAE(cfg.dlm.vae)
    vae.load_state_dict(load_tensors(Path(checkpoint) / "vae.safetensors"))
    return vae.to(device)


def _train(config: dict, stage: str, model: torch.nn.Module, optim, step_loss, metrics_names,
           lr_multiplier=None) -> None:
    """The loop both stages share: stream, micro-batch, step, log, checkpoint, resume."""
    import ray.train
    cfg = _experiment(config)
    wc = worker_context(cfg.resources)
    vocab = load_vocab(config.get("vocab"), wc.device)
    model = model.to(wc.device)
    ema = EMA(model, optim.ema_decay) if optim.ema_decay > 0 else None
    engine = build_engine(model, optim, cfg.deepspeed, wc, optim.batch_size, name=stage, lr_multiplier=lr_multiplier)
    noise_rng = torch.Generator(wc.device).manual_seed(cfg.seed * 1000 + (0 if stage == "vae" else 1) + 10 * wc.rank)
    generators = {"noise": noise_rng}

    def restore_extra(d: Path) -> None:
        if ema is not None:
            ema.shadow = load_tensors(d / "ema.safetensors", wc.device)

    start_step, epoch, skip = resume(engine, generators, wc, restore_extra)
    stream = stream_batches(ray.train.get_dataset_shard("train"), optim.batch_size, cfg.seed, epoch, skip)
    meter = Throughput(engine.num_params, wc.device, wc.world_size)
    tracker = start_tracking(cfg.wandb, wc.is_main, project="latentlm", group=config["run_name"],
                             name=f"{config.get('trial', 'run')}-dlm-{stage}", directory=config["run_dir"],
                             config=to_dict(cfg))
    engine.module.train()
    for step in range(start_step + 1, optim.steps + 1):
        epoch, index, batch = next(stream)
        sums = torch.zeros(len(metrics_names), device=wc.device)
        for micro in micro_batches(batch, engine.micro_batch_size, engine.accumulation, wc):
            tokens, mask = _tokens(micro, vocab, wc.device)
            out = step_loss(engine, tokens, mask, noise_rng)
            engine.backward(out.loss)
            engine.step()
            sums += torch.stack([getattr(out, name).detach().float() for name in metrics_names])
            meter.add(int(mask.sum()) * wc.world_size)
        if ema is not None:
            with engine.gathered():
                ema.update(engine.module)
        inject_fault(config, step, wc)
        if should_log(step, optim):
            means = mean_over_workers(sums / engine.accumulation, wc.world_size)
            metrics = {**dict(zip(metrics_names, means)), "grad_norm": engine.grad_norm, "lr": engine.lr,
                       **meter.metrics(), "step": step, "epoch": epoch}

            def modules():
                exported = vocab_modules(vocab)
                if ema is not None:
                    exported["ema"] = ema.state_dict()
                return exported

            def writer(d, step=step, epoch=epoch, index=index):
                write_checkpoint(d, engine, wc, generators, config=to_dict(cfg), modules=modules,
                                 state={"stage": f"dlm_{stage}", "step": step, "epoch": epoch, "batch_index": index,
                                        "stage1_checkpoint": config.get("stage1_checkpoint")})
            log_and_checkpoint(f"dlm_{stage}", step, optim, metrics, wc, tracker, writer,
                               Path(config["run_dir"]) / f"dlm_{stage}_metrics.jsonl")
    tracker.finish()


def dlm_stage1_loop(config: dict) -> None:
    """Ray Train function: Text VAE pretraining."""
    cfg = _experiment(config)
    seed_everything(cfg.seed)
    vae = DLMTextVAE(cfg.dlm.vae)
    _train(config, "vae", vae, cfg.stage1.optim, lambda engine, tokens, mask, rng: engine(tokens, mask, rng),
           STAGE1_METRICS)


class _JointStep(torch.nn.Module):
    """What the engine wraps in stage 2: the model plus a frozen reference encoder (not trained, not saved)."""

    def __init__(self, model: ColaDLM, reference: DLMTextVAE | None):
        super().__init__()
        self.model = model
        self._reference = [reference]  # a list keeps it out of the module tree (parameters, state_dict)

    def forward(self, tokens, mask, generator):
        return self.model.joint_loss(tokens, mask, self._reference[0], generator)


def dlm_stage2_loop(config: dict) -> None:
    """Ray Train function: joint VAE + block-causal DiT (``config["stage1_checkpoint"]`` unless scratch)."""
    cfg = _experiment(config)
    seed_everything(cfg.seed + 17)
    model = ColaDLM(cfg.dlm)
    strategy, reference = cfg.dlm.vae_strategy, None
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if strategy != "scratch":
        model.vae = load_stage1_vae(cfg, config["stage1_checkpoint"], "cpu")
        if strategy == "frozen" or cfg.dlm.vae_lr_ratio == 0:
            model.vae.requires_grad_(False)
        elif cfg.dlm.ref_weight > 0:
            reference = load_stage1_vae(cfg, config["stage1_checkpoint"], device).eval().requires_grad_(False)
    vae_ids = {id(p) for p in model.vae.parameters()}
    ratio = cfg.dlm.vae_lr_ratio if strategy == "joint" else 1.0
    step_module = _JointStep(model, reference)
    _train(config, "joint", step_module, cfg.stage2.optim,
           lambda engine, tokens, mask, rng: engine(tokens, mask, rng), STAGE2_METRICS,
           lr_multiplier=lambda p: ratio if id(p) in vae_ids else 1.0)
