"""WebNLG 2017 scoring (prefix_tuning.metrics.webnlg, .ter) against the challenge's own files and scores.

Where expected values come from:
* GOLDEN_*: the organisers' score files in shared/data/webnlg2017-eval/official-scores (multi-bleu.perl's
  line, METEOR 1.5's "Final score", tercom 0.7.25's "Total TER" with its closing counters), copied here.
* TER_CASES: tercom (the LGPL 0.8.0 Java source, which reproduces every official TER total and counter above)
  run on these pairs in the trans format.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from prefix_tuning import webnlg
from prefix_tuning.metrics import EvalInputError
from prefix_tuning.metrics import ter as T
from prefix_tuning.metrics import webnlg as W

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PREFIX_TUNING_DATA") or REPO.parent / "shared" / "data")
EVAL = DATA / "webnlg2017-eval"
IN_CI = bool(os.environ.get("CI"))
needs_data = pytest.mark.skipif(not EVAL.is_dir() and not IN_CI, reason=f"needs {EVAL}")
needs_java = pytest.mark.skipif(shutil.which("java") is None and not IN_CI, reason="needs Java")
TEAMS = ("ADAPT_Centre", "Baseline", "Tilburg_University-3")
FILES = {"S": "old-cat", "U": "new-cat", "A": "all-cat"}

GOLDEN_BLEU = {
    "ADAPT_Centre": {
        "S": "BLEU = 60.59, 85.6/67.9/53.7/43.1 (BP=1.000, ratio=1.023, hyp_len=23819, ref_len=23285)",
        "U": "BLEU = 10.53, 34.5/14.7/7.1/3.4 (BP=1.000, ratio=1.680, hyp_len=35908, ref_len=21378)",
        "A": "BLEU = 31.06, 54.9/35.7/25.3/18.7 (BP=1.000, ratio=1.337, hyp_len=59727, ref_len=44663)"},
    "Baseline": {
        "S": "BLEU = 52.39, 81.2/61.1/47.1/36.8 (BP=0.968, ratio=0.968, hyp_len=22116, ref_len=22844)",
        "U": "BLEU = 6.13, 38.9/10.1/4.9/2.8 (BP=0.717, ratio=0.750, hyp_len=13196, ref_len=17591)",
        "A": "BLEU = 33.24, 65.4/42.3/31.8/24.8 (BP=0.865, ratio=0.873, hyp_len=35312, ref_len=40435)"},
    "Tilburg_University-3": {
        "S": "BLEU = 44.34, 81.8/56.4/38.6/26.5 (BP=0.951, ratio=0.952, hyp_len=21273, ref_len=22337)",
        "U": "BLEU = 20.65, 81.8/57.1/39.3/26.6 (BP=0.439, ratio=0.549, hyp_len=9062, ref_len=16517)",
        "A": "BLEU = 35.29, 81.8/56.6/38.8/26.5 (BP=0.755, ratio=0.781, hyp_len=30335, ref_len=38854)"},
}  # fmt: skip
GOLDEN_METEOR = {  # no METEOR file exists for Baseline
    "ADAPT_Centre": {"S": 0.4453891492995515, "U": 0.19233349243861037, "A": 0.315979589643074},
    "Tilburg_University-3": {"S": 0.38239237838793705, "U": 0.21625392483578004, "A": 0.3083401410609527},
}
GOLDEN_TER = {  # Total TER, edits, mean reference words; counters: beam search calls, segments scored, shifts
    "ADAPT_Centre": {"S": (0.3787628983200205, 8883, 23452.666666666664, 124502, 2463, 122039),
                     "U": (1.4049807367864418, 27898, 19856.500000000015, 89379, 2431, 86948),
                     "A": (0.8492659367724297, 36781, 43309.16666666672, 213881, 4894, 208987)},
    "Baseline": {"S": (0.44864834134000403, 10522, 23452.666666666664, 108880, 2463, 106417),
                 "U": (0.8072923224133149, 16030, 19856.500000000015, 25593, 2431, 23162),
                 "A": (0.6130803717457806, 26552, 43309.16666666672, 134473, 4894, 129579)},
    "Tilburg_University-3": {"S": (0.4885585150231673, 11458, 23452.666666666664, 142360, 2437, 139923),
                             "U": (0.6575176894215995, 13056, 19856.500000000015, 38973, 1738, 37235),
                             "A": (0.566023359181081, 24514, 43309.16666666672, 181333, 4175, 177158)},
}  # fmt: skip


@pytest.fixture(scope="module")
def test_set() -> tuple[list[tuple[str, ...]], list[bool]]:
    entries = webnlg.load_webnlg("test", data_dir=DATA)
    return [e.refs for e in entries], [e.seen for e in entries]


def _raw(team: str) -> list[str]:
    lines = (EVAL / "raw-submissions" / f"{team}.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1862
    return lines


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _masks(seen: list[bool]) -> dict[str, np.ndarray]:
    s = np.array(seen)
    return {"S": s, "U": ~s, "A": np.ones_like(s)}


@needs_data
def test_preprocessing_reproduces_the_organisers_files(test_set) -> None:
    refs, seen = test_set
    for key, name in FILES.items():
        keep = _masks(seen)[key]
        part = [[W.normalize_ref(r) for r in group[:3]] for group, k in zip(refs, keep) if k]
        for j in range(3):
            slot = [g[j] if j < len(g) else "" for g in part]
            assert slot == _lines(EVAL / f"official-refs/gold-{name}-reference{j}.lex")
        meteor = [line for g in part for line in g + [""] * (3 - len(g))]
        assert meteor == _lines(EVAL / f"official-refs/gold-{name}-reference-3ref.meteor")
        ter_refs = [f"{r} (id{i + 1})" for i, g in enumerate(part) for r in g]
        assert ter_refs == _lines(EVAL / f"official-refs/gold-{name}-reference-3ref.ter")
        for team in TEAMS:
            mine = [W.normalize_hyp(h) for h, k in zip(_raw(team), keep) if k]
            assert mine == _lines(EVAL / f"official-hyps/{team}_{name}.txt"), (team, name)


@needs_data
def test_bleu_golden_lines_and_conventions(test_set) -> None:
    refs, seen = test_set
    slots = [[W.normalize_ref(r) for r in g[:3]] + [""] * (3 - len(g[:3])) for g in refs]
    masks = _masks(seen)
    for team in TEAMS:
        hyps = [W.normalize_hyp(h) for h in _raw(team)]
        rows = W.bleu_segment_stats(hyps, slots)
        for key, golden in GOLDEN_BLEU[team].items():
            assert W.multibleu_line(rows[masks[key]].sum(axis=0)) == golden, (team, key)
        scores = W.score_webnlg(_raw(team), refs, seen, metrics=["BLEU"])
        assert {k: f"{100 * v['BLEU']:.2f}" for k, v in scores.items()} == {
            k: line[7:12].rstrip(",") for k, line in GOLDEN_BLEU[team].items()
        }
    # The README's checks of the conventions: empty slots count for the closest length; first 3 refs only.
    unseen = masks["U"]
    for team, without_empty in (("Baseline", "5.76"), ("Tilburg_University-3", "17.01")):
        hyps = [W.normalize_hyp(h) for h in _raw(team)]
        rows = W.bleu_segment_stats(hyps, [[r for r in s if r] for s in slots])
        assert f"{100 * W.multibleu_from_stats(rows[unseen].sum(axis=0))['bleu']:.2f}" == without_empty
    all_refs = [[W.normalize_ref(r) for r in g] for g in refs]
    rows = W.bleu_segment_stats([W.normalize_hyp(h) for h in _raw("ADAPT_Centre")], all_refs)
    assert f"{100 * W.multibleu_from_stats(rows[masks['S']].sum(axis=0))['bleu']:.2f}" == "60.68"


@needs_data
@needs_java
def test_meteor_golden(test_set) -> None:
    refs, seen = test_set  # Tilburg_University-3 (empty outputs) is in the slow test
    for team, golden in list(GOLDEN_METEOR.items())[:1]:
        scores = W.score_webnlg(_raw(team), refs, seen, metrics=["METEOR"])
        assert {k: v["METEOR"] for k, v in scores.items()} == pytest.approx(golden, abs=1e-12), team


def _official_ter(team: str, key: str) -> tuple[np.ndarray, T.TerCounters]:
    """TER of the organisers' preprocessed files, read in tercom's trans format."""
    refs: dict[str, list[str]] = {}
    for line in _lines(EVAL / f"official-refs/gold-{FILES[key]}-reference-3ref.ter"):
        m = re.match(r"^\s*(.*?)\s*\(([^()]+)\)\s*$", line)
        assert m is not None
        refs.setdefault(m[2], []).append(m[1])
    hyps = _lines(EVAL / f"official-hyps/{team}_{FILES[key]}.txt")
    counters = T.TerCounters()
    stats = T.segment_stats(hyps, [refs[f"id{i + 1}"] for i in range(len(hyps))], counters)
    return stats, counters


@needs_data
@pytest.mark.parametrize("team", ["Baseline", "Tilburg_University-3"])
def test_ter_golden_unseen_with_tercom_counters(team: str) -> None:
    stats, counters = _official_ter(team, "U")
    score, edits, words, calls, segments, shifts = GOLDEN_TER[team]["U"]
    totals = stats.sum(axis=0)
    assert (int(totals[0]), totals[1], T.ter_from_stats(totals)) == (edits, pytest.approx(words), pytest.approx(score))
    assert (counters.beam_calls, counters.segments_scored, counters.shifts_tried) == (calls, segments, shifts)


@pytest.mark.slow
@needs_data
@needs_java
def test_all_official_scores(test_set) -> None:
    """All 27 published numbers through `score_webnlg` from the raw submissions (~1-2 min)."""
    refs, seen = test_set
    for team in TEAMS:
        scores = W.score_webnlg(_raw(team), refs, seen)
        for key in FILES:
            assert f"{100 * scores[key]['BLEU']:.2f}" == GOLDEN_BLEU[team][key][7:12].rstrip(","), (team, key)
            assert scores[key]["TER"] == pytest.approx(GOLDEN_TER[team][key][0], abs=1e-12), (team, key)
            if team in GOLDEN_METEOR:
                assert scores[key]["METEOR"] == pytest.approx(GOLDEN_METEOR[team][key], abs=1e-12), (team, key)
    for team in TEAMS:  # tercom's counters on the seen files too (segments are independent: A = S + U)
        _, c = _official_ter(team, "S")
        assert (c.beam_calls, c.segments_scored, c.shifts_tried) == GOLDEN_TER[team]["S"][3:], team
        s, u, a = (GOLDEN_TER[team][k][1:] for k in "SUA")
        assert [x + y for x, y in zip(s, u)] == pytest.approx(a), team


TER_CASES = [  # hyp, refs, tercom's edits and mean reference length
    ("a b c d", ["a b c d"], 0, 4.0),
    ("d a b c", ["a b c d"], 1, 4.0),
    ("the cat sat on the mat", ["on the mat the cat sat"], 1, 6.0),
    ("a b c d e f g h", ["e f g h a b c d"], 1, 8.0),
    ("x y z", ["a b c"], 3, 3.0),
    ("a a b b a a", ["b a a b a a b"], 2, 7.0),
    ("one two three four five six seven eight nine ten eleven twelve",
     ["twelve eleven one two three four five six seven eight nine ten"], 2, 12.0),
    (" ".join(["the"] * 26), ["the cat"], 25, 2.0),
    ("b c a e d", ["a b c d e"], 2, 5.0),
    ("it is , it is .", ["it is ."], 3, 3.0),
    ("a b", ["b a c", "a b d", "c a"], 1, 8 / 3),
    ("", ["a b c"], 3, 3.0),  # tercom's null-string case: all deletions, not "scored"
    ("a b", [""], 2, 0.0),
]  # fmt: skip


def test_ter_small_cases_match_tercom() -> None:
    counters = T.TerCounters()
    stats = T.segment_stats([h for h, *_ in TER_CASES], [r for _, r, *_ in TER_CASES], counters)
    assert stats.tolist() == [[e, pytest.approx(n)] for _, _, e, n in TER_CASES]
    assert (counters.beam_calls, counters.segments_scored, counters.shifts_tried) == (67, 13, 54)
    assert T.tokenize(" A\tb  C\n") == ["a", "b", "c"] and T.tokenize("  ") == []


def test_ter_keeps_tercom_beam_where_sacrebleu_differs() -> None:
    """A Baseline unseen segment: tercom's beam (20 above each column's best) finds 28 edits; sacrebleu's 27."""
    hyp = "the association for computing machinery is founder ."
    ref = (
        "the battle of fredericksburg , in which alfred moore scales paricipated , was part of the american "
        "civil war military conflict during which jefferson davis was a commander ."
    )
    assert T.ter_pairs([(hyp.split(), ref.split())]) == [28]
    lib_ter = pytest.importorskip("sacrebleu.metrics.lib_ter")
    assert lib_ter.translation_edit_rate(hyp.split(), ref.split())[0] == 27


