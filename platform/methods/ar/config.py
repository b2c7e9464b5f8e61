"""The autoregressive baseline's experiment config: a GPT matched to a diffusion config's DiT.

``match`` names the diffusion config the baseline answers (``"textldm:tiny"``, ``"dlm:small"``,
``"ldlm:tiny"``, ...; ``"none"``: the ``gpt`` and ``train`` fields as given). ``build_ar_config(preset,
overrides)`` then:

* builds that config (with the user's ``data`` / ``eval`` overrides) and copies its ``data`` and ``eval``
  sections, so both read the same tokenizer, token stream, vocabulary limit and held-out split and are
  scored by the same protocol (same protocol hash: rows rank in one table): TextLDM's and Cola DLM's
  continuation protocol, LDLM's unconditional one (``eval_class``). Sampler fields the GPT has no use for
  (``steps``, ``grid``, ``cfg_scale``) stay in the section, and so in the hash, and are ignored;
* sizes the GPT with ``matched_gpt_config`` to the diffusion network's parameter count (within 5%): the
  DiT (TextLDM, Cola DLM) or LDLM's latent denoiser, at its depth and head count unless ``gpt.depth`` /
  ``gpt.hidden_dim`` / ``gpt.n_heads`` are set. ``match_count`` says what is matched: ``non_embedding``
  (default) = the GPT's Transformer stack against the DiT, which has no token table (its vocabulary lives
  in the VAE or token decoder); ``total`` = every GPT parameter, token embedding included (at the tiny
  preset the 16k x 64 embedding is then 84% of the GPT and its stack a sixth of the DiT's);
* with ``budget: tokens`` (default), gives it the same training budget as the stage that trains that
  network (TextLDM's ``train_dit``, Cola DLM's and LDLM's ``train_joint``), counted in window
  positions: steps x global batch x seq_len. Same data and same seq_len, so this is that stage's batch
  size and step count (a user batch size gets steps = budget / (batch x seq_len)). It is *not* equal
  FLOPs: the diffusion method also trains a VAE (LDLM: latent encoder and decoders, in the same joint
  stage, plus an optional post-decoder stage) and encodes every window with it, and a GPT step costs ~6 x
  params FLOPs per token while the DiT also runs the encoder. ``budget: none`` keeps ``train_gpt.optim`` as
  given;
* reads the training windows that stage reads (``train_windows``): every window for the DiTs, the first
  ``data.teacher_windows`` for LDLM (the windows with token-encoder features), so both see the same
  distinct text as often.

User overrides still win over everything derived. ``gpt.vocab_size`` for sizing is ``data.vocab_limit + 1``
(the compact vocabulary) when set, else the tokenizer's size (``vocab_estimate``); the pipeline sets the
real value after the data stage (a compact vocabulary may differ by the EOS/pad ids) and logs the count.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch

from latentlm.models.config import ConfigError, check_fields, rename_keys, require
from latentlm.models.gpt import GPTConfig, count_params, matched_gpt_config
from latentlm.platform.config import from_dict, merge, to_dict
from latentlm.platform.evaluation.protocol import UnconditionalEvalConfig
from latentlm.platform.methods.dlm.config import DLM_PRESETS, StageConfig, build_dlm_config
from latentlm.platform.methods.ldlm.config import LDLM_PRESETS, build_ldlm_config
from latentlm.platform.methods.textldm.config import build_config
from latentlm.platform.methods.textldm.presets import PRESETS
from latentlm.platform.training.sections import (DataConfig, DeepSpeedConfig, EvalConfig, OptimConfig,
                                                     ResourcesConfig, require_seed)


@dataclass(frozen=True)
class MatchedNet:
    """The diffusion network a GPT is matched to, read off the matched experiment config."""
    make: Callable[[], torch.nn.Module]  # builds it (on the meta device, to count its parameters)
    shape: Any                           # its config: depth / n_heads set the GPT's where the user leaves them
    optim: OptimConfig                   # the optimiser of the stage that trains it: the token budget
    windows: int | None = None           # the training windows that stage reads (None: every window)


def _textldm_dit(cfg) -> MatchedNet:
    from latentlm.models.dit import TextDiT
    return MatchedNet(lambda: TextDiT(cfg.dit), cfg.dit, cfg.train_dit.optim)


def _dlm_dit(cfg) -> MatchedNet:
    from latentlm.models.block_dit import BlockCausalDiT
    return MatchedNet(lambda: BlockCausalDiT(cfg.dlm.dit), cfg.dlm.dit, cfg.train_joint.optim)


def _ldlm_denoiser(cfg) -> MatchedNet:
    """LDLM's diffusion network is its latent denoiser; the joint stage trains it on the windows that have
    token-encoder features: the first ``data.teacher_windows`` when they are cached, else every window."""
    from latentlm.models.ldlm import LatentDenoiser
    windows = cfg.data.teacher_windows if cfg.data.teacher_placement == "cached" else None
    return MatchedNet(lambda: LatentDenoiser(cfg.ldlm.latent_dim, cfg.ldlm.denoiser), cfg.ldlm.denoiser,
                      cfg.train_joint.optim, windows)


# method -> (config builder, its presets, config -> its diffusion network)
MATCHABLE = {"textldm": (build_config, PRESETS, _textldm_dit), "dlm": (build_dlm_config, DLM_PRESETS, _dlm_dit),
             "ldlm": (build_ldlm_config, LDLM_PRESETS, _ldlm_denoiser)}
UNCONDITIONAL = ("ldlm",)  # matched methods scored by the unconditional protocol


def parse_match(match: str) -> tuple[str, str] | None:
    """``"textldm:tiny"`` -> ("textldm", "tiny"); ``"none"`` -> None; anything else: ConfigError naming ``match``."""
    if match == "none":
        return None
    method, _, preset = str(match).partition(":")
    options = ", ".join(f"'{m}:<{'|'.join(sorted(MATCHABLE[m][1]))}>'" for m in sorted(MATCHABLE))
    require(method in MATCHABLE and preset in MATCHABLE[method][1], "match", f"'none' or one of {options}", match)
    return method, preset


def eval_class(match: str) -> type:
    """The eval section a match is scored under: the matched method's protocol (continuation for "none")."""
    target = parse_match(match)
    return UnconditionalEvalConfig if target and target[0] in UNCONDITIONAL else EvalConfig


