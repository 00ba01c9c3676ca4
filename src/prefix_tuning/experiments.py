"""The paper's experiments as lists of run configs, run as train -> generate -> evaluate, with reports.

`reproduce EXPERIMENT` builds the list of runs, skips every run that already finished (its
`result.json` exists), resumes an interrupted one from its checkpoint, and writes
`results/<experiment>/{results.json, table.md, *.png, outputs/}`. Tables and plots are regenerated
from results.json alone (`report`), so they can be rebuilt without re-running anything.

Experiments (Li & Liang 2021):
- table1:   prefix-tuning vs fine-tuning vs FT-top2 on E2E (Table 1 / ACL Table 2).
- ablation: prefix length {1, 5, 10, 20, 40} (Figure 4's grid; the paper's panels are DART and XSUM, ours is E2E).
- lowdata:  train sizes {50, 100, 200, 500}, prefix (init "table-to-text:") vs fine-tuning (§7.1, appendix).
- demo:     the README's main job: lowdata at 100 examples, one seed, on a real pretrained model, sized to
            ~15 minutes on a 2-core CPU in fp32: 40% of §7.1's step budget (prefix 80, FT 40 steps; the dev
            loss bottoms out after 15-40 steps at this size), 100 test MRs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig, apply_overrides, from_dict, to_dict
from .hardware import PRECISIONS, describe_cpu
from .metrics import METRICS

# Paper numbers, GPT-2 Medium, E2E test: BLEU NIST METEOR ROUGE-L CIDEr (BLEU/METEOR/ROUGE-L in %).
PAPER = {
    "arXiv Table 1": {"finetune": (68.2, 8.62, 46.2, 71.0, 2.47), "finetune-top2": (68.1, 8.59, 46.0, 70.8, 2.41),
                      "prefix": (69.7, 8.81, 46.1, 71.4, 2.49)},
    "ACL Table 2": {"finetune": (68.8, 8.71, 46.1, 71.1, 2.43), "finetune-top2": (68.1, 8.59, 46.0, 70.8, 2.41),
                    "prefix": (70.3, 8.82, 46.3, 72.1, 2.46)},
}
LOWDATA_SIZES = (50, 100, 200, 500)
# Appendix (low-data): max steps per train size; prefix lr 5e-5, batch 10, P = len("table-to-text:").
LOWDATA_STEPS = {"prefix": {50: 200, 100: 200, 200: 200, 500: 400}, "finetune": {50: 100, 100: 100, 200: 200, 500: 400}}
DEMO_STEPS = {"prefix": 80, "finetune": 40}  # 40% of LOWDATA_STEPS at 100 examples: fits 15 min in fp32 on 2 cores
ABLATION_LENGTHS = (1, 5, 10, 20, 40)


@dataclass
class Run:
    name: str
    cfg: RunConfig
    group: dict = field(default_factory=dict)  # what varies: method, size, seed, prefix_length


@dataclass
class Plan:
    experiment: str
    runs: list[Run]
    test_limit: int | None  # first N unique test MRs (order of first appearance); None = all 630


def _cfg(base: dict, overrides: list[str], **sections) -> RunConfig:
    data = json.loads(json.dumps(base))
    for sec, vals in sections.items():
        data.setdefault(sec, {}).update(vals)
    return from_dict(apply_overrides(data, overrides))


def _base(model: str, quick: bool, precision: str, threads: int | None) -> dict:
    if quick:  # seconds on a CPU: tiny random model, tiny data
        return {"model": {"name": "tiny-gpt2"},
                "data": {"max_length": 96, "dev_size": 8},
                "method": {"mlp_hidden": 32, "init_steps": 20},
                "train": {"lr": 1e-3, "batch_size": 4, "save_every": 4, "precision": "fp32", "num_threads": threads},
                "decode": {"beam_size": 2, "max_new_tokens": 12, "min_new_tokens": 1, "batch_size": 8,
                           "num_threads": threads}}
    return {"model": {"name": model}, "train": {"precision": precision, "save_every": 100, "num_threads": threads},
            "decode": {"precision": precision, "num_threads": threads}}


def plan(experiment: str, *, model: str = "gpt2-medium", quick: bool = False, seeds: tuple[int, ...] = (0, 1),
         sizes: tuple[int, ...] = LOWDATA_SIZES, train_size: int | None = None, test_limit: int | None = None,
         precision: str = "auto", threads: int | None = None, overrides: list[str] = (),
         runs_dir: Path = Path("runs")) -> Plan:
    """The runs of an experiment. `--quick` shrinks everything to a tiny model for smoke tests."""
    base = _base(model, quick, precision, threads)
    ov = list(overrides)
    runs: list[Run] = []
    root = runs_dir / experiment

    def add(name: str, group: dict, **sections) -> None:
        cfg = _cfg(base, ov, **sections)
        cfg.out_dir = str(root / name)
        runs.append(Run(name, cfg, group))

    if experiment == "table1":
        size = 24 if quick else train_size
        steps = {"max_steps": 6} if quick else {}
        add("prefix", {"method": "prefix"}, method={"name": "prefix", "prefix_length": 5},
            train={"lr": 8e-5 if not quick else 1e-3, **steps}, data={"train_size": size})
        add("finetune", {"method": "finetune"}, method={"name": "finetune"},
            train={"lr": 5e-5 if not quick else 1e-3, **steps}, data={"train_size": size})
        add("finetune-top2", {"method": "finetune-top2"}, method={"name": "finetune-top", "top_k_layers": 2},
            train={"lr": 5e-5 if not quick else 1e-3, **steps}, data={"train_size": size})
    elif experiment == "ablation":
        size = 24 if quick else (train_size or 200)
        lengths = (1, 5) if quick else ABLATION_LENGTHS
        for P in lengths:
            add(f"prefix-P{P}", {"method": "prefix", "prefix_length": P}, method={"name": "prefix", "prefix_length": P},
                data={"train_size": size},
                train={"max_steps": 6 if quick else LOWDATA_STEPS["prefix"].get(size, 400),
                       "lr": 1e-3 if quick else 8e-5, "seed": 101})  # 8e-5: the paper's E2E prefix lr
    elif experiment in ("lowdata", "demo"):
        if experiment == "demo":
            sizes, seeds = (100,), seeds[:1]
        if quick:
            sizes = (16, 24) if experiment == "lowdata" else (16,)
        for size in sizes:
            for seed in seeds:
                for m in ("prefix", "finetune"):
                    budget = DEMO_STEPS[m] if experiment == "demo" else LOWDATA_STEPS[m].get(size, 400)
                    steps = 6 if quick else budget
                    method = {"name": m} if m == "finetune" else {"name": "prefix", "init": "words",
                                                                  "prefix_length": None}
                    add(f"{m}-n{size}-s{seed}", {"method": m, "size": size, "seed": seed}, method=method,
                        data={"train_size": size, "subset_seed": seed},
                        train={"max_steps": steps, "lr": 1e-3 if quick else 5e-5, "seed": 101 + seed,
                               "batch_size": 4 if quick else 10})
    else:
        raise ValueError(f"unknown experiment {experiment!r}: choose table1, ablation, lowdata or demo")
    default_limit = 8 if quick else (100 if experiment == "demo" else None)
    return Plan(experiment, runs, test_limit if test_limit is not None else default_limit)


def run_one(run: Run, test_limit: int | None, out_dir: Path, keep_checkpoints: bool = False) -> dict:
    """train -> generate -> evaluate for one run, skipping whatever already finished."""
    from .decode import generate_run, output_paths
    from .train import CKPT, train

    run_dir = Path(run.cfg.out_dir)
    done = run_dir / "result.json"
    if done.is_file():  # finished earlier, maybe for another results folder: reuse it, outputs included
        _copy_outputs(run.name, output_paths(run_dir, "test")[0], out_dir)
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    res = train(run.cfg)
    t1 = time.perf_counter()
    outputs = generate_run(run_dir, split="test", limit=test_limit, device=run.cfg.train.device, progress=True)
    t2 = time.perf_counter()
    scores = json.loads((run_dir / "scores-test.json").read_text())
    result = {"name": run.name, **run.group, "method_name": run.cfg.method.name,
              "metrics": {k: scores[k] for k in METRICS if k in scores}, "metrics_signature": scores.get("signature"),
              "train_seconds": res.train_seconds, "seconds_per_epoch": res.seconds_per_epoch, "steps": res.steps,
              "best_dev_loss": res.best_dev_loss, "stored_params": res.stored_params,
              "trainable_params": res.trainable_params, "checkpoint_bytes": res.artifact.stat().st_size,
              "decode_seconds": t2 - t1, "wall_seconds": t2 - t0, "test_mrs": test_limit or "all",
              "precision": {"train": res.precision, "decode": scores["decode"]["precision"]},
              "threads": res.threads, "device": run.cfg.train.device, "cpu": describe_cpu(),
              "config": _resolved_config(run.cfg, res.precision, scores["decode"]["precision"])}
    _copy_outputs(run.name, Path(outputs), out_dir)
    if not keep_checkpoints:
        (run_dir / CKPT).unlink(missing_ok=True)
    from .checkpoint import atomic_path

    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def _resolved_config(cfg: RunConfig, train_precision: str, decode_precision: str) -> dict:
    """The run's config as used: `auto` precisions replaced by what this machine ran."""
    d = to_dict(cfg)
    d["train"]["precision"], d["decode"]["precision"] = train_precision, decode_precision
    return d


