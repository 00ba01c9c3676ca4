"""Decoding caches: an empty DynamicCache laid out for a model, and a faster layer for beam search.

For models whose layers all use full attention, `new_cache(model, capacity)` gives `GrowingLayer`s: appends go
in place into preallocated room and beam reorders into a second reused buffer, so a search step copies the
cache once (the reorder) where transformers' DynamicLayer copies it twice (concatenate, then reorder) and
allocates. Every other layer type (e.g. sliding-window) is left as the model's config asks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends in place into spare capacity and reorders rows into a second, reused
    buffer: per step one copy of the cache (the beam reorder) instead of two (concatenate + reorder) and no
    allocation. `keys`/`values` stay (B, KV, S, D) views, as HF code expects."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._buf: list[tuple[Tensor, Tensor] | None] = [None, None]
        self._cur = 0

    def _room(self, which: int, like: Tensor, rows: int, length: int) -> tuple[Tensor, Tensor]:
        buf = self._buf[which]
        if buf is None or buf[0].shape[0] < rows or buf[0].shape[2] < length or buf[0].dtype != like.dtype:
            cap = max(length, self.capacity)
            shape = (rows, like.shape[1], cap, like.shape[3])
            buf = (like.new_empty(shape), like.new_empty(shape))
            self._buf[which] = buf
        return buf

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add, rows = self.get_seq_length(), key_states.shape[-2], key_states.shape[0]
        old = (self.keys, self.values) if n else None
        k, v = self._room(self._cur, key_states, rows, n + add)
        if old is not None and old[0].data_ptr() != k.data_ptr():  # reallocated: move what we hold
            k[:rows, :, :n], v[:rows, :, :n] = old
        k[:rows, :, n : n + add] = key_states
        v[:rows, :, n : n + add] = value_states
        self.keys, self.values = k[:rows, :, : n + add], v[:rows, :, : n + add]
        return self.keys, self.values

    def reorder_cache(self, beam_idx: Tensor) -> None:
        n = self.get_seq_length()
        if n == 0:
            return
        rows = beam_idx.shape[0]
        k, v = self._room(1 - self._cur, self.keys, rows, n)
        beam_idx = beam_idx.to(self.keys.device)
        torch.index_select(self.keys, 0, beam_idx, out=k[:rows, :, :n])
        torch.index_select(self.values, 0, beam_idx, out=v[:rows, :, :n])
        self._cur = 1 - self._cur
        self.keys, self.values = k[:rows, :, :n], v[:rows, :, :n]

    def batch_select_indices(self, indices: Tensor) -> None:
        self.reorder_cache(torch.as_tensor(indices, device=self.keys.device).flatten())

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.reorder_cache(torch.arange(self.keys.shape[0], device=self.keys.device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # leaves views shorter; the next update writes after them


def new_cache(model: nn.Module, capacity: int | None = None) -> DynamicCache:
    """An empty DynamicCache laid out for `model`. With `capacity` (tokens the search will hold at most) and a
    model whose layers all use full attention, its layers are `GrowingLayer`s; otherwise the layers the
    config asks for (e.g. sliding-window ones)."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config that DynamicCache cannot read: lazily created full-attention layers
        cache = DynamicCache()
    if capacity is not None:
        if not cache.layers and cache.layer_class_to_replicate is DynamicLayer:
            cache.layer_class_to_replicate = lambda: GrowingLayer(capacity)
        elif cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
            cache.layers = [GrowingLayer(capacity) for _ in cache.layers]
    return cache
