"""The plots of an experiment (paper Figures 3, 4, 5 and Table 1's methods side by side), drawn from its
results.json alone: plain functions that `experiments.EXPERIMENTS` picks per experiment."""

from __future__ import annotations

import statistics
from pathlib import Path

from .metrics import METRICS
from .paper import INTRINSIC_BLEU
from .report import PERCENT, group_runs


def pyplot():
    import matplotlib  # lazy: only reports draw, and matplotlib is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scale(k: str, v: float) -> float:
    return 100 * v if k in PERCENT else v


def ablation_plot(data: dict, out_dir: Path) -> Path:
    """Every metric vs prefix length P (paper Figure 4)."""
    plt = pyplot()
    runs = sorted(data["runs"], key=lambda r: r["prefix_length"])
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    for ax, k in zip(axes, METRICS):
        xs = [r["prefix_length"] for r in runs if k in r["metrics"]]
        ax.plot(xs, [_scale(k, r["metrics"][k]) for r in runs if k in r["metrics"]], "o-")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("prefix length P")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Prefix-length ablation on E2E ({runs[0]['config']['model']['name']})")
    return save(fig, out_dir / "ablation.png")


def lowdata_plot(data: dict, out_dir: Path) -> Path:
    """BLEU and ROUGE-L vs train size per method: dots = seeds, line = mean (paper Figure 3)."""
    plt = pyplot()
    runs = data["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, color in (("prefix", "tab:blue"), ("finetune", "tab:orange")):
        rs = [r for r in runs if r["method"] == method]
        sizes = sorted({r["size"] for r in rs})
        for ax, k in zip(axes, ("BLEU", "ROUGE_L")):
            pts = [(r["size"], _scale(k, r["metrics"][k])) for r in rs if k in r["metrics"]]
            ax.scatter(*zip(*pts), color=color, alpha=0.4, s=18) if pts else None
            means = [
                statistics.fmean(v for n, v in pts if n == size) for size in sizes if any(n == size for n, _ in pts)
            ]
            ax.plot(sizes[: len(means)], means, "o-", color=color, label=method)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.set_xlabel("training examples")
            ax.set_ylabel(k + (" (%)" if k in PERCENT else ""))
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(
        f"Low-data E2E: prefix-tuning vs fine-tuning ({runs[0]['config']['model']['name']}; dots = seeds, line = mean)"
    )
    return save(fig, out_dir / f"{data['experiment']}.png")


METHOD_STYLE = {
    "prefix": ("prefix-tuning", "tab:blue"),
    "finetune": ("fine-tuning", "tab:orange"),
    "finetune-top2": ("FT-top2", "tab:green"),
    "adapter-3%": ("adapter 3%", "tab:red"),
    "adapter-0.1%": ("adapter 0.1%", "tab:purple"),
    "lora": ("LoRA", "tab:brown"),
    "embedding-only": ("embedding-only", "tab:gray"),
    "infix": ("infix", "tab:olive"),
}


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,.0f}"


