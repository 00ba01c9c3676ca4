"""The analysis scripts behind README numbers (`scripts/*.py`): each on hand-made inputs with hand-computed
answers, and on the committed results they were run on."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mr_coverage_script():
    """scripts/mr_coverage.py (README Table 1's last two columns): free-text values counted verbatim, any case;
    eatType/priceRange/... not counted; one output per MR or a clear error."""
    cov = _script("mr_coverage").coverage
    mrs = ["name[The Eagle], eatType[pub], food[Thai]", "name[Alimentum], area[city centre], near[Yippee Noodle Bar]"]
    words, share, n = cov(mrs, ["the eagle is a pub.", "Alimentum is in the City Centre."])
    assert (words, n) == (5.5, 5) and share == pytest.approx(3 / 5)  # Thai and Yippee Noodle Bar missing
    assert cov(mrs, ["The Eagle serves Thai food.", "Alimentum, city centre, near Yippee Noodle Bar."])[1] == 1.0
    with pytest.raises(ValueError, match="1 outputs for 2 MRs"):
        cov(mrs, ["x"])


def test_output_stats_script():
    """scripts/output_stats.py (README, WebNLG): a 4-gram seen twice counts, any case; three words cannot repeat a
    4-gram; mean words over outputs; no outputs is an error."""
    m = _script("output_stats")
    assert m.repeats_ngram("The cat sat on the CAT SAT ON the mat")  # "the cat sat on" twice
    assert not m.repeats_ngram("the cat sat on the mat") and not m.repeats_ngram("a a a")
    assert m.repeats_ngram("a a a a a")  # "a a a a" at 0 and 1
    assert m.stats(["a b c", "x y z x y z x y z w"]) == (6.5, 0.5)
    with pytest.raises(ValueError, match="no outputs"):
        m.stats([])


def _init_run(size: int, seed: int, init: str, bleu: float, dev: float, steps: int) -> dict:
    return {"size": size, "seed": seed, "init": init, "metrics": {"BLEU": bleu}, "best_dev_loss": dev, "steps": steps}


def test_init_stats_script():
    """scripts/init_stats.py (README, initialisation): per (size, seed) cell, random vs the words' mean/range, how
    many words beat random, task words ("summarize", "table-to-text:") vs the others; unscored runs are ignored
    and a cell without random init is reported incomplete."""
    runs = [
        _init_run(50, 0, "random", 0.50, 46.0, 110),
        _init_run(50, 0, "summarize", 0.56, 44.0, 50),
        _init_run(50, 0, "table-to-text:", 0.60, 43.0, 45),
        _init_run(50, 0, "elephant", 0.40, 45.0, 55),
        _init_run(50, 0, "active", 0.52, 44.5, 60),
        {**_init_run(50, 0, "divide", 0.0, 1.0, 1), "metrics": {}},  # not scored yet
        _init_run(100, 1, "elephant", 0.61, 41.0, 90),
    ]
    cell, incomplete = _script("init_stats").summarize(runs)
    assert cell == (
        "n=50 seed 0: random BLEU 50.0, dev 46.00, steps 110 | 4 words BLEU mean 52.0 [40.0, 60.0], 3 above random, "
        "dev [43.00, 45.00], steps [45, 60] | task words 58.0 vs others 46.0"
    )
    assert incomplete == "n=100 seed 1: incomplete (1 runs)"


def test_init_stats_on_committed_results():
    """The README's cells: word init lowers the best dev loss below random's in every cell (`dev [lo, hi]` vs
    random's `dev`), and seed 0 has all 8 words above random at both sizes."""
    path = REPO / "results" / "init" / "results.json"
    if not path.is_file():
        pytest.skip("no committed init results")
    lines = _script("init_stats").summarize(json.loads(path.read_text())["runs"])
    assert len(lines) == 4 and not any("incomplete" in line for line in lines)
    for line in lines:
        random_dev = float(line.split("dev ")[1].split(",")[0])
        words_hi = float(line.split("dev [")[1].split("]")[0].split(", ")[1])
        assert words_hi < random_dev, line
    assert sum("8 above random" in line for line in lines if "seed 0" in line) == 2


def test_full_test_table_script():
    """scripts/full_test_table.py (README, low-data on all 630 MRs): one row per re-decoded run with its scores as
    stored, and per (size, method) the mean over seeds."""
    results = REPO / "results" / "lowdata"
    if not (results / "full-test").is_dir():
        pytest.skip("no committed low-data full-test results")
    table = _script("full_test_table").main(results).splitlines()
    s0 = json.loads((results / "full-test" / "prefix-n200-s0.scores.json").read_text())
    s1 = json.loads((results / "full-test" / "prefix-n200-s1.scores.json").read_text())
    row = next(line for line in table if line.startswith("| prefix-n200-s0 |"))
    assert row.split(" | ")[1] == f"{100 * s0['BLEU']:.1f}"
    mean = next(line for line in table if line.startswith("| 200 | prefix |"))
    assert math.isclose(float(mean.split(" | ")[2]), 100 * (s0["BLEU"] + s1["BLEU"]) / 2, abs_tol=0.051)
