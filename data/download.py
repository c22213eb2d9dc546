"""Locate the raw files of a MovieLens release, downloading them once if needed.

Every release TFDS knows works the same way (``dataset``: 100k, 1m, 20m, 25m, latest-small; URL,
checksum, folder and file names come from :mod:`data.registry`). For ml-100k, the default:

1. an explicit ``data_dir`` (the ``--data-dir`` flag), else the ``TWOSTAGE_DATA_DIR`` environment
   variable. The named directory must hold ``u.data``, ``u.item`` and ``u.user`` itself or in an
   ``ml-100k/`` subdirectory; otherwise :class:`DataNotFoundError` names the directory and the
   missing files (or says what they are instead: a directory, a dangling link, a link loop), and
   a folder holding another release's files is named as such. A directory the user named is
   never written to and never silently skipped.
2. the cache, ``<cache>/ml-100k/`` where ``<cache>`` is ``cache_dir``, else ``$TWOSTAGE_CACHE``,
   else ``~/.cache/twostage``. Its files are checked against the size and SHA-256 recorded in
   ``ml-100k/.twostage-checksums.json`` when it was unpacked (milliseconds for ml-100k), so a
   cached file that was cut short or changed is never trained on (every file's size; the SHA-256
   of the files the reader reads and of every file under 64 MiB, so that the 400 MB genome
   scores of ml-25m, which nothing reads, are not hashed on every run). A damaged copy is moved aside and
   deleted and a fresh one downloaded, with a logged warning naming the damage; with
   ``download=False`` :class:`CacheDamagedError` says what is damaged and to delete the folder. A
   cached folder without the manifest (unpacked by an older version, or copied there by hand) has
   nothing to check against: it is used as is, with a warning logged once per process.
3. with ``download=True``: the official GroupLens zip is streamed into a temporary file inside the
   cache, its size and SHA-256 are checked, it is unpacked into a temporary directory inside the
   cache, the checksum manifest of the unpacked files is written into it, and the verified
   ``ml-100k/`` folder is moved into place with one atomic ``os.replace``.
   Whatever goes wrong (no network, truncated or corrupt download, bad zip, an entry that would
   unpack outside the folder or is a symbolic link, Ctrl-C) nothing is left behind in the cache,
   so the next run starts clean.

Other releases: the same, with their folder name (``ml-1m``, ``ml-25m``, ...) in place of
``ml-100k`` for the subdirectory and the cache folder, and their own files.

Only the standard library is used (``urllib.request`` for HTTP); ``tqdm`` draws a progress bar
when it is installed.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .. import io
from .registry import VARIANTS, Variant, layout_of_files, variant

__all__ = [
    "OFFICIAL_URL", "OFFICIAL_SHA256", "OFFICIAL_SIZE", "REQUIRED_FILES", "DATA_DIR_ENV",
    "CACHE_ENV", "MANIFEST", "DataNotFoundError", "ChecksumError", "CacheDamagedError",
    "default_cache_dir", "file_problem", "resolve_data_dir", "data_source_dir",
]

_ML_100K = VARIANTS["100k"]
OFFICIAL_URL = _ML_100K.url
OFFICIAL_SHA256 = _ML_100K.sha256
OFFICIAL_SIZE = _ML_100K.size
REQUIRED_FILES = _ML_100K.files

DATA_DIR_ENV = "TWOSTAGE_DATA_DIR"
CACHE_ENV = "TWOSTAGE_CACHE"
SUBDIR = _ML_100K.folder
MANIFEST = ".twostage-checksums.json"  # inside the cached ml-100k/: size and SHA-256 per file
_HASH_ALWAYS_BELOW = 64 << 20  # bytes: smaller cached files are hashed even if not read

_CHUNK = 1 << 16
_KEEP = object()  # resolve_data_dir's default for sha256/size: the variant's official value


def _tmp_prefix(v: Variant) -> str:
    """Temporaries carry the writer's pid, so a later run removes those of dead processes only."""
    return f".{v.folder}-{os.getpid()}-"


_TMP_PREFIX = _tmp_prefix(_ML_100K)
_USER_AGENT = "twostage-movielens-download/0.1 (+python urllib)"

log = logging.getLogger(__name__)


