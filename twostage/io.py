"""Atomic writes and safe replacement: the only code in the project that creates output files.

Rules (docs/safety.md, "What is safe to point it at"):

- A file is written to a temporary sibling and renamed into place: a reader sees the old or the
  new complete file, never half of one.
- A folder (checkpoint, run, SavedModel) is written to a temporary sibling folder and renamed into
  place. An existing target is replaced only if this project wrote it, recognised by the
  :data:`MARKER` file inside; anything else is refused with :class:`OwnershipError` unless the
  caller passes ``force=True``, which moves it aside to ``<name>.replaced-<time>`` (never deletes).
- Temporary names carry :data:`TMP_TAG`, so leftovers of a killed process are recognisable:
  :func:`recover_leftovers` restores a target whose replacement was interrupted between its two
  renames, and removes stale temporaries, saying what it did.
- Files and folders get the permissions the user's umask gives (``mkstemp``/``mkdtemp`` would
  create them 0600/0700, unreadable to teammates sharing a results folder).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("twostage")

MARKER = ".twostage"          # inside every folder the project writes: {"kind": ...}
TMP_TAG = ".twostage-tmp-"    # <parent>/.<name>.twostage-tmp-XXXX (being written)
OLD_TAG = ".twostage-old-"    # <parent>/.<name>.twostage-old-XXXX (being replaced)
STALE_SECONDS = 0             # leftovers of dead processes; see recover_leftovers


LOCK_TAG = ".twostage-lock"    # <parent>/.<name>.twostage-lock (held while a process writes)


class OwnershipError(FileExistsError):
    """The target exists and was not written by this project (or is of another kind)."""


class TargetBusyError(OwnershipError):
    """Another process is writing the same target now."""


_HELD: dict[str, list[int]] = {}     # lock path -> [fd, depth] held by this process


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# --- files -----------------------------------------------------------------------------------
def write_bytes(path: Path | str, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary sibling, fsync, rename)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    return write_with(path, write)


def write_text(path: Path | str, text: str) -> Path:
    """UTF-8 text, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj, indent: int | None = 1) -> Path:
    """JSON (UTF-8, non-ASCII kept), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def write_with(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Atomic write through a writer that takes a path (numpy.savez, matplotlib savefig, ...).
    The temporary keeps ``path``'s suffix, which some writers use to pick a format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _chmod_default(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_checksum_map(files) -> bool:
    """Whether a manifest's ``files`` is what the writers put there: {relative path: sha256}."""
    return isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in files.items())


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- text for the terminal ---------------------------------------------------------------------
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``str(text)`` with every C0/C1 control character (ESC, BEL, CSI, NUL, ...) written as its
    Python escape (``\\x1b``, ``\\t``): a title or path that came from a file cannot clear the
    screen, retitle the terminal or hide what follows. Everything else is kept as it is."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


# --- folders ---------------------------------------------------------------------------------
@contextlib.contextmanager
def target_lock(target: Path | str):
    """Hold this process's exclusive lock on writing ``target`` (an ``fcntl`` lock on
    ``<parent>/.<name>.twostage-lock``; re-entrant within the process) for the block.

    Raises TargetBusyError at once, naming the target, when another process holds it: two
    runs into one ``--out`` would otherwise take each other's temporary folders for leftovers
    of a killed run. The parent folder must exist. The lock file is removed on release (a
    process that locked a removed file sees another inode at the path and tries again)."""
    target = Path(target)
    lock = target.parent / f".{target.name}{LOCK_TAG}"
    key = os.path.realpath(lock)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        _HELD[key] = [_acquire(lock, target), 1]
    try:
        yield target
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            fd = _HELD.pop(key)[0]
            Path(lock).unlink(missing_ok=True)
            os.close(fd)


