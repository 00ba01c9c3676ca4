"""Atomic writes and resumable checkpoints that are data, never code.

Atomic: everything is written to a temporary file in the same folder, flushed to disk, then renamed over
the target with `os.replace`, which is atomic on POSIX and Windows; a kill while saving never leaves a
half-written file, and a full disk leaves the previous version in place.

Checkpoints are one safetensors file (no pickle: loading someone else's checkpoint cannot run code). Its
tensors are every tensor of the state (trainable weights, optimiser moments, RNG states), named by their
path in the state, e.g. `optimizer/state/0/exp_avg`. Its metadata holds
  format  "prefix-tuning-checkpoint", version "1",
  state   the rest of the state as JSON, each tensor replaced by {"__tensor__": name}, tuples and dicts
          with non-string keys tagged so that they come back as they were (an optimiser state dict has
          int keys; a Python `random` state is a tuple),
  sha256  of the state JSON and every tensor's name, dtype, shape and bytes, so a corrupted or edited
          file is refused instead of resuming from wrong numbers.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

FORMAT = "prefix-tuning-checkpoint"
VERSION = "1"
TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
RESTART = "delete it to start the run over (or re-run with --no-resume)"


class CorruptFileError(ValueError):
    """A saved file that must not be used: truncated, corrupted, edited, or not the format its name says."""


class DiskFullError(OSError):
    """A write failed for lack of space; the previous version of the file is untouched."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFullError(
                f"disk full: could not write {path} ({e.strerror}); the previous version of "
                f"the file, if any, is unchanged. Free space on that disk and re-run the same "
                f"command (training resumes from the last checkpoint)"
            ) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temps(*folders: Path) -> None:
    """Delete the temporary files of writes killed before their rename (a killed run may leave GBs)."""
    for folder in folders:
        for p in Path(folder).glob(".*.tmp"):
            if re.fullmatch(r"\..+\.\w{8}\.tmp", p.name):  # atomic_path's names: .<target>.<8 random chars>.tmp
                p.unlink(missing_ok=True)


def _split(obj: object, name: str, tensors: dict[str, Tensor]) -> object:
    """`obj` as JSON-able data, each tensor moved into `tensors` under its path `name`."""
    sub = lambda k: f"{name}/{k}" if name else str(k)
    if isinstance(obj, Tensor):
        if name in tensors:
            raise ValueError(f"checkpoint: two tensors named {name!r}")
        tensors[name] = obj.detach().cpu().contiguous()
        return {TENSOR: name}
    if isinstance(obj, tuple):
        return {TUPLE: [_split(v, sub(i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, sub(i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not {TENSOR, TUPLE, ITEMS} & obj.keys():
            return {k: _split(v, sub(k), tensors) for k, v in obj.items()}
        if not all(isinstance(k, (int, float, bool, str)) or k is None for k in obj):
            raise TypeError(f"checkpoint: {name or 'state'} has keys JSON cannot hold")
        return {ITEMS: [[k, _split(v, sub(k), tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} ({name or 'state'}) as data")


def _join(obj: object, tensors: dict[str, Tensor]) -> object:
    """Inverse of `_split`."""
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if TENSOR in obj:
        return tensors[obj[TENSOR]]
    if TUPLE in obj:
        return tuple(_join(v, tensors) for v in obj[TUPLE])
    if ITEMS in obj:
        return {k: _join(v, tensors) for k, v in obj[ITEMS]}
    return {k: _join(v, tensors) for k, v in obj.items()}


def _digest(state_json: str, tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256(state_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a (nested) state dict of tensors, numbers, strings, lists, tuples and dicts, atomically."""
    tensors: dict[str, Tensor] = {}
    state_json = json.dumps(_split(state, "", tensors))
    meta = {"format": FORMAT, "version": VERSION, "state": state_json, "sha256": _digest(state_json, tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def describe_unreadable(path: Path, err: Exception) -> str:
    """Why safetensors cannot read `path`, in words (its own errors are terse)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" or head == b"PK\x03\x04":
        return (
            "is a pickle (torch.save) file, not safetensors; it was not loaded, since unpickling a file "
            "can run arbitrary code"
        )
    if any(s in str(err) for s in ("not fully covered", "header too small", "invalid header length")):
        return f"is truncated ({size} bytes; {err})"
    return f"is corrupt ({err})"


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by `save_checkpoint` (tensors on the CPU). Never unpickles.

    Raises CorruptFileError naming the file, what is wrong and what to do, for any file that is not an
    intact checkpoint of this format."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CorruptFileError(f"{path} {describe_unreadable(path, e)}; {RESTART}") from None
    if meta.get("format") != FORMAT:
        raise CorruptFileError(
            f"{path} is a safetensors file but not a prefix-tuning checkpoint "
            f"(format {meta.get('format')!r}); {RESTART}"
        )
    if meta.get("version") != VERSION:
        raise CorruptFileError(
            f"{path} is checkpoint format version {meta.get('version')!r}, this "
            f"prefix-tuning reads version {VERSION}; {RESTART}"
        )
    if "state" not in meta or meta.get("sha256") != _digest(meta["state"], tensors):
        raise CorruptFileError(f"{path} fails its checksum: it was corrupted or edited after it was written; {RESTART}")
    try:
        return _join(json.loads(meta["state"]), tensors)
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(f"{path} holds a malformed state ({e!r}); {RESTART}") from None
