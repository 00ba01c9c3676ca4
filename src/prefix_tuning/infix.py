"""Infix (§7.3): the trainable activations sit inside the sequence, `[x; INFIX; y]`, instead of before it.

Layout: x = the start tokens and the table, y = the separator and the reference: the infix goes right before the
separator token, so that the first token that reads it (the separator) predicts the reference's first token,
exactly where prefix-tuning's separator predicts it. Placing it after the separator would leave the first
reference token unconditioned on the infix: activations have no output of their own to predict from.

How it runs, for training and decoding alike: the frozen model's keys/values of x (positions 0..X-1) followed
by the infix (positions X..X+P-1) form a per-row prefix of length X+P (`prefix.prefix_inputs` left-pads rows of
different lengths), and y runs after it at positions X+P..: so the beam search of prefix runs decodes infix runs
unchanged, with prompt [separator] (`infix_prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from .prefix import cache_layers, prefix_inputs
from .recompute import training_cache


@torch.no_grad()
def context_activations(model: nn.Module, xs: Sequence[Sequence[int]]) -> list[Tensor]:
    """The frozen model's keys/values of each token sequence, one batched forward: B x (L, 2, KV, X_i, D)."""
    device = next(model.parameters()).device
    X = max(len(x) for x in xs)
    ids = torch.zeros(len(xs), X, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(xs):  # left-padded: every row's real tokens end at X
        ids[i, X - len(x) :] = torch.tensor(list(x), device=device)
        mask[i, X - len(x) :] = 1
    cache = DynamicCache()
    model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    kv = torch.stack([torch.stack([k, v], 1) for k, v in cache_layers(cache)], 1)  # (B, L, 2, KV, X, D)
    return [kv[i, ..., X - len(x) :, :] for i, x in enumerate(xs)]


def infix_prompts(
    model: nn.Module, prompts: Sequence[Sequence[int]], infix: Tensor | Sequence[Tensor], chunk: int = 64
) -> tuple[list[Tensor], list[list[int]]]:
    """Per-row prefixes [x activations; infix] (L, 2, KV, X_i + P, D) and prompts [separator] for decoding
    prompts `x + [separator]` (`data.encode_prompt`). infix: one (L, 2, KV, P, D) or one per row."""
    rows = [infix] * len(prompts) if isinstance(infix, Tensor) else list(infix)
    xs = [p[:-1] for p in prompts]
    ctx = [c for i in range(0, len(xs), chunk) for c in context_activations(model, xs[i : i + chunk])]
    return [torch.cat([c.to(f.dtype), f], dim=-2) for c, f in zip(ctx, rows)], [list(p[-1:]) for p in prompts]


def separator_positions(input_ids: Tensor, sep_id: int) -> Tensor:
    """Index (B,) of each row's separator: its first `sep_id` after position 0 (a start token may equal it)."""
    hits = input_ids[:, 1:] == sep_id
    if not bool(hits.any(1).all()):
        raise ValueError("infix: a training sequence has no separator token")
    return hits.int().argmax(1) + 1


def infix_logits(
    model: nn.Module,
    infix: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    sep_id: int,
    *,
    dtype: torch.dtype | None = None,
    logits_to_keep: int = 0,
) -> Tensor:
    """Logits of right-padded training sequences x + y (B, T) with the infix before each row's separator, laid out
    like the model's own logits over (B, T) (last `logits_to_keep` positions, or all). Positions before the
    separator (the table, which carries no loss) get values of no meaning."""
    B, T = input_ids.shape
    sep = separator_positions(input_ids, sep_id)  # (B,)
    lengths = attention_mask.sum(1)
    rows = input_ids.tolist()
    prefixes = [
        torch.cat([c.to(infix.dtype), infix], dim=-2)
        for c in context_activations(model, [r[:s] for r, s in zip(rows, sep.tolist())])
    ]
    Y = int((lengths - sep).max())
    y_ids = torch.zeros(B, Y, dtype=torch.long, device=input_ids.device)
    y_mask = torch.zeros_like(y_ids)
    for i, (s, n) in enumerate(zip(sep.tolist(), lengths.tolist())):
        y_ids[i, : n - s] = input_ids[i, s:n]
        y_mask[i, : n - s] = 1
    # training: a cache that a block recomputed by gradient checkpointing cannot extend twice
    cache = training_cache() if torch.is_grad_enabled() else None
    logits = model(**prefix_inputs(prefixes, y_ids, y_mask, dtype=dtype, cache=cache)).logits  # (B, Y, V)
    k = logits_to_keep or T
    j = (torch.arange(T - k, T, device=input_ids.device)[None] - sep[:, None]).clamp(0, Y - 1)  # (B, k)
    return logits.gather(1, j[..., None].expand(-1, -1, logits.shape[-1]))  # (B, k, V)
