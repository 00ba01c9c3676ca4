"""Length and repetition of generated outputs, any dataset: mean words per output and the share of outputs that
repeat a word 4-gram (case-insensitive), a rough check of degenerate, looping beams beside BLEU and TER (README,
WebNLG). `--split N` also reports lines 1..N and the rest apart: a WebNLG test outputs file lists the 971 seen-
category sources first, then the 891 unseen.

    python scripts/output_stats.py --split 971 results/webnlg/outputs/*.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path


def repeats_ngram(text: str, n: int = 4) -> bool:
    """Whether some word n-gram occurs twice in the text."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def stats(outputs: list[str]) -> tuple[float, float]:
    """(mean words per output, share of outputs that repeat a 4-gram)."""
    if not outputs:
        raise ValueError("no outputs; expected one line per source")
    return sum(len(o.split()) for o in outputs) / len(outputs), sum(map(repeats_ngram, outputs)) / len(outputs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outputs", nargs="+", type=Path)
    p.add_argument("--split", type=int, default=None, help="also report lines 1..N and N+1.. apart")
    args = p.parse_args()
    for f in args.outputs:
        lines = f.read_text(encoding="utf-8").splitlines()
        parts = [("all", lines)] + (
            [("first", lines[: args.split]), ("rest", lines[args.split :])] if args.split else []
        )
        cells = [
            f"{name} {w:.1f} words, {100 * r:.1f}% repeat a 4-gram"
            for name, (w, r) in ((n, stats(x)) for n, x in parts)
        ]
        print(f"{f}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
