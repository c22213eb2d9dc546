"""Locate the MovieLens 100k raw files (GroupLens layout), downloading them once if needed.

Resolution order of :func:`resolve_data_dir`:

1. an explicit ``data_dir`` (the ``--data-dir`` flag), else the ``TWOSTAGE_DATA_DIR`` environment
   variable. The named directory must hold ``u.data``, ``u.item`` and ``u.user`` itself or in an
   ``ml-100k/`` subdirectory; otherwise :class:`DataNotFoundError` names the directory and the
   missing files. A directory the user named is never written to and never silently skipped.
2. the cache, ``<cache>/ml-100k/`` where ``<cache>`` is ``cache_dir``, else ``$TWOSTAGE_CACHE``,
   else ``~/.cache/twostage``.
3. with ``download=True``: the official GroupLens zip is streamed into a temporary file inside the
   cache, its size and SHA-256 are checked, it is unpacked into a temporary directory inside the
   cache, and the verified ``ml-100k/`` folder is moved into place with one atomic ``os.replace``.
   Whatever goes wrong (no network, truncated or corrupt download, bad zip, Ctrl-C) nothing is left
   behind in the cache, so the next run starts clean.

Only the standard library is used (``urllib.request`` for HTTP); ``tqdm`` draws a progress bar
when it is installed.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

__all__ = [
    "OFFICIAL_URL", "OFFICIAL_SHA256", "OFFICIAL_SIZE", "REQUIRED_FILES", "DATA_DIR_ENV",
    "CACHE_ENV", "DataNotFoundError", "ChecksumError", "default_cache_dir", "resolve_data_dir",
]

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
OFFICIAL_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
OFFICIAL_SIZE = 4_924_029
REQUIRED_FILES = ("u.data", "u.item", "u.user")

DATA_DIR_ENV = "TWOSTAGE_DATA_DIR"
CACHE_ENV = "TWOSTAGE_CACHE"
SUBDIR = "ml-100k"

_CHUNK = 1 << 16
_TMP_PREFIX = ".ml-100k-"
_USER_AGENT = "twostage-movielens-download/0.1 (+python urllib)"

log = logging.getLogger(__name__)


def _local_copy_hint() -> str:
    return (
        f"To use a local copy, download {OFFICIAL_URL} by hand, unzip it, and pass "
        f"--data-dir /path/to/ml-100k or set {DATA_DIR_ENV}=/path/to/ml-100k "
        f"(the directory holding {', '.join(REQUIRED_FILES)})."
    )


class DataNotFoundError(RuntimeError):
    """The MovieLens files could not be found or fetched.

    The message always ends with how to point the program at a local copy
    (``--data-dir`` / ``TWOSTAGE_DATA_DIR``).
    """

    def __init__(self, message: str):
        if _local_copy_hint() not in message:
            message = f"{message.rstrip()} {_local_copy_hint()}"
        super().__init__(message)


class ChecksumError(DataNotFoundError):
    """The downloaded archive does not have the expected size or SHA-256."""


def default_cache_dir() -> Path:
    """``$TWOSTAGE_CACHE`` if set (and non-empty), else ``~/.cache/twostage``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "twostage"


def _missing(directory: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (directory / name).is_file()]


def _locate_user_dir(path: Path, source: str) -> Path:
    """Return the directory holding REQUIRED_FILES: ``path`` itself or ``path/ml-100k``."""
    path = path.expanduser()
    if not path.exists():
        raise DataNotFoundError(f"{source} points at {path}, which does not exist.")
    if not path.is_dir():
        raise DataNotFoundError(
            f"{source} points at {path}, which is not a directory "
            f"(it must be the unzipped ml-100k folder, not the zip)."
        )
    missing = _missing(path)
    if not missing:
        return path.resolve()
    sub = path / SUBDIR
    if sub.is_dir():
        sub_missing = _missing(sub)
        if not sub_missing:
            return sub.resolve()
        raise DataNotFoundError(
            f"{source} points at {path}, but neither it nor {sub} holds all MovieLens 100k files: "
            f"{sub} is missing {', '.join(sub_missing)}."
        )
    raise DataNotFoundError(
        f"{source} points at {path}, which is missing {', '.join(missing)} "
        f"(and has no {SUBDIR}/ subdirectory)."
    )


