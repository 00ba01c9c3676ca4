"""``prefix-tuning evaluate``: score an output file like the official E2E scorer.

The project's main CLI calls :func:`add_evaluate_parser`; ``python -m
prefix_tuning.metrics.cli evaluate ...`` runs the same command stand-alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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
    parser.add_argument("refs", metavar="REFS", help="references: E2E CSV (mr,ref) or grouped plain text")
    parser.add_argument(
        "output", metavar="OUTPUT", help="system outputs: one line per MR, or CSV/TSV with an MR column"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with the metric names as keys, at full precision "
        '(with --compare: {"A": ..., "B": ..., "paired_bootstrap": ...})',
    )
    parser.add_argument(
        "--metrics",
        default=",".join(METRICS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(METRICS)} (default: all five)",
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


def _score_with_fallback(
    refs: list[list[str]], systems: list[list[str]], wanted: list[str]
) -> list[dict[str, float]]:
    """Score; if Java is missing, warn and return the metrics that need no Java."""
    try:
        return score_many(refs, systems, wanted)
    except JavaNotFoundError as err:
        skipped = [name for name in wanted if name in JAVA_METRICS]
        rest = [name for name in wanted if name not in JAVA_METRICS]
        print(f"warning: {', '.join(skipped)} not computed: {err}", file=sys.stderr)
        return score_many(refs, systems, rest) if rest else [{} for _ in systems]


def _table(rows: list[tuple[str, list[str]]], header: list[str]) -> str:
    widths = [
        max(len(header[i]), *(len(r[1][i - 1]) if i else len(r[0]) for r in rows)) for i in range(len(header))
    ]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for name, cells in rows:
        lines.append("  ".join([name.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:]))]))
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``; returns the process exit status."""
    try:
        wanted = normalize_metrics(part for part in args.metrics.split(",") if part.strip())
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
