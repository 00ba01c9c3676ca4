"""Numbers from Li & Liang (2021), in one place: what the paper reports, and the recipes of its appendix.

Reported E2E test scores of GPT-2 Medium, as (BLEU, NIST, METEOR, ROUGE-L, CIDEr) with BLEU, METEOR and
ROUGE-L in %, per source table and method.
"""

from __future__ import annotations

E2E_RESULTS: dict[str, dict[str, tuple[float, float, float, float, float]]] = {
    "arXiv Table 1": {"finetune": (68.2, 8.62, 46.2, 71.0, 2.47), "finetune-top2": (68.1, 8.59, 46.0, 70.8, 2.41),
                      "prefix": (69.7, 8.81, 46.1, 71.4, 2.49)},
    "ACL Table 2": {"finetune": (68.8, 8.71, 46.1, 71.1, 2.43), "finetune-top2": (68.1, 8.59, 46.0, 70.8, 2.41),
                    "prefix": (70.3, 8.82, 46.3, 72.1, 2.46)},
}

# Appendix, E2E recipe: 5 epochs, batch 10, P = 5; learning rates per method.
E2E_LR = {"prefix": 8e-5, "finetune": 5e-5}
E2E_PREFIX_LENGTH = 5

# §7.1 and appendix, low-data: train sizes, max steps per size, lr (batch 10, P = tokens of "table-to-text:").
LOWDATA_SIZES = (50, 100, 200, 500)
LOWDATA_STEPS = {"prefix": {50: 200, 100: 200, 200: 200, 500: 400}, "finetune": {50: 100, 100: 100, 200: 200, 500: 400}}
LOWDATA_LR = 5e-5

# Figure 4: prefix lengths of the ablation grid.
ABLATION_LENGTHS = (1, 5, 10, 20, 40)