def resolve_data_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    url: str = OFFICIAL_URL,
    sha256: str | None = OFFICIAL_SHA256,
    size: int | None = OFFICIAL_SIZE,
    download: bool = True,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Return the directory holding the MovieLens 100k raw files (see the module docstring).

    ``sha256=None`` / ``size=None`` skip the respective check (for a trusted mirror of unknown
    contents); the defaults are those of the official GroupLens archive.
    """
    if data_dir is not None and str(data_dir) != "":
        return _locate_user_dir(Path(data_dir), f"--data-dir {data_dir}")
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return _locate_user_dir(Path(env), f"{DATA_DIR_ENV}={env}")

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / SUBDIR
    if target.is_dir() and not _missing(target):
        return target.resolve()
    if not download:
        raise DataNotFoundError(
            f"MovieLens 100k is not in the cache ({target}) and downloading is disabled."
        )
    _download_into_cache(cache, url=url, sha256=sha256, size=size, progress=progress,
                         timeout=timeout)
    return target.resolve()


# --------------------------------------------------------------------------- download machinery


def _download_into_cache(cache: Path, *, url: str, sha256: str | None, size: int | None,
                         progress: bool, timeout: float) -> None:
    target = cache / SUBDIR
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataNotFoundError(
            f"cannot create the download cache {cache} ({exc}); set {CACHE_ENV} to a writable "
            f"directory."
        ) from exc

    tmp_zip: Path | None = None
    tmp_dir: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".zip.part", dir=cache)
        tmp_zip = Path(name)
        log.info("downloading MovieLens 100k from %s into %s", url, cache)
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, sha256=sha256, size=size, progress=progress, timeout=timeout)

        tmp_dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=cache))
        _extract(tmp_zip, tmp_dir, url)
        tmp_zip.unlink()
        tmp_zip = None

        unpacked = tmp_dir / SUBDIR
        missing = _missing(unpacked) if unpacked.is_dir() else list(REQUIRED_FILES)
        if missing:
            raise DataNotFoundError(
                f"the archive from {url} has no complete {SUBDIR}/ folder "
                f"(missing {', '.join(SUBDIR + '/' + m for m in missing)})."
            )
        _install(unpacked, target)
    finally:
        # Runs on success, on any error and on KeyboardInterrupt alike.
        if tmp_zip is not None:
            try:
                tmp_zip.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # pragma: no cover - e.g. a Windows file lock
                log.warning("could not remove temporary file %s", tmp_zip)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _install(unpacked: Path, target: Path) -> None:
    """Atomically move the verified ``unpacked`` folder to ``target``."""
    try:
        os.replace(unpacked, target)
        return
    except OSError:
        if target.is_dir() and not _missing(target):
            return  # a concurrent run won the race; its copy is as good as ours
        if target.is_symlink() or not target.is_dir():
            if not os.path.lexists(target):
                raise
            raise DataNotFoundError(
                f"{target} exists but is not a MovieLens 100k folder; remove it and retry."
            ) from None
    # A stale, incomplete ml-100k/ (e.g. from a hand copy gone wrong): move it aside, then retry.
    trash = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, suffix=".stale", dir=target.parent))
    try:
        try:
            os.replace(target, trash / SUBDIR)
        except FileNotFoundError:
            pass  # someone else removed it meanwhile
        try:
            os.replace(unpacked, target)
        except OSError:
            if not (target.is_dir() and not _missing(target)):
                raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _network_error(url: str, exc: BaseException) -> DataNotFoundError:
    if isinstance(exc, urllib.error.HTTPError):
        why = f"the server answered HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        why = f"{exc.reason}"
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        why = "the connection timed out"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return DataNotFoundError(
        f"could not download MovieLens 100k from {url} ({why}). "
        f"No network access, or the server is unreachable?"
    )


def _make_bar(progress: bool, total: int | None):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc="ml-100k.zip", leave=False)


def _fetch(url: str, out, *, sha256: str | None, size: int | None, progress: bool,
           timeout: float) -> None:
    """Stream ``url`` into the open binary file ``out``, verifying length, size and SHA-256."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    received = 0
    declared: int | None = None
    bar = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit():
                declared = int(length)
            bar = _make_bar(progress, declared if declared is not None else size)
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if size is not None and received > size:
                    raise ChecksumError(
                        f"the download from {url} is larger than expected: expected {size} bytes, "
                        f"got more than that. The file on the server is not the expected "
                        f"MovieLens 100k archive; use the official URL or a local copy."
                    )
    except DataNotFoundError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError/HTTPError, timeouts, refused/reset connections, IncompleteRead, bad URLs.
        raise _network_error(url, exc) from exc
    finally:
        if bar is not None:
            bar.close()

    if declared is not None and received != declared:
        raise DataNotFoundError(
            f"the download from {url} was cut off: the server announced {declared} bytes but "
            f"sent {received}. Retry, or use a local copy."
        )
    if size is not None and received != size:
        raise ChecksumError(
            f"the download from {url} has the wrong size: expected {size} bytes, got {received}. "
            f"The download is truncated or not the MovieLens 100k archive; retry, or use a local copy."
        )
    got = digest.hexdigest()
    if sha256 is not None and got.lower() != sha256.strip().lower():
        raise ChecksumError(
            f"the download from {url} has the wrong SHA-256: expected {sha256}, got {got}. "
            f"The file is corrupt or not the MovieLens 100k archive; retry, or use a local copy."
        )


def _extract(zip_path: Path, dest: Path, url: str) -> None:
    """Unpack the ``ml-100k/`` members of ``zip_path`` into ``dest`` (CRC-checked)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                if not parts or parts[0] != SUBDIR:
                    continue  # e.g. __MACOSX/ noise; only ml-100k/ is ever used
                if any(p in ("", ".", "..") for p in parts) or ":" in info.filename:
                    raise zipfile.BadZipFile(f"unsafe member name {info.filename!r}")
                zf.extract(info, dest)  # reading verifies each member's CRC-32
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise DataNotFoundError(
            f"the archive downloaded from {url} is not a valid zip file ({exc})."
        ) from exc
