"""What ``twostage serve`` serves: a run folder or either serving export behind one call.

:func:`open_engine` loads a MovieLens run folder (``twostage run``) or an export (``twostage
export --to torch|tfrs``, through :func:`twostage.serving.load`) as an :class:`Engine`, whose
:meth:`Engine.serve` answers a batch of :class:`Query` objects (several requests' users at
once) with ``twostage recommend``'s two stages:

- retrieve C = min(max(k, num_candidates), catalogue) candidates per user (descending score,
  equal scores by ascending row), after removing the user's excluded rows inside the
  retrieval: the exclude-seen retrieval of the evaluation (``pipeline.retrieve_unseen``: C +
  the rows excluded for that user, then ``evaluation.drop_excluded``), so the candidates are
  exactly the first C rows not excluded, and only those are ranked;
- score each candidate with the ranking model, re-rank stably (``serving.top_k``).

A run folder and a torch export go through ``pipeline.recommend`` itself (the export's two
programs behind the backend calls it makes). The TFRS SavedModel computes both stages in one
graph, so it is asked for C + (excluded rows) candidates, all ranked, and the first C not
excluded are kept in retrieval order: the same answer, at the cost of ranking the excluded
candidates too.

Excluded rows: ``exclude_items`` (titles: every catalogue row of each), ``exclude_seen``
(every row of every title the user rated in the training split): for a run folder rebuilt
from the run's data (its config's data folder, no download; ``export.training_seen``, checked
against the run's feature-spec fingerprint), for an export read from its ``seen.npz``
(``serving.StoredSeen``, written by ``twostage export`` when the run's data was readable), and
a ``filter`` on a category feature (every row without one of the wanted values; the genres of
``export.catalog_genres``, an export's ``categories.npz``).

A query's own ``history`` (a model of ``model.history``): the query tower reads the given
titles instead of the user's stored history (:class:`PinnedHistories`); such a query is
retrieved alone, so its user id names it in the batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import evaluation, io, serving
from .pipeline import Recommendations, recommend
from .recipes import HISTORY_LENGTH, RecipeData

RUN_KIND = "run"   # twostage.rundir.KIND


class EngineError(ValueError):
    """PATH is not something ``twostage serve`` can serve (one line naming the fix)."""


@dataclass(frozen=True)
class Query:
    """One request's share of a batch: ``users`` [n] str, ``timestamps`` [n] int64, ``k`` and
    ``num_candidates`` (C before clipping to the catalogue), ``exclude_rows`` [e] int64
    catalogue rows excluded for every user of it, ``exclude_seen``, ``history`` [h] int64
    catalogue rows (oldest first) the query tower reads instead of the stored history (one
    user), or None."""

    users: np.ndarray
    timestamps: np.ndarray
    k: int
    num_candidates: int
    exclude_rows: np.ndarray
    exclude_seen: bool
    history: np.ndarray | None = None

    def candidates(self, catalog_size: int) -> int:
        """C: ``twostage recommend``'s min(max(k, num_candidates), catalogue)."""
        return min(max(self.k, self.num_candidates), catalog_size)


