"""Tests of prefix_tuning.data / prefix_tuning.e2e: real E2E files, the original's format, bad input (data location:
test_datadir.py)."""

from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import pytest
import torch

from prefix_tuning import e2e
from prefix_tuning.data import (
    DataError,
    E2EDataset,
    collate,
    encode_example,
    encode_prompt,
    group_by_mr,
    linearize_mr,
    load_e2e,
    low_data_split,
    resolve_data_dir,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREFIX_TUNING_DATA") or REPO.parent / "shared" / "data")
ZIP = SHARED / "e2e" / "e2e-dataset.zip"
pytestmark = pytest.mark.usefixtures("no_network")
needs_data = pytest.mark.skipif(not ZIP.is_file(), reason=f"E2E data not found at {SHARED}")


@pytest.fixture(scope="module")
def official():
    if not ZIP.is_file():
        pytest.skip(f"E2E data not found at {SHARED}")
    return {s: load_e2e(s, data_dir=SHARED) for s in ("train", "dev", "test")}


@pytest.fixture(scope="module")
def gpt2_tok():
    from transformers import GPT2TokenizerFast

    d = SHARED / "gpt2-tokenizer"
    if not (d / "vocab.json").is_file():
        pytest.skip(f"GPT-2 tokenizer files not found at {d}")
    return GPT2TokenizerFast.from_pretrained(str(d))


# ------------------------------------------------------------------------------------------- real files


def test_official_counts(official):
    counts = {s: (len(exs), len(group_by_mr(exs))) for s, exs in official.items()}
    assert counts == {"train": (42061, 4862), "dev": (4672, 547), "test": (4693, 630)}
    assert official["test"][0].source == "e2e-dataset.zip:e2e-dataset/testset_w_refs.csv:2"
    assert all(e.ref and e.table and e.ref == e.ref.strip() for exs in official.values() for e in exs)


def test_multiline_record_line_numbers(official):
    # trainset.csv (CRLF) has a ref with a line break inside quotes at physical lines 15766-15767.
    by_source = {e.source.rsplit(":", 1)[1]: e for e in official["train"]}
    e = by_source["15766"]
    assert "\n" not in e.ref and "The Bakers. This coffee shop" in e.ref
    assert "15767" not in by_source and "15768" in by_source
    assert official["train"][-1].source.endswith(":42064")  # header + 42061 rows + 2 continuation lines


@needs_data
def test_cleaned_counts():
    counts = {s: len(load_e2e(s, variant="cleaned", data_dir=SHARED)) for s in ("train", "dev", "test")}
    assert counts == {"train": 33525, "dev": 4299, "test": 4693}


@needs_data
@pytest.mark.parametrize("layout", ["e2e/e2e-dataset", "e2e", "."])
def test_folder_of_csvs_equals_zip(tmp_path, official, layout):
    with zipfile.ZipFile(ZIP) as z:
        for name in z.namelist():
            if name.endswith(".csv"):
                target = tmp_path / layout / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    assert resolve_data_dir(tmp_path, download=False) == tmp_path
    for split in ("dev", "test"):
        got = load_e2e(split, data_dir=tmp_path)
        assert [(e.mr, e.table, e.ref) for e in got] == [(e.mr, e.table, e.ref) for e in official[split]]
        assert got[0].source == f"{tmp_path / layout / e2e._OFFICIAL_FILES[split]}:2".replace("/./", "/")


# --------------------------------------------------------------------------------------- linearisation

# Golden tables from the original code: the QUICK_CHECK prompts of XiangLi1999/PrefixTuning
# gpt2/run_generation.py (e.g. "name : The Cricketers | Type : restaurant | food : Chinese | price : high |
# customer rating : 1 out of 5 | area : city centre | family friendly : no {bos}").
QUICK_CHECK = {
    "name[Blue Spice], eatType[coffee shop], area[city centre]": "name : Blue Spice | Type : coffee shop | area : city centre",
    "name[Blue Spice], eatType[pub], food[Chinese], area[city centre], familyFriendly[no]": "name : Blue Spice | Type : pub | food : Chinese | area : city centre | family friendly : no",
    "name[The Cricketers], eatType[coffee shop], customer rating[1 out of 5], familyFriendly[yes], near[Avalon]": "name : The Cricketers | Type : coffee shop | customer rating : 1 out of 5 | family friendly : yes | "
    "near : Avalon",
    "name[The Cricketers], eatType[restaurant], food[Chinese], priceRange[high], customer rating[1 out of 5], "
    "area[city centre], familyFriendly[no]": "name : The Cricketers | Type : restaurant | food : Chinese | price : high | customer rating : 1 out of 5 "
    "| area : city centre | family friendly : no",
    "name[The Mill], eatType[restaurant], food[English], priceRange[moderate], area[riverside], "
    "familyFriendly[yes], near[Raja Indian Cuisine]": "name : The Mill | Type : restaurant | food : English | price : moderate | area : riverside | "
    "family friendly : yes | near : Raja Indian Cuisine",
}

# The first 15 tables of the original's e2e_data/src1_test.txt (one line per testset_w_refs.csv row, in order;
# a copy of that file is in the public repo Ding7654321/Continuous_Prompt, e2e_data/src1_test.txt).
SRC1_TEST_HEAD = (
    ["name : Blue Spice | Type : coffee shop | area : city centre"] * 2
    + ["name : Blue Spice | Type : coffee shop | area : riverside"] * 2
    + ["name : Blue Spice | Type : coffee shop | customer rating : 5 out of 5 | near : Crowne Plaza Hotel"] * 3
    + ["name : Blue Spice | Type : coffee shop | customer rating : average | near : Burger King"] * 7
    + ["name : Blue Spice | Type : coffee shop | customer rating : average | near : Crowne Plaza Hotel"]
)


@pytest.mark.parametrize("mr,table", QUICK_CHECK.items())
def test_linearize_golden(mr, table):
    assert linearize_mr(mr) == table


def test_linearize_matches_original_test_file(official):
    assert [e.table for e in official["test"][:15]] == SRC1_TEST_HEAD


def test_linearize_keeps_order_and_unknown_slots():
    assert linearize_mr("near[Avalon], name[X]") == "near : Avalon | name : X"
    assert linearize_mr(" name[The Eagle] ,  rating[ 5 ] ") == "name : The Eagle | rating : 5"


# Lines of the original's e2e_data/src1_test.txt (copy in Ding7654321/Continuous_Prompt), references as
# written there (the file adds one trailing space after most of them, which is not reproduced).
ORIGINAL_TOKENIZED = {
    # testset_w_refs.csv row (1-based) -> reference in src1_test.txt
    14: "Near Burger King is the Blue Spice coffee shop . It has average customer ratings .",
    33: "The Blue Spice is a pub that also serves Chinese food , it 's located in the city center . The pub is n't "
    "very family friendly , but the proximity to the Rainbow Vegetarian Café makes up for it .",
    54: "Kid friendly , .Blue Spice Chinese pub is in riverside , near Rainbow Vegetarian Café .",
    91: "Blue Spice is a pub serving English food . You 'll find it alongside the river near to the Rainbow Vegetarian "
    "Café . It is n't a family - friendly establishment .",
    122: "An English serving child friendly pub in Riverside is Blue Spice near Rainbow Vegetarian Café",
}
ORIGINAL_TOKENIZED_TABLE = (
    "name : The Cricketers | Type : restaurant | food : Chinese | price : £ 20 - 25 | "
    "customer rating : high | area : city centre | family friendly : no | near : All Bar One"
)


def test_tokenized_matches_original_files():
    pytest.importorskip("spacy")
    if not ZIP.is_file():
        pytest.skip(f"E2E data not found at {SHARED}")
    test = load_e2e("test", data_dir=SHARED, ref_style="tokenized")
    for row, ref in ORIGINAL_TOKENIZED.items():
        assert test[row - 1].ref == ref
    assert test[1160].table == ORIGINAL_TOKENIZED_TABLE  # row 1161, the first with priceRange[£20-25]
    assert [e.table for e in test[:15]] == SRC1_TEST_HEAD
    assert test[0].mr == "name[Blue Spice], eatType[coffee shop], area[city centre]"  # the MR stays raw
    assert (
        linearize_mr("priceRange[more than £30], near[Café Adriatic]", tokenized=True)
        == "price : more than £ 30 | near : Café Adriatic"
    )


def test_tokenized_without_spacy_says_so(tmp_path, monkeypatch):
    import sys

    from prefix_tuning import e2e_tokenize

    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    e2e_tokenize._tokenizer.cache_clear()
    root = write_split(tmp_path, b"")
    try:
        with pytest.raises(ImportError, match="pip install spacy"):
            load_e2e("train", data_dir=root, ref_style="tokenized")
    finally:
        e2e_tokenize._tokenizer.cache_clear()
    with pytest.raises(ValueError, match="ref_style"):
        load_e2e("train", data_dir=root, ref_style="nltk")


@pytest.mark.parametrize(
    "mr", ["name[The Eagle", "name The Eagle, eatType[pub]", "", "name[X], ", "[X]", "name[]", "name[a[b]]"]
)
def test_linearize_rejects(mr):
    with pytest.raises(DataError, match=r"^here:1: .*expected 'slot\[value\]'"):
        linearize_mr(mr, where="here:1")


# ------------------------------------------------------------------------------------------ encoding

# Golden ids from the official GPT-2 vocab/merges. The original (transformers 3.2 slow GPT2Tokenizer on
# ' name : The Eagle | Type : coffee shop <|endoftext|> The Eagle is a coffee shop . <|endoftext|>') produces
# exactly these input ids, and labels = ids with the first 11 (table + lone space 220 + separator 50256) = -100.
TABLE = "name : The Eagle | Type : coffee shop"
REF = "The Eagle is a coffee shop ."
GOLD_IDS = [
    1438,
    1058,
    383,
    18456,
    930,
    5994,
    1058,
    6891,
    6128,
    220,
    50256,
    383,
    18456,
    318,
    257,
    6891,
    6128,
    764,
    220,
    50256,
]


def test_encode_example_golden(gpt2_tok):
    ids, labels = encode_example(gpt2_tok, TABLE, REF)
    assert ids == GOLD_IDS
    assert labels == [-100] * 11 + GOLD_IDS[11:]
    assert encode_prompt(gpt2_tok, TABLE) == GOLD_IDS[:11]
    # the original's whole-string encoding gives the same ids with a modern fast tokenizer too
    assert gpt2_tok(f" {TABLE} {gpt2_tok.eos_token} {REF} {gpt2_tok.eos_token}")["input_ids"] == GOLD_IDS


def test_encode_truncation_keeps_final_eos(gpt2_tok):
    ids, labels = encode_example(gpt2_tok, TABLE, REF, max_length=14)
    assert ids == GOLD_IDS[:13] + [50256] and labels == [-100] * 11 + [383, 18456, 50256]
    assert encode_example(gpt2_tok, TABLE, REF, max_length=20) == encode_example(gpt2_tok, TABLE, REF)
    with pytest.raises(DataError, match="max_length=11"):
        encode_example(gpt2_tok, TABLE, REF, max_length=11)


class CharTokenizer:
    """A tiny stand-in for a HF tokenizer that adds a BOS (like Llama's): ids are code points + 10."""

    eos_token, eos_token_id, bos_token_id = "</s>", 2, 1

    def __call__(self, text, add_special_tokens=True):
        one = lambda t: ([self.bos_token_id] if add_special_tokens else []) + [ord(c) + 10 for c in t]
        return {"input_ids": [one(t) for t in text] if isinstance(text, list) else one(text)}


def test_encode_generic_tokenizer_with_bos():
    tok = CharTokenizer()
    ids, labels = encode_example(tok, "a : b", "Hi")
    sp, a, b, c, h, i = (ord(x) + 10 for x in " ab:Hi")
    assert ids == [1, sp, a, sp, c, sp, b, sp, 2, sp, h, i, sp, 2]
    assert labels == [-100] * 9 + [sp, h, i, sp, 2]
    assert encode_prompt(tok, "a : b") == ids[:9]


def test_dataset_and_collate(gpt2_tok, official):
    exs = official["dev"][:40]
    ds = E2EDataset(exs, gpt2_tok, max_length=64, chunk=16)
    assert len(ds) == 40
    assert [ds[i] for i in range(40)] == [encode_example(gpt2_tok, e.table, e.ref, max_length=64) for e in exs]
    batch = collate([ds[0], ds[1], ds[2]], pad_id=gpt2_tok.eos_token_id)
    lengths = [len(ds[i][0]) for i in range(3)]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    assert batch["input_ids"].dtype == torch.long
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert batch["labels"][row, n:].eq(-100).all() and batch["input_ids"][row, n:].eq(50256).all()
        assert batch["labels"][row, :n].tolist() == ds[row][1]


# ------------------------------------------------------------------------------------------- low data


def test_low_data_reproducible_and_disjoint(official):
    train = official["train"]
    for size in (50, 100, 200, 500):
        tr, dev = low_data_split(train, size, seed=3)
        assert len(tr) == size and len(dev) == round(0.3 * size)
        assert not {e.source for e in tr} & {e.source for e in dev}
        assert low_data_split(train, size, 3) == (tr, dev)
    assert low_data_split(train, 50, 0)[0] != low_data_split(train, 50, 1)[0]
    # Golden: pinned so that a change of sampling algorithm (or of Python's random()) is noticed.
    assert [int(e.source.rsplit(":", 1)[1]) for e in low_data_split(train, 50, 0)[0][:5]] == GOLD_LOWDATA_LINES
    with pytest.raises(ValueError):
        low_data_split(train[:10], 10, 0)


GOLD_LOWDATA_LINES = [304, 2276, 4053, 5028, 5102]  # seed 0, size 50 (computed with this code)


# ------------------------------------------------------------------------------------------ bad input

GOOD = '"name[The Eagle], eatType[pub]","The Eagle is a pub.\r\nIt is nice."\r\n'  # 2 physical lines


def write_split(root: Path, body: bytes, header: bytes = b"mr,ref\r\n", as_zip: bool = False) -> Path:
    content = header + GOOD.encode() + body
    if as_zip:
        (root / "e2e").mkdir(parents=True)
        with zipfile.ZipFile(root / "e2e" / "e2e-dataset.zip", "w") as z:
            z.writestr("e2e-dataset/trainset.csv", content)
    else:
        (root / "e2e").mkdir(parents=True)
        (root / "e2e" / "trainset.csv").write_bytes(content)
    return root


BAD_ROWS = {
    "fields": (b'"name[A]","ref","extra"\r\n', r"3 fields; expected 2"),
    "short": (b'"name[A]"\r\n', r"1 fields; expected 2"),
    "mr-open": (b'"name[The Eagle","A ref."\r\n', r"unparseable MR 'name\[The Eagle'.*expected 'slot\[value\]'"),
    "mr-nobrackets": (b'"name The Eagle","A ref."\r\n', r"unparseable MR.*expected 'slot\[value\]'"),
    "empty-ref": (b'"name[A]","  "\r\n', r"empty reference; expected"),
    "encoding": ('"name[Café A]","A café."\r\n'.encode("latin-1"), r"not valid UTF-8; expected"),
    "csv": (b'"name[A]"x,"ref"\r\n', r"malformed CSV record.*expected"),
}


@pytest.mark.parametrize("as_zip", [False, True])
@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_message(tmp_path, case, as_zip):
    body, pattern = BAD_ROWS[case]
    root = write_split(tmp_path, body + b'"name[B]","Fine."\r\n', as_zip=as_zip)
    name = "e2e-dataset.zip:e2e-dataset/trainset.csv" if as_zip else str(root / "e2e" / "trainset.csv")
    with pytest.raises(DataError) as err:
        load_e2e("train", data_dir=root)
    assert str(err.value).startswith(f"{name}:4: ")  # header 1, good record 2-3, bad record at 4
    assert __import__("re").search(pattern, str(err.value)), str(err.value)
    # skip mode: the bad row is left out, reported, and the rows after it are read
    with pytest.warns(UserWarning, match=r"skipped 1 bad row"):
        exs = load_e2e("train", data_dir=root, on_error="skip")
    assert [e.mr for e in exs] == ["name[The Eagle], eatType[pub]", "name[B]"]
    assert exs[0].ref == "The Eagle is a pub. It is nice." and exs[1].source == f"{name}:5"
    assert len(exs.skipped) == 1 and exs.skipped[0].startswith(f"{name}:4: ")


def test_missing_column(tmp_path):
    root = write_split(tmp_path, b"", header=b"mr,text\r\n")
    with pytest.raises(DataError, match=r"trainset.csv:1: header .* lacks column 'ref'; expected a header"):
        load_e2e("train", data_dir=root, on_error="skip")  # file-level: raises even in skip mode


def test_bad_header_encoding_and_missing_files(tmp_path):
    root = write_split(tmp_path / "a", b"", header="mr,réf\r\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"trainset.csv:1: not valid UTF-8"):
        load_e2e("train", data_dir=root)
    with pytest.raises(DataError, match=r"devset.csv: file missing"):
        load_e2e("dev", data_dir=root)
    with pytest.raises(DataError, match=r"e2e-cleaned: .* not found"):
        load_e2e("dev", variant="cleaned", data_dir=root)
    with pytest.raises(ValueError):
        load_e2e("validation", data_dir=root)


def test_cleaned_gz_and_skip(tmp_path):
    d = tmp_path / "e2e-cleaned"
    d.mkdir()
    rows = b'mr,ref,fixed,orig_mr\n"name[A]",Fine.,0,"name[A]"\n"name[B",Bad.,0,"name[B"\n'
    (d / "train-fixed.no-ol.csv.gz").write_bytes(gzip.compress(rows))
    with pytest.raises(DataError, match=r"train-fixed.no-ol.csv.gz:3: unparseable MR"):
        load_e2e("train", variant="cleaned", data_dir=tmp_path)
    with pytest.warns(UserWarning):
        assert [e.ref for e in load_e2e("train", variant="cleaned", data_dir=tmp_path, on_error="skip")] == ["Fine."]
