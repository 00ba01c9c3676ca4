"""Exactness of prefix_tuning.metrics against the official E2E scorer, plus inputs and bootstrap.

Where expected values come from:
* GOLDEN_*: printed by the official e2e-metrics ``measure_scores.py`` (tuetschek/e2e-metrics),
  copied from shared/data/e2e-eval/README.md.
* DERIVED_*: outputs the official scorer has never seen, scored with the official
  algorithm implementations: BLEU/NIST by the E2E copy of ``mteval-v13a-sig.pl`` (its
  scoring code run verbatim under Perl; it reproduces both golden rows to 10 decimals),
  METEOR/ROUGE_L/CIDEr by pycocoevalcap 1.2's PTBTokenizer, Meteor, Rouge and Cider
  classes driven as measure_scores.py drives them. Printed to 10 decimals (Perl) or
  full precision (Python).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from prefix_tuning.metrics import (
    EvalInputError,
    JavaNotFoundError,
    bleu,
    coco,
    java,
    load,
    mteval,
    nist,
    normalize_metrics,
    paired_bootstrap,
    read_outputs,
    read_refs,
    score,
    score_many,
    signature,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PREFIX_TUNING_DATA") or REPO.parent / "shared" / "data")
EVAL = DATA / "e2e-eval"
IN_CI = bool(os.environ.get("CI"))
# Locally a missing Java or data set skips; in CI it fails, so a broken set-up shows.
needs_java = pytest.mark.skipif(
    shutil.which("java") is None and not IN_CI, reason="needs Java (apt-get install -y default-jre-headless)"
)

GOLDEN_EXAMPLE = {"BLEU": 0.7202928494, "NIST": 7.8211519275, "METEOR": 0.4800716745732023,
                  "ROUGE_L": 0.7909526131515365, "CIDEr": 2.303943135258847}  # fmt: skip
GOLDEN_TGEN = {"BLEU": 0.6592719328, "NIST": 8.6093776203, "METEOR": 0.44825963401948726,
               "ROUGE_L": 0.685022628460141, "CIDEr": 2.2338463877854293}  # fmt: skip
DERIVED_PERTURBED = {"BLEU": 0.4957657288, "NIST": 6.2794473521, "METEOR": 0.3527841570344882,
                     "ROUGE_L": 0.5300057028789091, "CIDEr": 1.5235631051257925}  # fmt: skip
DERIVED_SHORT40 = {"BLEU": 0.0014061182, "NIST": 4e-10}  # outputs of at most 2 words
DERIVED_SHUFFLED = {"BLEU": 0.1439660452, "NIST": 2.6226212206}  # outputs of other MRs


def assert_official(ours: dict[str, float], expected: dict[str, float]) -> None:
    """Equal to 4 decimals (the scorer's printout) and to the precision given."""
    for name, value in expected.items():
        assert round(ours[name], 4) == round(value, 4), name
        assert ours[name] == pytest.approx(value, rel=1e-9, abs=6e-11), name


def perturb(lines: list[str]) -> list[str]:
    """Unseen outputs: emptied, truncated, reversed, upper-cased and decorated lines."""
    out = []
    for i, line in enumerate(lines):
        words = line.split()
        if i % 7 == 0:
            out.append("")
        elif i % 5 == 0:
            out.append(" ".join(words[: len(words) // 2]))
        elif i % 11 == 0:
            out.append(" ".join(reversed(words)))
        elif i % 13 == 0:
            out.append(line.upper())
        elif i % 17 == 0:
            out.append(line + " &amp; <skipped> 0 stars.")
        else:
            out.append(line)
    return out


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = DATA / "e2e" / "e2e-dataset.zip"
    if not archive.is_file():
        if IN_CI:
            pytest.fail(f"E2E data not found in {DATA}; set PREFIX_TUNING_DATA")
        pytest.skip(f"E2E data not found in {DATA}")
    target = tmp_path_factory.mktemp("e2e") / "testset_w_refs.csv"
    with zipfile.ZipFile(archive) as zf:
        target.write_bytes(zf.read("e2e-dataset/testset_w_refs.csv"))
    return target


@pytest.fixture(scope="module")
def tgen(test_csv: Path) -> tuple[list[list[str]], list[str]]:
    return load(test_csv, EVAL / "tgen-test-output.txt")


# ---------------------------------------------------------------- golden rows


@needs_java
def test_golden_example_row() -> None:
    refs, hyps = load(EVAL / "example-devel-refs.txt", EVAL / "example-baseline-output.txt")
    assert len(refs) == 10 and sum(map(len, refs)) == 137
    assert_official(score(refs, hyps), GOLDEN_EXAMPLE)


@needs_java
def test_golden_tgen_row_and_unseen_outputs(tgen: tuple[list[list[str]], list[str]]) -> None:
    refs, hyps = tgen
    assert len(refs) == 630 and sum(map(len, refs)) == 4693
    ours, perturbed = score_many(refs, [hyps, perturb(hyps)])
    assert list(ours) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert_official(ours, GOLDEN_TGEN)
    assert_official(perturbed, DERIVED_PERTURBED)


def test_bleu_nist_without_java_on_unseen_outputs(tgen: tuple[list[list[str]], list[str]]) -> None:
    refs, hyps = tgen
    assert_official(score(refs, hyps, ["BLEU", "NIST"]), {k: GOLDEN_TGEN[k] for k in ("BLEU", "NIST")})
    assert_official(score(refs, perturb(hyps), ["BLEU", "NIST"]), {k: DERIVED_PERTURBED[k] for k in ("BLEU", "NIST")})
    short = [" ".join(h.split()[:2]) for h in hyps[:40]]
    assert_official(score(refs[:40], short, ["BLEU", "NIST"]), DERIVED_SHORT40)
    assert_official(score(refs[:100], hyps[100:200], ["BLEU", "NIST"]), DERIVED_SHUFFLED)


def test_sacrebleu_agrees_on_ordinary_data_only(tgen: tuple[list[list[str]], list[str]]) -> None:
    """sacrebleu (None-padded refs) matches the Perl BLEU except in the corner cases it treats differently."""
    sacrebleu = pytest.importorskip("sacrebleu")

    def sacre(refs: list[list[str]], hyps: list[str]) -> float:
        width = max(map(len, refs))
        streams = [[g[i] if i < len(g) else None for g in refs] for i in range(width)]
        return sacrebleu.metrics.BLEU(tokenize="13a", lowercase=True).corpus_score(hyps, streams).score / 100

    refs, hyps = tgen
    assert sacre(refs, hyps) == pytest.approx(GOLDEN_TGEN["BLEU"], abs=1e-9)
    assert sacre(refs, perturb(hyps)) != pytest.approx(DERIVED_PERTURBED["BLEU"], abs=1e-5)  # "É" lowercased
    assert sacre(refs[:40], [" ".join(h.split()[:2]) for h in hyps[:40]]) == 0.0  # Perl: 0.0014


# ------------------------------------------------------- mteval tokens, BLEU, NIST


def test_mteval_tokenization() -> None:
    assert mteval.tokenize("The Café costs £20-25.") == "the café costs £20 - 25 ."
    assert mteval.tokenize("CAFÉ ÉCLAIR") == "cafÉ Éclair"  # Perl lowercases A-Z only
    assert mteval.tokenize("a &amp; b &lt;c&gt; <skipped>d") == "a & b < c > d"
    assert mteval.tokenize("3.5 stars, 1,000 x.y") == "3.5 stars , 1,000 x . y"
    assert mteval.tokenize("a\x1fb\u00a0c\td") == "a\x1fb c d"  # Perl's \s, not Python's
    assert mteval.words("   ") == []


def test_mteval_tokenization_matches_sacrebleu_on_ascii(tgen: tuple[list[list[str]], list[str]]) -> None:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok13a = Tokenizer13a()
    texts = [r for g in tgen[0][:200] for r in g] + ["Hello, World!! (a-b) x/y 5-star £3.50?"]
    for text in texts:
        if text.isascii():
            assert mteval.tokenize(text) == tok13a(text.lower())


def test_closest_reference_length_follows_perl() -> None:
    assert mteval.closest_ref_length([11, 8, 6, 7], 7) == 7
    assert mteval.closest_ref_length([11, 8, 6], 7) == 6  # tie: the shorter one
    assert mteval.closest_ref_length([4, 0], 0) == 4  # later empty refs are skipped
    assert mteval.closest_ref_length([0, 5], 7) == 5  # an empty first ref still initialises


def test_nist_information_weights_by_hand() -> None:
    refs = mteval.prepare_refs([["a b", "a c"]])
    info = nist.InformationWeights(refs.totals, 4)
    assert info[("a",)] == pytest.approx(1.0)  # -log2(2/4)
    assert info[("b",)] == pytest.approx(2.0)  # -log2(1/4)
    assert info[("a", "b")] == pytest.approx(1.0)  # -log2(count(a b)/count(a)) = -log2(1/2)


def test_nist_zero_word_trap() -> None:
    """Perl's ``$mgram ? ...`` is false for the word "0": such bigrams are weighted like unigrams."""
    refs = mteval.prepare_refs([["0 stars", "0 stars here"]])
    info = nist.InformationWeights(refs.totals, 5)
    assert info[("0", "stars")] == pytest.approx(-math.log2(2 / 5))  # not -log2(2/2) = 0
    refs = mteval.prepare_refs([["1 stars", "1 stars here"]])
    assert nist.InformationWeights(refs.totals, 5)[("1", "stars")] == 0.0


def test_nist_score_by_hand() -> None:
    refs = mteval.prepare_refs([["a b c"]])
    assert nist.corpus_nist(refs, [["a", "b", "c"]]) == pytest.approx(math.log2(3))
    assert nist.length_penalty(1.0) == 1.0 and nist.length_penalty(0.0) == 0.0
    assert nist.length_penalty(1 / 1.5) == pytest.approx(0.5)
    # Brevity: 3 output words against 10 reference words / 2 non-empty references per
    # segment (the stock v13a would divide by 3 reference sets, the empty one included).
    # info(a) = -log2(2/10); the bigrams and the trigram carry no information (2/2).
    refs = mteval.prepare_refs([["a b c d", "a b c d e f", ""]])
    expected = math.log2(5) * nist.length_penalty(3 / (10 / 2))
    assert nist.corpus_nist(refs, [["a", "b", "c"]]) == pytest.approx(expected)


def test_bleu_perl_smoothing_and_empty_outputs() -> None:
    refs = mteval.prepare_refs([["the cat sat on the mat"], ["a dog"]])
    stats = bleu.segment_stats(refs, [["the", "cat", "sat", "on", "the", "mat"], []])
    assert stats[1].tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 0]  # empty output: closest ref length only
    assert bleu.bleu_from_stats(stats.sum(axis=0)) == pytest.approx(math.exp(1 - 8 / 6))
    # No 3/4-grams in any output: those orders count as precision 1 (Perl), not 0.
    assert bleu.bleu_from_stats([2, 2, 2, 1, 0, 0, 2, 1, 0, 0]) == pytest.approx(1.0)
    # No match at all: 1/(2^k * total) smoothing, never exactly 0.
    assert bleu.bleu_from_stats([4, 4, 0, 0, 0, 0, 4, 3, 2, 1]) == pytest.approx(
        math.exp((math.log(1 / 8) + math.log(1 / 12) + math.log(1 / 16) + math.log(1 / 16)) / 4)
    )
    assert bleu.bleu_from_stats([0] * 10) == 0.0


# ------------------------------------------------------------- ROUGE-L and CIDEr


def test_lcs_matches_dynamic_programming() -> None:
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
        assert coco.lcs_length(a, b) == table[-1][-1]


def test_rouge_and_cider_equal_pycocoevalcap_bit_for_bit(tgen: tuple[list[list[str]], list[str]]) -> None:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, hyps = tgen
    # Any whitespace-tokenised text works as input; mteval tokens stand in for PTB tokens.
    ref_tok = [[mteval.tokenize(r) for r in g] for g in refs[:150]]
    hyp_tok = [mteval.tokenize(h) for h in perturb(hyps)[:150]]
    gts = {i: g for i, g in enumerate(ref_tok)}
    res = {i: [h] for i, h in enumerate(hyp_tok)}
    assert coco.rouge_l(ref_tok, hyp_tok) == Rouge().compute_score(gts, res)[0]
    assert coco.cider_d(ref_tok, hyp_tok) == Cider().compute_score(gts, res)[0]


@needs_java
def test_ptb_tokenizer_as_pycocoevalcap() -> None:
    out = java.ptb_tokenize(["The Café costs £20-25.", "", "(Nice) place, isn't it?", "  "])
    assert out == ["the café costs # 20-25", "", "-lrb- nice -rrb- place is n't it", ""]


# ------------------------------------------------------------------ empty outputs


def test_empty_output_lines_are_scored_not_dropped(tmp_path: Path) -> None:
    refs_file = tmp_path / "refs.txt"
    refs_file.write_text("a cat sat\nthe cat sat\n\nhello there\n", encoding="utf-8")
    out_file = tmp_path / "out.txt"
    out_file.write_text("a cat sat\n\n", encoding="utf-8")  # second output is empty
    refs, hyps = load(refs_file, out_file)
    assert hyps == ["a cat sat", ""]
    result = score(refs, hyps, ["BLEU", "NIST"])
    stats = bleu.segment_stats(mteval.prepare_refs(refs), [mteval.words(h) for h in hyps])
    assert stats[:, 1].tolist() == [3, 2]  # the empty output still adds its closest ref length
    assert 0 < result["BLEU"] < 1


@needs_java
def test_all_empty_outputs_score_zero() -> None:
    refs = [["a cat sat", "the cat"], ["hello there"]]
    assert score(refs, ["", ""], ["BLEU", "NIST", "ROUGE_L", "CIDEr"]) == {
        "BLEU": 0.0, "NIST": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0}  # fmt: skip


# --------------------------------------------------------------- reading inputs


def test_reference_formats_agree(tmp_path: Path) -> None:
    csv_file = tmp_path / "refs.csv"
    csv_file.write_bytes(
        '\ufeffmr,ref\r\nname[A],A is Â£20.\r\nname[B],"B, here"\r\nname[A],A again\r\n'.encode("utf-8")
    )
    mrs, refs = read_refs(csv_file)
    assert mrs == ["name[A]", "name[B]"]  # grouped by first appearance
    assert refs == [["A is £20.", "A again"], ["B, here"]]  # the scorer's mojibake fix
    tsv_file = tmp_path / "refs.tsv"
    tsv_file.write_text("MR\treference\nname[A]\tx\nname[A]\ty\n", encoding="utf-8")
    assert read_refs(tsv_file) == (["name[A]"], [["x", "y"]])
    plain = tmp_path / "refs.txt"
    plain.write_text("A is £20.\nA again\n\nB, here\n\n", encoding="utf-8")
    assert read_refs(plain) == (None, [["A is £20.", "A again"], ["B, here"]])
    single = tmp_path / "single.txt"
    single.write_text("one\ntwo\n", encoding="utf-8")
    assert read_refs(single) == (None, [["one"], ["two"]])  # no blank line: one ref per line


def test_csv_outputs_are_matched_by_mr(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text('mr,output\nname[B],"b out"\nname[A],a out\n', encoding="utf-8")
    assert read_outputs(out, ["name[A]", "name[B]"]) == ["a out", "b out"]


@pytest.mark.parametrize(
    ("name", "content", "mrs", "message"),
    [
        ("out.txt", b"one\ntwo\nthree\n", ["a", "b"], "out.txt, line 3: 3 output lines for 2 MRs"),
        ("out.txt", b"", ["a"], "out.txt, line 1: the file is empty"),
        ("out.txt", b"ok\ncaf\xe9\n", None, "out.txt, line 2: not valid UTF-8"),
        ("out.csv", b"mr,output\na,x\nzzz,y\n", ["a"], "out.csv, line 3: MR 'zzz' is not in the references"),
        ("out.csv", b"mr,output\na,x\n", ["a", "b"], "no output for 1 of 2 MRs (first: 'b')"),
        (
            "out.csv",
            b"mr,output\na,x\na,y\n",
            ["a"],
            "out.csv, line 3: MR 'a' already has an output on line 2",
        ),
        ("out.csv", b"mr,output\na,x,extra\n", ["a"], "out.csv, line 2: expected 2 columns"),
        ("out.csv", b"meaning,stuff,more\na,b,c\n", ["a"], "cannot tell the MR column"),
    ],
)
def test_bad_outputs_raise_clear_errors(
    tmp_path: Path, name: str, content: bytes, mrs: list[str] | None, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(EvalInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_outputs(path, mrs)
    assert issubclass(EvalInputError, ValueError)


def test_bad_references_and_api_input(tmp_path: Path) -> None:
    refs = tmp_path / "refs.txt"
    refs.write_text("a\n\n\nb\n", encoding="utf-8")
    with pytest.raises(EvalInputError, match="refs.txt, line 3: blank line"):
        read_refs(refs)
    with pytest.raises(EvalInputError, match="1 outputs for 2 reference sets"):
        score([["a"], ["b"]], ["a"], ["BLEU"])
    with pytest.raises(EvalInputError, match="MR 1 has no reference"):
        score([["a"], []], ["a", "b"], ["BLEU"])
    with pytest.raises(ValueError, match="unknown metric 'BLUE'"):
        score([["a"]], ["a"], ["BLUE"])


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(java.shutil, "which", lambda name: None)
    with pytest.raises(JavaNotFoundError, match="apt-get install -y default-jre-headless"):
        score([["a b"]], ["a b"], ["METEOR"])
    assert set(score([["a b"]], ["a b"], ["BLEU", "NIST"])) == {"BLEU", "NIST"}


# ---------------------------------------------------------- bootstrap, signature


def test_paired_bootstrap(tgen: tuple[list[list[str]], list[str]]) -> None:
    refs, hyps = tgen
    same = paired_bootstrap(refs, hyps, hyps, n=200)
    assert same["delta"] == 0 and same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0
    start = time.perf_counter()
    worse = paired_bootstrap(refs, hyps, perturb(hyps), n=1000, seed=7)
    assert time.perf_counter() - start < 5
    assert worse["bleu_a"] == pytest.approx(GOLDEN_TGEN["BLEU"], abs=1e-9)
    assert worse["delta"] == pytest.approx(DERIVED_PERTURBED["BLEU"] - GOLDEN_TGEN["BLEU"], abs=1e-9)
    assert worse["ci_low"] < worse["delta"] < worse["ci_high"] < 0
    assert worse["p_value"] < 0.01
    assert paired_bootstrap(refs, hyps, perturb(hyps), n=1000, seed=7) == worse  # seeded


def test_signature_and_metric_names() -> None:
    assert signature() == (
        "e2e-official|bleu:13a-lc|nist:mteval-v13a-n5|meteor:1.5-en-norm|"
        "rouge_l:coco-beta1.2|cider:coco-d|version:0.1.0"
    )
    assert signature(["cider", "BLEU"]) == "e2e-official|bleu:13a-lc|cider:coco-d|version:0.1.0"
    assert normalize_metrics(["rouge-l", "Meteor", "nist"]) == ["NIST", "METEOR", "ROUGE_L"]
    assert normalize_metrics("cider,BLEU") == ["BLEU", "CIDEr"]
