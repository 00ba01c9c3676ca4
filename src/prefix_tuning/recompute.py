"""Gradient checkpointing that keeps the prefix: recompute each transformer block in the backward pass.

Why not `model.gradient_checkpointing_enable()`: under it, transformers drops the cache passed to a training
forward (GPT2Model hands `cache=None` to checkpointed blocks, and `GradientCheckpointingLayer` does the same
unless a layer declares `_can_checkpoint_with_cache`), so the prefix would vanish; it also only acts in
`model.train()`, while prefix-tuning trains with the frozen backbone in eval mode (dropout off, as the
original). And a normal cache layer is extended in place by each forward, so a recomputed block would append
its keys/values a second time (PEFT refuses prefix-tuning + checkpointing for these reasons, peft#869).

So, for training:
- `training_cache()`: a cache whose layers store the prefix once (the first `update`, from `build_cache`) and
  then answer every `update(k, v)` with `(cat(prefix_k, k), cat(prefix_v, v))` without storing anything, so
  running a block twice gives the same result (a pure function of its inputs);
- `enable_checkpointing(model)`: wraps the `forward` of each transformer block instance with
  `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` whenever gradients are being recorded, leaving
  HF's flag off so the cache reaches the blocks. The same wrapper serves fine-tuning (no cache there).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .models import KVShape


class PrefixLayer(DynamicLayer):
    """A cache layer that holds only the prefix: the first `update` stores it, later ones return the prefix
    followed by the new keys/values and store nothing (idempotent under recomputation)."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:  # build_cache filling in the prefix (B, KV, P, D)
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        # (B, KV, P + T, D): a new tensor each call; the cache itself stays the prefix
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def training_cache() -> DynamicCache:
    """An empty cache of `PrefixLayer`s, for `prefix_inputs(..., cache=training_cache())` in a training step.
    Not for decoding: generated tokens would not be kept."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = PrefixLayer  # layers created lazily, as kvcache.new_cache does
    return cache


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every transformer block of a HF causal LM (GPT-2 `transformer.h`, Llama `model.layers`, ...)."""
    n_layers = KVShape.from_config(model.config).n_layers
    for mod in model.modules():
        for attr in ("h", "layers", "blocks"):
            blocks = getattr(mod, attr, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks) == n_layers:
                return list(blocks)
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():  # dev loss, decoding: nothing to recompute
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    run.recomputes = True
    return run


def enable_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer block of `model` in the backward pass instead of keeping its activations.
    Installed on the block instances (their `forward`), idempotent; returns the number of blocks wrapped."""
    blocks = transformer_blocks(model)
    for block in blocks:
        if not getattr(block.forward, "recomputes", False):
            block.forward = _checkpointed(block.forward)
    return len(blocks)
