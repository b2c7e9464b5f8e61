"""Generation throughput: wall time and tokens/s of every method's sampler for 128-1024-token continuations
(not a test; numbers depend on the machine, and the weights are random: speed does not depend on training).

Each method is called the way the platform's evaluation calls it, end to end from the prompt's token ids to
the generated token ids (VAE / token decoding included, detokenization to text excluded), with the protocol's
sampler precision (``eval.dtype``: bf16 autocast on CUDA, fp32 on CPU by default):

* TextLDM: ``continuation.generate_continuations`` -> ``TextLDM.generate`` (prompt encoded by the VAE, all target
  latents in parallel, Euler steps with batch-doubled CFG, VAE decoding), at several step counts.
* LDLM: ``unconditional.generate_ids`` -> ``LDLMGenerator.sample`` (Euler-Maruyama over the latents with
  self-conditioning, latent decoder + token decoder). LDLM is unconditional and samples a fixed number of
  latents (``ldlm.num_latents``; its Perceiver latent decoder has ``seq_len`` learned queries), so one model is
  built per length with as many latents as tokens (``data.seq_len = num_latents = L``, the paper's layout). It
  gets no prompt; its L sampled tokens per sample are the count.
* Cola DLM: ``continuation.generate_continuations`` -> ``ColaDLMGenerator.generate`` -> ``ColaDLM.generate``
  (prompt encoded, block-by-block flow matching with CFG and a KV cache over committed blocks, streaming
  conditional decoding); the "no cache" variant (``sampler.use_cache: false``) recomputes the history every step.
* AR: ``continuation.generate_continuations`` -> ``ARGenerator`` (``methods/ar/generator.py``) -> ``GPT.generate``
  with its KV cache (one token per forward, temperature 1 sampling); "no cache" calls ``GPT.generate(use_cache=False)``.

Models are built with random weights from the size family's configs (the platform presets plus overrides) and
loaded through the platform's generator classes from a temporary checkpoint. The TextLDM DiT, LDLM denoiser and
Cola DLM DiT share one width/depth/heads (``--size``: tiny = 128 x 4, small = 512 x 12), so their counts match up
to their latent-size-dependent input/output layers; the GPT is sized by the platform's ``build_ar_config``
(``matched_gpt_config``, within 5% of the TextLDM DiT's count, at its depth and heads), once per ``--ar-match``
count: ``non_embedding`` (the platform's default and the ratio baseline: the Transformer stack matches the
DiT) and ``total`` (token embedding included: a much narrower GPT at small vocab x width). Positional capacity
(``max_seq_len``) is prompt + the longest length. Every call produces B x L new tokens: protocol v3 asks each
generator for exactly L tokens (the GPT suppresses EOS until then; the others write fixed-length windows). The prompt is P random ids. Warm-up calls are not
timed; the reported time is the median of ``--repeats``. Ratios are tokens/s over the AR baseline (KV cache) at
the same length, measured in this process.

    python experiments/bench_generation.py             # tiny, all lengths: ~9 min on a busy 2-core CPU box
    python experiments/bench_generation.py --size small --device cuda --repeats 5
    python experiments/bench_generation.py --lengths 128,256 --steps 10 --methods ar,textldm,dlm
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform as std_platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from latentlm.platform import registry

EOS_SENTINEL = -2  # the stand-in tokenizer's EOS id: no model produces it

# Denoiser width/depth/heads per size family (TextLDM DiT, LDLM denoiser, Cola DLM DiT alike), with the
# vocabulary the tiny/small presets train with (tiny: 16,383 kept ids + 1 unknown; small: SmolLM2's 49,152).
SIZES = {
    "tiny": {"denoiser": {"hidden_dim": 128, "depth": 4, "n_heads": 4}, "vocab_size": 16384},
    "small": {"denoiser": {"hidden_dim": 512, "depth": 12, "n_heads": 8}, "vocab_size": 49152},
}


def count(*modules: torch.nn.Module) -> int:
    """Unique parameters over ``modules`` (tied weights counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


class IdsOnly:
    """Stands in for the tokenizer where the platform only needs the EOS id and ``batch_decode`` (text is not
    part of the timed path: tokens/s counts ids)."""
    eos_token_id = EOS_SENTINEL

    @staticmethod
    def batch_decode(ids, skip_special_tokens=True):
        return ids


# -- each method's setup: build_<method>() builds once and returns its settings ----------------------------

class Bench:
    def __init__(self, args, device: torch.device, dtype: str):
        self.args, self.device = args, device
        self.eval_dtype = {"bf16": "bfloat16", "fp32": "float32"}[dtype]  # the protocol's sampler precision
        fam = SIZES[args.size]
        self.den, self.vocab = fam["denoiser"], fam["vocab_size"]
        self.max_len = args.prompt_len + max(args.lengths)
        g = torch.Generator().manual_seed(args.seed)
        self.prompts = torch.randint(0, self.vocab, (args.batch_size, args.prompt_len), generator=g)
        self.models: dict[str, dict] = {}

    def samples(self, length: int):
        """The prompts, each asking for ``length`` new tokens (the protocol generates its reference's length)."""
        from latentlm.platform.evaluation.continuation import ContinuationSample
        return [ContinuationSample(i, row, [0] * length, []) for i, row in enumerate(self.prompts.tolist())]

    # TextLDM ---------------------------------------------------------------------------------------------
    def build_textldm(self):
        from latentlm.models.dit import TextDiT
        from latentlm.models.text_vae import TextVAE
        from latentlm.platform.methods.textldm.generator import LatentNormalizer, TextLDM
        from latentlm.platform.methods.textldm.config import build_config
        a = self.args
        cfg = build_config(a.size, {
            "data": {"seq_len": self.max_len, "vocab_limit": None},
            "vae": {"vocab_size": self.vocab, "repa": {"enabled": False}},
            "dit": dict(self.den),
            "eval": {"batch_size": a.batch_size, "cfg_scale": a.cfg_scale, "dtype": self.eval_dtype}})
        torch.manual_seed(a.seed)
        vae, dit = TextVAE(cfg.vae), TextDiT(cfg.dit)
        model = TextLDM(vae, dit, LatentNormalizer(cfg.dit.latent_dim), cfg.train_dit.schedule).to(self.device).eval()
        self.models["textldm"] = {"denoiser": count(dit), "path": count(vae, dit),
                                  "denoiser_what": "TextDiT", "path_what": "TextVAE encoder+decoder + TextDiT",
                                  "config": {"vae": dataclasses.asdict(cfg.vae), "dit": dataclasses.asdict(cfg.dit)}}

        def call(length: int, steps: int) -> None:
            from latentlm.platform.evaluation.continuation import generate_continuations
            c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=a.prompt_len + length),
                                    eval=dataclasses.replace(cfg.eval, steps=steps))
            out = generate_continuations(model, self.samples(length), c, a.seed)
            assert all(len(row) == length for row in out), "TextLDM: wrong continuation length"
        return [(f"{s} Euler steps, CFG {a.cfg_scale:g}", dict(steps=s), call) for s in a.steps]

    # LDLM ------------------------------------------------------------------------------------------------
    def build_ldlm(self):
        from latentlm.models.ldlm import LDLM
        from latentlm.models.token_encoder import HiddenStats
        from latentlm.platform.methods.ldlm.generator import LDLMGenerator
        from latentlm.platform.evaluation.unconditional import generate_ids
        from latentlm.platform.methods.ldlm.config import build_ldlm_config
        a = self.args
        generators: dict[int, tuple] = {}

        def generator_for(length: int):
            """One LDLM per length (num_latents = seq_len = L), behind the platform's LDLMGenerator."""
            if length not in generators:
                generators.clear()  # one at a time: the small family's LDLM is ~100M parameters
                cfg = build_ldlm_config(a.size, {
                    "data": {"seq_len": length}, "ldlm": {"vocab_size": self.vocab, "denoiser": dict(self.den)},
                    "eval": {"batch_size": a.batch_size, "num_samples": a.batch_size, "use_ema": False,
                             "dtype": self.eval_dtype}})
                torch.manual_seed(a.seed)
                gen = LDLMGenerator(cfg, LDLM(cfg.ldlm), HiddenStats(cfg.ldlm.hidden_size), device=self.device)
                m = gen.model
                self.models.setdefault("ldlm", {"denoiser_what": "LatentDenoiser",
                                                "path_what": "LatentDenoiser + latent decoder + token decoder",
                                                "per_length": {}})
                self.models["ldlm"]["per_length"][length] = {
                    "denoiser": count(m.denoiser), "path": count(m.denoiser, m.decoder, m.token_decoder)}
                self.models["ldlm"]["config"] = dataclasses.asdict(cfg.ldlm)
                generators[length] = (gen, cfg)
            return generators[length]

        def call(length: int, steps: int) -> None:
            gen, cfg = generator_for(length)
            c = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, steps=steps))
            ids = generate_ids(gen, IdsOnly, a.seed, c)
            assert all(len(row) == length for row in ids), "LDLM: wrong sample length"
        return [(f"{s} LDLM steps (sampler auto), uncond.", dict(steps=s), call, generator_for) for s in a.steps]

    # Cola DLM --------------------------------------------------------------------------------------------
    def build_dlm(self):
        from latentlm.models.dlm import ColaDLM
        from latentlm.platform.methods.dlm.config import build_dlm_config
        from latentlm.platform.methods.dlm.generator import ColaDLMGenerator
        a = self.args
        cfg = build_dlm_config(a.size, {
            "data": {"seq_len": self.max_len, "vocab_limit": None},
            "dlm": {"vae": {"vocab_size": self.vocab}, "dit": dict(self.den)},
            "eval": {"batch_size": a.batch_size, "cfg_scale": a.cfg_scale, "steps": a.dlm_steps,
                     "dtype": self.eval_dtype}})
        torch.manual_seed(a.seed)
        gen = ColaDLMGenerator(cfg, ColaDLM(cfg.dlm), eos_id=0).to(self.device)
        m = gen.model
        self.models["dlm"] = {"denoiser": count(m.dit), "path": count(m), "denoiser_what": "BlockCausalDiT",
                              "path_what": "Text VAE encoder+decoder + BlockCausalDiT",
                              "config": dataclasses.asdict(cfg.dlm)}

        def call(length: int, use_cache: bool) -> None:
            from latentlm.platform.evaluation.continuation import generate_continuations
            c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=a.prompt_len + length),
                                    sampler=dataclasses.replace(cfg.sampler, use_cache=use_cache))
            gen.cfg = c  # the generator reads its sampler switches from its config
            out = generate_continuations(gen, self.samples(length), c, a.seed)
            assert all(len(row) == length for row in out), "Cola DLM: wrong continuation length"
        block = cfg.dlm.dit.block_size
        head = f"{a.dlm_steps} steps/block of {block}, CFG {a.cfg_scale:g}"
        return [(f"{head}, KV cache", dict(use_cache=True), call),
                (f"{head}, no cache", dict(use_cache=False, max_len=a.no_cache_max_len), call)]

    # AR --------------------------------------------------------------------------------------------------
    def build_ar(self):
        from latentlm.models.gpt import GPT, gpt_param_count
        from latentlm.platform.methods.ar.config import build_ar_config
        from latentlm.platform.methods.ar.generator import ARGenerator
        from latentlm.platform.evaluation.continuation import generate_continuations
        a = self.args
        self.models["ar"] = {"denoiser_what": "GPT, the matched count (Transformer stack or whole model)",
                             "path_what": "GPT (whole model, tied embedding counted once)", "per_setting": {}}
        variants = []
        for index, match_count in enumerate(a.ar_match):
            # the platform's matching (methods/ar/config.build_ar_config): a GPT sized by matched_gpt_config to the
            # TextLDM preset's DiT at its depth and heads, here at the benchmark's vocabulary and max length
            cfg = build_ar_config(a.size, {
                "match": f"textldm:{a.size}", "match_count": match_count, "data": {"seq_len": self.max_len},
                "gpt": {"vocab_size": self.vocab, "max_seq_len": self.max_len},
                "eval": {"batch_size": a.batch_size, "dtype": self.eval_dtype}})
            torch.manual_seed(a.seed)
            gen = ARGenerator(cfg, GPT(cfg.gpt)).to(self.device)
            g = cfg.gpt
            sampling = "greedy" if g.temperature == 0 else f"T={g.temperature:g}"
            shape = f"{g.hidden_dim} x {g.depth}, {match_count.replace('_', '-')} matched"
            info = {"denoiser": gpt_param_count(g, match_count), "path": count(gen.model),
                    "non_embedding": gpt_param_count(g, "non_embedding"), "target": cfg.matched_params,
                    "match_count": match_count, "config": dataclasses.asdict(g)}

            def call(length: int, use_cache: bool, gen=gen, cfg=cfg) -> None:
                c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=a.prompt_len + length))
                model = gen if use_cache else NoCacheAR(gen.model)
                out = generate_continuations(model, self.samples(length), c, a.seed)
                assert all(len(row) == length for row in out), "AR: wrong continuation length"
            settings = [(f"{shape}, KV cache, {sampling}", dict(use_cache=True))]
            if index == 0:  # the baseline also without its cache
                settings.append((f"{shape}, no cache, {sampling}",
                                 dict(use_cache=False, max_len=a.no_cache_max_len)))
            for setting, kwargs in settings:
                self.models["ar"]["per_setting"][setting] = info
                variants.append((setting, kwargs, call))
        return variants


