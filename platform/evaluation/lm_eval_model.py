"""latentlm as an lm-evaluation-harness model: ``--model latentlm --model_args checkpoint=DIR``.

``LatentLM`` wraps the final checkpoint of any family (its ``state.json`` stage names the family, as for
``latentlm sample``) or an in-memory generator (``LatentLM.from_generator``) as an ``lm_eval`` ``LM``:

* ``generate_until`` continues each context (tokenized with the checkpoint's tokenizer, left-truncated so that
  context + ``max_gen_toks`` fit the ``data.seq_len`` window the model was trained on) by ``max_gen_toks`` tokens
  (default 32) with the family's own sampler: the continuation protocol's ``generate`` (TextLDM's Euler sampler,
  Cola DLM's block-wise KV-cached sampler) at the checkpoint's ``eval.steps`` / ``eval.cfg_scale`` unless given;
  the GPT baseline decodes as lm-eval asks (greedy unless ``do_sample``), EOS allowed. A family without
  ``generate`` (LDLM: unconditional) samples windows and ignores the context, says so once per run, and reports
  ``conditional: False``. The text is cut at EOS and at the first ``until`` string; ids outside a compact
  vocabulary (-1) are dropped.
* ``loglikelihood`` / ``loglikelihood_rolling`` need a next-token distribution: the GPT baseline's. The latent
  families have none and raise a one-line ConfigError naming the family.

lm-eval 0.4 discovers no outside models, so its own ``lm_eval`` script cannot see this one: ``latentlm lm-eval
<lm_eval arguments>`` (or ``python -m latentlm.platform.evaluation.lm_eval_model <arguments>``) imports this module,
which registers "latentlm", and hands the arguments unchanged to lm-eval's command line. From Python, import this
module and call ``lm_eval.simple_evaluate(model="latentlm", model_args="checkpoint=DIR", ...)`` or pass a
``LatentLM`` instance.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval fills its registry only while it is empty: its models go in before ours)
import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from latentlm.models.config import ConfigError, from_dict, require, require_positive
from latentlm.models.gpt import GPT

from .. import registry
from ..data.windows import load_tokenizer
from . import harness
from .continuation import strip_at_eos

log = logging.getLogger(__name__)

MODEL_NAME = "latentlm"
DEFAULT_MAX_GEN_TOKS = 32   # the Cola DLM few-shot protocol's generation length


@dataclass
class SamplerOptions:
    """How requests are sampled (``model_args`` next to the checkpoint's)."""
    steps: int | None = None         # sampler steps; None: the checkpoint config's eval.steps
    cfg_scale: float | None = None   # classifier-free guidance; None: its eval.cfg_scale (families that guide)
    seed: int = 0                    # seeds the run's one torch.Generator, once: a run is reproducible
    batch_size: int = 8              # requests per sampler call (requests of one context length)

    def __post_init__(self):
        require(self.steps is None or self.steps > 0, "model_args.steps", "a positive step count", self.steps)
        require(self.cfg_scale is None or self.cfg_scale >= 0, "model_args.cfg_scale", ">= 0", self.cfg_scale)
        require(self.seed >= 0, "model_args.seed", "an integer >= 0", self.seed)
        require_positive("model_args", batch_size=self.batch_size)


@dataclass
class ModelArgs(SamplerOptions):
    """``--model_args`` of ``--model latentlm``; an unknown key is an error naming it."""
    checkpoint: str = ""             # a final checkpoint directory of any family (or a hub id)
    use_ema: bool | None = None      # None: the checkpoint config's eval.use_ema
    device: str | None = None        # None: cuda when available, else cpu
    max_batch_size: int | None = None  # lm-eval's bound for auto batch sizes: accepted, unused

    def __post_init__(self):
        super().__post_init__()
        require(bool(self.checkpoint), "model_args.checkpoint", "a final checkpoint directory (checkpoint=DIR)",
                self.checkpoint)
        try:
            torch.device(self.device or "cpu")
        except RuntimeError:
            raise ConfigError(f"model_args.device: expected a torch device (cpu, cuda, cuda:1, ...), got "
                              f"{self.device!r}") from None


def _harness_extras(extra: dict[str, Any] | None) -> dict[str, Any]:
    """What lm-eval's own options add to model_args: ``--batch_size`` ("auto" -> ours) and ``--device`` (its default
    ``cuda:0`` is dropped on a machine without CUDA, as lm-eval's HF model does)."""
    out = {k: v for k, v in (extra or {}).items() if v is not None}
    if str(out.get("batch_size", "")).startswith("auto"):
        del out["batch_size"]
    if str(out.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
        del out["device"]
    return out


def _device_of(generator) -> torch.device:
    """Where a generator's modules live (LDLM's and the GPT's say so; TextLDM and Cola DLM are modules)."""
    device = getattr(generator, "device", None)
    return torch.device(device) if device is not None else next(generator.parameters()).device


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any non-empty stop string."""
    cuts = [i for i in (text.find(s) for s in until if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


@dataclass(frozen=True)
class _Plan:
    """One generate_until request, tokenized: what its batch shares is its key."""
    context: tuple[int, ...]          # tokenizer ids, left-truncated to the window (empty: unconditional)
    max_gen_toks: int
    until: tuple[str, ...]
    sampling: tuple[float, float] | None   # (temperature, top_p) of a GPT; None: the family's own sampler
    truncated: bool = False           # the context lost its first tokens to the window

    @property
    def key(self) -> tuple:
        return len(self.context), self.max_gen_toks, self.sampling


class LatentLM(LM):
    """A latentlm generator behind lm-eval's ``LM`` interface (see the module docstring)."""

    def __init__(self, **model_args: Any):
        """``model_args``: the ``ModelArgs`` fields, all checked (and the checkpoint's family found) before any
        model is built."""
        from ..hub import resolve_checkpoint
        from ..reevaluate import checkpoint_method, load_config
        super().__init__()
        model_args = {k: str(v) if isinstance(v, Path) else v for k, v in model_args.items()}  # a Path from Python
        args = from_dict(ModelArgs, model_args, "model_args")
        try:
            checkpoint = resolve_checkpoint(args.checkpoint)
            family = checkpoint_method(checkpoint)
        except (ConfigError, FileNotFoundError) as err:
            raise ConfigError(f"model_args.checkpoint: {err}") from None
        cfg = load_config(checkpoint)
        use_ema = cfg.eval.use_ema if args.use_ema is None else args.use_ema
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        generator = registry.get(family).load_generator(checkpoint, use_ema, device)
        self._bind(generator, family, cfg, args, checkpoint=str(checkpoint), use_ema=use_ema)

    @classmethod
    def from_generator(cls, generator, family: str, cfg, *, steps: int | None = None, cfg_scale: float | None = None,
                       seed: int = 0, batch_size: int = 8) -> "LatentLM":
        """Wrap an in-memory generator (what ``load_generator`` returns) of ``family`` under its experiment config."""
        registry.get(family)  # names an unknown family
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm._bind(generator, family, cfg, SamplerOptions(steps, cfg_scale, seed, batch_size))
        return lm

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "LatentLM":
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "LatentLM":
        """``model_args`` win over lm-eval's own ``--batch_size`` / ``--device``, which it always passes."""
        return cls(**{**_harness_extras(additional_config), **arg_dict})

    def _bind(self, generator, family: str, cfg, options: SamplerOptions, **info: Any) -> None:
        self.generator, self.family, self.cfg, self.options = generator, family, cfg, options
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.window = cfg.data.seq_len   # the training window: context + continuation fit in it
        self.steps = options.steps or cfg.eval.steps
        self.cfg_scale = options.cfg_scale if options.cfg_scale is not None else getattr(cfg.eval, "cfg_scale", None)
        self._device = _device_of(generator)
        model = getattr(generator, "model", None)
        self._gpt = model if isinstance(model, GPT) else None   # the one family with a next-token distribution
        self._rng = torch.Generator(device=getattr(generator, "generator_device", self._device))
        self._rng.manual_seed(options.seed)
        self._info = info
        self._warned_unconditional = False

    @property
    def conditional(self) -> bool:
        """Whether generations continue their context (False: LDLM, which samples unconditionally)."""
        return hasattr(self.generator, "generate")

    def get_model_info(self) -> dict[str, Any]:
        """Merged into lm-eval's ``results["config"]``: what a result row needs to say how it was generated."""
        e = self.cfg.eval
        sampler = {"family": self.family, "conditional": self.conditional, "steps": self.steps,
                   "cfg_scale": self.cfg_scale, "grid": e.grid, "dtype": e.dtype, "seed": self.options.seed,
                   "batch_size": self.options.batch_size}   # the batch orders the noise draws
        return {f"latentlm_{k}": v for k, v in {**sampler, **self._info}.items()}

    # -- generation ------------------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not self.conditional and requests and not self._warned_unconditional:
            log.warning("%s samples unconditionally: generate_until ignores every context (results say "
                        "latentlm_conditional: false)", self.family)
            self._warned_unconditional = True
        plans = [self._plan(*request.args) for request in requests]
        groups: dict[tuple, list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault(plan.key, []).append(i)
        out: list[str] = [""] * len(requests)
        size = self.options.batch_size
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="latentlm generate_until") as bar:
            for key in sorted(groups, key=repr):  # a fixed order of the generator's draws
                for start in range(0, len(groups[key]), size):
                    chunk = groups[key][start:start + size]
                    rows = self._continue([plans[i] for i in chunk])
                    for i, row in zip(chunk, rows):
                        out[i] = cut_at_stop(self._decode(row), list(plans[i].until))
                        self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                    bar.update(len(chunk))
        truncated = sum(plan.truncated for plan in plans)
        if truncated:
            log.warning("%d of %d contexts were longer than the window left for them (data.seq_len %d - max_gen_toks) "
                        "and kept their last tokens", truncated, len(requests), self.window)
        return out

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _plan(self, context: str, gen_kwargs: dict) -> _Plan:
        kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
        n, until = kwargs["max_gen_toks"], tuple(kwargs["until"])
        if not self.conditional:
            require(0 < n <= self.window, "max_gen_toks", f"1 to data.seq_len = {self.window} ({self.family} samples "
                    "windows of that length)", n)
            return _Plan((), n, until, None)
        room = self.window - n
        require(n > 0 and room >= 1, "max_gen_toks", f"1 to data.seq_len - 1 = {self.window - 1} (the context and "
                f"the continuation share the {self.family} model's window)", n)
        # an empty context continues the EOS that precedes every document in the training stream
        ids = self._encode(context) or [self.tokenizer.eos_token_id]
        sampling = None
        if self._gpt is not None:  # the GPT decodes as lm-eval asks: greedy unless do_sample
            c = self._gpt.config
            temperature = float(kwargs.get("temperature", c.temperature)) if kwargs["do_sample"] else 0.0
            sampling = (temperature, float(kwargs.get("top_p", c.top_p)))
        return _Plan(tuple(ids[-room:]), n, until, sampling, truncated=len(ids) > room)

    @torch.no_grad()
    def _continue(self, plans: list[_Plan]) -> list[list[int]]:
        """Tokenizer ids of each plan's continuation (one batch: the plans share their key)."""
        g, n, e = self.generator, plans[0].max_gen_toks, self.cfg.eval
        with harness.sampler_precision(e.dtype, self._device):
            if not self.conditional:
                return g.sample(len(plans), self.steps, self._rng, e.grid)[:, :n].tolist()
            prompts = torch.tensor([p.context for p in plans], dtype=torch.long, device=self._device)
            if self._gpt is None:  # the continuation protocol's call
                ids = g.generate(prompts, n, steps=self.steps, cfg_scale=self.cfg_scale, grid=e.grid,
                                 generator=self._rng)
            else:
                ids = self._gpt_generate(prompts, n, *plans[0].sampling)
        return ids.tolist()

    def _gpt_generate(self, prompts: torch.Tensor, n: int, temperature: float, top_p: float) -> torch.Tensor:
        """The GPT's KV-cached decoding with EOS allowed (``generate`` of the protocol suppresses it) at the request's
        temperature and top-p (``GPT`` samples as its config says: swapped in for the call)."""
        g, saved = self.generator, self._gpt.config
        self._gpt.config = dataclasses.replace(saved, temperature=temperature, top_p=top_p)
        try:
            return g.tokenizer_ids(self._gpt.generate(g.model_ids(prompts), n, generator=self._rng))
        finally:
            self._gpt.config = saved

    def _decode(self, ids: list[int]) -> str:
        """Text up to the first EOS; ids outside a compact vocabulary (-1) are dropped."""
        return self.tokenizer.decode(strip_at_eos(ids, self.tokenizer.eos_token_id), skip_special_tokens=True)

    # -- log-likelihoods (the GPT only) ----------------------------------------------------------------------------

    def _require_token_model(self) -> None:
        if self._gpt is None:
            raise ConfigError(f"{self.family} has no token log-likelihood (a latent diffusion model): run generative "
                              "tasks (output_type: generate_until) only")

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._require_token_model()
        results = self._score([self._encode_pair(*request.args) for request in requests], disable_tqdm)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-probability after EOS, in disjoint windows of data.seq_len predictions (lm-eval's
        rolling windows: every token predicted once, each with as much context as fits)."""
        self._require_token_model()
        pairs, owners = [], []
        for i, request in enumerate(requests):
            for pair in get_rolling_token_windows(self._encode(request.args[0]), self.tokenizer.eos_token_id,
                                                  self.window, 1):
                pairs.append(make_disjoint_window(pair))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self._score(pairs, disable_tqdm)):
            totals[i] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation), split from one encoding of their concatenation (a word and the
        space before it are one token to most tokenizers, so trailing spaces move to the continuation). An empty
        context is the EOS that precedes every document in the training stream."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, head = self._encode(context + continuation), len(self._encode(context))
        require(len(whole) > head, "continuation", "at least one token", continuation)
        return whole[:head] or [self.tokenizer.eos_token_id], whole[head:]

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding yields it) per pair, in batches of similar
        lengths."""
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        size = self.options.batch_size
        with tqdm(total=len(pairs), disable=disable_tqdm or self.rank != 0, desc="latentlm loglikelihood") as bar:
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                for i, result in zip(chunk, self._score_batch([pairs[i] for i in chunk])):
                    out[i] = result
                bar.update(len(chunk))
        return out

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One GPT forward pass; each context is cut on the left so that the GPT reads at most data.seq_len
        positions."""
        g, rows = self.generator, []
        for context, continuation in pairs:
            require(len(continuation) <= self.window, "continuation", f"at most data.seq_len = {self.window} tokens",
                    len(continuation))
            rows.append((context + continuation)[-(self.window + 1):])
        # right padding: a causal model's positions never see what comes after them
        tokens = torch.zeros(len(rows), max(map(len, rows)) - 1, dtype=torch.long, device=self._device)
        for j, row in enumerate(rows):
            tokens[j, :len(row) - 1] = torch.tensor(row[:-1])
        results = []
        batch = F.log_softmax(self._gpt(g.model_ids(tokens)).float(), -1)
        for row, (_, continuation), logprobs in zip(rows, pairs, batch):
            n = len(continuation)
            target = g.model_ids(torch.tensor(row[-n:], device=self._device))
            scored = logprobs[len(row) - 1 - n:len(row) - 1]   # position t predicts token t + 1
            results.append((float(scored.gather(-1, target[:, None]).sum()), bool((scored.argmax(-1) == target).all())))
        return results


def run_cli(argv: list[str]) -> None:
    """lm-eval's own command line on ``argv``, unchanged, with "latentlm" registered (importing this module)."""
    from lm_eval.__main__ import cli_evaluate
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv (and inserts its default subcommand into it)
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    # as a script this file runs as __main__; the command line imports it under its own name, which registers it
    from latentlm.platform.cli import main
    sys.exit(main(["lm-eval", *sys.argv[1:]]))
else:
    register_model(MODEL_NAME)(LatentLM)
