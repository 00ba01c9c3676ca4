"""The prefix: trainable keys/values prepended at every layer (Li & Liang 2021, §4).

Shapes used throughout (nanoGPT style):
    L layers, KV key/value heads, P prefix positions, D head dim, B batch, T real tokens.
A prefix tensor is (L, 2, KV, P, D): [:, 0] keys, [:, 1] values. A batch of different prefixes is
(B, L, 2, KV, P, D). This is also the on-disk contract of `prefix.safetensors` (one fp32 tensor `prefix`).

The prefix enters the model only through a transformers `DynamicCache` built fresh for every call
(`build_cache`): a cache is extended in place by each forward, so sharing one would leak state.
Real tokens take positions P..P+T-1 and the attention mask covers P+T, as in the original code, where
GPT-2 counted the past length into its positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .models import KVShape

PREFIX_FILE = "prefix.safetensors"


class PrefixEncoder(nn.Module):
    """Produces the (L, 2, KV, P, D) prefix.

    reparam=True (paper §4.3): a P x d embedding goes through Linear(d, hidden) -> tanh ->
    Linear(hidden, L*2*KV*D). Optimising through the MLP is more stable than optimising the prefix
    directly; after training only its output is kept (`collapse`). reparam=False: the prefix itself is
    the parameter.
    """

    def __init__(self, shape: KVShape, length: int, *, reparam: bool = True, mlp_hidden: int = 512,
                 dropout: float = 0.0):
        super().__init__()
        self.shape, self.length, self.reparam = shape, length, reparam
        out = shape.n_layers * 2 * shape.n_kv_heads * shape.head_dim
        if reparam:
            self.embedding = nn.Parameter(torch.empty(length, shape.hidden_size))  # (P, d)
            nn.init.normal_(self.embedding)  # nn.Embedding's default init, as in the original
            self.mlp = nn.Sequential(nn.Linear(shape.hidden_size, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, out))
        else:
            self.prefix = nn.Parameter(torch.randn(shape.n_layers, 2, shape.n_kv_heads, length, shape.head_dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> Tensor:
        if self.reparam:
            s = self.shape
            h = self.mlp(self.embedding)  # (P, L*2*KV*D)
            prefix = h.view(self.length, s.n_layers, 2, s.n_kv_heads, s.head_dim).permute(1, 2, 3, 0, 4)
        else:
            prefix = self.prefix
        return self.dropout(prefix)  # (L, 2, KV, P, D)

    @torch.no_grad()
    def collapse(self) -> Tensor:
        """The prefix as stored after training: fp32, no MLP, no dropout."""
        was = self.training
        self.eval()
        out = self().detach().float().contiguous()
        self.train(was)
        return out

    def init_from_activations(self, target: Tensor, *, steps: int = 500, lr: float = 1e-4) -> float:
        """Start from real-word activations (paper §7.2).

        Direct: copy them. Reparameterised: fit the MLP to them with Adam + MSE for `steps` steps, as the
        original code's `lowdata_init_train3` does. Returns the final MSE.
        """
        target = target.detach().float()
        if tuple(target.shape[-2:]) != (self.length, self.shape.head_dim) or target.dim() != 5:
            raise ValueError(f"activations of shape {tuple(target.shape)} do not fit a prefix of length {self.length}")
        if not self.reparam:
            with torch.no_grad():
                self.prefix.copy_(target)
            return 0.0
        opt = torch.optim.Adam(self.mlp.parameters(), lr=lr)
        was = self.training
        self.eval()
        loss = torch.tensor(float("nan"))
        for _ in range(steps):
            loss = nn.functional.mse_loss(self(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.train(was)
        self.zero_grad(set_to_none=True)
        return float(loss.detach())


@torch.no_grad()
def activations_of(model: nn.Module, input_ids: Tensor) -> Tensor:
    """The frozen model's own keys/values for a token sequence (1, P) as a prefix (L, 2, KV, P, D)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    model(input_ids=input_ids, cache=cache, use_cache=True)
    return torch.stack([torch.stack([k[0], v[0]]) for k, v in cache_layers(cache)]).float()


