"""Print the full-test-set table of an experiment: RESULTS/full-test/<run>.scores.json (from `prefix-tuning
generate ... --out 'runs/full630/outputs-{run}.txt'`, copied there) beside BLEU on the experiment's own
test subset (RESULTS/results.json), plus means over seeds for low-data runs.

    python scripts/full_test_table.py results/lowdata
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from prefix_tuning.metrics import METRICS
from prefix_tuning.report import _fmt


def main(results: Path) -> str:
    runs = {r["name"]: r for r in json.loads((results / "results.json").read_text())["runs"]}
    lines = ["| run | " + " | ".join(METRICS) + " | BLEU, subset |", "|---|" + "---|" * (len(METRICS) + 1)]
    groups = defaultdict(list)
    for name, r in runs.items():  # experiment order
        path = results / "full-test" / f"{name}.scores.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        lines.append(
            f"| {name} | " + " | ".join(_fmt(k, s[k]) for k in METRICS) + f" | {_fmt('BLEU', r['metrics']['BLEU'])} |"
        )
        if "size" in r:
            groups[(r["size"], r["method"])].append(s)
    if groups:
        lines += ["", "| train size | method | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for (size, method), ss in sorted(groups.items()):
            lines.append(
                f"| {size} | {method} | "
                + " | ".join(_fmt(k, statistics.fmean(s[k] for s in ss)) for k in METRICS)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
