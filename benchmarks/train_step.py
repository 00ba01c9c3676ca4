"""Training-step speed and memory of every method: ours, PEFT prefix-tuning, fine-tuning, the Table 1 rows.

What it measures (GitHub issue 2, item 9): the time of one optimiser step -- forward, backward, gradient
clipping (max norm 1.0, as `train.train` does) and AdamW step -- for
  - ours:     `build_method(MethodConfig(name='prefix', prefix_length=5))` + `train.batch_loss`;
  - peft:     PEFT `PrefixTuningConfig(num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=512)`;
  - finetune: `build_method(MethodConfig(name='finetune'))` + `train.batch_loss`;
  - the other Table 1 rows and §7.2-7.3 variants, each `build_method(MethodConfig(...))` with the fields in
    `OUR_METHODS`: finetune-top2, adapter-3% / adapter-0.1% (fractions of the model), lora (r 4, alpha 32),
    embedding-only (P=5 input embeddings), infix (P=5 before the separator), trained in `Method.train_mode`;
on a GPT-2-small-shaped model (`GPT2Config()` defaults: 12 layers, 768 wide, random seeded weights, the
same weights for every method) and a batch of 10 x 72 random token ids whose first half is masked with -100
in the labels (like the table part of an E2E example), in fp32 and the device's native low precision (autocast):
bf16 on CPUs with AVX512-BF16 or AMX and on CUDA with bf16, fp16 on CUDA without bf16. On a CPU without native
bf16 (AVX2-only) torch emulates bf16 at a fraction of fp32's speed, so by default only fp32 runs there (a line
says so); `--precision fp32,bf16` still measures it, with the warning. The first output line names the CPU's
kernel level and bf16 support (`hardware.describe_cpu()`).

Fairness: every method's loss is `train.batch_loss(..., 'sentence_sum')` (PEFT's logits go through it via a
small adapter instead of PEFT's own HF token-mean loss), so all three run the same loss code. The backbone's
dropout is off for both prefix methods (the original code's and our default) and on for fine-tuning (as
`Method.train_mode` does). Ours and PEFT start from the very same prefix (same seed, same parameter order),
so their first-step losses must agree exactly -- a check that both run the same computation. PEFT
recomputes its MLP for every batch row; ours runs it once and expands.

How: every (method, precision) runs in a fresh subprocess: build, `--warmup` untimed steps, then `--steps`
timed steps; the table shows the median and min wall-clock step time and the median CPU time
(`time.process_time`, all threads: less sensitive than wall time to other processes on a shared machine;
meaningless on CUDA). Methods are interleaved and the whole sweep is repeated `--rounds` times (step
times pooled). Memory: on CPU, the
subprocess's peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) minus its RSS just before the first
training step, i.e. what training adds on top of the loaded model (activations, gradients, optimiser state);
the absolute peak RSS is shown too. tracemalloc cannot see torch's allocations. On CUDA:
`torch.cuda.max_memory_allocated` minus the memory allocated before the first step (and the absolute peak).

    python benchmarks/train_step.py           # fp32 + native low precision, warmup 2, steps 5, 2 rounds, 1 thread
    python benchmarks/train_step.py --precision bf16 --steps 10 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

# benchmark name -> MethodConfig fields (prefix length 5 for the prefix family); "peft" is PEFT's prefix-tuning
OUR_METHODS: dict[str, dict] = {
    "ours": {"name": "prefix"},
    "finetune": {"name": "finetune"},
    "finetune-top2": {"name": "finetune-top", "top_k_layers": 2},
    "adapter-3%": {"name": "adapter", "adapter_fraction": 0.03},
    "adapter-0.1%": {"name": "adapter", "adapter_fraction": 0.001},
    "lora": {"name": "lora"},  # r 4, alpha 32, dropout 0.1 on q and v
    "embedding-only": {"name": "prefix", "embedding_only": True},  # §7.2
    "infix": {"name": "prefix", "position": "infix"},  # §7.3: before the separator (eos at mid-sequence here)
}
METHODS = ("ours", "peft", *list(OUR_METHODS)[1:])
LR = {"peft": 8e-5} | {m: 8e-5 if c["name"] == "prefix" else 5e-5 for m, c in OUR_METHODS.items()} | {"lora": 2e-4}
PRECISIONS = ("fp32", "bf16", "fp16")


def rss_mb() -> float:
    """Current resident set size (Linux /proc; elsewhere falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 2**10  # bytes on macOS, KiB on Linux


class PeftAsMethod:
    """Lets `train.batch_loss` drive a PEFT model: the same loss code as ours, on PEFT's logits."""

    def __init__(self, peft_model):
        self.model = peft_model

    def forward(self, input_ids, attention_mask, dtype=None, logits_to_keep=0):
        # PEFT forwards extra kwargs to the base model, so it gets the same logits-only-on-targets saving
        return self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep).logits