def cache_layers(cache) -> list[tuple[Tensor, Tensor]]:
    """(keys, values) per layer of a transformers cache, each (B, KV, T, D)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def build_cache(prefix: Tensor, batch_size: int | None = None, dtype: torch.dtype | None = None):
    """A fresh DynamicCache holding the prefix for every row of a batch.

    prefix: (L, 2, KV, P, D) shared by all rows (expanded to batch_size), or (B, L, 2, KV, P, D) one per row.
    """
    from transformers import DynamicCache

    if prefix.dim() == 5:
        if batch_size is None:
            raise ValueError("batch_size is required for a shared prefix")
        layers = prefix.unbind(0)  # L x (2, KV, P, D); expanding per layer keeps the backward cheap
        kv = [(k.expand(batch_size, *k.shape), v.expand(batch_size, *v.shape)) for k, v in (x.unbind(0) for x in layers)]
    elif prefix.dim() == 6:
        kv = [tuple(x.unbind(1)) for x in prefix.unbind(1)]  # L x ((B, KV, P, D), (B, KV, P, D))
    else:
        raise ValueError(f"prefix must be (L, 2, KV, P, D) or (B, L, 2, KV, P, D), got {tuple(prefix.shape)}")
    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        if dtype is not None:
            k, v = k.to(dtype), v.to(dtype)
        cache.update(k, v, layer)  # (B, KV, P, D) each
    return cache


def prefix_inputs(prefix: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None,
                  dtype: torch.dtype | None = None) -> dict:
    """Model kwargs that run `input_ids` after the prefix: cache, full attention mask, shifted positions.

    Works with right or left padding: position i of a row is P + (number of real tokens before it).
    """
    B, T = input_ids.shape
    P = prefix.shape[-2]
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=input_ids.device)
    ones = torch.ones(B, P, dtype=attention_mask.dtype, device=attention_mask.device)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + P  # (B, T)
    return dict(input_ids=input_ids, attention_mask=torch.cat([ones, attention_mask], dim=1),
                position_ids=position_ids, cache=build_cache(prefix, B, dtype))


def save_prefix(prefix: Tensor, path: str | Path, *, base_model: str, extra: dict | None = None) -> None:
    """Write `prefix.safetensors` atomically: one fp32 tensor `prefix` (L, 2, KV, P, D) + metadata."""
    from safetensors.torch import save_file

    from .checkpoint import atomic_path

    if prefix.dim() != 5:
        raise ValueError(f"expected (L, 2, KV, P, D), got {tuple(prefix.shape)}")
    meta = {"base_model": base_model, "format": "prefix-tuning/v1", "shape": "L,2,KV,P,D"}
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    with atomic_path(Path(path)) as tmp:
        save_file({"prefix": prefix.detach().float().contiguous().cpu()}, str(tmp), metadata=meta)


def load_prefix(path: str | Path) -> tuple[Tensor, dict]:
    """Read a `prefix.safetensors`; returns (prefix (L, 2, KV, P, D) fp32, metadata)."""
    from safetensors import SafetensorError, safe_open

    from .checkpoint import CorruptFileError, describe_unreadable

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "prefix" not in f.keys():
                raise ValueError(f"{path}: no tensor named 'prefix' (found {list(f.keys())})")
            prefix = f.get_tensor("prefix")
    except SafetensorError as e:
        raise CorruptFileError(f"{path} {describe_unreadable(Path(path), e)}; restore it from a copy, or delete "
                               f"it and train the run again with --no-resume") from None
    if prefix.dim() != 5 or prefix.shape[1] != 2:
        raise ValueError(f"{path}: prefix has shape {tuple(prefix.shape)}, expected (L, 2, KV, P, D)")
    return prefix.float(), meta


def check_fits(prefix: Tensor, shape: KVShape, where: str = "prefix") -> None:
    """Fail clearly when a prefix was trained for another model."""
    L, _, KV, _, D = prefix.shape[-5:]
    if (L, KV, D) != (shape.n_layers, shape.n_kv_heads, shape.head_dim):
        raise ValueError(f"{where}: prefix is for L={L}, KV heads={KV}, head dim={D} but the model has "
                         f"L={shape.n_layers}, KV heads={shape.n_kv_heads}, head dim={shape.head_dim}")
