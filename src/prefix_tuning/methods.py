"""What trains and what is stored, per method. Plain functions, no class hierarchy.

- `prefix`: the backbone is frozen; a `PrefixEncoder` trains; only the collapsed prefix is stored
  (`prefix.safetensors`, paper §4.3; `run.save_artifact` writes what a method keeps).
- `finetune`: every weight trains; the whole model is stored (`model.safetensors`).
- `finetune-top`: only the top `top_k_layers` transformer blocks train (embeddings, lower blocks, final
  norm and LM head stay frozen); the paper's FT-top2 baseline (Table 1). Stored like `finetune`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import MethodConfig, RunConfig
from .models import KVShape
from .prefix import PrefixEncoder, activations_of, prefix_inputs
from .recompute import training_cache


@dataclass
class Method:
    """A model set up for training with one method."""

    name: str
    model: nn.Module
    encoder: PrefixEncoder | None  # prefix methods only

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

    def forward(self, input_ids: Tensor, attention_mask: Tensor, dtype: torch.dtype | None = None,
                logits_to_keep: int = 0) -> Tensor:
        """Logits (B, T, V) for the real tokens, or of the last `logits_to_keep` positions (B, k, V).

        The LM head over a 50k vocabulary is a large part of a prefix step; the table part of a sequence
        needs no logits, so training keeps only the positions from the first target on."""
        if self.encoder is None:
            # no cache: nothing reuses it, and a block recomputed by gradient checkpointing would extend it twice
            kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        else:
            prefix = self.encoder()  # (L, 2, KV, P, D)
            # training: a cache that a recomputed block (gradient checkpointing) cannot extend twice
            cache = training_cache() if torch.is_grad_enabled() else None
            kw = prefix_inputs(prefix, input_ids, attention_mask, dtype=dtype, cache=cache)
        return self.model(**kw, logits_to_keep=logits_to_keep).logits


def top_blocks(model: nn.Module, k: int) -> list[nn.Module]:
    """The last k transformer blocks of a HF causal LM (GPT-2 `transformer.h`, Llama `model.layers`, ...)."""
    for mod in model.modules():
        for attr in ("h", "layers", "blocks"):
            blocks = getattr(mod, attr, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks) == KVShape.from_config(model.config).n_layers:
                return list(blocks)[-k:]
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def build_method(cfg: MethodConfig, model: nn.Module, tokenizer, *, seed: int) -> Method:
    """Prepare `model` for training with the configured method (freezing what must not train)."""
    if cfg.name == "prefix":
        model.requires_grad_(False)
        shape = KVShape.from_config(model.config)
        init = None
        length = cfg.prefix_length
        if cfg.init == "words":
            ids = torch.tensor([tokenizer.encode(cfg.init_text, add_special_tokens=False)])
            if length is not None and length != ids.shape[1]:
                raise ValueError(f"method.init=words: '{cfg.init_text}' is {ids.shape[1]} tokens, but "
                                 f"method.prefix_length={length}; set method.prefix_length={ids.shape[1]} or null")
            length = ids.shape[1]
            init = activations_of(model, ids.to(next(model.parameters()).device))
        torch.manual_seed(seed)
        enc = PrefixEncoder(shape, length, reparam=cfg.reparam, mlp_hidden=cfg.mlp_hidden, dropout=cfg.prefix_dropout)
        enc.to(next(model.parameters()).device)
        if init is not None:
            enc.init_from_activations(init, steps=cfg.init_steps)
        return Method(cfg.name, model, enc)
    if cfg.name == "finetune":
        model.requires_grad_(True)
        return Method(cfg.name, model, None)
    if cfg.name == "finetune-top":
        model.requires_grad_(False)
        for block in top_blocks(model, cfg.top_k_layers):
            block.requires_grad_(True)
        return Method(cfg.name, model, None)
    raise ValueError(f"unknown method {cfg.name!r}")


def stored_numel(cfg: RunConfig, model: nn.Module, prefix_length: int | None = None) -> int:
    """Parameters a user must keep per task: the collapsed prefix, or every weight of the model."""
    if cfg.method.name == "prefix":
        return KVShape.from_config(model.config).numel(prefix_length or cfg.method.prefix_length)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