def _acquire(lock: Path, target: Path) -> int:
    """An fd holding the flock of the file now at ``lock``."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TargetBusyError(f"another twostage process is writing {target} now (lock "
                                  f"{lock}); wait for it to finish, or choose another path"
                                  ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)                    # the holder removed it meanwhile: lock the new one


def marker_kind(directory: Path) -> str | None:
    """The kind this project recorded in ``directory`` (None: not ours, or not a folder)."""
    try:
        data = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def _entries(root: Path) -> set[str]:
    """Relative posix paths of every file and folder under ``root`` (links not followed)."""
    out = set()
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        out.update((base / name).as_posix() for name in (*dirs, *files))
    return out


def _written(target: Path) -> set[str] | None:
    """The files our marker in ``target`` lists (a run folder of an older version: its
    manifest's), or None when neither says."""
    try:
        listed = json.loads((target / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if listed is None:
        try:
            listed = [*json.loads((target / "manifest.json").read_text(encoding="utf-8"))
                      ["files"], "manifest.json"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return {str(f) for f in listed} if isinstance(listed, list) else None


def foreign_entries(target: Path | str) -> list[str]:
    """Files and folders inside our folder ``target`` that this project did not write (a
    user's notes, an analysis folder), sorted; ["*"] when the marker lists no files."""
    target = Path(target)
    written = _written(target)
    if written is None:
        return ["*"]
    allowed = {MARKER, *written}
    allowed |= {parent.as_posix() for f in written for parent in Path(f).parents}
    return sorted(_entries(target) - allowed)


def check_replaceable(target: Path | str, kind: str, *, force: bool = False) -> None:
    """Raise OwnershipError unless ``target`` may be replaced by a folder of ``kind``: it does
    not exist, is an empty folder, or holds our marker of the same kind and only files we
    wrote (``force`` accepts anything but moves it aside instead of deleting it, see
    :func:`replace_directory`)."""
    target = Path(target)
    if not os.path.lexists(target) or force:
        return
    if target.is_symlink() or not target.is_dir():
        raise OwnershipError(f"{target} exists and is not a folder; choose another path, or "
                             "pass --force to move it aside (nothing is deleted)")
    if not any(target.iterdir()):
        return
    found = marker_kind(target)
    foreign = foreign_entries(target) if found == kind else []
    if found == kind and not foreign:
        return
    what = (f"files this project did not write ({_some(foreign)})" if found == kind else
            f"a twostage {found}, not a {kind}" if found else
            "files this project did not write")
    raise OwnershipError(f"{target} holds {what}; refusing to replace it. Choose a new folder, "
                         f"or pass --force to move it aside to {target.name}.replaced-<time> "
                         "(nothing is deleted)")


def _some(names: list[str]) -> str:
    if names == ["*"]:
        return "its marker lists none of its files"
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def _move_aside(target: Path) -> Path:
    aside = target.with_name(f"{target.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while os.path.lexists(aside):
        aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
        n += 1
    os.replace(target, aside)
    log.warning("moved %s aside to %s", target, aside)
    return aside


def replace_directory(target: Path | str, write: Callable[[Path], None], kind: str, *,
                      force: bool = False, extra_marker: dict | None = None) -> Path:
    """Build a folder with ``write(tmp)`` beside ``target``, stamp our marker, and rename it into
    place. An existing target is replaced only after :func:`check_replaceable`; the old copy is
    renamed to an ``OLD_TAG`` sibling first and removed last, so at every instant ``target`` is
    the old or the new complete folder (or, after a kill between the renames, the old copy sits
    in the sibling where :func:`recover_leftovers` finds it)."""
    target = Path(target)
    check_replaceable(target, kind, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(target):
        return _replace_locked(target, write, kind, force, extra_marker)


def write_marker(folder: Path, kind: str, extra: dict | None = None) -> Path:
    """Our marker in ``folder``: its ``kind``, ``extra`` and every file now in it (what may be
    replaced later without asking, see :func:`check_replaceable`)."""
    return write_json(Path(folder) / MARKER, {"kind": kind, **(extra or {}),
                                              "files": sorted(_entries(Path(folder)))})


def _replace_locked(target: Path, write: Callable[[Path], None], kind: str, force: bool,
                    extra_marker: dict | None) -> Path:
    """:func:`replace_directory` under the target's lock."""
    recover_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}", dir=target.parent))
    old: Path | None = None
    try:
        _chmod_default(tmp, directory=True)
        write(tmp)
        write_marker(tmp, kind, extra_marker)
        if os.path.lexists(target):
            if force and (not target.is_dir() or target.is_symlink() or (
                    any(target.iterdir()) and (marker_kind(target) != kind
                                               or foreign_entries(target)))):
                _move_aside(target)
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}{OLD_TAG}",
                                            dir=target.parent))
                os.replace(target, old / "previous")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "previous").exists() and not os.path.lexists(target):
            os.replace(old / "previous", target)  # put the previous folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _siblings(parent: Path, prefix: str) -> list[Path]:
    """The entries of ``parent`` whose names start with ``prefix``, matched literally (a
    glob would read ``[1]`` in ``run[1]`` as a character class and match another run's)."""
    return sorted(p for p in parent.iterdir() if p.name.startswith(prefix))


def recover_leftovers(target: Path | str) -> list[str]:
    """Repair what a killed process left beside ``target`` and say so (returns the notes).

    - ``target`` missing but an ``OLD_TAG`` sibling holds the previous copy: the kill came between
      the two renames of :func:`replace_directory`; the previous copy is renamed back.
    - other ``OLD_TAG`` / ``TMP_TAG`` siblings of ``target``: incomplete or superseded copies of
      our own, removed.
    """
    target = Path(target)
    notes: list[str] = []
    parent = target.parent
    if not parent.is_dir():
        return notes
    for old in _siblings(parent, f".{target.name}{OLD_TAG}"):
        previous = old / "previous"
        if previous.exists() and not os.path.lexists(target):
            os.replace(previous, target)
            notes.append(f"restored {target} from an interrupted replacement ({old.name})")
        shutil.rmtree(old, ignore_errors=True)
        notes.append(f"removed leftover {old}")
    for tmp in _siblings(parent, f".{target.name}{TMP_TAG}"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        notes.append(f"removed incomplete {tmp} left by an interrupted write")
    for note in notes:
        log.warning("%s", note)
    return notes


def ensure_writable_dir(path: Path | str, what: str) -> Path:
    """Create ``path`` (and parents) if needed and check it is a writable folder, before any
    long work starts; OSError with the path and the fix otherwise."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} exists and is not a folder; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=f".probe{TMP_TAG}", delete=True)
        probe.close()
    except OSError as e:
        raise PermissionError(f"{what} {path} is not writable ({e.strerror or e}); choose a "
                              "folder you can write to") from None
    return path
