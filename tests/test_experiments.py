"""`reproduce --quick` end to end on a tiny model: all files, tables rebuilt from results.json, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from prefix_tuning import experiments, recipe, report, webnlg_report
from prefix_tuning.cli import main

METRICS = ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]


def _strip(results: dict) -> list[dict]:
    """What must not depend on interruption: everything but wall-clock timings."""
    keep = []
    for r in results["runs"]:
        keep.append({k: v for k, v in r.items() if "seconds" not in k})
    return keep


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    args = ["reproduce", "demo", "--quick", "--out", str(root / "results"), "--runs-dir", str(root / "runs")]
    assert main(args) == 0
    return root


def test_quick_demo_writes_everything(quick_demo):
    out = quick_demo / "results"
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["prefix-n16-s0", "finetune-n16-s0"]
    for r in data["runs"]:
        assert set(r["metrics"]) == set(METRICS)
        assert r["stored_params"] > 0 and r["checkpoint_bytes"] > 0 and r["seconds_per_epoch"] > 0
        assert len((out / "outputs" / f"{r['name']}.txt").read_text().splitlines()) == 8
    prefix, ft = data["runs"]
    assert prefix["stored_params"] < ft["stored_params"] / 100
    for f in ["table.md", "demo_metrics.png"]:
        assert (out / f).stat().st_size > 0


def test_table_regenerated_from_results_json(quick_demo):
    out = quick_demo / "results"
    before = (out / "table.md").read_text()
    (out / "table.md").unlink()
    (out / "demo_metrics.png").unlink()
    assert main(["reproduce", "demo", "--report-only", "--out", str(out)]) == 0
    assert (out / "table.md").read_text() == before and (out / "demo_metrics.png").is_file()
    data = json.loads((out / "results.json").read_text())
    bleu = data["runs"][0]["metrics"]["BLEU"]
    assert f"| prefix-n16-s0 | {100 * bleu:.1f} |" in before


def test_rerun_skips_finished_runs(quick_demo, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(recipe, "train", boom)
    args = lambda out: ["reproduce", "demo", "--quick", "--out", str(out), "--runs-dir", str(quick_demo / "runs")]
    assert main(args(quick_demo / "results")) == 0
    # runs finished for one results folder are reused, outputs included, by another (e.g. merging seeds run apart)
    other = quick_demo / "merged"
    assert main(args(other)) == 0
    for name in ["prefix-n16-s0", "finetune-n16-s0"]:
        assert (other / "outputs" / f"{name}.txt").read_text() == (
            quick_demo / "results" / "outputs" / f"{name}.txt"
        ).read_text()
    assert json.loads((other / "results.json").read_text()) == json.loads(
        (quick_demo / "results" / "results.json").read_text()
    )


def test_finished_run_reused_only_for_the_same_plan(quick_demo, tmp_path, capsys):
    """Another lr or another number of scored test MRs does not silently reuse a finished run: the error names
    the difference and the fix; the same plan (test_rerun_skips_finished_runs) is the control."""
    runs = ["--runs-dir", str(quick_demo / "runs")]
    assert main(["reproduce", "demo", "--quick", "--out", str(tmp_path / "a"), *runs, "train.lr=2e-3"]) == 2
    assert re.search(r"error: .*result.json: .*train\.lr: 0\.001 -> 0\.002.*deleting", capsys.readouterr().err)
    assert main(["reproduce", "demo", "--quick", "--out", str(tmp_path / "b"), "--test-limit", "4", *runs]) == 2
    assert "test sources scored: 8 -> 4" in capsys.readouterr().err


def test_reused_run_keeps_its_outputs_after_generate(quick_demo):
    """A later `generate RUN_DIR` (here of fewer MRs) writes outputs-test.txt; a reproduce that reuses the run
    still copies the outputs its result scored."""
    run_dir = quick_demo / "runs" / "demo" / "prefix-n16-s0"
    assert main(["generate", str(run_dir), "--limit", "3", "--quiet", "--no-scores"]) == 0
    assert len((run_dir / "outputs-test.txt").read_text().splitlines()) == 3
    again = quick_demo / "again"
    assert main(["reproduce", "demo", "--quick", "--out", str(again), "--runs-dir", str(quick_demo / "runs")]) == 0
    for name in ["prefix-n16-s0", "finetune-n16-s0"]:
        assert (again / "outputs" / f"{name}.txt").read_text() == (
            quick_demo / "results" / "outputs" / f"{name}.txt"
        ).read_text()
    assert len((again / "outputs" / "prefix-n16-s0.txt").read_text().splitlines()) == 8


def test_resumed_experiment_equals_uninterrupted(quick_demo, tmp_path, monkeypatch):
    """Kill the experiment in the middle of the second run's training, re-run: same results as uninterrupted."""
    real = recipe.train
    calls = {"n": 0}

    def dying(cfg, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # second run: train 3 of 6 steps, checkpoint, then "crash"
            real(cfg, max_steps_this_call=3)
            raise KeyboardInterrupt
        return real(cfg, **kw)

    args = ["reproduce", "demo", "--quick", "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    monkeypatch.setattr(recipe, "train", dying)
    assert main(args) == 130  # interrupted
    partial = json.loads((tmp_path / "results" / "results.json").read_text())
    assert [r["name"] for r in partial["runs"]] == ["prefix-n16-s0"]  # the finished run was recorded
    monkeypatch.setattr(recipe, "train", real)
    assert main(args) == 0
    resumed = json.loads((tmp_path / "results" / "results.json").read_text())
    uninterrupted = json.loads((quick_demo / "results" / "results.json").read_text())
    a, b = _strip(resumed), _strip(uninterrupted)
    for x in a + b:
        x["config"]["out_dir"] = Path(x["config"]["out_dir"]).name
    assert a == b


def test_plan_recipes():
    p = experiments.plan("lowdata", model="smollm2-135m", grid=experiments.Grid(seeds=(0, 1)))
    assert len(p.runs) == 16
    r = {x.name: x.cfg for x in p.runs}
    assert r["prefix-n500-s1"].train.max_steps == 400 and r["finetune-n50-s0"].train.max_steps == 100
    assert r["prefix-n100-s0"].method.init == "words" and r["prefix-n100-s0"].train.lr == 5e-5
    a = experiments.plan("ablation", model="m", grid=experiments.Grid(train_size=100))
    assert [x.cfg.method.prefix_length for x in a.runs] == [1, 5, 10, 20, 40]
    t = experiments.plan("table1", model="m", grid=experiments.Grid(train_size=200))
    rows = ["prefix", "finetune", "finetune-top2", "adapter-3%", "adapter-0.1%", "lora"]
    assert [x.name for x in t.runs] == [f"{r}-s{s}" for s in (0, 1) for r in rows]
    assert [(x.cfg.data.subset_seed, x.cfg.train.seed) for x in t.runs[5:7]] == [(0, 101), (1, 102)]
    assert t.test_limit is None
    assert t.runs[0].cfg.train.lr == 8e-5 and t.runs[2].cfg.method.top_k_layers == 2
    assert (t.runs[1].cfg.train.lr, t.runs[2].cfg.train.lr) == (5e-5, 2e-4)  # FT-top2's lr chosen on dev (SUBSET_LR)
    assert {x.cfg.train.epochs for x in t.runs} == {experiments.SUBSET_EPOCHS}  # a subset: every row trains longer
    assert [x.cfg.method.adapter_fraction for x in t.runs[3:5]] == [0.03, 0.001]
    assert [x.cfg.train.lr for x in t.runs[3:5]] == [5e-5, 5e-3]  # the 0.1% adapter's lr chosen on dev at this scale
    lora = t.runs[5].cfg
    assert (
        lora.method.lora_rank,
        lora.method.lora_alpha,
        lora.train.lr,
        lora.train.weight_decay,
        lora.train.batch_size,
        lora.train.warmup_steps,
    ) == (4, 32.0, 2e-4, 0.01, 8, 10)  # 500 of 26,290 steps -> 10 of 500 (200 rows, batch 8, 20 epochs)
    full = experiments.plan("table1", model="m", grid=experiments.Grid(seeds=(0,)))
    assert full.runs[5].cfg.train.warmup_steps == 500  # the LoRA paper's own setting on the full data
    assert {x.cfg.train.epochs for x in full.runs} == {5}  # and the paper's 5 epochs
    assert full.runs[4].cfg.train.lr == full.runs[2].cfg.train.lr == 5e-5  # full data: the recipe's lr
    assert {x.cfg.train.patience for x in t.runs + full.runs} == {None}  # Table 1: every seed the whole budget
    i = experiments.plan("intrinsic", model="m", grid=experiments.Grid(seeds=(0,)))
    assert [(x.cfg.method.prefix_length, x.cfg.method.embedding_only) for x in i.runs] == [
        (P, e) for P in (1, 10, 20) for e in (False, True, False)
    ]
    assert [x.cfg.method.position for x in i.runs[:3]] == ["prefix", "prefix", "infix"]
    assert {x.cfg.train.patience for x in i.runs} == {None}  # the full data: the recipe's 5 epochs
    i200 = experiments.plan("intrinsic", model="m", grid=experiments.Grid(seeds=(0,), train_size=200))
    assert {(x.cfg.train.epochs, x.cfg.train.patience) for x in i200.runs} == {(20, experiments.PATIENCE)}
    n = experiments.plan("init", model="m", grid=experiments.Grid(seeds=(0,)))
    assert len(n.runs) == 2 * 9 and n.runs[0].cfg.method.init == "random"
    # Figure 5's bars (ACL / arXiv v1), in the figure's order
    assert [x.cfg.method.init_text for x in n.runs[1:9]] == [
        "active",
        "elephant",
        "summarize",
        "table-to-text:",
        "banana",
        "beautiful",
        "divide",
        "keep",
    ]
    assert {x.cfg.data.train_size for x in n.runs} == {50, 100} and n.runs[1].cfg.method.prefix_length is None
    assert {(x.cfg.train.max_steps, x.cfg.train.patience) for x in n.runs} == {(200, experiments.PATIENCE)}
    n20 = experiments.plan("init", model="m", grid=experiments.Grid(seeds=(0,), sizes=(20,)))
    assert {x.cfg.data.train_size for x in n20.runs} == {20}  # --sizes reaches init
    d = experiments.plan("demo")
    assert d.test_limit == 100 and d.runs[0].cfg.model.name == "smollm2-135m" and len(d.runs) == 2


def test_quick_webnlg(tmp_path):
    """`reproduce webnlg --quick` (one seed here to stay fast): S/U/A scores per run, the paper's rows, the plot,
    every run's outputs. --quick scores BLEU and TER only (METEOR's JVM would add ~15 s per run)."""
    out = tmp_path / "results"
    assert (
        main(
            ["reproduce", "webnlg", "--quick", "--seeds", "0", "--out", str(out), "--runs-dir", str(tmp_path / "runs")]
        )
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["prefix-s0", "finetune-s0"]
    for r in data["runs"]:
        assert set(r["metrics"]) == {"S", "U", "A"} and set(r["metrics"]["A"]) == {"BLEU", "TER"}
        assert r["config"]["data"]["dataset"] == "webnlg" and r["config"]["data"]["train_size"] == 24
        assert len((out / "outputs" / f"{r['name']}.txt").read_text().splitlines()) == 8
    table = (out / "table.md").read_text()
    assert "| paper (GPT-2 M, full) | prefix | - | 62.9 | 45.6 | 55.1 |" in table and "| ours | prefix | 1 |" in table
    # the runs table shows the WebNLG scores on all categories, not empty E2E columns
    assert "| run | BLEU (all) | TER (all) |" in table and "| NIST |" not in table
    bleu = 100 * data["runs"][0]["metrics"]["A"]["BLEU"]
    assert f"| prefix-s0 | {bleu:.1f} | " in table
    assert (out / "webnlg.png").stat().st_size > 0
    assert "## Convergence" in table and "- finetune-s0: " in table  # where each run's dev loss bottomed out
    assert "BLEU in %, METEOR and TER as fractions" in table and "ROUGE-L in %" not in table
    assert "## Extrapolation" in table and "| paper (GPT-2 M, full) | finetune | - | - | 36.5 | 0.43 |" in table
    assert recipe.report(out) == table  # rebuilt from results.json alone


def test_webnlg_extrapolation_drop():
    """S - U BLEU per seed, mean ± sd and U / S, worked by hand: prefix 60→48 and 50→35 (drops 12, 15: mean 13.5,
    sd 2.1; ratios 0.80, 0.70: 0.75 ± 0.07); fine-tuning 64→32 (drop 32, ratio 0.50); a run without S scores is
    left out."""

    def run(method, s, u):
        return {"method": method, "metrics": {"S": {"BLEU": s}, "U": {"BLEU": u}}}

    runs = [run("prefix", 0.60, 0.48), run("prefix", 0.50, 0.35), run("finetune", 0.64, 0.32)]
    lines = webnlg_report.extrapolation({"runs": [*runs, {"method": "lora", "metrics": {}}]})
    assert "| ours | prefix | 2 | 12.0, 15.0 | 13.5 ± 2.1 | 0.75 ± 0.07 |" in lines
    assert "| ours | finetune | 1 | 32.0 | 32.0 | 0.50 |" in lines
    assert "| paper (GPT-2 M, full) | prefix | - | - | 17.3 | 0.72 |" in lines
    assert not any("lora" in x for x in lines)


def test_webnlg_plan():
    p = experiments.plan("webnlg")
    assert [x.name for x in p.runs] == ["prefix-s0", "finetune-s0", "prefix-s1", "finetune-s1"]
    assert p.test_limit is None and p.metrics is None and p.runs[0].cfg.model.name == "smollm2-135m"
    c = p.runs[0].cfg
    assert (c.data.dataset, c.data.train_size, c.data.subset_seed, c.method.prefix_length) == ("webnlg", 500, 0, 5)
    assert (c.train.lr, c.train.batch_size, c.train.epochs, c.train.seed) == (5e-5, 5, 5, 101)
    assert p.runs[3].cfg.data.subset_seed == 1 and p.runs[3].cfg.method.name == "finetune"


@pytest.mark.parametrize(
    "name,runs,plot",
    [
        pytest.param(
            "table1",
            ["prefix-s0", "finetune-s0", "finetune-top2-s0", "adapter-3%-s0", "adapter-0.1%-s0", "lora-s0"],
            "table1_metrics.png",
            marks=pytest.mark.slow,
        ),  # ~80 s: six runs
        ("table1", ["adapter-0.1%-s0", "lora-s0"], "table1_metrics.png"),  # the default suite: the rows new to table1
        ("intrinsic", ["prefix-P2-s0", "embedding-only-P2-s0", "infix-P2-s0"], "intrinsic.png"),
        ("init", ["init-random-n16-s0", "init-table-to-text-n16-s0", "init-elephant-n16-s0"], "init.png"),
    ],
)
def test_quick_new_experiments(name, runs, plot, tmp_path):
    """table1, intrinsic and init end to end on the tiny model (`--quick`), scored without Java (BLEU and
    ROUGE-L: seconds instead of METEOR's start-up per run): runs, stored sizes, the table beside the paper, plot."""
    p = experiments.plan(
        name, grid=experiments.Grid(quick=True), runs_dir=tmp_path / "runs", metrics=("BLEU", "ROUGE_L")
    )
    p.runs = [r for r in p.runs if r.name in runs]
    results = recipe.reproduce(p, tmp_path / "out")
    assert [r["name"] for r in results] == runs
    assert all(set(r["metrics"]) == {"BLEU", "ROUGE_L"} and r["stored_params"] > 0 for r in results)
    assert all(r["step_seconds_median"] > 0 and r["dev_curve"] for r in results)  # from each run's log.jsonl
    table = (tmp_path / "out" / "table.md").read_text()
    assert (tmp_path / "out" / plot).stat().st_size > 0
    by = {r["method"]: r for r in results}
    if name == "table1":
        assert "| adapter-0.1% | " in table and "| 66.3 |" in table and "| 70.4 |" in table  # paper beside ours
        assert by["lora"]["stored_params"] < by["adapter-0.1%"]["stored_params"] * 10
        if "finetune" in by:
            assert by["adapter-0.1%"]["stored_params"] < by["adapter-3%"]["stored_params"]
            assert by["finetune-top2"]["stored_params"] < by["finetune"]["stored_params"] / 2
    if name == "intrinsic":
        assert "| embedding-only | 2 |" in table and "| infix | 2 |" in table
        assert by["embedding-only"]["stored_params"] < by["prefix"]["stored_params"]


def _result(name: str, method: str, seed: int, bleu: float, curve: list[list[float]]) -> dict:
    return {
        "name": name,
        "method": method,
        "seed": seed,
        "metrics": {"BLEU": bleu},
        "stored_params": 10,
        "checkpoint_bytes": 1000,
        "train_seconds": 10.0,
        "steps": int(curve[-1][0]),
        "dev_curve": curve,
        "config": {"train": {"lr": 5e-3 if "adapter" in method else 8e-5}},
    }


def test_table1_report_seeds_and_convergence():
    """Seeds of one method are one row (mean ± sd); a run whose best dev loss is its last evaluation is flagged
    as still falling, one that bottomed out earlier is not (negative control)."""
    data = {
        "runs": [
            _result("prefix-s0", "prefix", 0, 0.60, [[10, 5.0], [20, 4.0], [30, 4.5]]),
            _result("prefix-s1", "prefix", 1, 0.70, [[10, 5.0], [20, 4.2], [30, 4.4]]),
            _result("finetune-top2-s0", "finetune-top2", 0, 0.20, [[10, 9.0], [20, 8.0], [30, 7.0]]),
        ]
    }
    data["runs"][0]["step_seconds_median"], data["runs"][1]["step_seconds_median"] = 1.5, 3.0  # seed 1: busy CPU
    lines = report.table1_rows(data)
    row = next(line for line in lines if line.startswith("| prefix |"))
    assert row.startswith("| prefix | 2 | 65.0 ± 7.1 | 69.7 |")
    assert row.endswith("| 10 | 0.00 | 1.50 |")  # s/step: the fastest seed's, not the busy one's (mean 2.25)
    assert next(line for line in lines if line.startswith("| finetune-top2 |")).startswith(
        "| finetune-top2 | 1 | 20.0 |"
    )
    conv = {line.split(":")[0]: line for line in lines if line.startswith("- ")}
    assert conv["- prefix-s0"].startswith("- prefix-s0: 20 / 30") and "still falling" not in conv["- prefix-s0"]
    assert conv["- finetune-top2-s0"].endswith("(still falling at the end)")
    assert conv["- prefix-s0"].endswith(", lr 8e-05")  # each run's own lr: rows may differ (SUBSET_LR)
    # train.patience: a run that ended `patience` evaluations after its best says so; one with evaluations to spare
    # (or without patience, above) does not
    stopped = _result("infix-P1-s0", "infix", 0, 0.5, [[10, 5.0], [20, 4.0], [30, 4.5], [40, 4.4]])
    stopped["config"]["train"]["patience"] = 2
    assert report.convergence({"runs": [stopped]})[-1].endswith("(stopped early: 2 evaluations without a new best)")
    stopped["config"]["train"]["patience"] = 3
    assert report.convergence({"runs": [stopped]})[-1].endswith(", lr 8e-05")
