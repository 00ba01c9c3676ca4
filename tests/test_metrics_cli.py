"""The ``evaluate`` subcommand: output formats, --compare, missing Java, bad input, help.

Expected scores are the official scorer's (shared/data/e2e-eval/README.md, example row).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefix_tuning.metrics import java
from prefix_tuning.metrics.cli import add_evaluate_parser, run_evaluate

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PREFIX_TUNING_DATA") or REPO.parent / "shared" / "data")
REFS = DATA / "e2e-eval" / "example-devel-refs.txt"
OUTPUT = DATA / "e2e-eval" / "example-baseline-output.txt"
GOLDEN = {
    "BLEU": 0.7202928494,
    "NIST": 7.8211519275,
    "ROUGE_L": 0.7909526131515365,
    "CIDEr": 2.303943135258847,
}


@pytest.fixture(autouse=True)
def _need_data() -> None:
    if not REFS.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"example files not found in {DATA}; set PREFIX_TUNING_DATA")
        pytest.skip(f"example files not found in {DATA}")


def evaluate(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="prefix-tuning")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    assert args.func is run_evaluate
    return run_evaluate(args)


def test_json_has_exactly_the_selected_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate(str(REFS), str(OUTPUT), "--json", "--metrics", "NIST,bleu") == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["BLEU", "NIST"]
    assert out["BLEU"] == pytest.approx(GOLDEN["BLEU"], abs=1e-10)
    assert out["NIST"] == pytest.approx(GOLDEN["NIST"], abs=1e-10)


@pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("CI"), reason="needs Java")
def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate(str(REFS), str(OUTPUT), "--metrics", "BLEU,NIST,ROUGE_L,CIDEr") == 0
    out = capsys.readouterr().out
    assert "BLEU     0.7203" in out and "NIST     7.8212" in out
    assert "ROUGE_L  0.7910" in out and "CIDEr    2.3039" in out
    assert "signature: e2e-official|bleu:13a-lc|nist:mteval-v13a-n5|rouge_l:coco-beta1.2" in out


def test_compare_prints_paired_bootstrap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    worse = tmp_path / "worse.txt"
    worse.write_text("\n".join(line[: len(line) // 2] for line in OUTPUT.read_text().splitlines()) + "\n")
    args = [str(REFS), str(OUTPUT), "--metrics", "BLEU", "--compare", str(worse)]
    assert evaluate(*args, "--bootstrap-samples", "200") == 0
    out = capsys.readouterr().out
    assert "paired bootstrap (200 samples, seed 12345): BLEU(B) - BLEU(A) = -" in out
    assert evaluate(*args, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"A", "B", "paired_bootstrap"}
    assert data["paired_bootstrap"]["delta"] == pytest.approx(data["B"]["BLEU"] - data["A"]["BLEU"])


def test_missing_java_still_prints_other_metrics(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(java.shutil, "which", lambda name: None)
    assert evaluate(str(REFS), str(OUTPUT), "--json") == 0
    captured = capsys.readouterr()
    assert list(json.loads(captured.out)) == ["BLEU", "NIST"]
    assert "warning: METEOR, ROUGE_L, CIDEr not computed" in captured.err
    assert "apt-get install -y default-jre-headless" in captured.err


def test_bad_input_exits_2_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short.txt"
    short.write_text("just one line\n")
    assert evaluate(str(REFS), str(short)) == 2
    assert f"error: {short}, line 2: 1 output lines for 10 MRs" in capsys.readouterr().err
    assert evaluate(str(REFS), str(OUTPUT), "--metrics", "BLEU,BLUE") == 2
    assert "unknown metric 'BLUE'" in capsys.readouterr().err
    assert evaluate(str(REFS), str(tmp_path / "missing.txt")) == 2


def test_module_entry_point_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prefix_tuning.metrics.cli", "evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--bootstrap-samples N" in result.stdout and "--compare OUTPUT_B" in result.stdout
