"""Per (train size, seed) of `reproduce init` (§7.4, Figure 5): random init's BLEU and best dev loss beside the
real-word inits' (mean, min, max; how many beat random), and task-relevant words ("summarize", "table-to-text:",
as the paper names them) against the others. The numbers behind README's initialisation analysis.

    python scripts/init_stats.py results/init/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TASK_WORDS = ("summarize", "table-to-text:")


def summarize(runs: list[dict]) -> list[str]:
    """One line per (train size, seed) of the runs that were scored (`results.json`'s "runs")."""
    runs = [r for r in runs if "BLEU" in r["metrics"]]
    lines = []
    for size, seed in sorted({(r["size"], r["seed"]) for r in runs}):
        cell = [r for r in runs if (r["size"], r["seed"]) == (size, seed)]
        rand = [r for r in cell if r["init"] == "random"]
        words = [r for r in cell if r["init"] != "random"]
        if not rand or not words:
            lines.append(f"n={size} seed {seed}: incomplete ({len(cell)} runs)")
            continue
        bleu = {r["init"]: 100 * r["metrics"]["BLEU"] for r in cell}
        w = [bleu[r["init"]] for r in words]
        task = [bleu[r["init"]] for r in words if r["init"] in TASK_WORDS]
        other = [bleu[r["init"]] for r in words if r["init"] not in TASK_WORDS]
        dev = [r["best_dev_loss"] for r in words]
        lines.append(
            f"n={size} seed {seed}: random BLEU {bleu['random']:.1f}, dev {rand[0]['best_dev_loss']:.2f}, "
            f"steps {rand[0]['steps']} | {len(w)} words BLEU mean {statistics.fmean(w):.1f} "
            f"[{min(w):.1f}, {max(w):.1f}], {sum(x > bleu['random'] for x in w)} above random, "
            f"dev [{min(dev):.2f}, {max(dev):.2f}], steps [{min(r['steps'] for r in words)}, "
            f"{max(r['steps'] for r in words)}] | task words {statistics.fmean(task) if task else float('nan'):.1f} "
            f"vs others {statistics.fmean(other) if other else float('nan'):.1f}"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="results.json of `prefix-tuning reproduce init`")
    print("\n".join(summarize(json.loads(p.parse_args().results.read_text())["runs"])))


if __name__ == "__main__":
    main()
