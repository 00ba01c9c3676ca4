"""Scale-out benchmarks (issue 10), each a side-by-side comparison in one run:

- `procs`: training steps/s of 1 process vs 2 processes (`torchrun --standalone --nproc-per-node N -m
  prefix_tuning.cli train ...`) at the same global batch (SmolLM2-135M prefix-tuning, batch 10, E2E rows), the
  runs interleaved `--rounds` times; the median step time of each run after its first 2 steps (warm-up). Also
  prints the largest difference of the logged losses (the two should optimise identically).
- `checkpointing`: peak memory of prefix-tuning steps with and without `train.gradient_checkpointing` on a
  Llama-3.2-1B-shaped model (random weights, 1.24B parameters), each in a fresh subprocess: peak RSS minus the
  RSS just before the first step (Linux VmHWM, reset after the model is built) = what training adds (activations;
  the prefix's gradients and AdamW state are a few MB), and the step time. fp32 by default: under bf16 autocast
  the cached bf16 copy of the weights (2.5 GB) would be counted in both.
- `group-by-length`: one epoch over the first `--rows` (2,000) E2E training rows with SmolLM2-135M through the
  real `prefix-tuning train` (precision auto), with and without `data.group_by_length`: the padding fraction
  of the epoch's batches, the training time, and the dev loss at the end of the epoch (300 dev rows).

    python benchmarks/scale.py procs              # ~3 min on 2 cores
    python benchmarks/scale.py checkpointing      # ~6 min (fp32, batch 4 x 128) on 2 cores, ~8 GB RAM
    python benchmarks/scale.py group-by-length    # ~12 min (bf16) on 2 cores

The first line is `hardware.describe_cpu()`. Numbers in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu_check import synthetic_batch
from train_step import rss_mb
from transformers import AutoModelForCausalLM, LlamaConfig

from prefix_tuning.config import MethodConfig
from prefix_tuning.configfile import apply_overrides, from_dict
from prefix_tuning.data import E2EDataset
from prefix_tuning.hardware import describe_cpu, dtype_of
from prefix_tuning.methods import build_method
from prefix_tuning.models import load_tokenizer
from prefix_tuning.recompute import enable_checkpointing
from prefix_tuning.run import RunDir, read_log
from prefix_tuning.train import batch_loss, batches, load_examples

LLAMA_1B = LlamaConfig(  # Llama-3.2-1B's shape
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def train_cli(out_dir: Path, overrides: list[str], nproc: int = 1) -> list[dict]:
    """Run `prefix-tuning train defaults OVERRIDES out_dir=...` (under torchrun when nproc > 1); the log's records."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "prefix_tuning.cli", "train", "defaults"]
    subprocess.run([*cmd, *overrides, f"out_dir={out_dir}", "--no-resume"], check=True, capture_output=True)
    return read_log(RunDir(out_dir))


def procs(a: argparse.Namespace) -> None:
    overrides = [
        f"model.name={a.model}",
        "method.name=prefix",
        "method.prefix_length=5",
        "data.train_size=200",
        "data.dev_size=10",
        f"train.max_steps={a.steps}",
        "train.batch_size=10",
        f"train.precision={a.precision}",
        "train.eval_every_epoch=false",
        "train.save_every=1000",
    ]
    times: dict[int, list[float]] = {1: [], 2: []}
    losses: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for n in (1, 2) if r % 2 == 0 else (2, 1):
                log = train_cli(Path(tmp) / f"n{n}-r{r}", overrides, nproc=n)
                steps = [rec for rec in log if "loss" in rec]
                times[n] += [rec["seconds"] for rec in steps[2:]]
                losses[n] = [rec["loss"] for rec in steps]
                prec = next(rec["precision"] for rec in log if rec.get("event") == "start")
    med = {n: statistics.median(t) for n, t in times.items()}
    for n in (1, 2):
        print(f"{n} process(es): {med[n]:.3f} s/step median, {1 / med[n]:.3f} steps/s ({len(times[n])} steps)")
    print(f"2 processes / 1 process, steps/s: {med[1] / med[2]:.2f}x")
    diff = max(abs(x - y) / abs(x) for x, y in zip(losses[1], losses[2]))
    print("losses, 1 process: " + " ".join(f"{x:.3f}" for x in losses[1]))
    print("losses, 2 procs:   " + " ".join(f"{x:.3f}" for x in losses[2]))
    print(f"largest relative |loss(1 proc) - loss(2 procs)| over {len(losses[1])} steps: {diff:.2e} (precision {prec})")


def reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM), so building the model does not count."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_since_reset_mb() -> float:
    """Peak RSS since the last reset (VmHWM of /proc/self/status)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def checkpointing_worker(a: argparse.Namespace) -> None:
    """One configuration in this (fresh) process; prints one JSON line."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LLAMA_1B)
    method = build_method(MethodConfig(name="prefix", prefix_length=5), model, None, seed=0)
    if a.on:
        enable_checkpointing(model)
    method.train_mode(backbone_dropout=False)
    params = method.trainable()
    opt = torch.optim.AdamW(params, lr=8e-5)
    batch = synthetic_batch(LLAMA_1B, a.batch, a.length, "cpu")
    dtype = dtype_of(a.precision)  # fp32 default: bf16 autocast would add a bf16 copy of the weights (2.5 GB)
    reset_peak_rss()
    before, times = rss_mb(), []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _ = batch_loss(method, batch, "sentence_sum", dtype)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    n = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {"params": n, "before": before, "peak": peak_rss_since_reset_mb(), "times": times, "precision": a.precision}
        )
    )


def checkpointing(a: argparse.Namespace) -> None:
    rows = {}
    for on in (False, True):
        args = [f"--batch={a.batch}", f"--length={a.length}", f"--steps={a.steps}", f"--threads={a.threads}"]
        args.append(f"--precision={a.precision}")
        out = subprocess.run(
            [sys.executable, __file__, "checkpointing-worker", *args, *(["--on"] if on else [])],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows[on] = r = json.loads(out.strip().splitlines()[-1])
        print(
            f"checkpointing {'on ' if on else 'off'}: {r['params'] / 1e9:.2f}B params, {r['precision']}, batch "
            f"{a.batch}x{a.length}: training adds {r['peak'] - r['before']:,.0f} MB (peak RSS {r['peak']:,.0f} MB, "
            f"before the first step {r['before']:,.0f} MB), s/step {', '.join(f'{t:.1f}' for t in r['times'])}"
        )
    added = {on: r["peak"] - r["before"] for on, r in rows.items()}
    step = {on: statistics.median(r["times"]) for on, r in rows.items()}
    print(f"memory added by training, off / on: {added[False] / added[True]:.2f}x less with checkpointing")
    print(f"step time, on / off: {step[True] / step[False]:.2f}x")


def padding_fraction(lengths: list[int], batch_size: int, seed: int, grouped: bool) -> float:
    """Share of padding positions in epoch 0's batches (each batch padded to its longest row)."""
    real = padded = 0
    for b in batches(len(lengths), batch_size, seed, 0, lengths if grouped else None):
        real += sum(lengths[i] for i in b)
        padded += len(b) * max(lengths[i] for i in b)
    return 1 - real / padded


def group_by_length(a: argparse.Namespace) -> None:
    overrides = [
        f"model.name={a.model}",
        "method.name=prefix",
        "method.prefix_length=5",
        f"data.train_size={a.rows}",
        "data.dev_size=300",
        "train.epochs=1",
        "train.batch_size=10",
        "train.save_every=100000",
    ]
    cfg = from_dict(apply_overrides({}, overrides))
    train_ex, _ = load_examples(cfg)
    ds = E2EDataset(train_ex, load_tokenizer(cfg.model.name), max_length=cfg.data.max_length)
    lengths = [len(ds[i][0]) for i in range(len(ds))]
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for grouped in (False, True):
            log = train_cli(
                Path(tmp) / f"g{int(grouped)}", [*overrides, f"data.group_by_length={str(grouped).lower()}"]
            )
            steps = [rec for rec in log if "loss" in rec]
            res[grouped] = (sum(rec["seconds"] for rec in steps), [rec["dev_loss"] for rec in log if "dev_loss" in rec])
            prec = next(rec["precision"] for rec in log if rec.get("event") == "start")
            print(
                f"group_by_length={str(grouped).lower():5s}: {len(steps)} steps, padding "
                f"{100 * padding_fraction(lengths, 10, cfg.train.seed, grouped):.1f}%, "
                f"train {res[grouped][0]:.1f} s, dev loss {res[grouped][1][-1]:.3f} ({prec})"
            )
    print(f"epoch time without / with grouping: {res[False][0] / res[True][0]:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("procs", help="1 vs 2 processes, steps/s at the same global batch")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--steps", type=int, default=12)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--precision", default="auto", help="train.precision (default auto)")
    for name in ("checkpointing", "checkpointing-worker"):
        s = sub.add_parser(name, help="peak memory with/without gradient checkpointing, 1B-shaped Llama")
        s.add_argument("--batch", type=int, default=4)
        s.add_argument("--length", type=int, default=128)
        s.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
        s.add_argument("--steps", type=int, default=2)
        s.add_argument("--threads", type=int, default=os.cpu_count())
        s.add_argument("--on", action="store_true", help=argparse.SUPPRESS)
    s = sub.add_parser("group-by-length", help="one epoch with/without length-grouped batches")
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--rows", type=int, default=2000)
    a = p.parse_args()
    if a.what != "checkpointing-worker":
        print(describe_cpu(), flush=True)
    {
        "procs": procs,
        "checkpointing": checkpointing,
        "checkpointing-worker": checkpointing_worker,
        "group-by-length": group_by_length,
    }[a.what](a)


if __name__ == "__main__":
    main()
