"""What the machine can do: the precision to compute in and the CPU threads to use.

Why this exists: bf16 is ~2.5x faster than fp32 on CPUs with AVX512-BF16 (or AMX), but on CPUs without it
(AVX2-only laptops, CI runners, many cloud VMs) torch emulates bf16 and a SmolLM2-135M training step takes
~206 s instead of ~6 s in fp32. So `precision: auto` (the default everywhere) picks bf16 only where the
device computes it natively, fp16 on CUDA without bf16, else fp32; an explicit `bf16` on a CPU without
native support warns once, with those numbers.

Threads: torch's default is the machine's core count, which over-subscribes a process restricted to fewer
cores (taskset, cgroup CPU quotas in containers and CI). `available_cores()` reads both limits.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""A precision setting; the config's type and the CLIs' choices both come from this one definition."""
PRECISIONS: tuple[str, ...] = get_args(Precision)
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_warned: set[str] = set()


def cpu_capability() -> str:
    """torch's CPU kernel level: `AVX512`, `AVX2`, `DEFAULT`, ... (honours ATEN_CPU_CAPABILITY)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """True when torch's CPU kernels run bf16 in hardware: AVX512-BF16 or AMX, with AVX512 kernels enabled.

    ATEN_CPU_CAPABILITY=avx2 (or ONEDNN_MAX_CPU_ISA=AVX2) turns the AVX512 paths off, and then bf16 is emulated
    even on a CPU that has the instructions; that is how the AVX2-only path is measured on a bf16 machine."""
    if not cpu_capability().startswith("AVX512"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa not in ("ALL", "") and not any(x in isa for x in ("BF16", "AMX", "FP16", "AVX10")):
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def describe_cpu() -> str:
    """One line naming the CPU's kernel level and bf16 support, for logs and benchmark output."""
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16 (emulated, ~30x slower than fp32)"
    return f"CPU capability {cpu_capability()}, {native}, {available_cores()} cores available"


def resolve_precision(spec: str, device: torch.device) -> str:
    """The concrete precision (`fp32`, `bf16`, `fp16`) for a config value on a device.

    auto: bf16 where the device computes it natively (CUDA with bf16; CPUs with AVX512-BF16 or AMX),
    fp16 on CUDA without bf16, else fp32. An explicit bf16 on a CPU without native support warns once."""
    if spec not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {spec!r}")
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bf16 (V100, T4) is not native
        if spec == "auto":
            return "bf16" if native else "fp16"
        return spec
    native = cpu_has_native_bf16()
    if spec == "auto":
        return "bf16" if native else "fp32"
    if spec == "bf16" and not native and "bf16" not in _warned:
        _warned.add("bf16")
        warnings.warn(
            f"precision bf16 on a CPU without native bf16 ({cpu_capability()}, no AVX512-BF16/AMX): "
            "torch emulates it, ~30x slower than fp32 (measured: 206 s vs 6 s per SmolLM2-135M "
            "training step). Use precision=auto or fp32.",
            stacklevel=2,
        )
    return spec


def dtype_of(precision: str) -> torch.dtype | None:
    """Compute dtype of a concrete precision (None = plain fp32)."""
    if precision not in DTYPES:
        raise ValueError(f"resolve precision {precision!r} first (resolve_precision)")
    return DTYPES[precision]


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup quota (v2 `cpu.max`, v1 `cfs_quota_us/cfs_period_us`), or None."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def set_threads(num_threads: int | None, processes: int = 1) -> int:
    """Set torch's intra-op threads (None: the available cores, shared by `processes` processes of this machine);
    returns the number set."""
    n = num_threads or max(1, available_cores() // processes)
    torch.set_num_threads(n)
    return n
