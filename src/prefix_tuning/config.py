"""Run configuration: dataclasses, YAML loading, dotted overrides and validation.

One `RunConfig` describes a whole run (model, data, method, training, decoding). It is loaded from YAML,
patched by `key=value` overrides from the command line, validated, and saved as `config.yaml` in the run
dir so that the run dir alone is enough to rebuild the model and decode (litgpt's habit).
Unknown keys fail loudly with the list of valid ones: a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from typing import Literal

import yaml

from .hardware import PRECISIONS


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


@dataclass
class ModelConfig:
    name: str = "gpt2-medium"
    """HF hub id, a local HF model folder, or an alias: `smollm2-135m` (offline GGUF from PyPI),
    `tiny-gpt2` / `tiny-llama` (tiny random models for tests)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for reproducibility; ignored for local folders and aliases."""


@dataclass
class DataConfig:
    dir: str | None = None
    """Folder holding `e2e/e2e-dataset.zip` (or its CSVs). None: $PREFIX_TUNING_DATA, then the user cache
    (downloading the official release when online)."""
    variant: str = "official"
    """`official` E2E (Novikova et al. 2017) or `cleaned` (Dusek et al. 2019)."""
    train_size: int | None = None
    """Low-data setting (paper §7.1): number of training examples sampled from train; None = all."""
    subset_seed: int = 0
    """Seed of the low-data sample (the paper averages 5 subsamples)."""
    dev_size: int | None = None
    """Dev examples used for the dev loss. None: all dev (or 30% of train_size in the low-data setting)."""
    max_length: int | None = 512
    """Longest training sequence in tokens (table + separator + reference + eos); longer ones are truncated."""
    on_error: str = "raise"
    """`raise` on the first malformed data row, or `skip` bad rows and report them."""
    ref_style: str = "raw"
    """`raw` references as in the CSVs, or `tokenized` as in the original code's data files (spaCy tokens
    joined by spaces, e.g. "is n't"; needs `pip install 'prefix-tuning[tokenized]'`)."""


@dataclass
class MethodConfig:
    name: str = "prefix"
    """`prefix` (Li & Liang 2021), `finetune` (all weights) or `finetune-top` (top `top_k_layers` blocks)."""
    prefix_length: int | None = 5
    """P, number of prefix positions per layer (paper appendix: 5 for E2E table-to-text)."""
    reparam: bool = True
    """Train through the MLP reparameterisation (paper §4.3); False trains the prefix directly."""
    mlp_hidden: int = 512
    """Width of the reparameterisation MLP (paper: 512)."""
    prefix_dropout: float = 0.0
    """Dropout on the produced prefix keys/values during training (original code option, default 0)."""
    init: str = "random"
    """`random`, or `words`: the frozen model's own keys/values of `init_text` (paper §7.2); then P is the
    number of tokens of `init_text` and `prefix_length` must be null or equal to it."""
    init_text: str = "table-to-text:"
    """Text whose activations initialise the prefix when init=words (paper §7.1 low-data setting)."""
    init_steps: int = 500
    """With reparam and init=words: Adam steps fitting the MLP output to the word activations (original
    code's `lowdata_init_train3`: 500 steps, lr 1e-4, MSE)."""
    backbone_dropout: bool = False
    """Keep the frozen model's dropout on during prefix training (the original turns it off)."""
    top_k_layers: int = 2
    """For `finetune-top`: how many of the top transformer blocks are trained (paper's FT-top2)."""


@dataclass
class TrainConfig:
    lr: float = 8e-5
    """Peak learning rate (paper appendix: prefix 8e-5, fine-tuning 5e-5)."""
    epochs: int = 5
    """Training epochs (paper: 5)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (low-data recipe uses step budgets); overrides epochs."""
    batch_size: int = 10
    """Examples per optimiser step, before accumulation (paper: 10)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimiser step; effective batch = batch_size (split into grad_accum)."""
    warmup_steps: int = 0
    """Linear warm-up steps before the linear decay (original code: 0)."""
    weight_decay: float = 0.0
    """AdamW weight decay (original code: 0)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping norm (original code: 1.0); None disables."""
    seed: int = 101
    """Seed for init, shuffling and dropout (original code: 101)."""
    precision: str = "auto"
    """`auto`: bf16 where the device computes it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp16 on
    CUDA without bf16, else fp32 (on an AVX2-only CPU bf16 is emulated and ~30x slower). Or `fp32`, `bf16`,
    `fp16` autocast. The precision used is stored in the run dir's config.yaml and result."""
    loss: str = "sentence_sum"
    """`sentence_sum`: per-sentence summed token loss averaged over the batch (original code), or
    `token_mean`: mean over all reference tokens in the batch."""
    eval_every_epoch: bool = True
    """Compute the dev loss after each epoch and keep the best weights as the run's output."""
    eval_steps: int | None = None
    """Also compute the dev loss every this many steps (useful with max_steps in the low-data setting)."""
    save_every: int = 200
    """Write a resumable checkpoint every this many steps and at the end. Full fine-tuning checkpoints
    hold the model and two AdamW moments (3x the model size), so not every epoch."""
    device: str = "auto"
    """`auto` (cuda if available), `cpu`, `cuda`, `cuda:1`, ..."""
    num_threads: int | None = None
    """torch CPU threads; None = the cores available to this process (CPU affinity and cgroup quota). Two
    runs sharing a machine are each faster with half the cores than both with all of them."""


@dataclass
class DecodeConfig:
    beam_size: int = 5
    """Beam width (Li & Liang decode E2E with beam 5); 1 = greedy."""
    max_new_tokens: int = 100
    """Longest generated text in tokens (original code: 100)."""
    min_new_tokens: int = 5
    """EOS is banned before this many tokens (original code: min length 5)."""
    length_penalty: float = 1.0
    """Beam score = sum log p / length**length_penalty (HF convention; original: 1.0)."""
    no_repeat_ngram_size: int = 0
    """Ban repeating n-grams of this size; 0 disables (original: off)."""
    ban_newlines: bool = True
    """Ban newline tokens (the original bans GPT-2 ids 198 and 628); found by decoding each vocab token."""
    batch_size: int = 16
    """MRs per decoding batch (results do not depend on it)."""
    precision: str = "auto"
    """`auto` (as train.precision: bf16 only where native, else fp32), `fp32`, `bf16` or `fp16` for decoding.
    bf16 outputs can depend on which rows share a batch; fp32 outputs do not."""
    num_threads: int | None = None
    """torch CPU threads for decoding; None = the cores available to this process."""
    early_stopping: bool | Literal["never"] = False
    """HF beam stopping rule: False = stop a row when no running beam can beat its K finished ones (HF's default, the original's), True = stop once K hypotheses finished, "never" = exhaustive bound."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    out_dir: str = "runs/default"
    """Run directory: config.yaml, prefix.safetensors or model.safetensors, log.jsonl, checkpoints/."""


_CHOICES: dict[str, tuple[str, ...]] = {
    "data.variant": ("official", "cleaned"),
    "data.on_error": ("raise", "skip"),
    "data.ref_style": ("raw", "tokenized"),
    "method.name": ("prefix", "finetune", "finetune-top"),
    "method.init": ("random", "words"),
    "train.precision": PRECISIONS,
    "train.loss": ("sentence_sum", "token_mean"),
    "decode.precision": PRECISIONS,
}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check (and mildly coerce) a YAML value against a dataclass field type."""
    text = str(typ)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {text})")
    if "bool" in text:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if "int" in text and "float" not in text:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if "float" in text:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "8e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if "str" in text:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [v.rsplit(".", 1)[-1] for v in valid], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(valid)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(prefix + str(key), [prefix + n for n in names])
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value or {}, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, typ, prefix + key)
    return cls(**kwargs)


