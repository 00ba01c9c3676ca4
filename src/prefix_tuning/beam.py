"""Batched greedy and beam search over a frozen causal LM, each row with its own prefix (or none).

`search` is the engine behind `prefix_tuning.decode.decode`; it works on token ids.

How a batch runs:
1. Prefill, once per ROW (not once per beam): prompts are left-padded to the longest (`left_pad`), and
   `prefix.prefix_inputs` (the one path by which a prefix enters the model, training included) left-pads
   prefixes of different lengths with masked zeros, so the cache of row i is
   `[masked pad | prefix_i (P_i) | masked pad | prompt_i (T_i)]`. Real prompt tokens take positions
   P_i .. P_i+T_i-1, generated token n takes P_i+T_i+n: exactly the positions a row would get alone, so
   results depend neither on the batch nor on padding. Only the last position's logits are computed.
2. The cache is expanded to beams by one `index_select` (`Cache.reorder_cache`), then reordered by each
   step's source-beam index (the same call). Rows whose search is over are dropped from the batch (same
   call again), so a batch gets cheaper as its rows finish (HF keeps computing every row until the last
   one is done).
3. For models whose layers all use full attention the cache's layers are `kvcache.GrowingLayer`s (one copy
   of the cache per step instead of two, no allocation).

Beam semantics follow Hugging Face's `generate(num_beams=K)` (transformers 5.x `_beam_search`), so both
give the same hypotheses:
- Per row, the top 2K continuations (over K beams x vocabulary, by summed log-probability) are taken. Those
  among the first K that end in EOS (or reach max_new_tokens) become finished hypotheses with score
  `sum log p / n**length_penalty`, n = generated tokens including EOS; the best K unfinished continue.
- A row keeps its K best finished hypotheses. It is done when (early_stopping=True) it has K of them, or
  when it has K and the best running beam cannot beat the worst: `best_running / n**lp <= worst_finished`
  (early_stopping=False, HF's default and the original code's setting); with early_stopping="never" and
  lp > 0 the bound uses max_new_tokens instead of n. The output is the best finished hypothesis.
- Log-probabilities are `log_softmax` of fp32 logits; banned tokens get -inf AFTER the softmax (HF applies
  its logits processors to the log-probabilities in beam search).
Greedy (beam_size 1) takes the argmax of the processed log-probabilities (HF's greedy); beam search with one
beam gives the same result (tested), greedy is just the shorter loop.

Differences from HF `generate`, on purpose:
- `no_repeat_ngram_size` looks at generated tokens only; HF also counts n-grams of the prompt, which for
  table-to-text would forbid copying a two-word name from the table with a size of 2.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import DecodeConfig
from .hardware import dtype_of
from .kvcache import new_cache
from .models import KVShape
from .prefix import check_fits, prefix_inputs, prefix_lengths

NEG = -1.0e9  # HF's "impossible" score offset; kept so that ties and orderings match its beam search


EARLY_STOPPING = (False, True, "never")


@dataclass(frozen=True)
class SearchSettings:
    """A `DecodeConfig` resolved against a tokenizer, in token ids: what `search` needs. Made by
    `SearchSettings.from_config` (`decode.search_settings` takes EOS and the newline ids from the tokenizer)."""

    beam_size: int
    max_new_tokens: int
    min_new_tokens: int
    length_penalty: float
    no_repeat_ngram_size: int
    early_stopping: bool | str
    eos_id: int
    banned_ids: tuple[int, ...]  # sorted, never EOS

    @classmethod
    def from_config(cls, cfg: DecodeConfig, *, eos_id: int, banned_ids: Sequence[int] = ()) -> SearchSettings:
        if cfg.early_stopping not in EARLY_STOPPING or not isinstance(cfg.early_stopping, (bool, str)):
            raise ValueError(f"early_stopping must be False, True or 'never', got {cfg.early_stopping!r}")
        if cfg.beam_size < 1 or cfg.max_new_tokens < 1 or cfg.min_new_tokens > cfg.max_new_tokens:
            raise ValueError(
                f"impossible decoding settings: beam_size={cfg.beam_size}, max_new_tokens="
                f"{cfg.max_new_tokens}, min_new_tokens={cfg.min_new_tokens}"
            )
        return cls(
            beam_size=cfg.beam_size,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
            length_penalty=cfg.length_penalty,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            early_stopping=cfg.early_stopping,
            eos_id=eos_id,
            banned_ids=tuple(sorted(set(banned_ids) - {eos_id})),
        )


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """input_ids (B, T) and attention_mask (B, T) of prompts left-padded to the longest: every row's last
    position is its last real token, whose logits give the first new token."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _banned_ngram_tokens(seq: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `seq` (generated tokens of one beam)."""
    if n <= 0 or len(seq) < n:
        return []
    ctx = tuple(seq[len(seq) - n + 1 :])
    return [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == ctx]


