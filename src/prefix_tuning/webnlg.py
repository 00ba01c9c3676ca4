"""WebNLG 2017 challenge data: the release tarball's XML, and triples linearised as the original code does.

Data: `<data dir>/webnlg2017/webnlg2017-challenge.tar.gz` (the release Li & Liang used, from
XiangLi1999/PrefixTuning `data/webnlg_challenge_2017/`), read with `tarfile`, never extracted. Splits: `train`
and `dev` (per-category XMLs under `train/`, `dev/`), `test` (`test/testdata_with_lex.xml`, all 15 categories)
and `test_unseen` (`test/testdata_unseen_with_lex.xml`: the 5 new categories, renumbered from Id1, so never
join it to `test` by eid). Each entry keeps its category and `seen` (category among the 10 training ones; the
challenge's "old"/"new" categories, see `metrics.webnlg`).

Format of the original code (XiangLi1999/PrefixTuning), which reads JSON conversions of these XMLs
(`webnlg_challenge_2017/{train,dev,test}.json`: files in sorted path order, entries in file order, triples split
on " | "; checked identical to this reader on all 872 dev entries of the repo's `dev.json`):
- Training, `transformers/src/transformers/data/datasets/language_modeling.py::LineByLineWebNLGTextDataset`
  (`gpt2/run_language_modeling.py --task_mode webnlg`, for train and dev): the source is the modified triples,
  each written ` | {subject} : {property} : {object}` and concatenated, so it STARTS with " | "; values stay
  as in the XML (underscores, quotes). One example per lexicalisation whose comment is "good" (train 18,025
  of 18,102 references; dev 2,258 of 2,268); the sequence is `' {src} {bos} ' + lex + ' {eos}'`, the same
  shape as E2E's `' {table} {bos} '`, so `table` here plugs into `prefix_tuning.data` unchanged.
- Decoding, `gpt2/run_generation.py::read_webnlg_files` (`--task_mode webnlg`): the same source string, ALL
  lexicalisations (no comment filter) grouped under each unique (source, properties) in order of first
  appearance (test: 1,862 groups = entries; dev: 871, two dev entries share one source), prompt
  `' {src} {bos}'`. There the separator test reads `if i > 0` with `i` the ENTRY index, so the first entry of
  each file alone gets its triples glued without " | " (`"s1 : p1 : o1s2 : p2 : o2"`); this reader does
  not copy that slip: every entry, first included, is linearised as in training.
Scores: `gpt2/run_generation.py` pipes the outputs to DART's `evaluation/run_eval_on_webnlg.sh`, i.e. the
challenge's own scripts, which `prefix_tuning.metrics.webnlg` reproduces.
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .datadir import ENV_VAR, DataError, pick_dir
from .e2e import Example, MRGroup
from .metrics import JavaNotFoundError, score_webnlg, webnlg_signature
from .metrics.io import EvalInputError
from .metrics.webnlg import METRICS as WEBNLG_METRICS
from .metrics.webnlg import transliterator

ARCHIVE = "webnlg2017-challenge.tar.gz"
SPLITS = ("train", "dev", "test", "test_unseen")
_TEST_FILES = {"test": "test/testdata_with_lex.xml", "test_unseen": "test/testdata_unseen_with_lex.xml"}
SEEN_CATEGORIES = ("Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument",
                   "SportsTeam", "University", "WrittenWork")  # fmt: skip
"""The 10 training categories (the challenge's `old_categories`)."""
UNSEEN_CATEGORIES = ("Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician")
"""The 5 categories only in the test set (the challenge's `new_categories`)."""


@dataclass(frozen=True)
class Triple:
    subject: str
    property: str
    object: str


@dataclass(frozen=True)
class Lexicalisation:
    text: str
    comment: str
    """`good` or `toFix` (train/dev); the original trains on `good` ones only."""
    lid: str = ""


@dataclass(frozen=True)
class Entry:
    eid: str
    category: str
    size: int
    triples: tuple[Triple, ...]
    """The modified triple set (what the texts verbalise), in XML order."""
    lexs: tuple[Lexicalisation, ...]
    source: str = ""
    """`archive:member:line` of the `<entry>` tag, for messages."""

    @property
    def seen(self) -> bool:
        """Category among the 10 training categories (test "seen"/S; else unseen/U)."""
        return self.category in SEEN_CATEGORIES

    @property
    def table(self) -> str:
        return linearize_triples(self.triples)

    @property
    def refs(self) -> tuple[str, ...]:
        """All reference texts in XML order (the scorer uses the first 3, as the challenge did)."""
        return tuple(lex.text for lex in self.lexs)


def linearize_triples(triples: Iterable[Triple | tuple[str, str, str]]) -> str:
    """The original's source string: `' | s1 : p1 : o1 | s2 : p2 : o2'` (leading " | " included, see the module
    docstring), e.g. ' | Aarhus : leaderName : Jacob_Bundsgaard'."""
    return "".join(" | {} : {} : {}".format(*t) if isinstance(t, tuple) else
                   f" | {t.subject} : {t.property} : {t.object}" for t in triples)  # fmt: skip


# ---------------------------------------------------------------------------------------------- reading


def archive_path(path: str | os.PathLike | None = None) -> Path:
    """The release tarball under the data dir (`path`, else $PREFIX_TUNING_DATA, else the user cache: `pick_dir`),
    in its `webnlg2017/` sub-folder or the dir itself."""
    d = pick_dir(path)
    for candidate in (d / "webnlg2017" / ARCHIVE, d / ARCHIVE):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{d}: no WebNLG 2017 data; expected {d / 'webnlg2017' / ARCHIVE} (the release used by "
        f"XiangLi1999/PrefixTuning, data/webnlg_challenge_2017/ as a tar.gz); pass data_dir or set "
        f"${ENV_VAR}"
    )


def load_webnlg(split: str, *, data_dir: str | os.PathLike | None = None) -> list[Entry]:
    """Entries of one split in the original's order: train/dev files in sorted path order, entries in file
    order; test files in file order (Id1..). Raises DataError (`archive:member:line: what; expected what`) on a
    missing file, malformed XML, an entry without category/eid/size, triples, lexicalisations or text."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    archive = archive_path(data_dir)
    want = _TEST_FILES.get(split)
    try:
        with tarfile.open(archive, "r:*") as tar:
            # Read in archive order (a gzip stream cannot seek back cheaply), then parse in the original's order.
            raw = {
                m.name: tar.extractfile(m).read()
                for m in tar  # type: ignore[union-attr]
                if m.isfile()
                and m.name.endswith(".xml")
                and (m.name.endswith("/" + want) if want else f"/{split}/" in f"/{m.name}")
            }
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}:1: unreadable archive ({err}); expected the gzipped release tarball") from err
    if not raw:
        raise DataError(
            f"{archive}: no member {want or split + '/<n>triples/*.xml'}; expected the WebNLG 2017 "
            "challenge release layout"
        )
    entries: list[Entry] = []
    for name in sorted(raw):
        entries += parse_benchmark(raw[name], f"{archive.name}:{name}")
    return entries


_ENTRY_TAG = re.compile(rb"<entry[\s>/]")


def _entry_lines(data: bytes) -> list[int]:
    """Line of each `<entry` tag, in document order (ElementTree keeps no line numbers)."""
    lines, line, pos = [], 1, 0
    for m in _ENTRY_TAG.finditer(data):
        line += data.count(b"\n", pos, m.start())
        pos = m.start()
        lines.append(line)
    return lines


def _entry(xe: ET.Element, at: str) -> Entry:
    """One `<entry>` element checked and converted; `at` is `file:line` for messages."""
    attrs = xe.attrib
    missing = [a for a in ("category", "eid", "size") if not attrs.get(a, "").strip()]
    if missing:
        raise DataError(
            f"{at}: <entry> without attribute {', '.join(missing)}; expected "
            '<entry category="..." eid="Id<n>" size="<number of triples>">'
        )
    eid = attrs["eid"]
    sets = xe.findall("modifiedtripleset")
    triples = []
    for mt in sets[0].findall("mtriple") if len(sets) == 1 else []:
        parts = (mt.text or "").split(" | ")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise DataError(
                f"{at}: entry {eid}: bad triple {mt.text!r}; expected 'subject | property | object' "
                "with three non-empty parts"
            )
        triples.append(Triple(*parts))
    if not triples:
        raise DataError(
            f"{at}: entry {eid}: {len(sets)} <modifiedtripleset> and no <mtriple> read; expected "
            "exactly one set of at least one triple"
        )
    lexs = []
    for lx in xe.findall("lex"):
        if not (lx.text or "").strip():
            raise DataError(f"{at}: entry {eid}: empty <lex>; expected the reference text")
        if "comment" not in lx.attrib:
            raise DataError(f'{at}: entry {eid}: <lex> without attribute comment; expected comment="good" or "toFix"')
        lexs.append(Lexicalisation(lx.text or "", lx.attrib["comment"], lx.attrib.get("lid", "")))
    if not lexs:
        raise DataError(f"{at}: entry {eid}: no <lex>; expected at least one reference text")
    if attrs["size"].strip() != str(len(triples)):
        raise DataError(
            f"{at}: entry {eid}: size={attrs['size']!r} but {len(triples)} triples; expected the "
            "number of modified triples"
        )
    return Entry(eid, attrs["category"], len(triples), tuple(triples), tuple(lexs), at)


def parse_benchmark(data: bytes | str, where: str = "<string>") -> list[Entry]:
    """Entries of one WebNLG XML document (`where` names it in errors)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        line, col = err.position
        raise DataError(
            f"{where}:{line}: malformed XML ({str(err).split(':')[0]}, column {col + 1}); expected a "
            "WebNLG benchmark XML file"
        ) from None
    lines = _entry_lines(raw)
    elements = list(root.iter("entry"))
    if not elements:
        raise DataError(f"{where}:1: no <entry>; expected <benchmark><entries><entry ...>...")
    return [_entry(xe, f"{where}:{lines[k] if k < len(lines) else '?'}") for k, xe in enumerate(elements)]


# ----------------------------------------------------------------------------------- original's views


def training_examples(entries: Sequence[Entry], *, good_only: bool = True) -> list[Example]:
    """One `Example(mr=table, table=table, ref=lex)` per lexicalisation, in entry order: what the original
    trains on (`good_only`: comment == "good", as `LineByLineWebNLGTextDataset`)."""
    return [
        Example(mr=e.table, table=e.table, ref=lex.text, source=e.source)
        for e in entries
        for lex in e.lexs
        if lex.comment == "good" or not good_only
    ]


def decode_groups(entries: Sequence[Entry]) -> list[MRGroup]:
    """Unique sources in order of first appearance, each with all its references (`read_webnlg_files`): the
    prompts to decode and the reference sets, one output per group."""
    order: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for e in entries:
        order.setdefault((e.table, tuple(t.property for t in e.triples)), []).extend(e.refs)
    return [MRGroup(table, table, tuple(refs)) for (table, _), refs in order.items()]


def outputs_per_entry(entries: Sequence[Entry], groups: Sequence[MRGroup], outputs: Sequence[str]) -> list[str]:
    """Spread one output per `decode_groups` group back to every entry (entries sharing a source share it),
    in entry order: what `metrics.webnlg.score_webnlg` takes."""
    if len(groups) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(groups)} groups; expected one output per group")
    by_table = {g.table: out for g, out in zip(groups, outputs)}
    missing = [e.eid for e in entries if e.table not in by_table]
    if missing:
        raise ValueError(f"no output for entries {missing[:5]}; expected groups made by decode_groups(entries)")
    return [by_table[e.table] for e in entries]


