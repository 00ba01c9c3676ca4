"""WebNLG 2017 scoring as the challenge did it: BLEU, METEOR and TER on seen (S), unseen (U) and all (A) test
categories, the numbers of Li & Liang 2021 Table 1 (their `run_generation.py` calls DART's
`evaluation/run_eval_on_webnlg.sh`, which runs the organisers' scripts: gitlab.com/shimorina/
webnlg-automatic-evaluation, `evaluation.py`, `bleu_eval_3ref.sh`, `meteor_eval.sh`, `ter_eval.sh`).

What those scripts do, and this module repeats (checked byte for byte against the organisers' files and to
the printed digits against their scores, see tests/test_webnlg_metrics.py):
- Text: outputs `unidecode(line.strip())`, then lower-case, unidecode, split every non-word character off
  (`' '.join(re.split('(\\W)', s))`) and collapse spaces; references are split first, then lower-cased and
  unidecoded (`normalize_ref`). Only the first 3 references of an entry are used by every metric.
- BLEU: Moses `multi-bleu.perl -lc` over 3 reference files, an EMPTY line for an entry's missing reference.
  Not mteval: no smoothing (an n-gram order without matches makes BLEU 0), and the closest reference length
  (ties to the shorter) counts the empty slots as length 0, which lowers the brevity penalty of short outputs.
- METEOR 1.5: `-l en -norm -r 3` over 3 lines per entry (empty lines pad); same JVM options as the E2E scorer.
- TER: tercom 0.7.25 on the real references only (`metrics.ter`).
- Splits: seen = the 10 training categories (`prefix_tuning.webnlg.SEEN_CATEGORIES`), unseen = the 5 new ones,
  outputs kept in test-file order within each split.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence

import numpy as np

from .. import __version__
from . import ter
from .io import EvalInputError
from .java import MeteorProcess
from .mteval import max_ref_counts, ngram_counts

METRICS = ("BLEU", "METEOR", "TER")
MAX_REFS = 3
ORDER = 4
# Columns of a BLEU statistics row: output length, closest reference length, 4 matches, 4 totals.
N_STATS = 2 + 2 * ORDER
_NONWORD = re.compile(r"(\W)")
# unidecode 1.4.0's output for every non-ASCII character of the WebNLG 2017 release (all splits) and of the
# challenge submissions in shared/data, plus their case variants: enough to score WebNLG texts exactly when the
# `Unidecode` package (GPL, what the organisers used) is not installed; other characters then raise.
_BUILTIN = {ch: out for chars, out in {
    "ÀÁÂÃÄĂ": "A", "Æ": "AE", "ÇĆČ": "C", "É": "E", "Íİ": "I", "Ñ": "N", "ÒÓÖØŌ": "O", "ÙÚÜ": "U", "ß": "ss",
    "àáâãäă": "a", "æ": "ae", "çćč": "c", "é": "e", "íı": "i", "ñ": "n", "òóöøō": "o", "ùúü": "u", "Ğ": "G",
    "ğ": "g", "ŞŠȘ": "S", "şšș": "s", "Əə": "@", "\u0307": "", "–→": "-", "’": "'",
}.items() for ch in chars}  # fmt: skip


def _builtin_ascii(text: str) -> str:
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif ch in _BUILTIN:
            out.append(_BUILTIN[ch])
        else:
            raise EvalInputError(
                f"character {ch!r} (U+{ord(ch):04X}) in {text[:60]!r} has no built-in ASCII "
                "transliteration; `pip install Unidecode` (the challenge's own) to score it"
            )
    return "".join(out)


def transliterator() -> tuple[Callable[[str], str], str]:
    """(function, name): `unidecode` when installed (the organisers' tool), else the built-in table."""
    try:
        from importlib.metadata import version

        from unidecode import unidecode
    except ImportError:
        return _builtin_ascii, "builtin"
    return unidecode, f"unidecode-{version('Unidecode')}"


def normalize_hyp(text: str, ascii_fn: Callable[[str], str] | None = None) -> str:
    """An output as `evaluation.py::read_participant` + `write_to_file` leave it."""
    asc = ascii_fn or transliterator()[0]
    return " ".join(" ".join(_NONWORD.split(asc(asc(text.strip()).lower()))).split())


def normalize_ref(text: str, ascii_fn: Callable[[str], str] | None = None) -> str:
    """A reference as `evaluation.py::bleu_ref_files_gen` (and the METEOR/TER variants) write it."""
    asc = ascii_fn or transliterator()[0]
    return asc(" ".join(" ".join(_NONWORD.split(text)).split()).lower())


# -------------------------------------------------------------------------------------------------- BLEU


def bleu_segment_stats(hyps: Sequence[str], ref_slots: Sequence[Sequence[str]]) -> np.ndarray:
    """multi-bleu.perl's counts per segment; `ref_slots[i]` are segment i's reference lines (empty ones too)."""
    rows = np.zeros((len(hyps), N_STATS), dtype=np.int64)
    for row, hyp, slots in zip(rows, hyps, ref_slots):
        words = hyp.split()  # Perl `split` (awk mode); the text is ASCII
        refs = [ref.split() for ref in slots]
        clip = max_ref_counts(ngram_counts(r, ORDER) for r in refs)
        closest_diff, closest = 9999, 9999
        for r in refs:
            diff = abs(len(words) - len(r))
            if diff < closest_diff or (diff == closest_diff and len(r) < closest):
                closest_diff, closest = diff, len(r)
        row[0], row[1] = len(words), closest
        for gram, count in ngram_counts(words, ORDER).items():
            row[1 + len(gram)] += min(count, clip.get(gram, 0))
            row[1 + ORDER + len(gram)] += count
    return rows


def multibleu_from_stats(totals: Sequence[int] | np.ndarray) -> dict[str, float]:
    """multi-bleu.perl's corpus result: `bleu` (fraction), `precisions`, `bp`, `ratio`, `hyp_len`, `ref_len`."""
    hyp_len, ref_len = int(totals[0]), int(totals[1])
    precisions = [int(m) / int(t) if t else 0.0 for m, t in zip(totals[2 : 2 + ORDER], totals[2 + ORDER :])]
    if ref_len == 0:  # the script prints BLEU = 0 and exits
        return {"bleu": 0.0, "precisions": [0.0] * ORDER, "bp": 0.0, "ratio": 0.0, "hyp_len": 0, "ref_len": 0}
    if hyp_len == 0:  # Perl dies dividing by zero; every output is empty
        return {"bleu": 0.0, "precisions": precisions, "bp": 0.0, "ratio": 0.0, "hyp_len": 0, "ref_len": ref_len}
    bp = float(np.exp(1 - ref_len / hyp_len)) if hyp_len < ref_len else 1.0
    logs = [float(np.log(p)) if p else -9999999999.0 for p in precisions]
    return {"bleu": bp * float(np.exp(sum(logs) / ORDER)), "precisions": precisions, "bp": bp,
            "ratio": hyp_len / ref_len, "hyp_len": hyp_len, "ref_len": ref_len}  # fmt: skip


def multibleu_line(totals: Sequence[int] | np.ndarray) -> str:
    """The line multi-bleu.perl prints, e.g. `BLEU = 60.59, 85.6/67.9/53.7/43.1 (BP=1.000, ratio=1.023, ...)`."""
    r = multibleu_from_stats(totals)
    p = "/".join(f"{100 * x:.1f}" for x in r["precisions"])
    return (
        f"BLEU = {100 * r['bleu']:.2f}, {p} (BP={r['bp']:.3f}, ratio={r['ratio']:.3f}, "
        f"hyp_len={r['hyp_len']}, ref_len={r['ref_len']})"
    )


# ------------------------------------------------------------------------------------------------ METEOR


class _Meteor(MeteorProcess):
    """METEOR 1.5 (`-l en -norm`) returning per-segment statistics, so S, U and A cost one scoring pass."""

    def stats(self, refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> list[str]:
        lines = [self.score_line(r, h) for r, h in zip(refs, hyps)]
        errors: list[BaseException] = []
        # Write from a thread while reading here, so neither pipe can fill up (as MeteorProcess.score).
        writer = threading.Thread(target=self._write, args=(lines, errors), daemon=True)
        writer.start()
        out = [self._readline() for _ in lines]
        writer.join()
        if errors:
            raise RuntimeError(f"writing to METEOR failed: {errors[0]}")
        return out

    def corpus(self, stats: Sequence[str]) -> float:
        errors: list[BaseException] = []
        self._write(["EVAL ||| " + " ||| ".join(stats)], errors)
        if errors:
            raise RuntimeError(f"writing to METEOR failed: {errors[0]}")
        for _ in stats:
            self._readline()
        return float(self._readline())


# ------------------------------------------------------------------------------------------------- API


def _check(hyps: Sequence[str], refs: Sequence[Sequence[str]], seen: Sequence[bool]) -> None:
    if isinstance(hyps, str) or any(isinstance(group, str) for group in refs):
        raise EvalInputError("hyps must be a list of strings and refs a list of reference lists")
    if not (len(hyps) == len(refs) == len(seen)):
        raise EvalInputError(
            f"{len(hyps)} outputs, {len(refs)} reference sets and {len(seen)} seen flags; "
            "expected one of each per test entry"
        )
    if not hyps:
        raise EvalInputError("nothing to score: no outputs")
    for i, group in enumerate(refs):
        if not group or not any(r.strip() for r in group):
            raise EvalInputError(f"entry {i} has no reference; every entry needs at least one")


def score_webnlg(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], seen: Sequence[bool], metrics: Sequence[str] | str = METRICS
) -> dict[str, dict[str, float]]:
    """Challenge scores of one output per entry: `{"S": {"BLEU", "METEOR", "TER"}, "U": {...}, "A": {...}}`.

    hyps: raw outputs (one line each, no preprocessing needed); refs: each entry's references in XML order
    (`webnlg.Entry.refs`; only the first 3 count); seen: the entry's category is a training category
    (`webnlg.Entry.seen`). A split without entries (e.g. dev has no unseen category) is left out. All three
    metrics are fractions (multi-bleu prints 100 * BLEU). METEOR needs Java; TER costs ~5-10 s of CPU per 1,000
    entries. Per-segment statistics: `bleu_segment_stats` (+ `multibleu_from_stats`), `ter.segment_stats`.
    """
    _check(hyps, refs, seen)
    wanted = _wanted(metrics)
    asc = transliterator()[0]
    norm_hyps = [normalize_hyp(h, asc) for h in hyps]
    norm_refs = [[normalize_ref(r, asc) for r in group[:MAX_REFS]] for group in refs]
    slots = [group + [""] * (MAX_REFS - len(group)) for group in norm_refs]
    masks = {"S": np.array(seen, dtype=bool), "U": ~np.array(seen, dtype=bool), "A": np.ones(len(hyps), bool)}
    masks = {k: m for k, m in masks.items() if m.any()}
    meteor = _Meteor() if "METEOR" in wanted else None  # starts loading while BLEU and TER run
    try:
        per_metric: dict[str, Callable[[np.ndarray], float]] = {}
        if "BLEU" in wanted:
            bleu_rows = bleu_segment_stats(norm_hyps, slots)
            per_metric["BLEU"] = lambda m: multibleu_from_stats(bleu_rows[m].sum(axis=0))["bleu"]
        if "TER" in wanted:
            ter_rows = ter.segment_stats(norm_hyps, norm_refs)
            per_metric["TER"] = lambda m: ter.ter_from_stats(ter_rows[m].sum(axis=0))
        if meteor is not None:
            met = meteor.stats(slots, norm_hyps)
            per_metric["METEOR"] = lambda m: meteor.corpus([s for s, keep in zip(met, m) if keep])
        return {split: {name: per_metric[name](m) for name in wanted} for split, m in masks.items()}
    finally:
        if meteor is not None:
            meteor.close()


def _wanted(metrics: Sequence[str] | str) -> list[str]:
    names = {x.strip().upper() for x in (metrics.split(",") if isinstance(metrics, str) else metrics)}
    unknown = names - set(METRICS)
    if unknown or not names:
        raise ValueError(f"unknown or no metric {sorted(unknown)}; choose from {', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


def signature(metrics: Sequence[str] | str = METRICS) -> str:
    """A sacrebleu-like string of the scoring settings, to store next to results."""
    parts = {"BLEU": "bleu:multi-bleu-lc-3ref", "METEOR": "meteor:1.5-en-norm-3ref", "TER": "ter:tercom-0.7.25-3ref"}
    chosen = [parts[m] for m in _wanted(metrics)]
    return "|".join(
        [
            "webnlg2017-official",
            "tok:split-nonword-lc",
            f"ascii:{transliterator()[1]}",
            *chosen,
            f"version:{__version__}",
        ]
    )