def _copy_outputs(name: str, outputs: Path, out_dir: Path) -> None:
    """results/<experiment>/outputs/<name>.txt: the decoded test outputs kept with the results."""
    (out_dir / "outputs").mkdir(parents=True, exist_ok=True)
    (out_dir / "outputs" / f"{name}.txt").write_text(outputs.read_text(encoding="utf-8"), encoding="utf-8")


def reproduce(p: Plan, out_dir: Path, *, keep_checkpoints: bool = False) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, run in enumerate(p.runs, 1):
        print(f"[{p.experiment}] run {i}/{len(p.runs)}: {run.name}", flush=True)
        results.append(run_one(run, p.test_limit, out_dir, keep_checkpoints))
        write_results(p.experiment, results, out_dir)  # partial results survive a crash
    report(out_dir)
    return results


def write_results(experiment: str, results: list[dict], out_dir: Path) -> None:
    from .checkpoint import atomic_path

    with atomic_path(out_dir / "results.json") as tmp:
        tmp.write_text(json.dumps({"experiment": experiment, "runs": results}, indent=1))


def report(out_dir: Path) -> str:
    """(Re)build table.md and the plots from results.json alone."""
    from .report import make_plots, make_table

    data = json.loads((out_dir / "results.json").read_text())
    table = make_table(data)
    (out_dir / "table.md").write_text(table, encoding="utf-8")
    make_plots(data, out_dir)
    return table


