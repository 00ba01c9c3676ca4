"""E2E evaluation that reproduces the official E2E NLG Challenge scorer exactly.

``score(refs, hyps)`` returns BLEU, NIST, METEOR, ROUGE_L and CIDEr as the official
``measure_scores.py`` (mteval-v13a + MS-COCO caption code) computes them, in a few
seconds instead of ~20; ``read_refs``/``read_outputs`` read its file formats;
``paired_bootstrap`` tests BLEU differences; ``signature`` describes the settings.
``score_webnlg`` / ``webnlg_signature``: the WebNLG 2017 challenge's BLEU, METEOR and TER on seen, unseen and
all test categories (``prefix_tuning.metrics.webnlg``).
"""

from .api import METRICS, normalize_metrics, score, score_many, signature
from .bootstrap import BootstrapResult, paired_bootstrap
from .io import EvalInputError, load, read_outputs, read_refs
from .java import JavaNotFoundError
from .webnlg import score_webnlg
from .webnlg import signature as webnlg_signature

__all__ = [
    "METRICS",
    "BootstrapResult",
    "EvalInputError",
    "JavaNotFoundError",
    "load",
    "normalize_metrics",
    "paired_bootstrap",
    "read_outputs",
    "read_refs",
    "score",
    "score_many",
    "score_webnlg",
    "signature",
    "webnlg_signature",
]
