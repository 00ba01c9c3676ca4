"""`prefix-tuning` command line: each subcommand maps to one plain function; nothing else lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
from pathlib import Path

import yaml

from . import __version__, experiments, paper, recipe
from . import serve as serve_module
from .checkpoint import CorruptFileError, DiskFullError
from .cli_options import add_config_options
from .config import ConfigError, DecodeConfig
from .configfile import load_config, to_dict
from .datadir import DataError
from .dist import launched_rank
from .generate import generate_runs
from .hardware import PRECISIONS
from .metrics import METRICS, EvalInputError
from .metrics.cli import add_evaluate_parser
from .models import ModelLoadError
from .run import ARTIFACTS, INFIX_FILE, PROMPT_FILE
from .serve_api import ApiError
from .serve_state import load_state
from .train import train

TRAIN_HELP = """\
Train a run described by a YAML config; every field can be overridden as key=value
(e.g. train.lr=1e-4 method.prefix_length=10 out_dir=runs/p10). An unknown key fails and lists the valid
ones. The run dir (out_dir) receives config.yaml (the resolved config), log.jsonl (step, loss, lr,
tokens/s; dev loss per epoch), checkpoints/last.safetensors (resumable; tensors + JSON, no pickle), and the
result: prefix.safetensors (prefix runs: one fp32 tensor `prefix` of shape (layers, 2, kv_heads, P,
head_dim)) or model.safetensors. Re-running the same command resumes from the last checkpoint, also after a
kill -9 (--no-resume starts over); a damaged checkpoint is refused with the file and what to do.

Configs shipped in configs/: e2e_prefix_gpt2-medium.yaml, e2e_finetune_gpt2-medium.yaml (the paper's E2E
runs), tiny_*.yaml (seconds on a CPU). Use --print-config to see every key with its resolved value."""


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    res = train(cfg, resume=not args.no_resume)
    if launched_rank() != 0:  # under torchrun / accelerate launch: the main process reports
        return 0
    print(
        f"run dir: {res.run_dir}\n  steps: {res.steps}  best dev loss: {res.best_dev_loss}\n"
        f"  train time: {res.train_seconds:.1f} s ({res.seconds_per_epoch:.1f} s/epoch)\n"
        f"  trainable params: {res.trainable_params:,}  stored params: {res.stored_params:,}\n"
        f"  saved: {res.artifact}"
    )
    return 0


# -------------------------------------------------------------------------------------------- generate

GENERATE_HELP = """\
Decode the unique MRs of an E2E split with trained run dirs and write, per run dir,
RUN_DIR/outputs-SPLIT.txt (one line per unique MR, in order of first appearance),
RUN_DIR/refs-SPLIT.txt (references grouped per MR: consecutive lines, a blank line between MRs, the
official e2e-metrics format) and RUN_DIR/scores-SPLIT.json (BLEU, NIST, METEOR, ROUGE_L, CIDEr).
Several prefix runs over the same base model decode together in mixed batches (each row with its own
prefix, paper §4); fine-tuning runs (model.safetensors) decode with their own weights.