def _local_copy_hint(v: Variant = _ML_100K) -> str:
    return (
        f"To use a local copy, download {v.url} by hand, unzip it, and pass "
        f"--data-dir /path/to/{v.folder} or set {DATA_DIR_ENV}=/path/to/{v.folder} "
        f"(the directory holding {', '.join(v.files)})."
    )


class DataNotFoundError(RuntimeError):
    """The MovieLens files could not be found or fetched.

    The message always ends with how to point the program at a local copy
    (``--data-dir`` / ``TWOSTAGE_DATA_DIR``) of ``dataset`` (default 100k).
    """

    def __init__(self, message: str, dataset: str | Variant | None = None):
        hint = _local_copy_hint(variant(dataset))
        if hint not in message:
            message = f"{message.rstrip()} {hint}"
        super().__init__(message)


class ChecksumError(DataNotFoundError):
    """The downloaded archive does not have the expected size or SHA-256."""


class CacheDamagedError(DataNotFoundError):
    """A cached file no longer matches the size or SHA-256 recorded when it was unpacked."""


def default_cache_dir() -> Path:
    """``$TWOSTAGE_CACHE`` if set (and non-empty), else ``~/.cache/twostage``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "twostage"


def file_problem(path: Path) -> str | None:
    """None if ``path`` is a regular file (links followed), else what it is: 'missing', or e.g.
    'a directory, not a file', so that errors name the real problem instead of 'missing'."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a dangling symbolic link (to {os.readlink(path)!r}, which does not exist)"
        return "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"not accessible ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, FIFO or socket)"
    return None


def _problems(directory: Path, v: Variant = _ML_100K) -> dict[str, str]:
    """The variant's files that are not usable files in ``directory``, each with what it is
    instead."""
    found = {name: file_problem(directory / name) for name in v.files}
    return {name: problem for name, problem in found.items() if problem is not None}


def _missing(directory: Path, v: Variant = _ML_100K) -> list[str]:
    return list(_problems(directory, v))


def _describe(problems: dict[str, str]) -> str:
    """'is missing u.user; has a u.data that is a directory, not a file' (after a folder name)."""
    missing = [name for name, problem in problems.items() if problem == "missing"]
    parts = [f"is missing {', '.join(missing)}"] if missing else []
    parts += [f"has a {name} that is {problem}" for name, problem in problems.items()
              if problem != "missing"]
    return "; ".join(parts)


def _other_release(directory: Path, v: Variant) -> str | None:
    """If ``directory`` holds the files of another layout than ``v``'s, what it holds."""
    try:
        names = {p.name for p in directory.iterdir() if file_problem(p) is None}
    except OSError:
        return None
    found = layout_of_files(names)
    if found is None or found == v.layout:
        return None
    users = [n.name for n in VARIANTS.values() if n.layout == found]
    return (f"the {', '.join(found.files)} of MovieLens {' / '.join(users)}, not the "
            f"{', '.join(v.files)} of {v.label}")


def _wrong_release(path: Path, source: str, v: Variant, complete: bool
                   ) -> DataNotFoundError | None:
    """A folder of another release passed for ``v``: the error, else None.

    Told by its files when it lacks ``v``'s (``complete`` False), else by its name when that is
    another variant's folder name of the same layout (ml-25m passed as 20m: same file names).
    """
    what = None if complete else _other_release(path, v)
    if what is None:
        named = {w.folder: w for w in VARIANTS.values()}.get(path.resolve().name)
        if named is None or named == v or named.layout != v.layout:
            return None
        what = (f"by its name the {named.label} folder ({named.folder}), not {v.label} "
                f"({v.folder})")
    return DataNotFoundError(
        f"{source} points at {path}, which holds {what}. Pass --dataset {_dataset_for(path, v)}"
        f" to use it, or point --data-dir / {DATA_DIR_ENV} at a {v.label} folder.", v)


def _dataset_for(path: Path, v: Variant) -> str:
    """The --dataset a folder looks like (by name, then by layout), for the error's fix."""
    name = path.resolve().name
    for w in VARIANTS.values():
        if w.folder == name:
            return w.name
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        names = set()
    found = layout_of_files(names)
    matching = [w.name for w in VARIANTS.values() if w.layout == found and w != v]
    return "|".join(matching) or "NAME"


