"""Time prefix_tuning.metrics on the full E2E test set (630 MRs, 4,693 refs, TGen outputs).

Usage:  python benchmarks/evaluate.py [--repeat N] [--official-coco] [--skip-meteor]

Prints one row per metric scored alone (each run starts the JVMs it needs), the four
metrics without METEOR together, all five together, and the two start-up costs that
bound the total: a JVM running CoreNLP's PTBTokenizer, and METEOR 1.5 loading its
paraphrase table (~60 MB gzipped) before it can score anything. The official scorer
needs ~20 s on this set; METEOR's start-up plus its scoring pass alone take ~5-8 s of
one core, so the 5 s target for all five metrics is out of reach whenever METEOR is
included: everything else runs while METEOR loads. Wall times on a shared machine
vary with its load; the load average is printed.

``--official-coco`` also times pycocoevalcap's classes driven as measure_scores.py
drives them (two tokenizer runs, METEOR one line at a time). The last table shows
how far common defaults (sacrebleu's case-sensitive BLEU, '' padding, nltk if
installed) are from the official numbers.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from prefix_tuning.metrics import METRICS, load, score
from prefix_tuning.metrics.java import MeteorProcess, ptb_tokenize

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PREFIX_TUNING_DATA") or REPO.parent / "shared" / "data")
# Official scorer on the TGen outputs (shared/data/e2e-eval/README.md).
OFFICIAL = {"BLEU": 0.6592719328, "NIST": 8.6093776203, "METEOR": 0.44825963401948726,
            "ROUGE_L": 0.685022628460141, "CIDEr": 2.2338463877854293}  # fmt: skip


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the JVMs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


CPU: dict[str, float] = {}
T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int, label: str = "") -> tuple[float, T]:
    """Median wall time over ``repeat`` runs and the last result (CPU time kept by label)."""
    times, cpus = [], []
    for _ in range(max(repeat, 1)):
        start, cpu = time.perf_counter(), _cpu()
        result = fn()
        times.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    CPU[label] = statistics.median(cpus)
    return statistics.median(times), result


def meteor_startup() -> None:
    """METEOR's JVM start and paraphrase-table load: the floor of any METEOR run."""
    with MeteorProcess() as proc:
        proc.score([["a b"]], ["a b"])


