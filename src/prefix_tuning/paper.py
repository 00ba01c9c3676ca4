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

# WebNLG 2017 test, GPT-2 Medium (arXiv v1 Table 1; ACL Table 2 differs slightly, e.g. prefix BLEU 62.9/45.3/55.0,
# FT 64.7/26.7/45.7): BLEU (in %), METEOR and TER (fractions; TER lower is better) on
# seen (S), unseen (U) and all (A) categories.
WEBNLG_RESULTS: dict[str, dict[str, tuple[float, float, float]]] = {
    "finetune": {"BLEU": (64.2, 27.7, 46.5), "METEOR": (0.46, 0.30, 0.38), "TER": (0.33, 0.76, 0.53)},
    "prefix": {"BLEU": (62.9, 45.6, 55.1), "METEOR": (0.44, 0.38, 0.41), "TER": (0.35, 0.49, 0.41)},
}
# Appendix hyperparameter table (ACL Table 6 / arXiv v1 Table 5: lr, epochs, batch, P), WebNLG column; the
# original code's README runs prefix-tuning with the same values (`--preseqlen 5 --epoch 5 --learning_rate 0.00005
# --bsz 5`). Its README gives fine-tuning lr 5e-5 / 5 epochs / batch 5, but the paper's table and the
# fine-tuned model path its code loads (`webnlgfinetune_..._b=6-e=10_..._lr=1e-05`) agree on 1e-5 / 10 / 6.
WEBNLG_RECIPE = {
    "prefix": {"lr": 5e-5, "epochs": 5, "batch_size": 5},
    "finetune": {"lr": 1e-5, "epochs": 10, "batch_size": 6},
}
WEBNLG_PREFIX_LENGTH = 5
WEBNLG_TRAIN_SIZE = 500  # `reproduce webnlg`: a seeded 500-row subset of the 18,025 training rows (CPU-sized)

# §7.2-7.3 (ACL Table 5), intrinsic evaluation on E2E, BLEU per P: embedding-only prefix and infix vs prefix.
INTRINSIC_LENGTHS = (1, 10, 20)
INTRINSIC_BLEU = {"embedding-only": {1: 48.1, 10: 62.2, 20: 61.9}, "infix": {1: 67.9, 10: 67.2, 20: 66.7}}

# §7.4 / Figure 5 (ACL and arXiv v1): prefix initialisation in the low-data setting; the figure's bars, in order:
# random, "active", "elephant", "summarize", "table-to-text:", "banana", "beautiful", "divide", "keep" (read
# from the PDF's text; its Figure 8 twin says "with 100 training data", E2E). The words are fitted by the
# prefix MLP, as the original's low-data init does (`lowdata_init_train3`), and set P to their token count.
INIT_WORDS = ("active", "elephant", "summarize", "table-to-text:", "banana", "beautiful", "divide", "keep")
INIT_SIZES = (50, 100)
