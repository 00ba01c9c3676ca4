"""Configs: every shipped YAML loads; wrong keys and values fail loudly; overrides; round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefix_tuning.cli import main
from prefix_tuning.config import ConfigError, load_config, save_config, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"e2e_prefix_gpt2-medium.yaml", "e2e_finetune_gpt2-medium.yaml", "tiny_prefix.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.out_dir


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


@pytest.mark.parametrize("override,match", [
    ("train.lr=fast", "expected a number"),
    ("train.batch_size=0", ">= 1"),
    ("method.name=lora", "not one of"),
    ("train.precision=int8", "not one of"),
    ("train.batch_size=10", None),
    ("train.grad_accum=3", "divisible"),
    ("noequals", "key=value"),
])
def test_bad_values(override, match):
    if match is None:
        assert load_config(None, [override]).train.batch_size == 10
        return
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_override_and_round_trip(tmp_path):
    cfg = load_config(CONFIGS[0].parent / "tiny_prefix.yaml", ["train.lr=3e-4", "method.prefix_length=7",
                                                                "train.max_steps=null"])
    assert cfg.train.lr == 3e-4 and cfg.method.prefix_length == 7 and cfg.train.max_steps is None
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(cfg)


def test_cli_train_rejects_typo(capsys):
    assert main(["train", "defaults", "train.lrr=1"]) == 2
    assert "Did you mean 'lr'" in capsys.readouterr().err


def test_cli_print_config(capsys):
    assert main(["train", "defaults", "--print-config", "method.prefix_length=10"]) == 0
    assert "prefix_length: 10" in capsys.readouterr().out
