# SPDX-License-Identifier: LGPL-2.1-or-later (a port of tercom's TER algorithm; see the docstring)
"""TER exactly as tercom 0.7.25 (`java -jar tercom.7.25.jar -h hyp -r ref`, the WebNLG 2017 scorer) computes it.

Why not sacrebleu's TER: it is a re-implementation with another beam (width 25 along a diagonal band, tercom:
20 above each column's best) and another shift search, and on the WebNLG 2017 challenge files it misses the
official tercom totals (Baseline unseen 16005 vs 16030 edits: .8060 vs .8073; ADAPT seen 8881 vs 8883: .3787 vs
.3788; all 6 seen/unseen system totals checked differ). This module follows tercom's algorithm step by step
(`TERcalc.java` of 0.7.25 as kept in the LGPL-2.1 tercom 0.8.0, `ter/core/TerScorer.java`, whose changelog
lists no scoring change since 0.7.25; both give the official totals and counters): default options (no -N
normalisation, case-insensitive, punctuation kept), costs 1 for insertion, deletion, substitution and shift,
shifts of at most 10 words over at most 50 positions, greedy best shift first (longest phrases first, ties to
the first found, a shift that only breaks even accepted while none is chosen), beam 20 in the edit distance.
With several references the segment's edits are those of the first best reference and its length is the mean
reference length; the corpus TER is total edits / total mean lengths. (Being written from tercom's source,
this module follows LGPL-2.1 code; tercom 0.7.25 itself carries a research-only BBN/UMD licence.)

Speed: tercom's edit distance visits cells one by one; here every column is computed with numpy for all
candidate shifts of all segments at once (the delete chain of a column is a running minimum of
`S[k] - k`), which gives the same numbers, alignments and ties as the cell-by-cell loop.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BEAM_WIDTH = 20
MAX_SHIFT_SIZE = 10
MAX_SHIFT_DIST = 50
_BIG = 1 << 20  # "unreached" (tercom: -1 / INF); edit counts stay far below
# Path symbols as tercom's alignment: match, substitution, insertion (hyp word), deletion (ref word).
_MATCH, _SUB, _INS, _DEL = 1, 2, 3, 4
_JAVA_SPACE = re.compile(r"[ \t\n\x0b\f\r]+")  # Java's \s


def tokenize(text: str) -> list[str]:
    """tercom's words: lower-cased (its default), split on runs of ASCII whitespace."""
    text = _JAVA_SPACE.sub(" ", text.lower()).strip(" ")
    return text.split(" ") if text else []


@dataclass
class TerCounters:
    """tercom's closing counters (`Number of calls to beam search`, `... segments scored`, `... shifts tried`)."""

    beam_calls: int = 0
    segments_scored: int = 0
    shifts_tried: int = 0


@dataclass
class _Pair:
    """One hypothesis/reference pair while shifts are searched (tercom's `TER(hyp, ref)` loop)."""

    ref: list[int]
    rloc: dict[tuple[int, ...], list[int]]
    cur: list[int]
    edits: int = 0  # edit distance of `cur`
    path: list[int] | None = None
    shifts: int = 0


def _word_matches(hyp: Sequence[int], ref: Sequence[int]) -> dict[tuple[int, ...], list[int]]:
    """Ref phrases (up to MAX_SHIFT_SIZE + 1 words, all words in the hyp) -> sorted start positions."""
    present = set(hyp)
    out: dict[tuple[int, ...], list[int]] = {}
    for start in range(len(ref)):
        end = start
        while end < len(ref) and end - start <= MAX_SHIFT_SIZE and ref[end] in present:
            out.setdefault(tuple(ref[start : end + 1]), []).append(start)
            end += 1
    return out


def _align_errors(path: list[int], n_hyp: int, n_ref: int) -> tuple[list[bool], list[bool], list[int]]:
    herr, rerr, ralign = [False] * n_hyp, [False] * n_ref, [0] * n_ref
    h = r = -1
    for sym in path:
        if sym == _INS:
            h += 1
            herr[h] = True
            continue
        if sym != _DEL:
            h += 1
        r += 1
        rerr[r] = sym != _MATCH
        ralign[r] = h
        if sym != _DEL:
            herr[h] = sym == _SUB
    return herr, rerr, ralign


