"""Hostile input: parsers and readers raise only their documented errors, naming file and line; metrics never crash.

Documented errors: `DataError` (MR parser, E2E readers), `EvalInputError` (metric readers and `score` input),
`ConfigError` (config loader). Inputs: random bytes, invalid UTF-8, NUL, huge lines, CRLF/CR, odd quoting,
wrong columns, empty files. The properties run on a few hundred examples (~25 s on two busy cores); the `slow`
variants (`-m slow`) run the same properties on 20x as many. Each crash these tests found is pinned below as a
plain example, with the error it used to be.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefix_tuning.config import ConfigError, RunConfig
from prefix_tuning.configfile import load_config, save_config, to_dict
from prefix_tuning.e2e import DataError, linearize_mr, load_e2e, parse_mr
from prefix_tuning.metrics import (
    EvalInputError,
    coco,
    load,
    read_outputs,
    read_refs,
    score,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")


@pytest.fixture(params=[pytest.param(1, id="fast"), pytest.param(20, id="slow", marks=pytest.mark.slow)])
def scale(request) -> int:
    return request.param


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


# ---------------------------------------------------------------------------------------------- config

SCALARS = [
    "1",
    "-1",
    "0",
    "1e-4",
    "8.0e-5",
    ".nan",
    ".inf",
    "null",
    "~",
    "true",
    "no",
    "never",
    "fp16",
    "cleaned",
    "2001-02-30",
    "2001-02-03",
    "!!timestamp x",
    "!!binary ###",
    "!!python/object:os.system x",
    "1" * 5000,
    "0x" + "f" * 5000,
    "-0x" + "f" * 5000,
    "[" * 50,
    "{a: 1}",
    "[1, 2]",
    "&a x",
    "*a",
    "*b",
    "'quoted'",
    '"\\x00"',
    '"\\ud800"',
    "|",
    "%",
]
KEYS = [
    "model",
    "name",
    "data",
    "variant",
    "train",
    "lr",
    "epochs",
    "batch_size",
    "grad_accum",
    "precision",
    "decode",
    "early_stopping",
    "min_new_tokens",
    "out_dir",
    "<<",
    "? x",
    "- x",
    "1",
    "null",
    "lrr",
]
yaml_line = st.tuples(
    st.sampled_from(["", "  ", "    ", "\t", "- "]),
    st.sampled_from(KEYS),
    st.sampled_from([": ", ":", " : ", ": &a ", ": &b\n  "]),
    st.one_of(st.sampled_from(SCALARS), st.text(max_size=8)),
).map("".join)
yaml_text = st.one_of(st.lists(yaml_line, max_size=12).map("\n".join).map(str.encode), hostile_bytes)
override = st.one_of(
    st.tuples(
        st.sampled_from(
            [
                "train.lr",
                "decode.early_stopping",
                "train",
                "model.name",
                "train.precision",
                "data.variant",
                "x",
                " -train.epochs",
            ]
        ),
        st.sampled_from(["=", ""]),
        st.one_of(st.sampled_from(SCALARS), st.text(max_size=8)),
    ).map("".join),
    st.text(max_size=20),
)


def test_config_loader_raises_only_config_error(scale, tmp_path_factory):
    folder = tmp_path_factory.mktemp("config")
    path = folder / "c.yaml"

    def prop(text: bytes, overrides: list[str]) -> None:
        path.write_bytes(text)
        for args in [(path, []), (path, overrides), (None, overrides)]:
            try:
                cfg = load_config(*args)
            except ConfigError as err:
                if args[0] is not None:
                    if args[1]:  # an override's fault has no line in the file
                        assert str(err).startswith(f"{path}:")
                    else:
                        line_of(err, str(path))
                continue
            assert isinstance(cfg, RunConfig)
            save_config(cfg, folder / "saved.yaml")  # whatever loads, saves and loads back the same
            assert to_dict(load_config(folder / "saved.yaml")) == to_dict(cfg)

    run(prop, 250 * scale, yaml_text, st.lists(override, max_size=3))


@pytest.mark.parametrize(
    "text,overrides,match",
    [
        (b"train:\n  lr: \xff\n", [], r":2: not valid UTF-8"),  # UnicodeDecodeError
        (b"train: " + b"[" * 5000, [], r":1: invalid YAML \(nested too deeply\)"),  # RecursionError
        (
            b"train:\n  seed: 2001-02-30\n",
            [],
            r":2: invalid YAML value '2001-02-30' \(day is out of range",
        ),  # ValueError
        (b"train:\n  seed: !!timestamp x\n", [], r":2: invalid YAML value 'x'"),  # AttributeError
        (b"train:\n  seed: " + b"1" * 5000 + b"\n", [], r":2: invalid YAML value '1111"),  # ValueError (int digits)
        (b"train: 5\n", ["train.lr=1"], r":1: train: expected a mapping, got 5"),  # TypeError in apply_overrides
        (b"train: [1]\n", ["train.lr=1"], r":1: train: expected a mapping, got \[1\]"),  # AttributeError
        (b"", ["train.lr=["], r": override 'train.lr=\[': the value is not valid YAML"),  # yaml.ParserError
        (b"", ["train.lr=!!timestamp x"], r": override .* the value is not valid YAML"),  # AttributeError
    ],
)
def test_config_findings(tmp_path, text, overrides, match):
    """Findings: each of these raised the error in its comment out of load_config."""
    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + match):
        load_config(path, overrides)


# ---------------------------------------------------------------------------------------------- metrics

hostile_output = st.one_of(
    st.just(""),
    st.text(st.sampled_from(" \t\u3000\xa0\u2028\x85\x1c"), max_size=5),
    repeated(5_000),
    st.lists(st.one_of(piece, st.text(max_size=6)), max_size=30).map("".join),
    st.text(max_size=40),
)
reference = st.text(min_size=1, max_size=40).filter(lambda t: re.search(r"[A-Za-z0-9]", t))


def test_bleu_nist_never_crash(scale):
    def prop(data: list[tuple[list[str], str]]) -> None:
        refs, hyps = [r for r, _ in data], [h for _, h in data]
        result = score(refs, hyps, ["BLEU", "NIST"])
        assert 0.0 <= result["BLEU"] <= 1.0 and math.isfinite(result["NIST"]) and result["NIST"] >= 0.0

    run(
        prop,
        100 * scale,
        st.lists(st.tuples(st.lists(reference, min_size=1, max_size=3), hostile_output), min_size=1, max_size=6),
    )


def test_rouge_cider_never_crash(scale):
    """ROUGE_L and CIDEr themselves are pure Python on the tokenizer's output; any text stands in for it."""

    def prop(data: list[tuple[list[str], str]]) -> None:
        refs, hyps = [r for r, _ in data], [h for _, h in data]
        rouge, cider = coco.rouge_l(refs, hyps), coco.cider_d(refs, hyps)
        assert 0.0 <= rouge <= 1.0 and math.isfinite(cider) and cider >= 0.0

    run(
        prop,
        100 * scale,
        st.lists(
            st.tuples(st.lists(st.text(max_size=30), min_size=1, max_size=3), hostile_output), min_size=1, max_size=6
        ),
    )