@dataclass
class ARExperimentConfig:
    # old config keys still accepted in files and checkpoints (models.config.rename_keys)
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"train": "train_gpt"}
    name: str = "ar"
    preset: str = "tiny"
    run_dir: str = "runs"
    seed: int = 0
    match: str = "textldm:tiny"     # diffusion config whose DiT sets the size / budget, or "none"
    budget: Literal["tokens", "none"] = "tokens"  # the DiT stage's training tokens | train_gpt.optim as given
    match_count: Literal["non_embedding", "total"] = "non_embedding"  # GPT count matched to the DiT's
    matched_params: int = 0         # set by build_ar_config: the matched DiT's parameter count (0: unmatched)
    train_windows: int | None = None  # read only the first N training windows (None: all); set by the match
    data: DataConfig = field(default_factory=DataConfig)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    train_gpt: StageConfig = field(default_factory=StageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # the match's protocol section (see eval_class)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    wandb: bool = True

    def __post_init__(self):
        check_fields(self, "")
        require_seed(self.seed)
        require(self.preset in AR_PRESETS, "preset", f"one of {sorted(AR_PRESETS)}", self.preset)
        kind = eval_class(self.match)
        require(isinstance(self.eval, kind), "eval", f"{kind.__name__} (the protocol of match {self.match})",
                type(self.eval).__name__)
        if isinstance(self.eval, EvalConfig):
            self.eval.check_window(self.data.seq_len)
        require(self.train_windows is None or self.train_windows > 0, "train_windows", "a positive count or null",
                self.train_windows)
        require(self.gpt.max_seq_len >= self.data.seq_len, "gpt.max_seq_len", f">= data.seq_len ({self.data.seq_len})",
                self.gpt.max_seq_len)

    def teacher_request(self) -> None:
        return None  # the GPT aligns to no external model

    def teacher_stages(self) -> list:
        return []

    @staticmethod
    def section_classes(data: dict[str, Any]) -> dict[str, type]:
        """For ``config.from_dict``: the eval section's class follows the match."""
        return {"eval": eval_class(data.get("match", ARExperimentConfig.match))}


_OPTIM = {"lr": 1e-3, "warmup_steps": 20, "weight_decay": 0.1, "log_every": 100, "ema_decay": 0.0}
AR_PRESETS: dict[str, dict[str, Any]] = {
    # data / eval below apply with match "none"; a match copies the matched config's sections instead.
    "tiny": {"match": "textldm:tiny", "data": PRESETS["tiny"]["data"], "eval": PRESETS["tiny"]["eval"],
             "gpt": {"hidden_dim": 64, "depth": 4, "n_heads": 4},
             "train_gpt": {"optim": {**_OPTIM, "steps": 600, "batch_size": 32}}},
    "small": {"match": "textldm:small", "data": PRESETS["small"]["data"], "eval": PRESETS["small"]["eval"],
              "gpt": {"hidden_dim": 512, "depth": 12, "n_heads": 8},
              "train_gpt": {"optim": {**_OPTIM, "lr": 3e-4, "warmup_steps": 1000, "steps": 50000, "batch_size": 128,
                                  "checkpoint_every": 5000}}},
    "paper": {"match": "textldm:paper", "data": PRESETS["paper"]["data"], "eval": PRESETS["paper"]["eval"],
              "gpt": {"hidden_dim": 1024, "depth": 24, "n_heads": 16},
              "train_gpt": {"optim": {**_OPTIM, "lr": 3e-4, "warmup_steps": 2000, "steps": 1_000_000, "batch_size": 256,
                                  "checkpoint_every": 10_000}},
              "resources": {"num_workers": 8, "use_gpu": "true"}},
}
_SHAPE = ("hidden_dim", "depth", "n_heads")  # preset shapes serve match "none"; a match re-derives them


# len(tokenizer) of the paper presets' hub tokenizers, so those presets size their GPT offline
KNOWN_TOKENIZER_SIZES = {"Qwen/Qwen3-1.7B": 151669, "allenai/OLMo-2-1124-7B": 100278, "gpt2": 50257}


@functools.lru_cache(maxsize=8)
def _tokenizer_size(spec: str) -> int:
    if spec in KNOWN_TOKENIZER_SIZES:
        return KNOWN_TOKENIZER_SIZES[spec]
    from latentlm.platform.data.windows import load_tokenizer
    try:
        return len(load_tokenizer(spec))
    except (OSError, ValueError) as err:
        raise ConfigError(f"gpt.vocab_size: cannot size the GPT without the tokenizer {spec} ({err}); set "
                          "gpt.vocab_size") from None


def vocab_estimate(data: DataConfig) -> int:
    """Classes the GPT predicts: the compact vocabulary (``vocab_limit`` + unknown) or the tokenizer's size."""
    return data.vocab_limit + 1 if data.vocab_limit else _tokenizer_size(data.tokenizer)


def dit_params(method: str, matched) -> int:
    """Parameter count of ``matched``'s diffusion network, built on the meta device (no memory even at paper
    scale)."""
    with torch.device("meta"):
        return count_params(MATCHABLE[method][2](matched).make())


def build_ar_config(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> ARExperimentConfig:
    """Preset, then the matched config's data / eval / size / budget, then ``overrides`` (see the module doc)."""
    if preset not in AR_PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(AR_PRESETS)}, got {preset!r}")
    overrides = rename_keys(ARExperimentConfig, overrides)
    data = merge(copy.deepcopy(AR_PRESETS[preset]), overrides)
    data["preset"] = preset
    target = parse_match(data.get("match", "textldm:tiny"))
    gpt = data.setdefault("gpt", {})
    user_gpt = overrides.get("gpt") or {}
    user_optim = (overrides.get("train_gpt") or {}).get("optim") or {}
    if target is None:
        gpt.setdefault("max_seq_len", data.get("data", {}).get("seq_len", DataConfig().seq_len))
        return from_dict(ARExperimentConfig, data)
    method, matched_preset = target
    builder = MATCHABLE[method][0]
    try:
        matched = builder(matched_preset, {k: overrides[k] for k in ("data", "eval") if k in overrides})
    except ConfigError as err:
        raise ConfigError(f"match {data['match']}: {err}") from None
    data["data"], data["eval"] = to_dict(matched.data), to_dict(matched.eval)
    net = MATCHABLE[method][2](matched)
    data.setdefault("train_windows", net.windows)
    data["matched_params"] = target_params = dit_params(method, matched)
    seq_len = user_gpt.get("max_seq_len", matched.data.seq_len)
    vocab = user_gpt.get("vocab_size") or vocab_estimate(matched.data)
    fixed = {k: v for k, v in gpt.items()
             if k not in ("vocab_size", "max_seq_len") and (k not in _SHAPE or k in user_gpt)}
    if "depth" not in fixed and "hidden_dim" not in fixed:
        fixed["depth"] = net.shape.depth     # the DiT's shape where the user leaves it open
    fixed.setdefault("n_heads", net.shape.n_heads)
    try:
        data["gpt"] = to_dict(matched_gpt_config(target_params, vocab, seq_len,
                                                 count=data.get("match_count", "non_embedding"), **fixed))
    except ConfigError as err:
        raise ConfigError(f"match {data['match']}: {err}") from None
    if data.get("budget", "tokens") == "tokens":
        optim = data.setdefault("train_gpt", {}).setdefault("optim", {})
        tokens = net.optim.steps * net.optim.batch_size * matched.data.seq_len
        optim["batch_size"] = user_optim.get("batch_size", net.optim.batch_size)
        optim["steps"] = user_optim.get("steps", max(1, round(tokens / (optim["batch_size"] * matched.data.seq_len))))
    return from_dict(ARExperimentConfig, data)
