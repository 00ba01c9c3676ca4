"""Adapter-tuning baseline of Li & Liang (2021, Table 1): Lin et al. (2020)'s adapter after every block.

Lin et al. (2020) "Exploring Versatile Generative Language Model Via Parameter-Efficient Transfer Learning" add
one residual bottleneck per transformer block, applied to the block's output:

    h <- h + W_up ReLU(W_down LayerNorm(h))

Placement and init follow the code Li & Liang ran for Table 1 (github.com/XiangLi1999/PrefixTuning):
- `transformers/src/transformers/modeling_gpt2_adapter.py`, class `Adapter` with `adapter_design == 1` (the
  default of `gpt2/train_e2e.py --adapter_design 1`; `gpt2/run_language_modeling.py` calls it "the NLG adapter
  reference"): LayerNorm(n_embd, eps=layer_norm_epsilon) -> Linear(n_embd, b) -> ReLU -> Linear(b, n_embd),
  plus the input. `Block.forward_oneAdapter` applies it to the block's output, after the MLP residual, so the
  next block (or the final LayerNorm) sees the adapted hidden states.
- Init: the adapter is missing from the GPT-2 checkpoint, so `GPT2PreTrainedModel._init_weights` initialises
  it: Linear weights ~ N(0, initializer_range), biases 0, LayerNorm weight 1 and bias 0. The adapter is thus
  NOT the identity at step 0 (unlike Houlsby et al.'s near-identity init).
- Trained: the adapter parameters only (`run_language_modeling.py`: every name containing `adapter_block`,
  LayerNorm included); the base model is frozen.

The adapters are added by hooking the blocks of any HF causal LM (GPT-2 `transformer.h`, Llama `model.layers`):
each block gets an `adapter` submodule and a forward hook that applies it to the block's output. Base weight
names stay unchanged (`transformer.h.0.attn.c_attn.weight`), adapter ones are `transformer.h.0.adapter.*`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .state import load_state, read_metadata, read_state, save_state, select_state, tagged

ADAPTER_FILE = "adapter.safetensors"
IS_ADAPTER = tagged("adapter")


class Adapter(nn.Module):
    """h + up(ReLU(down(LayerNorm(h)))) on a block's output (Lin et al. 2020, §3; original code's design 1)."""

    def __init__(self, d: int, bottleneck: int, eps: float = 1e-5, init_std: float = 0.02):
        super().__init__()
        self.ln = nn.LayerNorm(d, eps=eps)
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        for lin in (self.down, self.up):  # GPT2PreTrainedModel._init_weights of the original code
            nn.init.normal_(lin.weight, mean=0.0, std=init_std)
            nn.init.zeros_(lin.bias)

    def forward(self, h: Tensor) -> Tensor:  # (B, T, d) -> (B, T, d)
        return h + self.up(torch.relu(self.down(self.ln(h))))  # (B, T, b) in the middle


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a HF causal LM: the ModuleList (`h`, `layers`, `blocks`) of num_hidden_layers."""
    n_layers = model.config.get_text_config().num_hidden_layers
    for mod in model.modules():
        for attr in ("h", "layers", "blocks"):
            blocks = getattr(mod, attr, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks) == n_layers:
                return blocks
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def _apply_adapter(block: nn.Module, args, output):
    """Forward hook: the block's output hidden states (B, T, d) go through `block.adapter`."""
    if isinstance(output, tuple):  # blocks of older transformers return (hidden_states, ...)
        return (block.adapter(output[0]),) + output[1:]
    return block.adapter(output)


def _layout(model: nn.Module) -> tuple[int, int, float, float]:
    """(n_layers, hidden size, LayerNorm eps, init std) read from the model config."""
    cfg = model.config.get_text_config()
    eps = getattr(cfg, "layer_norm_epsilon", None) or getattr(cfg, "rms_norm_eps", None) or 1e-5
    return cfg.num_hidden_layers, cfg.hidden_size, float(eps), float(getattr(cfg, "initializer_range", 0.02))


def adapter_numel(model: nn.Module, bottleneck: int) -> int:
    """Trainable parameters of adapters of width `bottleneck` on every block: L * (2 d b + b + 3 d)."""
    L, d, _, _ = _layout(model)
    return L * (2 * d * bottleneck + bottleneck + 3 * d)  # down W+b, up W+b, LayerNorm weight+bias


def base_numel(model: nn.Module) -> int:
    """Parameters of the model without adapters or LoRA (tied weights counted once)."""
    params = {
        id(p): p
        for n, p in model.named_parameters(remove_duplicate=False)
        if ".adapter." not in f".{n}" and ".lora." not in f".{n}"
    }
    return sum(p.numel() for p in params.values())


def bottleneck_for_fraction(model: nn.Module, fraction: float) -> int:
    """The bottleneck whose adapters hold `fraction` of the base model's parameters, rounded to the nearest
    width (at least 1). Li & Liang's Table 1 reports ADAPTER(3%) and ADAPTER(0.1%) on GPT-2 Medium; their code
    takes the width directly (`--adapter_bottleneck`), so the fraction is what we reproduce."""
    if not 0 < fraction < 1:
        raise ValueError(f"adapter fraction must be in (0, 1), got {fraction}")
    L, d, _, _ = _layout(model)
    b = round((fraction * base_numel(model) - L * 3 * d) / (L * (2 * d + 1)))
    return max(1, int(b))


def add_adapters(model: nn.Module, bottleneck: int) -> list[Adapter]:
    """Add a freshly initialised adapter after every block of `model` (in place; uses the global RNG) and
    return them. The adapters take the device and dtype of their block; nothing else is frozen here."""
    if bottleneck < 1:
        raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
    _, d, eps, std = _layout(model)
    adapters = []
    for block in transformer_blocks(model):
        if hasattr(block, "adapter"):
            raise ValueError("the model already has adapters")
        ref = next(block.parameters())
        block.adapter = Adapter(d, bottleneck, eps=eps, init_std=std).to(device=ref.device, dtype=ref.dtype)
        block.register_forward_hook(_apply_adapter)
        adapters.append(block.adapter)
    return adapters


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors of `model` by their names in the model (`transformer.h.0.adapter.down.weight`...)."""
    return select_state(model, IS_ADAPTER)


def load_adapter_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy `state` into the adapters of `model`; the key sets and shapes must match exactly."""
    load_state(model, state, IS_ADAPTER, what="adapter state", shape_hint="different bottleneck?")


def save_adapter(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Store only the adapter tensors (atomically) with the bottleneck in the safetensors metadata."""
    state = adapter_state(model)
    down = next(v for k, v in state.items() if k.endswith("adapter.down.weight"))  # (b, d)
    return save_state(state, path, {"method": "adapter", "bottleneck": str(down.shape[0]), **(metadata or {})})


def load_adapter(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Add adapters of the stored bottleneck to `model` (unless it has them) and load them; returns the metadata."""
    meta = read_metadata(path)
    if not hasattr(transformer_blocks(model)[0], "adapter"):
        add_adapters(model, int(meta["bottleneck"]))
    load_adapter_state(model, read_state(path, next(model.parameters()).device))
    return meta
