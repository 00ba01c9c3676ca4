"""Serving throughput and latency (issue 14, item 5): N concurrent clients over M prefixes against the
`prefix_tuning.serve` app on 127.0.0.1 (loopback only; the server runs in this process), four modes in one run:

  (a) mixed       N clients, client i on prefix i % M: continuous batching across prefixes (paper §4)
  (b) one-prefix  the same clients and server, but the engine admits only rows of the prefix it is running
                  (`Engine.mix_prefixes = False`): what a server that cannot mix prefixes does
  (c) sequential  one client, the same N*R requests one after another (no batching at all)
  (d) single      N clients all on prefix 0: the best case for batching, one prefix

Every request is a real E2E test table, greedy, with max_tokens = min_tokens = T, so every request does the same
work (EOS is banned until T). Prefixes are random tensors of the model's shape with lengths P = 5..12 (speed
does not depend on their values). Bounded: R requests per client and --time-limit seconds per mode (clients
stop sending after it), so at most N*R requests per mode.

    python benchmarks/serve.py --clients 4 --prefixes 2 --requests 2 --max-tokens 8   # a quick check
    python benchmarks/serve.py                                  # N=16, M=8, tiny-gpt2
    python benchmarks/serve.py --model smollm2-135m --json serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prefix_tuning.data import group_by_mr, load_e2e
from prefix_tuning.hardware import describe_cpu
from prefix_tuning.models import KVShape, load_model
from prefix_tuning.prefix import save_prefix
from prefix_tuning.run import RunDir
from prefix_tuning.serve import create_app
from prefix_tuning.serve_state import load_state


def make_prefixes(root: Path, model_name: str, m: int) -> list[str]:
    shape = KVShape.from_config(load_model(model_name).config)
    names = []
    for k in range(m):
        P = 5 + k % 8
        (root / f"p{k}").mkdir(parents=True)
        g = torch.Generator().manual_seed(k)
        save_prefix(
            torch.randn(shape.n_layers, 2, shape.n_kv_heads, P, shape.head_dim, generator=g),
            RunDir(root / f"p{k}").prefix,
            base_model=model_name,
        )
        names.append(f"p{k}")
    return names


def start_server(state):
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def run_mode(url: str, plan: list[list[tuple[str, str]]], max_tokens: int, time_limit: float) -> dict:
    """plan[c] = the (model, table) requests of client c, sent one after another; all clients concurrently."""
    import httpx

    latencies: list[float] = []
    tokens = 0
    deadline = time.monotonic() + time_limit

    async def client(reqs, http):
        nonlocal tokens
        for model, table in reqs:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = await http.post(
                url + "/v1/completions",
                json={
                    "model": model,
                    "prompt": table,
                    "temperature": 0,
                    "max_tokens": max_tokens,
                    "min_tokens": max_tokens,
                },
            )
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=len(plan) + 1)
    async with httpx.AsyncClient(timeout=max(60.0, time_limit), limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(reqs, http) for reqs in plan))
        seconds = time.perf_counter() - t0
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {
        "requests": len(latencies),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "p50_s": pct(0.50),
        "p95_s": pct(0.95),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-gpt2", help="tiny-gpt2 (default), smollm2-135m, or a model name")
    ap.add_argument("--clients", type=int, default=16, help="N concurrent clients (default 16)")
    ap.add_argument("--prefixes", type=int, default=8, help="M prefixes (default 8)")
    ap.add_argument("--requests", type=int, default=4, help="R requests per client per mode (default 4)")
    ap.add_argument("--max-tokens", type=int, default=32, help="T tokens generated per request (default 32)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per mode before clients stop sending")
    ap.add_argument("--threads", type=int, help="torch threads (default: the cores available)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    n, m, r = args.clients, args.prefixes, args.requests

    tables = [g.table for g in group_by_mr(load_e2e("test"))]
    with tempfile.TemporaryDirectory() as tmp:
        names = make_prefixes(Path(tmp), args.model, m)
        state = load_state(
            args.model,
            [tmp],
            device=args.device,
            precision=args.precision,
            threads=args.threads,
            max_batch=max(64, n),
            max_waiting=max(256, n * r),
        )
    server, thread, url = start_server(state)

    def plan(prefix_of) -> list[list[tuple[str, str]]]:
        return [[(prefix_of(c), tables[(c * r + j) % len(tables)]) for j in range(r)] for c in range(n)]

    mixed = plan(lambda c: names[c % m])
    modes = {
        "(a) mixed prefixes, continuous batching": (True, mixed),
        "(b) same server, one prefix at a time": (False, mixed),
        "(c) sequential requests": (True, [[req for reqs in mixed for req in reqs]]),
        "(d) all N on one prefix": (True, plan(lambda c: names[0])),
    }
    results = {}
    try:
        asyncio.run(run_mode(url, [[(names[0], tables[0])]], args.max_tokens, args.time_limit))  # warm-up
        for label, (mix, p) in modes.items():
            state.engine.mix_prefixes = mix
            state.engine.stats["peak_rows"] = 0
            res = asyncio.run(run_mode(url, p, args.max_tokens, args.time_limit))
            res["peak_batch"] = state.engine.stats["peak_rows"]
            results[label] = res
            print(f"{label}: {res['requests']} requests, {res['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    finally:
        server.should_exit = True
        thread.join(timeout=60)

    seq = results["(c) sequential requests"]["tokens_per_s"]
    print(
        f"\nmodel {args.model}, N={n} clients, M={m} prefixes (P 5-12), R={r} requests/client, T={args.max_tokens} "
        f"tokens/request, {args.precision}, {torch.get_num_threads()} threads; {describe_cpu()}\n"
    )
    print("| mode | requests | tokens/s | p50 latency s | p95 latency s | peak batch | tokens/s vs sequential |")
    print("|---|---|---|---|---|---|---|")
    for label, res in results.items():
        print(
            f"| {label} | {res['requests']} | {res['tokens_per_s']:.1f} | {res['p50_s']:.3f} | {res['p95_s']:.3f} "
            f"| {res['peak_batch']} | {res['tokens_per_s'] / seq:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