def setup(method: str, model, seed: int):
    """(object for batch_loss, trainable parameters) with the model in its training mode."""
    import torch

    from prefix_tuning.config import MethodConfig
    from prefix_tuning.methods import build_method

    if method == "peft":
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        torch.manual_seed(seed)  # same seed and parameter creation order as ours: the very same prefix
        cfg = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=512
        )
        pm = get_peft_model(model, cfg)
        pm.train()
        pm.get_base_model().eval()  # backbone dropout off, as for ours
        return PeftAsMethod(pm), [p for p in pm.parameters() if p.requires_grad]
    tok = SimpleNamespace(eos_token_id=model.config.eos_token_id)  # infix: the separator it goes before
    m = build_method(MethodConfig(prefix_length=5, **OUR_METHODS[method]), model, tokenizer=tok, seed=seed)
    m.train_mode(backbone_dropout=False)
    return m, m.trainable()


def worker(a: argparse.Namespace) -> dict:
    """One (method, precision) measurement in this (fresh) process."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from prefix_tuning.train import batch_loss

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.worker_precision]
    torch.manual_seed(a.seed)
    model = GPT2LMHeadModel(GPT2Config()).to(dev)
    g = torch.Generator().manual_seed(a.seed + 1)
    eos = model.config.eos_token_id  # the last id of GPT-2's vocabulary: never drawn below
    ids = torch.randint(0, eos, (a.batch, a.length), generator=g)
    ids[:, a.length // 2 - 1] = eos  # the separator ends the "table" half, as in an E2E example
    labels = ids.clone()
    labels[:, : a.length // 2] = -100  # the table and the separator carry no loss
    batch = {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev), "labels": labels.to(dev)}
    meth, params = setup(a.worker_method, model, a.seed)
    opt = torch.optim.AdamW(params, lr=LR[a.worker_method], weight_decay=0.0)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16 and cuda)  # as train.train does

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = batch_loss(meth, batch, "sentence_sum", dtype)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
    else:
        base = rss_mb()
    first_loss = step()
    for _ in range(a.warmup - 1):
        step()
    times, cpu = [], []
    for _ in range(a.steps):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else peak_rss_mb()
    return {
        "times": times,
        "cpu": cpu,
        "mem_delta": peak - base,
        "mem_peak": peak,
        "loss": first_loss,
        "trainable": sum(p.numel() for p in params),
    }


def run_worker(method: str, precision: str, a: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker-method",
        method,
        "--worker-precision",
        precision,
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        "--threads",
        str(a.threads),
        "--device",
        a.device,
        "--batch",
        str(a.batch),
        "--length",
        str(a.length),
        "--seed",
        str(a.seed),
    ]
    env = dict(
        os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false"
    )
    out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"worker {method}/{precision} failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def default_precisions(device: str) -> tuple[list[str], str | None]:
    """fp32 plus the device's native low precision (`precision: auto`), and a note when bf16 is skipped."""
    import torch

    from prefix_tuning.hardware import resolve_precision

    low = resolve_precision("auto", torch.device(device))
    if low != "fp32":
        return ["fp32", low], None
    return ["fp32"], "bf16 skipped: this CPU has no native bf16, torch emulates it (--precision fp32,bf16 forces it)"


def check_precisions(precisions: list[str], device: str) -> list[str]:
    """The warnings `hardware.resolve_precision` gives for explicitly asked precisions (bf16 on an emulating CPU)."""
    import torch

    from prefix_tuning.hardware import resolve_precision

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for prec in precisions:
            resolve_precision(prec, torch.device(device))
    return [f"warning: {w.message}" for w in caught]


