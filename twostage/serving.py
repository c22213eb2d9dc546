"""Serving exports, loaded without the training code: ``load(path).recommend(users)``.

``twostage export --to torch`` writes (``twostage.export`` -> ``torch_impl.serving``)::

    .twostage          marker {"kind": "torch-export"}
    export.json        format, sizes, serving defaults, sha256 of every file below
    query_tower.pt     TorchScript (user_index [B] int64, ts_bucket [B] int64, ts_norm [B] float32)
                       -> [B, D] float32 query embeddings
    ranking_model.pt   TorchScript (the same three + title_index [B] int64, title_tokens [B, L]
                       int64, 0-padded) -> [B] float32 probabilities
    index.faiss        twostage.index file: the run's index kind over the catalog's candidate
                       embeddings (rows 0..M-1)
    titles.json        the id map: index row -> catalog title (duplicates kept, as the corpus)
    feature_spec.json  FeatureSpec: raw (user id, timestamp, title) -> the programs' inputs

``twostage export --to tfrs`` writes a TF SavedModel (``tfrs_impl.serving``, marker kind
"savedmodel") whose ``recommend`` signature does the same in one TensorFlow graph;
``tfrs_impl.serving.SavedModelExport`` wraps it with the same ``recommend`` as
:class:`TorchExport` (:func:`load` picks the class by the folder's marker). Its ``export.json``
(format ``twostage-savedmodel-export``) lists the sha256 of every file of the SavedModel.

Both kinds are verified (:func:`read_manifest`) before anything of them is loaded. An export
is a program (TorchScript, a TF graph): load only exports you trust (see :func:`load`).

:class:`TorchExport` needs numpy, FAISS, torch (imported when a program is loaded) and the
framework-free feature spec: no torch_impl, no TensorFlow. Its ``recommend`` is ``twostage
recommend``'s path (``twostage.pipeline.recommend``): encode the queries with the spec, run the
query tower in batches of the run's ``eval_batch_size``, retrieve ``C = min(max(k,
num_candidates), M)`` rows from the index (descending score, equal scores by ascending row),
score each (user, candidate) with the ranking model in the same batches, and re-rank stably
(``Recommendations.reranked``: ties keep the retrieval order). ``python -m twostage.serving EXPORT --user 42`` prints the table
``twostage recommend`` prints.

Threads: torch and FAISS each bring their own OpenMP runtime (``torch/lib/libgomp``,
``faiss_cpu.libs/libgomp``), and each keeps its threads spinning after a parallel region, so on
a machine with few cores the two pools, and any other busy process, took the cores from each
other on every batched call. The serving path owns both pools, per call and per calling thread
(:func:`owned_threads`): FAISS searches on one thread, the programs on ``threads`` torch
threads (default :data:`PROGRAM_THREADS`; ``python -m benchmarks.serve --floor-only``
measures both settings at each batch size).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import io
from .config import PRECISIONS
from .data.features import FeatureSpec
from .pipeline import Recommendations
from .recipes import HISTORY_LENGTH, HistoryIndex, RecipeData

TORCH_KIND = "torch-export"   # twostage.io marker kind of a torch export folder
SAVEDMODEL_KIND = "savedmodel"  # tfrs_impl.serving.SAVEDMODEL_KIND (the TFRS export)
# export marker kind -> (module, class) of its loader, imported when such an export is loaded
# (as pipeline.BACKEND_CLASSES: the core never imports a backend's module itself)
LOADERS: dict[str, tuple[str, str]] = {SAVEDMODEL_KIND: ("tfrs_impl.serving", "SavedModelExport")}
FORMAT, VERSION = "twostage-torch-export", 2
# Version 2: history.npz holds history_length (any --history-length); version 1 exports serve
# 50 titles and still load. A version-1 reader refuses version 2 instead of feeding 50-title
# histories to a tower trained on another length.
READ_VERSIONS = (1, 2)
SAVEDMODEL_FORMAT = "twostage-savedmodel-export"  # export.json of a SavedModel export
FORMATS = {TORCH_KIND: FORMAT, SAVEDMODEL_KIND: SAVEDMODEL_FORMAT}
MANIFEST = "export.json"      # in both kinds: the sha256 of every file a loader reads
FILES = {"query_tower": "query_tower.pt", "ranking_model": "ranking_model.pt",
         "index": "index.faiss", "titles": "titles.json", "feature_spec": "feature_spec.json"}
QUERY_INPUTS: tuple[str, ...] = ("user_index", "ts_bucket", "ts_norm")
HISTORY_QUERY_INPUTS = QUERY_INPUTS + ("history",)   # the query tower of model.history
RANKING_INPUTS: tuple[str, ...] = QUERY_INPUTS + ("title_index", "title_tokens")
_TARGETS = {TORCH_KIND: "torch", SAVEDMODEL_KIND: "tfrs"}
PROGRAM_THREADS = 1
"""torch intra-op threads of a serving call (TorchExport's default ``threads``): one. A serving
batch is small (a few users x tens of candidates), so a second thread saves little when the
machine is idle and, spinning, costs much when other processes want the cores."""


@contextlib.contextmanager
def owned_threads(threads: int = PROGRAM_THREADS):
    """Within the block, this thread's FAISS searches run on one OpenMP thread and torch's
    operators on ``threads`` (each runtime's setting is restored on exit). torch is touched only
    when already imported (a TFRS export never loads it).

    Args:
        threads: torch intra-op threads, >= 1.
    """
    import faiss

    torch = sys.modules.get("torch")
    before = faiss.omp_get_max_threads(), torch.get_num_threads() if torch else None
    faiss.omp_set_num_threads(1)
    if torch:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before[0])
        if torch:
            torch.set_num_threads(before[1])


class ExportError(ValueError):
    """An export folder is missing, incomplete, edited, or not one of ours."""


@dataclass(frozen=True)
class Served:
    """The top k of N queries, in re-ranked order (ranking score descending, ties in retrieval
    order): ``titles`` [N, k] object (None where an approximate index found fewer than k
    candidates), ``rows`` [N, k] int64 catalog positions (index rows; -1 there),
    ``retrieval_scores`` / ``ranking_scores`` [N, k] float32."""

    titles: np.ndarray
    rows: np.ndarray
    retrieval_scores: np.ndarray
    ranking_scores: np.ndarray


def top_k(recs: Recommendations, titles: np.ndarray, k: int) -> Served:
    """The first ``k`` of each row of ``recs`` re-ranked (``Recommendations.reranked``, THE tie
    rule of ``twostage recommend``), as :class:`Served`."""
    order = recs.reranked()[:, :k]

    def take(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, order, axis=1)
    rows = take(recs.rows)
    named = np.where(rows >= 0, np.asarray(titles, dtype=object)[np.maximum(rows, 0)], None)
    return Served(named, rows, take(recs.retrieval_scores), take(recs.ranking_scores))


def check_k(k: int, catalog_size: int) -> int:
    """``k`` as an int in [1, catalog_size]; ValueError naming the limit otherwise."""
    if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= catalog_size:
        raise ValueError(f"k={k} must be an integer in [1, {catalog_size}] (the exported "
                         f"catalog holds {catalog_size} titles)")
    return int(k)


def query_arrays(user_ids, timestamps, default_timestamp: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Raw queries -> (user ids [N] object str, timestamps [N] int64). ``timestamps``: [N], one
    int for all, or None (the export's default: the latest time of the training data, as
    ``twostage recommend``)."""
    users = np.asarray([user_ids] if isinstance(user_ids, (str, bytes)) else list(user_ids),
                       dtype=object)
    users = np.array([u.decode("utf-8") if isinstance(u, bytes) else str(u) for u in users],
                     dtype=object)
    if len(users) == 0:
        raise ValueError("no user ids given: pass at least one")
    if timestamps is None:
        timestamps = default_timestamp
    ts = np.asarray(timestamps)
    if ts.dtype.kind not in "iu":
        raise ValueError(f"timestamps must be integers (unix seconds), got dtype {ts.dtype}")
    ts = np.broadcast_to(ts.astype(np.int64), users.shape) if ts.ndim == 0 else ts.astype(np.int64)
    if ts.shape != users.shape:
        raise ValueError(f"{len(users)} user ids but {ts.shape[0]} timestamps")
    return users, ts


# --- the torch export ------------------------------------------------------------------------
def _reexport(path: Path, kind: str = TORCH_KIND) -> str:
    return (f"export it again with `twostage export --run RUN --to {_TARGETS[kind]} --out "
            f"{path}`")


def _read_json(path: Path, what: str, kind: str = TORCH_KIND) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: the export is incomplete; "
                          f"{_reexport(path.parent, kind)}") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: not readable {what} ({e}); "
                          f"{_reexport(path.parent, kind)}") from None


