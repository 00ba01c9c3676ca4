"""``score``: all five E2E metrics as the official scorer computes them, in one call.

Work is overlapped to stay near the cost of the slowest part (METEOR's start-up):
METEOR's JVM starts first and loads its paraphrase table; the CoreNLP tokenizer runs
once for references and outputs together; BLEU and NIST (pure Python) are computed
while the tokenizer runs, ROUGE_L and CIDEr while METEOR scores.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from .. import __version__
from . import bleu, coco, mteval, nist
from .io import EvalInputError
from .java import MeteorProcess, PTBTokenizeJob

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
JAVA_METRICS = frozenset({"METEOR", "ROUGE_L", "CIDEr"})
_ALIASES = {name.lower().replace("_", "").replace("-", ""): name for name in METRICS}
_SIGNATURE = {
    "BLEU": "bleu:13a-lc",
    "NIST": "nist:mteval-v13a-n5",
    "METEOR": "meteor:1.5-en-norm",
    "ROUGE_L": "rouge_l:coco-beta1.2",
    "CIDEr": "cider:coco-d",
}


def normalize_metrics(metrics: Iterable[str] | None) -> list[str]:
    """Canonical metric names in canonical order (``rouge-l`` -> ``ROUGE_L``).

    Accepts names in any case, with or without ``_``/``-``, or one comma-separated string.
    """
    if metrics is None:
        return list(METRICS)
    if isinstance(metrics, str):
        metrics = [part for part in metrics.split(",") if part.strip()]
    chosen = set()
    for name in metrics:
        key = name.strip().lower().replace("_", "").replace("-", "")
        if key not in _ALIASES:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        chosen.add(_ALIASES[key])
    if not chosen:
        raise ValueError(f"no metric selected; choose from {', '.join(METRICS)}")
    return [name for name in METRICS if name in chosen]


def signature(metrics: Iterable[str] | None = None) -> str:
    """A sacrebleu-like string of the scoring settings, to store next to results."""
    parts = [_SIGNATURE[name] for name in normalize_metrics(metrics)]
    return "|".join(["e2e-official", *parts, f"version:{__version__}"])


def _check(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> None:
    if isinstance(hyps, str) or any(isinstance(group, str) for group in refs):
        raise EvalInputError("refs must be a list of reference lists and hyps a list of strings")
    if len(refs) != len(hyps):
        raise EvalInputError(f"{len(hyps)} outputs for {len(refs)} reference sets; give one output per MR")
    if not hyps:
        raise EvalInputError("nothing to score: no outputs and no references")
    for i, group in enumerate(refs):
        if not group:
            raise EvalInputError(f"MR {i} has no reference; every MR needs at least one")
    for what, texts in (("output", [[hyp] for hyp in hyps]), ("reference of MR", refs)):
        for i, group in enumerate(texts):
            for text in group:
                try:  # a lone surrogate (text decoded with errors="surrogateescape") cannot reach Java
                    text.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise EvalInputError(
                        f"{what} {i}: not valid Unicode text ({err.reason} at character "
                        f"{err.start}); decode the text as UTF-8 without surrogateescape"
                    ) from None


def _mteval_scores(prepared: mteval.PreparedRefs, hyps: Sequence[str], wanted: list[str]) -> dict[str, float]:
    hyp_tokens = [mteval.words(hyp) for hyp in hyps]
    out = {}
    if "BLEU" in wanted:
        out["BLEU"] = bleu.corpus_bleu(prepared, hyp_tokens)
    if "NIST" in wanted:
        out["NIST"] = nist.corpus_nist(prepared, hyp_tokens)
    return out


def score(refs: Sequence[Sequence[str]], hyps: Sequence[str], metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Score outputs against references like the official E2E ``measure_scores.py``.

    ``refs[i]`` are the references of MR ``i``, ``hyps[i]`` its output (one line of
    text; surrounding whitespace is stripped as when reading a file). Returns the
    requested subset of ``BLEU``, ``NIST``, ``METEOR``, ``ROUGE_L`` and ``CIDEr``
    (default all, in that order), BLEU/METEOR/ROUGE_L as fractions. METEOR, ROUGE_L
    and CIDEr need Java and raise ``JavaNotFoundError`` without it.
    """
    return score_many(refs, [hyps], metrics)[0]


def score_many(
    refs: Sequence[Sequence[str]],
    systems: Sequence[Sequence[str]],
    metrics: Sequence[str] | None = None,
) -> list[dict[str, float]]:
    """:func:`score` for several systems on the same references, sharing the JVMs."""
    wanted = normalize_metrics(metrics)
    if not systems:
        raise ValueError("no system outputs given")
    for hyps in systems:
        _check(refs, hyps)
    ref_lists = [list(group) for group in refs]
    sys_lists = [[hyp.strip() for hyp in hyps] for hyps in systems]  # as read from a file
    results: list[dict[str, float]] = [{} for _ in sys_lists]
    meteor = MeteorProcess() if "METEOR" in wanted else None
    job = None
    try:
        if JAVA_METRICS.intersection(wanted):
            flat = [ref for group in ref_lists for ref in group]
            job = PTBTokenizeJob(flat + [hyp for hyps in sys_lists for hyp in hyps])
        if {"BLEU", "NIST"}.intersection(wanted):
            prepared = mteval.prepare_refs(ref_lists)
            if "NIST" in wanted and not any(map(any, prepared.lengths)):
                raise EvalInputError("every reference is empty: NIST is undefined; give references with words")
            for hyps, out in zip(sys_lists, results):
                out.update(_mteval_scores(prepared, hyps, wanted))
        if job is not None:
            _java_scores(job.result(), ref_lists, sys_lists, wanted, meteor, results)
    finally:
        if job is not None:
            job.close()
        if meteor is not None:
            meteor.close()
    return [{name: out[name] for name in wanted} for out in results]


def _java_scores(
    tokens: list[str],
    refs: list[list[str]],
    systems: list[list[str]],
    wanted: list[str],
    meteor: MeteorProcess | None,
    results: list[dict[str, float]],
) -> None:
    """METEOR (in a thread, mostly waiting on the JVM), ROUGE_L and CIDEr per system."""
    ref_tok, start = [], 0
    for group in refs:
        ref_tok.append(tokens[start : start + len(group)])
        start += len(group)
    sys_tok = []
    for hyps in systems:
        sys_tok.append(tokens[start : start + len(hyps)])
        start += len(hyps)
    failure: list[BaseException] = []

    def run_meteor(proc: MeteorProcess) -> None:
        try:
            for hyp_tok, out in zip(sys_tok, results):
                out["METEOR"] = proc.score(ref_tok, hyp_tok)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = None
    if meteor is not None:
        thread = threading.Thread(target=run_meteor, args=(meteor,), daemon=True)
        thread.start()
    for hyp_tok, out in zip(sys_tok, results):
        if "ROUGE_L" in wanted:
            out["ROUGE_L"] = coco.rouge_l(ref_tok, hyp_tok)
        if "CIDEr" in wanted:
            out["CIDEr"] = coco.cider_d(ref_tok, hyp_tok)
    if thread is not None:
        thread.join()
    if failure:
        raise failure[0]