class Engine:
    """A loaded model and its catalogue; subclasses say how a batch's candidates are found.

    Attributes: ``kind`` ("run", "torch-export", "savedmodel"), ``path``, ``titles`` [M] (the
    catalogue in index-row order), ``default_timestamp``, ``num_candidates`` (the default C
    floor), ``index_kind``, ``spec_fingerprint`` (None when the folder records none),
    ``seen`` (serving.StoredSeen or None) and ``seen_note`` (why not, when None), ``vocab``
    (the training users: a frozenset of ids), ``categories`` (serving.StoredCategories or None,
    what ``filter`` reads) and ``categories_note``, ``history_feature`` (the query tower reads
    user histories).
    """

    kind: str
    path: Path
    titles: np.ndarray
    default_timestamp: int
    num_candidates: int
    index_kind: str
    spec_fingerprint: str | None = None
    time_range: tuple[int, int] | None = None   # of the training data, when known
    threads: int = serving.PROGRAM_THREADS
    seen: serving.StoredSeen | None = None
    seen_note: str = ("this export holds no seen titles (the run's data was not readable when "
                      "it was exported): export it again where the data is, or serve the run")
    categories: serving.StoredCategories | None = None
    categories_note: str = ("this export holds no item categories (the run's data was not "
                            "readable when it was exported): export it again where the data "
                            "is, or serve the run")
    history_feature: bool = False

    def _finish(self) -> None:
        """Derived lookups, once the subclass has set the attributes above."""
        self.catalog_size = len(self.titles)
        self.rows_of_title: dict[str, list[int]] = {}
        for row, title in enumerate(self.titles.tolist()):
            self.rows_of_title.setdefault(title, []).append(row)

    def known_users(self, users: np.ndarray) -> np.ndarray:
        """[n] bool: the user was in the training data (else the OOV embedding serves it)."""
        return np.array([str(u) in self.vocab for u in users], dtype=bool)

    # --- what a kind provides ----------------------------------------------------------------

    def candidates(self, users: np.ndarray, timestamps: np.ndarray, c: int,
                   exclude: evaluation.Exclusions | None, history: np.ndarray | None = None
                   ) -> Recommendations:
        """C candidates per user in retrieval order, ranked; rows of ``exclude`` never among
        them (padding: row -1, ranking score -inf). ``history``: catalogue rows the query
        tower reads as the history of ``users`` (one user), or None (the stored one)."""
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        """Versions of the libraries this engine runs on (the frameworks it has loaded)."""
        import faiss
        loaded = {name: sys.modules[name].__version__ for name in ("torch", "tensorflow")
                  if name in sys.modules}
        return {"faiss": faiss.__version__, **loaded}

    # --- shared ------------------------------------------------------------------------------
    def rows_of(self, titles) -> np.ndarray:
        """Catalogue rows of ``titles`` (every row of a duplicated title); KeyError naming the
        first title the catalogue lacks."""
        rows = []
        for title in titles:
            if title not in self.rows_of_title:
                raise KeyError(title)
            rows += self.rows_of_title[title]
        return evaluation.sorted_unique(np.asarray(rows, dtype=np.int64))

    def filter_rows(self, wanted: dict[str, list[str]]) -> np.ndarray:
        """Catalogue rows a ``filter`` excludes: those lacking every wanted value of some
        feature (values of one feature: any of them; several features: all of them).

        Raises:
            KeyError: naming the first feature without categories here; ValueError: naming
            the first unknown value (as "feature: value").
        """
        if self.categories is None:
            raise KeyError(next(iter(wanted), ""))
        out = [np.zeros(0, np.int64)]
        for feature, values in wanted.items():
            if feature not in self.categories.features:
                raise KeyError(feature)
            try:
                out.append(self.categories.rows_without(feature, values))
            except ValueError as e:
                raise ValueError(f"{feature}: {e.args[0]}") from None
        return evaluation.sorted_unique(np.concatenate(out))

    def history_of(self, titles) -> np.ndarray:
        """[h] catalogue rows of a given history (item ids, oldest first; a duplicated
        title's first row). KeyError naming the first title the catalogue lacks."""
        return serving.history_rows([titles], self.rows_of_title)[0]

    def serve(self, queries: list[Query]) -> list[serving.Served]:
        """The re-ranked top k of every query of a batch, in order. Queries with the same C are
        retrieved and ranked together (one call per distinct C; a query with its own history
        alone), on the engine's own threads (``serving.owned_threads``)."""
        out: list[serving.Served | None] = [None] * len(queries)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.candidates(self.catalog_size), -1 if q.history is None else i),
                              []).append(i)
        with serving.owned_threads(self.threads):
            for (c, _), members in groups.items():
                for i, served in zip(members, self._serve_group([queries[i] for i in members],
                                                                c)):
                    out[i] = served
        return out

    def _serve_group(self, queries: list[Query], c: int) -> list[serving.Served]:
        users = np.concatenate([q.users for q in queries])
        stamps = np.concatenate([q.timestamps for q in queries])
        recs = self.candidates(users, stamps, c, self._exclusions(queries), queries[0].history)
        served = serving.top_k(recs, self.titles, max(q.k for q in queries))
        out, start = [], 0
        for q in queries:
            part = slice(start, start + len(q.users))
            out.append(serving.Served(*(a[part, :q.k] for a in dataclasses.astuple(served))))
            start = part.stop
        return out

    def _exclusions(self, queries: list[Query]) -> evaluation.Exclusions | None:
        """Per user of the batch, the union of its query's ``exclude_rows`` and (when asked)
        its training titles' rows; None when nothing is excluded."""
        if not any(q.exclude_seen or q.exclude_rows.size for q in queries):
            return None
        per_user: list[np.ndarray] = []
        for q in queries:
            seen = self._seen_rows(q.users) if q.exclude_seen else [np.zeros(0, np.int64)] * len(
                q.users)
            per_user += [evaluation.sorted_unique(np.concatenate([s, q.exclude_rows]))
                         for s in seen]
        counts = np.array([len(r) for r in per_user], dtype=np.int64)
        return evaluation.Exclusions(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                                     np.concatenate(per_user).astype(np.int64),
                                     self.catalog_size)

    def _seen_rows(self, users: np.ndarray) -> list[np.ndarray]:
        """The catalogue rows of the training titles of each of ``users``."""
        if self.seen is None:
            raise ValueError(f"exclude_seen is not available: {self.seen_note}")
        return self.seen.rows_of(users)


