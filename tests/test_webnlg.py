"""WebNLG 2017 reader and linearisation (prefix_tuning.webnlg).

Golden linearisations are what the original code (XiangLi1999/PrefixTuning, `LineByLineWebNLGTextDataset`)
builds from the repo's own `data/webnlg_challenge_2017/dev.json` (its entries 1, 6 and 872), i.e. from the
original's data by the original's loop, not from this reader. Counts are those of the release README.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from prefix_tuning import webnlg
from prefix_tuning.e2e import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PREFIX_TUNING_DATA") or REPO.parent / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (DATA / "webnlg2017" / webnlg.ARCHIVE).is_file() and not os.environ.get("CI"),
    reason=f"needs {DATA}/webnlg2017/{webnlg.ARCHIVE}",
)

DEV_GOLDEN = {  # index in dev.json -> (eid, category, source string of the original's training loop)
    0: ("Id1", "Airport", " | Aarhus : leaderName : Jacob_Bundsgaard"),
    5: ("Id6", "Airport", ' | Adolfo_Suárez_Madrid–Barajas_Airport : runwayName : "14L/32R"'),
    871: (
        "Id7",
        "University",
        (
            " | Visvesvaraya_Technological_University : city : Belgaum | Acharya_Institute_of_Technology : director"
            ' : "Dr. G. P. Prabhukumar" | Acharya_Institute_of_Technology : established : 2000 |'
            " Acharya_Institute_of_Technology : state : Karnataka | Acharya_Institute_of_Technology : country :"
            ' "India" | Acharya_Institute_of_Technology : campus : "In Soldevanahalli, Acharya Dr. Sarvapalli'
            ' Radhakrishnan Road, Hessarghatta Main Road, Bangalore – 560090." | Acharya_Institute_of_Technology :'
            " affiliation : Visvesvaraya_Technological_University"
        ),
    ),
}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[webnlg.Entry]]:
    return {s: webnlg.load_webnlg(s, data_dir=DATA) for s in webnlg.SPLITS}


@needs_data
def test_counts_match_the_release(splits: dict[str, list[webnlg.Entry]]) -> None:
    counts = {s: (len(es), sum(len(e.lexs) for e in es)) for s, es in splits.items()}
    assert counts == {"train": (6940, 18102), "dev": (872, 2268), "test": (1862, 4928), "test_unseen": (891, 2433)}
    test = splits["test"]
    assert (sum(e.seen for e in test), sum(len(e.refs) for e in test if e.seen)) == (971, 2495)
    assert {e.category for e in test if not e.seen} == set(webnlg.UNSEEN_CATEGORIES)
    assert {e.category for e in splits["train"]} == set(webnlg.SEEN_CATEGORIES)
    assert all(e.seen for e in splits["train"] + splits["dev"])
    # the original trains on "good" lexicalisations only; decodes one output per unique source
    assert [len(webnlg.training_examples(splits[s])) for s in ("train", "dev")] == [18025, 2258]
    assert [len(webnlg.decode_groups(splits[s])) for s in ("dev", "test")] == [871, 1862]


@needs_data
def test_unseen_file_is_the_unseen_part_of_test_renumbered(splits: dict[str, list[webnlg.Entry]]) -> None:
    unseen = [e for e in splits["test"] if not e.seen]
    assert [(e.triples, e.lexs) for e in unseen] == [(e.triples, e.lexs) for e in splits["test_unseen"]]
    assert [e.eid for e in splits["test_unseen"][:2]] == ["Id1", "Id2"] != [e.eid for e in unseen[:2]]
    assert [e.eid for e in splits["test"][:3]] == ["Id1", "Id2", "Id3"]


@needs_data
def test_linearisation_golden(splits: dict[str, list[webnlg.Entry]]) -> None:
    dev = splits["dev"]
    for i, (eid, category, table) in DEV_GOLDEN.items():
        assert (dev[i].eid, dev[i].category, dev[i].table) == (eid, category, table)
    assert dev[0].lexs[0] == webnlg.Lexicalisation("The leader of Aarhus is Jacob Bundsgaard.", "good", "Id1")
    assert dev[0].source.endswith("webnlg2017/dev/1triples/1triple_allSolutions_Airport_dev_challenge.xml:3")
    assert splits["test"][0].table == " | Abilene_Regional_Airport : cityServed : Abilene,_Texas"
    ex = webnlg.training_examples(dev)[0]
    assert (ex.table, ex.ref) == (DEV_GOLDEN[0][2], "The leader of Aarhus is Jacob Bundsgaard.")


def test_linearize_triples_forms() -> None:
    triples = [webnlg.Triple("A", "p", "B"), ("B", "q", '"C, D"')]
    assert webnlg.linearize_triples(triples) == ' | A : p : B | B : q : "C, D"'
    assert webnlg.linearize_triples([]) == ""


def _xml(entries: str) -> str:
    return f"<?xml version='1.0' encoding='UTF-8'?>\n<benchmark>\n<entries>\n{entries}</entries>\n</benchmark>\n"


GOOD = (
    '<entry category="Food" eid="Id1" size="2">\n<modifiedtripleset>\n<mtriple>A | p | B</mtriple>\n'
    '<mtriple>B | q | C</mtriple>\n</modifiedtripleset>\n<lex comment="good" lid="Id1">A p B; B q C.</lex>\n'
    '<lex comment="toFix" lid="Id2">A B C</lex>\n</entry>\n'
)


def test_parse_and_views_on_a_small_document() -> None:
    entries = webnlg.parse_benchmark(_xml(GOOD + GOOD.replace("Id1", "Id2", 1)), "x.xml")
    assert [e.source for e in entries] == ["x.xml:4", "x.xml:12"]
    assert entries[0].table == " | A : p : B | B : q : C" and entries[0].refs == ("A p B; B q C.", "A B C")
    assert [x.ref for x in webnlg.training_examples(entries)] == ["A p B; B q C."] * 2
    assert len(webnlg.training_examples(entries, good_only=False)) == 4
    groups = webnlg.decode_groups(entries)  # the two entries share one source: one output, refs pooled
    assert len(groups) == 1 and len(groups[0].refs) == 4
    assert webnlg.outputs_per_entry(entries, groups, ["out"]) == ["out", "out"]
    with pytest.raises(ValueError, match="2 outputs for 1 groups"):
        webnlg.outputs_per_entry(entries, groups, ["a", "b"])


@pytest.mark.parametrize(("text", "message"), [
    (_xml(GOOD).replace("</mtriple>", "</mtripel>", 1), r"x\.xml:6: malformed XML \(mismatched tag, column 21"),
    (_xml(GOOD.replace(' category="Food"', "")), r"x\.xml:4: <entry> without attribute category"),
    (_xml(GOOD.replace(' size="2"', ' size="3"')), r"x\.xml:4: entry Id1: size='3' but 2 triples"),
    (_xml(GOOD.replace("A | p | B", "A | p")), r"x\.xml:4: entry Id1: bad triple 'A \| p'"),
    (_xml(GOOD.replace("A p B; B q C.", "  ")), r"x\.xml:4: entry Id1: empty <lex>"),
    (_xml(GOOD.replace(' comment="good"', "")), r"x\.xml:4: entry Id1: <lex> without attribute comment"),
    (_xml(GOOD.replace('<lex comment="good" lid="Id1">A p B; B q C.</lex>\n', "")
          .replace('<lex comment="toFix" lid="Id2">A B C</lex>\n', "")), r"x\.xml:4: entry Id1: no <lex>"),
    (_xml(GOOD.replace("<mtriple>A | p | B</mtriple>\n<mtriple>B | q | C</mtriple>\n", "")),
     r"x\.xml:4: entry Id1: 1 <modifiedtripleset> and no <mtriple>"),
    (_xml(""), r"x\.xml:1: no <entry>"),
])  # fmt: skip
def test_bad_input_names_file_line_and_entry(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        webnlg.parse_benchmark(text, "x.xml")


def test_archive_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no WebNLG 2017 data; expected .*webnlg2017-challenge\.tar\.gz"):
        webnlg.load_webnlg("dev", data_dir=tmp_path)
    (tmp_path / "webnlg2017").mkdir()
    bad = tmp_path / "webnlg2017" / webnlg.ARCHIVE
    bad.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="unreadable archive"):
        webnlg.load_webnlg("dev", data_dir=tmp_path)
    with tarfile.open(bad, "w:gz") as tar:
        payload = _xml(GOOD.replace("B | q | C", "B | q")).encode()
        info = tarfile.TarInfo("webnlg2017/dev/2triples/2triples_Food_dev_challenge.xml")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(
        DataError,
        match=r"webnlg2017-challenge\.tar\.gz:webnlg2017/dev/2triples/2triples_Food_dev"
        r"_challenge\.xml:4: entry Id1: bad triple",
    ):
        webnlg.load_webnlg("dev", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"no member test/testdata_with_lex\.xml"):
        webnlg.load_webnlg("test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        webnlg.load_webnlg("valid", data_dir=tmp_path)
