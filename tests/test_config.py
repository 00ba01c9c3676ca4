"""Configs: every shipped YAML loads; wrong keys and values fail loudly; overrides; round trip."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import yaml

from prefix_tuning.cli import main
from prefix_tuning.cli_options import add_config_options, field_docs
from prefix_tuning.config import ConfigError, DataConfig, DecodeConfig, RunConfig, TrainConfig, valid_keys
from prefix_tuning.configfile import _coerce, load_config, save_config, to_dict
from prefix_tuning.e2e import VARIANTS
from prefix_tuning.hardware import PRECISIONS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {
        "e2e_prefix_gpt2-medium.yaml",
        "e2e_finetune_gpt2-medium.yaml",
        "tiny_prefix.yaml",
        "e2e_finetune-top2_gpt2-medium.yaml",
        "e2e_adapter-3%_gpt2-medium.yaml",
        "e2e_adapter-0.1%_gpt2-medium.yaml",
        "e2e_lora_gpt2-medium.yaml",
    } <= names  # every Table 1 row


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    """Every value written in the file arrives in the config (none dropped or mangled), and each config
    writes to its own run dir rather than the default one."""
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    loaded = to_dict(load_config(path))
    for section, values in written.items():
        if isinstance(values, dict):
            assert {k: loaded[section][k] for k in values} == values, section
        else:
            assert loaded[section] == values, section
    assert loaded["out_dir"] == f"runs/{path.stem}"


def test_defaults_are_the_papers():
    """The defaults alone give the paper's prefix-tuning recipe (Li & Liang 2021 appendix) and the original
    code's training and decoding settings; a changed default must show up here."""
    d = to_dict(RunConfig())
    assert d["model"] == {"name": "gpt2-medium", "revision": None}
    assert d["method"] == {
        "name": "prefix",
        "prefix_length": 5,
        "reparam": True,
        "mlp_hidden": 512,
        "prefix_dropout": 0.0,
        "init": "random",
        "init_text": "table-to-text:",
        "init_steps": 500,
        "backbone_dropout": False,
        "top_k_layers": 2,
        "embedding_only": False,
        "position": "prefix",
        "adapter_bottleneck": None,
        "adapter_fraction": 0.03,
        "lora_rank": 4,
        "lora_alpha": 32.0,
        "lora_dropout": 0.1,
    }
    assert {
        k: d["train"][k]
        for k in [
            "lr",
            "epochs",
            "batch_size",
            "grad_accum",
            "warmup_steps",
            "weight_decay",
            "max_grad_norm",
            "seed",
            "loss",
            "precision",
        ]
    } == {
        "lr": 8e-5,
        "epochs": 5,
        "batch_size": 10,
        "grad_accum": 1,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": 101,
        "loss": "sentence_sum",
        "precision": "auto",
    }
    assert {
        k: d["decode"][k]
        for k in [
            "beam_size",
            "max_new_tokens",
            "min_new_tokens",
            "length_penalty",
            "no_repeat_ngram_size",
            "ban_newlines",
            "early_stopping",
        ]
    } == {
        "beam_size": 5,
        "max_new_tokens": 100,
        "min_new_tokens": 5,
        "length_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "ban_newlines": True,
        "early_stopping": False,
    }
    assert d["decode"]["early_stopping"] is False  # not 0: the type is bool | "never"
    assert to_dict(load_config(None)) == d


def test_paper_recipes():
    """Li & Liang 2021 appendix: prefix lr 8e-5, FT lr 5e-5, 5 epochs, batch 10, prefix length 5."""
    p = load_config(CONFIGS[0].parent / "e2e_prefix_gpt2-medium.yaml")
    f = load_config(CONFIGS[0].parent / "e2e_finetune_gpt2-medium.yaml")
    assert (p.train.lr, p.train.epochs, p.train.batch_size, p.method.prefix_length) == (8e-5, 5, 10, 5)
    assert (f.train.lr, f.train.epochs, f.train.batch_size, f.method.name) == (5e-5, 5, 10, "finetune")
    assert p.method.reparam and p.method.mlp_hidden == 512 and not p.method.backbone_dropout


