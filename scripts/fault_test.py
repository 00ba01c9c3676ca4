"""Kill -9 training at random moments and inside its file writes; every resumed run must equal an uninterrupted one.

    python scripts/fault_test.py --kills 20 [--seed 0] [--dir DIR]

Each attempt is a subprocess running the real command on one run dir,
    python -m prefix_tuning.cli train configs/tiny_prefix.yaml train.precision=fp32 ... out_dir=RUN
and is SIGKILLed either at a random (seeded) moment of its training, or, to hit the short write windows
every time, from inside: `fault_test.py child FILE:PHASE:N -- <cli args>` runs the same CLI with `os.replace`
wrapped so that the N-th atomic write of FILE (config.yaml, prefix.safetensors, last.safetensors) dies mid-write
(temp file half written), before its rename, or just after it. Production code has no hook for this.

After every kill, each result file present must load (no half-written files), and half a JSON line is appended
to log.jsonl (what a kill during a log write leaves). When an attempt finishes, the run dir must equal the
uninterrupted reference: prefix.safetensors bit for bit (tensor and metadata), config.yaml, log.jsonl line for
line except for timings and `start` lines, no temp files left; then, while kills remain, a new run dir starts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from prefix_tuning import cli
from prefix_tuning.checkpoint import load_checkpoint
from prefix_tuning.configfile import load_config
from prefix_tuning.prefix import load_prefix

# configs/tiny_prefix.yaml cut to 8 steps (checkpoints at 3, 6, 8; dev loss and prefix.safetensors at 4, 8)
TRAIN = [
    "train",
    str(REPO / "configs" / "tiny_prefix.yaml"),
    "train.precision=fp32",
    "train.num_threads=1",
    "data.train_size=16",
    "data.dev_size=4",
    "data.max_length=64",
    "method.mlp_hidden=16",
    "train.batch_size=4",
    "train.save_every=3",
]
FILES = ("config.yaml", "prefix.safetensors", "last.safetensors")
# write windows, most telling first; a run of many kills cycles through all of them
WINDOWS = [
    ("last.safetensors", "mid"),
    ("prefix.safetensors", "after"),
    ("config.yaml", "before"),
    ("last.safetensors", "after"),
    ("prefix.safetensors", "mid"),
    ("last.safetensors", "before"),
    ("config.yaml", "mid"),
    ("prefix.safetensors", "before"),
    ("config.yaml", "after"),
]
TIMINGS = ("seconds", "tokens_per_s")
HALF_LINE = b'{"step": 99, "epoch": 0, "lo'


def train_args(run_dir: Path) -> list[str]:
    return TRAIN + [f"out_dir={run_dir}"]


def reference(run_dir: Path) -> Path:
    """The uninterrupted run, in this process (the same command as the attempts)."""
    if cli.main(train_args(run_dir)) != 0:
        raise RuntimeError("the uninterrupted reference run failed")
    return run_dir


def intact(run_dir: Path) -> None:
    """Every result file present loads: a kill never leaves one half written."""
    if (run_dir / "config.yaml").exists():
        load_config(run_dir / "config.yaml")
    if (run_dir / "prefix.safetensors").exists():
        load_prefix(run_dir / "prefix.safetensors")
    if (run_dir / "checkpoints" / "last.safetensors").exists():
        load_checkpoint(run_dir / "checkpoints" / "last.safetensors")


def log_rows(run_dir: Path) -> list[dict]:
    """log.jsonl without `start` lines and timings: what must not depend on interruptions."""
    rows = []
    for i, line in enumerate((run_dir / "log.jsonl").read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"{run_dir / 'log.jsonl'}:{i} is not JSON: {line[:60]!r}") from None
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows if r.get("event") != "start"]


def same_as_reference(run_dir: Path, ref: Path) -> None:
    (a, meta_a), (b, meta_b) = (load_prefix(d / "prefix.safetensors") for d in (run_dir, ref))
    # bits, not bytes: safetensors writes its metadata in hash order, which differs between any two processes
    if not torch.equal(a.view(torch.int32), b.view(torch.int32)) or meta_a != meta_b:
        raise AssertionError(f"{run_dir / 'prefix.safetensors'} differs from the uninterrupted run's")
    a, b = (yaml.safe_load((d / "config.yaml").read_text()) for d in (run_dir, ref))
    if {**a, "out_dir": None} != {**b, "out_dir": None}:
        raise AssertionError(f"{run_dir / 'config.yaml'} differs from the uninterrupted run's")
    if log_rows(run_dir) != log_rows(ref):
        raise AssertionError(
            f"{run_dir / 'log.jsonl'} differs from the uninterrupted run's (timings and start lines aside)"
        )
    if temps := sorted(str(p) for p in run_dir.rglob(".*.tmp")):
        raise AssertionError(f"temp files left behind: {temps}")


def attempt(
    run_dir: Path, out: Path, *, window: str | None = None, at: tuple[int, float] | None = None, timeout: float = 600
) -> str:
    """Run the train command once: 'killed' or 'finished'. window: FILE:PHASE:N; at: (k, t) SIGKILL it t seconds
    after its progress bar shows step k (a time alone would mostly hit start-up, whose length varies)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    if window:
        cmd = [sys.executable, str(Path(__file__).resolve()), "child", window, "--", *train_args(run_dir)]
    else:
        cmd = [sys.executable, "-m", "prefix_tuning.cli", *train_args(run_dir)]
    t0 = time.monotonic()
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        if at is not None:
            while (
                proc.poll() is None
                and max(map(int, re.findall(rb"\| *(\d+)/\d+ \[", out.read_bytes())), default=-1) < at[0]
            ):
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(cmd)
                time.sleep(0.005)
            time.sleep(at[1])
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc == -signal.SIGKILL:
        return "killed"
    if rc != 0:
        raise RuntimeError(f"attempt exited with {rc}:\n{out.read_text(errors='replace')[-3000:]}")
    return "finished"


