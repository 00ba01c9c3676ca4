"""Reading references and system outputs the way the official E2E scorer does.

Scores depend on details of reading: lines are split like Python's ``codecs`` reader
(``str.splitlines``) and stripped; CSV/TSV files get the scorer's mojibake fixes
(``Ł``/``Â£`` to ``£``, ``Ã©``/``ã©`` to ``é``) and header detection. Where the
scorer would crash or silently mis-align, this module raises :class:`EvalInputError`
naming the file, the line and the fix instead.

Deliberate differences: a UTF-8 byte-order mark is dropped in every file (the scorer
drops it only in CSV/TSV files), CSV references are grouped by MR in order of first
appearance (the scorer groups consecutive equal MRs; identical on the E2E files), and
a CSV/TSV without a header is accepted as two columns (MR, text).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

# Column-name patterns of measure_scores.py (matched at the start, case-insensitive).
HEADER_SRC = r"(mr|src|source|meaning(?:[_ .-]rep(?:resentation)?)?|da|dial(?:ogue)?[_ .-]act)s?"
HEADER_SYS = r"(out(?:put)?|ref(?:erence)?|sys(?:tem)?(?:[_ .-](?:out(?:put)?|ref(?:erence)?))?)s?"
HEADER_REF = r"(trg|tgt|target|ref(?:erence)?|human(?:[_ .-](?:ref(?:erence)?))?)s?"
_FIXES = (("Ł", "£"), ("Â£", "£"), ("Ã©", "é"), ("ã©", "é"))
_TABLE = re.compile(r"\.[ct]sv$", re.I)


class EvalInputError(ValueError):
    """A references or outputs file that cannot be scored; the message says how to fix it."""


def is_table(path: str | os.PathLike[str]) -> bool:
    """The scorer treats ``.csv``/``.tsv`` files (any case) as tables, others as plain text."""
    return bool(_TABLE.search(str(path)))


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """Stripped lines of a UTF-8 file (``codecs`` line breaks); empty files are errors."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise EvalInputError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x}); "
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE`)"
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise EvalInputError(f"{path}, line 1: the file is empty; write one line per MR")
    return [line.strip() for line in text.splitlines()]


def _read_table(path: str | os.PathLike[str], text_header: str) -> list[tuple[int, str, str]]:
    """(line number, MR, text) rows of a CSV/TSV file, as ``read_tsv`` of the scorer."""
    numbered = []
    for number, line in enumerate(read_lines(path), start=1):
        for bad, good in _FIXES:
            line = line.replace(bad, good)
        if line:  # the scorer ignores empty lines
            numbered.append((number, line))
    delimiter = "\t" if "\t" in numbered[0][1] else ","
    reader = csv.reader([line for _, line in numbered], delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    consumed = 0
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as err:  # a field over csv.field_size_limit() (128 KiB): the scorer would crash
            raise EvalInputError(
                f"{path}, line {numbered[consumed][0]}: unreadable record ({err}); check the quoting "
                "(an unclosed '\"' makes the rest of the file one field)"
            ) from None
        if fields is None:
            break
        rows.append((numbered[consumed][0], fields))
        consumed = reader.line_num
    header = rows[0][1]
    src_cols = [i for i, name in enumerate(header) if re.match(HEADER_SRC, name, re.I)]
    text_cols = [i for i, name in enumerate(header) if re.match(text_header, name, re.I)]
    if len(src_cols) == len(text_cols) == 1:
        src_col, text_col = src_cols[0], text_cols[0]
        rows = rows[1:]
    elif not src_cols and not text_cols and len(header) == 2:
        src_col, text_col = 0, 1
    else:
        raise EvalInputError(
            f"{path}, line {rows[0][0]}: cannot tell the MR column and the text column "
            f"apart in header {header!r}; name exactly one column 'mr' and one "
            f"'{'ref' if text_header == HEADER_REF else 'output'}'"
        )
    wrong = [number for number, fields in rows if len(fields) != len(header)]
    if wrong:
        raise EvalInputError(
            f"{path}, line {wrong[0]}: expected {len(header)} columns (found a different "
            f"number on {len(wrong)} line(s): {wrong[:10]}); quote fields that contain "
            f"'{delimiter}' or '\"'"
        )
    if not rows:
        raise EvalInputError(f"{path}, line 2: the table has a header but no rows")
    return [(number, fields[src_col], fields[text_col]) for number, fields in rows]


def read_refs(path: str | os.PathLike[str]) -> tuple[list[str] | None, list[list[str]]]:
    """MRs (``None`` for plain text) and the references grouped per MR.

    CSV/TSV (``mr,ref``): rows with equal MR form one group, in order of first
    appearance. Plain text: the references of one MR on consecutive lines, one blank
    line between MRs; a file without any blank line holds one reference per line.
    """
    if is_table(path):
        groups: dict[str, list[str]] = {}
        for _, mr, ref in _read_table(path, HEADER_REF):
            groups.setdefault(mr, []).append(ref)
        return list(groups), list(groups.values())
    lines = read_lines(path)
    while lines and not lines[-1]:
        lines.pop()
    refs: list[list[str]] = [[]]
    for number, line in enumerate(lines, start=1):
        if line:
            refs[-1].append(line)
        elif refs[-1]:
            refs.append([])
        else:
            raise EvalInputError(
                f"{path}, line {number}: blank line without references before it; separate "
                "the references of two MRs by exactly one blank line"
            )
    if len(refs) == 1:  # no blank line at all: single-reference file, as the scorer reads it
        refs = [[ref] for ref in refs[0]]
    return None, refs


def read_outputs(path: str | os.PathLike[str], mrs: Sequence[str] | None = None) -> list[str]:
    """System outputs, one per MR, in the order of ``mrs`` when given.

    Plain text: one output per line (a blank line is an empty output). CSV/TSV with an
    MR column (``mr,output``): outputs are matched to ``mrs`` by MR; every MR needs
    exactly one row. Without ``mrs`` a table's rows are returned in file order.
    """
    if not is_table(path):
        outputs = read_lines(path)
        if mrs is not None:
            check_count(path, len(outputs), len(mrs))
        return outputs
    rows = _read_table(path, HEADER_SYS)
    if mrs is None:
        return [text for _, _, text in rows]
    wanted = set(mrs)
    found: dict[str, tuple[int, str]] = {}
    for number, mr, text in rows:
        if mr not in wanted:
            raise EvalInputError(
                f"{path}, line {number}: MR {mr!r} is not in the references; copy the MR "
                "column unchanged from the references file"
            )
        if mr in found:
            raise EvalInputError(
                f"{path}, line {number}: MR {mr!r} already has an output on line {found[mr][0]}; keep one output per MR"
            )
        found[mr] = (number, text)
    missing = [mr for mr in mrs if mr not in found]
    if missing:
        raise EvalInputError(
            f"{path}, line {rows[-1][0] + 1}: no output for {len(missing)} of {len(mrs)} MRs "
            f"(first: {missing[0]!r}); add one row per MR of the references"
        )
    return [found[mr][1] for mr in mrs]


def check_count(path: str | os.PathLike[str], n_outputs: int, n_refs: int) -> None:
    """Raise unless a plain output file has exactly one line per MR."""
    if n_outputs != n_refs:
        raise EvalInputError(
            f"{path}, line {min(n_outputs, n_refs) + 1}: {n_outputs} output lines for "
            f"{n_refs} MRs; write exactly one line per MR, in the order of the references "
            "(a blank line for an empty output, no extra blank lines at the end)"
        )


def load(refs_path: str | os.PathLike[str], outputs_path: str | os.PathLike[str]) -> tuple[list[list[str]], list[str]]:
    """References and outputs aligned per MR, ready for :func:`score`."""
    mrs, refs = read_refs(refs_path)
    outputs = read_outputs(outputs_path, mrs)
    check_count(outputs_path, len(outputs), len(refs))
    return refs, outputs
