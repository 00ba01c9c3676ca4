"""Hostile-input strategies and helpers shared by `test_hostile*.py` (the `scale` fixture is in conftest)."""

from __future__ import annotations

import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")


def run(prop, examples: int, *strategies) -> None:
    """Check `prop` on `examples` generated inputs (no deadline: the cores are shared)."""
    settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))(given(*strategies)(prop))()


# ------------------------------------------------------------------------------------------ strategies

PIECES = [
    '"',
    "'",
    ",",
    "\t",
    "\r\n",
    "\n",
    "\r",
    "\x00",
    "\ufeff",
    "\x85",
    "\u2028",
    "\x1c",
    "\xa0",
    " ",
    "  ",
    "[",
    "]",
    "name",
    "[A]",
    "mr",
    "ref",
    "output",
    "é",
    "£",
    "中",
    "😀",
    "|||",
    "<skipped>",
    "&amp;",
]
BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9", b"\xf4\x90\x80\x80"]
piece = st.sampled_from(PIECES)


def repeated(most: int) -> st.SearchStrategy[str]:
    """A piece repeated up to `most` times: huge lines cost hypothesis nothing to generate."""
    return st.tuples(st.one_of(piece, st.text(min_size=1, max_size=3)), st.integers(1, most)).map(lambda t: t[0] * t[1])


hostile_text = st.one_of(st.lists(st.one_of(piece, st.text(max_size=6)), max_size=30).map("".join), repeated(200_000))
hostile_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(piece.map(str.encode), st.sampled_from(BAD_UTF8), st.binary(max_size=4)), max_size=40).map(
        b"".join
    ),
    hostile_text.map(lambda t: t.encode("utf-8")),
)


def lines_of(raw: bytes) -> int:
    """At least the number of lines (CR, LF and CRLF each end one)."""
    return raw.count(b"\n") + raw.count(b"\r") + 1


def line_of(message: object, name: str, pattern: str = r":(\d+): ") -> int:
    """The line of a message that must start with `name` and a line number (`file:7: ...`)."""
    m = re.match(re.escape(name) + pattern, str(message))
    assert m, f"no {name}:line in {str(message)[:300]!r}"
    return int(m.group(1))
