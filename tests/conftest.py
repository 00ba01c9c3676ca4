"""Shared fixtures. Data comes from ../shared/data beside the repo (CI has it) or $PREFIX_TUNING_DATA."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PREFIX_TUNING_DATA") or REPO.parent / "shared" / "data")
os.environ.setdefault("PREFIX_TUNING_DATA", str(DATA_DIR))
# Keep model caches of tests away from the user's cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "e2e" / "e2e-dataset.zip").is_file():
        pytest.fail(f"E2E data not found in {DATA_DIR}; set PREFIX_TUNING_DATA")
    return DATA_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is ~10x faster than two on a shared 2-core machine (no oversubscription)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=[pytest.param(1, id="fast"), pytest.param(20, id="slow", marks=pytest.mark.slow)])
def scale(request) -> int:
    """Property-test size multiplier: `slow` variants (`-m slow`) run 20x as many examples."""
    return request.param


@pytest.fixture
def no_network(monkeypatch):
    """No test that uses this may reach the network: any download attempt fails as if offline."""

    def offline(*a, **k):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
