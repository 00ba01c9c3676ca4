"""Tiny test models shared by the decoding, engine and server tests."""

from __future__ import annotations

import torch
from torch import nn

from prefix_tuning.models import KVShape, build_tiny

EOS = 50256  # GPT-2's <|endoftext|>, the tiny models' EOS
# EOS-row scale per model: chosen so that outputs end anywhere between 2 and 20 tokens
EOS_SCALE = {"tiny-gpt2": 1.0, "tiny-llama": 2.5}


def eos_model(name: str) -> nn.Module:
    """The tiny model with a random EOS row in the LM head, so rows end (and leave a batch) at different steps."""
    model = build_tiny(name)
    head = model.get_output_embeddings()
    g = torch.Generator().manual_seed(7)
    w = head.weight.detach().clone() * 3.0
    w[EOS] = torch.randn(w.shape[1], generator=g) * EOS_SCALE[name]
    head.weight = nn.Parameter(w, requires_grad=False)
    return model.eval()


def random_prefix(model: nn.Module, length: int = 5, seed: int = 0) -> torch.Tensor:
    """A random (L, 2, KV, P, D) prefix for `model`."""
    s = KVShape.from_config(model.config)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s.n_layers, 2, s.n_kv_heads, length, s.head_dim, generator=g)
