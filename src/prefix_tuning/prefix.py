"""The prefix: trainable keys/values prepended at every layer (Li & Liang 2021, §4).

Shapes used throughout (nanoGPT style):
    L layers, KV key/value heads, P prefix positions, D head dim, B batch, T real tokens.
A prefix tensor is (L, 2, KV, P, D): [:, 0] keys, [:, 1] values. A batch of different prefixes is
(B, L, 2, KV, P, D), or a list of B (L, 2, KV, P_i, D) tensors (or None) of different lengths. The first
form is also the on-disk contract of `prefix.safetensors` (one fp32 tensor `prefix`).

How a prefix enters the model, for training and decoding alike: `prefix_inputs` gives the model kwargs of
a batch, i.e. a cache holding the prefix keys/values (`build_cache`), the attention mask over prefix + tokens
and the position ids. Prefixes of different lengths are left-padded to the longest with masked zeros, and
the real tokens of row i take positions P_i..P_i+T_i-1 whatever the padding (right padding in training,
left padding in decoding): exactly the positions the row gets alone, as in the original code, where GPT-2
counted the past length into its positions. The cache is filled fresh for every call (a forward extends
it in place, so sharing one would leak state); decoding hands in an empty `kvcache.new_cache` to fill.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from transformers import DynamicCache

from .checkpoint import CorruptFileError, atomic_path, describe_unreadable
from .models import KVShape


class PrefixEncoder(nn.Module):
    """Produces the (L, 2, KV, P, D) prefix.

    reparam=True (paper §4.3): a P x d embedding goes through Linear(d, hidden) -> tanh ->
    Linear(hidden, L*2*KV*D). Optimising through the MLP is more stable than optimising the prefix
    directly; after training only its output is kept (`collapse`). reparam=False: the prefix itself is
    the parameter.
    """

    def __init__(
        self, shape: KVShape, length: int, *, reparam: bool = True, mlp_hidden: int = 512, dropout: float = 0.0
    ):
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

    def collapse(self) -> Tensor:
        """The prefix as stored after training: fp32, no MLP, no dropout."""
        return _collapse(self)

    def init_from_activations(self, target: Tensor, *, steps: int = 500, lr: float = 1e-4) -> float:
        """Start from real-word activations (paper §7.4).

        Direct: copy them. Reparameterised: fit the MLP to them with Adam + MSE for `steps` steps, as the
        original code's `lowdata_init_train3` does. Returns the final MSE.
        """
        if tuple(target.shape[-2:]) != (self.length, self.shape.head_dim) or target.dim() != 5:
            raise ValueError(f"activations of shape {tuple(target.shape)} do not fit a prefix of length {self.length}")
        if self.reparam:
            return _fit_output(self, target, mlp=self.mlp, steps=steps, lr=lr)
        return _fit_output(self, target, direct=self.prefix)


@torch.no_grad()
def _collapse(module: nn.Module) -> Tensor:
    """What a reparameterised module keeps after training: its output in eval mode (no dropout), fp32."""
    was = module.training
    module.eval()
    out = module().detach().float().contiguous()
    module.train(was)
    return out


def _fit_output(
    module: nn.Module,
    target: Tensor,
    *,
    mlp: nn.Module | None = None,
    direct: nn.Parameter | None = None,
    steps: int = 500,
    lr: float = 1e-4,
) -> float:
    """Make `module()` start at `target`: copy it into the `direct` parameter, or fit the reparameterisation
    `mlp` to it with Adam + MSE for `steps` steps (the original code's `lowdata_init_train3`). Returns the MSE."""
    target = target.detach().float()
    if direct is not None:
        with torch.no_grad():
            direct.copy_(target)
        return 0.0
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    was = module.training
    module.eval()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = nn.functional.mse_loss(module(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    module.train(was)
    module.zero_grad(set_to_none=True)
    return float(loss.detach())


class PromptEmbedding(nn.Module):
    """P input embeddings placed before the tokens (§7.2 "embedding-only"): no per-layer activations of their
    own; `embedding_activations` turns them into the prefix the frozen model computes.

    reparam=True, as the original code's embedding-only model (`PrefixEmbTuning`, its default
    `parametrize_emb='MLP'`): a (P, d) embedding through Linear(d, hidden) -> tanh -> Linear(hidden, d), only
    the output kept (`collapse`). reparam=False: the embeddings themselves are the parameter (prompt tuning),
    initialised at the scale of the model's own embeddings (`std`); at the prefix's lr they barely move (a 1-token
    prompt stayed at 1.2 BLEU after 400 steps at lr 8e-5 on SmolLM2)."""

    def __init__(
        self, length: int, hidden_size: int, *, reparam: bool = True, mlp_hidden: int = 512, std: float = 0.02
    ):
        super().__init__()
        self.length, self.reparam = length, reparam
        if reparam:
            self.embedding = nn.Parameter(torch.empty(length, hidden_size))  # (P, d)
            nn.init.normal_(self.embedding)  # nn.Embedding's default init, as in the original
            self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, hidden_size))
        else:
            self.embedding = nn.Parameter(torch.randn(length, hidden_size) * std)  # (P, d)

    def forward(self) -> Tensor:
        return self.mlp(self.embedding) if self.reparam else self.embedding  # (P, d)

    def collapse(self) -> Tensor:
        """The embeddings as stored: fp32 (P, d), no MLP."""
        return _collapse(self)

    def init_from_embeddings(self, target: Tensor, *, steps: int = 500, lr: float = 1e-4) -> float:
        """Start from real words' input embeddings (P, d) (paper §7.4): copied, or the MLP fitted to them."""
        if tuple(target.shape) != tuple(self.embedding.shape):
            raise ValueError(f"embeddings of shape {tuple(target.shape)} do not fit {tuple(self.embedding.shape)}")
        if self.reparam:
            return _fit_output(self, target, mlp=self.mlp, steps=steps, lr=lr)
        return _fit_output(self, target, direct=self.embedding)


def _kv(model: nn.Module, **inputs) -> Tensor:
    """The model's keys/values (L, 2, KV, P, D) of one sequence given as input_ids or inputs_embeds (1, P, ...)."""
    cache = DynamicCache()
    model(**inputs, cache=cache, use_cache=True, logits_to_keep=1)
    return torch.stack([torch.stack([k[0], v[0]]) for k, v in cache_layers(cache)])


@torch.no_grad()
def activations_of(model: nn.Module, input_ids: Tensor) -> Tensor:
    """The frozen model's own keys/values for a token sequence (1, P) as a prefix (L, 2, KV, P, D)."""
    return _kv(model, input_ids=input_ids).float()


def embedding_activations(model: nn.Module, embeddings: Tensor) -> Tensor:
    """The keys/values (L, 2, KV, P, D) the model computes for P input embeddings (P, d) at positions 0..P-1:
    with them as the prefix, tokens run exactly as after the embeddings in one sequence. Differentiable in
    the embeddings (the frozen model is only traversed)."""
    return _kv(model, inputs_embeds=embeddings[None].to(next(model.parameters()).dtype))


def cache_layers(cache) -> list[tuple[Tensor, Tensor]]:
    """(keys, values) per layer of a transformers cache, each (B, KV, T, D)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


PrefixBatch = Tensor | Sequence[Tensor | None]
"""A shared (L, 2, KV, P, D) prefix, a (B, L, 2, KV, P, D) stack, or B (L, 2, KV, P_i, D) tensors or None."""


def prefix_lengths(prefix: PrefixBatch, batch_size: int) -> list[int]:
    """P_i of every row (0 for a row without a prefix)."""
    if isinstance(prefix, Tensor):
        if prefix.dim() not in (5, 6):
            raise ValueError(f"prefix must be (L, 2, KV, P, D) or (B, L, 2, KV, P, D), got {tuple(prefix.shape)}")
        return [prefix.shape[-2]] * batch_size
    return [0 if p is None else p.shape[-2] for p in prefix]


def build_cache(
    prefix: PrefixBatch,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    *,
    device: torch.device | None = None,
    cache=None,
):
    """A cache holding the prefix of every row of a batch; prefixes shorter than the longest are left-padded
    with zeros (`prefix_inputs` masks them).

    A shared (L, 2, KV, P, D) prefix is expanded to batch_size rows per layer: a view, so the backward of a
    training step sums the rows' gradients into one small tensor instead of going through a (B, L, ...) copy.
    cache: an empty cache to fill (decoding passes `kvcache.new_cache`); default a fresh DynamicCache.
    """
    cache = DynamicCache() if cache is None else cache
    if isinstance(prefix, Tensor) and prefix.dim() == 5:
        if batch_size is None:
            raise ValueError("batch_size is required for a shared prefix")
        # L x ((B, KV, P, D), (B, KV, P, D)), views of the one prefix
        kv = [
            (k.expand(batch_size, *k.shape), v.expand(batch_size, *v.shape))
            for k, v in (layer.unbind(0) for layer in prefix.unbind(0))
        ]
    else:
        rows = list(prefix)  # B x (L, 2, KV, P_i, D) or None
        lengths = prefix_lengths(rows, len(rows))
        P = max(lengths, default=0)
        if P == 0:
            return cache
        first = next(p for p in rows if p is not None)
        L, _, KV, _, D = first.shape
        stack = torch.zeros(len(rows), L, 2, KV, P, D, dtype=dtype or first.dtype, device=device or first.device)
        for i, (p, n) in enumerate(zip(rows, lengths)):
            if n:
                stack[i, ..., P - n :, :] = p.to(device=stack.device, dtype=stack.dtype)
        kv = [(stack[:, layer, 0], stack[:, layer, 1]) for layer in range(L)]  # L x ((B, KV, P, D), ...)
    for layer, (k, v) in enumerate(kv):
        cache.update(k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype), layer)
    return cache


def prefix_inputs(
    prefix: PrefixBatch,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
    cache=None,
) -> dict:
    """Model kwargs that run `input_ids` (B, T) after the prefix(es): the cache (`build_cache`), the attention
    mask (B, P + T) with padded prefix slots masked, and position ids (B, T).

    Position of a token of row i = P_i + number of real tokens before it, so right and left padding both work.
    dtype: of the prefix keys/values in the cache (default: the prefix's own).
    """
    B, T = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=device)
    lengths = torch.tensor(prefix_lengths(prefix, B), dtype=torch.long, device=device)  # (B,)
    P = int(lengths.max()) if B else 0
    prefix_mask = torch.arange(P, device=device) >= P - lengths[:, None]  # (B, P): the last P_i slots
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + lengths[:, None]  # (B, T)
    attention_mask = torch.cat([prefix_mask.to(attention_mask.dtype), attention_mask], 1)  # (B, P + T)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "cache": build_cache(prefix, B, dtype, device=device, cache=cache),
    }


def save_prefix(prefix: Tensor, path: str | Path, *, base_model: str, extra: dict | None = None) -> None:
    """Write `prefix.safetensors` atomically: one fp32 tensor `prefix` (L, 2, KV, P, D) + metadata."""
    if prefix.dim() != 5:
        raise ValueError(f"expected (L, 2, KV, P, D), got {tuple(prefix.shape)}")
    meta = {"base_model": base_model, "format": "prefix-tuning/v1", "shape": "L,2,KV,P,D"}
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    with atomic_path(Path(path)) as tmp:
        # through the module, so that a test can make this write fail (disk full)
        safetensors.torch.save_file({"prefix": prefix.detach().float().contiguous().cpu()}, str(tmp), metadata=meta)


def load_prefix(path: str | Path) -> tuple[Tensor, dict]:
    """Read a `prefix.safetensors`; returns (prefix (L, 2, KV, P, D) fp32, metadata)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "prefix" not in f.keys():
                raise ValueError(f"{path}: no tensor named 'prefix' (found {list(f.keys())})")
            prefix = f.get_tensor("prefix")
    except SafetensorError as e:
        raise CorruptFileError(
            f"{path} {describe_unreadable(Path(path), e)}; restore it from a copy, or delete "
            f"it and train the run again with --no-resume"
        ) from None
    if prefix.dim() != 5 or prefix.shape[1] != 2:
        raise ValueError(f"{path}: prefix has shape {tuple(prefix.shape)}, expected (L, 2, KV, P, D)")
    return prefix.float(), meta


def check_fits(prefix: Tensor, shape: KVShape, where: str = "prefix") -> None:
    """Fail clearly when a prefix was trained for another model."""
    L, _, KV, _, D = prefix.shape[-5:]
    if (L, KV, D) != (shape.n_layers, shape.n_kv_heads, shape.head_dim):
        raise ValueError(
            f"{where}: prefix is for L={L}, KV heads={KV}, head dim={D} but the model has "
            f"L={shape.n_layers}, KV heads={shape.n_kv_heads}, head dim={shape.head_dim}"
        )