SEEN_FILE = "seen.npz"   # optional in both kinds: StoredSeen, listed in export.json when written
HISTORY_FILE = "history.npz"        # both kinds, with model.history: StoredHistory
CATEGORIES_FILE = "categories.npz"  # optional in both kinds: StoredCategories (genres per row)
OPTIONAL_FILES = (SEEN_FILE, HISTORY_FILE, CATEGORIES_FILE)
HISTORY_INPUT = "history"           # the query tower's input of model.history (recipes.HISTORY)


@dataclass(frozen=True)
class StoredSeen:
    """The catalogue rows of the titles each user rated in training, stored with an export so
    that it can serve ``exclude_seen`` without the training data.

    ``user_ids`` [U] str (sorted, distinct: the users with a training rating), ``indptr``
    [U + 1] int64, ``rows`` [P] int64: user ``user_ids[i]``'s rows are
    ``rows[indptr[i]:indptr[i + 1]]`` (ascending; every row of a duplicated title).
    """

    user_ids: np.ndarray
    indptr: np.ndarray
    rows: np.ndarray

    @classmethod
    def from_seen(cls, seen, user_vocab: Sequence[str]) -> "StoredSeen":
        """From ``evaluation.SeenTitles`` (user index i = ``user_vocab[i - 1]``, 0 = OOV)."""
        vocab = np.asarray([""] + [str(u) for u in user_vocab], dtype=str)
        users = np.unique(seen.pair_users[seen.pair_users > 0])
        ex = seen.exclusions(users, np.full(len(users), -1, np.int64))  # -1: no own title
        order = np.argsort(vocab[users], kind="stable")
        counts = np.diff(ex.indptr)[order]
        rows = [np.sort(ex.cols[ex.indptr[i]: ex.indptr[i + 1]]) for i in order]
        return cls(vocab[users][order], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   np.concatenate(rows or [np.zeros(0, np.int64)]).astype(np.int64))

    def rows_of(self, users: Sequence[str]) -> list[np.ndarray]:
        """[n] user ids -> each one's seen rows (none for a user without training ratings)."""
        users = np.asarray([str(u) for u in users], dtype=str)
        at = np.searchsorted(self.user_ids, users)
        found = (at < len(self.user_ids)) & (self.user_ids[np.minimum(
            at, max(len(self.user_ids) - 1, 0))] == users) if len(self.user_ids) else (
            np.zeros(len(users), bool))
        return [self.rows[self.indptr[i]: self.indptr[i + 1]] if ok else
                np.zeros(0, np.int64) for i, ok in zip(at.tolist(), found.tolist())]

    def save(self, path: Path) -> None:
        """An uncompressed .npz of the three arrays (no pickled objects)."""
        with open(path, "wb") as f:
            np.savez(f, user_ids=self.user_ids, indptr=self.indptr, rows=self.rows)

    @classmethod
    def load(cls, path: Path, catalog_size: int) -> "StoredSeen":
        """Read :meth:`save`'s file (already checksummed by :func:`read_manifest`).

        Raises:
            ExportError: the arrays are not a consistent StoredSeen of a ``catalog_size``
            catalogue (one line naming the file and the fix).
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                users, indptr, rows = z["user_ids"], z["indptr"], z["rows"]
        except (OSError, ValueError, KeyError) as e:
            raise ExportError(f"{path}: not a seen-titles file ({e}); "
                              f"{_reexport(path.parent)}") from None
        ok = (users.dtype.kind == "U" and users.ndim == indptr.ndim == rows.ndim == 1
              and indptr.dtype.kind == rows.dtype.kind == "i" and len(indptr) == len(users) + 1
              and (indptr[0] == 0 if len(indptr) else False) and indptr[-1] == len(rows)
              and bool(np.all(np.diff(indptr) >= 0)) and bool(np.all(users[1:] > users[:-1]))
              and bool(np.all((rows >= 0) & (rows < catalog_size))))
        if not ok:
            raise ExportError(f"{path}: the seen titles are inconsistent (sorted user ids, "
                              f"offsets, rows below {catalog_size}); {_reexport(path.parent)}")
        return cls(users, indptr.astype(np.int64), rows.astype(np.int64))


def read_seen(path: Path, manifest: dict, catalog_size: int) -> "StoredSeen | None":
    """The export's :class:`StoredSeen` when ``export.json`` lists one, else None."""
    if SEEN_FILE not in manifest.get("files", {}):
        return None
    return StoredSeen.load(path / SEEN_FILE, catalog_size)