def valid_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """All dotted keys of a config class, e.g. `train.lr`."""
    out = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += valid_keys(hints[f.name], prefix + f.name + ".")
        else:
            out.append(prefix + f.name)
    return out


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, data, "")
    validate(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML) to a nested dict, rejecting unknown keys."""
    valid = valid_keys()
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if key not in valid:
            raise _unknown(key, valid)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if node is None:
                node = data[p] = {}
        node[leaf] = value
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when path is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (model, data, method, train, decode)")
    try:
        return from_dict(apply_overrides(data, list(overrides)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def validate(cfg: RunConfig) -> None:
    """Reject impossible values and combinations before any work starts."""
    flat = {k: _get(cfg, k) for k in valid_keys()}
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{key}: '{flat[key]}' is not one of {', '.join(choices)}")
    positive = ["method.mlp_hidden", "train.batch_size", "train.grad_accum", "train.epochs",
                "decode.beam_size", "decode.max_new_tokens", "decode.batch_size", "train.save_every"]
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"{key}: must be >= 1, got {flat[key]}")
    for key in ["train.max_steps", "data.train_size", "data.dev_size", "train.eval_steps", "method.prefix_length"]:
        if flat[key] is not None and flat[key] < 1:
            raise ConfigError(f"{key}: must be >= 1 or null, got {flat[key]}")
    if flat["train.lr"] <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {flat['train.lr']}")
    if not 0.0 <= flat["method.prefix_dropout"] < 1.0:
        raise ConfigError("method.prefix_dropout: must be in [0, 1)")
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by train.grad_accum "
                          f"({cfg.train.grad_accum})")
    if cfg.method.name == "prefix" and cfg.method.init == "random" and cfg.method.prefix_length is None:
        raise ConfigError("method.prefix_length: required for a randomly initialised prefix")
    if cfg.decode.min_new_tokens > cfg.decode.max_new_tokens:
        raise ConfigError("decode.min_new_tokens must not exceed decode.max_new_tokens")
    if cfg.method.name == "finetune-top" and cfg.method.top_k_layers < 1:
        raise ConfigError("method.top_k_layers: must be >= 1")


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (a crash never leaves half a config.yaml)."""
    from .checkpoint import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
