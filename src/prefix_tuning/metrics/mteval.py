"""Text handling of the official NIST ``mteval-v13a.pl`` script, ported exactly.

The E2E scorer writes each output and reference into an SGML file and lets the Perl
script tokenise it; BLEU and NIST both count n-grams over these tokens. Python's
``str.lower``/``str.split`` differ from Perl's ``tr/[A-Z]/[a-z]/`` and ``\\s`` on
non-ASCII text, so the Perl rules are reproduced here character for character.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Gram = tuple[str, ...]
# n-grams the script needs: BLEU uses 1..4, NIST 1..5 (its info weights of longer
# n-grams never enter the 5-gram score).
MAX_ORDER = 5

# Perl's ``\s`` on character strings (Unicode White_Space). Python's own whitespace
# set also holds \x1c-\x1f, which Perl keeps inside words.
_PERL_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACES = re.compile(f"[{_PERL_SPACE}]+")
# The language-dependent substitutions of sub ``tokenization`` (v13a, default). The
# first one, s/([\{-\~\[-\` -\&\(-\+\:-\@\/])/ $1 /g, pads single ASCII characters
# with spaces, which a translation table does identically (and ~10x faster); the
# same table lowercases A-Z (``tr/[A-Z]/[a-z]/``: ASCII only).
_PUNCT_CODES = [*range(0x7B, 0x7F), *range(0x5B, 0x61), *range(0x20, 0x27), *range(0x28, 0x2C),
                *range(0x3A, 0x41), 0x2F]  # fmt: skip
_PAD = {code: f" {chr(code)} " for code in _PUNCT_CODES}
_PAD_LOWER = {**_PAD, **{code: chr(code + 32) for code in range(0x41, 0x5B)}}
_PERIOD_AFTER = re.compile(r"([^0-9])([\.,])")
_PERIOD_BEFORE = re.compile(r"([\.,])([^0-9])")
_DASH = re.compile(r"([0-9])(-)")


def tokenize(text: str, lowercase: bool = True) -> str:
    """Tokenise one segment as mteval-v13a does (without ``-c``: lowercased).

    The SGML reader first turns every whitespace run into one space, so the script's
    ``-\\n`` de-hyphenation rule never fires for E2E data and is omitted.
    """
    text = _SPACES.sub(" ", text)
    if "<" in text:
        text = text.replace("<skipped>", "")
    if "&" in text:
        text = text.replace("&quot;", '"').replace("&amp;", "&")
        text = text.replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text} ".translate(_PAD_LOWER if lowercase else _PAD)
    if "." in text or "," in text:  # (functions are faster than "\1 \2 " templates)
        text = _PERIOD_AFTER.sub(lambda m: m[1] + " " + m[2] + " ", text)
        text = _PERIOD_BEFORE.sub(lambda m: " " + m[1] + " " + m[2], text)
    if "-" in text:
        text = _DASH.sub(lambda m: m[1] + " " + m[2] + " ", text)
    return _SPACES.sub(" ", text).strip(" ")


def words(text: str, lowercase: bool = True) -> list[str]:
    """Tokens of one segment (Perl ``split /\\s+/`` of the tokenised text)."""
    tokenized = tokenize(text, lowercase)
    return tokenized.split(" ") if tokenized else []


def ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[Gram]:
    """Counts of all n-grams of length 1..max_n (the script's ``Words2Ngrams``)."""
    counts: Counter[Gram] = Counter()
    for n in range(1, min(max_n, len(tokens)) + 1):
        counts.update(zip(*(tokens[i:] for i in range(n))))
    return counts


def max_ref_counts(refs: Iterable[Counter[Gram]]) -> dict[Gram, int]:
    """Per n-gram maximum count over a segment's references (clipping limit)."""
    best: dict[Gram, int] = {}
    for counts in refs:
        for gram, count in counts.items():
            if count > best.get(gram, 0):
                best[gram] = count
    return best


def closest_ref_length(ref_lengths: Sequence[int], hyp_length: int) -> int:
    """Reference length for the brevity penalty, as ``brevity_penalty_closest``.

    The first reference (always present) initialises the length even if it is
    empty; later empty references (the scorer's padding) are skipped; ties go to the
    shorter reference.
    """
    current = ref_lengths[0]
    for length in ref_lengths[1:]:
        if not length:
            continue
        new_diff, cur_diff = abs(hyp_length - length), abs(hyp_length - current)
        if new_diff < cur_diff or (new_diff == cur_diff and current > length):
            current = length
    return current


@dataclass(frozen=True)
class PreparedRefs:
    """References tokenised and counted once, shared by BLEU, NIST and the bootstrap.

    ``clips[i]`` maps each n-gram (n <= 5) of segment ``i``'s references to its
    maximum count in one reference; ``totals`` counts n-grams over all references
    (NIST's information weights).
    """

    tokens: list[list[list[str]]]
    clips: list[dict[Gram, int]]
    lengths: list[list[int]]
    totals: Counter[Gram]


def prepare_refs(refs: Sequence[Sequence[str]], lowercase: bool = True) -> PreparedRefs:
    """Tokenise and count the references of every segment (each needs at least one)."""
    tokens = [[words(ref, lowercase) for ref in group] for group in refs]
    if any(not group for group in tokens):
        raise ValueError("every segment needs at least one reference")
    everything: list[Gram] = []
    clips = []
    for group in tokens:
        counts = []
        for ref in group:
            grams: list[Gram] = []
            for n in range(1, min(MAX_ORDER, len(ref)) + 1):
                grams.extend(zip(*(ref[i:] for i in range(n))))
            everything.extend(grams)
            counts.append(Counter(grams))
        clips.append(counts[0] if len(counts) == 1 else max_ref_counts(counts))
    lengths = [[len(ref) for ref in group] for group in tokens]
    return PreparedRefs(tokens, clips, lengths, Counter(everything))
