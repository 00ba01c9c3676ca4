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

# WebNLG 2017 test, GPT-2 Medium (Table 1): BLEU (in %), METEOR and TER (fractions; TER lower is better) on
# seen (S), unseen (U) and all (A) categories.
WEBNLG_RESULTS: dict[str, dict[str, tuple[float, float, float]]] = {
    "finetune": {"BLEU": (64.2, 27.7, 46.5), "METEOR": (0.46, 0.30, 0.38), "TER": (0.33, 0.76, 0.53)},
    "prefix": {"BLEU": (62.9, 45.6, 55.1), "METEOR": (0.44, 0.38, 0.41), "TER": (0.35, 0.49, 0.41)},
}
# Appendix hyperparameter table, WebNLG row as we read it (not in shared/notes/reference.md: verify against the
# paper): 5 epochs, lr 5e-5, batch 5, P = 5. Fine-tuning: lr 5e-5 (as for E2E), same epochs and batch.
WEBNLG_LR = {"prefix": 5e-5, "finetune": 5e-5}
WEBNLG_BATCH = 5
WEBNLG_EPOCHS = 5
WEBNLG_PREFIX_LENGTH = 5
WEBNLG_TRAIN_SIZE = 500  # `reproduce webnlg`: a seeded 500-row subset of the 18,025 training rows (CPU-sized)
