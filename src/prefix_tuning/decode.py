"""Decoding: tables in, texts out, with a frozen model and one prefix, several prefixes, or none. Pure: no
files (the `generate` recipe in `prefix_tuning.generate` reads runs and writes outputs).

- `decode(model, tokenizer, tables, prefix, cfg, *, prefix_index=None)` -> one text per table.
  `prefix` is None (fine-tuned or plain model), one (L, 2, KV, P, D) prefix shared by every table, a stack
  (N, L, 2, KV, P, D) or a list of N prefixes with `prefix_index[i]` naming the prefix of table i. Rows with
  different prefixes share batches over the same frozen model (paper §4); prefixes of different lengths P
  are mixed too (left-padded with masked positions; real tokens keep positions P_i..). A mixed batch gives
  the same texts as decoding each prefix alone, and results depend neither on batch size nor on padding.
- `search_settings(cfg, tokenizer)`: the `DecodeConfig` in token ids (this tokenizer's EOS and newlines).

Search (see `prefix_tuning.beam`): our own batched beam search with Hugging Face's beam semantics (a test
compares it with `generate(num_beams=K)`), prompts run once per row, the cache expanded to beams after.
Settings: `DecodeConfig`, whose defaults follow Li & Liang's E2E decoding (their gpt2/run_generation.py).

Text: the generated tokens before EOS, decoded with special tokens skipped, stripped, any remaining line
break replaced by a space (a guard: banned tokens already keep them out), so one output is one line.

Precision: `bf16`/`fp16` run the model under torch.autocast when it is fp32 (the caller's model is left
untouched); a model already in that dtype runs natively.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .beam import SearchSettings, check_prefixes, decode_ids, row_prefixes
from .config import DecodeConfig
from .data import encode_prompt, eos_id_of
from .hardware import resolve_precision
from .infix import infix_prompts

_newline_cache: dict = {}


def newline_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids of tokens whose text holds a line break (found by decoding every token; special tokens excluded).

    A line break is what Python's str.splitlines splits on. GPT-2: 198 '\\n', 628 '\\n\\n' (the two the
    original bans), 201 '\\r', 44320 '\\n\\xa0', 199 '\\v', 200 '\\f', 216-218 '\\x1c'-'\\x1e'."""
    key = (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer))
    if key not in _newline_cache:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
        special = set(tokenizer.all_special_ids)
        _newline_cache[key] = tuple(
            i for i, t in enumerate(texts) if i not in special and len(f"x{t}x".splitlines()) > 1
        )
    return _newline_cache[key]


def search_settings(cfg: DecodeConfig, tokenizer, *, banned_ids: Sequence[int] = ()) -> SearchSettings:
    """SearchSettings for a DecodeConfig (and extra banned ids) with this tokenizer's EOS and newlines."""
    newlines = newline_token_ids(tokenizer) if cfg.ban_newlines else ()
    return SearchSettings.from_config(cfg, eos_id=eos_id_of(tokenizer), banned_ids=(*banned_ids, *newlines))


def ids_to_text(tokenizer, ids: Sequence[int]) -> str:
    """Generated ids -> one line of text (special tokens skipped, stripped, line breaks -> spaces)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return " ".join(text.splitlines()).strip()


def decode(
    model: nn.Module,
    tokenizer,
    tables: Sequence[str],
    prefix: Tensor | Sequence[Tensor] | None = None,
    cfg: DecodeConfig | None = None,
    *,
    prefix_index: Sequence[int] | None = None,
    progress: bool = False,
    banned_ids: Sequence[int] = (),
    position: str = "prefix",
) -> list[str]:
    """One generated text per linearised table (see the module docstring for prefix forms and defaults).

    The prompt of a table is `prefix_tuning.data.encode_prompt` (the training sequence up to and including
    the separator EOS), so generation continues exactly where training put the reference.
    position="infix": `prefix` holds infixes (§7.3), placed between each table and its separator.
    """
    cfg = cfg or DecodeConfig()
    prefixes = row_prefixes(prefix, prefix_index, len(tables))
    check_prefixes(model, prefixes)
    settings = search_settings(cfg, tokenizer, banned_ids=banned_ids)
    prompts = [encode_prompt(tokenizer, t) for t in tables]
    if position == "infix":  # per-row prefixes [table activations; infix], prompts [separator]
        prefixes, prompts = infix_prompts(model, prompts, prefixes)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else settings.eos_id
    precision = resolve_precision(cfg.precision, next(model.parameters()).device)
    ids = decode_ids(
        model,
        prompts,
        prefixes,
        settings,
        pad_id=pad,
        batch_size=cfg.batch_size,
        precision=precision,
        progress=progress,
    )
    return [ids_to_text(tokenizer, g) for g in ids]
