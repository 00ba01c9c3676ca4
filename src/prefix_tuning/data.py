"""Data for training and decoding: the E2E readers (re-exported from `prefix_tuning.e2e`), low-data subsets,
the training sequence with its loss mask, the generation prompt, a pre-tokenised Dataset and right-padding collation.

The original training sequence (XiangLi1999/PrefixTuning, `LineByLineData2TextTextDataset` in
`transformers/src/transformers/data/datasets/language_modeling.py`, with bos_tok = eos_tok = GPT-2's
`<|endoftext|>` passed by `gpt2/run_language_modeling.py`) is the string

    ' {table} {bos} ' + ref + ' {eos}'

tokenised in one call by transformers 3.2's slow GPT2Tokenizer. That tokenizer cuts the text at the special
token and keeps the spaces around it (GPT2Tokenizer wraps bos/eos in AddedToken(lstrip=False, rstrip=False)),
so the pieces ' {table} ' and ' {ref} ' are BPE-encoded on their own, each ending in a lone-space token (220):

    ids(' name : The Eagle | Type : coffee shop ') + [50256] + ids(' The Eagle is a coffee shop . ') + [50256]
    = [1438, 1058, 383, 18456, 930, 5994, 1058, 6891, 6128, 220, 50256, 383, ..., 764, 220, 50256]

Its labels are a copy with `labels[:sep_idx] = -100`, sep_idx = 1 + the first position of the separator id:
the table and the separator are masked, the reference (with its trailing space token) and the final eos
carry labels. Padding used an added `[PAD]` token whose label was set to -100 by the collator (pad tokens
come after the final eos, so that eos keeps its label). Generation (`gpt2/run_generation.py::read_e2e_files`)
feeds `' {table} {bos}'`, i.e. exactly the training prefix up to and including the separator.

`encode_example` / `encode_prompt` rebuild these ids segment by segment, which gives the same ids for
byte-level BPE tokenizers (GPT-2, SmolLM2) and works for any HF tokenizer: the separator and the end token are
`tokenizer.eos_token_id` (GPT-2's bos == eos; the original passes bos_token), and a tokenizer that adds its
own start tokens (e.g. Llama's BOS) gets them in front of the table, masked, as the original's
`add_special_tokens=True` call would.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor

from .e2e import (  # noqa: F401  (re-exported: `from prefix_tuning.data import load_e2e`, ...)
    E2E_SHA256,
    E2E_URL,
    ENV_VAR,
    SLOT_NAMES,
    DataError,
    Example,
    ExampleList,
    MRGroup,
    download_e2e,
    group_by_mr,
    linearize_mr,
    load_e2e,
    parse_mr,
    resolve_data_dir,
)

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------ low data


def _permutation(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) that is the same on every machine and Python version: a
    Fisher-Yates shuffle driven only by `random.Random(seed).random()`, the one output Python guarantees
    to stay the same across versions for a given seed (unlike `shuffle`/`sample`/`randrange`)."""
    rng = random.Random(seed)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = min(int(rng.random() * (i + 1)), i)
        order[i], order[j] = order[j], order[i]
    return order


def low_data_split(examples: Sequence[Example], size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """The paper's low-data setting (§7.1 and appendix: subsets of 50/100/200/500 sampled from the full
    training set, with a dev split of 30% of the training size).

    Samples ROWS (MR/reference pairs) uniformly without replacement from `examples` (normally the full
    official train set), not MRs: the original trains on `table||ref` lines, so a low-data file is a set of
    lines. Returns `size` train examples and `round(0.3 * size)` dev examples, disjoint as rows (the same MR
    may occur in both, as with any row sample). Both lists keep file order. Reproducible: see `_permutation`.
    """
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"low-data size must be a positive int, got {size!r}")
    n_dev = round(0.3 * size)
    if size + n_dev > len(examples):
        raise ValueError(
            f"low-data size {size} needs {size + n_dev} examples (train + 30% dev); only {len(examples)} given"
        )
    order = _permutation(len(examples), seed)
    train_idx, dev_idx = sorted(order[:size]), sorted(order[size : size + n_dev])
    return [examples[i] for i in train_idx], [examples[i] for i in dev_idx]


# ------------------------------------------------------------------------------------------ encoding