def write_steps(ref: Path) -> tuple[dict[str, list[int]], int]:
    """Steps at which the uninterrupted run wrote its checkpoint and prefix (train.py's rules: every
    save_every steps and at the end; a prefix whenever the dev loss improves), and its step count. A run
    resumed from step s writes those after s again."""
    rows, every = log_rows(ref), yaml.safe_load((ref / "config.yaml").read_text())["train"]["save_every"]
    total = max(r["step"] for r in rows)
    devs = [(r["step"], r["dev_loss"]) for r in rows if "dev_loss" in r]
    better = [s for i, (s, loss) in enumerate(devs) if all(loss < x for _, x in devs[:i])]
    return {
        "last.safetensors": [s for s in range(1, total + 1) if s % every == 0 or s == total],
        "prefix.safetensors": better,
    }, total


def checkpoint_step(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "last.safetensors"
    return load_checkpoint(path)["step"] if path.exists() else 0


def run(kills: int, seed: int, work: Path, ref: Path | None = None, *, verbose: bool = True) -> dict:
    """Kill training `kills` times (every other kill in a write window, the rest at random moments), re-running
    the command after each; once the kills are spent, run it to the end.

    Raises AssertionError when a finished run differs from the uninterrupted one or a kill left a broken file."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    ref = ref or reference(work / "reference")
    writes, total = write_steps(ref)
    rows = [json.loads(x) for x in (ref / "log.jsonl").read_text().splitlines()]
    step_seconds = statistics.median(r["seconds"] for r in rows if "seconds" in r)
    rounds, done, n_window, log = 1, 0, 0, []
    run_dir = work / "run1"
    while True:
        step = checkpoint_step(run_dir)
        window, at = None, None
        if step >= total:
            pass  # killed after its last checkpoint: let it finish, check it, start a new round
        elif done < kills and done % 2 == 0:  # the n-th write of a file this attempt will make (always reached)
            name, phase = WINDOWS[n_window % len(WINDOWS)]
            left = 1 if name == "config.yaml" else sum(s > step for s in writes[name])
            if left == 0:
                name, left = "config.yaml", 1
            window = f"{name}:{phase}:{rng.randint(1, left)}"
        elif done < kills:  # a random moment of the training still to do: in a step, a dev loss or a save
            at = (rng.randint(step, total - 1), rng.uniform(0, 1.5 * step_seconds))
        t0 = time.monotonic()
        outcome = attempt(run_dir, work / f"attempt{len(log)}.out", window=window, at=at)
        what = window or (f"{at[1]:.2f} s after step {at[0]}" if at else "run to the end")
        log.append(
            f"{run_dir.name}: from step {step}, {what}: {outcome}, checkpoint now at step "
            f"{checkpoint_step(run_dir)} ({time.monotonic() - t0:.1f} s)"
        )
        if verbose:
            print(log[-1], flush=True)
        if outcome == "killed":
            done += 1
            n_window += window is not None
            intact(run_dir)
            if (run_dir / "log.jsonl").exists():
                with open(run_dir / "log.jsonl", "ab") as f:
                    f.write(HALF_LINE)  # what a kill in the middle of a log write leaves
            continue
        same_as_reference(run_dir, ref)
        if done >= kills:
            break
        rounds += 1  # kills remain: another run
        run_dir = work / f"run{rounds}"
    return {"kills": done, "window_kills": n_window, "rounds": rounds, "attempts": log}


def child(spec: str, argv: list[str]) -> int:
    """The CLI with os.replace wrapped: the N-th write of FILE dies mid-write, before or after its rename."""
    name, phase, n = spec.split(":")
    if name not in FILES or phase not in ("mid", "before", "after"):
        raise SystemExit(f"bad window {spec!r}: FILE:PHASE:N with FILE in {FILES}, PHASE mid/before/after")
    real_replace, seen = os.replace, Counter()

    def replace(src, dst, **kw):
        if Path(dst).name == name:
            seen[name] += 1
            if seen[name] == int(n):
                if phase == "mid":
                    os.truncate(src, os.path.getsize(src) // 2)
                if phase in ("mid", "before"):
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst, **kw)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, **kw)

    os.replace = replace
    return cli.main(argv)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        return child(sys.argv[2], sys.argv[sys.argv.index("--") + 1 :])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs in all (half in write windows)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill times and write choices")
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: a new temp folder)")
    args = p.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="fault_test."))
    t0 = time.monotonic()
    res = run(args.kills, args.seed, work)
    print(
        f"OK: {res['kills']} kills ({res['window_kills']} in write windows) over {res['rounds']} round(s); every "
        f"finished run equals the uninterrupted one ({time.monotonic() - t0:.0f} s, in {work})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
