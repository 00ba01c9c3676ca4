"""``prefix-tuning evaluate``: score an output file like the official E2E scorer.

The project's main CLI calls :func:`add_evaluate_parser`; ``python -m
prefix_tuning.metrics.cli evaluate ...`` runs the same command stand-alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import owndata, webnlg
from .api import JAVA_METRICS, METRICS, normalize_metrics, score_many, signature
from .bootstrap import DEFAULT_SEED, paired_bootstrap
from .io import EvalInputError, check_count, read_outputs, read_refs
from .java import JavaNotFoundError

_DESCRIPTION = """\
Score system outputs against references exactly like the official E2E NLG Challenge
scorer (measure_scores.py: BLEU and NIST of mteval-v13a, METEOR 1.5, ROUGE-L and
CIDEr-D of the MS-COCO caption code), in a few seconds.

REFS is the official CSV (columns mr,ref; rows of one MR are grouped) or plain text
with the references of one MR on consecutive lines and a blank line between MRs.
OUTPUT has one output per line in the order of the MRs (a blank line is an empty
output), or is a CSV/TSV with an MR column and an output column, matched by MR.

BLEU, METEOR and ROUGE_L are printed as fractions (0.6593, not 65.93), like the
official scorer. METEOR, ROUGE_L and CIDEr need Java; without it they are skipped
with a warning and the other metrics are still printed.
"""

_EPILOG = """\
examples:
  prefix-tuning evaluate e2e-dataset/testset_w_refs.csv outputs.txt
  prefix-tuning evaluate refs.txt outputs.txt --json --metrics BLEU,NIST
  prefix-tuning evaluate refs.csv new.txt --compare old.txt --bootstrap-samples 1000

  prefix-tuning evaluate --dataset webnlg --split test runs/webnlg/outputs-test.txt
  prefix-tuning evaluate --dataset custom --format jsonl --group-field group test.jsonl outputs.txt

--dataset webnlg: OUTPUT only (one line per unique source of the split, as `generate`
writes, or one per entry); BLEU, METEOR, TER of the WebNLG 2017 challenge on seen (S),
unseen (U) and all (A) categories, all three as fractions.
--dataset custom: REFS is your jsonl/csv/tsv file (rows with the same source grouped,
in order of first appearance); the E2E metrics, and per group with --group-field.