def score_outputs(
    entries: Sequence[Entry], groups: Sequence[MRGroup], hyps: Sequence[str], metrics: Sequence[str] | None = None
) -> dict:
    """The challenge's scores of `hyps`: `{"S": {...}, "U": {...}, "A": {...}, "n_entries", "signature"}` with
    BLEU, METEOR and TER as fractions per category split (`metrics.score_webnlg`).

    hyps: one output per `decode_groups(entries)` group (what `generate` writes), or one per entry. metrics:
    some of BLEU, METEOR, TER (None: all three); without Java, METEOR is skipped with a warning. Characters the built-in transliteration cannot map are dropped (see `_transliterable`)."""
    hyps = _transliterable(hyps)
    if len(hyps) == len(groups):
        per_entry = outputs_per_entry(entries, groups, hyps)
    elif len(hyps) == len(entries):
        per_entry = hyps
    else:
        raise ValueError(
            f"{len(hyps)} outputs; expected one per unique source ({len(groups)}) or one per entry ({len(entries)})"
        )
    names = set(WEBNLG_METRICS) if metrics is None else {x.strip().upper() for x in metrics if x.strip()}
    if not names or names - set(WEBNLG_METRICS):
        raise ValueError(
            f"unknown WebNLG metric(s) {sorted(names - set(WEBNLG_METRICS))} or none; choose from "
            f"{', '.join(WEBNLG_METRICS)}"
        )
    wanted = [m for m in WEBNLG_METRICS if m in names]
    refs, seen = [e.refs for e in entries], [e.seen for e in entries]
    try:
        res = score_webnlg(per_entry, refs, seen, wanted)
    except JavaNotFoundError as e:
        wanted = [m for m in wanted if m != "METEOR"]
        if not wanted:
            raise
        print(f"warning: {e}; scoring {', '.join(wanted)} only", file=sys.stderr)
        res = score_webnlg(per_entry, refs, seen, wanted)
    return {**res, "n_entries": len(entries), "signature": webnlg_signature(wanted)}


def _transliterable(hyps: Sequence[str]) -> list[str]:
    """Outputs with the characters that the built-in transliteration cannot map (used when `Unidecode` is not
    installed; e.g. U+FFFD from a token cut inside a UTF-8 character) dropped, with a warning."""
    asc, _ = transliterator()
    out, changed = [], 0
    for h in hyps:
        try:
            asc(h)
            out.append(h)
        except EvalInputError:
            kept = []
            for ch in h:
                try:
                    kept.append(asc(ch) and ch)
                except EvalInputError:
                    pass
            out.append("".join(kept))
            changed += 1
    if changed:
        print(
            f"warning: {changed} output(s) hold characters without a built-in ASCII transliteration; dropped "
            "them (`pip install Unidecode` to score them as the challenge did)",
            file=sys.stderr,
        )
    return out


__all__ = [
    "ARCHIVE",
    "SEEN_CATEGORIES",
    "SPLITS",
    "UNSEEN_CATEGORIES",
    "DataError",
    "Entry",
    "Lexicalisation",
    "Triple",
    "archive_path",
    "decode_groups",
    "linearize_triples",
    "load_webnlg",
    "outputs_per_entry",
    "parse_benchmark",
    "score_outputs",
    "training_examples",
]
