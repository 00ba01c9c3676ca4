"""Hostile input: the config loader raises only `ConfigError` naming file and line; metrics never crash.

`EvalInputError` is the only error `score` raises on bad input. Same strategies and `scale` as
`test_hostile.py`; each crash found is pinned as a plain example, with the error it used to be.
"""

from __future__ import annotations

import math
import re

import pytest
from hostile import hostile_bytes, line_of, needs_java, piece, repeated, run
from hypothesis import strategies as st

from prefix_tuning.config import ConfigError, RunConfig
from prefix_tuning.configfile import load_config, save_config, to_dict
from prefix_tuning.metrics import EvalInputError, coco, score

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