def _possible_shifts(pair: _Pair) -> list[list[tuple[int, int, int]]]:
    """(start, end, newloc) candidates per phrase length - 1, in tercom's order (`GatherAllPossShifts`)."""
    hyp, rloc = pair.cur, pair.rloc
    assert pair.path is not None
    herr, rerr, ralign = _align_errors(pair.path, len(hyp), len(pair.ref))
    shifts: list[list[tuple[int, int, int]]] = [[] for _ in range(MAX_SHIFT_SIZE + 1)]
    for start in range(len(hyp)):
        first = rloc.get((hyp[start],))
        if first is None or not any(start != ralign[m] and ralign[m] - start <= MAX_SHIFT_DIST
                                    and start - ralign[m] - 1 <= MAX_SHIFT_DIST for m in first):  # fmt: skip
            continue
        ok, end = True, start
        while ok and end < len(hyp) and end < start + MAX_SHIFT_SIZE:
            cand = tuple(hyp[start : end + 1])
            ok = False
            movetos = rloc.get(cand)
            if movetos is not None:
                if not any(herr[start : end + 1]):
                    ok = True
                else:
                    for moveto in movetos:
                        ra = ralign[moveto]
                        if not (ra != start and (ra < start or ra > end) and ra - start <= MAX_SHIFT_DIST
                                and start - ra <= MAX_SHIFT_DIST):  # fmt: skip
                            continue
                        ok = True
                        if not any(rerr[moveto : moveto + end - start + 1]):
                            continue
                        for roff in range(-1, end - start + 1):
                            if roff == -1 and moveto == 0:
                                shifts[end - start].append((start, end, -1))
                            elif start != ralign[moveto + roff] and (roff == 0 or ralign[moveto + roff] != ra):
                                shifts[end - start].append((start, end, ralign[moveto + roff]))
            end += 1
    return shifts


def _perform_shift(words: list[int], start: int, end: int, newloc: int) -> list[int]:
    """Move words[start..end] after position newloc (-1: to the front), as tercom's `PerformShift`."""
    phrase = words[start : end + 1]
    if newloc == -1:
        return phrase + words[:start] + words[end + 1 :]
    if newloc < start:
        return words[: newloc + 1] + phrase + words[newloc + 1 : start] + words[end + 1 :]
    if newloc > end:
        return words[:start] + words[end + 1 : newloc + 1] + phrase + words[newloc + 1 :]
    # inside itself
    mid_end = min(len(words), end + (newloc - start) + 1)
    return words[:start] + words[end + 1 : mid_end] + phrase + words[end + (newloc - start) + 1 :]


def _edit_distances(hyps: list[list[int]], refs: list[list[int]], paths: bool = False):
    """tercom's beam-searched `MinEditDist` for many (hyp, ref) pairs: edit counts, and alignment paths if asked.

    Column j of tercom's loop (cells in ref order) is: a delete chain S[i+1] = min(S[i+1], S[i] + 1) over the
    cells within the beam, then diagonal (match 0 / substitution 1) and insertion moves into column j + 1, the
    insertion only where strictly cheaper; the beam drops cells more than 20 above the smallest diagonal cost
    that entered the column (never in the last column). Cells outside the beam cannot lower a cell inside it,
    so the chain is a running minimum over all cells; strict comparisons keep tercom's tie order (diagonal,
    then insertion, then deletion).
    """
    order = sorted(range(len(hyps)), key=lambda k: (len(hyps[k]), len(refs[k])))
    edits = np.zeros(len(hyps), dtype=np.int64)
    out_paths: list[list[int]] = [[] for _ in hyps]
    chunk = 2048
    for lo in range(0, len(order), chunk):
        ids = order[lo : lo + chunk]
        e, p = _edit_distance_block([hyps[k] for k in ids], [refs[k] for k in ids], paths)
        edits[ids] = e
        for k, path in zip(ids, p):
            out_paths[k] = path
    return edits, out_paths


