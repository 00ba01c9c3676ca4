"""Tables and plots of an experiment, rebuilt from its results.json alone: plain functions, which
`experiments.EXPERIMENTS` picks per experiment (sections of table.md, plots)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from .metrics import METRICS
from .paper import E2E_RESULTS, INTRINSIC_BLEU

PERCENT = {"BLEU", "METEOR", "ROUGE_L"}  # shown x100, as papers print them


def _fmt(metric: str, v: float) -> str:
    return f"{100 * v:.1f}" if metric in PERCENT else f"{v:.2f}"


def fmt_webnlg(metric: str, v: float) -> str:
    """WebNLG's columns as the paper prints them: BLEU in %, METEOR and TER as fractions."""
    return f"{100 * v:.1f}" if metric == "BLEU" else f"{v:.2f}"


def _budget(train: dict) -> str:
    return f"max steps {train['max_steps']}" if train.get("max_steps") else f"{train['epochs']} epochs"


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def step_seconds(run: dict) -> float:
    """A run's training seconds per step: the median of its logged steps where recorded (robust to a pause or a
    busy moment of the machine), else the mean."""
    return run.get("step_seconds_median") or run["train_seconds"] / max(run["steps"], 1)


def precision_of(run: dict) -> str:
    """`train/decode` precision of a result (results before `auto` existed hold it only in their config)."""
    p = run.get("precision") or {k: run["config"][k]["precision"] for k in ("train", "decode")}
    return f"{p['train']}/{p['decode']}" if p["train"] != p["decode"] else p["train"]


def make_table(data: dict, sections: Sequence[Callable[[dict], list[str]]] = ()) -> str:
    """table.md: the setup, one row per run, then the experiment's own sections."""
    exp, runs = data["experiment"], data["runs"]
    lines = [f"# {exp}", ""]
    if runs:
        cfg = runs[0]["config"]
        lines += [
            (
                f"Model `{cfg['model']['name']}`; test MRs scored: {runs[0]['test_mrs']} (unique sources of the "
                f"{cfg['data'].get('dataset', 'e2e')} test set in order of first appearance); BLEU, METEOR, ROUGE-L in %. Metrics signature: "
                f"`{runs[0].get('metrics_signature')}`."
            ),
            "",
            (
                f"Setup of the first run (see results.json for each): train size {cfg['data']['train_size'] or 'all'}, "
                f"method init `{cfg['method']['init']}`, lr {cfg['train']['lr']}, batch {cfg['train']['batch_size']}, "
                f"{_budget(cfg['train'])}, precision {precision_of(runs[0])}, output = weights with "
                f"the best dev loss; decoding beam {cfg['decode']['beam_size']}, max {cfg['decode']['max_new_tokens']} "
                f"new tokens." + (f" Machine: {runs[0]['cpu']}." if runs[0].get("cpu") else "")
            ),
            "",
        ]
    precisions = sorted({precision_of(r) for r in runs})
    if len(precisions) > 1:
        lines += [
            (
                f"**Mixed precisions** (train/decode): {', '.join(precisions)}; compare runs of one precision "
                "(bf16 rounding changes outputs, and its speed depends on the CPU)."
            ),
            "",
        ]
    split_scores = any("A" in r["metrics"] for r in runs)  # WebNLG: per-split dicts; the runs table shows "all"
    keys = [k for k in ("BLEU", "METEOR", "TER") if any(k in r["metrics"].get("A", {}) for r in runs)]
    cols = [f"{k} (all)" for k in keys] if split_scores else list(METRICS)
    extra = ["stored params", "checkpoint MB", "train s/epoch", "steps", "best dev loss", "precision"]
    lines += [
        "## Runs",
        "",
        "| " + " | ".join(["run", *cols, *extra]) + " |",
        "|" + "---|" * (1 + len(cols) + len(extra)),
    ]
    for r in runs:
        m = r["metrics"]
        dev = f"{r['best_dev_loss']:.3f}" if r.get("best_dev_loss") is not None else "-"
        if split_scores:
            a = m.get("A", {})
            scores = [fmt_webnlg(k, a[k]) if k in a else "-" for k in keys]
        else:
            scores = [_fmt(k, m[k]) if k in m else "-" for k in METRICS]
        lines.append(
            f"| {r['name']} | "
            + " | ".join(scores)
            + f" | {r['stored_params']:,} | {r['checkpoint_bytes'] / 1e6:.2f} | {r['seconds_per_epoch']:.1f}"
            f" | {r['steps']} | {dev} | {precision_of(r)} |"
        )
    for section in sections:
        lines += section(data)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ sections of table.md


