"""Where the E2E data comes from (prefix_tuning.datadir): precedence of explicit path, $PREFIX_TUNING_DATA and the
cache; the offline error; the checked download; `prefix_tuning.data`'s re-exports. No test reaches the network."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path

import pytest

from prefix_tuning import data, datadir, e2e
from prefix_tuning.data import DataError, load_e2e, resolve_data_dir

pytestmark = pytest.mark.usefixtures("no_network")


def fake_data_dir(p: Path) -> Path:
    (p / "e2e").mkdir(parents=True)
    (p / "e2e" / "e2e-dataset.zip").write_bytes(b"")
    return p


def test_resolve_precedence(tmp_path, monkeypatch):
    explicit, env, xdg = fake_data_dir(tmp_path / "x"), fake_data_dir(tmp_path / "env"), tmp_path / "xdg"
    monkeypatch.delenv("PREFIX_TUNING_CACHE", raising=False)
    fake_data_dir(xdg / "prefix-tuning" / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("PREFIX_TUNING_DATA", str(env))
    assert resolve_data_dir(explicit) == explicit
    assert resolve_data_dir() == env
    monkeypatch.delenv("PREFIX_TUNING_DATA")
    assert resolve_data_dir() == xdg / "prefix-tuning" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datadir.data_cache_dir() == tmp_path / "home" / ".cache" / "prefix-tuning" / "data"
    monkeypatch.setenv("PREFIX_TUNING_CACHE", str(tmp_path / "cache"))  # one cache root, models' and data's
    assert datadir.data_cache_dir() == tmp_path / "cache" / "data"


def test_offline_error_names_all_options(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFIX_TUNING_DATA", raising=False)
    monkeypatch.delenv("PREFIX_TUNING_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError) as err:
        load_e2e("test")  # nothing anywhere: tries to download, the network is off
    msg = str(err.value)
    for needle in (
        "download failed",
        "PREFIX_TUNING_DATA",
        "data_dir",
        str(tmp_path / "cache" / "prefix-tuning"),
        e2e.E2E_URL,
        e2e.E2E_SHA256,
    ):
        assert needle in msg, (needle, msg)
    assert not list((tmp_path / "cache").rglob("*.zip")) and not list((tmp_path / "cache").rglob(".download-*"))
    with pytest.raises(DataError, match="no E2E data found.*PREFIX_TUNING_DATA"):
        resolve_data_dir(tmp_path / "empty", download=False)


class FakeResponse(io.BytesIO):
    pass


def test_download_checks_sha256(tmp_path, monkeypatch):
    payload = b"PK-not-really-a-zip"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(payload))
    with pytest.raises(DataError, match="sha256 mismatch"):
        resolve_data_dir(tmp_path / "d")
    assert not any(p.is_file() for p in (tmp_path / "d").rglob("*"))  # nothing half-written is left
    # a matching checksum is accepted and written to <dir>/e2e/e2e-dataset.zip
    monkeypatch.setattr(datadir, "E2E_SHA256", hashlib.sha256(payload).hexdigest())
    assert resolve_data_dir(tmp_path / "d") == tmp_path / "d"
    assert (tmp_path / "d" / "e2e" / "e2e-dataset.zip").read_bytes() == payload
    assert [p.name for p in (tmp_path / "d" / "e2e").iterdir()] == ["e2e-dataset.zip"]


def test_reexports_are_the_e2e_objects():
    """`prefix_tuning.data` re-exports e2e's public API (`e2e.__all__`; the README, decode and the benchmarks import
    the readers from `data`). They must be e2e's very objects, not copies or wrappers: the CLI catches
    `e2e.DataError` around training and decoding, which load through `data`, and a monkeypatched reader must be
    the one both modules use."""
    missing = [name for name in e2e.__all__ if not hasattr(data, name)]
    assert not missing, f"prefix_tuning.data does not re-export {missing}"
    copies = [name for name in e2e.__all__ if getattr(data, name) is not getattr(e2e, name)]
    assert not copies, f"prefix_tuning.data.{copies} are not the objects of prefix_tuning.e2e"
    assert issubclass(data.DataError, ValueError)  # `prefix-tuning generate` catches ValueError