class StagesEngine(Engine):
    """Two stages with the backend calls ``pipeline.recommend`` makes (``retrieve``,
    ``ranking_scores``): a run folder's backend, or :class:`ExportStages`."""

    def __init__(self, stages, spec, **fields) -> None:
        self.stages, self.spec = stages, spec
        for name, value in fields.items():
            setattr(self, name, value)
        self._finish()
        self.vocab = frozenset(spec.user_vocab)
        self.history_feature = getattr(stages.recipe, "history", None) is not None
        self.row_titles = np.asarray(spec.title_index(list(self.titles)), dtype=np.int64)
        bounds = [int(b) for b in spec.ts_boundaries]   # the data's time range, as recommend's
        self.time_range = ((min(bounds), max(max(bounds), self.default_timestamp)) if bounds
                           else None)

    def candidates(self, users, timestamps, c, exclude, history=None) -> Recommendations:
        with self._pinned(users, history):
            return recommend(self.stages, users, timestamps, c, self.titles, exclude=exclude,
                             block=max(len(users), 1))

    @contextlib.contextmanager
    def _pinned(self, users: np.ndarray, history: np.ndarray | None):
        """Within the block the stages' histories answer ``users`` (one user) with
        ``history`` (catalogue rows; the stages read ``recipe.history.lookup``)."""
        if history is None:
            yield
            return
        if not self.history_feature:
            raise ValueError("this model has no history feature (trained without "
                             "model.history): drop history")
        recipe = self.stages.recipe
        self.stages.recipe = dataclasses.replace(recipe, history=PinnedHistories(
            recipe.history, {str(u): self.row_titles[history] for u in users}))
        try:
            yield
        finally:
            self.stages.recipe = recipe


class PinnedHistories:
    """A ``recipes.HistoryIndex`` whose :meth:`lookup` answers the users of ``pinned`` (user
    id -> title ids, oldest first) with their given history (the most recent HISTORY_LENGTH,
    laid out as ``HistoryIndex.lookup``) and every other user from ``base``."""

    def __init__(self, base, pinned: dict[str, np.ndarray]) -> None:
        self.base, self.pinned = base, pinned

    def lookup(self, user_ids, timestamps, length: int = HISTORY_LENGTH) -> np.ndarray:
        out = self.base.lookup(user_ids, timestamps, length)
        for i, user in enumerate(np.asarray(user_ids, dtype=object).tolist()):
            if str(user) in self.pinned:
                out[i] = serving.recent_history(self.pinned[str(user)], length)
        return out