def method_bars(data: dict, out_dir: Path) -> Path:
    """The methods side by side for every metric (mean over a method's runs, sd as error bar), values printed on
    the bars; % metrics and the others (NIST, CIDEr) on two scales."""
    plt = pyplot()
    runs = data["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    panels = [[k for k in METRICS if k in PERCENT], [k for k in METRICS if k not in PERCENT]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(methods)
    for ax, keys, unit in zip(axes, panels, ("%", "score")):
        for j, method in enumerate(methods):
            rs = [r for r in runs if r["method"] == method]
            vals = [[_scale(k, r["metrics"][k]) for r in rs if k in r["metrics"]] for k in keys]
            means = [statistics.fmean(v) if v else float("nan") for v in vals]
            sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            name, color = METHOD_STYLE.get(method, (method, None))
            label = f"{name} ({_count(statistics.fmean(r['stored_params'] for r in rs))} stored values)"
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(keys))]
            bars = ax.bar(xs, means, width, yerr=sds if any(sds) else None, capsize=3, color=color, label=label)
            ax.bar_label(bars, fmt="%.1f" if unit == "%" else "%.2f", padding=2, fontsize=9)
        ax.set_xticks(range(len(keys)), [k.replace("_", "-") for k in keys])
        ax.set_ylabel(unit)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(methods), frameon=False)
    cfg, seeds = runs[0]["config"], max(len([r for r in runs if r["method"] == m]) for m in methods)
    fig.suptitle(
        f"{data['experiment']}: E2E test metrics of {cfg['model']['name']}, "
        f"{cfg['data']['train_size'] or 'all'} training examples, {runs[0]['test_mrs']} test MRs"
        + (f" (mean ± sd over {seeds} runs)" if seeds > 1 else "")
    )
    return save(fig, out_dir / f"{data['experiment']}_metrics.png", rect=(0, 0.07, 1, 1))


def intrinsic_plot(data: dict, out_dir: Path) -> Path:
    """BLEU vs P per variant (solid: ours, the mean over seeds, dots = seeds; dashed: the paper's, §7.2-7.3)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    all_ps = sorted({r["prefix_length"] for r in data["runs"]} | {p for v in INTRINSIC_BLEU.values() for p in v})
    for variant in dict.fromkeys(r["method"] for r in data["runs"]):
        groups = group_runs(
            [r for r in data["runs"] if r["method"] == variant and "BLEU" in r["metrics"]], "prefix_length"
        )
        ps = sorted(P for (P,) in groups)
        name, color = METHOD_STYLE.get(variant, (variant, None))
        seeds = [(P, 100 * r["metrics"]["BLEU"]) for P in ps for r in groups[(P,)]]
        ax.scatter(*zip(*seeds), color=color, alpha=0.4, s=14) if seeds else None
        ax.plot(
            ps,
            [100 * statistics.fmean(r["metrics"]["BLEU"] for r in groups[(P,)]) for P in ps],
            "o-",
            color=color,
            label=name,
        )
        if variant in INTRINSIC_BLEU:
            ps = sorted(INTRINSIC_BLEU[variant])
            ax.plot(
                ps, [INTRINSIC_BLEU[variant][p] for p in ps], "x--", color=color, alpha=0.6, label=f"{name} (paper)"
            )
    ax.set_xticks(all_ps, [str(p) for p in all_ps])
    ax.set_xlabel("P")
    ax.set_ylabel("BLEU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"§7.2-7.3 on E2E ({data['runs'][0]['config']['model']['name']}; dots = seeds)")
    return save(fig, out_dir / "intrinsic.png")


def init_plot(data: dict, out_dir: Path) -> Path:
    """BLEU per initialisation, one group of bars per train size (paper Figure 5); dots = seeds."""
    plt = pyplot()
    runs = [r for r in data["runs"] if "BLEU" in r["metrics"]]
    inits = list(dict.fromkeys(r["init"] for r in runs))
    sizes = sorted({r["size"] for r in runs})
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(inits) + 1), 4))
    width = 0.8 / len(sizes)
    for j, n in enumerate(sizes):
        xs = [i + (j - (len(sizes) - 1) / 2) * width for i in range(len(inits))]
        vals = [[100 * r["metrics"]["BLEU"] for r in runs if r["init"] == init and r["size"] == n] for init in inits]
        ax.bar(xs, [statistics.fmean(v) if v else float("nan") for v in vals], width, label=f"{n} examples")
        for x, v in zip(xs, vals):
            ax.scatter([x] * len(v), v, color="black", s=8, zorder=3)
    ax.set_xticks(range(len(inits)), inits)
    ax.set_ylabel("BLEU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title(f"Prefix initialisation, low-data E2E ({runs[0]['config']['model']['name']})")
    return save(fig, out_dir / "init.png")


def save(fig, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path