def official_coco(refs: list[list[str]], hyps: list[str]) -> dict[str, float]:
    """pycocoevalcap 1.2 as measure_scores.py uses it (METEOR, ROUGE_L, CIDEr)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {f"inst-{i}": [{"caption": r} for r in group] for i, group in enumerate(refs)}
    res = {f"inst-{i}": [{"caption": h}] for i, h in enumerate(hyps)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    return {name: float(s.compute_score(gts, res)[0]) for s, name in
            [(Meteor(), "METEOR"), (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]}  # fmt: skip


def default_scores(refs: list[list[str]], hyps: list[str]) -> list[tuple[str, str, float]]:
    """BLEU/NIST from popular defaults, to show how far they are from the official ones."""
    from sacrebleu.metrics import BLEU

    width = max(map(len, refs))
    padded_none: Any = [[g[i] if i < len(g) else None for g in refs] for i in range(width)]
    padded_empty = [[g[i] if i < len(g) else "" for g in refs] for i in range(width)]
    rows = [
        (
            "BLEU",
            "sacrebleu BLEU() default (case-sensitive)",
            BLEU().corpus_score(hyps, padded_none).score / 100,
        ),
        (
            "BLEU",
            "sacrebleu lowercase, refs padded with ''",
            BLEU(lowercase=True).corpus_score(hyps, padded_empty).score / 100,
        ),  # fmt: skip
        (
            "BLEU",
            "sacrebleu lowercase, refs padded with None",
            BLEU(lowercase=True).corpus_score(hyps, padded_none).score / 100,
        ),  # fmt: skip
    ]
    try:
        from nltk.translate.bleu_score import corpus_bleu
        from nltk.translate.nist_score import corpus_nist
    except ImportError:
        print("(nltk not installed: its rows are skipped)", file=sys.stderr)
        return rows
    ref_tok = [[r.lower().split() for r in group] for group in refs]
    hyp_tok = [h.lower().split() for h in hyps]
    rows.append(("BLEU", "nltk corpus_bleu, lowercased whitespace tokens", corpus_bleu(ref_tok, hyp_tok)))
    rows.append(("NIST", "nltk corpus_nist, lowercased whitespace tokens", corpus_nist(ref_tok, hyp_tok, n=5)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median is shown)")
    parser.add_argument("--official-coco", action="store_true", help="also time pycocoevalcap's own path")
    parser.add_argument("--skip-meteor", action="store_true", help="leave out everything that runs METEOR")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "testset_w_refs.csv"
        with zipfile.ZipFile(DATA / "e2e" / "e2e-dataset.zip") as zf:
            csv_path.write_bytes(zf.read("e2e-dataset/testset_w_refs.csv"))
        read_s, (refs, hyps) = timed(lambda: load(csv_path, DATA / "e2e-eval" / "tgen-test-output.txt"), 1)

    print(f"E2E test set: {len(refs)} MRs, {sum(map(len, refs))} refs; TGen outputs")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; repeat {args.repeat}\n")
    rows: list[tuple[str, float, str]] = [("read files", read_s, "")]
    CPU["read files"] = CPU.pop("")
    singles = [m for m in METRICS if not (args.skip_meteor and m == "METEOR")]
    for name in singles:
        seconds, result = timed(partial(score, refs, hyps, [name]), args.repeat, name)
        value = result[name]
        ok = "ok" if round(value, 4) == round(OFFICIAL[name], 4) else "MISMATCH"
        rows.append((name, seconds, f"{value:.4f} ({ok} vs official {OFFICIAL[name]:.4f})"))
    four = ["BLEU", "NIST", "ROUGE_L", "CIDEr"]
    label = "BLEU+NIST+ROUGE_L+CIDEr"
    seconds, _ = timed(lambda: score(refs, hyps, four), args.repeat, label)
    rows.append((label, seconds, "target <= 1 s"))
    if not args.skip_meteor:
        seconds, result = timed(lambda: score(refs, hyps), args.repeat, "all five")
        same = all(round(result[m], 4) == round(OFFICIAL[m], 4) for m in METRICS)
        rows.append(("all five", seconds, f"target <= 5 s; all equal official: {same}"))
    texts = [r for group in refs for r in group] + hyps
    label = "  bound: PTBTokenizer JVM, all texts"
    seconds, _ = timed(lambda: ptb_tokenize(texts), args.repeat, label)
    rows.append((label, seconds, "one JVM start"))
    if not args.skip_meteor:
        label = "  bound: METEOR start-up"
        seconds, _ = timed(meteor_startup, args.repeat, label)
        rows.append((label, seconds, "JVM + paraphrase table, one line scored"))
    if args.official_coco and not args.skip_meteor:
        label = "pycocoevalcap as the scorer runs it"
        seconds, result = timed(lambda: official_coco(refs, hyps), 1, label)
        rows.append((label, seconds, "METEOR+ROUGE_L+CIDEr, no BLEU/NIST"))

    width = max(len(r[0]) for r in rows)
    print(f"{'what'.ljust(width)}  {'seconds':>8}  {'cpu s':>6}  notes")
    for what, seconds, note in rows:
        print(f"{what.ljust(width)}  {seconds:8.2f}  {CPU.get(what, 0.0):6.2f}  {note}")
    print("(seconds: wall-clock median; cpu s: CPU time of Python and the JVMs together)")
    walls = {what.strip(): seconds for what, seconds, _ in rows}
    if "all five" in walls and "bound: METEOR start-up" in walls:
        start_up = walls["bound: METEOR start-up"]
        print(
            f"\nBound: METEOR alone needs {start_up:.2f} s before it scores its first segment; all five "
            f"took {walls['all five']:.2f} s, i.e. {walls['all five'] - start_up:.2f} s more, mostly METEOR "
            "scoring 630 segments (the other metrics run while it loads).\nSo 5 s for all five is out of "
            "reach unless METEOR's start-up plus scoring fit in it (a fast, idle core)."
        )

    print("\nCommon defaults vs the official scorer (TGen outputs):")
    for metric, how, value in default_scores(refs, hyps):
        error = value - OFFICIAL[metric]
        print(f"  {metric:4}  {value:.6f}  (official {OFFICIAL[metric]:.6f}, error {error:+.2e})  {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