def _process(logp: Tensor, gen: Tensor, n: int, settings: SearchSettings, banned: Tensor | None) -> Tensor:
    """Bans on log-probabilities (B, V) of the next token; gen (B, n) = tokens generated so far."""
    if banned is not None:
        logp[:, banned] = float("-inf")
    if n < settings.min_new_tokens:
        logp[:, settings.eos_id] = float("-inf")
    if settings.no_repeat_ngram_size > 0 and n > 0:
        for b, seq in enumerate(gen.tolist()):
            toks = _banned_ngram_tokens(seq, settings.no_repeat_ngram_size)
            if toks:
                logp[b, toks] = float("-inf")
    return logp


def _forward(model, input_ids, attention_mask, position_ids, cache) -> Tensor:
    """Logits (B, V) of the last position. The last position is picked with an index TENSOR: it copies the
    hidden states into a contiguous (B, 1, d) block, where `logits_to_keep=1` hands the LM head a strided
    view, which torch's bf16 CPU linear handles ~100x slower (seconds per call at GPT-2 size)."""
    T = input_ids.shape[1]
    kw = {}
    if _takes_logits_to_keep(model):
        kw["logits_to_keep"] = torch.tensor([T - 1], device=input_ids.device) if T > 1 else 1
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True, **kw
    )
    return out.logits[:, -1, :]


@functools.cache
def _class_takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _takes_logits_to_keep(model) -> bool:
    return _class_takes_logits_to_keep(type(model))


