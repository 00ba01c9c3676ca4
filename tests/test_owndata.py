"""Own data (data.dataset=custom) and WebNLG through train, generate and evaluate: readers, errors that name
file:line and the field, the shipped configs, and tiny-gpt2 runs whose scores have the dataset's shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prefix_tuning import corpora, owndata, paper, webnlg
from prefix_tuning.cli import main
from prefix_tuning.config import ConfigError
from prefix_tuning.configfile import load_config
from prefix_tuning.data import E2EDataset
from prefix_tuning.e2e import DataError
from prefix_tuning.generate import load_tables
from prefix_tuning.models import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny_custom.jsonl"
E2E_FAST = ["--metrics", "BLEU,NIST", "--quiet"]  # no METEOR: its JVM costs ~15 s per scoring
WEBNLG_FAST = ["--metrics", "BLEU,TER", "--quiet"]


def _rows_text(fmt: str) -> str:
    rows = [json.loads(line) for line in TINY.read_text().splitlines()]
    sep = "\t" if fmt == "tsv" else ","
    quote = (lambda v: v) if fmt == "tsv" else (lambda v: '"' + v.replace('"', '""') + '"')
    return (
        "\n".join(
            [sep.join(["source", "target", "group"])]
            + [sep.join(quote(r[k]) for k in ("source", "target", "group")) for r in rows]
        )
        + "\n"
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_formats_read_the_same_rows(fmt, tmp_path):
    path = TINY if fmt == "jsonl" else tmp_path / f"d.{fmt}"
    if fmt != "jsonl":
        path.write_text(_rows_text(fmt))
    rows = owndata.load_rows(path, fmt, group_field="group")
    assert len(rows) == 6 and rows[1].target == "In the city centre you will find Alimentum."
    groups = owndata.source_groups(rows)
    assert [len(g.refs) for g in groups] == [2, 1, 2, 1]  # same source = several references, first-seen order
    assert [g.group for g in groups] == ["restaurant", "restaurant", "city", "city"]
    first = 1 if fmt == "jsonl" else 2  # CSV/TSV: line 1 is the header
    assert rows[0].where.endswith(f":{first}") and rows[5].where.endswith(f":{first + 5}")


def test_field_names_are_configurable(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"mr": "a : b", "text": "A is b."}\n')
    assert owndata.load_rows(p, source_field="mr", target_field="text")[0].source == "a : b"


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"source": "a"}', r"d.jsonl:2: field 'target' missing"),
        ('{"source": "a", "target": ""}', r"d.jsonl:2: field 'target' ''"),
        ('{"source": "a", "target": "x"', r"d.jsonl:2: invalid JSON"),
        ('["a", "b"]', r"d.jsonl:2: a JSON list"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, line, match):
    p = tmp_path / "d.jsonl"
    p.write_text('{"source": "s", "target": "t"}\n' + line + "\n")
    with pytest.raises(DataError, match=match):
        owndata.load_rows(p)


def test_csv_errors_and_group_conflict(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("source,target\na,b\nc\n")
    with pytest.raises(DataError, match=r"d.csv:3: field 'target' missing"):
        owndata.load_rows(p, "csv")
    p.write_text("source,target,group\na,b,x\na,c,y\n")
    with pytest.raises(DataError, match=r"d.csv:3: group 'y' for a source labelled 'x' at .*d.csv:2"):
        owndata.source_groups(owndata.load_rows(p, "csv", group_field="group"))
    with pytest.raises(DataError, match="no such file"):
        owndata.load_rows(tmp_path / "missing.csv", "csv")


def test_configs_load():
    c = load_config(REPO / "configs" / "custom_example.yaml")
    assert (c.data.dataset, c.data.format, c.data.group_field) == ("custom", "jsonl", "group")
    for method in ("prefix", "finetune"):  # the shipped configs carry the paper's recipe (paper.WEBNLG_RECIPE)
        w = load_config(REPO / "configs" / f"webnlg_{method}_gpt2-medium.yaml")
        recipe = paper.WEBNLG_RECIPE[method]
        assert (w.data.dataset, w.method.name) == ("webnlg", method)
        assert (w.train.lr, w.train.batch_size, w.train.epochs) == (
            recipe["lr"],
            recipe["batch_size"],
            recipe["epochs"],
        )
    assert load_config(REPO / "configs" / "webnlg_prefix_gpt2-medium.yaml").method.prefix_length == 5
    with pytest.raises(ConfigError, match="data.train: required"):
        load_config(None, ["data.dataset=custom"])


def test_webnlg_examples_and_decode_set():
    cfg = load_config(REPO / "configs" / "webnlg_prefix_gpt2-medium.yaml", ["data.train_size=20"])
    train, dev = corpora.train_dev_examples(cfg)
    assert len(train) == 20 and len(dev) == 6 and train[0].table.startswith(" | ")
    ds = corpora.decode_set(cfg, "test", limit=6)  # 3 seen + 3 unseen: all of S, U and A get scores
    assert len(ds.tables) == 6
    res = ds.score([refs[0] for refs in ds.refs], ["BLEU", "TER"])
    assert set(res) >= {"S", "U", "A"} and res["A"]["BLEU"] > 0.9 and res["n_entries"] == 6
    assert len(corpora.decode_set(cfg, "test").tables) == 1862 and len(corpora.decode_set(cfg, "dev").tables) == 871


def test_custom_example_trains_and_generates(tmp_path, monkeypatch):
    """configs/custom_example.yaml end to end on tiny-gpt2: train, generate with per-group scores, evaluate."""
    monkeypatch.chdir(REPO)  # the config's data paths are relative to the repo root
    run = tmp_path / "custom"
    assert main(["train", "configs/custom_example.yaml", f"out_dir={run}"]) == 0
    assert main(["generate", str(run), *E2E_FAST]) == 0
    outputs = (run / "outputs-test.txt").read_text().splitlines()
    assert len(outputs) == 4  # one per unique source
    scores = json.loads((run / "scores-test.json").read_text())
    assert "BLEU" in scores and set(scores["groups"]) == {"restaurant", "city"}
    assert [scores["groups"][g]["n_sources"] for g in ("restaurant", "city")] == [2, 2]
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "custom",
                "--group-field",
                "group",
                str(TINY),
                str(run / "outputs-test.txt"),
                "--metrics",
                "BLEU,NIST",
                "--json",
            ]
        )
        == 0
    )


def test_webnlg_trains_generates_and_evaluates(tmp_path, capsys):
    run = tmp_path / "w"
    assert (
        main(
            [
                "train",
                str(REPO / "configs" / "tiny_prefix.yaml"),
                "data.dataset=webnlg",
                "data.train_size=8",
                "data.max_length=320",
                "train.max_steps=2",
                "train.precision=fp32",
                f"out_dir={run}",
            ]
        )
        == 0
    )
    assert main(["generate", str(run), "--limit", "4", "--max-new-tokens", "6", *WEBNLG_FAST]) == 0
    scores = json.loads((run / "scores-test.json").read_text())
    assert set(scores) >= {"S", "U", "A"} and set(scores["A"]) == {"BLEU", "TER"}
    assert len((run / "outputs-test.txt").read_text().splitlines()) == 4
    # evaluate: the references as outputs score near 1; a wrong count is refused (exit 2)
    entries = webnlg.load_webnlg("dev")
    hyps = tmp_path / "dev.txt"
    hyps.write_text("".join(g.refs[0] + "\n" for g in webnlg.decode_groups(entries)))
    capsys.readouterr()
    assert (
        main(["evaluate", "--dataset", "webnlg", "--split", "dev", str(hyps), "--metrics", "BLEU,TER", "--json"]) == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"S", "A"} and "U" not in res and res["A"]["BLEU"] > 0.99  # dev has seen categories only
    assert main(["evaluate", "--dataset", "webnlg", "--split", "test", str(hyps)]) == 2
    assert "expected one per unique source (1862)" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "webnlg", "--split", "dev", str(hyps), "--metrics", "NIST"]) == 2
    assert "unknown WebNLG metric(s) ['NIST']" in capsys.readouterr().err


def test_generate_mrs_file_is_used_verbatim_for_other_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "configs" / "custom_example.yaml")
    src = tmp_path / "sources.txt"
    src.write_text("name : Aromi | food : Chinese\n\ncity : Oslo\n")
    assert load_tables("test", cfg, mrs=src) == (["name : Aromi | food : Chinese", "city : Oslo"], None, None)
    shutil.rmtree(tmp_path)


def test_custom_without_dev_file_and_too_long_source(tmp_path):
    """No dev file: no dev examples (no dev loss). A source longer than max_length names its file:line."""
    cfg = load_config(None, ["data.dataset=custom", f"data.train={TINY}"])
    train, dev = corpora.train_dev_examples(cfg)
    assert len(train) == 6 and dev == []
    with pytest.raises(DataError, match=r"tiny_custom.jsonl:1: prompt of \d+ tokens"):
        E2EDataset(train, load_tokenizer("tiny-gpt2"), max_length=8)
