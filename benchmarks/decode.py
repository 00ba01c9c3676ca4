"""Beam-decoding speed: our batched beam search vs PEFT prefix-tuning (made correct) vs plain HF generate.

What it measures (GitHub issue 3, item 6): the wall time to beam-decode the first `--n` unique MRs of the
E2E test set (default 20; prompts from `prefix_tuning.data.encode_prompt`) in one batch, beam 5,
`--max-new-tokens` (default 60 to keep the run short; the paper's setting is 100), EOS banned before 5
new tokens, newline tokens banned, length penalty 1.0, early_stopping False, on a GPT-2-small-shaped model
(`GPT2Config()` defaults: 12 layers, 768 wide, random weights seeded) with GPT-2's tokenizer, on the CPU, in
fp32 and, by default, bf16 only where the CPU computes it natively (AVX512-BF16 or AMX: `precision: auto`); on
a CPU that emulates bf16 (AVX2-only) a line says it is skipped, and `--precision fp32,bf16` still runs it, with
the warning. The first output line names the CPU's kernel level and bf16 support (`hardware.describe_cpu()`).
Methods:
  - ours:  `prefix_tuning.decode.decode_ids` with a random prefix of length 5;
  - peft:  PEFT `PrefixTuningConfig(num_virtual_tokens=5)` on the same base model, its prefix passed
           explicitly: `peft_model.get_prompt(batch_size=B*beams)` as `cache=` to the base model's
           `generate` (with the attention mask over prefix + prompt), because PEFT's own `generate()`
           silently ignores the prefix on transformers 5.x (shown on one line below). Our prefix IS PEFT's
           prompt (read from `get_prompt(batch_size=1)`), so both decode with the same prefix;
  - plain: HF `generate` on the base model without any prefix (a floor: no prefix positions).
bf16: the model (and PEFT's prompt encoder) is cast to bfloat16 for every method; fp32 runs in fp32.

Random weights never emit EOS, so every hypothesis runs to max_new_tokens (timing is of full-length
decodes; real models stop earlier, and our search then drops finished rows from the batch, which this
benchmark does not show). The texts are degenerate, but ours and PEFT's must still be token-identical:
the mismatch count is printed (in bf16 a few may differ: the two compute the prompt in different batch
shapes, and bf16 rounding can flip near-ties).

Methods are interleaved and the sweep repeated `--rounds` times (best time kept), since the machine may be
shared; `--threads` sets torch's CPU threads (default 1: no oversubscription on a busy 2-core machine).

    python benchmarks/decode.py                      # 20 MRs, beam 5, 60 new tokens, fp32 (+ bf16 if native)
    python benchmarks/decode.py --n 5 --precision bf16 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from prefix_tuning.beam import SearchSettings, decode_ids  # noqa: E402
from prefix_tuning.config import DecodeConfig  # noqa: E402
from prefix_tuning.data import encode_prompt, group_by_mr, load_e2e  # noqa: E402
from prefix_tuning.decode import newline_token_ids  # noqa: E402
from prefix_tuning.hardware import describe_cpu, resolve_precision  # noqa: E402

P = 5


def build(seed: int, precision: str):
    """(base model, PEFT model over it, our prefix (L, 2, H, P, D) = PEFT's prompt) in `precision`."""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(GPT2Config()).eval()
    base.requires_grad_(False)
    peft_model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)).eval()
    if precision == "bf16":
        peft_model.to(torch.bfloat16)  # casts the base model and PEFT's prompt encoder
    with torch.no_grad():
        cache = peft_model.get_prompt(batch_size=1)
        prefix = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
    return peft_model.get_base_model(), peft_model, prefix


