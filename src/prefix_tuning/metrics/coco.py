"""ROUGE-L and CIDEr-D of the MS-COCO caption code, bit-for-bit but faster.

Inputs are texts already tokenised by :mod:`.java` (CoreNLP PTB tokens, lowercased,
punctuation removed). The arithmetic follows pycocoevalcap's ``rouge.py`` and
``cider_scorer.py`` operation by operation (including numpy means), so results equal
the scorer's to the last bit; only the LCS (bit-parallel) and the caching of
document-frequency logarithms are done differently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

ROUGE_BETA = 1.2
CIDER_ORDER = 4
CIDER_SIGMA = 6.0


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (Hyyrö's bit-vector algorithm)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """Mean over segments of the F-measure (beta 1.2) of max LCS precision and recall."""
    scores = []
    for group, hyp in zip(refs, hyps):
        token_c = hyp.split(" ")
        prec, rec = [], []
        for reference in group:
            token_r = reference.split(" ")
            lcs = lcs_length(token_r, token_c)
            prec.append(lcs / float(len(token_c)))
            rec.append(lcs / float(len(token_r)))
        prec_max, rec_max = max(prec), max(rec)
        if prec_max != 0 and rec_max != 0:
            score = ((1 + ROUGE_BETA**2) * prec_max * rec_max) / float(rec_max + ROUGE_BETA**2 * prec_max)
        else:
            score = 0.0
        scores.append(score)
    return float(np.mean(np.array(scores)))


Gram = tuple[str, ...]


def _precook(text: str) -> Counter[Gram]:
    """n-gram counts (n = 1..4) in the insertion order of ``cider_scorer.precook``."""
    words = text.split()
    counts: Counter[Gram] = Counter()
    for k in range(1, min(CIDER_ORDER, len(words)) + 1):
        counts.update(zip(*(words[i:] for i in range(k))))
    return counts


class _Vectorizer:
    """``counts2vec``: tf-idf vectors per n-gram order, their norms, and a "length".

    Python floats give the same IEEE results as the scorer's numpy scalars for
    ``+ * / pow sqrt``; ``np.log`` (which can differ from ``math.log`` in the last
    bit) is kept and cached per document frequency, an integer.
    """

    def __init__(self, document_frequency: Counter[Gram], n_images: int) -> None:
        self.df = document_frequency
        ref_len = float(np.log(float(n_images)))
        self._idf = [ref_len - float(np.log(max(1.0, float(d)))) for d in range(n_images + 1)]

    def __call__(self, cnts: Counter[Gram]) -> tuple[list[dict[Gram, float]], list[float], int]:
        vec: list[dict[Gram, float]] = [{} for _ in range(CIDER_ORDER)]
        norm = [0.0] * CIDER_ORDER
        length = 0
        df, idf = self.df, self._idf
        for gram, term_freq in cnts.items():
            n = len(gram) - 1
            value = vec[n][gram] = float(term_freq) * idf[df.get(gram, 0)]
            norm[n] += pow(value, 2)
            if n == 1:  # sic: the scorer's "length" counts bigrams
                length += term_freq
        return vec, [math.sqrt(x) for x in norm], length


_PENALTY_DENOMINATOR = 2 * CIDER_SIGMA**2


def _sim(vec_hyp, vec_ref, norm_hyp, norm_ref, length_hyp: int, length_ref: int) -> list[float]:
    """Clipped cosine similarity per n-gram order with the Gaussian length penalty."""
    delta = float(length_hyp - length_ref)
    penalty = math.e ** (-(delta**2) / _PENALTY_DENOMINATOR)
    val = [0.0] * CIDER_ORDER
    for n in range(CIDER_ORDER):
        ref_n = vec_ref[n]
        acc = 0.0
        for gram, value in vec_hyp[n].items():
            ref_value = ref_n.get(gram, 0.0)
            acc += min(value, ref_value) * ref_value
        if (norm_hyp[n] != 0) and (norm_ref[n] != 0):
            acc /= norm_hyp[n] * norm_ref[n]
        val[n] = acc * penalty
    return val


def cider_d(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """CIDEr-D with document frequencies from the references of this very corpus."""
    crefs = [[_precook(ref) for ref in group] for group in refs]
    document_frequency: Counter[Gram] = Counter()
    for group in crefs:
        document_frequency.update({gram for ref in group for gram in ref})
    vectorize = _Vectorizer(document_frequency, len(crefs))
    scores = []
    for hyp, group in zip(hyps, crefs):
        vec, norm, length = vectorize(_precook(hyp))
        total = [0.0] * CIDER_ORDER
        for ref in group:
            vec_ref, norm_ref, length_ref = vectorize(ref)
            sim = _sim(vec, vec_ref, norm, norm_ref, length, length_ref)
            total = [a + b for a, b in zip(total, sim)]
        # np.mean over the 4 orders: numpy's own summation order, kept as is.
        score_avg = float(np.mean(np.array(total)))
        score_avg /= len(group)
        score_avg *= 10.0
        scores.append(score_avg)
    return float(np.mean(np.array(scores)))