def _release_problems(folder: Path, source: str, v: Variant) -> dict[str, str]:
    """:func:`_problems` of ``folder``, after raising if it is another release's folder."""
    problems = _problems(folder, v)
    wrong = _wrong_release(folder, source, v, complete=not problems)
    if wrong is not None:
        raise wrong
    return problems


def _locate_user_dir(path: Path, source: str, v: Variant = _ML_100K) -> Path:
    """Return the directory holding the variant's files: ``path`` itself or ``path/<folder>``
    (``path/ml-100k`` for 100k)."""
    path = path.expanduser()
    if not path.exists():
        raise DataNotFoundError(f"{source} points at {path}, which does not exist.", v)
    if not path.is_dir():
        raise DataNotFoundError(
            f"{source} points at {path}, which is not a directory "
            f"(it must be the unzipped {v.folder} folder, not the zip).", v
        )
    problems = _release_problems(path, source, v)
    if not problems:
        return path.resolve()
    sub = path / v.folder
    if sub.is_dir():
        sub_problems = _release_problems(sub, source, v)
        if not sub_problems:
            return sub.resolve()
        raise DataNotFoundError(
            f"{source} points at {path}, but neither it nor {sub} holds all {v.label} files: "
            f"{sub} {_describe(sub_problems)}.", v
        )
    raise DataNotFoundError(
        f"{source} points at {path}, which {_describe(problems)} "
        f"(and has no {v.folder}/ subdirectory).", v
    )


