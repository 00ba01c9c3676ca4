"""One prepared GPU check (issue 10, item 5), run by `benchmarks/gpu_check.sh`: prints

1. training tokens/s, peak memory and model-FLOPs utilisation (MFU) of prefix-tuning and fine-tuning, with and
   without gradient checkpointing, on a GPT-2-Medium-shaped and a SmolLM2-135M-shaped random model
   (batch 10 x 128 tokens, the first half of each row masked like an E2E table, `train.batch_loss`);
2. beam-5 decoding speed (MRs/s) with a random prefix on the GPT-2-Medium-shaped model (E2E dev MRs);
3. whether greedy outputs on 20 E2E dev MRs are identical between CPU fp32 and GPU fp32.

Random weights, GPT-2's tokenizer (vocabulary 50257 for both shapes): no download; the speeds are those of
the real shapes. Model FLOPs per trained token (the PaLM convention, attention included): fine-tuning
6N + 12*L*d*T (forward 2N, backward 4N); prefix-tuning 4N + 12*L*d*T (no weight gradients, but the
backward still goes through every block to reach the prefix). MFU = model FLOPs/s / --peak-tflops (default
989: H100/H200 dense bf16). `--cpu-smoke`: tiny shapes, few steps, CPU only, CPU-vs-CPU comparison: proves the
script runs, measures nothing.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from prefix_tuning.config import DecodeConfig, MethodConfig
from prefix_tuning.data import load_e2e
from prefix_tuning.decode import decode
from prefix_tuning.methods import build_method
from prefix_tuning.models import KVShape, load_tokenizer, tiny_config
from prefix_tuning.recompute import enable_checkpointing
from prefix_tuning.train import batch_loss

SHAPES = {  # name: (config, smoke config)
    "gpt2-medium-shaped": (GPT2Config(n_layer=24, n_embd=1024, n_head=16), tiny_config("tiny-gpt2")),
    "smollm2-135m-shaped": (
        LlamaConfig(
            vocab_size=50257,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
        tiny_config("tiny-llama"),
    ),
}


def build(config, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(device).eval()


def synthetic_batch(config, batch: int, length: int, device: str) -> dict[str, torch.Tensor]:
    """Seeded random token ids, the first half of each row masked out of the loss like an E2E table."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=g).to(device)  # (B, T)
    labels = ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def train_speed(name: str, config, method: str, checkpointing: bool, a: argparse.Namespace) -> str:
    model = build(config, a.device)
    m = build_method(MethodConfig(name=method), model, None, seed=0)
    if checkpointing:
        enable_checkpointing(model)
    m.train_mode(backbone_dropout=False)
    params = m.trainable()
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch = synthetic_batch(config, a.batch, a.length, a.device)
    dtype = torch.bfloat16 if a.device.startswith("cuda") else None
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(a.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss, _ = batch_loss(m, batch, "sentence_sum", dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    tokens = a.batch * a.length
    n = sum(p.numel() for p in model.parameters())  # N, embeddings included
    s = KVShape.from_config(config)
    per_token = (6 if method == "finetune" else 4) * n + 12 * s.n_layers * s.hidden_size * a.length
    tflops = per_token * tokens / step / 1e12
    mfu = f"{100 * tflops / a.peak_tflops:5.1f}%" if a.device.startswith("cuda") else "  n/a"
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:6.2f} GiB" if a.device.startswith("cuda") else "       n/a"
    del model, m, opt
    return (
        f"{name:20s} {method:8s} ckpt={'yes' if checkpointing else 'no ':3s} {tokens / step:10.0f} tok/s  "
        f"{step * 1000:8.1f} ms/step  {tflops:7.2f} TFLOP/s  MFU {mfu}  peak {mem}"
    )


def tables(n: int) -> list[str]:
    return list(dict.fromkeys(e.table for e in load_e2e("dev")))[:n]  # unique MRs, in order


def decode_rows(model, tokenizer, mrs: list[str], prefix, beam: int, max_new: int) -> list[str]:
    cfg = DecodeConfig(beam_size=beam, max_new_tokens=max_new, min_new_tokens=0, precision="fp32", batch_size=16)
    return decode(model, tokenizer, mrs, prefix, cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the script runs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--decode-mrs", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200: 989)")
    a = p.parse_args()
    if a.cpu_smoke:
        a.device, a.warmup, a.steps, a.decode_mrs, a.max_new_tokens, a.length = "cpu", 1, 2, 4, 8, 32
    smoke = a.cpu_smoke
    print(
        f"torch {torch.__version__}, device {a.device}"
        + (f" ({torch.cuda.get_device_name(a.device)})" if a.device.startswith("cuda") else "")
        + (", CPU SMOKE MODE: tiny shapes, numbers meaningless" if smoke else ""),
        flush=True,
    )

    print("\n== training speed (bf16 autocast on GPU, fp32 on CPU; median step)", flush=True)
    for name, (config, tiny) in SHAPES.items():
        for method in ("prefix", "finetune"):
            for ckpt in (False, True):
                print(train_speed(name, tiny if smoke else config, method, ckpt, a), flush=True)

    tokenizer = load_tokenizer("tiny-gpt2")  # GPT-2's tokenizer
    config = SHAPES["gpt2-medium-shaped"][1 if smoke else 0]
    s = KVShape.from_config(config)
    prefix = torch.randn(s.n_layers, 2, s.n_kv_heads, 5, s.head_dim, generator=torch.Generator().manual_seed(0))

    print("\n== beam-5 decoding (fp32, random prefix of 5, gpt2-medium-shaped)", flush=True)
    model = build(config, a.device)
    mrs = tables(a.decode_mrs)
    decode_rows(model, tokenizer, mrs[:2], prefix.to(a.device), 5, 4)  # warm-up
    t0 = time.perf_counter()
    decode_rows(model, tokenizer, mrs, prefix.to(a.device), 5, a.max_new_tokens)
    dt = time.perf_counter() - t0
    print(f"{len(mrs)} MRs in {dt:.1f} s: {len(mrs) / dt:.2f} MRs/s (max {a.max_new_tokens} new tokens)", flush=True)

    print("\n== greedy CPU fp32 vs " + ("CPU fp32 (smoke)" if smoke else "GPU fp32") + " on 20 MRs", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 on the GPU
    torch.backends.cudnn.allow_tf32 = False
    mrs = tables(3 if smoke else 20)
    cpu = decode_rows(build(config, "cpu"), tokenizer, mrs, prefix, 1, a.max_new_tokens)
    other = decode_rows(model, tokenizer, mrs, prefix.to(a.device), 1, a.max_new_tokens)
    same = sum(x == y for x, y in zip(cpu, other))
    print(
        f"identical: {same}/{len(mrs)}"
        + (
            ""
            if same == len(mrs)
            else f"; first difference at MR {next(i for i, (x, y) in enumerate(zip(cpu, other)) if x != y)}"
        ),
        flush=True,
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
