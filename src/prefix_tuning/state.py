"""Part of a model's state, saved and loaded on its own: the tensors a method trains (adapters, LoRA, the top
blocks of FT-top2), selected by name, stored in one safetensors file with string metadata.

Loading is strict: the file must hold exactly the selected tensors of the model, with their shapes, so a file
of another method, width or rank fails clearly instead of loading half.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from .checkpoint import CorruptFileError, atomic_path, describe_unreadable

Select = Callable[[str], bool]
"""Which state-dict keys of a model belong to the saved part."""


def tagged(tag: str) -> Select:
    """Keys with `tag` as one of their dotted parts: `tagged("lora")` keeps `transformer.h.0.attn.c_attn.lora.A`."""
    return lambda key: f".{tag}." in f".{key}."


def select_state(model: nn.Module, select: Select) -> dict[str, Tensor]:
    """The selected tensors of `model` (detached copies) by their names in the model."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if select(k)}


def load_state(
    model: nn.Module, state: dict[str, Tensor], select: Select, *, what: str = "state", shape_hint: str = ""
) -> None:
    """Copy `state` into the selected tensors of `model`; the key sets and shapes must match exactly."""
    own = {k: v for k, v in model.state_dict().items() if select(k)}
    if set(own) != set(state):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(f"{what} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ValueError(
                    f"{k}: shape {tuple(v.shape)} in the {what}, {tuple(own[k].shape)} in the model"
                    + (f" ({shape_hint})" if shape_hint else "")
                )
            own[k].copy_(v)


def save_state(state: dict[str, Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write the tensors (contiguous, on the CPU) and string metadata atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata
        )
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except SafetensorError as e:
        raise CorruptFileError(
            f"{path} {describe_unreadable(Path(path), e)}; restore it from a copy, or delete "
            f"it and train the run again with --no-resume"
        ) from None


def read_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise CorruptFileError(
            f"{path} {describe_unreadable(Path(path), e)}; restore it from a copy, or delete "
            f"it and train the run again with --no-resume"
        ) from None