def cmd_reproduce(args: argparse.Namespace) -> int:
    out = Path(args.out or f"results/{args.experiment}{'-quick' if args.quick else ''}")
    if args.report_only:
        print(report(out))
        return 0
    if args.model is None:
        args.model = "smollm2-135m" if args.experiment == "demo" else "gpt2-medium"
    p = plan(args.experiment, model=args.model, quick=args.quick, seeds=tuple(args.seeds),
             sizes=tuple(args.sizes), train_size=args.train_size, test_limit=args.test_limit,
             precision=args.precision, threads=args.threads, overrides=args.overrides,
             runs_dir=Path(args.runs_dir))
    reproduce(p, out, keep_checkpoints=args.keep_checkpoints)
    print((out / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/results.json, table.md and plots")
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="run one of the paper's experiments end to end (train, generate, evaluate, report)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=["table1", "ablation", "lowdata", "demo"])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every run")
    p.add_argument("--model", default=None, help="base model: HF id, local folder, smollm2-135m (offline), "
                   "tiny-gpt2 (default: gpt2-medium, the paper's; demo: smollm2-135m)")
    p.add_argument("--quick", action="store_true", help="tiny random model and tiny data: a smoke test in ~1 minute")
    p.add_argument("--seeds", type=_ints, default=[0, 1], help="low-data subsample/training seeds (default 0,1)")
    p.add_argument("--sizes", type=_ints, default=list(LOWDATA_SIZES), help="low-data train sizes (default 50,100,200,500)")
    p.add_argument("--train-size", type=int, default=None, help="table1/ablation: train on a low-data subset of this size")
    p.add_argument("--test-limit", type=int, default=None,
                   help="score the first N unique test MRs (default: all 630; demo 100; --quick 8). CIDEr takes "
                        "document frequencies from the scored refs, so it is only comparable at the same N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="training and decoding precision (default auto: bf16 where the device computes it natively "
                        "(GPUs, CPUs with AVX512-BF16/AMX; ~2.5x faster there), else fp32 (bf16 is emulated and ~30x "
                        "slower on AVX2-only CPUs)); the precision used is recorded per run and in the tables")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: the cores available to this process; give each of "
                        "two reproduce commands sharing a machine half of them)")
    p.add_argument("--out", default=None, help="results folder (default results/<experiment>)")
    p.add_argument("--runs-dir", default="runs", help="where run dirs (checkpoints, outputs) go (default runs/)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep resumable checkpoints of finished runs")
    p.add_argument("--report-only", action="store_true", help="rebuild table.md and plots from results.json")
    p.set_defaults(func=cmd_reproduce)
