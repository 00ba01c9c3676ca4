"""LoRA baseline (Hu et al. 2021): a trainable low-rank update B A on frozen query and value projections.

    q = W_q x + (alpha / r) B_q A_q dropout(x),  likewise v;  A: (r, d_in), B: (d_out, r)

Setting of the LoRA paper's E2E experiments on GPT-2 (§5.5 and Table 11; github.com/microsoft/LoRA,
`examples/NLG/src/model.py` and `loralib/layers.py`): rank 4, alpha 32, dropout 0.1 on the LoRA input, on the
query and value projections only. GPT-2 computes q, k, v with ONE fused Conv1D `c_attn` (d -> 3d); the
reference wraps it in `MergedLinear(enable_lora=[True, False, True], fan_in_fan_out=True)`: separate (A, B)
pairs for the q and v thirds of the output, none for k. Init as `MergedLinear.reset_parameters`: A like
nn.Linear's default weight (kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in))), B = 0, so the
model starts exactly as the base model. Llama-style models have separate `q_proj` and `v_proj` Linears.

Why not PEFT's LoRA: PEFT adapts whole modules; on GPT-2 it can only target all of `c_attn` (one A shared by
q, k and v, and a k update), not the q and v slices the paper trains (PEFT dropped `enable_lora`). One small
module keeps GPT-2 and Llama on the same code; on Llama it gives PEFT's logits (tested).

The update is added by a forward hook on the projection; the LoRA tensors live in a `lora` submodule, so base
weight names stay unchanged and LoRA ones are e.g. `transformer.h.0.attn.c_attn.lora.A`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from .state import load_state, read_metadata, read_state, save_state, select_state, tagged

LORA_FILE = "lora.safetensors"
IS_LORA = tagged("lora")


class LoRA(nn.Module):
    """Low-rank updates of the enabled equal-width parts of a projection's output (MergedLinear's enable_lora)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        parts: tuple[bool, ...],
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        fan_in_fan_out: bool = False,
    ):
        super().__init__()
        if rank < 1 or d_out % len(parts) or not any(parts):
            raise ValueError(f"bad LoRA layout: rank {rank}, d_out {d_out}, parts {parts}")
        self.parts, self.rank, self.alpha = tuple(parts), rank, float(alpha)
        self.width = d_out // len(parts)  # w: output features per part
        self.scaling = self.alpha / rank
        self.fan_in_fan_out = fan_in_fan_out  # Conv1D stores its weight as (d_in, d_out)
        n = sum(parts)
        self.A = nn.Parameter(torch.empty(n, rank, d_in))  # (S, r, d_in)
        self.B = nn.Parameter(torch.zeros(n, self.width, rank))  # (S, w, r): zero, so the update starts at 0
        bound = 1 / math.sqrt(d_in)  # = kaiming_uniform_(a=sqrt(5)) with fan_in = d_in
        nn.init.uniform_(self.A, -bound, bound)
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The projection's output y (B, T, d_out) plus the update of its input x (B, T, d_in)."""
        if self.merged:
            return y
        x = self.dropout(x)
        outs = list(y.split(self.width, dim=-1))  # (B, T, w) per part
        s = 0
        for i, on in enumerate(self.parts):
            if on:
                outs[i] = outs[i] + F.linear(F.linear(x, self.A[s]), self.B[s]) * self.scaling  # (B, T, r) -> w
                s += 1
        return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]

    def weight_deltas(self) -> list[tuple[int, Tensor]]:
        """(part index, scaling * B A of shape (w, d_in)) for every enabled part."""
        idx = [i for i, on in enumerate(self.parts) if on]
        return [(i, self.scaling * (self.B[s] @ self.A[s])) for s, i in enumerate(idx)]


def _apply_lora(module: nn.Module, args, output):
    """Forward hook of an adapted projection: add `module.lora`'s update of its input to its output."""
    return module.lora(args[0], output)