def _edit_distance_block(hyps: list[list[int]], refs: list[list[int]], paths: bool):
    n = len(hyps)
    hlen = np.array([len(h) for h in hyps])
    rlen = np.array([len(r) for r in refs])
    hmax, rmax = int(hlen.max()), int(rlen.max())
    H = np.full((n, max(hmax, 1)), -1, dtype=np.int32)
    R = np.full((n, max(rmax, 1)), -2, dtype=np.int32)
    for k, (h, r) in enumerate(zip(hyps, refs)):
        H[k, : len(h)] = h
        R[k, : len(r)] = r
    pad_rows = np.where(np.arange(max(rmax, 1))[None, :] >= rlen[:, None], _BIG, 0).astype(np.int32)
    idx = np.arange(rmax + 1, dtype=np.int32)
    V = np.full((n, rmax + 1), _BIG, dtype=np.int32)
    V[:, 0] = 0
    P_in = np.zeros((n, rmax + 1), dtype=np.int8)
    P = np.zeros((n, hmax + 1, rmax + 1), dtype=np.int8) if paths else None
    last_best = np.full(n, _BIG, dtype=np.int32)
    edits = np.zeros(n, dtype=np.int32)
    rows = np.arange(n)
    for j in range(hmax + 1):
        Vf = np.minimum.accumulate(V - idx, axis=1) + idx
        np.minimum(Vf, _BIG, out=Vf)
        if P is not None:
            P[:, j, :] = np.where(Vf < V, _DEL, P_in)
        last = hlen == j
        edits[last] = Vf[rows[last], rlen[last]]
        if j == hmax:
            break
        thr = np.minimum(last_best + BEAM_WIDTH, _BIG - 1)
        thr[last] = _BIG - 1
        Va = np.where(Vf <= thr[:, None], Vf, _BIG)
        mismatch = (H[:, j, None] != R).astype(np.int32) + pad_rows
        diag = Va[:, :rmax] + mismatch
        last_best = diag.min(axis=1) if rmax else np.full(n, _BIG, dtype=np.int32)
        ins = Va + 1
        V = np.full((n, rmax + 1), _BIG, dtype=np.int32)
        V[:, 1:] = diag
        take_ins = ins < V
        np.minimum(np.where(take_ins, ins, V), _BIG, out=V)
        if P is not None:
            P_in = np.zeros((n, rmax + 1), dtype=np.int8)
            P_in[:, 1:] = np.where(mismatch == 0, _MATCH, _SUB)
            P_in[take_ins] = _INS
    out_paths: list[list[int]] = []
    if P is not None:
        for k in range(n):
            i, j, path = int(rlen[k]), int(hlen[k]), []
            while i > 0 or j > 0:
                sym = int(P[k, j, i])
                path.append(sym)
                if sym in (_MATCH, _SUB):
                    i, j = i - 1, j - 1
                elif sym == _DEL:
                    i -= 1
                elif sym == _INS:
                    j -= 1
                else:
                    raise AssertionError(f"TER: broken alignment at ({i}, {j})")
            out_paths.append(path[::-1])
    else:
        out_paths = [[] for _ in range(n)]
    return edits, out_paths


def _choose_shift(pair: _Pair, cands: list[list[tuple[int, int, int]]], costs: dict, counters: TerCounters):
    """tercom's `CalcBestShift` given the edit distance of every candidate: (shift, its edits) or None."""
    cur_err = pair.edits
    best, best_cost, best_edits = None, 0, pair.edits
    for i in range(len(cands) - 1, -1, -1):
        maxfix = 2 * (1 + i)
        curfix = cur_err - (best_cost + best_edits)
        if curfix > maxfix or (best_cost != 0 and curfix == maxfix):
            break
        for shift in cands[i]:
            curfix = cur_err - (best_cost + best_edits)
            if curfix > maxfix or (best_cost != 0 and curfix == maxfix):
                break
            counters.shifts_tried += 1
            counters.beam_calls += 1
            edits = costs[shift]
            gain = (best_edits + best_cost) - (edits + 1)
            if gain > 0 or (best_cost == 0 and gain == 0):
                best, best_cost, best_edits = shift, 1, edits
    return None if best is None else (best, best_edits)


