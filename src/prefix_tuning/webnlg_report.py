"""The `webnlg` experiment's report: BLEU, METEOR and TER on seen (S), unseen (U) and all (A) test categories
per method (mean ± sd over seeds) beside the paper's Table 1, and a plot. Built from results.json alone, whose
runs hold `metrics = {"S": {...}, "U": {...}, "A": {...}}` (`corpora.score_webnlg_outputs`)."""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path

from .paper import WEBNLG_RESULTS
from .plots import METHOD_STYLE, pyplot, save
from .report import fmt_webnlg, mean_pm

SPLITS = ("S", "U", "A")
METRICS = ("BLEU", "METEOR", "TER")


def _values(runs: list[dict], metric: str, split: str) -> list[float]:
    return [r["metrics"][split][metric] for r in runs if metric in r["metrics"].get(split, {})]


def sua_table(data: dict) -> list[str]:
    """Mean ± sd over seeds per method and S/U/A split, then the paper's numbers (GPT-2 Medium, full data)."""
    methods = list(dict.fromkeys(r["method"] for r in data["runs"]))
    cols = [f"{m} {s}" for m in METRICS for s in SPLITS]
    lines = [
        "",
        "## WebNLG test: seen (S) / unseen (U) / all (A) categories",
        "",
        (
            "BLEU in % (multi-bleu, lower-cased, 3 refs), METEOR and TER as fractions (TER: lower is better); "
            "a metric left out (e.g. METEOR in --quick) shows `-`."
        ),
        "",
        "| source | method | seeds | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for method in methods:
        rs = [r for r in data["runs"] if r["method"] == method]
        cells = [mean_pm(_values(rs, m, s), partial(fmt_webnlg, m)) for m in METRICS for s in SPLITS]
        lines.append(f"| ours | {method} | {len(rs)} | " + " | ".join(cells) + " |")
    for method, vals in WEBNLG_RESULTS.items():
        cells = [(f"{v:.1f}" if m == "BLEU" else f"{v:.2f}") for m in METRICS for v in vals[m]]
        lines.append(f"| paper (GPT-2 M, full) | {method} | - | " + " | ".join(cells) + " |")
    return lines


def extrapolation(data: dict) -> list[str]:
    """The paper's extrapolation signature (§6.3, Table 1): how much BLEU each method loses from seen to unseen
    categories, per seed and as mean ± sd, beside the paper's drop. Unseen BLEU as a share of seen BLEU makes
    methods at different absolute levels comparable."""
    lines = [
        "",
        "## Extrapolation: BLEU drop from seen (S) to unseen (U) categories",
        "",
        "| source | method | seeds | S - U per seed | S - U | U / S |",
        "|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in data["runs"]):
        rs = [r for r in data["runs"] if r["method"] == method and "BLEU" in r["metrics"].get("S", {})]
        drops = [100 * (r["metrics"]["S"]["BLEU"] - r["metrics"]["U"]["BLEU"]) for r in rs]
        ratios = [r["metrics"]["U"]["BLEU"] / r["metrics"]["S"]["BLEU"] for r in rs if r["metrics"]["S"]["BLEU"]]
        if not drops:
            continue
        per_seed = ", ".join(f"{d:.1f}" for d in drops)
        drop, ratio = mean_pm(drops, "{:.1f}".format), mean_pm(ratios, "{:.2f}".format)
        lines.append(f"| ours | {method} | {len(rs)} | {per_seed} | {drop} | {ratio} |")
    for method, vals in WEBNLG_RESULTS.items():
        s, u, _ = vals["BLEU"]
        lines.append(f"| paper (GPT-2 M, full) | {method} | - | - | {s - u:.1f} | {u / s:.2f} |")
    return lines


def sua_plot(data: dict, out_dir: Path) -> Path:
    """BLEU, METEOR and TER per split, one bar per method (mean over seeds, sd as error bar), paper as dots."""
    plt = pyplot()
    runs = data["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / max(len(methods), 1)
    for ax, m in zip(axes, METRICS):
        scale = 100 if m == "BLEU" else 1
        for j, method in enumerate(methods):
            rs = [r for r in runs if r["method"] == method]
            vals = [[scale * x for x in _values(rs, m, s)] for s in SPLITS]
            means = [statistics.fmean(v) if v else float("nan") for v in vals]
            sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            name, color = METHOD_STYLE.get(method, (method, None))
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(SPLITS))]
            ax.bar(xs, means, width, yerr=sds if any(sds) else None, capsize=3, color=color, label=f"{name} (ours)")
            if method in WEBNLG_RESULTS:
                paper = [v * (1 if m == "BLEU" else scale) for v in WEBNLG_RESULTS[method][m]]
                ax.plot(xs, paper, "D", color=color, markeredgecolor="black", label=f"{name} (paper)")
        ax.set_xticks(range(len(SPLITS)), ["seen", "unseen", "all"])
        ax.set_title(m + (" (%)" if m == "BLEU" else " (lower is better)" if m == "TER" else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    cfg = runs[0]["config"]
    fig.suptitle(
        f"WebNLG 2017 test: prefix-tuning vs fine-tuning ({cfg['model']['name']}, "
        f"{cfg['data']['train_size'] or 'all'} training rows; paper: GPT-2 Medium, full data)"
    )
    return save(fig, out_dir / "webnlg.png")