Decoding options default to the run's config.yaml `decode:` section; the defaults of a new config (shown
with each option) follow Li & Liang's E2E decoding (gpt2/run_generation.py of XiangLi1999/PrefixTuning),
with Hugging Face generate's beam semantics."""


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="decode E2E MRs with trained runs; write outputs, refs, scores",
        description=GENERATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run dir(s) holding config.yaml and what the method trained ("
        + ", ".join(sorted({*ARTIFACTS.values(), PROMPT_FILE, INFIX_FILE}))
        + ")",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("dev", "test", "train"),
        help="split of the run's dataset (data.dataset: e2e, webnlg or custom) whose unique sources are "
        "decoded (default: test, as in the paper's Table 1)",
    )
    p.add_argument(
        "--mrs",
        metavar="FILE",
        help="decode the MRs of FILE instead (one `slot[value], ...` MR a "
        "line; no references, so no scores); outputs go to RUN_DIR/outputs-<FILE stem>.txt",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="outputs file (default RUN_DIR/outputs-SPLIT.txt); refs and "
        "scores go beside it; with several run dirs it must contain {run}",
    )
    p.add_argument("--limit", type=int, metavar="N", help="decode only the first N unique MRs (default: all)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 (default auto)")
    p.add_argument("--no-scores", action="store_true", help="write outputs and refs but do not score")
    p.add_argument(
        "--metrics",
        metavar="LIST",
        help="comma-separated subset of BLEU,NIST,METEOR,ROUGE_L,CIDEr (default: all five, as the official E2E scorer)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("decoding (default: the run's config.yaml decode section)")
    g.add_argument("--greedy", action="store_const", const=1, dest="beam_size", help="greedy decoding: --beam-size 1")
    add_config_options(g, DecodeConfig, {"num_threads": ["--threads"]})
    p.set_defaults(func=cmd_generate)
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodeConfig)}
    try:
        files = generate_runs(
            args.run_dirs,
            args.split,
            out=args.out,
            limit=args.limit,
            mrs=args.mrs,
            device=args.device,
            progress=not args.quiet,
            scores=not args.no_scores,
            metrics=args.metrics.split(",") if args.metrics else None,
            **overrides,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if launched_rank() != 0:  # under torchrun / accelerate launch: the main process reports
        return 0
    for f in files:
        line = str(f.outputs)
        if not args.no_scores and args.mrs is None:  # scores were written
            res = json.loads(f.scores.read_text(encoding="utf-8"))
            res = res.get("A", res)  # WebNLG: the scores of all categories (S and U are in the scores file)
            line += "  " + "  ".join(f"{k} {v:.4f}" for k, v in res.items() if k in METRICS or k == "TER")
        print(line)
    return 0


# ------------------------------------------------------------------------------------------- reproduce


def cmd_reproduce(args: argparse.Namespace) -> int:
    out = Path(args.out or f"results/{args.experiment}{'-quick' if args.quick else ''}")
    if args.report_only:
        print(recipe.report(out))
        return 0
    grid = experiments.Grid(
        quick=args.quick,
        seeds=tuple(args.seeds),
        sizes=tuple(args.sizes) if args.sizes else None,
        train_size=args.train_size,
    )
    p = experiments.plan(
        args.experiment,
        model=args.model,
        grid=grid,
        test_limit=args.test_limit,
        precision=args.precision,
        threads=args.threads,
        overrides=args.overrides,
        runs_dir=Path(args.runs_dir),
    )
    recipe.reproduce(p, out, keep_checkpoints=args.keep_checkpoints)
    print((out / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/results.json, table.md and plots")
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_reproduce_parser(sub) -> None:
    grid = experiments.Grid()
    p = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments end to end (train, generate, evaluate, report)",
        description=experiments.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", choices=list(experiments.EXPERIMENTS))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every run")
    p.add_argument(
        "--model",
        default=None,
        help="base model: HF id, local folder, smollm2-135m (offline), "
        "tiny-gpt2 (default: the experiment's: "
        + ", ".join(f"{e.name} {e.default_model}" for e in experiments.EXPERIMENTS.values())
        + ")",
    )
    p.add_argument("--quick", action="store_true", help="tiny random model and tiny data: a smoke test in ~1 minute")
    p.add_argument(
        "--seeds",
        type=_ints,
        default=list(grid.seeds),
        help=f"low-data subsample/training seeds (default {','.join(map(str, grid.seeds))})",
    )
    p.add_argument(
        "--sizes",
        type=_ints,
        default=None,
        help="lowdata/init train sizes (default: lowdata "
        + ",".join(map(str, paper.LOWDATA_SIZES))
        + "; init "
        + ",".join(map(str, paper.INIT_SIZES))
        + ")",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="table1/intrinsic/ablation/webnlg: train on a seeded subset of this size (default: table1 and "
        f"intrinsic the whole E2E train set, ablation 200, webnlg {paper.WEBNLG_TRAIN_SIZE})",
    )
    p.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="score the first N unique test sources (default: the experiment's: "
        + ", ".join(f"{e.name} {e.default_test_limit or 'all'}" for e in experiments.EXPERIMENTS.values())
        + " (E2E: 630 MRs; WebNLG: 1,862 triple sets, N/2 seen and N/2 unseen)"
        + f"; --quick {experiments.QUICK_TEST_LIMIT}). CIDEr takes document frequencies from the scored "
        "refs, so it is only comparable at the same N",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="training and decoding precision (default auto: bf16 where the device computes it natively "
        "(GPUs, CPUs with AVX512-BF16/AMX; ~2.5x faster there), else fp32 (bf16 is emulated and ~30x "
        "slower on AVX2-only CPUs)); the precision used is recorded per run and in the tables",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per run (default: the cores available to this process; give each of "
        "two reproduce commands sharing a machine half of them)",
    )
    p.add_argument("--out", default=None, help="results folder (default results/<experiment>)")
    p.add_argument("--runs-dir", default="runs", help="where run dirs (checkpoints, outputs) go (default runs/)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep resumable checkpoints of finished runs")
    p.add_argument("--report-only", action="store_true", help="rebuild table.md and plots from results.json")
    p.set_defaults(func=cmd_reproduce)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve prefixes over an OpenAI-compatible HTTP API (one model, many prefixes, continuous batching)",
        description=serve_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="base model: a name (hub id, local folder, smollm2-135m, "
        "tiny-gpt2) or a run dir (its base model; a prefix run also serves its prefix)",
    )
    p.add_argument(
        "--prefixes",
        nargs="*",
        default=[],
        metavar="DIR_OR_RUN",
        help="run dirs, folders of run dirs, or prefix.safetensors files; each prefix is named after its run dir",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port, printed)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="model dtype (default auto: bf16 only where native; fp32 outputs do not depend on what shares a batch)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the cores available)")
    p.add_argument("--max-batch", type=int, default=64, help="rows decoded together (default 64)")
    p.add_argument(
        "--max-waiting", type=int, default=256, help="requests queued beyond the batch before 429 (default 256)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=100, help="max_tokens when a request gives none (default 100, decode's)"
    )
    p.add_argument(
        "--min-tokens",
        type=int,
        default=5,
        help="EOS banned before this many tokens unless a request says min_tokens (default 5, decode's)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, time running requests get to finish before they are cancelled (default 30)",
    )
    p.add_argument("--no-prefix-updates", action="store_true", help="refuse POST/DELETE /v1/prefixes (403)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    """The `serve` command: load, serve until SIGTERM/SIGINT. Errors print one line and return 2."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"error: serve needs FastAPI and uvicorn: pip install 'prefix-tuning[serve]' ({e})", file=sys.stderr)
        return 2
    try:
        state = load_state(
            args.model,
            args.prefixes,
            device=args.device,
            precision=args.precision,
            threads=args.threads,
            max_batch=args.max_batch,
            max_waiting=args.max_waiting,
            max_tokens=args.max_tokens,
            min_tokens=args.min_tokens,
            drain_s=args.drain_seconds,
        )
    except (FileNotFoundError, ValueError, ApiError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state.prefix_updates = not args.no_prefix_updates
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    serve_module.serve(state, args.host, args.port, log_level=args.log_level, sock=sock)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefix-tuning",
        description="Prefix-tuning (Li & Liang, ACL 2021) for Hugging Face causal LMs: train, generate, "
        "evaluate with the official E2E metrics, and reproduce the paper's experiments.",
    )
    parser.add_argument("--version", action="version", version=f"prefix-tuning {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train prefix-tuning or fine-tuning from a YAML config",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config file (see configs/), or 'defaults' for the built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-4")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)

    add_generate_parser(sub)
    add_evaluate_parser(sub)
    add_reproduce_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`train CFG --no-resume train.lr=1e-4`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "config", None) == "defaults":
        args.config = None
    try:
        return int(args.func(args) or 0)
    except (
        ConfigError,
        DataError,
        EvalInputError,
        ModelLoadError,
        FileNotFoundError,
        CorruptFileError,
        DiskFullError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