def lora_targets(model: nn.Module) -> list[tuple[str, nn.Module, tuple[bool, ...]]]:
    """The query/value projections to adapt, with the output parts to update: GPT-2's fused `c_attn`
    (q, k, v thirds: q and v), or `q_proj` and `v_proj` Linears (Llama, Mistral, ...)."""
    found = []
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "c_attn" and isinstance(mod, Conv1D) and mod.nf == 3 * mod.nx:
            found.append((name, mod, (True, False, True)))
        elif leaf in ("q_proj", "v_proj") and isinstance(mod, nn.Linear):
            found.append((name, mod, (True,)))
    if not found:
        raise ValueError(f"{type(model).__name__}: no query/value projections found (c_attn, q_proj/v_proj)")
    return found


def add_lora(model: nn.Module, rank: int = 4, alpha: float = 32.0, dropout: float = 0.0) -> list[LoRA]:
    """Add LoRA to the query and value projections of `model` (in place; A drawn from the global RNG) and return
    the LoRA modules. They take the device and dtype of their projection; nothing is frozen here."""
    added = []
    for name, mod, parts in lora_targets(model):
        if hasattr(mod, "lora"):
            raise ValueError(f"{name} already has LoRA")
        conv = not isinstance(mod, nn.Linear)
        d_in, d_out = (mod.nx, mod.nf) if conv else (mod.in_features, mod.out_features)
        mod.lora = LoRA(d_in, d_out, parts, rank, alpha, dropout, fan_in_fan_out=conv).to(
            device=mod.weight.device, dtype=mod.weight.dtype
        )
        mod.register_forward_hook(_apply_lora)
        added.append(mod.lora)
    return added


def _adapted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "lora", None), LoRA)]


@torch.no_grad()
def merge_lora(model: nn.Module, merge: bool = True) -> None:
    """Fold W += (alpha/r) B A into the frozen weights (merge=True) or take it out again (merge=False):
    decoding a merged model costs what the base model costs (Hu et al. 2021, §4.1)."""
    for mod in _adapted(model):
        lora = mod.lora
        if lora.merged == merge:
            continue
        sign = 1.0 if merge else -1.0
        for i, dw in lora.weight_deltas():  # dw: (w, d_in)
            rows = slice(i * lora.width, (i + 1) * lora.width)
            if lora.fan_in_fan_out:
                mod.weight[:, rows] += sign * dw.T.to(mod.weight.dtype)  # Conv1D weight (d_in, d_out)
            else:
                mod.weight[rows] += sign * dw.to(mod.weight.dtype)  # Linear weight (d_out, d_in)
        lora.merged = merge


def lora_state(model: nn.Module) -> dict[str, Tensor]:
    """The LoRA tensors of `model` by their names in the model (`transformer.h.0.attn.c_attn.lora.A`, ...)."""
    return select_state(model, IS_LORA)


def load_lora_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy `state` into the (unmerged) LoRA modules of `model`; key sets and shapes must match exactly."""
    if any(m.lora.merged for m in _adapted(model)):
        raise ValueError("LoRA is merged into the weights: merge_lora(model, False) before loading")
    load_state(model, state, IS_LORA, what="LoRA state", shape_hint="different rank?")


def save_lora(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Store only the LoRA tensors (atomically) with rank and alpha in the safetensors metadata."""
    loras = [m.lora for m in _adapted(model)]
    if not loras:
        raise ValueError("the model has no LoRA")
    meta = {"method": "lora", "rank": str(loras[0].rank), "alpha": repr(loras[0].alpha), **(metadata or {})}
    return save_state(lora_state(model), path, meta)


def load_lora(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Add LoRA of the stored rank and alpha to `model` (unless it has LoRA) and load it; returns the metadata."""
    meta = read_metadata(path)
    if not _adapted(model):
        add_lora(model, rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    load_lora_state(model, read_state(path, next(model.parameters()).device))
    return meta