exit status: 0 on success (also when Java metrics were skipped), 2 on unusable input.
"""


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score outputs with the official E2E metrics (BLEU, NIST, METEOR, ROUGE_L, CIDEr)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "refs",
        metavar="REFS",
        help="references: E2E CSV (mr,ref) or grouped plain text (--dataset webnlg: no REFS, give OUTPUT only)",
    )
    parser.add_argument(
        "output", metavar="OUTPUT", nargs="?", help="system outputs: one line per MR, or CSV/TSV with an MR column"
    )
    parser.add_argument(
        "--dataset",
        choices=("e2e", "webnlg", "custom"),
        default="e2e",
        help="e2e (default), webnlg (references from the WebNLG 2017 release, S/U/A scores) or "
        "custom (REFS is a jsonl/csv/tsv file of source/target rows)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "dev", "test"),
        help="--dataset webnlg: the split OUTPUT decodes (default test)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="--dataset webnlg: data folder (default $PREFIX_TUNING_DATA, then the user cache)",
    )
    parser.add_argument(
        "--format",
        default=None,
        choices=("jsonl", "csv", "tsv"),
        help="--dataset custom: REFS format (default: from its extension)",
    )
    parser.add_argument("--source-field", default="source", help="--dataset custom: source field (default source)")
    parser.add_argument("--target-field", default="target", help="--dataset custom: target field (default target)")
    parser.add_argument("--group-field", default=None, help="--dataset custom: group label field, scored per group")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with the metric names as keys, at full precision "
        '(with --compare: {"A": ..., "B": ..., "paired_bootstrap": ...})',
    )
    parser.add_argument(
        "--metrics",
        default=None,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(METRICS)} (default: all five; --dataset webnlg: of "
        "BLEU,METEOR,TER, default all three)",
    )
    parser.add_argument(
        "--compare",
        metavar="OUTPUT_B",
        help="a second system's outputs: score it too and run a paired bootstrap test "
        "of BLEU(B) - BLEU(A), where A is OUTPUT",
    )
    parser.add_argument(
        "--bootstrap-samples",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for --compare (default: 1000)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap random seed (default: {DEFAULT_SEED})"
    )
    parser.set_defaults(func=run_evaluate)
    return parser


def _score_with_fallback(refs: list[list[str]], systems: list[list[str]], wanted: list[str]) -> list[dict[str, float]]:
    """Score; if Java is missing, warn and return the metrics that need no Java."""
    try:
        return score_many(refs, systems, wanted)
    except JavaNotFoundError as err:
        skipped = [name for name in wanted if name in JAVA_METRICS]
        rest = [name for name in wanted if name not in JAVA_METRICS]
        print(f"warning: {', '.join(skipped)} not computed: {err}", file=sys.stderr)
        return score_many(refs, systems, rest) if rest else [{} for _ in systems]


def _table(rows: list[tuple[str, list[str]]], header: list[str]) -> str:
    widths = [max(len(header[i]), *(len(r[1][i - 1]) if i else len(r[0]) for r in rows)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for name, cells in rows:
        lines.append("  ".join([name.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:]))]))
    return "\n".join(lines)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _webnlg_scores(args: argparse.Namespace) -> dict:
    if args.output is not None:
        raise ValueError("--dataset webnlg takes OUTPUT only (the references come from the WebNLG release)")
    entries = webnlg.load_webnlg(args.split, data_dir=args.data_dir)
    return webnlg.score_outputs(
        entries,
        webnlg.decode_groups(entries),
        _read_lines(args.refs),
        [m for m in args.metrics.split(",") if m.strip()] if args.metrics else None,
    )


def _custom_scores(args: argparse.Namespace) -> dict:
    if args.output is None:
        raise ValueError("--dataset custom needs REFS (your data file) and OUTPUT")
    fmt = args.format or args.refs.rsplit(".", 1)[-1].lower()
    if fmt not in ("jsonl", "csv", "tsv"):
        raise ValueError(f"{args.refs}: cannot tell the format from the extension; pass --format jsonl|csv|tsv")
    groups = owndata.source_groups(
        owndata.load_rows(
            args.refs, fmt, source_field=args.source_field, target_field=args.target_field, group_field=args.group_field
        )
    )
    hyps = _read_lines(args.output)
    check_count(args.output, len(hyps), len(groups))
    wanted = normalize_metrics(part for part in (args.metrics or ",".join(METRICS)).split(",") if part.strip())
    return owndata.score_by_group(groups, hyps, lambda refs, outs: _score_with_fallback(refs, [outs], wanted)[0])


def _print_nested(res: dict) -> None:
    """One line per split or group: `NAME  METRIC value ...` (flat metrics are `all`)."""
    rows = {"all": {k: v for k, v in res.items() if isinstance(v, float)}}
    for name, sub in res.items():
        if isinstance(sub, dict):
            rows.update(sub if name == "groups" else {name: sub})
    for name, sub in rows.items():
        if sub:
            print(f"{name}  " + "  ".join(f"{k} {v:.4f}" for k, v in sub.items() if isinstance(v, float)))


_DATASET_SCORES = {"webnlg": _webnlg_scores, "custom": _custom_scores}
"""`evaluate --dataset` modes other than E2E's: args -> scores (S/U/A, or all sources with per-group scores)."""


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``; returns the process exit status."""
    if args.dataset != "e2e":
        try:
            res = _DATASET_SCORES[args.dataset](args)
        except (EvalInputError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(res))
        else:
            _print_nested(res)
        return 0
    try:
        if args.output is None:
            raise ValueError("expected REFS and OUTPUT (or --dataset webnlg OUTPUT)")
        wanted = normalize_metrics(part for part in (args.metrics or ",".join(METRICS)).split(",") if part.strip())
        if args.compare is not None and args.bootstrap_samples < 1:
            raise ValueError("--bootstrap-samples must be at least 1")
        mrs, refs = read_refs(args.refs)
        systems = []
        for path in [args.output] + ([args.compare] if args.compare is not None else []):
            hyps = read_outputs(path, mrs)
            check_count(path, len(hyps), len(refs))
            systems.append(hyps)
    except (EvalInputError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = _score_with_fallback(refs, systems, wanted)
    boot = None
    if args.compare is not None:
        boot = paired_bootstrap(refs, systems[0], systems[1], n=args.bootstrap_samples, seed=args.seed)
    if args.json:
        if boot is None:
            print(json.dumps(results[0]))
        else:
            print(json.dumps({"A": results[0], "B": results[1], "paired_bootstrap": boot}))
        return 0
    names = [name for name in wanted if name in results[0]]
    header = ["metric", "score"] if boot is None else ["metric", "A", "B"]
    rows = [(name, [f"{out[name]:.4f}" for out in results]) for name in names]
    print(_table(rows, header))
    if boot is not None:
        print(
            f"\npaired bootstrap ({boot['samples']} samples, seed {boot['seed']}): "
            f"BLEU(B) - BLEU(A) = {boot['delta']:+.4f}, 95% CI [{boot['ci_low']:+.4f}, "
            f"{boot['ci_high']:+.4f}], p = {boot['p_value']:.4f}"
        )
    if names:
        print(f"\nsignature: {signature(names)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m prefix_tuning.metrics.cli evaluate ...``."""
    parser = argparse.ArgumentParser(prog="python -m prefix_tuning.metrics.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