def precisions_to_run(spec: str | None) -> tuple[list[str], list[str]]:
    """(precisions, lines to print): by default fp32 plus bf16 where the CPU computes it natively; an explicit
    bf16 on a CPU that emulates it runs, with `hardware.resolve_precision`'s warning."""
    cpu = torch.device("cpu")
    if spec is None:
        if resolve_precision("auto", cpu) == "bf16":
            return ["fp32", "bf16"], []
        return ["fp32"], [
            ("bf16 skipped: this CPU has no native bf16, torch emulates it (--precision fp32,bf16 forces it)")
        ]
    precisions = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [x for x in precisions if x not in ("fp32", "bf16")]
    if bad:
        raise SystemExit(f"unknown precision(s) {bad}: choose fp32, bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x in precisions:
            resolve_precision(x, cpu)
    return precisions, [f"warning: {w.message}" for w in caught]


def left_pad(prompts: list[list[int]], pad: int, prefix_len: int = 0):
    B, T = len(prompts), max(map(len, prompts))
    ids = torch.full((B, T), pad)
    mask = torch.zeros(B, prefix_len + T, dtype=torch.long)
    mask[:, :prefix_len] = 1
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        mask[i, prefix_len + T - len(p) :] = 1
    return ids, mask


def hf_ids(out: torch.Tensor, T: int, eos: int) -> list[list[int]]:
    rows = out[:, T:].tolist()
    return [r[: r.index(eos)] if eos in r else r for r in rows]


def run_hf(model, prompts, s: SearchSettings, pad: int, cache=None, prefix_len: int = 0) -> list[list[int]]:
    ids, mask = left_pad(prompts, pad, prefix_len)
    kw = dict(cache=cache) if cache is not None else {}
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=s.beam_size,
            do_sample=False,
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.min_new_tokens,
            length_penalty=s.length_penalty,
            early_stopping=s.early_stopping,
            bad_words_ids=[[t] for t in s.banned_ids],
            eos_token_id=s.eos_id,
            pad_token_id=pad,
            **kw,
        )
    return hf_ids(out, ids.shape[1], s.eos_id)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="unique E2E test MRs decoded, one batch (default 20)")
    ap.add_argument("--beam-size", type=int, default=5, help="beam width (default 5, Li & Liang)")
    ap.add_argument("--max-new-tokens", type=int, default=60, help="new tokens (default 60; paper 100)")
    ap.add_argument(
        "--precision",
        default=None,
        help="comma list of fp32, bf16 (default: fp32, and bf16 where the CPU computes it natively)",
    )
    ap.add_argument("--methods", default="ours,peft,plain", help="comma list (default ours,peft,plain)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the sweep, keep the best time (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random model and prefix (default 0)")
    ap.add_argument("--data-dir", default=os.environ.get("PREFIX_TUNING_DATA") or str(REPO.parent / "shared" / "data"))
    ap.add_argument(
        "--eos-bias",
        type=float,
        default=0.0,
        help="add this to the EOS logit (a hook on the LM head, seen by every method) so that "
        "hypotheses end at varied lengths like a trained model's; default 0: they never end",
    )
    ap.add_argument("--no-bug-check", action="store_true", help="skip the PEFT generate() bug line")
    args = ap.parse_args(argv)
    print(f"# {describe_cpu()}", flush=True)
    precisions, notes = precisions_to_run(args.precision)
    for line in notes:
        print(f"# {line}", flush=True)
    torch.set_num_threads(args.threads)
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(str(Path(args.data_dir) / "gpt2-tokenizer"))
    eos = tok.eos_token_id
    tables = [g.table for g in group_by_mr(load_e2e("test", data_dir=args.data_dir))[: args.n]]
    prompts = [encode_prompt(tok, t) for t in tables]
    s = SearchSettings.from_config(
        DecodeConfig(beam_size=args.beam_size, max_new_tokens=args.max_new_tokens),
        eos_id=eos,
        banned_ids=newline_token_ids(tok),
    )
    B, K = len(prompts), args.beam_size
    methods = args.methods.split(",")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
        f"{B} MRs (prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens), beam {K}, "
        f"{args.max_new_tokens} new tokens, prefix P={P}, GPT2Config() random weights seed {args.seed}"
    )
    times: dict[tuple[str, str], float] = {}
    outs: dict[tuple[str, str], list[list[int]]] = {}
    bug_line = None
    for precision in precisions:
        base, peft_model, prefix = build(args.seed, precision)
        if args.eos_bias:

            def bias_eos(module, inputs, out, b=args.eos_bias):
                out[..., eos] += b
                return out

            base.get_output_embeddings().register_forward_hook(bias_eos)
        for _ in range(args.rounds):
            for m in methods:
                t0 = time.perf_counter()
                if m == "ours":
                    got = decode_ids(base, prompts, [prefix] * B, s, pad_id=eos, batch_size=B)
                elif m == "peft":
                    with torch.no_grad():
                        cache = peft_model.get_prompt(batch_size=B * K)
                    got = run_hf(base, prompts, s, eos, cache=cache, prefix_len=P)
                elif m == "plain":
                    got = run_hf(base, prompts, s, eos)
                else:
                    raise SystemExit(f"unknown method {m}")
                dt = time.perf_counter() - t0
                times[m, precision] = min(dt, times.get((m, precision), float("inf")))
                outs[m, precision] = got
                print(f"  {m:5s} {precision}: {dt:6.1f} s", file=sys.stderr)
        if precision == "fp32" and "peft" in methods and not args.no_bug_check:
            k = min(4, B)
            ids, mask = left_pad(prompts[:k], eos)
            with torch.no_grad():
                out = peft_model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    num_beams=K,
                    do_sample=False,
                    max_new_tokens=s.max_new_tokens,
                    min_new_tokens=s.min_new_tokens,
                    bad_words_ids=[[t] for t in s.banned_ids],
                    eos_token_id=eos,
                    pad_token_id=eos,
                )
            buggy = hf_ids(out, ids.shape[1], eos)
            differ = sum(a != b for a, b in zip(buggy, outs["peft", "fp32"][:k]))
            bug_line = (
                f"PEFT's own generate() vs the correct (explicit-prompt) decode, first {k} MRs, fp32: "
                f"{differ}/{k} outputs differ (it ignores the prefix)"
            )
        del base, peft_model

    lens = [len(g) for g in next(iter(outs.values()))]
    print(
        f"\n# generated tokens per output: mean {sum(lens) / len(lens):.1f}, min {min(lens)}, max {max(lens)}"
        f" (eos bias {args.eos_bias})"
    )
    print("\n| method | precision | seconds | s/MR | vs PEFT | outputs == PEFT |")
    print("|---|---|---|---|---|---|")
    for precision in precisions:
        ref = times.get(("peft", precision))
        for m in methods:
            t = times[m, precision]
            ratio = f"{t / ref:.2f}x" if ref else "-"
            if m == "ours" and ("peft", precision) in outs:
                mism = sum(a != b for a, b in zip(outs[m, precision], outs["peft", precision]))
                same = f"{B - mism}/{B} (mismatches: {mism})"
            else:
                same = "-" if m != "peft" else "(reference)"
            print(f"| {m} | {precision} | {t:.1f} | {t / B:.2f} | {ratio} | {same} |")
    if bug_line:
        print("\n" + bug_line)
    print(
        "\ncommand: python "
        + " ".join(
            shlex.quote(a)
            for a in [
                str(Path(__file__).relative_to(REPO)) if Path(__file__).is_relative_to(REPO) else __file__,
                *(argv or sys.argv[1:]),
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
