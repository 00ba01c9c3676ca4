"""The datasets a run can use (`DataConfig.dataset`), one small table of functions each: the training and dev
examples, and the sources to decode with their references and how their outputs are scored.

- `e2e`: unique MRs, the official E2E metrics (`metrics.score`).
- `webnlg`: unique triple sets (`webnlg.decode_groups`), outputs spread back to entries and scored with the
  challenge's BLEU/METEOR/TER on seen (S), unseen (U) and all (A) categories (`webnlg.score_outputs`).
- `custom`: your files (`owndata`), unique sources with all their references, the E2E metrics over all
  sources and, with `group_field`, per group.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import owndata, webnlg
from .config import RunConfig
from .data import Example, group_by_mr, linearize_mr, load_e2e, low_data_split
from .metrics import JavaNotFoundError, normalize_metrics, score, signature
from .metrics.api import JAVA_METRICS

Scorer = Callable[[Sequence[str], "Sequence[str] | None"], dict]
"""(outputs, metric names or None for all) -> the scores JSON of a decode."""


@dataclass
class DecodeSet:
    """What `generate` decodes for one split: one table (prompt source) per unique source, its references,
    and the scorer of one output per table."""

    tables: list[str]
    refs: list[tuple[str, ...]]
    score: Scorer


def score_outputs(refs: Sequence[Sequence[str]], hyps: Sequence[str], metrics: Sequence[str] | None = None) -> dict:
    """`metrics.score` and its `signature`; without Java, only the metrics that need none (with a warning)."""
    wanted = normalize_metrics(metrics)
    refs, hyps = [list(r) for r in refs], list(hyps)
    try:
        res = score(refs, hyps, wanted)
    except JavaNotFoundError as e:
        rest = [m for m in wanted if m not in JAVA_METRICS]
        if not rest:
            raise
        print(f"warning: {e}; scoring {', '.join(rest)} only", file=sys.stderr)
        wanted, res = rest, score(refs, hyps, rest)
    return {**res, "signature": signature(wanted)}


# ------------------------------------------------------------------------------------------ per dataset


def _e2e_examples(cfg: RunConfig, split: str) -> list[Example]:
    return load_e2e(
        split, variant=cfg.data.variant, data_dir=cfg.data.dir, on_error=cfg.data.on_error, ref_style=cfg.data.ref_style
    )


def _webnlg_examples(cfg: RunConfig, split: str) -> list[Example]:
    return webnlg.training_examples(webnlg.load_webnlg(split, data_dir=cfg.data.dir))


def _custom_file(cfg: RunConfig, split: str) -> str:
    path = {"train": cfg.data.train, "dev": cfg.data.dev, "test": cfg.data.test}[split]
    if not path:
        raise ValueError(
            f"data.{split}: no file given; expected a {cfg.data.format} file for the {split} split "
            "of data.dataset=custom"
        )
    return path


def _custom_rows(cfg: RunConfig, split: str) -> list[owndata.Row]:
    d = cfg.data
    return owndata.load_rows(
        _custom_file(cfg, split),
        d.format,
        source_field=d.source_field,
        target_field=d.target_field,
        group_field=d.group_field,
    )


def _custom_examples(cfg: RunConfig, split: str) -> list[Example]:
    if split == "dev" and not cfg.data.dev:
        return []  # no dev file: no dev loss
    return owndata.training_examples(_custom_rows(cfg, split))


def _e2e_decode(cfg: RunConfig, split: str, limit: int | None) -> DecodeSet:
    # tables in the form the run trained on; references always raw (the official scorer's)
    groups = group_by_mr(load_e2e(split, variant=cfg.data.variant, data_dir=cfg.data.dir, on_error=cfg.data.on_error))[
        :limit
    ]
    tokenized = cfg.data.ref_style == "tokenized"
    tables = [linearize_mr(g.mr, tokenized=True) for g in groups] if tokenized else [g.table for g in groups]
    refs = [tuple(g.refs) for g in groups]
    return DecodeSet(tables, refs, lambda hyps, metrics: score_outputs(refs, hyps, metrics))


def _webnlg_decode(cfg: RunConfig, split: str, limit: int | None) -> DecodeSet:
    entries = webnlg.load_webnlg(split, data_dir=cfg.data.dir)
    groups = webnlg.decode_groups(entries)
    if limit is not None:  # the test file lists every seen category first: take both halves, keep file order
        seen = {e.table: e.seen for e in entries}
        n_seen = (limit + 1) // 2 if any(not seen[g.table] for g in groups) else limit
        first_seen = [g.table for g in groups if seen[g.table]][:n_seen]
        first_unseen = [g.table for g in groups if not seen[g.table]][: limit - len(first_seen)]
        chosen = set(first_seen + first_unseen)
        groups = [g for g in groups if g.table in chosen]
    kept = {g.table for g in groups}
    entries = [e for e in entries if e.table in kept]
    return DecodeSet(
        [g.table for g in groups],
        [tuple(g.refs) for g in groups],
        lambda hyps, metrics: webnlg.score_outputs(entries, groups, hyps, metrics),
    )


def _custom_decode(cfg: RunConfig, split: str, limit: int | None) -> DecodeSet:
    groups = owndata.source_groups(_custom_rows(cfg, split))[:limit]
    return DecodeSet(
        [g.source for g in groups],
        [g.refs for g in groups],
        lambda hyps, metrics: owndata.score_by_group(
            groups, hyps, lambda refs, outs: score_outputs(refs, outs, metrics)
        ),
    )


EXAMPLES: dict[str, Callable[[RunConfig, str], list[Example]]] = {
    "e2e": _e2e_examples,
    "webnlg": _webnlg_examples,
    "custom": _custom_examples,
}
DECODE: dict[str, Callable[[RunConfig, str, int | None], DecodeSet]] = {
    "e2e": _e2e_decode,
    "webnlg": _webnlg_decode,
    "custom": _custom_decode,
}


def train_dev_examples(cfg: RunConfig) -> tuple[list[Example], list[Example]]:
    """Train and dev examples of the run's dataset; with `data.train_size`, a seeded row sample of train and
    a dev split of 30% of it (`data.low_data_split`); `data.dev_size` cuts dev."""
    train = EXAMPLES[cfg.data.dataset](cfg, "train")
    if cfg.data.train_size is not None:
        train, dev = low_data_split(train, cfg.data.train_size, cfg.data.subset_seed)
    else:
        dev = EXAMPLES[cfg.data.dataset](cfg, "dev")
    if cfg.data.dev_size is not None:
        dev = dev[: cfg.data.dev_size]
    return train, dev


def decode_set(cfg: RunConfig, split: str, limit: int | None = None) -> DecodeSet:
    """The unique sources of `split` (first `limit`, in order of first appearance; webnlg: the first half of
    `limit` from seen and the rest from unseen categories, so that S, U and A are all scored), their references
    and scorer."""
    return DECODE[cfg.data.dataset](cfg, split, limit)