def _read_arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz written by an export (no pickled objects)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: not {what} ({e}); {_reexport(path.parent)}") from None


@dataclass(frozen=True)
class StoredCategories:
    """The category features of the catalogue (MovieLens: ``genres``, the union over the u.item
    entries of a title, as ``recipes.genre_table``), stored with every export so that it can
    serve ``filter`` without the training data.

    ``features``: name -> (values [V] str, indptr [M + 1] int64, ids [P] int64): catalogue row
    r has the values ``values[ids[indptr[r]:indptr[r + 1]]]``.
    """

    features: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]

    @classmethod
    def from_lists(cls, name: str, values: Sequence[str], per_row: Sequence[Sequence[int]]
                   ) -> "StoredCategories":
        """One feature: ``values`` [V] and per catalogue row its value indices."""
        counts = np.array([len(r) for r in per_row], dtype=np.int64)
        ids = np.array([i for r in per_row for i in sorted(r)], dtype=np.int64)
        return cls({name: (np.asarray([str(v) for v in values], dtype=str),
                           np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), ids)})

    def describe(self) -> dict[str, list[str]]:
        """{feature: its values} (what ``filter`` accepts; GET /metadata)."""
        return {name: [str(v) for v in values] for name, (values, _, _) in
                self.features.items()}

    def rows_without(self, feature: str, wanted: Sequence[str]) -> np.ndarray:
        """Sorted catalogue rows whose ``feature`` has none of ``wanted`` (what a filter on
        them excludes from the retrieval).

        Raises:
            KeyError: ``feature`` is not stored; ValueError: naming the first unknown value.
        """
        values, indptr, ids = self.features[feature]
        known = {str(v): i for i, v in enumerate(values.tolist())}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ValueError(unknown[0])
        hit = np.isin(ids, [known[w] for w in wanted])
        owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        keep = np.zeros(len(indptr) - 1, dtype=bool)
        keep[owner[hit]] = True
        return np.flatnonzero(~keep).astype(np.int64)

    def save(self, path: Path) -> None:
        """An uncompressed .npz: ``<feature>.values`` / ``.indptr`` / ``.ids`` per feature."""
        arrays = {f"{name}.{part}": a for name, parts in self.features.items()
                  for part, a in zip(("values", "indptr", "ids"), parts)}
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path, catalog_size: int) -> "StoredCategories":
        """Read :meth:`save`'s file (already checksummed by :func:`read_manifest`).

        Raises:
            ExportError: the arrays are not categories of a ``catalog_size`` catalogue.
        """
        arrays = _read_arrays(path, "a categories file")
        names = sorted({key.rsplit(".", 1)[0] for key in arrays})
        features = {}
        for name in names:
            parts = [arrays.get(f"{name}.{part}") for part in ("values", "indptr", "ids")]
            values, indptr, ids = parts
            ok = (all(p is not None and p.ndim == 1 for p in parts) and values.dtype.kind == "U"
                  and indptr.dtype.kind == ids.dtype.kind == "i"
                  and len(indptr) == catalog_size + 1 and indptr[0] == 0
                  and indptr[-1] == len(ids) and bool(np.all(np.diff(indptr) >= 0))
                  and bool(np.all((ids >= 0) & (ids < len(values)))))
            if not ok:
                raise ExportError(f"{path}: the categories {name!r} are inconsistent (values, "
                                  f"offsets over {catalog_size} rows, value ids); "
                                  f"{_reexport(path.parent)}")
            features[name] = (values, indptr.astype(np.int64), ids.astype(np.int64))
        if len(arrays) != 3 * len(names):
            raise ExportError(f"{path}: holds other arrays than <feature>.values / .indptr / "
                              f".ids; {_reexport(path.parent)}")
        return cls(features)


