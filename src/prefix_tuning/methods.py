"""What trains and what is stored, per method. Plain functions, no class hierarchy.

- `prefix`: the backbone is frozen; a `PrefixEncoder` trains; only the collapsed prefix is stored
  (`prefix.safetensors`, paper §4.3; `run.save_artifact` writes what a method keeps).
- `prefix` with `embedding_only` (§7.2): P trainable input embeddings (`PromptEmbedding`) before the tokens;
  the frozen model's keys/values of them are the prefix (`embedding_activations`), so training and decoding
  run exactly the prefix path. Stored: the (P, d) embeddings.
- `prefix` with `position: infix` (§7.3): the same encoder, its activations placed before the separator
  (`infix.py`); stored like a prefix, as `infix.safetensors`.
- `finetune`: every weight trains; the whole model is stored (`model.safetensors`).
- `finetune-top`: only the top `top_k_layers` transformer blocks train (embeddings, lower blocks, final
  norm and LM head stay frozen); the paper's FT-top2 baseline (Table 1). Stored: those blocks only.
- `adapter` / `lora` (Table 1 baselines; `adapter.py`, `lora.py`): the model is frozen, then the method's
  modules are added to it (seeded); they alone train and are stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapter import IS_ADAPTER, add_adapters, bottleneck_for_fraction, transformer_blocks
from .config import MethodConfig, RunConfig
from .data import eos_id_of
from .infix import infix_logits
from .lora import IS_LORA, add_lora
from .models import KVShape
from .prefix import PrefixEncoder, PromptEmbedding, activations_of, embedding_activations, prefix_inputs
from .recompute import training_cache
from .state import Select


@dataclass
class Method:
    """A model set up for training with one method."""

    name: str
    model: nn.Module
    encoder: PrefixEncoder | PromptEmbedding | None  # prefix methods only
    stored: Select | None = None  # methods that keep part of the model: its state-dict keys
    infix_sep: int | None = None  # infix runs: the separator token id, before which the activations go

    @property
    def embedding_only(self) -> bool:
        return isinstance(self.encoder, PromptEmbedding)

    def trainable(self) -> list[nn.Parameter]:
        mod = self.encoder if self.encoder is not None else self.model
        return [p for p in mod.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        """What a resumable checkpoint must hold."""
        if self.encoder is not None:
            return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in names}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        target = self.encoder if self.encoder is not None else self.model
        missing, unexpected = target.load_state_dict(state, strict=self.encoder is not None)
        if unexpected:
            raise ValueError(f"checkpoint has unexpected keys: {unexpected[:5]}")

    def train_mode(self, backbone_dropout: bool) -> None:
        if self.encoder is not None:
            self.model.train(backbone_dropout)  # original code: GPT-2 dropout off for prefix-tuning
            self.encoder.train()
        else:
            self.model.train()

    def eval_mode(self) -> None:
        self.model.eval()
        if self.encoder is not None:
            self.encoder.eval()

    def prefix(self) -> Tensor:
        """The (L, 2, KV, P, D) activations the tokens run after (prefix methods)."""
        out = self.encoder()
        return embedding_activations(self.model, out) if self.embedding_only else out

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, dtype: torch.dtype | None = None, logits_to_keep: int = 0
    ) -> Tensor:
        """Logits (B, T, V) for the real tokens, or of the last `logits_to_keep` positions (B, k, V).

        The LM head over a 50k vocabulary is a large part of a prefix step; the table part of a sequence
        needs no logits, so training keeps only the positions from the first target on."""
        if self.infix_sep is not None:
            return infix_logits(
                self.model,
                self.prefix(),
                input_ids,
                attention_mask,
                self.infix_sep,
                dtype=dtype,
                logits_to_keep=logits_to_keep,
            )
        if self.encoder is None:
            # no cache: nothing reuses it, and a block recomputed by gradient checkpointing would extend it twice
            kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        else:
            # training: a cache that a recomputed block (gradient checkpointing) cannot extend twice
            cache = training_cache() if torch.is_grad_enabled() else None
            kw = prefix_inputs(self.prefix(), input_ids, attention_mask, dtype=dtype, cache=cache)
        return self.model(**kw, logits_to_keep=logits_to_keep).logits


def top_blocks(model: nn.Module, k: int) -> list[nn.Module]:
    """The last k transformer blocks of a HF causal LM (GPT-2 `transformer.h`, Llama `model.layers`, ...)."""
    return list(transformer_blocks(model))[-k:]


def _word_ids(cfg: MethodConfig, tokenizer, device: torch.device) -> Tensor:
    """(1, P) ids of `init_text`, checked against `prefix_length`."""
    ids = torch.tensor([tokenizer.encode(cfg.init_text, add_special_tokens=False)], device=device)
    if cfg.prefix_length is not None and cfg.prefix_length != ids.shape[1]:
        raise ValueError(
            f"method.init=words: '{cfg.init_text}' is {ids.shape[1]} tokens, but "
            f"method.prefix_length={cfg.prefix_length}; set method.prefix_length={ids.shape[1]} or null"
        )
    return ids


def _prefix_method(cfg: MethodConfig, model: nn.Module, tokenizer, seed: int) -> Method:
    device = next(model.parameters()).device
    ids = _word_ids(cfg, tokenizer, device) if cfg.init == "words" else None
    length = ids.shape[1] if ids is not None else cfg.prefix_length
    if cfg.embedding_only:  # §7.2: words init = the words' own input embeddings
        embed = model.get_input_embeddings()
        torch.manual_seed(seed)
        enc = PromptEmbedding(
            length,
            embed.weight.shape[1],
            reparam=cfg.reparam,
            mlp_hidden=cfg.mlp_hidden,
            std=float(embed.weight.detach().float().std()),
        ).to(device)
        if ids is not None:
            enc.init_from_embeddings(embed(ids)[0], steps=cfg.init_steps)
        return Method(cfg.name, model, enc)
    init = activations_of(model, ids) if ids is not None else None
    torch.manual_seed(seed)
    enc = PrefixEncoder(
        KVShape.from_config(model.config),
        length,
        reparam=cfg.reparam,
        mlp_hidden=cfg.mlp_hidden,
        dropout=cfg.prefix_dropout,
    ).to(device)
    if init is not None:
        enc.init_from_activations(init, steps=cfg.init_steps)
    return Method(cfg.name, model, enc, infix_sep=eos_id_of(tokenizer) if cfg.position == "infix" else None)


def _added_modules(cfg: MethodConfig, model: nn.Module) -> Select:
    """Add the adapters or LoRA of `cfg` to `model`; which keys they have."""
    if cfg.name == "adapter":
        add_adapters(model, cfg.adapter_bottleneck or bottleneck_for_fraction(model, cfg.adapter_fraction))
        return IS_ADAPTER
    add_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    return IS_LORA


def build_method(cfg: MethodConfig, model: nn.Module, tokenizer, *, seed: int) -> Method:
    """Prepare `model` for training with the configured method (freezing what must not train)."""
    if cfg.name == "prefix":
        model.requires_grad_(False)
        return _prefix_method(cfg, model, tokenizer, seed)
    if cfg.name == "finetune":
        model.requires_grad_(True)
        return Method(cfg.name, model, None)
    model.requires_grad_(False)
    if cfg.name == "finetune-top":
        for block in top_blocks(model, cfg.top_k_layers):
            block.requires_grad_(True)
        names = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
        return Method(cfg.name, model, None, stored=names.__contains__)
    if cfg.name in ("adapter", "lora"):
        torch.manual_seed(seed)  # the new modules' init depends on the seed only
        return Method(cfg.name, model, None, stored=_added_modules(cfg, model))
    raise ValueError(f"unknown method {cfg.name!r}")


def _numel(params: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


STORED: dict[str, Callable[[MethodConfig, nn.Module], int]] = {
    "finetune": lambda cfg, model: _numel(list(model.parameters())),
    "finetune-top": lambda cfg, model: _numel([p for b in top_blocks(model, cfg.top_k_layers) for p in b.parameters()]),
    "adapter": lambda cfg, model: _numel([p for n, p in model.named_parameters() if IS_ADAPTER(n)]),
    "lora": lambda cfg, model: _numel([p for n, p in model.named_parameters() if IS_LORA(n)]),
}
"""Values a user keeps per task, for the methods that store (part of) the model; `model` is the trained one."""


def stored_numel(cfg: RunConfig, model: nn.Module, prefix_length: int | None = None) -> int:
    """Parameters a user must keep per task: the collapsed prefix (or prompt embeddings), or the stored part of
    the model."""
    m = cfg.method
    if m.name == "prefix":
        P = prefix_length or m.prefix_length
        return (
            P * model.config.get_text_config().hidden_size
            if m.embedding_only
            else KVShape.from_config(model.config).numel(P)
        )
    return STORED[m.name](m, model)