def data_source_dir(data_dir: str | os.PathLike | None = None, *,
                    dataset: str | Variant | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder :func:`resolve_data_dir` reads ``dataset`` from, by the same rules, found
    without checking, downloading or writing anything: ``data_dir``, else ``$TWOSTAGE_DATA_DIR``,
    else ``<cache>/<release folder>``. ``~`` is expanded, links are not resolved, and the folder
    may not exist. For refusing an output inside the folder this project only reads, before
    any data is loaded."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return cache / variant(dataset).folder


def resolve_data_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    dataset: str | Variant | None = None,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
    sha256=_KEEP,
    size=_KEEP,
    download: bool = True,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Return the directory holding the raw files of ``dataset`` (default 100k; see the module
    docstring).

    ``url``/``sha256``/``size`` default to those of the release's official GroupLens archive;
    ``sha256=None`` / ``size=None`` skip the respective check (for a trusted mirror of unknown
    contents).
    """
    v = variant(dataset)
    url = v.url if url is None else url
    sha256 = v.sha256 if sha256 is _KEEP else sha256
    size = v.size if size is _KEEP else size
    if data_dir is not None and str(data_dir) != "":
        return _locate_user_dir(Path(data_dir), f"--data-dir {data_dir}", v)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return _locate_user_dir(Path(env), f"{DATA_DIR_ENV}={env}", v)

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / v.folder
    _clean_leftovers(cache)
    if target.is_dir() and not _missing(target, v):
        damage = _verify_cached(target, v)
        if damage is None:
            return target.resolve()
        if not download:
            raise CacheDamagedError(
                f"the cached copy {target} is damaged: {damage}. Delete {target} and run again "
                f"with downloading enabled to re-download it.", v
            )
        log.warning("the cached copy %s is damaged: %s; deleting it and downloading a fresh copy",
                    target, damage)
        _discard(target, damage, v)
    if not download:
        raise DataNotFoundError(
            f"{v.label} is not in the cache ({target}) and downloading is disabled.", v
        )
    _download_into_cache(cache, v, url=url, sha256=sha256, size=size, progress=progress,
                         timeout=timeout)
    return target.resolve()


# --------------------------------------------------------------------------- download machinery


def _download_into_cache(cache: Path, v: Variant, *, url: str, sha256: str | None,
                         size: int | None, progress: bool, timeout: float) -> None:
    target = cache / v.folder
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataNotFoundError(
            f"cannot create the download cache {cache} ({exc}); set {CACHE_ENV} to a writable "
            f"directory.", v
        ) from exc

    tmp_zip: Path | None = None
    tmp_dir: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=_tmp_prefix(v), suffix=".zip.part", dir=cache)
        tmp_zip = Path(name)
        log.info("downloading %s from %s into %s", v.label, url, cache)
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, v, sha256=sha256, size=size, progress=progress, timeout=timeout)

        tmp_dir = Path(tempfile.mkdtemp(prefix=_tmp_prefix(v), suffix=".tmp", dir=cache))
        _extract(tmp_zip, tmp_dir, url, v)
        tmp_zip.unlink()
        tmp_zip = None

        unpacked = tmp_dir / v.folder
        missing = _missing(unpacked, v) if unpacked.is_dir() else list(v.files)
        if missing:
            raise DataNotFoundError(
                f"the archive from {url} has no complete {v.folder}/ folder "
                f"(missing {', '.join(v.folder + '/' + m for m in missing)}).", v
            )
        _write_manifest(unpacked, source=url)
        _install(unpacked, target, v)
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


def _install(unpacked: Path, target: Path, v: Variant = _ML_100K) -> None:
    """Atomically move the verified ``unpacked`` folder to ``target``."""
    try:
        os.replace(unpacked, target)
        return
    except OSError:
        if target.is_dir() and not _missing(target, v):
            return  # a concurrent run won the race; its copy is as good as ours
        if target.is_symlink() or not target.is_dir():
            if not os.path.lexists(target):
                raise
            raise DataNotFoundError(
                f"{target} exists but is not a {v.label} folder; remove it and retry.", v
            ) from None
    # A stale, incomplete ml-100k/ (e.g. from a hand copy gone wrong): move it aside, then retry.
    trash = Path(tempfile.mkdtemp(prefix=_tmp_prefix(v), suffix=".stale", dir=target.parent))
    try:
        try:
            os.replace(target, trash / v.folder)
        except FileNotFoundError:
            pass  # someone else removed it meanwhile
        try:
            os.replace(unpacked, target)
        except OSError:
            if not (target.is_dir() and not _missing(target, v)):
                raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- cache checksums


def _clean_leftovers(cache: Path) -> None:
    """Remove what killed downloads of any release left in the cache
    (``.ml-100k-<pid>-*.part`` files and unpack folders) when their process is gone, and say so."""
    if not cache.is_dir():
        return
    for v in VARIANTS.values():
        for path in cache.glob(f".{v.folder}-*"):
            pid = path.name[len(v.folder) + 2:].split("-")[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            log.warning("removed %s, left by an interrupted download", path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_manifest(folder: Path, *, source: str) -> None:
    """Record size and SHA-256 of every file unpacked into ``folder`` (written atomically).

    Runs before ``folder`` is moved into the cache, so a cached copy never lacks its manifest.
    """
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            files[path.relative_to(folder).as_posix()] = {
                "size": path.stat().st_size, "sha256": io.sha256_file(path)}
    payload = json.dumps({"format": 1, "source": source, "files": files}, indent=1,
                         sort_keys=True)
    io.write_text(folder / MANIFEST, payload + "\n")


def _read_manifest(folder: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (size, sha256)}; ValueError if the manifest is not one we wrote."""
    entries = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    out = {}
    for name, entry in entries.items():
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"unsafe file name {name!r}")
        size, sha = entry["size"], entry["sha256"]
        if not isinstance(size, int) or not isinstance(sha, str) or len(sha) != 64:
            raise ValueError(f"bad entry for {name!r}")
        out[name] = (size, sha.lower())
    return out


_UNVERIFIED_WARNED: set[str] = set()