@dataclass(frozen=True)
class StoredHistory:
    """What the query tower of ``model.history`` reads, stored with an export: the training
    ratings by user (``index``: ``recipes.HistoryIndex``, the checkpoint's ``recipe.npz``
    arrays, so a history at any query time is the one ``twostage recommend`` computes) and the
    title id of each catalogue row (``row_titles`` [M] int64: a history sent with a request
    names catalogue items, the tower reads title ids) and the titles a history holds
    (``length``: the run's ``model.history_length``)."""

    index: HistoryIndex
    row_titles: np.ndarray
    length: int = HISTORY_LENGTH

    def lookup(self, user_ids, timestamps, given: Sequence | None = None) -> np.ndarray:
        """[N, length] title ids: each user's stored history strictly before its time
        (``HistoryIndex.lookup``), except where ``given`` [N] holds catalogue rows (oldest
        first; None: the stored one), whose most recent ``length`` replace it."""
        out = self.index.lookup(user_ids, timestamps, self.length)
        for i, rows in enumerate(given or ()):
            if rows is not None:
                out[i] = recent_history(self.row_titles[np.asarray(rows, dtype=np.int64)],
                                        self.length)
        return out

    def save(self, path: Path) -> None:
        """An uncompressed .npz: ``RecipeData.to_arrays``' history arrays, ``row_titles`` and
        ``history_length`` (0-d)."""
        with open(path, "wb") as f:
            np.savez(f, row_titles=self.row_titles, history_length=np.int64(self.length),
                     **RecipeData(history=self.index).to_arrays())

    @classmethod
    def load(cls, path: Path, catalog_size: int) -> "StoredHistory":
        """Read :meth:`save`'s file (already checksummed by :func:`read_manifest`).

        Raises:
            ExportError: the arrays are not training histories over a ``catalog_size``
            catalogue's title ids.
        """
        arrays = _read_arrays(path, "a history file")
        rows = arrays.get("row_titles")
        titles = arrays.get("history_titles")
        length = arrays.get("history_length", np.int64(HISTORY_LENGTH))  # older: always 50
        try:
            if length.dtype.kind != "i" or length.shape != () or int(length) < 1:
                raise ValueError(f"history_length must be one integer >= 1, got {length!r}")
            if rows is None or titles is None or rows.dtype.kind != "i" or rows.shape != (
                    catalog_size,) or (titles.size and not 0 <= titles.min() <= titles.max()
                                       <= rows.max()):
                raise ValueError(f"row_titles must be {catalog_size} title ids and every "
                                 "history title one of them")
            index = RecipeData.from_arrays(arrays).history
            if index is None:
                raise ValueError("no history arrays")
        except (KeyError, ValueError) as e:
            raise ExportError(f"{path}: the histories are inconsistent ({e}); "
                              f"{_reexport(path.parent)}") from None
        return cls(index, rows.astype(np.int64), int(length))