def test_unknown_key_lists_valid_ones(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.learning_rate'.*Valid keys: .*train\.lr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="Did you mean 'prefix_length'"):
        load_config(None, ["method.prefix_lenght=10"])


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lr=fast", "expected a number"),
        ("train.batch_size=0", ">= 1"),
        ("train.patience=0", "train.patience: must be >= 1 or null"),
        ("method.name=bitfit", "not one of"),
        ("method.lora_dropout=1.0", "lora_dropout"),
        ("method.lora_rank=0", "lora_rank"),
        ("method.adapter_fraction=1.5", "adapter_fraction"),
        ("method.adapter_bottleneck=0", "adapter_bottleneck"),
        ("method.embedding_only=true method.name=lora", "embedding_only"),
        ("method.position=infix method.embedding_only=true", "position=infix"),
        ("method.position=suffix", "not one of"),
        ("train.precision=int8", "not one of"),
        ("train.batch_size=20", None),
        ("train.grad_accum=3", "divisible"),
        ("noequals", "key=value"),
    ],
)
def test_bad_values(override, match):
    if match is None:
        assert load_config(None, [override]).train.batch_size == 20  # not the default (10): it arrived
        return
    with pytest.raises(ConfigError, match=match):
        load_config(None, override.split())  # several overrides separated by spaces


def test_override_and_round_trip(tmp_path):
    cfg = load_config(
        CONFIGS[0].parent / "tiny_prefix.yaml", ["train.lr=3e-4", "method.prefix_length=7", "train.max_steps=null"]
    )
    assert cfg.train.lr == 3e-4 and cfg.method.prefix_length == 7 and cfg.train.max_steps is None
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)


def test_cli_train_rejects_typo(capsys):
    assert main(["train", "defaults", "train.lrr=1"]) == 2
    assert "Did you mean 'lr'" in capsys.readouterr().err