class NoCacheAR(torch.nn.Module):
    """``ARGenerator``'s interface over ``GPT.generate(use_cache=False)`` (ARGenerator always caches)."""

    def __init__(self, gpt: torch.nn.Module):
        super().__init__()
        self.model = gpt

    def generate(self, prompts, max_new, steps=None, cfg_scale=None, grid=None, generator=None):
        return self.model.generate(prompts, max_new, generator=generator, use_cache=False)


# -- timing, report ---------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, autocast) -> float:
    sync(device)
    t0 = time.perf_counter()
    with autocast(), torch.no_grad():
        fn()
    sync(device)
    return time.perf_counter() - t0


def machine_info(device: torch.device) -> dict:
    info = {"platform": std_platform.platform(), "processor": std_platform.processor() or std_platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    info["line"] = (f"{info.get('gpu', 'CPU')} | {info['platform']} | {info['cpu_count']} CPU(s), "
                    f"{info['torch_threads']} torch threads | torch {info['torch']}")
    return info


def load_average() -> float | None:
    """The 1-minute load average (other jobs on the machine distort CPU timings); None where unsupported."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def params_of(models: dict, method: str, length: int, setting: str) -> tuple[int | None, int | None]:
    m = models.get(method)
    if not m:
        return None, None
    if "per_setting" in m:
        m = m["per_setting"].get(setting, {})
    if "per_length" in m:
        m = m["per_length"].get(length, {})
    return m.get("denoiser"), m.get("path")


def markdown(rows: list[dict], models: dict, meta: dict) -> str:
    lines = [f"Generation throughput, size `{meta['size']}`, batch {meta['batch_size']}, prompt {meta['prompt_len']} "
             f"tokens, {meta['dtype']}, median of {meta['repeats']} (warm-up excluded), random weights.",
             f"Machine: {meta['machine']['line']}.", "",
             "| method | setting | params: denoising network | params: whole generation path | new tokens | wall s | "
             "tokens/s | vs AR |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        den, path = params_of(models, r["method"], r["length"], r["setting"])
        if r.get("error"):
            wall, rate, ratio = "failed", "-", "-"
        else:
            wall, rate = f"{r['wall_s']:.3f}", f"{r['tokens_per_s']:.0f}"
            ratio = "-" if r.get("vs_ar") is None else f"{r['vs_ar']:.2f}x"
        lines.append(f"| {r['method_label']} | {r['setting']} | {fmt_params(den)} | {fmt_params(path)} | "
                     f"{r['length']} | {wall} | {rate} | {ratio} |")
    lines += ["", "Denoising network: the network called at every sampling step (TextDiT, LDLM LatentDenoiser, "
              "Cola DLM BlockCausalDiT; AR: the GPT count that was matched to the TextLDM DiT, its Transformer "
              "stack for non-embedding, everything for total). Whole generation path: every module the call runs "
              "(TextLDM, Cola DLM: + the VAE encoder for the prompt and the VAE decoder; LDLM: + latent decoder and "
              "token decoder, whose Perceiver queries grow with L; AR: the whole GPT). New tokens per sample; "
              "tokens/s = batch x new tokens / wall s (LDLM: unconditional, L sampled tokens, no prompt). vs AR: "
              f"tokens/s over the AR baseline ({meta.get('ar_baseline')}) at the same length. Load average (1 min) "
              f"at start / end: {meta['load_start']} / {meta.get('load_end')}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, meta: dict) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    from latentlm.models.checkpoint import atomic_write
    fig, ax = plt.subplots(figsize=(11, 6))
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in rows:
        if not r.get("error"):
            series.setdefault((r["method"], f"{r['method_label']}: {r['setting']}"), []).append(
                (r["length"], r["tokens_per_s"]))
    palette = iter(["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:pink"])
    colors = {method: "black" if method == meta["baseline_method"] else next(palette, None)
              for method in dict.fromkeys(r["method"] for r in rows)}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    seen: dict[str, int] = {}
    lengths: set[int] = set()
    for (method, label), points in series.items():
        k = seen[method] = seen.get(method, -1) + 1
        xs, ys = zip(*sorted(points))
        lengths.update(xs)
        ax.plot(xs, ys, color=colors.get(method), linestyle=styles[k % 4], marker=markers[k % 4], label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted(lengths)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("new tokens per sample")
    ax.set_ylabel("tokens / s (end to end, ids)")
    ax.set_title(f"Generation throughput: size {meta['size']}, batch {meta['batch_size']}, {meta['device']} "
                 f"{meta['dtype']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return True


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="model family: tiny = the tiny presets' widths (128 x 4), small = 512 x 12")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--methods", default=",".join(registry.names()),
                        help=f"comma list of registered methods ({', '.join(registry.names())})")
    parser.add_argument("--lengths", default="128,256,512,1024", help="new tokens per sample")
    parser.add_argument("--steps", default="10,25,50", help="TextLDM Euler / LDLM Euler-Maruyama step counts")
    parser.add_argument("--dlm-steps", type=int, default=16, help="Cola DLM Euler steps per block")
    parser.add_argument("--cfg-scale", type=float, default=7.0, help="CFG scale (TextLDM, Cola DLM)")
    parser.add_argument("--no-cache-max-len", type=int, default=-1,
                        help="longest length for the no-cache variants (Cola DLM, AR baseline), whose cost is "
                             "quadratic (-1: every length on CUDA, 128 on CPU)")
    parser.add_argument("--ar-match", default="non_embedding,total",
                        help="GPT sizes: comma list of the AR config's match counts (non_embedding: the Transformer stack "
                             "matches the DiT; total: token embedding included); the first is the ratio baseline")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per point, median reported "
                        "(0: 3 on CUDA, 1 on CPU)")
    parser.add_argument("--warmup", choices=("auto", "each", "first"), default="auto",
                        help="untimed warm-up call before every (method, setting, length) point ('each') or only "
                             "before the first length of a (method, setting) ('first'); auto: each on CUDA, "
                             "first on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: every core)")
    parser.add_argument("--out", default="runs/bench_generation")
    args = parser.parse_args(argv)
    args.lengths, args.steps = parse_ints(args.lengths), parse_ints(args.steps)
    args.ar_match = [m.strip() for m in args.ar_match.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(registry.names()))
    if unknown or not methods or not args.lengths or not args.steps or args.repeats < 0 or not args.ar_match:
        parser.error(f"bad --methods/--lengths/--steps/--repeats (unknown methods: {unknown})")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    warmup = args.warmup if args.warmup != "auto" else ("each" if device.type == "cuda" else "first")
    args.repeats = args.repeats or (3 if device.type == "cuda" else 1)
    if args.no_cache_max_len < 0:
        args.no_cache_max_len = max(args.lengths) if device.type == "cuda" else 128

    def autocast():
        if dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    t_start = time.perf_counter()
    meta = {"load_start": load_average(), "size": args.size, "batch_size": args.batch_size,
            "prompt_len": args.prompt_len, "dtype": dtype,
            "repeats": args.repeats, "warmup": warmup, "device": device.type, "machine": machine_info(device),
            "torch": torch.__version__, "args": vars(args)}
    print(f"{meta['machine']['line']}; size {args.size}, batch {args.batch_size}, prompt {args.prompt_len}, "
          f"{dtype}, lengths {args.lengths}, median of {args.repeats}", flush=True)
    bench = Bench(args, device, dtype)
    labels = {name: spec.label for name, spec in registry.methods().items()}
    # the ratio baseline (the family registered as a matched baseline: the GPT) first
    meta["baseline_method"] = next((s.name for s in registry.methods().values() if s.baseline_of), None)
    order = sorted(dict.fromkeys(methods), key=lambda m: m != meta["baseline_method"])
    rows: list[dict] = []
    warmed: set[tuple[str, str]] = set()
    for method in order:
        try:
            build = getattr(bench, f"build_{method}", None)
            if build is None:
                raise NotImplementedError(f"no benchmark setup for {method!r} (a Bench.build_{method} method)")
            variants = build()
        except Exception as exc:  # e.g. models/gpt.py missing: report and go on with the others
            traceback.print_exc()
            rows.append({"method": method, "method_label": labels[method], "setting": "build failed", "length": 0,
                         "error": f"{type(exc).__name__}: {exc}"})
            continue
        for length in args.lengths:  # lengths outermost: LDLM builds one model per length
            for setting, kwargs, call, *hook in variants:
                prepare = hook[0] if hook else None
                kwargs = dict(kwargs)
                max_len = kwargs.pop("max_len", None)
                if max_len is not None and length > max_len:
                    continue
                row = {"method": method, "method_label": labels[method], "setting": setting, "length": length,
                       "batch_size": args.batch_size}
                try:
                    fn = lambda: call(length, **kwargs)  # noqa: E731
                    if prepare is not None:
                        prepare(length)  # model construction stays outside the timed calls
                    if warmup == "each" or (method, setting) not in warmed:
                        row["warmup_s"] = time_call(fn, device, autocast)
                        warmed.add((method, setting))
                    row["times_s"] = [time_call(fn, device, autocast) for _ in range(args.repeats)]
                    row["wall_s"] = statistics.median(row["times_s"])
                    row["tokens_per_s"] = args.batch_size * length / row["wall_s"]
                except Exception as exc:  # out of memory, a positional limit, ...: keep the other rows
                    traceback.print_exc()
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                print(f"  {labels[method]:9s} {setting:45s} L={length:5d}: " +
                      (row["error"] if "error" in row else
                       f"{row['wall_s']:.3f} s, {row['tokens_per_s']:.0f} tok/s"), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    first_seen: dict[tuple[str, str], int] = {}
    for r in rows:
        first_seen.setdefault((r["method"], r["setting"]), len(first_seen))
    rows.sort(key=lambda r: (first_seen[(r["method"], r["setting"])], r["length"]))
    baseline = next((r["setting"] for r in rows if r["method"] == meta["baseline_method"]
                     and "KV cache" in r["setting"]), None)
    meta["ar_baseline"] = baseline
    ar = {r["length"]: r["tokens_per_s"] for r in rows
          if r["method"] == meta["baseline_method"] and r["setting"] == baseline and "error" not in r}
    for r in rows:
        if "error" not in r and r["length"] in ar:
            r["vs_ar"] = r["tokens_per_s"] / ar[r["length"]]
    meta["total_s"] = round(time.perf_counter() - t_start, 1)
    meta["load_end"] = load_average()

    from latentlm.models.checkpoint import atomic_write_text
    out = Path(args.out)
    table = markdown(rows, bench.models, meta)
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.json", json.dumps({**meta, "models": bench.models, "results": rows},
                                                       indent=2, default=str) + "\n")
    plotted = plot(rows, out / "tokens_per_s.png", meta)
    print("\n" + table)
    print(f"total {meta['total_s']} s; wrote {out / 'results.md'}, {out / 'results.json'}"
          + (f", {out / 'tokens_per_s.png'}" if plotted else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
