"""``latentlm`` command line: train / plan / sample / evaluate / export / push / info / leaderboard / compare /
lm-eval."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from latentlm.models.config import ConfigError

from . import registry


def _config(args):
    from .config import load_file, merge, parse_overrides
    overrides = merge(load_file(args.config) if args.config else {}, parse_overrides(args.set))
    return registry.get(args.method).build(args.preset, overrides)


def cmd_train(args) -> int:
    cfg = _config(args)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON result only (libraries print progress)
        # a string, not a Path: an s3:// run dir keeps its double slash (platform/storage.py)
        out = registry.get(args.method).run(cfg, args.run_dir or f"runs/{args.method}")
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_evaluate(args) -> int:
    from .config import parse_overrides
    from .hub import resolve_checkpoint
    from .reevaluate import evaluate_saved
    checkpoint = resolve_checkpoint(args.checkpoint, args.revision)
    downloaded = checkpoint != Path(args.checkpoint).expanduser()  # the hub cache is not a place for results
    out = Path(args.out) if args.out else (Path("runs/evaluate") / Path(args.checkpoint).name if downloaded else None)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON result only (libraries print progress)
        evaluation = evaluate_saved(checkpoint, parse_overrides(args.set), out)
    print(json.dumps({"protocol": evaluation.protocol.name, "protocol_hash": evaluation.protocol.hash,
                      "results": evaluation.results, "human_ceiling": evaluation.ceiling}, indent=2))
    return 0


def cmd_sample(args) -> int:
    import torch
    from latentlm.models.checkpoint import read_json
    from .data.windows import load_tokenizer
    from .evaluation.continuation import strip_at_eos
    from .hub import resolve_checkpoint
    from .reevaluate import checkpoint_method
    checkpoint = resolve_checkpoint(args.checkpoint, args.revision)
    method = registry.get(checkpoint_method(checkpoint))
    if args.prompt and method.task == "unconditional":
        raise ConfigError(f"--prompt: {method.label} generates unconditionally (its protocol); drop the prompt")
    tokenizer = load_tokenizer(read_json(checkpoint / "config.json")["data"]["tokenizer"])
    prompt = tokenizer(args.prompt, add_special_tokens=False)["input_ids"] if args.prompt else []
    request = registry.SampleRequest(prompt, args.num, args.length, args.steps, args.cfg_scale,
                                     torch.Generator().manual_seed(args.seed))
    ids = method.sampler(method.load_generator(checkpoint, not args.no_ema, "cpu"), request)
    for row in ids.tolist():
        text = tokenizer.decode(strip_at_eos(row, tokenizer.eos_token_id), skip_special_tokens=True)
        print(f"{args.prompt or ''}\x1b[1m{text}\x1b[0m" if sys.stdout.isatty() else f"{args.prompt or ''}{text}")
        print("---")
    return 0


def cmd_export(args) -> int:
    from .hub import export_checkpoint
    print(export_checkpoint(args.checkpoint, args.out, args.repo_id))
    return 0


def cmd_push(args) -> int:
    from .hub import push_to_hub
    info = push_to_hub(args.checkpoint, args.repo_id, private=args.private or None, revision=args.revision)
    print(getattr(info, "commit_url", info))
    return 0


def cmd_plan(args) -> int:
    """The pre-flight teacher plan of a config, without running anything (no Ray)."""
    from .data.teacher_plan import preflight
    cfg = _config(args)
    if preflight(cfg) is None:
        print(f"teacher plan: {args.method} ({args.preset}) reads no frozen teacher")
    return 0


def cmd_info(args) -> int:
    import torch
    from .data import assets
    methods = {m.name: {"label": m.label, "task": m.task, "presets": m.preset_names, "stages": list(m.stages),
                        "final_stages": list(m.final_stages)} for m in registry.methods().values()}
    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            "methods": methods, "assets": assets.describe(),
            "cache": str(assets.cache_dir())}
    print(json.dumps(info, indent=2, default=str))
    return 0


def _descending(metric: str, order: str | None) -> bool:
    """``--ascending`` / ``--descending`` if given, else the metric's better direction (Gen-PPL: lowest first);
    a metric without one (e.g. ``compute_seconds``) ranks highest first."""
    from .evaluation.significance import higher_is_better
    if order is not None:
        return order == "descending"
    try:
        return higher_is_better(metric)
    except ValueError:
        return True


def _fetched(path: str) -> str:
    """A leaderboard on object storage (a sweep's ``s3://.../<sweep>/``, or its file) fetched to this node."""
    from . import storage
    if not storage.is_uri(path):
        return path
    uri = path if path.endswith(".parquet") else f"{path.rstrip('/')}/leaderboard.parquet"
    return str(storage.fetch(storage.local_path(uri)))


def cmd_leaderboard(args) -> int:
    from . import leaderboard as lb
    try:
        paths = [lb.resolve_path(_fetched(p)) for p in args.paths]
        board = lb.combine(*(lb.read(p) for p in paths))  # names a missing or damaged file
        descending = _descending(args.sort, args.order)
        text = lb.to_markdown(board, sort_by=args.sort, descending=descending)  # checks --sort first
        if args.merge_into:
            target = lb.Leaderboard(args.merge_into)
            stored = target.add(board)
            print(f"merged {len(board)} row(s) from {len(paths)} file(s) into {target.path} ({stored} rows)",
                  file=sys.stderr)
        print(text, end="")
        if args.html:
            out = lb.to_html(board, args.html, title=args.title, sort_by=args.sort, descending=descending)
            print(f"wrote {out}", file=sys.stderr)
    except (lb.LeaderboardError, OSError) as err:  # OSError: e.g. --html names a directory
        print(f"latentlm: leaderboard error: {err}", file=sys.stderr)
        return 2
    return 0


DEFAULT_LEADERBOARDS = "runs/*/leaderboard.parquet"


def _compare_paths(given: list[str] | None) -> list[Path]:
    """The leaderboards to search: the given files or sweep directories, else every ``runs/*/leaderboard.parquet``."""
    from . import leaderboard as lb
    if given:
        return [lb.resolve_path(p) for p in given]
    found = sorted(Path().glob(DEFAULT_LEADERBOARDS))
    if not found:
        raise lb.LeaderboardError(f"no leaderboard files at {DEFAULT_LEADERBOARDS} (relative to {Path.cwd()}); "
                                  "pass --leaderboard PATH")
    return found


def cmd_compare(args) -> int:
    from . import leaderboard as lb
    try:
        lb.check_compare_options(args.level, args.replicates, args.seed)
        paths = _compare_paths(args.leaderboard)
        board = lb.combine(*(lb.read(p) for p in paths))  # names a missing or damaged file
        a = lb.find_row(board, args.row_a, args.dataset, paths)
        b = lb.find_row(board, args.row_b, args.dataset, paths)
        comparison = lb.compare_rows(a, b, level=args.level, replicates=args.replicates, seed=args.seed,
                                      board=board)
    except (lb.LeaderboardError, OSError) as err:
        print(f"latentlm: compare error: {err}", file=sys.stderr)
        return 2
    print(lb.format_comparison(comparison), end="")
    return 0


def cmd_lm_eval(args) -> int:
    from .evaluation.lm_eval_model import run_cli  # registers the "latentlm" lm-eval model
    run_cli(args.lm_eval_args)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentlm", description="continuous latent diffusion LMs on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--preset", default="tiny")
        p.add_argument("--config", help="YAML/JSON overrides file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    train = sub.add_parser("train", help="train one config of a method family end to end and evaluate it")
    with_config(train)
    train.add_argument("--method", default="textldm", choices=registry.names(),
                       help="; ".join(f"{m.name}: {m.summary}" for m in registry.methods().values()))
    train.add_argument("--run-dir", help="default: runs/<method>")
    train.set_defaults(fn=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a final checkpoint of any method (its state.json names "
                              "the stage) under the current protocol")
    evaluate.add_argument("checkpoint", help="a checkpoint directory or a hub repository id")
    evaluate.add_argument("--revision", help="hub revision (branch, tag or commit)")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    evaluate.add_argument("--out")
    evaluate.set_defaults(fn=cmd_evaluate)

    sample = sub.add_parser("sample", help="generate from a final checkpoint of any method: continue --prompt "
                                           "(continuation methods; TextLDM and Cola DLM also without one) or "
                                           "sample unconditionally (LDLM)")
    sample.add_argument("checkpoint", help="a checkpoint directory or a hub repository id")
    sample.add_argument("--revision", help="hub revision (branch, tag or commit)")
    sample.add_argument("--prompt", default="")
    sample.add_argument("--length", type=int, default=32, help="target tokens (TextLDM; LDLM: its window)")
    sample.add_argument("--num", type=int, default=1)
    sample.add_argument("--steps", type=int, default=50)
    sample.add_argument("--cfg-scale", type=float, default=7.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--no-ema", action="store_true")
    sample.set_defaults(fn=cmd_sample)

    export = sub.add_parser("export", help="write a final checkpoint's publishable files (safetensors, JSON, a "
                            "model card; no optimizer, RNG or DeepSpeed shards) to a new directory")
    export.add_argument("checkpoint")
    export.add_argument("out")
    export.add_argument("--repo-id", help="the hub id the model card names")
    export.set_defaults(fn=cmd_export)

    push = sub.add_parser("push", help="upload a final checkpoint's export to the Hugging Face Hub")
    push.add_argument("checkpoint")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision")
    push.set_defaults(fn=cmd_push)

    plan = sub.add_parser("plan", help="the pre-flight estimate of a config's frozen-teacher work (bytes to store, "
                                       "teacher tokens, hours) and its cache-budget check; runs nothing")
    with_config(plan)
    plan.add_argument("--method", default="textldm", choices=registry.names())
    plan.set_defaults(fn=cmd_plan)

    info = sub.add_parser("info", help="versions, devices and the embedded offline assets")
    info.set_defaults(fn=cmd_info)

    board = sub.add_parser("leaderboard", help="show (and merge, or render as HTML) leaderboard Parquet files")
    board.add_argument("paths", nargs="+", metavar="PATH",
                       help="leaderboard file, or a dir holding leaderboard.parquet")
    board.add_argument("--sort", default="mauve", metavar="METRIC", help="metric to rank by (default: mauve)")
    direction = board.add_mutually_exclusive_group()
    direction.add_argument("--ascending", dest="order", action="store_const", const="ascending",
                           help="rank lowest first (default: the metric's better direction; Gen-PPL lowest first)")
    direction.add_argument("--descending", dest="order", action="store_const", const="descending",
                           help="rank highest first")
    board.add_argument("--html", metavar="OUT", help="write the self-contained HTML page here")
    board.add_argument("--title", default="latentlm leaderboard", help="title of the HTML page")
    board.add_argument("--merge-into", metavar="FILE", help="merge the inputs into this leaderboard file on disk")
    board.set_defaults(fn=cmd_leaderboard)

    compare = sub.add_parser("compare", help="paired bootstrap comparison of two leaderboard rows over their shared "
                                             "prompts (protocol v3 rows, which carry per-prompt evidence)")
    compare.add_argument("row_a", metavar="ROW_A", help="row id, a row-id prefix (>= 6 characters) or a trial name")
    compare.add_argument("row_b", metavar="ROW_B", help="the row to compare against (same forms)")
    compare.add_argument("--leaderboard", action="extend", nargs="+", metavar="PATH",
                         help=f"leaderboard file or sweep dir to search (default: {DEFAULT_LEADERBOARDS})")
    compare.add_argument("--dataset", metavar="NAME", help="pick the trial's row on this eval dataset")
    compare.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    compare.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (default 1000)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare.set_defaults(fn=cmd_compare)

    lm_eval = sub.add_parser("lm-eval", add_help=False,
                             help="lm-evaluation-harness with --model latentlm registered: the arguments go to lm-eval "
                                  "unchanged (--model latentlm --model_args checkpoint=DIR --tasks T ...)")
    lm_eval.set_defaults(fn=cmd_lm_eval)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # lm-eval's options are its own (argparse would read them as ours): passed on whole
        args = parser.parse_args(argv[:1])
        args.lm_eval_args = argv[1:]
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"latentlm: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError) as err:
        print(f"latentlm: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
