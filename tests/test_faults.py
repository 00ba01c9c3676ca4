"""Faults: kill -9 during training and its writes, a full disk while saving, damaged or foreign checkpoints.

The kill test is scripts/fault_test.py (3 kills here; 20 with -m slow). All runs are configs/tiny_prefix.yaml
cut to 8 steps, fp32, one thread, compared against one uninterrupted run.
"""

from __future__ import annotations

import errno
import importlib.util
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import safetensors.torch
import torch

from prefix_tuning import checkpoint
from prefix_tuning.checkpoint import CorruptFileError, load_checkpoint
from prefix_tuning.cli import main
from prefix_tuning.prefix import load_prefix

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fault_test", REPO / "scripts" / "fault_test.py")
fault_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fault_test)
CKPT = Path("checkpoints") / "last.safetensors"


@pytest.fixture(scope="module")
def ref(tmp_path_factory, data_dir) -> Path:
    """The uninterrupted run every faulted one must end equal to."""
    return fault_test.reference(tmp_path_factory.mktemp("faults") / "reference")


def test_kills_resume_to_the_uninterrupted_run(ref, tmp_path):
    res = fault_test.run(3, seed=0, work=tmp_path, ref=ref)
    assert res["kills"] == 3 and res["window_kills"] == 2


@pytest.mark.slow
def test_twenty_kills(ref, tmp_path):
    res = fault_test.run(20, seed=1, work=tmp_path, ref=ref)
    assert res["kills"] == 20 and res["window_kills"] == 10


@pytest.mark.parametrize("target", ["last.safetensors", "prefix.safetensors"])
def test_disk_full_while_saving(ref, tmp_path, monkeypatch, capsys, target):
    """The 2nd write of `target` hits a full disk: a clear error, the previous files still load, and re-running
    the command once space is back ends equal to the uninterrupted run (checked once: it costs a run)."""
    module = checkpoint if target == "last.safetensors" else safetensors.torch
    real, calls = module.save_file, Counter()

    def full(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"\0" * 100)  # the part that fitted
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(module, "save_file", full)
    assert main(fault_test.train_args(run_dir)) == 2
    err = capsys.readouterr().err
    path = run_dir / CKPT if target == "last.safetensors" else run_dir / target
    assert f"error: disk full: could not write {path}" in err and "re-run the same command" in err
    monkeypatch.undo()
    # checkpoints at steps 3, 6, 8 and prefix at 4, 8: the 2nd checkpoint or the 2nd prefix failed
    assert load_checkpoint(run_dir / CKPT)["step"] == (3 if target == "last.safetensors" else 6)
    load_prefix(run_dir / "prefix.safetensors")
    assert not list(run_dir.rglob(".*.tmp"))
    if target == "last.safetensors":
        assert main(fault_test.train_args(run_dir)) == 0
        fault_test.same_as_reference(run_dir, ref)


class _Payload:
    """A pickle that creates a file when unpickled: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _damage(kind: str, good: bytes, ref: Path, tmp_path: Path) -> bytes:
    marker = tmp_path / "pwned"
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    if kind == "pickle":
        return pickle.dumps({"step": 8, "x": _Payload(marker)})
    if kind == "torch.save":
        torch.save({"step": 8, "x": _Payload(marker)}, tmp_path / "old.pt")
        return (tmp_path / "old.pt").read_bytes()
    if kind == "edited state":  # same length, still valid JSON: only the checksum can tell
        return re.sub(rb'\\"step\\": 8', rb'\\"step\\": 9', good, count=1)
    if kind == "flipped tensor byte":
        return good[:-1] + bytes([good[-1] ^ 1])
    if kind == "bad header":
        return good[:8] + b"#" + good[9:]
    if kind == "not a checkpoint":
        return (ref / "prefix.safetensors").read_bytes()
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind,says",
    [
        ("truncated", "is truncated"),
        ("empty", "is truncated"),
        ("pickle", "is a pickle"),
        ("torch.save", "is a pickle"),
        ("edited state", "fails its checksum"),
        ("flipped tensor byte", "fails its checksum"),
        ("bad header", "is corrupt"),
        ("not a checkpoint", "not a prefix-tuning checkpoint"),
    ],
)
def test_damaged_checkpoint_refused(ref, tmp_path, monkeypatch, kind, says):
    """Refused with the file, what is wrong and what to do; nothing is ever unpickled."""

    def no_unpickling(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    good = (ref / CKPT).read_bytes()
    bad = _damage(kind, good, ref, tmp_path)
    assert bad != good
    path = tmp_path / "last.safetensors"
    path.write_bytes(bad)
    with pytest.raises(CorruptFileError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and says in msg and "delete it" in msg and "--no-resume" in msg
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(good)  # the control: the same file undamaged loads, under the same no-pickle patches
    assert load_checkpoint(path)["step"] == 8


def test_truncated_prefix_refused(ref, tmp_path):
    path = tmp_path / "prefix.safetensors"
    path.write_bytes((ref / "prefix.safetensors").read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=r"prefix\.safetensors is truncated .*--no-resume"):
        load_prefix(path)


@pytest.mark.parametrize("kind", ["truncated", "legacy"])
def test_train_refuses_bad_checkpoint(ref, tmp_path, capsys, kind):
    """`train` on a run dir whose checkpoint is damaged, or an old pickle `last.pt`, stops with one clear line."""
    run_dir = tmp_path / "run"
    shutil.copytree(ref, run_dir)
    path = run_dir / CKPT
    if kind == "legacy":
        path.rename(path.with_name("last.pt"))
        path = path.with_name("last.pt")
    else:
        path.write_bytes(path.read_bytes()[:1000])
    assert main(fault_test.train_args(run_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {path} ") and "--no-resume" in err
    assert ("pickle" if kind == "legacy" else "truncated") in err
