"""Tables and plots of an experiment, rebuilt from its results.json alone."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from .metrics import METRICS

PERCENT = {"BLEU", "METEOR", "ROUGE_L"}  # shown x100, as papers print them


def _fmt(metric: str, v: float) -> str:
    return f"{100 * v:.1f}" if metric in PERCENT else f"{v:.2f}"


def _budget(train: dict) -> str:
    return f"max steps {train['max_steps']}" if train.get("max_steps") else f"{train['epochs']} epochs"


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def precision_of(run: dict) -> str:
    """`train/decode` precision of a result (results before `auto` existed hold it only in their config)."""
    p = run.get("precision") or {k: run["config"][k]["precision"] for k in ("train", "decode")}
    return f"{p['train']}/{p['decode']}" if p["train"] != p["decode"] else p["train"]


def _header(extra: list[str]) -> list[str]:
    cols = ["run", *METRICS, *extra]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def make_table(data: dict) -> str:
    exp, runs = data["experiment"], data["runs"]
    lines = [f"# {exp}", ""]
    if runs:
        cfg = runs[0]["config"]
        lines += [f"Model `{cfg['model']['name']}`; test MRs scored: {runs[0]['test_mrs']} (unique MRs of the E2E "
                  f"test set in order of first appearance); BLEU, METEOR, ROUGE-L in %. Metrics signature: "
                  f"`{runs[0].get('metrics_signature')}`.", "",
                  f"Setup of the first run (see results.json for each): train size {cfg['data']['train_size'] or 'all'}, "
                  f"method init `{cfg['method']['init']}`, lr {cfg['train']['lr']}, batch {cfg['train']['batch_size']}, "
                  f"{_budget(cfg['train'])}, precision {precision_of(runs[0])}, output = weights with "
                  f"the best dev loss; decoding beam {cfg['decode']['beam_size']}, max {cfg['decode']['max_new_tokens']} "
                  f"new tokens." + (f" Machine: {runs[0]['cpu']}." if runs[0].get("cpu") else ""), ""]
    precisions = sorted({precision_of(r) for r in runs})
    if len(precisions) > 1:
        lines += [f"**Mixed precisions** (train/decode): {', '.join(precisions)}; compare runs of one precision "
                  "(bf16 rounding changes outputs, and its speed depends on the CPU).", ""]
    lines += ["## Runs", ""] + _header(["stored params", "checkpoint MB", "train s/epoch", "steps", "best dev loss",
                                        "precision"])
    for r in runs:
        m = r["metrics"]
        dev = f"{r['best_dev_loss']:.3f}" if r.get("best_dev_loss") is not None else "-"
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(k, m[k]) if k in m else "-" for k in METRICS)
                     + f" | {r['stored_params']:,} | {r['checkpoint_bytes'] / 1e6:.2f} | {r['seconds_per_epoch']:.1f}"
                     f" | {r['steps']} | {dev} | {precision_of(r)} |")
    if exp in ("lowdata", "demo"):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in runs:
            groups[(r["size"], r["method"])].append(r)
        lines += ["", "## Mean ± sd over seeds", "", "| train size | method | seeds | " + " | ".join(METRICS) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
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
    if exp in ("table1", "demo", "lowdata"):
        by = defaultdict(list)
        for r in runs:
            by[r["method"]].append(r)
        if "prefix" in by and "finetune" in by:
            t = lambda rs: statistics.fmean(r["train_seconds"] / max(r["steps"], 1) for r in rs)
            s = lambda rs: statistics.fmean(r["stored_params"] for r in rs)
            lines += ["", f"Fine-tuning / prefix-tuning training time per step: {t(by['finetune']) / t(by['prefix']):.2f}x "
                      "(paper: ~1.5x per epoch on GPU). Storage per task: "
                      f"{s(by['finetune']) / s(by['prefix']):,.0f}x less for prefix-tuning."]
    if exp == "table1":
        from .experiments import PAPER

        lines += ["", "## Paper (GPT-2 Medium, full E2E; BLEU/METEOR/ROUGE-L in %)", "",
                  "| source | method | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for src, rows in PAPER.items():
            for method, vals in rows.items():
                lines.append(f"| {src} | {method} | " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"


def make_plots(data: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp, runs = data["experiment"], data["runs"]
    out: list[Path] = []
    if not runs:
        return out
    scale = lambda k, v: 100 * v if k in PERCENT else v
    if exp == "ablation":
        runs = sorted(runs, key=lambda r: r["prefix_length"])
        fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
        for ax, k in zip(axes, METRICS):
            xs = [r["prefix_length"] for r in runs if k in r["metrics"]]
            ax.plot(xs, [scale(k, r["metrics"][k]) for r in runs if k in r["metrics"]], "o-")
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("prefix length P")
            ax.set_title(k)
            ax.grid(alpha=0.3)
        fig.suptitle(f"Prefix-length ablation on E2E ({runs[0]['config']['model']['name']})")
        out.append(_save(fig, out_dir / "ablation.png"))
    elif exp in ("lowdata", "demo"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method, color in (("prefix", "tab:blue"), ("finetune", "tab:orange")):
            rs = [r for r in runs if r["method"] == method]
            sizes = sorted({r["size"] for r in rs})
            for ax, k in zip(axes, ("BLEU", "ROUGE_L")):
                pts = [(r["size"], scale(k, r["metrics"][k])) for r in rs if k in r["metrics"]]
                ax.scatter(*zip(*pts), color=color, alpha=0.4, s=18) if pts else None
                means = [statistics.fmean(v for s, v in pts if s == size) for size in sizes if any(s == size for s, _ in pts)]
                ax.plot(sizes[:len(means)], means, "o-", color=color, label=method)
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks(sizes, [str(s) for s in sizes])
                ax.set_xlabel("training examples")
                ax.set_ylabel(k + (" (%)" if k in PERCENT else ""))
                ax.grid(alpha=0.3)
                ax.legend()
        fig.suptitle(f"Low-data E2E: prefix-tuning vs fine-tuning ({runs[0]['config']['model']['name']}; "
                     "dots = seeds, line = mean)")
        out.append(_save(fig, out_dir / f"{exp}.png"))
    if exp in ("table1", "demo"):
        fig, axes = plt.subplots(1, 5, figsize=(16, 3.2))
        names = [r["name"] for r in runs]
        for ax, k in zip(axes, METRICS):
            ax.bar(range(len(runs)), [scale(k, r["metrics"].get(k, float("nan"))) for r in runs],
                   color=["tab:blue" if r["method"] == "prefix" else "tab:orange" for r in runs])
            ax.set_xticks(range(len(runs)), names, rotation=30, ha="right", fontsize=7)
            ax.set_title(k)
        fig.suptitle(f"{exp}: E2E test metrics ({runs[0]['config']['model']['name']})")
        out.append(_save(fig, out_dir / f"{exp}_metrics.png"))
    return out


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