def recent_history(title_ids: np.ndarray, length: int = HISTORY_LENGTH) -> np.ndarray:
    """[length] int64: the most recent ``length`` of ``title_ids`` (oldest first),
    right-aligned and 0-padded on the left, as ``HistoryIndex.lookup`` lays out a history."""
    tail = np.asarray(title_ids, dtype=np.int64)[-length:] if length else np.zeros(0, np.int64)
    out = np.zeros(length, dtype=np.int64)
    out[length - len(tail):] = tail
    return out


def read_extras(path: Path, manifest: dict, catalog_size: int, kind: str = TORCH_KIND
                ) -> tuple["StoredSeen | None", "StoredCategories | None", "StoredHistory | None"]:
    """The export's optional data files that ``export.json`` lists (None where not), with the
    history required when the manifest says the model reads one (``recipes.history``).

    Raises:
        ExportError: a listed file is inconsistent, or a history model has no history file.
    """
    files = manifest.get("files", {})
    needs_history = bool((manifest.get("recipes") or {}).get("history"))
    if needs_history and HISTORY_FILE not in files:
        raise ExportError(f"{path / MANIFEST}: the model reads user histories but the export "
                          f"lists no {HISTORY_FILE}; {_reexport(path, kind)}")
    seen = read_seen(path, manifest, catalog_size)
    categories = (StoredCategories.load(path / CATEGORIES_FILE, catalog_size)
                  if CATEGORIES_FILE in files else None)
    history = (StoredHistory.load(path / HISTORY_FILE, catalog_size) if needs_history
               else None)
    return seen, categories, history


def history_rows(histories, rows_of_title: dict[str, list[int]]) -> list | None:
    """Per query, the catalogue rows of its given history (item ids, oldest first; the first
    row of a duplicated title: its rows share one title id), or None where none is given.

    Raises:
        KeyError: the first item id the catalogue lacks.
    """
    if histories is None:
        return None
    out = []
    for items in histories:
        if items is None:
            out.append(None)
            continue
        missing = [str(t) for t in items if str(t) not in rows_of_title]
        if missing:
            raise KeyError(missing[0])
        out.append(np.array([rows_of_title[str(t)][0] for t in items], dtype=np.int64))
    return out


def exported_files(root: Path) -> list[str]:
    """Relative posix paths of the files under an export folder ``root`` that ``export.json``
    lists: all but the marker and ``export.json`` itself (a linked file is listed, a linked
    folder not entered: read_manifest refuses any listed file that resolves outside)."""
    out = []
    for folder, _, names in os.walk(root):
        base = Path(folder).relative_to(root)
        out += [(base / n).as_posix() for n in names]
    return sorted(set(out) - {io.MARKER, MANIFEST})


