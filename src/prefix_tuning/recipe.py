"""The `reproduce` recipe: each run of an experiment's plan as train -> generate -> evaluate, skipping what
already finished (its `result.json`) and resuming an interrupted run from its checkpoint; then
`results/<experiment>/{results.json, table.md, *.png, outputs/}`. All file I/O of an experiment is here; what
runs is `experiments`, tables and plots `report` and `plots`."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from . import report as rep
from . import webnlg_report
from .config import ConfigError, RunConfig, weight_changes
from .configfile import to_dict
from .experiments import Plan, Run, experiment
from .generate import generate_run
from .hardware import describe_cpu
from .metrics import METRICS
from .run import RunDir, read_log, read_result, write_json, write_result
from .train import train


def run_one(
    run: Run,
    test_limit: int | None,
    out_dir: Path,
    keep_checkpoints: bool = False,
    metrics: tuple[str, ...] | None = None,
) -> dict:
    """train -> generate -> evaluate for one run, skipping whatever already finished."""
    rd = RunDir(run.cfg.out_dir)
    done = read_result(rd)
    if done is not None:  # finished earlier, maybe for another results folder: reuse it, outputs included
        _check_reusable(rd, done, run.cfg, test_limit)
        outputs = rd.result_decoded.outputs
        if not outputs.is_file():  # a run finished before results had their own outputs file
            outputs = rd.decoded("test").outputs
        _copy_outputs(run.name, outputs, out_dir)
        return done
    t0 = time.perf_counter()
    res = train(run.cfg)
    t1 = time.perf_counter()
    files = generate_run(
        rd.path,
        "test",
        rd.result_decoded.outputs,
        limit=test_limit,
        device=run.cfg.train.device,
        progress=True,
        metrics=metrics,
    )
    t2 = time.perf_counter()
    scores = json.loads(files.scores.read_text(encoding="utf-8"))
    log = read_log(rd)
    result = {
        "name": run.name,
        **run.group,
        "method_name": run.cfg.method.name,
        "metrics": {k: v for k, v in scores.items() if k in METRICS or k in webnlg_report.SPLITS},
        "metrics_signature": scores.get("signature"),
        "train_seconds": res.train_seconds,
        "seconds_per_epoch": res.seconds_per_epoch,
        "steps": res.steps,
        "best_dev_loss": res.best_dev_loss,
        "dev_curve": [[rec["step"], rec["dev_loss"]] for rec in log if "dev_loss" in rec],  # where it converged
        "step_seconds_median": statistics.median(rec["seconds"] for rec in log if "seconds" in rec),
        "stored_params": res.stored_params,
        "trainable_params": res.trainable_params,
        "checkpoint_bytes": res.artifact.stat().st_size,
        "decode_seconds": t2 - t1,
        "wall_seconds": t2 - t0,
        "test_mrs": test_limit or "all",
        "precision": {"train": res.precision, "decode": scores["decode"]["precision"]},
        "threads": res.threads,
        "device": run.cfg.train.device,
        "cpu": describe_cpu(),
        "config": _resolved_config(run.cfg, res.precision, scores["decode"]["precision"]),
    }
    _copy_outputs(run.name, files.outputs, out_dir)
    if not keep_checkpoints:
        rd.checkpoint.unlink(missing_ok=True)
    write_result(rd, result)
    return result


def _check_reusable(rd: RunDir, done: dict, cfg: RunConfig, test_limit: int | None) -> None:
    """A finished run is reused only for the same training settings and the same scored test set; otherwise a
    table would mix runs of two plans without saying so."""
    problems = weight_changes(done["config"], cfg)
    if done["test_mrs"] != (test_limit or "all"):
        problems.append(f"test sources scored: {done['test_mrs']} -> {test_limit or 'all'}")
    if problems:
        raise ConfigError(
            f"{rd.result}: this run finished under other settings ({'; '.join(problems)}). Re-run it by deleting "
            f"{rd.path}, or keep both with another --runs-dir"
        )


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
        results.append(run_one(run, p.test_limit, out_dir, keep_checkpoints, p.metrics))
        write_results(p.experiment, results, out_dir)  # partial results survive a crash
    report(out_dir)
    return results


def write_results(name: str, results: list[dict], out_dir: Path) -> None:
    write_json(out_dir / "results.json", {"experiment": name, "runs": results}, indent=1)


def report(out_dir: Path) -> str:
    """(Re)build table.md and the plots from results.json alone."""
    data = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    exp = experiment(data["experiment"])
    table = rep.make_table(data, exp.sections)
    (out_dir / "table.md").write_text(table, encoding="utf-8")
    if data["runs"]:
        for plot in exp.plots:
            plot(data, out_dir)
    return table
