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
and two runs into one ``--out`` never mix. :meth:`RunDir.open` validates every file a loader
reads against the manifest (an unlisted one is refused) and the contents against each other
(corpus vs spec, stages, results) before ``recommend`` or ``export`` use them; every failure is
one :class:`RunDirError` line naming the file and the fix.
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
from .checkpoint import STAGES
from .config import BACKENDS
from .data.features import FeatureSpec

KIND = "run"
MANIFEST_VERSION = 1
# What every checkpoint folder holds whatever its stages: listed in the manifest, as anything
# else in the folder (the stage files, recipe.npz; a missing stage is RunDir.open's stage rule).
CHECKPOINT_FILES = ("meta.json", "config.json", "feature_spec.json")
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
        """Validate a run folder before ``recommend`` or ``export`` read anything of it: the one
        rule both follow, so neither serves what the other refuses.

        Checksums prove integrity, not sanity, so both are checked: every file a loader reads
        is listed in manifest.json and unchanged (an unlisted one is an error), each checkpoint
        holds both stages and the run's spec fingerprint, the corpus is the catalog that spec
        was fitted on and its ``max_timestamp`` within the spec's rating times, and
        results.json holds a report per backend.

        Args:
            path: the folder given to ``twostage run --out``.
        Returns:
            The validated RunDir (its checkpoints are loaded later, by twostage.checkpoint,
            which checks their contents against their config).
        Raises:
            RunDirNotFoundError: no folder at ``path`` (a usage error, exit 2).
            RunDirError: anything else, one line naming the file and the fix (exit 1).
        """
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
        _check_listed(path, backends, files)
        for rel, digest in files.items():
            file = (path / rel).resolve()
            if os.path.lexists(path / rel) and path.resolve() not in file.parents:
                raise RunDirError(f"{path / rel} points outside the run folder ({file}); a run "
                                  "folder is one self-contained unit: re-run it")
            if path.resolve() not in file.parents or not file.is_file():
                raise RunDirError(f"{path / rel} is listed in manifest.json but missing; the "
                                  "run folder is incomplete: re-run it")
            if io.sha256_file(file) != digest:
                raise RunDirError(f"{path / rel} changed after the run wrote it (checksum "
                                  "differs from manifest.json); re-run, or restore the file")
        titles, max_ts = _check_corpus(_read(path / "corpus.json"), path / "corpus.json")
        for name in backends:
            meta = _read(path / name / "meta.json")
            if not isinstance(meta, dict):
                raise RunDirError(f"{path / name / 'meta.json'} must hold a JSON object; re-run")
            if meta.get("spec_fingerprint") != fingerprint:
                raise RunDirError(f"{path / name} was trained on other data than this run's "
                                  "corpus (feature spec fingerprints differ); re-run")
            stages = meta.get("stages")
            missing = [s for s in STAGES if not isinstance(stages, list) or s not in stages]
            if missing:  # recommend and export serve both stages: never an untrained one
                raise RunDirError(f"{path / name} holds no {missing[0]} stage (meta.json "
                                  f"stages: {stages!r}); a run folder serves retrieval + "
                                  "ranking: re-run `twostage run` to train both")
        spec = _read_spec(path / backends[0] / "feature_spec.json", fingerprint)
        _check_corpus_against_spec(titles, max_ts, spec, manifest.get("data"),
                                   path / "corpus.json")
        _check_results(_read(path / "results.json"), backends, path / "results.json")
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
    if not io.is_checksum_map(files):
        raise RunDirError(f"{path}: 'files' must map paths to checksums")
    if not isinstance(m.get("spec_fingerprint"), str):
        raise RunDirError(f"{path}: 'spec_fingerprint' is missing")
    return tuple(backends), m["spec_fingerprint"], files