def read_manifest(path: Path, kind: str = TORCH_KIND) -> dict:
    """``export.json`` of an export of ``kind`` (TORCH_KIND or SAVEDMODEL_KIND), verified before
    anything of the export is loaded.

    Every file a loader reads must be listed (a torch export: exactly :data:`FILES`; a
    SavedModel: every file in the folder, since TensorFlow reads what it finds), inside the
    folder (no link out of it) and unchanged (sha256).

    Args:
        path: the export folder.
        kind: the marker kind the folder must carry.
    Returns:
        The manifest (a dict).
    Raises:
        ExportError: one line naming the file and the fix.
    """
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"no export folder at {path}; write one with `twostage export --run "
                          f"RUN --to {_TARGETS[kind]} --out {path}`")
    found = io.marker_kind(path)
    if found != kind:
        what = (f"a twostage {found}" if found else "not a twostage export (no marker)")
        hint = (" (load a SavedModel with twostage.serving.load)"
                if found == SAVEDMODEL_KIND and kind == TORCH_KIND else "")
        label = "torch export" if kind == TORCH_KIND else "SavedModel export"
        raise ExportError(f"{path} is {what}, not a {label}{hint}")
    manifest = _read_json(path / MANIFEST, "export manifest", kind)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMATS[kind]:
        raise ExportError(f"{path / MANIFEST}: not a {FORMATS[kind]} manifest (written by an "
                          f"older version?); {_reexport(path, kind)}")
    if manifest.get("version") not in READ_VERSIONS:
        raise ExportError(f"{path / MANIFEST}: version {manifest.get('version')!r}; this "
                          f"twostage reads versions {', '.join(map(str, READ_VERSIONS))}: "
                          f"{_reexport(path, kind)}")
    files = manifest.get("files")
    if not io.is_checksum_map(files):
        raise ExportError(f"{path / MANIFEST}: 'files' must map paths to checksums")
    if kind == TORCH_KIND and set(files) - set(OPTIONAL_FILES) != set(FILES.values()):
        raise ExportError(f"{path / MANIFEST}: 'files' must list {sorted(FILES.values())} "
                          f"(and any of {', '.join(OPTIONAL_FILES)} the export has)")
    unlisted = sorted(set(exported_files(path)) - set(files)) if kind != TORCH_KIND else []
    if unlisted:
        raise ExportError(f"{path / unlisted[0]} is not listed in {MANIFEST}, so nothing proves "
                          f"the export wrote it; {_reexport(path, kind)}")
    root = path.resolve()
    for name, digest in files.items():
        file = path / name
        if os.path.lexists(file) and root not in file.resolve().parents:
            raise ExportError(f"{file} points outside the export ({file.resolve()}); an export "
                              f"is one self-contained folder: {_reexport(path, kind)}")
        if not file.is_file():
            raise ExportError(f"{file} is missing: the export is incomplete; "
                              f"{_reexport(path, kind)}")
        if io.sha256_file(file) != digest:
            raise ExportError(f"{file} changed after the export wrote it (checksum differs "
                              f"from {MANIFEST}); {_reexport(path, kind)}")
    return manifest


def _int_field(manifest: dict, name: str, path: Path, low: int = 0) -> int:
    value = manifest.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ExportError(f"{path / MANIFEST}: {name!r} must be an integer >= {low}, got "
                          f"{value!r}")
    return value


def _precision(manifest: dict, path: Path) -> str:
    """The export's inference precision, one of the config's PRECISIONS (another value would
    silently run in fp32, as an unknown precision of a run folder's config is refused)."""
    value = manifest.get("precision", "fp32")
    if value not in PRECISIONS:
        raise ExportError(f"{path / MANIFEST}: 'precision' must be one of "
                          f"{', '.join(PRECISIONS)}, got {value!r}; {_reexport(path)}")
    return value