def ter_pairs(pairs: Sequence[tuple[list[str], list[str]]], counters: TerCounters | None = None) -> list[int]:
    """tercom's edit count (shifts included) of each (hyp words, ref words) pair."""
    counters = counters if counters is not None else TerCounters()
    vocab: dict[str, int] = {}
    result = [0] * len(pairs)
    work: dict[int, _Pair] = {}
    for k, (hyp, ref) in enumerate(pairs):
        if not hyp or not ref:  # tercom's TERnullstr: all deletions or all insertions, not "scored"
            result[k] = len(ref) if not hyp else len(hyp)
            continue
        h = [vocab.setdefault(w, len(vocab)) for w in hyp]
        r = [vocab.setdefault(w, len(vocab)) for w in ref]
        work[k] = _Pair(r, _word_matches(h, r), h)
    counters.segments_scored += len(work)
    counters.beam_calls += len(work)
    live = list(work)
    edits, paths = _edit_distances([work[k].cur for k in live], [work[k].ref for k in live], paths=True)
    for k, e, p in zip(live, edits, paths):
        work[k].edits, work[k].path = int(e), p
    while live:
        cands = {k: _possible_shifts(work[k]) for k in live}
        flat = [(k, s) for k in live for s in dict.fromkeys(s for bucket in cands[k] for s in bucket)]
        shifted = [_perform_shift(work[k].cur, *s) for k, s in flat]
        costs: dict[int, dict] = {k: {} for k in live}
        if flat:
            dist, _ = _edit_distances(shifted, [work[k].ref for k, _ in flat])
            for (k, s), d in zip(flat, dist):
                costs[k][s] = int(d)
        chosen = {}
        for k in live:
            pick = _choose_shift(work[k], cands[k], costs[k], counters)
            if pick is not None:
                chosen[k] = pick
        for k, ((start, end, newloc), e) in chosen.items():
            pair = work[k]
            pair.cur, pair.edits, pair.shifts = _perform_shift(pair.cur, start, end, newloc), e, pair.shifts + 1
        live = list(chosen)
        if live:
            _, paths = _edit_distances([work[k].cur for k in live], [work[k].ref for k in live], paths=True)
            for k, p in zip(live, paths):
                work[k].path = p
    for k, pair in work.items():
        result[k] = pair.edits + pair.shifts
    return result


def segment_stats(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], counters: TerCounters | None = None
) -> np.ndarray:
    """Per segment `[edits, mean reference length]` as tercom's multi-reference scoring (`score_all_refs`):
    the edits of the first reference with the fewest, the mean of all references' word counts."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    jobs, owner = [], []
    for i, (hyp, group) in enumerate(zip(hyps, refs)):
        if not group:
            raise ValueError(f"segment {i} has no reference; expected at least one")
        h = tokenize(hyp)
        for ref in group:
            jobs.append((h, tokenize(ref)))
            owner.append(i)
    edits = ter_pairs(jobs, counters)
    stats = np.zeros((len(hyps), 2))
    best = [None] * len(hyps)
    for i, e, (_, r) in zip(owner, edits, jobs):
        if best[i] is None or e < best[i]:
            best[i] = e
        stats[i, 1] += len(r)
    stats[:, 0] = best
    stats[:, 1] /= [len(group) for group in refs]
    return stats


def ter_from_stats(totals: Sequence[float] | np.ndarray) -> float:
    """Corpus TER = total edits / total mean reference length (0 when there are no reference words)."""
    return float(totals[0]) / float(totals[1]) if totals[1] > 0 else 0.0
