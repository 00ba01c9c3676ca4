"""E2E NLG data: reading the official release (zip or CSV folder) and the cleaned variant, MR linearisation,
grouping references by MR (where the data is, and its download: `datadir`).

Everything here is re-exported by `prefix_tuning.data`; import it from there.

Format of the original code (XiangLi1999/PrefixTuning). Its E2E files (`e2e_data/src1_{train,valid,test}.txt`,
read by `gpt2/run_generation.py::read_e2e_files` and by `LineByLineData2TextTextDataset` in
`transformers/src/transformers/data/datasets/language_modeling.py`) hold one `table||reference` line per CSV
row, in CSV order. The table writes the MR `name[Blue Spice], eatType[coffee shop], area[city centre]` as
`name : Blue Spice | Type : coffee shop | area : city centre` (the QUICK_CHECK prompts of
`gpt2/run_generation.py` list such tables): slots in MR order, `slot : value`, joined by ` | `, with
eatType -> `Type`, priceRange -> `price`, familyFriendly -> `family friendly` and every other slot name
(name, food, customer rating, area, near) unchanged.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from .datadir import (
    E2E_SHA256,
    E2E_URL,
    ENV_VAR,
    ZIP_NAME,
    DataError,
    download_e2e,
    official_source,
    options_text,
    pick_dir,
    resolve_data_dir,
)
from .e2e_tokenize import tokenize_like_original

log = logging.getLogger(__name__)


SPLITS = ("train", "dev", "test")
# The reader's options, defined once: `load_e2e` checks them and the config's field types are these Literals.
Variant = Literal["official", "cleaned"]
OnError = Literal["raise", "skip"]
RefStyle = Literal["raw", "tokenized"]
VARIANTS: tuple[str, ...] = get_args(Variant)
_OFFICIAL_FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
_CLEANED_FILES = {"train": "train-fixed.no-ol.csv", "dev": "devel-fixed.no-ol.csv", "test": "test-fixed.csv"}

# MR slot name -> table key, as in the original's data files (see the module docstring).
SLOT_NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}


@dataclass(frozen=True)
class Example:
    mr: str
    """The raw MR, e.g. `name[The Eagle], eatType[coffee shop]`."""
    table: str
    """The MR linearised as the original code does: `name : The Eagle | Type : coffee shop`."""
    ref: str
    """The reference text (see `load_e2e` for `ref_style`)."""
    source: str = ""
    """`file:line` where the row starts, for messages."""


@dataclass(frozen=True)
class MRGroup:
    mr: str
    table: str
    refs: tuple[str, ...]


class ExampleList(list):
    """A `list[Example]` that also carries `skipped`: one `file:line: reason` string per row left out
    by `load_e2e(..., on_error="skip")` (empty when nothing was skipped or with on_error="raise")."""

    skipped: list[str]

    def __init__(self, items=(), skipped: Sequence[str] = ()):
        super().__init__(items)
        self.skipped = list(skipped)


# ---------------------------------------------------------------------------------------------- MRs


def _next_slot(mr: str, pos: int) -> tuple[str, str, int, str] | None:
    r"""(name, value, end, separator) of the `slot[value]` item at `pos`, or None. Scans with str.find: the
    regex `\s*([^\[\],]*?)\s*\[` it replaces backtracked cubically on a run of spaces (4,000 spaces: 63 s).
    name: the text before `[` (no `[`, `]` or `,`), stripped; value: up to the first `]` (no `[`);
    separator: `,`, or "" at the end of the MR; whitespace around items is ignored."""
    left = mr.find("[", pos)
    right = mr.find("]", left + 1) if left >= 0 else -1
    if right < 0 or any(c in mr[pos:left] for c in "],") or "[" in mr[left + 1 : right]:
        return None
    end = right + 1
    while end < len(mr) and mr[end].isspace():
        end += 1
    if end < len(mr) and mr[end] != ",":
        return None
    return mr[pos:left].strip(), mr[left + 1 : right], min(end + 1, len(mr)), mr[end : end + 1]


def _short(text: str, limit: int = 200) -> str:
    """repr of a text for a message, cut in the middle when long (a hostile MR can be megabytes)."""
    return repr(text) if len(text) <= limit else f"{text[: limit // 2]!r}...{text[-limit // 2 :]!r}"


def parse_mr(mr: str, *, where: str = "") -> list[tuple[str, str]]:
    """`name[The Eagle], eatType[pub]` -> [("name", "The Eagle"), ("eatType", "pub")] (MR order kept)."""
    at = f"{where}: " if where else ""
    expected = "expected 'slot[value]' items separated by commas, e.g. 'name[The Eagle], eatType[pub]'"
    if not mr.strip():
        raise DataError(f"{at}empty MR; {expected}")
    slots, pos, last = [], 0, len(mr.rstrip())
    while pos < len(mr):
        m = _next_slot(mr, pos)
        if m is None or not m[0] or not m[1].strip() or (m[3] == "," and m[2] >= last):
            rest = _short(mr[pos:].strip())
            what = (
                f"cannot parse {rest}"
                if m is None
                else f"slot without a name at {rest}"
                if not m[0]
                else f"empty value in {rest}"
                if not m[1].strip()
                else "trailing comma"
            )
            raise DataError(f"{at}unparseable MR {_short(mr)} ({what}); {expected}")
        slots.append((m[0], m[1].strip()))
        pos = m[2]
    return slots


def linearize_mr(mr: str, *, where: str = "", tokenized: bool = False) -> str:
    """The original's table for an MR: `name[Blue Spice], eatType[coffee shop], priceRange[high],
    familyFriendly[no]` -> `name : Blue Spice | Type : coffee shop | price : high | family friendly : no`
    (format of XiangLi1999/PrefixTuning's `e2e_data/src1_*.txt`, see `gpt2/run_generation.py`).
    tokenized: also tokenise the values as the original's files do (`priceRange[£20-25]` -> `price : £ 20 - 25`;
    needs spaCy, see `prefix_tuning.e2e_tokenize`). Raises DataError (prefixed with `where`) on a bad MR."""
    slots = parse_mr(mr, where=where)
    values = [v for _, v in slots]
    if tokenized:
        values = tokenize_like_original(values)
    return " | ".join(f"{SLOT_NAMES.get(k, k)} : {v}" for (k, _), v in zip(slots, values))


def group_by_mr(examples: Sequence[Example]) -> list[MRGroup]:
    """Unique MRs in order of first appearance, each with all its references (in file order). This is the
    grouping the original uses for decoding (one output per unique table) and for the reference file."""
    order: dict[str, tuple[str, list[str]]] = {}
    for e in examples:
        order.setdefault(e.mr, (e.table, []))[1].append(e.ref)
    return [MRGroup(mr, table, tuple(refs)) for mr, (table, refs) in order.items()]


# --------------------------------------------------------------------------------------- CSV reading

# What zipfile/gzip raise on a damaged archive (found by tests/test_hostile.py): BadZipFile, and from a damaged
# member zlib.error, NotImplementedError (an unknown method or flag), OSError (a bad offset), EOFError, ...
_BAD_ARCHIVE = (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError, EOFError, ValueError)


def _read_official(d: Path, split: str) -> tuple[str, bytes]:
    src = official_source(d)
    fname = _OFFICIAL_FILES[split]
    if src is None:
        raise DataError(
            f"{d}: no E2E data found; expected {d / 'e2e' / ZIP_NAME} or a folder holding {fname}. " + options_text(d)
        )
    if src.is_file():
        try:
            with zipfile.ZipFile(src) as z:
                names = [n for n in z.namelist() if n == fname or n.endswith("/" + fname)]
                if not names:
                    raise DataError(
                        f"{src.name}: no member {fname}; expected the official release (e2e-dataset/{fname})"
                    )
                member = min(names, key=len)
                return f"{src.name}:{member}", z.read(member)
        except DataError:
            raise
        except _BAD_ARCHIVE as err:
            raise DataError(
                f"{src}:1: not a readable zip ({type(err).__name__}: {err}); expected the official {ZIP_NAME}"
            ) from err
    f = src / fname
    if not f.is_file():
        raise DataError(
            f"{f}: file missing; expected {fname} beside {', '.join(sorted(p.name for p in src.glob('*.csv')))}"
        )
    return str(f), f.read_bytes()


def _read_cleaned(d: Path, split: str) -> tuple[str, bytes]:
    fname = _CLEANED_FILES[split]
    for folder in (d / "e2e-cleaned", d):
        for f in (folder / fname, folder / (fname + ".gz")):
            if f.is_file():
                raw = f.read_bytes()
                if f.suffix == ".gz":
                    try:
                        raw = gzip.decompress(raw)
                    except _BAD_ARCHIVE as err:
                        raise DataError(f"{f}:1: not a readable gzip file ({err}); expected gzipped CSV") from err
                return str(f), raw
    raise DataError(
        f"{d / 'e2e-cleaned'}: {fname}(.gz) not found; expected the cleaned E2E files "
        f"(tuetschek/e2e-cleaning: {', '.join(_CLEANED_FILES.values())}) in <data dir>/e2e-cleaned/"
    )


def _clean_ref(ref: str) -> str:
    """The CSV reference with surrounding whitespace stripped and line breaks (two official train refs hold
    one, with the indentation after it) turned into one space; nothing else changes."""
    # (split, not re.sub(r"[ \t]*[\r\n]+[ \t]*", " ", ref): that rescans a run of spaces from each of its
    # positions, quadratic; 4,000 spaces took 0.4 s)
    return " ".join(part.strip(" \t") for part in re.split(r"[\r\n]+", ref)).strip()


def _parse_csv(name: str, raw: bytes, on_error: str) -> tuple[list[Example], list[str]]:
    text = raw.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    skipped: list[str] = []

    def bad(line: int, msg: str) -> None:
        if on_error == "raise":
            raise DataError(f"{name}:{line}: {msg}")
        skipped.append(f"{name}:{line}: {msg}")

    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{name}:1: empty file; expected a CSV header with columns 'mr' and 'ref'") from None
    except csv.Error as err:
        raise DataError(f"{name}:1: malformed CSV header ({err}); expected columns 'mr' and 'ref'") from None
    if _has_bad_bytes(header):
        raise DataError(f"{name}:1: not valid UTF-8; expected a UTF-8 encoded CSV")
    cols = [c.strip().lower() for c in header]
    missing = [c for c in ("mr", "ref") if c not in cols]
    if missing:
        raise DataError(
            f"{name}:1: header {header!r} lacks column {' and '.join(repr(c) for c in missing)}; "
            "expected a header with columns 'mr' and 'ref'"
        )
    i_mr, i_ref = cols.index("mr"), cols.index("ref")
    out: list[Example] = []
    end = reader.line_num
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            bad(start, f"malformed CSV record ({err}); expected {len(header)} comma-separated, quoted fields")
            end = reader.line_num  # the reader goes on with the next line
            continue
        end = reader.line_num
        if not row:
            continue  # a blank line
        where = f"{name}:{start}"
        if _has_bad_bytes(row):
            bad(start, "not valid UTF-8; expected a UTF-8 encoded CSV")
            continue
        if len(row) != len(header):
            bad(start, f"{len(row)} fields; expected {len(header)} ({', '.join(header)})")
            continue
        ref = _clean_ref(row[i_ref])
        if not ref:
            bad(start, "empty reference; expected the text of the reference in column 'ref'")
            continue
        try:
            table = linearize_mr(row[i_mr], where=where)
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(str(err))
            continue
        out.append(Example(mr=row[i_mr].strip(), table=table, ref=ref, source=where))
    return out, skipped


def _tokenize_examples(examples: list[Example]) -> list[Example]:
    refs = tokenize_like_original(e.ref for e in examples)
    slots = {e.mr: parse_mr(e.mr) for e in examples}  # all parsed before, cannot fail
    values = sorted({v for s in slots.values() for _, v in s})
    tok = dict(zip(values, tokenize_like_original(values)))
    tables = {mr: " | ".join(f"{SLOT_NAMES.get(k, k)} : {tok[v]}" for k, v in s) for mr, s in slots.items()}
    return [replace(e, table=tables[e.mr], ref=r) for e, r in zip(examples, refs)]


def _has_bad_bytes(fields: Sequence[str]) -> bool:
    return any(re.search("[\udc80-\udcff]", f) for f in fields)


def load_e2e(
    split: str, *, variant: str = "official", data_dir=None, on_error: str = "raise", ref_style: str = "raw"
) -> ExampleList:
    """Examples of one E2E split, one per CSV row, in file order.

    split: train / dev / test (test = `testset_w_refs.csv`, the MRs with their references).
    variant: `official` reads `<data dir>/e2e/e2e-dataset.zip` (preferred when present) or a folder of the CSVs
      (`<data dir>/e2e/`, `<data dir>/e2e/e2e-dataset/`, or `<data dir>` itself); `cleaned` reads
      `<data dir>/e2e-cleaned/{train-fixed.no-ol.csv.gz, devel-fixed.no-ol.csv, test-fixed.csv}` (any of them
      may be gzipped or not), using its cleaned `mr` column.
    data_dir: see `resolve_data_dir` (downloads the official zip when missing and online).
    on_error: `raise` a DataError on the first bad row (`file:line: what; expected what`, the line being the
      physical line where the record starts), or `skip` bad rows: they are logged and warned about
      (count + first reasons) and listed in the returned list's `.skipped`.
      File-level problems (missing file or column, unreadable zip) always raise.
    ref_style: `raw`, the CSV text (stripped, line breaks -> spaces), or `tokenized`, the form of the
      original's data files: references AND table values tokenised like spaCy's English tokenizer ("is n't",
      "family - friendly", "price : £ 20 - 25"); needs spaCy, see `prefix_tuning.e2e_tokenize`. `mr` stays raw.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if on_error not in get_args(OnError):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if ref_style not in get_args(RefStyle):
        raise ValueError(f"ref_style must be 'raw' or 'tokenized', got {ref_style!r}")
    if variant == "official":
        name, raw = _read_official(resolve_data_dir(data_dir), split)
    else:
        name, raw = _read_cleaned(pick_dir(data_dir), split)
    examples, skipped = _parse_csv(name, raw, on_error)
    if ref_style == "tokenized":
        examples = _tokenize_examples(examples)
    if skipped:
        msg = (
            f"{name}: skipped {len(skipped)} bad row(s): "
            + "; ".join(skipped[:3])
            + ("; ..." if len(skipped) > 3 else "")
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return ExampleList(examples, skipped)


__all__ = [
    "DataError",
    "Example",
    "MRGroup",
    "ExampleList",
    "parse_mr",
    "linearize_mr",
    "group_by_mr",
    "resolve_data_dir",
    "download_e2e",
    "load_e2e",
    "E2E_URL",
    "E2E_SHA256",
    "ENV_VAR",
    "SLOT_NAMES",
]