def versions() -> str:
    import peft
    import torch
    import transformers

    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    p.add_argument("--rounds", type=int, default=2, help="repeat the interleaved sweep (step times pooled)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (under load 1 can beat 2)")
    p.add_argument(
        "--precision",
        default=None,
        help="comma list of fp32, bf16, fp16 (default: fp32 and the "
        "device's native low precision: bf16 on CPUs with AVX512-BF16/AMX and CUDA with bf16, fp16 on "
        "CUDA without; fp32 only on a CPU that emulates bf16)",
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--length", type=int, default=72, help="tokens per example")
    p.add_argument("--seed", type=int, default=101)
    p.add_argument("--worker-method", help=argparse.SUPPRESS)
    p.add_argument("--worker-precision", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.warmup = max(a.warmup, 1)
    if a.worker_method:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return

    from prefix_tuning.hardware import describe_cpu

    print(describe_cpu(), flush=True)
    note = None
    if a.precision is None:
        precisions, note = default_precisions(a.device)
    else:
        precisions = [x.strip() for x in a.precision.split(",") if x.strip()]
    methods = [x.strip() for x in a.methods.split(",") if x.strip()]
    bad = [x for x in precisions if x not in PRECISIONS] + [x for x in methods if x not in METHODS]
    if bad:
        p.error(f"unknown precision/method: {bad}")
    cuda = a.device.startswith("cuda")
    print("$ " + shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(versions())
    for line in ([note] if note else []) + check_precisions(precisions, a.device):
        print(line)
    print(
        f"device {a.device}, {a.threads} thread(s), batch {a.batch}x{a.length}, warmup {a.warmup}, "
        f"steps {a.steps}, rounds {a.rounds}; load average at start {os.getloadavg()[0]:.2f}\n",
        flush=True,
    )

    res: dict[tuple[str, str], list[dict]] = {}
    t_start = time.time()
    for r in range(a.rounds):
        for prec in precisions:
            order = methods[r % len(methods) :] + methods[: r % len(methods)]  # rotate: no fixed position bias
            for m in order:
                out = run_worker(m, prec, a)
                res.setdefault((m, prec), []).append(out)
                print(
                    f"  round {r + 1} {m:8s} {prec}: median {statistics.median(out['times']):.3f} s/step, "
                    f"+{out['mem_delta']:.0f} MB, first loss {out['loss']:.4f}",
                    flush=True,
                )

    def med(m, prec, key="times"):
        return statistics.median(t for o in res[(m, prec)] for t in o[key])

    def fastest(m, prec):
        return min(t for o in res[(m, prec)] for t in o["times"])

    def cpu_med(m, prec):
        return med(m, prec, "cpu")

    def ratio(f, m1, m2, prec):
        return f(m1, prec) / f(m2, prec)

    mem_label = "peak alloc" if cuda else "peak RSS"
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; sweep took {time.time() - t_start:.0f} s\n")
    print(
        f"| method | precision | s/step median | s/step min | CPU s/step median | {mem_label} delta MB "
        f"| {mem_label} MB | trainable params | step time / ours | memory / ours | first-step loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for prec in precisions:
        for m in methods:
            outs = res[(m, prec)]
            delta = max(o["mem_delta"] for o in outs)
            peak = max(o["mem_peak"] for o in outs)
            rt = rm = "-"
            if "ours" in methods:
                rt = f"{ratio(med, m, 'ours', prec):.2f}"
                rm = f"{delta / max(o['mem_delta'] for o in res[('ours', prec)]):.2f}"
            print(
                f"| {m} | {prec} | {med(m, prec):.3f} | {fastest(m, prec):.3f} | {cpu_med(m, prec):.3f} "
                f"| {delta:.0f} | {peak:.0f} | {outs[0]['trainable']:,} | {rt} | {rm} | {outs[0]['loss']:.4f} |"
            )
    print("\nratios of wall-clock median (min; CPU-time median -- CPU time is less sensitive to other load):")
    for prec in precisions:
        for m1, m2, note in (("finetune", "ours", "paper: ~1.5x"), ("ours", "peft", "issue: must be <= 1")):
            if m1 in methods and m2 in methods:
                r = [ratio(f, m1, m2, prec) for f in (med, fastest, cpu_med)]
                print(f"{prec}: {m1} / {m2} step time = {r[0]:.2f} ({r[1]:.2f}; {r[2]:.2f})  [{note}]")
        if "ours" in methods and "peft" in methods:
            d = abs(res[("ours", prec)][0]["loss"] - res[("peft", prec)][0]["loss"])
            print(f"{prec}: first-step loss |ours - PEFT| = {d:.2g} (same seed, same init order: same prefix)")


if __name__ == "__main__":
    main()