def test_score_input_findings():
    """Findings: all-empty references raised a bare ValueError from NIST; a lone surrogate (text decoded with
    surrogateescape) raised UnicodeEncodeError when sent to the Java tokenizer."""
    with pytest.raises(EvalInputError, match="every reference is empty"):
        score([[""], ["  "]], ["a", "b"], ["NIST"])
    with pytest.raises(EvalInputError, match=r"output 1: not valid Unicode text"):
        score([["a"], ["b"]], ["a", "b\udcff"], ["ROUGE_L"])
    with pytest.raises(EvalInputError, match=r"reference of MR 0: not valid Unicode text"):
        score([["a\ud800"]], ["a"], ["BLEU"])


@needs_java
@pytest.mark.parametrize(
    "metrics",
    [
        pytest.param(["BLEU", "NIST", "ROUGE_L", "CIDEr"], id="tokenizer"),
        pytest.param(None, id="meteor", marks=pytest.mark.slow),  # METEOR's JVM: ~5 s idle, ~20 s on busy cores
    ],
)
def test_java_metrics_on_hostile_outputs(metrics):
    """Through the Java tokenizer (ROUGE_L, CIDEr) and METEOR: one example, as each call starts a JVM."""
    hyps = [
        "",
        "   ",
        "\u3000\xa0",
        "café 中文 😀 \x00 \x1c \u2028 \x85 x",
        "a ||| b  c",
        "word " * 500,
        "<skipped> &amp; \"quoted\" 'x'",
        "\ufeff\u200b",
        "-LRB- ( ) [ ] { }",
        "E2E\r\nline\rbreaks",
    ]
    refs = [["The Eagle is a pub.", "A pub: The Eagle."], ["Café Rouge serves £20-25 food."]] * 5
    result = score(refs, hyps, metrics)
    assert list(result) == (metrics or ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"])
    assert all(math.isfinite(v) and v >= 0 for v in result.values()), result
    assert all(result[k] <= 1 for k in ("BLEU", "METEOR", "ROUGE_L") if k in result), result
