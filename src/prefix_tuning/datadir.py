"""Where the data is: an explicit folder, else $PREFIX_TUNING_DATA, else the user cache; the official E2E
zip downloaded (sha256-checked, written atomically) when it is missing and the machine is online; and the
one error every reader raises, `DataError` (`<file>:<line>: what was wrong; expected what`)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "PREFIX_TUNING_DATA"
E2E_URL = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
"""The official release zip (GitHub release v1.0.0 of tuetschek/e2e-dataset)."""
E2E_SHA256 = "1261064c01907af27e8cc39e0a29a81541f6ab69208c1cbfc1be95afbb49dfac"
ZIP_NAME = "e2e-dataset.zip"


class DataError(ValueError):
    """Bad or missing data. The message reads `<file>:<line>: <what was wrong>; expected <what>`."""


def cache_root() -> Path:
    """This package's user cache (data here, dequantised models in `models`): $PREFIX_TUNING_CACHE, else
    $XDG_CACHE_HOME/prefix-tuning (an absolute path only, as the XDG spec says), else ~/.cache/prefix-tuning."""
    if os.environ.get("PREFIX_TUNING_CACHE"):
        return Path(os.environ["PREFIX_TUNING_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "prefix-tuning"


def data_cache_dir() -> Path:
    return cache_root() / "data"


def official_source(d: Path) -> Path | None:
    """Where the official CSVs are under data dir `d`: the release zip, or a folder holding trainset.csv."""
    for z in (d / "e2e" / ZIP_NAME, d / ZIP_NAME):
        if z.is_file():
            return z
    for f in (d / "e2e", d / "e2e" / "e2e-dataset", d, d / "e2e-dataset"):
        if (f / "trainset.csv").is_file() or (f / "testset_w_refs.csv").is_file():
            return f
    return None


def options_text(chosen: Path | None = None) -> str:
    return (
        f"pass the data folder explicitly (data_dir / data.dir), set ${ENV_VAR} to it, or put the data in "
        f"the user cache dir {data_cache_dir()}"
        + (f" (looked in {chosen})" if chosen else "")
        + f"; the official zip is {E2E_URL} (sha256 {E2E_SHA256}), expected at <data dir>/e2e/{ZIP_NAME}"
    )


def pick_dir(path: str | os.PathLike | None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return data_cache_dir()


def resolve_data_dir(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The data folder: `path` if given, else $PREFIX_TUNING_DATA, else the user cache dir
    (`cache_root()`/data, by default ~/.cache/prefix-tuning/data). The chosen folder must hold `e2e/e2e-dataset.zip`
    (or the E2E CSVs, see `load_e2e`). If it does not and `download` is true, the official release zip is
    downloaded to `<dir>/e2e/e2e-dataset.zip`, its sha256 checked, and written atomically. Failure (offline,
    bad checksum, unwritable folder) or download=False raises DataError naming all three options and the URL.
    """
    d = pick_dir(path)
    if official_source(d) is not None:
        return d
    if not download:
        raise DataError(
            f"{d}: no E2E data found; expected {d / 'e2e' / ZIP_NAME} or a folder of the E2E CSVs. " + options_text(d)
        )
    dest = d / "e2e" / ZIP_NAME
    try:
        download_e2e(dest)
    except DataError as err:
        raise DataError(f"{err}. " + options_text(d)) from err
    return d


def download_e2e(dest: Path, url: str | None = None, sha256: str | None = None) -> Path:
    """Download `url` (default E2E_URL) to `dest` atomically (temp file in the same folder, then rename) after
    checking its sha256 (default E2E_SHA256)."""
    url, sha256 = url or E2E_URL, sha256 or E2E_SHA256
    log.info("downloading the E2E dataset from %s to %s", url, dest)
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with (
            urllib.request.urlopen(url, timeout=60) as resp,
            tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".download-", delete=False) as f,
        ):
            tmp = Path(f.name)
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != sha256:
            raise DataError(f"{url}: sha256 mismatch (got {h.hexdigest()}); expected {sha256}")
        os.replace(tmp, dest)
        tmp = None
    except DataError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DataError(f"{url}: download failed ({err}); expected a reachable official E2E release") from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return dest