def _check_listed(root: Path, backends: tuple[str, ...], files: dict[str, str]) -> None:
    """Every file a loader reads is in the manifest (else nothing checks it): corpus.json,
    results.json and every file in each backend's checkpoint folder, the three a checkpoint
    always has included. Raises RunDirError naming the first one that is not."""
    required = ["corpus.json", "results.json"]
    for name in backends:
        required += [f"{name}/{f}" for f in CHECKPOINT_FILES]
        folder = root / name
        if folder.is_dir() and not folder.is_symlink():
            required += sorted(p.relative_to(root).as_posix() for p in folder.rglob("*")
                               if not p.is_dir())
    for rel in dict.fromkeys(required):
        if rel in files:
            continue
        if not os.path.lexists(root / rel):
            raise RunDirError(f"{root / rel} is missing; the run folder is incomplete: re-run "
                              "it")
        raise RunDirError(f"{root / rel} is not listed in manifest.json, so nothing proves "
                          "the run wrote it; re-run, or remove the file if you added it")


def _read_spec(path: Path, fingerprint: str) -> FeatureSpec:
    """The run's feature spec (its fingerprint must be the manifest's)."""
    try:
        spec = FeatureSpec.from_dict(_read(path))
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path}: not a feature spec ({e}); re-run") from None
    if spec.fingerprint() != fingerprint:
        raise RunDirError(f"{path} is not the feature spec this run was trained on (fingerprint "
                          f"{spec.fingerprint()}, manifest.json has {fingerprint}); re-run")
    return spec


def _check_corpus_against_spec(titles: np.ndarray, max_ts: int, spec: FeatureSpec, data,
                               path: Path) -> None:
    """The corpus is the catalog the spec was fitted on (every movie, so its distinct titles are
    the spec's title vocabulary; as many movies as the data facts say) and ``max_timestamp`` is
    the latest rating time the spec saw (its last bucket boundary): a corpus cut to 5 titles or
    a time of 2**63-1 (query times of 1e11 standard deviations) is not served."""
    vocab = set(spec.title_vocab)
    if set(titles.tolist()) != vocab:
        odd = sorted(set(titles.tolist()) ^ vocab)
        raise RunDirError(f"{path}: its {len(titles)} titles are not the catalog the models "
                          f"were trained on ({len(vocab)} distinct titles; {len(odd)} differ, "
                          f"e.g. {odd[0]!r}); re-run")
    movies = data.get("num_movies") if isinstance(data, dict) else None
    if isinstance(movies, int) and not isinstance(movies, bool) and movies != len(titles):
        raise RunDirError(f"{path}: {len(titles)} titles, but the run's data had {movies} "
                          "movies (manifest.json); re-run")
    bounds = spec.ts_boundaries  # linspace(min, max, n): n >= 2 ends exactly at the max
    low = bounds[0] if bounds else -np.inf
    high = bounds[-1] if len(bounds) > 1 else np.inf
    if not low - 1 <= max_ts <= high + 1:
        raise RunDirError(f"{path}: 'max_timestamp' {max_ts} is outside the rating times the "
                          f"models were trained on ({low:.0f} to {high:.0f}); re-run")


def _check_results(results, backends: tuple[str, ...], path: Path) -> None:
    """results.json is the report of each backend of the run: {backend: {...}}."""
    if not isinstance(results, dict) or set(results) != set(backends) or not all(
            isinstance(r, dict) for r in results.values()):
        got = sorted(results) if isinstance(results, dict) else type(results).__name__
        raise RunDirError(f"{path} must map each backend of the run ({', '.join(backends)}) to "
                          f"its report, got {got}; re-run")


def _check_corpus(c, path: Path) -> tuple[np.ndarray, int]:
    if not isinstance(c, dict):
        raise RunDirError(f"{path} must hold a JSON object with 'titles' and 'max_timestamp'")
    titles, ts = c.get("titles"), c.get("max_timestamp")
    if not isinstance(titles, list) or not titles or not all(isinstance(t, str) for t in titles):
        raise RunDirError(f"{path}: 'titles' must be a non-empty list of strings")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= INT64_MAX:
        raise RunDirError(f"{path}: 'max_timestamp' must be a non-negative integer, got {ts!r}")
    return np.asarray(titles, dtype=object), ts