class TorchExport:
    """A loaded torch export (see the module docstring); :meth:`recommend` serves it."""

    def __init__(self, path: Path, manifest: dict, spec: FeatureSpec, titles: np.ndarray,
                 index, programs: dict[str, Callable], threads: int = PROGRAM_THREADS) -> None:
        self.path = path
        self.threads = int(threads)
        self.manifest = manifest
        self.spec = spec
        self.titles = titles
        self.index = index
        self.programs = programs
        self.catalog_size = len(titles)
        self.num_candidates = _int_field(manifest, "num_candidates", path, 1)
        self.default_timestamp = _int_field(manifest, "default_timestamp", path)
        self.batch_size = _int_field(manifest, "eval_batch_size", path, 1)
        self.precision = _precision(manifest, path)
        self.seen: StoredSeen | None = None   # the training titles per user, when exported
        self.categories: StoredCategories | None = None   # genres per row, when exported
        self.history: StoredHistory | None = None   # the training histories (model.history)
        self.query_inputs = _query_inputs(manifest, path)

    @classmethod
    def load(cls, path: Path | str, threads: int = PROGRAM_THREADS) -> "TorchExport":
        """Validate and load a torch export folder. Its programs run when loaded and called:
        load only exports you trust (see :func:`load`). ``threads``: torch intra-op threads of
        each ``recommend`` call (:func:`owned_threads`).

        Raises:
            ExportError: one line naming the file and the fix.
        """
        from .index import Index

        path = Path(path)
        manifest = read_manifest(path)
        _precision(manifest, path)  # before any program is loaded, as the ints below
        for name, low in (("num_candidates", 1), ("default_timestamp", 0),
                          ("eval_batch_size", 1)):
            _int_field(manifest, name, path, low)
        try:
            spec = FeatureSpec.load(path / FILES["feature_spec"])
        except ValueError as e:
            raise ExportError(str(e)) from None
        if spec.fingerprint() != manifest.get("spec_fingerprint"):
            raise ExportError(f"{path / FILES['feature_spec']} is not the feature spec the "
                              f"programs were exported with; {_reexport(path)}")
        titles = _read_json(path / FILES["titles"], "titles")
        size = _int_field(manifest, "catalog_size", path, 1)
        if not isinstance(titles, list) or len(titles) != size or not all(
                isinstance(t, str) for t in titles):
            raise ExportError(f"{path / FILES['titles']} must list the {size} catalog titles "
                              "(strings) in index-row order")
        dim = _int_field(manifest, "embedding_dim", path, 1)
        try:
            index = Index.load(path / FILES["index"], expect_dim=dim, expect_ntotal=size)
        except (ValueError, FileNotFoundError) as e:
            raise ExportError(str(e)) from None
        inputs = _query_inputs(manifest, path)
        if (inputs == HISTORY_QUERY_INPUTS) != bool((manifest.get("recipes") or {}).get(
                "history")):
            raise ExportError(f"{path / MANIFEST}: 'inputs' and 'recipes' disagree on the "
                              f"history input; {_reexport(path)}")
        seen, categories, history = read_extras(path, manifest, size)
        programs = {name: _load_program(path / FILES[name])
                    for name in ("query_tower", "ranking_model")}
        export = cls(path, manifest, spec, np.asarray(titles, dtype=object), index, programs,
                     threads)
        export.seen, export.categories, export.history = seen, categories, history
        return export

    def known_user(self, user_id: str) -> bool:
        """Whether ``user_id`` was in the training data (else the OOV embedding serves it)."""
        return str(user_id) in set(self.spec.user_vocab)

    def recommend(self, user_ids: Sequence[str] | str, timestamps=None, k: int = 10,
                  histories=None) -> Served:
        """The re-ranked top ``k`` (1 <= k <= catalog size) for each query; ``timestamps``: [N]
        ints, one int, or None (the export's default time); ``histories`` (a model of
        ``model.history`` only): [N] item ids (titles, oldest first) that replace the query's
        stored history, or None entries keeping it. Runs on the export's own threads
        (:func:`owned_threads` with ``self.threads``), whatever the process's settings.

        Raises:
            ValueError: k out of range, bad queries, ``histories`` for a model without a
            history feature; KeyError: naming the first history item the catalogue lacks.
        """
        with owned_threads(self.threads):
            return self._recommend(user_ids, timestamps, k, histories)

    def query_features(self, users: np.ndarray, ts: np.ndarray, given=None
                       ) -> dict[str, np.ndarray]:
        """The query tower's inputs of [N] raw queries: the spec's encoding, and with a history
        model the histories (:meth:`StoredHistory.lookup`; ``given``: [N] catalogue rows or
        None per query, see :func:`history_rows`)."""
        arrays = dict(self.spec.encode_queries(users, ts))
        if self.history is not None:
            arrays[HISTORY_INPUT] = self.history.lookup(users, ts, given)
        elif given is not None and any(g is not None for g in given):
            raise ValueError(f"{self.path} has no history feature (its run was trained without "
                             "model.history): drop the histories")
        return arrays

    def _recommend(self, user_ids, timestamps, k: int, histories=None) -> Served:
        k = check_k(k, self.catalog_size)
        users, ts = query_arrays(user_ids, timestamps, self.default_timestamp)
        c = min(max(k, self.num_candidates), self.catalog_size)
        given = None if histories is None else history_rows(histories,
                                                            rows_of_title(self.titles))
        queries = self._run("query_tower", self.query_features(users, ts, given),
                            self.query_inputs)
        scores, rows = self.index.search(queries, c)
        # An approximate index pads with row -1: ranking score -inf, never scored as a title
        # (as twostage.pipeline.recommend).
        valid = rows >= 0
        ranking = np.full(rows.shape, -np.inf, dtype=np.float32)
        ranking[valid] = self._run("ranking_model", self.spec.encode(
            np.repeat(users, valid.sum(axis=1)), np.repeat(ts, valid.sum(axis=1)),
            self.titles[rows[valid]]), RANKING_INPUTS).reshape(-1)
        return top_k(Recommendations(rows, scores, ranking), self.titles, k)

    def _run(self, name: str, arrays: dict[str, np.ndarray], keys: tuple[str, ...]
             ) -> np.ndarray:
        """A program over ``arrays`` (encoded for all rows at once, then cut in batches of
        ``eval_batch_size``, as TorchBackend's inference: the same float rounding)."""
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(arrays[key])) for key in keys]
        n = int(tensors[0].shape[0])
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        parts = []
        with torch.no_grad(), autocast:
            for start in range(0, n, self.batch_size):
                batch = [t[start: start + self.batch_size] for t in tensors]
                parts.append(self.programs[name](*batch).float().numpy())
        return np.concatenate(parts)


