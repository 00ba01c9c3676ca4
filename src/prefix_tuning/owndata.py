"""Your own data-to-text (or any source-to-target) files: JSON lines, CSV or TSV.

One row per (source, target) pair; the field names are configurable (`DataConfig.source_field`,
`target_field`, `group_field`). Rows with the same source are several references of one source: training
uses every row, decoding and scoring use one prompt per unique source (in order of first appearance) with
all its references, as E2E's MRs. An optional group label (e.g. a category) per source lets scoring report
each group separately. Example (tests/data/tiny_custom.jsonl):

    {"source": "name : Alimentum | area : city centre", "target": "Alimentum is in the city centre.", "group": "a"}

The source is used verbatim as the table of the training sequence (`' {source} ' eos ' {target} ' eos`,
see `prefix_tuning.data`). Errors read `file:line: what; expected what`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .datadir import DataError
from .e2e import Example

Format = Literal["jsonl", "csv", "tsv"]


@dataclass(frozen=True)
class Row:
    source: str
    target: str
    group: str | None
    where: str
    """`file:line` of the row, for messages."""


@dataclass(frozen=True)
class SourceGroup:
    """One unique source with all its references, in file order: one prompt to decode."""

    source: str
    refs: tuple[str, ...]
    group: str | None


def _records(path: Path, fmt: Format) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank row of the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:1: not UTF-8 ({err.reason}); expected a UTF-8 text file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror}); expected a readable {fmt} file") from None
    if fmt == "jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{n}: invalid JSON ({err.msg}, column {err.colno}); expected one JSON object per line"
                ) from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{n}: a JSON {type(rec).__name__}; expected one JSON object per line")
            out.append((n, rec))
        return out
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    rows = []
    for rec in reader:
        if None in rec:
            raise DataError(
                f"{path}:{reader.line_num}: more cells than the {len(reader.fieldnames or [])} "
                f"header columns; expected one cell per column ({fmt} with a header row)"
            )
        if any((v or "").strip() for v in rec.values()):
            rows.append((reader.line_num, rec))
    return rows


def load_rows(
    path: str | os.PathLike,
    fmt: Format = "jsonl",
    *,
    source_field: str = "source",
    target_field: str = "target",
    group_field: str | None = None,
) -> list[Row]:
    """Rows of one file in file order. Raises DataError naming `file:line` and the missing or empty field."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: no such file; expected a {fmt} file of {source_field}/{target_field} rows")
    fields = [source_field, target_field] + ([group_field] if group_field else [])
    rows = []
    for n, rec in _records(p, fmt):
        for f in fields:
            value = rec.get(f)
            if not isinstance(value, str) or not value.strip():
                got = "missing" if value is None else f"{value!r}"
                found = ", ".join(str(k) for k, v in rec.items() if v is not None) or "none"
                raise DataError(
                    f"{p}:{n}: field {f!r} {got}; expected a non-empty string in field {f!r} (fields found: {found})"
                )
        rows.append(
            Row(
                rec[source_field].strip(),
                rec[target_field].strip(),
                rec[group_field].strip() if group_field else None,
                f"{p}:{n}",
            )
        )
    if not rows:
        raise DataError(f"{p}:1: no rows; expected at least one {source_field}/{target_field} row")
    return rows


def training_examples(rows: Sequence[Row]) -> list[Example]:
    """One training example per row (the source is the table)."""
    return [Example(mr=r.source, table=r.source, ref=r.target, source=r.where) for r in rows]


def source_groups(rows: Sequence[Row]) -> list[SourceGroup]:
    """Unique sources in order of first appearance with all their references. A source labelled with two
    different groups raises DataError."""
    refs: dict[str, list[str]] = {}
    labels: dict[str, tuple[str | None, str]] = {}
    for r in rows:
        refs.setdefault(r.source, []).append(r.target)
        first = labels.setdefault(r.source, (r.group, r.where))
        if first[0] != r.group:
            raise DataError(
                f"{r.where}: group {r.group!r} for a source labelled {first[0]!r} at {first[1]}; "
                "expected one group per source"
            )
    return [SourceGroup(s, tuple(t), labels[s][0]) for s, t in refs.items()]


def score_by_group(
    groups: Sequence[SourceGroup], hyps: Sequence[str], score: Callable[[list[list[str]], list[str]], dict]
) -> dict:
    """`score(refs, hyps)` over all sources, and under "groups" per group label (when the sources have labels,
    in order of first appearance), each with its "n_sources"."""
    if len(hyps) != len(groups):
        raise ValueError(f"{len(hyps)} outputs for {len(groups)} unique sources; expected one output per source")
    refs = [list(g.refs) for g in groups]
    res = score(refs, list(hyps))
    labels = list(dict.fromkeys(g.group for g in groups if g.group is not None))
    if labels:
        res["groups"] = {}
        for label in labels:
            idx = [i for i, g in enumerate(groups) if g.group == label]
            sub = score([refs[i] for i in idx], [hyps[i] for i in idx])
            res["groups"][label] = {k: v for k, v in sub.items() if k != "signature"} | {"n_sources": len(idx)}
    return res
