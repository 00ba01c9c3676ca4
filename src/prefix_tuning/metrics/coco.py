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


def _precook(text: str) -> list[Counter[Gram]]:
    """n-gram counts per order n = 1..4, each in ``cider_scorer.precook``'s insertion order."""
    words = text.split()
    return [Counter(zip(*(words[i:] for i in range(k)))) for k in range(1, CIDER_ORDER + 1)]


class _Vectorizer:
    """``counts2vec`` of the scorer: tf-idf weights, per-order norms, and a "length".

    Python floats give the same IEEE results as the scorer's numpy scalars for
    ``+ * / pow sqrt``; ``np.log`` (which can differ from ``math.log`` in the last
    bit) is kept and cached per document frequency, an integer. The "length" is the
    number of bigrams (sic, the scorer's ``if n == 1``).
    """

    def __init__(self, document_frequency: Counter[Gram], n_images: int) -> None:
        ref_len = float(np.log(float(n_images)))
        idf = [ref_len - float(np.log(max(1.0, float(d)))) for d in range(n_images + 1)]
        self.unseen = idf[0]  # n-grams of no reference: log(max(1.0, 0)) = 0
        self.weights = {gram: idf[d] for gram, d in document_frequency.items()}

    def hyp(self, counts: list[Counter[Gram]]) -> tuple[list[dict[Gram, float]], list[float], int]:
        """Vector, norms and length of an output (all its n-grams are looked up)."""
        get, unseen = self.weights.get, self.unseen
        vecs, norms = [], []
        for cnt in counts:
            vec = {gram: tf * get(gram, unseen) for gram, tf in cnt.items()}
            acc = 0.0
            for value in vec.values():
                acc += pow(value, 2)
            vecs.append(vec)
            norms.append(math.sqrt(acc))
        return vecs, norms, sum(counts[1].values())

    def ref_norms(self, counts: list[Counter[Gram]]) -> list[float]:
        """Norms of a reference's vector; its values are recomputed on lookup instead."""
        weights, norms = self.weights, []
        for cnt in counts:
            acc = 0.0
            for gram, tf in cnt.items():
                acc += pow(tf * weights[gram], 2)
            norms.append(math.sqrt(acc))
        return norms


_PENALTY_DENOMINATOR = 2 * CIDER_SIGMA**2


def cider_d(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """CIDEr-D with document frequencies from the references of this very corpus."""
    crefs = [[_precook(ref) for ref in group] for group in refs]
    document_frequency: Counter[Gram] = Counter()
    for group in crefs:
        document_frequency.update({gram for ref in group for cnt in ref for gram in cnt})
    vectorize = _Vectorizer(document_frequency, len(crefs))
    weights = vectorize.weights
    scores = []
    for hyp, group in zip(hyps, crefs):
        vec, norm, length = vectorize.hyp(_precook(hyp))
        total = [0.0] * CIDER_ORDER
        for ref in group:
            norm_ref = vectorize.ref_norms(ref)
            delta = float(length - sum(ref[1].values()))
            penalty = math.e ** (-(delta**2) / _PENALTY_DENOMINATOR)
            for n in range(CIDER_ORDER):
                ref_n, acc = ref[n], 0.0
                for gram, value in vec[n].items():
                    tf = ref_n.get(gram)
                    if tf is not None:  # absent n-grams add min(v, 0) * 0 = 0.0 exactly
                        ref_value = tf * weights[gram]
                        acc += min(value, ref_value) * ref_value
                if (norm[n] != 0) and (norm_ref[n] != 0):
                    acc /= norm[n] * norm_ref[n]
                total[n] += acc * penalty
        # np.mean over the 4 orders: numpy's own summation order, kept as is.
        score_avg = float(np.mean(np.array(total)))
        score_avg /= len(group)
        score_avg *= 10.0
        scores.append(score_avg)
    return float(np.mean(np.array(scores)))