def rows_of_title(titles: np.ndarray) -> dict[str, list[int]]:
    """Catalogue title -> its rows (ascending; several for a duplicated title)."""
    out: dict[str, list[int]] = {}
    for row, title in enumerate(titles.tolist()):
        out.setdefault(str(title), []).append(row)
    return out


def _query_inputs(manifest: dict, path: Path) -> tuple[str, ...]:
    """The query tower's inputs the manifest names: :data:`QUERY_INPUTS`, or with the history
    feature :data:`HISTORY_QUERY_INPUTS` (an export written before either was recorded: the
    former)."""
    inputs = tuple((manifest.get("inputs") or {}).get("query_tower") or QUERY_INPUTS)
    if inputs not in (QUERY_INPUTS, HISTORY_QUERY_INPUTS):
        raise ExportError(f"{path / MANIFEST}: unknown query-tower inputs {list(inputs)}; "
                          f"{_reexport(path)}")
    return inputs


def _load_program(path: Path) -> Callable:
    import torch
    try:
        program = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"{path}: not a TorchScript program torch {torch.__version__} can load "
                          f"({str(e).strip().splitlines()[0]}); "
                          f"{_reexport(path.parent)}") from None
    return program.eval()


def load(path: Path | str):
    """The export at ``path``, by its marker: a :class:`TorchExport`, or for a TFRS SavedModel
    ``tfrs_impl.serving.SavedModelExport`` (same ``recommend``; imports TensorFlow).

    An export is a program, not data: TorchScript files and SavedModels run the code they hold
    when loaded and called. **Load only exports you trust** (written by you, or by someone you
    trust and received over a channel you trust). The checks here (``export.json``'s sha256 of
    every file, no link out of the folder, known field values) catch a damaged or mixed-up
    export, not a malicious one: whoever can edit the files can recompute the checksums.

    Args:
        path: a folder written by ``twostage export``.
    Returns:
        A TorchExport or a SavedModelExport, both with ``recommend(users, timestamps, k)``.
    Raises:
        ExportError: one line naming the file and the fix; nothing of the export has run
        before its files are verified.
    """
    path = Path(path)
    kind = io.marker_kind(path) if path.is_dir() else None
    if kind in LOADERS:
        module, name = LOADERS[kind]
        return getattr(importlib.import_module(module), name).load(path)
    return TorchExport.load(path)


# --- python -m twostage.serving --------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Print ``twostage recommend``'s table for one user from an export."""
    p = argparse.ArgumentParser(prog="python -m twostage.serving", description=main.__doc__)
    p.add_argument("export", help="a folder written by `twostage export`")
    p.add_argument("--user", required=True, help="user id as in the ratings file")
    p.add_argument("--timestamp", type=int, default=None,
                   help="query time (unix seconds; default: the latest time in the data)")
    p.add_argument("-k", type=int, default=10, help="how many recommendations (default 10)")
    args = p.parse_args(argv)
    try:
        served = load(args.export)
        if not served.known_user(args.user):
            print(f"warning: user {io.printable(repr(args.user))} was not in the training data; "
                  "the out-of-vocabulary embedding is used", file=sys.stderr)
        ts = served.default_timestamp if args.timestamp is None else args.timestamp
        out = served.recommend([args.user], ts, args.k)
    except (ExportError, ValueError, OSError) as e:
        print(f"twostage.serving: error: {io.printable(e)}", file=sys.stderr)
        return 1
    c = min(max(args.k, served.num_candidates), served.catalog_size)
    print(io.printable(f"user {args.user} at {ts} (export {served.path}): {c} retrieved, "
                       "re-ranked"))
    print(f"{'#':>3}  {'retrieval':>9}  {'ranking':>7}  title")
    for i in range(out.titles.shape[1]):
        print(f"{i + 1:>3}  {out.retrieval_scores[0, i]:9.4f}  {out.ranking_scores[0, i]:7.4f}  "
              f"{io.printable(out.titles[0, i])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