@torch.inference_mode()
def search(
    model: nn.Module,
    prompts: list[list[int]],
    prefixes: list[Tensor | None] | None,
    settings: SearchSettings,
    *,
    pad_id: int,
    dtype: torch.dtype | None = None,
    algorithm: str = "auto",
) -> list[list[int]]:
    """Generate for one batch; returns the new tokens of each row, without the final EOS.

    prefixes[i]: (L, 2, KV, P_i, D) for row i, or None; `prefixes=None` means no prefix anywhere.
    dtype: dtype of the prefix keys/values in the cache (default: the model's parameter dtype).
    algorithm: `auto` (greedy for beam_size 1, else beam), or force `greedy` / `beam` (tests use `beam`
    with one beam to check that it equals greedy).
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    dtype = dtype or next(model.parameters()).dtype
    prefixes = list(prefixes) if prefixes is not None else [None] * len(prompts)
    if len(prefixes) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(prefixes)} prefixes")
    ids, mask = left_pad(prompts, pad_id, device)  # (B, T) each
    # the cache's length after the last step
    capacity = max(prefix_lengths(prefixes, len(prompts))) + ids.shape[1] + settings.max_new_tokens
    kw = prefix_inputs(prefixes, ids, mask, dtype=dtype, cache=new_cache(model, capacity))
    next_pos = kw["position_ids"][:, -1] + 1  # (B,) position of each row's first new token
    cache = kw["cache"]
    logits = _forward(model, kw["input_ids"], kw["attention_mask"], kw["position_ids"], cache)
    banned = torch.tensor(settings.banned_ids, dtype=torch.long, device=device) if settings.banned_ids else None
    if algorithm not in ("auto", "greedy", "beam"):
        raise ValueError(f"algorithm must be auto, greedy or beam, got {algorithm!r}")
    greedy = algorithm == "greedy" or (algorithm == "auto" and settings.beam_size == 1)
    run = _greedy if greedy else _beam
    return run(model, logits, cache, kw["attention_mask"], next_pos, settings, banned)


def _greedy(model, logits, cache, mask, pos, settings: SearchSettings, banned) -> list[list[int]]:
    B = logits.shape[0]
    device = logits.device
    rows = torch.arange(B, device=device)  # original row of each active row
    out: list[list[int]] = [[] for _ in range(B)]
    gen = torch.zeros(B, 0, dtype=torch.long, device=device)
    for n in range(settings.max_new_tokens):
        logp = _process(torch.log_softmax(logits.float(), dim=-1), gen, n, settings, banned)
        tok = logp.argmax(dim=-1)  # (Ba,)
        gen = torch.cat([gen, tok[:, None]], dim=1)
        last = n + 1 == settings.max_new_tokens
        keep = tok != settings.eos_id
        for r in (~keep).nonzero().flatten().tolist():  # ended by EOS (dropped from the output)
            out[int(rows[r])] = gen[r, :-1].tolist()
        if last:
            for r in keep.nonzero().flatten().tolist():
                out[int(rows[r])] = gen[r].tolist()
            break
        if not keep.any():
            break
        if not keep.all():  # drop finished rows from the batch
            idx = keep.nonzero().flatten()
            cache.reorder_cache(idx)
            rows, gen, tok, mask, pos = rows[idx], gen[idx], tok[idx], mask[idx], pos[idx]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = _forward(model, tok[:, None], mask, pos[:, None], cache)
        pos = pos + 1
    return out


def _beam(model, logits, cache, mask, pos, settings: SearchSettings, banned) -> list[list[int]]:
    K = settings.beam_size
    B, V = logits.shape
    device = logits.device
    rows = list(range(B))  # original row of each active row
    pools: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # best K finished, best first
    gen = torch.zeros(B, 0, dtype=torch.long, device=device)  # (Ba * Kc, n) generated tokens per beam
    scores = torch.zeros(B, 1, device=device)  # (Ba, Kc) summed log-probs; Kc = 1 before the first step
    for n in range(settings.max_new_tokens):
        Ba, Kc = scores.shape
        logp = _process(torch.log_softmax(logits.float(), dim=-1), gen, n, settings, banned)
        cand = (logp + scores.view(-1, 1)).view(Ba, Kc * V)
        top_s, top_i = cand.topk(min(2 * K, Kc * V), dim=-1)  # (Ba, 2K), best first
        src, tok = top_i // V, top_i % V
        last = n + 1 == settings.max_new_tokens
        ends = (tok == settings.eos_id) | last
        # finished hypotheses: only among the first K candidates (HF's top_num_beam_mask)
        norm = (top_s / ((n + 1) ** settings.length_penalty)).tolist()
        ends_l, src_l, tok_l = ends.tolist(), src.tolist(), tok.tolist()
        gen_l = None
        for r in range(Ba):
            for j in range(K):
                if ends_l[r][j]:
                    if gen_l is None:
                        gen_l = gen.tolist()
                    seq = gen_l[r * Kc + src_l[r][j]] + ([] if tok_l[r][j] == settings.eos_id else [tok_l[r][j]])
                    pools[rows[r]].append((norm[r][j], seq))
            if any(ends_l[r][:K]):
                pools[rows[r]].sort(key=lambda h: -h[0])
                del pools[rows[r]][K:]
        if last:
            break
        # the best K unfinished continue
        run_s, run_j = (top_s + ends.float() * NEG).topk(K, dim=-1)  # (Ba, K)
        run_src = src.gather(1, run_j)
        run_tok = tok.gather(1, run_j)
        # is the search over for a row?
        exhaustive = settings.early_stopping == "never" and settings.length_penalty > 0
        length = settings.max_new_tokens if exhaustive else n + 1
        best_run = (run_s[:, 0] / (length**settings.length_penalty)).tolist()
        keep = []
        for r in range(Ba):
            pool = pools[rows[r]]
            full = len(pool) == K
            done = full and (settings.early_stopping is True or not best_run[r] > pool[-1][0])
            if not done:
                keep.append(r)
        if not keep:
            break
        keep_t = torch.tensor(keep, dtype=torch.long, device=device)
        flat = (keep_t[:, None] * Kc + run_src[keep_t]).view(-1)  # source beam of each new beam
        cache.reorder_cache(flat)
        gen = torch.cat([gen[flat], run_tok[keep_t].view(-1, 1)], dim=1)
        scores = run_s[keep_t]
        rows = [rows[r] for r in keep]
        mask = mask[flat]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[flat]
        logits = _forward(model, run_tok[keep_t].view(-1, 1), mask, pos[:, None], cache)
        pos = pos + 1
    return [pool[0][1] if pool else [] for pool in pools]


# ------------------------------------------------------------------------------ batches of many rows


def row_prefixes(prefix, prefix_index: Sequence[int] | None, n: int) -> list[Tensor | None]:
    """One (L, 2, KV, P, D) prefix (or None) per table."""
    if prefix is None:
        if prefix_index is not None:
            raise ValueError("prefix_index given without prefixes")
        return [None] * n
    if isinstance(prefix, Tensor) and prefix.dim() == 5:
        if prefix_index is not None and any(i != 0 for i in prefix_index):
            raise ValueError("a single (L, 2, KV, P, D) prefix only takes prefix_index 0")
        return [prefix] * n
    if isinstance(prefix, Tensor) and prefix.dim() != 6:
        raise ValueError(f"prefix must be (L, 2, KV, P, D) or (N, L, 2, KV, P, D), got {tuple(prefix.shape)}")
    stack = list(prefix)  # a (N, ...) tensor or a list of (L, 2, KV, P_i, D) tensors
    if any(p is not None and p.dim() != 5 for p in stack):
        raise ValueError("each prefix of a list must be (L, 2, KV, P, D)")
    shapes = {(p.shape[0], p.shape[2], p.shape[4]) for p in stack if p is not None}
    if len(shapes) > 1:
        raise ValueError(f"prefixes for different models in one call: (L, KV, D) = {sorted(shapes)}")
    if prefix_index is None:
        if len(stack) != 1:
            raise ValueError(f"{len(stack)} prefixes given: prefix_index must name the prefix of each table")
        prefix_index = [0] * n
    if len(prefix_index) != n:
        raise ValueError(f"prefix_index has {len(prefix_index)} entries for {n} tables")
    bad = [i for i in prefix_index if not 0 <= i < len(stack)]
    if bad:
        raise ValueError(f"prefix_index {bad[0]} out of range for {len(stack)} prefixes")
    return [stack[i] for i in prefix_index]


def check_prefixes(model: nn.Module, prefixes: list[Tensor | None]) -> None:
    shape = KVShape.from_config(model.config)
    seen = set()
    for p in prefixes:
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            check_fits(p, shape)


def precision_context(model: nn.Module, precision: str):
    """(context, cache dtype): autocast when an fp32 model runs in bf16/fp16; native otherwise.
    precision: a concrete one (`hardware.resolve_precision` turns `auto` into one)."""
    want = dtype_of(precision)
    param = next(model.parameters())
    if want is None or param.dtype == want:
        return contextlib.nullcontext(), param.dtype
    if param.dtype != torch.float32:
        raise ValueError(
            f"precision {precision} asked for a model in {param.dtype}; cast the model or use "
            f"precision {str(param.dtype).replace('torch.', '').replace('bfloat16', 'bf16')}"
        )
    return torch.autocast(param.device.type, dtype=want), want


def decode_ids(
    model: nn.Module,
    prompts: list[list[int]],
    prefixes: list[Tensor | None],
    settings: SearchSettings,
    *,
    pad_id: int,
    batch_size: int = 16,
    precision: str = "fp32",
    progress: bool = False,
) -> list[list[int]]:
    """New token ids (without EOS) per prompt. Prompts are batched longest first (less padding); the
    result does not depend on that order or on batch_size."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[list[int]] = [[] for _ in prompts]
    ctx, dtype = precision_context(model, precision)
    with ctx, tqdm(total=len(prompts), unit="MR", desc="decode", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            got = search(
                model, [prompts[i] for i in idx], [prefixes[i] for i in idx], settings, pad_id=pad_id, dtype=dtype
            )
            for i, g in zip(idx, got):
                out[i] = g
            bar.update(len(idx))
    return out
