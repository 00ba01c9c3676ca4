"""How much of each E2E test MR an outputs file mentions: mean words per output and the share of the MRs' name,
near, food and area values that appear verbatim (case-insensitive) in its output — a rough slot-coverage check
beside BLEU (README, Table 1). Outputs files hold one line per unique test MR, in order of first appearance.

    python scripts/mr_coverage.py results/table1/outputs/*.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefix_tuning.data import group_by_mr, load_e2e, parse_mr

SLOTS = ("name", "near", "food", "area")  # free-text values; eatType, priceRange, ... are paraphrased


def coverage(mrs: list[str], outputs: list[str]) -> tuple[float, float, int]:
    """(mean words per output, share of SLOTS values mentioned, number of such values)."""
    if len(outputs) != len(mrs):
        raise ValueError(f"{len(outputs)} outputs for {len(mrs)} MRs; expected one line per unique test MR")
    values = [(v.lower(), o.lower()) for mr, o in zip(mrs, outputs) for slot, v in parse_mr(mr) if slot in SLOTS]
    words = sum(len(o.split()) for o in outputs) / len(outputs)
    return words, sum(v in o for v, o in values) / len(values), len(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outputs", nargs="+", type=Path)
    args = p.parse_args()
    mrs = [g.mr for g in group_by_mr(load_e2e("test"))]
    for f in args.outputs:
        words, share, n = coverage(mrs, f.read_text(encoding="utf-8").splitlines())
        print(f"{f}: {words:.1f} words/output, {100 * share:.1f}% of {n} name/near/food/area values mentioned")


if __name__ == "__main__":
    main()
