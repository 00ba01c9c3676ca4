"""Corpus BLEU as the E2E scorer's ``mteval-v13a.pl`` computes it, from segment statistics.

sacrebleu's ``BLEU(tokenize='13a', lowercase=True)`` agrees with the Perl script on
ordinary data (the tests check this), but not in corner cases that unseen outputs
can hit: sacrebleu lowercases all of Unicode (Perl only A-Z), returns 0 when no
n-gram matches at all or when no output reaches 4 words (Perl smooths, and skips
n-gram orders with no n-grams), and treats whitespace slightly differently. So BLEU
is computed here from the same Perl-exact tokens as NIST. The per-segment statistics
(sacrebleu's layout) also make the paired bootstrap cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .mteval import PreparedRefs, closest_ref_length, ngram_counts

BLEU_ORDER = 4
# Columns of a statistics row: output length, reference length, 4 matches, 4 totals.
N_STATS = 2 + 2 * BLEU_ORDER


def segment_stats(refs: PreparedRefs, hyps_tokens: Sequence[Sequence[str]]) -> np.ndarray:
    """One row of BLEU sufficient statistics per segment (``score_segment``)."""
    if len(refs.tokens) != len(hyps_tokens):
        raise ValueError(f"{len(hyps_tokens)} outputs but {len(refs.tokens)} reference sets")
    rows = np.zeros((len(hyps_tokens), N_STATS), dtype=np.int64)
    for row, clip, lengths, hyp in zip(rows, refs.clips, refs.lengths, hyps_tokens):
        matches = [0] * (BLEU_ORDER + 1)
        for gram, count in ngram_counts(hyp, BLEU_ORDER).items():
            limit = clip.get(gram)
            if limit is not None:
                matches[len(gram)] += min(count, limit)
        row[0] = len(hyp)
        row[1] = closest_ref_length(lengths, len(hyp))
        row[2 : 2 + BLEU_ORDER] = matches[1:]
        row[2 + BLEU_ORDER :] = [max(len(hyp) - n + 1, 0) for n in range(1, BLEU_ORDER + 1)]
    return rows


def bleu_from_stats(totals: Sequence[int] | np.ndarray) -> float:
    """Corpus BLEU from summed statistics, as the script's smoothed ``bleu_score``.

    An n-gram order with no output n-grams counts as precision 1; an order with no
    matches gets 1/(2^k * total) for its k-th such order; brevity penalty from the
    summed closest reference lengths.
    """
    hyp_len, ref_len = int(totals[0]), int(totals[1])
    matches = [int(x) for x in totals[2 : 2 + BLEU_ORDER]]
    counts = [int(x) for x in totals[2 + BLEU_ORDER : N_STATS]]
    exp_len_score = math.exp(min(0.0, 1 - ref_len / hyp_len)) if hyp_len > 0 else 0.0
    score, smooth = 0.0, 1
    for match, count in zip(matches, counts):
        if count == 0:
            iscore = 0.0
        elif match == 0:
            smooth *= 2
            iscore = math.log(1 / (smooth * count))
        else:
            iscore = math.log(match / count)
        score += iscore
    return math.exp(score / BLEU_ORDER) * exp_len_score


def corpus_bleu(refs: PreparedRefs, hyps_tokens: Sequence[Sequence[str]]) -> float:
    """System-level BLEU-4 of tokenised outputs against prepared references."""
    return bleu_from_stats(segment_stats(refs, hyps_tokens).sum(axis=0))