def _verify_cached(folder: Path, v: Variant = _ML_100K) -> str | None:
    """None if every file listed in the manifest has its size and SHA-256, else the first damage.

    Sizes are compared first (a truncated file is found without hashing anything). SHA-256 is
    compared for the files the reader reads and every file under _HASH_ALWAYS_BELOW bytes.
    """
    if not os.path.lexists(folder / MANIFEST):
        if str(folder) not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(str(folder))
            log.warning("the cached copy %s has no %s (it was unpacked by an older version or "
                        "copied by hand), so it cannot be checked for damage; using it as it is. "
                        "Delete it to have a verifiable copy downloaded.", folder, MANIFEST)
        return None
    try:
        expected = _read_manifest(folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its checksum manifest {MANIFEST} is unreadable or corrupt ({exc})"
    for name, (size, _) in expected.items():
        problem = file_problem(folder / name)
        if problem is not None:
            return f"{name} is {problem} (expected a file of {size} bytes)"
        actual = (folder / name).stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, expected {size}"
    for name, (size, sha) in expected.items():
        if name not in v.files and size >= _HASH_ALWAYS_BELOW:
            continue
        try:
            actual_sha = io.sha256_file(folder / name)
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
        if actual_sha != sha:
            return f"{name} has SHA-256 {actual_sha}, expected {sha} (same size, changed content)"
    return None


def _discard(target: Path, damage: str, v: Variant = _ML_100K) -> None:
    """Move the damaged cached ``target`` aside (atomically, so no run sees half of it), delete it."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=_tmp_prefix(v), suffix=".damaged",
                                      dir=target.parent))
    except OSError as exc:
        raise CacheDamagedError(f"the cached copy {target} is damaged: {damage}, and it cannot be "
                                f"moved aside ({exc}). Delete {target} and run again.", v) from exc
    try:
        os.replace(target, trash / v.folder)
    except FileNotFoundError:
        pass  # a concurrent run moved it already
    except OSError as exc:
        raise CacheDamagedError(f"the cached copy {target} is damaged: {damage}, and it cannot be "
                                f"moved aside ({exc}). Delete {target} and run again.", v) from exc
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _network_error(url: str, exc: BaseException, v: Variant) -> DataNotFoundError:
    if isinstance(exc, urllib.error.HTTPError):
        why = f"the server answered HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        why = f"{exc.reason}"
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        why = "the connection timed out"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return DataNotFoundError(
        f"could not download {v.label} from {url} ({why}). "
        f"No network access, or the server is unreachable?", v
    )


def _make_bar(progress: bool, total: int | None, desc: str = "ml-100k.zip"):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, leave=False)


def _fetch(url: str, out, v: Variant, *, sha256: str | None, size: int | None, progress: bool,
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
            bar = _make_bar(progress, declared if declared is not None else size,
                            v.archive_name)
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
                        f"{v.label} archive; use the official URL or a local copy.", v
                    )
    except DataNotFoundError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError/HTTPError, timeouts, refused/reset connections, IncompleteRead, bad URLs.
        raise _network_error(url, exc, v) from exc
    finally:
        if bar is not None:
            bar.close()

    if declared is not None and received != declared:
        raise DataNotFoundError(
            f"the download from {url} was cut off: the server announced {declared} bytes but "
            f"sent {received}. Retry, or use a local copy.", v
        )
    if size is not None and received != size:
        raise ChecksumError(
            f"the download from {url} has the wrong size: expected {size} bytes, got {received}. "
            f"The download is truncated or not the {v.label} archive; retry, or use a local copy.",
            v)
    got = digest.hexdigest()
    if sha256 is not None and got.lower() != sha256.strip().lower():
        raise ChecksumError(
            f"the download from {url} has the wrong SHA-256: expected {sha256}, got {got}. "
            f"The file is corrupt or not the {v.label} archive; retry, or use a local copy.", v
        )


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why unpacking ``info`` could write outside the unpack folder, or None if it cannot."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "it is an absolute path"
    if any(p == ".." for p in parts):
        return "it contains '..'"
    if ":" in name:
        return "it contains ':' (a drive or stream name)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "it is a symbolic link"
    return None


def _extract(zip_path: Path, dest: Path, url: str, v: Variant = _ML_100K) -> None:
    """Unpack the ``<folder>/`` members of ``zip_path`` into ``dest`` (CRC-checked).

    Every member is checked before anything is written: one that would land outside ``dest``
    (absolute, ``..``, a drive letter) or is a symbolic link fails the whole archive, as no
    GroupLens archive has such an entry.
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            for info in members:
                why = _unsafe_member(info)
                if why is not None:
                    raise DataNotFoundError(
                        f"the archive downloaded from {url} has an entry {info.filename!r} that "
                        f"would unpack outside the cache folder ({why}); it is not the official "
                        f"{v.label} archive. Nothing was unpacked; use the official URL or a "
                        "local copy.", v)
            for info in members:
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                if not parts or parts[0] != v.folder:
                    continue  # e.g. __MACOSX/ noise; only ml-100k/ is ever used
                if any(p in ("", ".") for p in parts):
                    raise zipfile.BadZipFile(f"unsafe member name {info.filename!r}")
                zf.extract(info, dest)  # reading verifies each member's CRC-32
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise DataNotFoundError(
            f"the archive downloaded from {url} is not a valid zip file ({exc}).", v
        ) from exc