def test_cli_print_config(capsys):
    assert main(["train", "defaults", "--print-config", "method.prefix_length=10"]) == 0
    assert "prefix_length: 10" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.lr=8e-5", 8e-5),  # YAML 1.1 reads 8e-5 as a string
        ("train.lr='1e-3'", 1e-3),
        ("train.lr=1", 1.0),
        ("train.epochs=3.0", 3),
        ("train.max_steps=null", None),
        ("model.name=123", "123"),
        ("data.variant=cleaned", "cleaned"),
        ("train.precision=bf16", "bf16"),
        ("decode.early_stopping=never", "never"),
        ("decode.early_stopping=true", True),
        ("decode.early_stopping=false", False),
    ],
)
def test_types_come_from_annotations(override, expected):
    key = override.split("=")[0]
    section, name = key.split(".")
    value = getattr(getattr(load_config(None, [override]), section), name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epochs=3.5", "train.epochs: expected an integer, got 3.5"),
        ("train.epochs=true", "train.epochs: expected an integer, got True"),
        ("train.epochs=null", "train.epochs: null is not allowed; expected an integer"),
        ("train.max_steps=many", "train.max_steps: expected an integer or null, got 'many'"),
        ("method.reparam=1", "method.reparam: expected true/false, got 1"),
        ("train.lr=.inf", "train.lr: expected a number, got inf"),
        ("train.lr=.nan", "train.lr: expected a number, got nan"),
        ("model.name=[a]", r"model.name: expected a string, got \['a'\]"),
        ("data.variant=Cleaned", "data.variant: 'Cleaned' is not one of official, cleaned"),
        ("decode.precision=16", "decode.precision: 16 is not one of auto, fp32, bf16, fp16"),
        ("decode.early_stopping=sometimes", "decode.early_stopping: expected true/false or 'never', got 'sometimes'"),
        ("decode.early_stopping=1", "decode.early_stopping: expected true/false or 'never', got 1"),
        ("decode.min_new_tokens=-1", "decode.min_new_tokens: must be >= 0"),
        ("train.max_grad_norm=0", "train.max_grad_norm: must be > 0"),
        ("train.lr=[", "override 'train.lr=\\[': the value is not valid YAML"),
        ("train.lr=2001-02-30", "override 'train.lr=2001-02-30': the value is not valid YAML"),
    ],
)
def test_wrong_types_name_key_expected_and_got(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_every_field_type_is_understood():
    """Each field's default passes its own annotation (a type _coerce cannot read raises TypeError)."""
    for key in valid_keys():
        section, name = key.split(".") if "." in key else ("", key)
        cls = type(getattr(RunConfig(), section)) if section else RunConfig
        default = getattr(cls(), name)
        assert _coerce(default, get_type_hints(cls)[name], key) == default, key


def test_choices_have_one_definition():
    hints = {cls: get_type_hints(cls) for cls in (TrainConfig, DecodeConfig, DataConfig)}
    assert get_args(hints[TrainConfig]["precision"]) == get_args(hints[DecodeConfig]["precision"]) == PRECISIONS
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    assert get_args(hints[DataConfig]["variant"]) == VARIANTS == ("official", "cleaned")


def test_file_errors_name_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: x\ntrain:\n  epochs: 2\n  lr: fast\n")
    with pytest.raises(ConfigError, match=rf"^{path}:5: train.lr: expected a number, got 'fast'$"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"^{path}: train.lr: expected a number, got 'slow'$"):
        load_config(path, ["train.lr=slow"])  # the override, not the file, is at fault: no line
    path.write_text("train:\n  grad_accum: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: train.batch_size \(10\) must be divisible"):
        load_config(path)
    path.write_text("train:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 2.0e-4\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: duplicate key 'train.lr' \(first on line 2\)"):
        load_config(path)
    path.write_text("decode:\n  beam_size: 2\n  seed: 2001-02-30\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: invalid YAML value '2001-02-30'"):
        load_config(path)
    path.write_bytes(b"model:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: not valid UTF-8 \(byte 0xe9\)"):
        load_config(path)
    path.write_text("train:\n  lr: 1\x00\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: invalid YAML \(unacceptable character #x0000"):
        load_config(path)
    path.write_text("base: &b {lr: 1.0e-4}\ntrain:\n  <<: *b\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}:1: unknown config key 'base'"):
        load_config(path)
    path.write_text("train: &t\n  epochs: 2\ndecode: *t\n")  # an alias: decode.epochs is on line 2
    with pytest.raises(ConfigError, match=rf"^{path}:2: unknown config key 'decode.epochs'"):
        load_config(path)


def test_config_options_follow_the_dataclass():
    """`generate`'s decoding options are made from DecodeConfig: one per field, help = the field's docstring and
    default, bools as --x/--no-x, `bool | Literal` as choices; nothing typed -> None (the run's config wins)."""
    p = argparse.ArgumentParser()
    add_config_options(p, DecodeConfig, {"num_threads": ["--threads"]})
    docs = field_docs(DecodeConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(DecodeConfig)}  # every field documented
    helps = {a.dest: a.help for a in p._actions if a.dest != "help"}
    assert set(helps) == set(docs)
    assert all(h.startswith(docs[k][:30].replace("%", "%%")) and "(new config: " in h for k, h in helps.items())
    assert vars(p.parse_args([])) == dict.fromkeys(docs)
    args = p.parse_args(["--beam-size", "3", "--no-ban-newlines", "--early-stopping", "never", "--threads", "2"])
    assert (args.beam_size, args.ban_newlines, args.early_stopping, args.num_threads) == (3, False, "never", 2)
    assert p.parse_args(["--early-stopping", "TRUE"]).early_stopping is True
    with pytest.raises(SystemExit):  # not one of the Literal's choices
        p.parse_args(["--early-stopping", "sometimes"])
    with pytest.raises(SystemExit):  # wrong type
        p.parse_args(["--beam-size", "three"])
