"""The tokenisation of the original's E2E data files, for `load_e2e(..., ref_style="tokenized")`.

XiangLi1999/PrefixTuning trains and evaluates on pre-tokenised files (`e2e_data/src1_{train,valid,test}.txt`,
not in its repository; a copy of src1_test.txt is in the public repo Ding7654321/Continuous_Prompt). Their
references and MR values are the official CSV text run through spaCy's rule-based English tokenizer, tokens
joined by single spaces, whitespace tokens dropped: "isn't" -> "is n't", "it's" -> "it 's", "family-friendly"
-> "family - friendly", "£20-25" -> "£ 20 - 25", "£20-£25" -> "£ 20-£25", "center.," -> "center . ,",
".Blue" and double spaces as spaCy leaves them. Checked against 23 lines of src1_test.txt chosen for their
punctuation, contractions, hyphens, prices and doubled spaces: all equal (tests/test_data.py holds some).

Not reproduced: in src1_test.txt every line after the first ends with one extra space after the reference
(whether the training file does is unknown); the original training text ' {ref} <eos>' then holds two spaces
before the eos. References here never end with a space.

spaCy is an optional dependency, imported only when this style is asked for (`pip install spacy`; no model
download: `spacy.blank("en")` is the bare tokenizer).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable


@functools.lru_cache(maxsize=1)
def _tokenizer():
    try:
        import spacy
    except ImportError as err:
        raise ImportError(
            "ref_style='tokenized' needs spaCy's English tokenizer: pip install spacy (or use ref_style='raw')"
        ) from err
    return spacy.blank("en").tokenizer


def tokenize_like_original(texts: Iterable[str]) -> list[str]:
    """Each text as the original's data files write it: spaCy English tokens joined by single spaces."""
    tok = _tokenizer()
    return [" ".join(t.text for t in doc if not t.is_space) for doc in tok.pipe(list(texts), batch_size=1000)]