def seed_means(data: dict) -> list[str]:
    """Mean ± sd over seeds per (train size, method): the low-data table (paper §7.1)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in data["runs"]:
        groups[(r["size"], r["method"])].append(r)
    lines = [
        "",
        "## Mean ± sd over seeds",
        "",
        "| train size | method | seeds | " + " | ".join(METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for (size, method), rs in sorted(groups.items()):
        cells = []
        for k in METRICS:
            xs = [r["metrics"][k] for r in rs if k in r["metrics"]]
            if xs:
                mu, sd = _mean_sd(xs)
                cells.append(f"{_fmt(k, mu)} ± {_fmt(k, sd)}")
            else:
                cells.append("-")
        lines.append(f"| {size} | {method} | {len(rs)} | " + " | ".join(cells) + " |")
    return lines


def speed_and_storage(data: dict) -> list[str]:
    """Fine-tuning vs prefix-tuning: training time per step and stored values per task (paper §5, §6)."""
    by = defaultdict(list)
    for r in data["runs"]:
        by[r["method"]].append(r)
    if "prefix" not in by or "finetune" not in by:
        return []
    per_step = lambda rs: statistics.fmean(step_seconds(r) for r in rs)
    stored = lambda rs: statistics.fmean(r["stored_params"] for r in rs)
    return [
        "",
        (
            f"Fine-tuning / prefix-tuning training time per step: "
            f"{per_step(by['finetune']) / per_step(by['prefix']):.2f}x (paper: ~1.5x per epoch on GPU). Storage "
            f"per task: {stored(by['finetune']) / stored(by['prefix']):,.0f}x less for prefix-tuning."
        ),
    ]


def paper_e2e(data: dict) -> list[str]:
    """The paper's E2E numbers (GPT-2 Medium, full data) for comparison."""
    lines = [
        "",
        "## Paper (GPT-2 Medium, full E2E; BLEU/METEOR/ROUGE-L in %)",
        "",
        "| source | method | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for src, rows in E2E_RESULTS.items():
        for method, vals in rows.items():
            lines.append(f"| {src} | {method} | " + " | ".join(str(v) for v in vals) + " |")
    return lines


def _paper_row(method: str) -> tuple[float, ...] | None:
    """The paper's scores of a Table 1 row: the first source that reports it (arXiv Table 1 first)."""
    return next((rows[method] for rows in E2E_RESULTS.values() if method in rows), None)


def _by(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Runs grouped by the values of `keys` (the seeds of one setting together), in first-seen order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _cell(metric: str, rs: list[dict]) -> str:
    """Mean (± sd where several seeds) of a metric over runs, in the table's units."""
    xs = [r["metrics"][metric] for r in rs if metric in r["metrics"]]
    if not xs:
        return "-"
    mu, sd = _mean_sd(xs)
    return _fmt(metric, mu) + (f" ± {_fmt(metric, sd)}" if len(xs) > 1 else "")


def table1_rows(data: dict) -> list[str]:
    """Table 1 side by side: our scores (mean ± sd over seeds), the paper's (GPT-2 Medium, full E2E), stored
    values, MB, train s/step; then where each method's dev loss bottomed out (convergence)."""
    lines = [
        "",
        "## Table 1: ours (mean ± sd over seeds) vs paper (BLEU/METEOR/ROUGE-L in %)",
        "",
        "| method | seeds | "
        + " | ".join(f"{k} | paper" for k in METRICS)
        + " | stored values | MB | s/step (median) |",
        "|---|---|" + "---|---|" * len(METRICS) + "---|---|---|",
    ]
    groups = _by(data["runs"], "method")
    for (method,), rs in groups.items():
        paper = _paper_row(method)
        cells = [f"{_cell(k, rs)} | {paper[i] if paper else '-'}" for i, k in enumerate(METRICS)]
        s_step = statistics.fmean(step_seconds(r) for r in rs)
        lines.append(
            f"| {method} | {len(rs)} | " + " | ".join(cells) + f" | {rs[0]['stored_params']:,} | "
            f"{rs[0]['checkpoint_bytes'] / 1e6:.2f} | {s_step:.2f} |"
        )
    return lines + convergence(data)


def convergence(data: dict) -> list[str]:
    """Per run, the step of its best dev loss out of its steps: a best at the last evaluation means the run
    was still improving (under-trained at this budget)."""
    runs = [r for r in data["runs"] if r.get("dev_curve")]
    if not runs:
        return []
    lines = ["", "## Convergence: step of the best dev loss / steps (dev loss first → best → last)", ""]
    for r in runs:
        curve = r["dev_curve"]
        best = min(curve, key=lambda c: c[1])
        flag = " (still falling at the end)" if best is curve[-1] else ""
        lines.append(
            f"- {r['name']}: {best[0]} / {r['steps']} ({curve[0][1]:.2f} → {best[1]:.2f} → {curve[-1][1]:.2f}){flag}"
        )
    return lines


def intrinsic_rows(data: dict) -> list[str]:
    """§7.2-7.3: BLEU per variant and P (mean ± sd over seeds), ours beside the paper's."""
    lines = [
        "",
        "## §7.2-7.3: where the continuous tokens go (BLEU %, mean ± sd over seeds)",
        "",
        "| variant | P | seeds | BLEU | paper BLEU | stored values |",
        "|---|---|---|---|---|---|",
    ]
    groups = _by(data["runs"], "method", "prefix_length")
    for (method, P), rs in sorted(groups.items()):
        paper = INTRINSIC_BLEU.get(method, {}).get(P, "-")
        lines.append(f"| {method} | {P} | {len(rs)} | {_cell('BLEU', rs)} | {paper} | {rs[0]['stored_params']:,} |")
    return lines + ["", "Paper (ACL Table 5, GPT-2 Medium, full E2E): prefix (P=5) 70.3 BLEU."]


def init_rows(data: dict) -> list[str]:
    """§7.4 / Figure 5: mean ± sd BLEU over seeds per initialisation and train size."""
    groups = _by([r for r in data["runs"] if "BLEU" in r["metrics"]], "init", "size")
    sizes = sorted({size for _, size in groups})
    lines = [
        "",
        "## §7.4: prefix initialisation (BLEU %, mean ± sd over seeds)",
        "",
        "| init | " + " | ".join(f"n={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for init in dict.fromkeys(i for i, _ in groups):
        lines.append(f"| {init} | " + " | ".join(_cell("BLEU", groups.get((init, n), [])) for n in sizes) + " |")
    return lines


# ------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib  # lazy: only reports draw, and matplotlib is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scale(k: str, v: float) -> float:
    return 100 * v if k in PERCENT else v


def ablation_plot(data: dict, out_dir: Path) -> Path:
    """Every metric vs prefix length P (paper Figure 4)."""
    plt = _pyplot()
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
    return _save(fig, out_dir / "ablation.png")


def lowdata_plot(data: dict, out_dir: Path) -> Path:
    """BLEU and ROUGE-L vs train size per method: dots = seeds, line = mean (paper Figure 3)."""
    plt = _pyplot()
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
    return _save(fig, out_dir / f"{data['experiment']}.png")


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
    plt = _pyplot()
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
    return _save(fig, out_dir / f"{data['experiment']}_metrics.png", rect=(0, 0.07, 1, 1))


def intrinsic_plot(data: dict, out_dir: Path) -> Path:
    """BLEU vs P per variant (solid: ours; dashed: the paper's, §7.2-7.3)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["method"] for r in data["runs"]):
        groups = _by([r for r in data["runs"] if r["method"] == variant and "BLEU" in r["metrics"]], "prefix_length")
        ps = sorted(P for (P,) in groups)
        name, color = METHOD_STYLE.get(variant, (variant, None))
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
    ax.set_xlabel("P")
    ax.set_ylabel("BLEU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"§7.2-7.3 on E2E ({data['runs'][0]['config']['model']['name']})")
    return _save(fig, out_dir / "intrinsic.png")


def init_plot(data: dict, out_dir: Path) -> Path:
    """BLEU per initialisation, one group of bars per train size (paper Figure 5); dots = seeds."""
    plt = _pyplot()
    runs = [r for r in data["runs"] if "BLEU" in r["metrics"]]
    inits = list(dict.fromkeys(r["init"] for r in runs))
    sizes = sorted({r["size"] for r in runs})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(inits) * len(sizes)), 4))
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
    return _save(fig, out_dir / "init.png")


def _save(fig, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
