"""The tables of an experiment (sections of table.md), rebuilt from its results.json alone: plain functions,
which `experiments.EXPERIMENTS` picks per experiment; its plots are in `plots`."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial

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


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_pm(xs: list[float], fmt: Callable[[float], str]) -> str:
    """A table cell: the mean, `± sd` where there are several values (seeds), `-` where there are none."""
    if not xs:
        return "-"
    mu, sd = mean_sd(xs)
    return fmt(mu) + (f" ± {fmt(sd)}" if len(xs) > 1 else "")


def step_seconds(run: dict) -> float:
    """A run's training seconds per step: the median of its logged steps where recorded (robust to a pause or a
    busy moment of the machine), else the mean."""
    return run.get("step_seconds_median") or run["train_seconds"] / max(run["steps"], 1)


def fastest_step_seconds(runs: list[dict]) -> float:
    """A method's seconds per step over its seeds: the fastest run's. Seeds train the same shapes, and a run that
    shared the machine with other work can only be slower, so the minimum is the cost of the method itself."""
    return min(step_seconds(r) for r in runs)


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
        dataset = cfg["data"].get("dataset", "e2e")
        units = "BLEU in %, METEOR and TER as fractions" if dataset == "webnlg" else "BLEU, METEOR, ROUGE-L in %"
        lines += [
            (
                f"Model `{cfg['model']['name']}`; test MRs scored: {runs[0]['test_mrs']} (unique sources of the "
                f"{dataset} test set in order of first appearance); {units}. Metrics signature: "
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
                mu, sd = mean_sd(xs)
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
    per_step = fastest_step_seconds
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


def group_runs(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Runs grouped by the values of `keys` (the seeds of one setting together), in first-seen order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _cell(metric: str, rs: list[dict]) -> str:
    """Mean (± sd where several seeds) of a metric over runs, in the table's units."""
    return mean_pm([r["metrics"][metric] for r in rs if metric in r["metrics"]], partial(_fmt, metric))


def table1_rows(data: dict) -> list[str]:
    """Table 1 side by side: our scores (mean ± sd over seeds), the paper's (GPT-2 Medium, full E2E), stored
    values, MB, train s/step; then where each method's dev loss bottomed out (convergence)."""
    lines = [
        "",
        "## Table 1: ours (mean ± sd over seeds) vs paper (BLEU/METEOR/ROUGE-L in %)",
        "",
        "| method | seeds | "
        + " | ".join(f"{k} | paper" for k in METRICS)
        + " | stored values | MB | s/step (fastest seed) |",
        "|---|---|" + "---|---|" * len(METRICS) + "---|---|---|",
    ]
    groups = group_runs(data["runs"], "method")
    for (method,), rs in groups.items():
        paper = _paper_row(method)
        cells = [f"{_cell(k, rs)} | {paper[i] if paper else '-'}" for i, k in enumerate(METRICS)]
        s_step = fastest_step_seconds(rs)
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
    lines = ["", "## Convergence: step of the best dev loss / steps (dev loss first → best → last), lr", ""]
    for r in runs:
        curve = r["dev_curve"]
        best = min(curve, key=lambda c: c[1])
        patience, flag = r["config"]["train"].get("patience"), ""
        if best is curve[-1]:
            flag = " (still falling at the end)"
        elif patience and len(curve) - 1 - curve.index(best) >= patience:  # train.patience ended it
            flag = f" (stopped early: {patience} evaluations without a new best)"
        lines.append(
            f"- {r['name']}: {best[0]} / {r['steps']} ({curve[0][1]:.2f} → {best[1]:.2f} → {curve[-1][1]:.2f}), "
            f"lr {r['config']['train']['lr']:g}{flag}"
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
    groups = group_runs(data["runs"], "method", "prefix_length")
    for (method, P), rs in sorted(groups.items()):
        paper = INTRINSIC_BLEU.get(method, {}).get(P, "-")
        lines.append(f"| {method} | {P} | {len(rs)} | {_cell('BLEU', rs)} | {paper} | {rs[0]['stored_params']:,} |")
    return lines + ["", "Paper (ACL Table 5, GPT-2 Medium, full E2E): prefix (P=5) 70.3 BLEU."]


def init_rows(data: dict) -> list[str]:
    """§7.4 / Figure 5: mean ± sd BLEU over seeds per initialisation and train size."""
    groups = group_runs([r for r in data["runs"] if "BLEU" in r["metrics"]], "init", "size")
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
