"""`prefix-tuning` command line: each subcommand maps to one plain function; nothing else lives here."""

from __future__ import annotations

import argparse
import sys

from . import __version__

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
    from .config import load_config, to_dict
    from .train import train

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    res = train(cfg, resume=not args.no_resume)
    print(f"run dir: {res.run_dir}\n  steps: {res.steps}  best dev loss: {res.best_dev_loss}\n"
          f"  train time: {res.train_seconds:.1f} s ({res.seconds_per_epoch:.1f} s/epoch)\n"
          f"  trainable params: {res.trainable_params:,}  stored params: {res.stored_params:,}\n"
          f"  saved: {res.artifact}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefix-tuning",
        description="Prefix-tuning (Li & Liang, ACL 2021) for Hugging Face causal LMs: train, generate, "
                    "evaluate with the official E2E metrics, and reproduce the paper's experiments.")
    parser.add_argument("--version", action="version", version=f"prefix-tuning {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train prefix-tuning or fine-tuning from a YAML config",
                       description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file (see configs/), or 'defaults' for the built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-4")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)

    from .decode import add_generate_parser
    from .experiments import add_reproduce_parser
    from .metrics.cli import add_evaluate_parser

    add_generate_parser(sub)
    add_evaluate_parser(sub)
    add_reproduce_parser(sub)
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
    from .checkpoint import CorruptFileError, DiskFullError
    from .config import ConfigError
    from .e2e import DataError
    from .metrics import EvalInputError
    from .models import ModelLoadError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, EvalInputError, ModelLoadError, FileNotFoundError, CorruptFileError,
            DiskFullError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