_start_ids_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def eos_id_of(tokenizer) -> int:
    """The tokenizer's EOS id: the separator and the end of every training target, and what ends a generated text."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no eos_token; expected a causal-LM tokenizer with one "
            "(the separator and the end of every target are eos)"
        )
    return int(eos)


def _start_ids(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts before a text by itself (Llama's BOS; none for GPT-2/SmolLM2)."""
    try:
        return list(_start_ids_memo[tokenizer])
    except (KeyError, TypeError):
        pass
    probe = "x"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    start: list[int] = []
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i : i + len(plain)] == plain:
            start = list(with_special[:i])
            break
    try:
        _start_ids_memo[tokenizer] = tuple(start)
    except TypeError:
        pass
    return start


def _assemble(
    start: list[int], table_ids: list[int], ref_ids: list[int], eos: int, max_length: int | None
) -> tuple[list[int], list[int]]:
    prompt = start + table_ids + [eos]
    if max_length is not None:
        room = max_length - len(prompt) - 1
        if room < 0:
            raise DataError(
                f"prompt of {len(prompt)} tokens + final eos exceed max_length={max_length}; "
                "expected a max_length that fits the table, separator and end token"
            )
        ref_ids = ref_ids[:room]
    target = ref_ids + [eos]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


def encode_example(tokenizer, table: str, ref: str, *, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of the original's training sequence `' {table} ' eos ' {ref} ' eos`.

    labels are -100 on any start tokens, the table and the separator eos; the reference tokens (including the
    lone-space token that ends ' {ref} ') and the final eos are labelled with their own ids (the model shifts
    them). Truncation: if `max_length` is given and the sequence is longer, the END OF THE REFERENCE is cut so
    that the final eos always stays (and stays labelled); a prompt that leaves no room raises DataError.
    (The original truncated at block_size from the right, losing the eos; no E2E example comes near that.)
    """
    table_ids, ref_ids = _text_ids(tokenizer, [f" {table} ", f" {ref} "])
    return _assemble(_start_ids(tokenizer), table_ids, ref_ids, eos_id_of(tokenizer), max_length)


def encode_prompt(tokenizer, table: str) -> list[int]:
    """What generation feeds: start tokens + ids(' {table} ') + [eos], identical to the training sequence up
    to and including the separator (original: `tokenizer.encode(' {table} {bos}')` in run_generation.py)."""
    (table_ids,) = _text_ids(tokenizer, [f" {table} "])
    return _start_ids(tokenizer) + table_ids + [eos_id_of(tokenizer)]


class E2EDataset(torch.utils.data.Dataset):
    """Examples tokenised once (in batched tokenizer calls); item i is `(input_ids, labels)` as lists of ints,
    equal to `encode_example(tokenizer, ex.table, ex.ref, max_length=max_length)`."""

    def __init__(self, examples: Sequence[Example], tokenizer, *, max_length: int | None = None, chunk: int = 4096):
        self.examples = list(examples)
        eos, start = eos_id_of(tokenizer), _start_ids(tokenizer)
        tables: dict[str, list[int]] = {}
        unique = list(dict.fromkeys(e.table for e in self.examples))
        for i in range(0, len(unique), chunk):
            part = unique[i : i + chunk]
            tables.update(zip(part, _text_ids(tokenizer, [f" {t} " for t in part])))
        self.items: list[tuple[list[int], list[int]]] = []
        for i in range(0, len(self.examples), chunk):
            part = self.examples[i : i + chunk]
            refs = _text_ids(tokenizer, [f" {e.ref} " for e in part])
            for e, r in zip(part, refs):
                try:
                    self.items.append(_assemble(start, tables[e.table], r, eos, max_length))
                except DataError as err:
                    raise DataError(f"{e.source or 'example ' + str(len(self.items))}: {err}") from None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i]


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a batch of (input_ids, labels): `input_ids` (B, T) padded with `pad_id`, `attention_mask`
    (B, T) 1 on real tokens, `labels` (B, T) -100 on padding. With right padding and causal attention no real
    token sees a pad, so any pad id (e.g. eos) trains exactly like the original's added `[PAD]` token."""
    if not batch:
        raise ValueError("collate needs at least one example")
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        if len(ids) != len(labs):
            raise ValueError(f"example {row}: {len(ids)} input ids but {len(labs)} labels; expected equal lengths")
        n = len(ids)
        input_ids[row, :n] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.as_tensor(labs, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
