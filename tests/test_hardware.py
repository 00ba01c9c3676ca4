"""`precision: auto`, the bf16 warning, the thread count, and where the resolved precision is recorded.

The capability probes (torch's CPU kernel level, AVX512-BF16, AMX, CUDA bf16) are monkeypatched, so every
hardware case is tested on any machine; nothing here computes in bf16 (an AVX2-only CI CPU emulates it).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from prefix_tuning import hardware
from prefix_tuning.dist import launcher_precision
from prefix_tuning.hardware import (
    available_cores,
    describe_cpu,
    dtype_of,
    resolve_precision,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """Each test starts with no bf16 warning given, no oneDNN ISA cap, and gets torch's thread count back."""
    monkeypatch.setattr(hardware, "_warned", set())
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def fake_cpu(monkeypatch, capability: str, avx512_bf16: bool = False, amx: bool = False) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


# ------------------------------------------------------------------------------------------ auto on CPUs


@pytest.mark.parametrize(
    "capability,avx512_bf16,amx,isa,want",
    [
        ("AVX512", True, False, None, "bf16"),  # AVX512-BF16 (Cooper Lake, Zen 4)
        ("AVX512", False, True, None, "bf16"),  # AMX (Sapphire Rapids)
        ("AVX512", True, True, None, "bf16"),
        ("AVX512", False, False, None, "fp32"),  # AVX512 without bf16 (Skylake-X): emulated
        ("AVX2", False, False, None, "fp32"),  # AVX2-only laptops, CI runners
        ("AVX2", True, True, None, "fp32"),  # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: AVX512 kernels off, emulated
        ("DEFAULT", False, False, None, "fp32"),
        ("AVX512", True, False, "AVX2", "fp32"),  # oneDNN capped below bf16
        ("AVX512", True, False, "avx512_core", "fp32"),
        ("AVX512", True, False, "AVX512_CORE_BF16", "bf16"),
        ("AVX512", False, True, "avx512_core_amx", "bf16"),
        ("AVX512", True, False, "ALL", "bf16"),
    ],
)
def test_auto_on_cpu(monkeypatch, capability, avx512_bf16, amx, isa, want):
    fake_cpu(monkeypatch, capability, avx512_bf16, amx)
    if isa is not None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert hardware.cpu_has_native_bf16() is (want == "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert resolve_precision("auto", CPU) == want
    line = describe_cpu()
    assert line.startswith(f"CPU capability {capability}, {'native' if want == 'bf16' else 'no native'} bf16")


@pytest.mark.parametrize("cuda_bf16,cpu_native,want", [(True, False, "bf16"), (False, True, "fp16")])
def test_auto_on_cuda_ignores_the_cpu(monkeypatch, cuda_bf16, cpu_native, want):
    fake_cpu(monkeypatch, "AVX512" if cpu_native else "AVX2", avx512_bf16=cpu_native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    assert resolve_precision("auto", CUDA) == want
    assert resolve_precision("auto", torch.device("cuda", 1)) == want


def test_auto_on_cuda_with_emulated_bf16_is_fp16(monkeypatch):
    fake_cpu(monkeypatch, "AVX2")
    # torch's own logic for a compute-capability-7.x GPU: bf16 only "supported" when emulation counts
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", CUDA) == "fp16"


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("spec", ["fp32", "fp16", "bf16"])
def test_explicit_precision_kept(monkeypatch, spec, native):
    fake_cpu(monkeypatch, "AVX512" if native else "AVX2", avx512_bf16=native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resolve_precision(spec, CPU) == spec
        assert resolve_precision(spec, CUDA) == spec


def test_bad_precision_and_dtypes():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bfloat16", CPU)
    with pytest.raises(ValueError, match="resolve"):
        dtype_of("auto")
    assert (dtype_of("fp32"), dtype_of("bf16"), dtype_of("fp16")) == (None, torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------------------------ the bf16 warning


def test_explicit_bf16_on_emulating_cpu_warns_once(monkeypatch):
    fake_cpu(monkeypatch, "AVX2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a repeat would show even if Python's own once-filter hid it
        assert resolve_precision("bf16", CPU) == "bf16"
        assert resolve_precision("bf16", CPU) == "bf16"
        resolve_precision("auto", CPU)
    assert len(caught) == 1 and issubclass(caught[0].category, UserWarning)
    msg = str(caught[0].message)
    assert "AVX2" in msg and "emulates" in msg and "precision=auto or fp32" in msg


@pytest.mark.parametrize("capability,bf16,device", [("AVX512", True, CPU), ("AVX2", False, CUDA)])
def test_no_warning_where_bf16_is_native(monkeypatch, capability, bf16, device):
    fake_cpu(monkeypatch, capability, avx512_bf16=bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", device) == "bf16"


# ------------------------------------------------------------------------------------------ cores


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """A fake /sys/fs/cgroup: `hardware.Path` is redirected into tmp_path; returns a writer of its files."""
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(hardware, "Path", lambda p: root / Path(p).relative_to("/sys/fs/cgroup"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)

    def write(rel: str, text: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)

    return write


@pytest.mark.parametrize(
    "files,want",
    [
        ({}, 6),  # no quota: the affinity mask
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2: 2 CPUs
        ({"cpu.max": "250000 100000\n"}, 2),  # 2.5 CPUs: floor
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: at least 1
        ({"cpu.max": "max 100000\n"}, 6),  # no limit
        ({"cpu.max": "1600000 100000\n"}, 6),  # quota above the affinity mask
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 6),  # v1, no limit
        ({"cpu.max": "garbage", "cpu/cpu.cfs_quota_us": "400000", "cpu/cpu.cfs_period_us": "100000"}, 4),
    ],
)
def test_available_cores(cgroup, files, want):
    for rel, text in files.items():
        cgroup(rel, text)
    assert available_cores() == want
    assert hardware.set_threads(None) == want == torch.get_num_threads()
    assert hardware.set_threads(1) == 1 == torch.get_num_threads()


def test_available_cores_without_affinity(cgroup, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert available_cores() == 3
    cgroup("cpu.max", "100000 100000")
    assert available_cores() == 1


# ------------------------------------------------------------------------------------------ where it is recorded


def test_training_records_resolved_precision(tmp_path, monkeypatch, data_dir):
    """precision auto on an AVX2-only CPU: fp32 in config.yaml, log.jsonl's start line and the TrainResult;
    the default thread count comes from available_cores()."""
    from prefix_tuning.configfile import load_config
    from prefix_tuning.train import train

    fake_cpu(monkeypatch, "AVX2")
    monkeypatch.setattr(hardware, "available_cores", lambda: 1)
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            "model.name=tiny-gpt2",
            "data.train_size=8",
            "data.dev_size=2",
            "data.max_length=48",
            "method.mlp_hidden=8",
            "train.batch_size=4",
            "train.max_steps=1",
            f"out_dir={out}",
        ],
    )
    assert cfg.train.precision == "auto" and cfg.train.num_threads is None  # the defaults are what is tested
    res = train(cfg)
    assert res.precision == "fp32" and res.threads == 1 == torch.get_num_threads()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["precision"] == "fp32"
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["precision"] == "fp32" and start["threads"] == 1
    assert start["device"] == "cpu" and start["cpu"].startswith("CPU capability AVX2, no native bf16")


# ------------------------------------------------------------------------------------------ tables


def _run(name: str, train: str, decode: str | None = None, *, recorded: bool = True) -> dict:
    cfg = {
        "model": {"name": "tiny-gpt2"},
        "data": {"train_size": 16},
        "method": {"init": "random"},
        "train": {"lr": 1e-3, "batch_size": 4, "max_steps": 6, "epochs": 5, "precision": train},
        "decode": {"beam_size": 2, "max_new_tokens": 12, "precision": decode or train},
    }
    run = {
        "name": name,
        "prefix_length": 5,
        "metrics": {"BLEU": 0.5},
        "metrics_signature": "sig",
        "test_mrs": 8,
        "best_dev_loss": 1.0,
        "stored_params": 10,
        "checkpoint_bytes": 1000,
        "seconds_per_epoch": 1.0,
        "train_seconds": 6.0,
        "steps": 6,
        "cpu": "CPU capability AVX2",
        "config": cfg,
    }
    if recorded:  # results written before `auto` existed have the precision only in their config
        run["precision"] = {"train": train, "decode": decode or train}
    return run


def _precision_cells(table: str) -> dict[str, str]:
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| r") and not line.startswith("| run ")]
    return {cells[1].strip(): cells[-2].strip() for cells in rows}


def test_table_flags_mixed_precisions():
    from prefix_tuning.report import make_table

    table = make_table(
        {
            "experiment": "ablation",
            "runs": [_run("r1", "bf16"), _run("r2", "fp32"), _run("r3", "fp32", "bf16", recorded=False)],
        }
    )
    assert "**Mixed precisions** (train/decode): bf16, fp32, fp32/bf16;" in table
    assert _precision_cells(table) == {"r1": "bf16", "r2": "fp32", "r3": "fp32/bf16"}


def test_table_does_not_flag_one_precision():
    from prefix_tuning.report import make_table

    table = make_table({"experiment": "ablation", "runs": [_run("r1", "fp32"), _run("r2", "fp32", recorded=False)]})
    assert "Mixed precisions" not in table and "precision fp32," in table
    assert _precision_cells(table) == {"r1": "fp32", "r2": "fp32"}


@pytest.mark.parametrize(
    "flag,configured,expected",
    [
        (None, "auto", "auto"),  # not launched by accelerate
        ("no", "fp32", "fp32"),  # accelerate's default on every launch: the config decides
        ("no", "auto", "auto"),
        ("bf16", "auto", "bf16"),  # --mixed_precision fills in auto
        ("fp16", "fp16", "fp16"),
    ],
)
def test_accelerate_mixed_precision_flag(monkeypatch, flag, configured, expected):
    if flag is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", flag)
    assert launcher_precision(configured) == expected


@pytest.mark.parametrize("flag,configured", [("bf16", "fp32"), ("fp16", "bf16"), ("fp8", "auto")])
def test_accelerate_mixed_precision_flag_conflicts_fail_loudly(monkeypatch, flag, configured):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", flag)
    with pytest.raises(ValueError, match=f"--mixed_precision {flag}"):
        launcher_precision(configured)
