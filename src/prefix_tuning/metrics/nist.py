"""NIST score exactly as ``mteval-v13a.pl`` computes it for the E2E scorer.

Neither nltk's ``corpus_nist`` nor the scorer's own Python port reproduce the Perl
numbers, so this follows ``compute_ngram_info``, ``score_segment``, ``nist_score``
and ``nist_length_penalty`` of the script line by line. Known traps:

* information weights come from n-gram counts over *all* references of the corpus;
* a bigram whose first word is ``0`` is weighted like a unigram, because Perl treats
  the string ``"0"`` as false in ``$mgram ? ... : ...``;
* the reference length of the brevity penalty is the total number of reference words
  divided by the *average* number of non-empty references per segment (the E2E copy
  of the script counts ``$nrefs`` per segment; the stock v13a divides by the number of
  padded reference sets instead);
* the score sums information over 1..5-grams, each divided by ``max(count, 1)``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .mteval import Gram, PreparedRefs, ngram_counts

NIST_ORDER = 5
_LOG2 = math.log(2)
# nist_length_penalty: score 0.5 at a length ratio of 1.5.
_BETA = -math.log(0.5) / math.log(1.5) / math.log(1.5)


class InformationWeights:
    """``%ngram_info`` of the script: -log2 of an n-gram's conditional frequency.

    Computed on demand, as only n-grams that an output shares with its references
    are ever looked up.
    """

    def __init__(self, totals: Counter[Gram], total_words: int) -> None:
        self.totals = totals
        self.total_words = total_words  # $tot_wrds: all reference words
        self._cache: dict[Gram, float] = {}

    def __getitem__(self, gram: Gram) -> float:
        info = self._cache.get(gram)
        if info is None:
            prefix = gram[:-1]
            # Perl: "$mgram ? ..." where an empty prefix and the word "0" are both false.
            if prefix and prefix != ("0",):
                ratio = self.totals[gram] / self.totals[prefix]
            else:
                ratio = self.totals[gram] / self.total_words
            info = self._cache[gram] = -math.log(ratio) / _LOG2
        return info


def length_penalty(ratio: float) -> float:
    """``nist_length_penalty``: 1 above ratio 1, a squared-log decay below it."""
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-_BETA * math.log(ratio) * math.log(ratio))


def corpus_nist(refs: PreparedRefs, hyps_tokens: Sequence[Sequence[str]]) -> float:
    """System-level NIST (5-grams) of tokenised outputs against prepared references."""
    if len(refs.tokens) != len(hyps_tokens):
        raise ValueError(f"{len(hyps_tokens)} outputs but {len(refs.tokens)} reference sets")
    ref_words = sum(sum(lengths) for lengths in refs.lengths)
    if ref_words == 0:
        raise ValueError("NIST is undefined when all references are empty")
    info = InformationWeights(refs.totals, ref_words)
    # $cum_ref_count / $cum_seg_count: refs that are non-empty after tokenisation.
    nonempty = sum(1 for lengths in refs.lengths for length in lengths if length)
    refs_per_segment = nonempty / len(refs.tokens)

    tst_info = [0.0] * (NIST_ORDER + 1)
    tst_count = [0] * (NIST_ORDER + 1)
    for clip, hyp in zip(refs.clips, hyps_tokens):
        for n in range(1, NIST_ORDER + 1):
            tst_count[n] += max(len(hyp) - n + 1, 0)
        segment_info = [0.0] * (NIST_ORDER + 1)
        for gram, count in ngram_counts(hyp, NIST_ORDER).items():
            limit = clip.get(gram)
            if limit is not None:
                segment_info[len(gram)] += info[gram] * min(count, limit)
        for n in range(1, NIST_ORDER + 1):
            tst_info[n] += segment_info[n]

    score = 0.0
    for n in range(1, NIST_ORDER + 1):
        score += tst_info[n] / max(tst_count[n], 1)
    return score * length_penalty(tst_count[1] / (ref_words / refs_per_segment))
