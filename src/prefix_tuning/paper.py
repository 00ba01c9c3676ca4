"""Numbers from Li & Liang (2021), in one place: what the paper reports, and the recipes of its appendix.

Reported E2E test scores of GPT-2 Medium, as (BLEU, NIST, METEOR, ROUGE-L, CIDEr) with BLEU, METEOR and
ROUGE-L in %, per source table and method.
"""

from __future__ import annotations

E2E_RESULTS: dict[str, dict[str, tuple[float, float, float, float, float]]] = {
    "arXiv Table 1": {
        "finetune": (68.2, 8.62, 46.2, 71.0, 2.47),
        "finetune-top2": (68.1, 8.59, 46.0, 70.8, 2.41),
        "adapter-3%": (68.9, 8.71, 46.1, 71.3, 2.47),
        "adapter-0.1%": (66.3, 8.41, 45.0, 69.8, 2.40),
        "prefix": (69.7, 8.81, 46.1, 71.4, 2.49),
    },
    "ACL Table 2": {
        "finetune": (68.8, 8.71, 46.1, 71.1, 2.43),
        "finetune-top2": (68.1, 8.59, 46.0, 70.8, 2.41),
        "prefix": (70.3, 8.82, 46.3, 72.1, 2.46),
    },
    "LoRA paper Table 3": {"lora": (70.4, 8.85, 46.8, 71.8, 2.53)},  # Hu et al. 2021, mean of 3 seeds
}

# Appendix, E2E recipe: 5 epochs, batch 10, P = 5; learning rates per method. Adapters: the paper gives no lr,
# fine-tuning's is used. LoRA: the LoRA paper's E2E recipe (its Table 11).
E2E_LR = {"prefix": 8e-5, "finetune": 5e-5, "adapter": 5e-5, "lora": 2e-4}
E2E_PREFIX_LENGTH = 5
ADAPTER_FRACTIONS = {"adapter-3%": 0.03, "adapter-0.1%": 0.001}  # arXiv Table 1's two adapter rows
LORA_RECIPE = {"rank": 4, "alpha": 32.0, "dropout": 0.1, "weight_decay": 0.01, "batch_size": 8, "warmup_steps": 500}

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

# §7.3 (ACL Table 5), intrinsic evaluation on E2E, BLEU per P: embedding-only prefix and infix vs prefix.
INTRINSIC_LENGTHS = (1, 10, 20)
INTRINSIC_BLEU = {"embedding-only": {1: 48.1, 10: 62.2, 20: 61.9}, "infix": {1: 67.9, 10: 67.2, 20: 66.7}}

# §7.2 / Figure 5: prefix initialisation in the low-data setting. Words: the task-relevant "table-to-text:" and
# "summarize" and the irrelevant "elephant", "banana", "divide" named in the text/figure as we recall it (the
# figure's exact word list could not be checked here), plus "table".
INIT_WORDS = ("table-to-text:", "summarize", "table", "elephant", "banana", "divide")
INIT_SIZES = (50, 100)
