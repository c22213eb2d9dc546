"""A run folder (``twostage run --out DIR``) as one consistent unit.

Layout::

    .twostage        marker {"kind": "run"} (what lets a later run replace this folder)
    manifest.json    version, backends, data facts, spec fingerprint, sha256 of every file
    results.json     backend -> report        results.md     the table
    corpus.json      {"titles": [...], "max_timestamp": int}: what the models were evaluated on
    <backend>_curves.png
    <backend>/       the backend's checkpoint (twostage.checkpoint format)

The whole folder is written to a temporary sibling and renamed into place when complete
(:func:`twostage.io.replace_directory`), so an interrupted run leaves the previous folder intact
and two runs into one ``--out`` never mix. :meth:`RunDir.open` validates every file against the
manifest and each checkpoint's spec against the manifest's before ``recommend`` or ``export``
use them; every failure is one :class:`RunDirError` line naming the file and the fix.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from . import io
from .config import BACKENDS

KIND = "run"
MANIFEST_VERSION = 1
INT64_MAX = int(np.iinfo(np.int64).max)


class RunDirError(ValueError):
    """A run folder is incomplete, edited, or its parts do not belong together."""


class RunDirNotFoundError(RunDirError):
    """The path given as a run folder is missing or is not a folder (a usage error)."""


def _files(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` except marker and manifest."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in (io.MARKER, "manifest.json"):
            out[rel] = io.sha256_file(path)
    return out


def prepare(out: Path | str, *, force: bool = False,
            lock: contextlib.ExitStack | None = None) -> Path:
    """Check, before any data is loaded, that ``out`` can receive a run: not a file, in a
    writable place, and either new, empty, or a run folder holding only what we wrote
    (``force``: anything, moved aside). With ``lock``, ``out``'s write lock
    (:func:`twostage.io.target_lock`) is entered on it, so it is held until the stack closes.
    Raises OwnershipError (TargetBusyError: another process writes ``out``) / OSError with
    the path and the fix."""
    out = Path(out)
    io.check_replaceable(out, KIND, force=force)
    io.ensure_writable_dir(out.parent if out.parent != Path("") else Path("."),
                           "the parent folder of --out")
    if lock is not None:
        lock.enter_context(io.target_lock(out))
    io.recover_leftovers(out)
    return out


def write(out: Path | str, *, reports: Mapping[str, dict], corpus_titles: np.ndarray,
          max_timestamp: int, spec_fingerprint: str, data: dict,
          save_backend: Callable[[str, Path], None],
          write_results: Callable[[Path], list[Path]], force: bool = False) -> Path:
    """Write a complete run folder atomically: ``save_backend(name, folder)`` for every backend
    of ``reports``, ``write_results(tmp)`` for the results and plots, the corpus, then the
    manifest with the checksum of every file."""
    names = list(reports)

    def build(tmp: Path) -> None:
        for name in names:
            save_backend(name, tmp / name)
        io.write_json(tmp / "corpus.json", {"titles": [str(t) for t in corpus_titles],
                                            "max_timestamp": int(max_timestamp)})
        write_results(tmp)
        io.write_json(tmp / "manifest.json", {
            "version": MANIFEST_VERSION, "backends": names, "spec_fingerprint": spec_fingerprint,
            "data": data, "files": _files(tmp)})
    return io.replace_directory(Path(out), build, KIND, force=force)


@dataclass(frozen=True)
class RunDir:
    """A validated run folder: its backends, corpus and checkpoints belong together."""

    path: Path
    backends: tuple[str, ...]
    corpus_titles: np.ndarray
    max_timestamp: int
    spec_fingerprint: str

    @classmethod
    def open(cls, path: Path | str) -> "RunDir":
        path = Path(path)
        if not os.path.lexists(path):
            raise RunDirNotFoundError(f"run folder {path} does not exist; create one with "
                              f"`twostage run --out {path}`")
        if not path.is_dir():
            raise RunDirNotFoundError(f"{path} is a file, not a run folder; pass the folder given to "
                              "`twostage run --out`")
        if io.marker_kind(path) != KIND or not (path / "manifest.json").is_file():
            raise RunDirError(f"{path} is not a complete twostage run folder (no run marker or "
                              "manifest.json; written by an older version or by hand?); "
                              f"re-run `twostage run --out {path}`")
        manifest = _read(path / "manifest.json")
        backends, fingerprint, files = _check_manifest(manifest, path / "manifest.json")
        for rel, digest in files.items():
            file = (path / rel).resolve()
            if path.resolve() not in file.parents or not file.is_file():
                raise RunDirError(f"{path / rel} is listed in manifest.json but missing; the "
                                  "run folder is incomplete: re-run it")
            if io.sha256_file(file) != digest:
                raise RunDirError(f"{path / rel} changed after the run wrote it (checksum "
                                  "differs from manifest.json); re-run, or restore the file")
        titles, max_ts = _check_corpus(_read(path / "corpus.json"), path / "corpus.json")
        for name in backends:
            meta = _read(path / name / "meta.json")
            if not isinstance(meta, dict) or meta.get("spec_fingerprint") != fingerprint:
                raise RunDirError(f"{path / name} was trained on other data than this run's "
                                  "corpus (feature spec fingerprints differ); re-run")
        return cls(path, backends, titles, max_ts, fingerprint)

    def backend_dir(self, name: str | None) -> tuple[str, Path]:
        """(name, folder) of a saved backend; default: the first one saved."""
        if name is None:
            name = self.backends[0]
        if name not in self.backends:
            raise RunDirError(f"{self.path} has no saved {name} models (it has: "
                              f"{', '.join(self.backends)})")
        return name, self.path / name


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing; the run folder is incomplete: re-run it"
                          ) from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is not readable JSON ({e}); re-run the run") from None


def _check_manifest(m, path: Path) -> tuple[tuple[str, ...], str, dict[str, str]]:
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION:
        raise RunDirError(f"{path}: not a version {MANIFEST_VERSION} manifest; re-run")
    backends = m.get("backends")
    if not isinstance(backends, list) or not backends or not set(backends) <= set(BACKENDS):
        raise RunDirError(f"{path}: 'backends' must list some of {list(BACKENDS)}, got "
                          f"{backends!r}")
    files = m.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in files.items()):
        raise RunDirError(f"{path}: 'files' must map paths to checksums")
    if not isinstance(m.get("spec_fingerprint"), str):
        raise RunDirError(f"{path}: 'spec_fingerprint' is missing")
    return tuple(backends), m["spec_fingerprint"], files


def _check_corpus(c, path: Path) -> tuple[np.ndarray, int]:
    if not isinstance(c, dict):
        raise RunDirError(f"{path} must hold a JSON object with 'titles' and 'max_timestamp'")
    titles, ts = c.get("titles"), c.get("max_timestamp")
    if not isinstance(titles, list) or not titles or not all(isinstance(t, str) for t in titles):
        raise RunDirError(f"{path}: 'titles' must be a non-empty list of strings")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= INT64_MAX:
        raise RunDirError(f"{path}: 'max_timestamp' must be a non-negative integer, got {ts!r}")
    return np.asarray(titles, dtype=object), ts
