"""Hostile input: parsers and readers raise only their documented errors, naming file and line.

Documented errors: `DataError` (MR parser, E2E readers), `EvalInputError` (metric readers). Inputs: random
bytes, invalid UTF-8, NUL, huge lines, CRLF/CR, odd quoting, wrong columns, empty files. The properties run on
a few hundred examples (~25 s with `test_hostile_config_metrics.py` on two busy cores); the `slow` variants
(`-m slow`) run the same properties on 20x as many. Each crash these tests found is pinned below as a plain
example, with the error it used to be. Config loader and metrics: `test_hostile_config_metrics.py`.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from hostile import hostile_bytes, hostile_text, line_of, lines_of, run
from hypothesis import strategies as st

from prefix_tuning.e2e import DataError, linearize_mr, load_e2e, parse_mr
from prefix_tuning.metrics import EvalInputError, load, read_outputs, read_refs

# ---------------------------------------------------------------------------------------------- MRs

_OLD_SLOT = re.compile(r"\s*([^\[\],]*?)\s*\[([^\[\]]*)\]\s*(,|$)")


def old_parse_mr(mr: str) -> list[tuple[str, str]] | None:
    """The regex parser that parse_mr replaced (cubic on runs of spaces); None where it raised."""
    slots, pos = [], 0
    while mr.strip() and pos < len(mr):
        m = _OLD_SLOT.match(mr, pos)
        if m is None or not m.group(1) or not m.group(2).strip() or (m.group(3) == "," and m.end() == len(mr)):
            return None
        slots.append((m.group(1), m.group(2).strip()))
        pos = m.end()
    return slots or None


def test_mr_parser_raises_only_data_error(scale):
    def prop(mr: str) -> None:
        try:
            table = linearize_mr(mr, where="f.csv:7")
        except DataError as err:
            assert str(err).startswith("f.csv:7: ") and len(str(err)) < 5000  # a huge MR is cut in the message
            return
        assert table.count(" : ") >= mr.count("[") >= 1

    run(prop, 300 * scale, hostile_text)


def test_mr_parser_accepts_what_the_regex_accepted(scale):
    """Same slots, same rejections as the original regex parser (on short texts, where it is fast)."""

    def prop(mr: str) -> None:
        try:
            new = parse_mr(mr)
        except DataError:
            new = None
        assert new == old_parse_mr(mr)

    run(prop, 500 * scale, st.text(st.sampled_from(list("ab []],\n\t\x0b\u3000\x85")), max_size=25))


def test_mr_parser_round_trip(scale):
    name = st.text(st.characters(blacklist_characters="[],"), min_size=1).filter(str.strip)
    value = st.text(st.characters(blacklist_characters="[]"), min_size=1).filter(str.strip)

    def prop(slots: list[tuple[str, str]]) -> None:
        mr = ", ".join(f"{k}[{v}]" for k, v in slots)
        assert parse_mr(mr) == [(k.strip(), v.strip()) for k, v in slots]

    run(prop, 200 * scale, st.lists(st.tuples(name, value), min_size=1, max_size=8))


def test_mr_parser_is_linear_on_runs_of_spaces():
    """Finding: the regex parser backtracked cubically: 1,000 spaces before a non-slot took 0.9 s, 4,000 took
    63 s, so one such CSV row hung load_e2e. References had a quadratic version of the same (`_clean_ref`)."""
    start = time.perf_counter()
    for mr in [" " * 50_000 + "x", "a" + " " * 50_000 + "[", "a[b]" + " " * 50_000 + "c"]:
        with pytest.raises(DataError):
            parse_mr(mr)
    assert time.perf_counter() - start < 5


# -------------------------------------------------------------------------------------- E2E readers


def write_csv(root: Path, raw: bytes, kind: str) -> tuple[str, str]:
    """The file a split is read from, in one of the three layouts; returns (variant, name in messages)."""
    shutil.rmtree(root, ignore_errors=True)
    if kind == "cleaned-gz":
        (root / "e2e-cleaned").mkdir(parents=True)
        f = root / "e2e-cleaned" / "train-fixed.no-ol.csv.gz"
        f.write_bytes(gzip.compress(raw, mtime=0))
        return "cleaned", str(f)
    (root / "e2e").mkdir(parents=True)
    if kind == "zip":
        with zipfile.ZipFile(root / "e2e" / "e2e-dataset.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("e2e-dataset/trainset.csv", raw)
        return "official", "e2e-dataset.zip:e2e-dataset/trainset.csv"
    (root / "e2e" / "trainset.csv").write_bytes(raw)
    return "official", str(root / "e2e" / "trainset.csv")


def test_e2e_readers_raise_only_data_error(scale, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "data"
    header = st.sampled_from([b"", b"mr,ref\r\n", b'"mr","ref"\n', b"\xef\xbb\xbfmr,ref,x\r", b"ref;mr\n"])

    def prop(head: bytes, body: bytes, kind: str) -> None:
        raw = head + body
        variant, name = write_csv(root, raw, kind)
        try:
            strict = load_e2e("train", variant=variant, data_dir=root)
        except DataError as err:
            line_of(err, name)
            strict = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                lenient = load_e2e("train", variant=variant, data_dir=root, on_error="skip")
            except DataError as err:  # file-level problems (header, encoding of the header) raise in skip mode
                assert strict is None and line_of(err, name) == 1
                return
        for reason in lenient.skipped:
            assert 1 < line_of(reason, name) <= lines_of(raw)
        for ex in lenient:
            assert 1 < line_of(ex.source, name, r":(\d+)$") <= lines_of(raw)
            assert ex.ref == ex.ref.strip() and ex.ref and "\n" not in ex.ref and ex.table
        if strict is not None:
            assert list(strict) == list(lenient) and not lenient.skipped

    run(prop, 150 * scale, header, hostile_bytes, st.sampled_from(["csv", "zip", "cleaned-gz"]))


def _zip_bytes(content: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("e2e-dataset/trainset.csv", content)
    return buf.getvalue()


def test_damaged_archives_raise_data_error(scale, tmp_path_factory):
    root = tmp_path_factory.mktemp("archives")

    def prop(content: bytes, kind: str, where: int, flip: int) -> None:
        shutil.rmtree(root, ignore_errors=True)
        if kind == "zip":
            data, f = bytearray(_zip_bytes(content)), root / "e2e" / "e2e-dataset.zip"
        else:
            data, f = bytearray(gzip.compress(content)), root / "e2e-cleaned" / "train-fixed.no-ol.csv.gz"
        data[where % len(data)] ^= flip
        f.parent.mkdir(parents=True)
        f.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_e2e("train", variant="official" if kind == "zip" else "cleaned", data_dir=root, on_error="skip")
        except DataError as err:  # the archive at line 1, a CSV row at its line, or a member gone (no line)
            assert re.match(
                rf"({re.escape(str(f))}|e2e-dataset\.zip:e2e-dataset/trainset\.csv):\d+: "
                r"|e2e-dataset\.zip: no member trainset\.csv",
                str(err),
            ), str(err)

    run(
        prop,
        150 * scale,
        st.binary(min_size=1, max_size=300).map(lambda b: b"mr,ref\n" + b * 3),
        st.sampled_from(["zip", "gz"]),
        st.integers(0, 10_000),
        st.integers(1, 255),
    )


def _damage(kind: str) -> tuple[str, bytes]:
    """Archives with a damaged member: the errors zipfile/gzip raise besides BadZipFile/OSError."""
    content = b"mr,ref\r\n" + b'"name[A]","A ref."\r\n' * 50
    if kind == "gz-deflate":  # first deflate byte 0xff: block type 3 -> zlib.error "invalid block type"
        data = bytearray(gzip.compress(content))
        data[10] = 0xFF
        return "gz", bytes(data)
    data = bytearray(_zip_bytes(content))
    if kind == "zip-deflate":
        data[30 + len("e2e-dataset/trainset.csv")] = 0xFF  # zlib.error
    else:  # compression method 1 (shrink) in the central directory: NotImplementedError
        central = data.index(b"PK\x01\x02")
        data[central + 10 : central + 12] = (1).to_bytes(2, "little")
    return "zip", bytes(data)


@pytest.mark.parametrize("kind", ["gz-deflate", "zip-deflate", "zip-method"])
def test_damaged_archive_findings(tmp_path, kind):
    """Findings: these raised zlib.error / NotImplementedError out of load_e2e."""
    fmt, data = _damage(kind)
    if fmt == "zip":
        (tmp_path / "e2e").mkdir()
        (tmp_path / "e2e" / "e2e-dataset.zip").write_bytes(data)
        match, variant = r"e2e-dataset\.zip:1: not a readable zip \((error|NotImplementedError)", "official"
    else:
        (tmp_path / "e2e-cleaned").mkdir()
        (tmp_path / "e2e-cleaned" / "train-fixed.no-ol.csv.gz").write_bytes(data)
        match, variant = r"train-fixed\.no-ol\.csv\.gz:1: not a readable gzip file", "cleaned"
    with pytest.raises(DataError, match=match):
        load_e2e("train", variant=variant, data_dir=tmp_path)


# ---------------------------------------------------------------------------------- metric readers


def test_metric_readers_raise_only_eval_input_error(scale, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    mrs = st.one_of(st.none(), st.lists(st.sampled_from(["name[A]", "a", "", "mr", "é"]), max_size=3))

    def prop(refs_raw: bytes, out_raw: bytes, refs_ext: str, out_ext: str, wanted: list[str] | None) -> None:
        refs_path, out_path = folder / f"refs.{refs_ext}", folder / f"out.{out_ext}"
        refs_path.write_bytes(refs_raw)
        out_path.write_bytes(out_raw)
        try:
            read_refs(refs_path)
        except EvalInputError as err:
            line_of(err, str(refs_path), r", line (\d+): ")
        try:
            outputs = read_outputs(out_path, wanted)
            assert wanted is None or len(outputs) == len(wanted)
        except EvalInputError as err:
            line_of(err, str(out_path), r", line (\d+): ")
        try:
            refs, outputs = load(refs_path, out_path)
            assert len(refs) == len(outputs) and all(refs)
        except EvalInputError as err:
            line_of(err, str(refs_path if str(err).startswith(str(refs_path)) else out_path), r", line (\d+): ")

    run(
        prop,
        200 * scale,
        hostile_bytes,
        hostile_bytes,
        st.sampled_from(["txt", "csv", "tsv", "CSV"]),
        st.sampled_from(["txt", "csv", "tsv"]),
        mrs,
    )


def test_csv_field_over_the_limit_finding(tmp_path):
    """Finding: a field over csv.field_size_limit() (128 KiB; an unclosed quote makes one) raised _csv.Error."""
    path = tmp_path / "out.csv"
    path.write_bytes(b'mr,output\nname[A],fine\nname[B],"' + b"x" * 200_000 + b"\n")
    with pytest.raises(EvalInputError, match=rf"^{re.escape(str(path))}, line 3: unreadable record"):
        read_outputs(path, ["name[A]", "name[B]"])