class ExportStages:
    """A :class:`twostage.serving.TorchExport`'s programs and index as the two backend calls of
    ``pipeline.recommend``: the computations of ``TorchExport.recommend`` (the same encoding,
    batches of ``eval_batch_size`` and index)."""

    def __init__(self, export: serving.TorchExport) -> None:
        self.export = export
        # what a backend's ``recipe`` holds for its query tower: the stored histories
        self.recipe = (RecipeData(history=export.history.index) if export.history is not None
                       else None)

    def retrieve(self, users, timestamps, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N, k'], rows [N, k']) of the export's index for the queries' embeddings."""
        x = self.export
        arrays = dict(x.spec.encode_queries(users, timestamps))
        if self.recipe is not None:
            arrays[serving.HISTORY_INPUT] = self.recipe.histories(users, timestamps,
                                                                  x.history.length)
        queries = x._run("query_tower", arrays, x.query_inputs)
        return x.index.search(queries, k)

    def ranking_scores(self, users, timestamps, titles) -> np.ndarray:
        """[N] float32 ranking probabilities of (user, timestamp, title) rows."""
        x = self.export
        return x._run("ranking_model", x.spec.encode(users, timestamps, titles),
                      serving.RANKING_INPUTS).reshape(-1)


class SavedModelEngine(Engine):
    """A TFRS SavedModel export (``tfrs_impl.serving.SavedModelExport``): both stages in one
    graph, so candidates are taken from its ``recommend`` of C + (excluded rows) candidates."""

    kind = serving.SAVEDMODEL_KIND
    index_kind = "brute-force (TFRS BruteForce, exact)"

    def __init__(self, export, threads: int) -> None:
        self.export, self.path, self.threads = export, Path(export.path), threads
        self.titles = np.array([t.decode("utf-8") for t in export.model.titles.numpy()],
                               dtype=object)
        self.default_timestamp = export.default_timestamp
        self.num_candidates = export.num_candidates
        self.vocab = export.user_vocab
        self.seen = export.seen
        self.categories = export.categories
        self.history_feature = export.history is not None
        self._finish()

    def candidates(self, users, timestamps, c, exclude, history=None) -> Recommendations:
        extra = int(exclude.counts().max(initial=0)) if exclude is not None else 0
        wide = min(max(c + extra, self.num_candidates), self.catalog_size)
        given = None if history is None else [self.titles[history].tolist()] * len(users)
        # all `wide` candidates, ranked
        got = self.export.recommend(users, timestamps, wide, histories=given)
        return first_unexcluded(got, c, exclude)


def first_unexcluded(got: serving.Served, c: int, exclude: evaluation.Exclusions | None
                     ) -> Recommendations:
    """Every retrieved candidate of ``got`` (in any order) -> the first ``c`` in retrieval order
    (score descending, equal scores by ascending row) that ``exclude`` does not hold, with
    their ranking scores; padding (row -1, scores -inf) where fewer remain."""
    rows = got.rows.astype(np.int64)
    by_retrieval = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows),
                               -got.retrieval_scores), axis=-1)
    rows, scores, ranking = (np.take_along_axis(a, by_retrieval, axis=1)
                             for a in (rows, got.retrieval_scores, got.ranking_scores))
    dropped = (exclude.contains(rows) if exclude is not None else np.zeros(rows.shape, bool)) | (
        rows < 0)
    keep = np.argsort(dropped, axis=1, kind="stable")[:, :c]
    pad = np.take_along_axis(dropped, keep, axis=1)
    rows, scores, ranking = (np.take_along_axis(a, keep, axis=1).copy()
                             for a in (rows, scores, ranking))
    rows[pad], scores[pad], ranking[pad] = -1, -np.inf, -np.inf
    return Recommendations(rows, scores.astype(np.float32), ranking.astype(np.float32))


# --- loading ---------------------------------------------------------------------------------
def open_engine(path: Path | str, threads: int = serving.PROGRAM_THREADS,
                backend: str | None = None, seen: bool = True) -> Engine:
    """The engine of a run folder or an export, by the folder's marker.

    Args:
        path: a MovieLens run folder (``twostage run``) or an export (``twostage export``).
        threads: torch intra-op threads of each batch (``serving.owned_threads``).
        backend: a run folder's saved backend (default: the first saved, as ``recommend``).
        seen: rebuild a run's training split for ``exclude_seen`` (a run folder only).
    Returns:
        An :class:`Engine`.
    Raises:
        EngineError: PATH is a schema run, or no folder; ExportError / RunDirError for a
        damaged export or run folder (one line naming the file and the fix).
    """
    path = Path(path)
    kind = io.marker_kind(path) if path.is_dir() else None
    if not path.is_dir():
        raise EngineError(f"{path} is not a folder: pass a run folder (`twostage run --out`) or "
                          "an export (`twostage export --out`)")
    if kind == RUN_KIND:
        return _run_engine(path, threads, backend, seen)
    if kind not in (serving.TORCH_KIND, serving.SAVEDMODEL_KIND):
        raise EngineError(f"{path} is {'a twostage ' + kind if kind else 'not a twostage folder'}"
                          "; `twostage serve` serves MovieLens run folders and the exports of "
                          "`twostage export --to torch|tfrs`")
    if backend is not None:
        raise EngineError(f"--backend {backend} picks a run folder's backend; {path} is an "
                          "export (it has one): drop --backend")
    if kind == serving.SAVEDMODEL_KIND:
        return SavedModelEngine(serving.load(path), threads)
    export = serving.TorchExport.load(path, threads=threads)
    return StagesEngine(ExportStages(export), export.spec, kind=serving.TORCH_KIND, path=path,
                        titles=export.titles, default_timestamp=export.default_timestamp,
                        num_candidates=export.num_candidates, index_kind=export.index.kind,
                        spec_fingerprint=export.spec.fingerprint(), threads=threads,
                        seen=export.seen, categories=export.categories)


def _run_engine(path: Path, threads: int, backend: str | None, seen: bool) -> StagesEngine:
    """A run folder's backend as ``twostage recommend`` and ``twostage export`` load it."""
    from .export import catalog_genres, load_run_backend, training_seen
    from .rundir import RunDir

    run = RunDir.open(path)
    model = load_run_backend(run, backend)
    model.build_index(run.corpus_titles)
    engine = StagesEngine(model, model.spec, kind=RUN_KIND, path=path,
                          titles=run.corpus_titles, default_timestamp=run.max_timestamp,
                          num_candidates=model.config.eval.num_candidates,
                          index_kind=model.config.index.kind,
                          spec_fingerprint=run.spec_fingerprint, threads=threads)
    engine.backend_name = model.name
    engine.seen, engine.seen_note = (training_seen(model.config, run.spec_fingerprint) if seen
                                     else (None, "started with --no-seen"))
    engine.categories, why = catalog_genres(model.config, model.spec, run.corpus_titles,
                                            model.recipe)
    engine.categories_note = why or engine.categories_note
    return engine