def test_builtin_transliteration() -> None:
    assert (
        W._builtin_ascii("Adolfo Suárez Madrid–Barajas, Ölüdeniz, İzmir’s ß")
        == "Adolfo Suarez Madrid-Barajas, Oludeniz, Izmir's ss"
    )
    with pytest.raises(EvalInputError, match=r"'€' \(U\+20AC\).*pip install Unidecode"):
        W._builtin_ascii("costs 5 €")
    unidecode = pytest.importorskip("unidecode")
    assert all(unidecode.unidecode(ch) == out for ch, out in W._BUILTIN.items())


def test_normalisation_rules() -> None:
    asc = W._builtin_ascii
    assert W.normalize_hyp("  Born 1942-08-26 in Zürich (CH).\n", asc) == "born 1942 - 08 - 26 in zurich ( ch ) ."
    assert W.normalize_ref("Aarhus airport's city_name is Aarhus.", asc) == "aarhus airport ' s city_name is aarhus ."


def test_multibleu_corner_cases() -> None:
    rows = W.bleu_segment_stats(["a b c", ""], [["a b c d", "", ""], ["x y", "", ""]])
    assert rows.tolist() == [[3, 4, 3, 2, 1, 0, 3, 2, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert W.multibleu_from_stats(rows.sum(axis=0))["bleu"] == 0.0  # no 4-gram: no smoothing
    assert W.multibleu_line(rows.sum(axis=0)).startswith("BLEU = 0.00, 100.0/100.0/100.0/0.0 (BP=0.717")
    assert W.multibleu_from_stats([0, 0] + [0] * 8)["bleu"] == 0.0
    assert W.multibleu_from_stats([0, 5] + [0] * 8)["bleu"] == 0.0


def test_input_checks_splits_and_signature() -> None:
    with pytest.raises(EvalInputError, match="2 outputs, 1 reference sets and 2 seen flags"):
        W.score_webnlg(["a", "b"], [["a"]], [True, False])
    with pytest.raises(EvalInputError, match="entry 1 has no reference"):
        W.score_webnlg(["a", "b"], [["a"], [""]], [True, False])
    with pytest.raises(EvalInputError, match="list of strings"):
        W.score_webnlg("a", [["a"]], [True])  # type: ignore[arg-type]
    scores = W.score_webnlg(
        ["The cat sat.", "A dog."], [["the cat sat ."], ["a dog ."]], [True, True], metrics=["bleu", "ter"]
    )
    assert set(scores) == {"S", "A"} and scores["S"]["TER"] == 0.0 and set(scores["A"]) == {"BLEU", "TER"}
    sig = W.signature()
    assert sig.startswith("webnlg2017-official|tok:split-nonword-lc|ascii:")
    assert "bleu:multi-bleu-lc-3ref|meteor:1.5-en-norm-3ref|ter:tercom-0.7.25-3ref|version:" in sig
    assert "|ter:tercom-0.7.25-3ref|" in W.signature("ter") and "meteor" not in W.signature("ter, bleu")
    with pytest.raises(ValueError, match="unknown or no metric"):
        W.score_webnlg(["a"], [["a"]], [True], metrics=["ROUGE_L"])
