"""The TFRS serving export: one SavedModel with the retrieval stage and, beside it, both stages
(retrieve with BruteForce, re-rank with the ranking model). The twin of torch_impl/serving.py
(TorchScript programs + FAISS index of the same two stages).

After ``m = tf.saved_model.load(path)``:

- ``m(queries)`` -> (scores [B, k] float32, titles [B, k] string): BruteForce(k) over the
  catalog, ``k`` fixed at export (the seed's serving call); also the ``serving_default``
  signature returning {"scores", "titles"}.
- ``m.recommend(queries | {"k": int32 scalar})`` (and the ``recommend`` signature) ->
  {"titles" [B, k] string, "rows" [B, k] int64 catalog positions, "retrieval_scores",
  "ranking_scores" [B, k] float32}: ``twostage recommend``'s path
  (``twostage.pipeline.recommend``) in one graph: retrieve ``C = min(max(k, num_candidates), M)``
  rows (``tf.math.top_k``: descending, equal scores by ascending row, as FAISS + Index.search),
  score every (user, candidate) with the ranking model, and keep the top k by ranking score
  (``tf.math.top_k`` again: equal scores keep the retrieval order, as the stable argsort of
  ``Recommendations.reranked``). ``k`` outside [1, M] fails with InvalidArgumentError naming
  the limit.
- ``m.catalog_size``, ``m.num_candidates``, ``m.default_timestamp`` (int variables) and
  ``m.user_vocab`` (the training users; others get the out-of-vocabulary embedding).

``queries`` = {"user_id": [B] string, "timestamp": [B] int64}. Written atomically through
``twostage.io.replace_directory(kind=SAVEDMODEL_KIND)``, with ``export.json`` (the sha256 of
every file of the SavedModel, verified by the loader before TensorFlow reads any);
:class:`SavedModelExport` serves it with the numpy ``recommend`` of
``twostage.serving.TorchExport`` (the torch export's loader, which lives in the core so that
it needs no torch_impl).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from twostage import io
from twostage import serving as served

from . import index as index_lib
from .features import to_tensors

SAVEDMODEL_KIND = served.SAVEDMODEL_KIND  # twostage.io marker kind of a SavedModel export
QUERY_SIGNATURE = {"user_id": tf.TensorSpec([None], tf.string, name="user_id"),
                   "timestamp": tf.TensorSpec([None], tf.int64, name="timestamp")}
RECOMMEND_SIGNATURE = {**QUERY_SIGNATURE, "k": tf.TensorSpec([], tf.int32, name="k")}
# the query tower of model.history also reads the query's history: [B, H] int64 title ids
HISTORY_SPEC = {served.HISTORY_INPUT: tf.TensorSpec([None, None], tf.int64, name="history")}
HISTORY_QUERY_SIGNATURE = {**QUERY_SIGNATURE, **HISTORY_SPEC}
HISTORY_RECOMMEND_SIGNATURE = {**RECOMMEND_SIGNATURE, **HISTORY_SPEC}


class ServingModule(tf.Module):
    """Raw queries -> (scores [B, k], titles [B, k]) through a title-identified BruteForce."""

    def __init__(self, query_model, candidate_model, corpus_titles: np.ndarray, k: int):
        super().__init__()
        titles = np.asarray(corpus_titles, dtype=object)
        self.index = index_lib.build_index(query_model, candidate_model, titles, k=k,
                                           identifiers="rows")
        self.titles = tf.Variable(to_tensors({"movie_title": titles})["movie_title"],
                                  trainable=False, name="titles")
        self.catalog_size = tf.Variable(len(titles), dtype=tf.int32, trainable=False,
                                        name="catalog_size")

    def _retrieve(self, queries, k):
        scores, rows = self.index({key: queries[key] for key in (
            "user_id", "timestamp", served.HISTORY_INPUT) if key in queries}, k=k)
        return scores, tf.cast(rows, tf.int64)

    @tf.function(input_signature=[QUERY_SIGNATURE])
    def __call__(self, queries):
        scores, rows = self._retrieve(queries, None)
        return scores, tf.gather(self.titles, rows)

    @tf.function(input_signature=[QUERY_SIGNATURE])
    def serve(self, queries):
        scores, titles = self.__call__(queries)
        return {"scores": scores, "titles": titles}


class TwoStageModule(ServingModule):
    """:class:`ServingModule` plus ``recommend``: retrieve C candidates, re-rank them with
    ``ranking_model`` (tfrs_impl.models.RankingModel: raw features -> [B, 1] probabilities)."""

    def __init__(self, query_model, candidate_model, ranking_model, corpus_titles: np.ndarray,
                 k: int, num_candidates: int, default_timestamp: int, user_vocab):
        super().__init__(query_model, candidate_model, corpus_titles, k)
        self.ranking_model = ranking_model
        self.num_candidates = tf.Variable(int(num_candidates), dtype=tf.int32, trainable=False,
                                          name="num_candidates")
        self.default_timestamp = tf.Variable(int(default_timestamp), dtype=tf.int64,
                                             trainable=False, name="default_timestamp")
        self.user_vocab = tf.Variable(tf.constant([str(u) for u in user_vocab], tf.string),
                                      trainable=False, name="user_vocab")

    @tf.function(input_signature=[RECOMMEND_SIGNATURE])
    def recommend(self, queries):
        return self._recommend(queries)

    def _recommend(self, queries):
        k, size = queries["k"], self.catalog_size
        checks = [tf.debugging.assert_greater_equal(k, 1, message="k must be >= 1"),
                  tf.debugging.assert_less_equal(
                      k, size, message="k exceeds the catalog size (the number of exported "
                      "titles, catalog_size); pass k <= catalog_size")]
        with tf.control_dependencies(checks):
            c = tf.minimum(tf.maximum(k, self.num_candidates), size)
        scores, rows = self._retrieve(queries, c)
        titles = tf.gather(self.titles, rows)                                  # [B, C]
        users, stamps = queries["user_id"], queries["timestamp"]
        ranking = self.ranking_model({"user_id": tf.repeat(users, c),
                                      "timestamp": tf.repeat(stamps, c),
                                      "movie_title": tf.reshape(titles, [-1])})
        ranking = tf.reshape(ranking, tf.shape(rows))                          # [B, C]
        top, order = tf.math.top_k(ranking, k=k)   # ties: lower index = earlier retrieval first
        return {"titles": tf.gather(titles, order, batch_dims=1),
                "rows": tf.gather(rows, order, batch_dims=1),
                "retrieval_scores": tf.gather(scores, order, batch_dims=1),
                "ranking_scores": top}


class HistoryTwoStageModule(TwoStageModule):
    """:class:`TwoStageModule` of a query tower with the history feature (``model.history``):
    every call also takes ``history`` [B, H] int64 title ids (0 = padding), the queries'
    histories (``twostage.serving.StoredHistory.lookup``)."""

    @tf.function(input_signature=[HISTORY_QUERY_SIGNATURE])
    def __call__(self, queries):
        scores, rows = self._retrieve(queries, None)
        return scores, tf.gather(self.titles, rows)

    @tf.function(input_signature=[HISTORY_QUERY_SIGNATURE])
    def serve(self, queries):
        scores, titles = self.__call__(queries)
        return {"scores": scores, "titles": titles}

    @tf.function(input_signature=[HISTORY_RECOMMEND_SIGNATURE])
    def recommend(self, queries):
        return self._recommend(queries)


def export_saved_model(directory: Path | str, retrieval_model, corpus_titles: np.ndarray,
                       k: int = index_lib.DEFAULT_K, force: bool = False, *,
                       ranking_model=None, num_candidates: int = 10,
                       default_timestamp: int = 0, user_vocab=(), seen=None,
                       categories=None, history=None) -> Path:
    """Export query model + BruteForce(k) over ``corpus_titles`` (the catalog, titles returned),
    and with ``ranking_model`` (a ``tfrs_impl.models.RankingModel``) the ``recommend``
    signature (``num_candidates``: C's floor; ``default_timestamp`` and ``user_vocab`` stored
    for loaders; ``seen``: a ``twostage.serving.StoredSeen`` written as ``seen.npz`` for
    ``exclude_seen``; ``categories``: a ``StoredCategories`` written as ``categories.npz`` for
    ``filter``; ``history``: the ``StoredHistory`` written as ``history.npz`` that a query tower
    of ``model.history`` reads, required then, with a ranking model), atomically. An existing
    folder is replaced only if it is a SavedModel export of ours (``force``: anything, moved
    aside to ``<name>.replaced-<time>``, never deleted)."""
    reads_history = retrieval_model.query_model.embedding_model.history_embedding is not None
    if reads_history and (history is None or ranking_model is None):
        raise ValueError("the query tower reads user histories (model.history): export it with "
                         "its ranking model and the run's training histories "
                         "(twostage.serving.StoredHistory)")
    movie = retrieval_model.candidate_model.embedding_model
    genres = movie.genre_embedding is not None
    releases = movie.release_embedding is not None
    if ranking_model is None:
        module = ServingModule(retrieval_model.query_model, retrieval_model.candidate_model,
                               corpus_titles, k)
        signatures = {"serving_default": module.serve}
    else:
        module = (HistoryTwoStageModule if reads_history else TwoStageModule)(
            retrieval_model.query_model, retrieval_model.candidate_model, ranking_model,
            corpus_titles, k, num_candidates, default_timestamp, user_vocab)
        signatures = {"serving_default": module.serve, "recommend": module.recommend}

    def write(tmp: Path) -> None:
        # Keras warns once per subclassed model that it has no get_config(); irrelevant here
        # (the SavedModel is loaded with tf.saved_model.load, not rebuilt from configs).
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            tf.saved_model.save(module, str(tmp), signatures=signatures)
        finally:
            logger.setLevel(level)
        for name, data in ((served.SEEN_FILE, seen), (served.CATEGORIES_FILE, categories),
                           (served.HISTORY_FILE, history if reads_history else None)):
            if data is not None:
                data.save(tmp / name)
        io.write_json(tmp / served.MANIFEST, {
            "format": served.SAVEDMODEL_FORMAT, "version": served.VERSION,
            "tensorflow": tf.__version__, "signatures": sorted(signatures),
            "recipes": {"genres": genres, "history": reads_history, "release_date": releases},
            "files": {f: io.sha256_file(tmp / f) for f in served.exported_files(tmp)}})
    return io.replace_directory(Path(directory), write, SAVEDMODEL_KIND, force=force)


def load_saved_model(directory: Path | str):
    """``tf.saved_model.load``; call the result with raw queries (see the module docstring)."""
    return tf.saved_model.load(str(directory))


class SavedModelExport:
    """A SavedModel written by :func:`export_saved_model` with a ranking model, behind the
    ``recommend`` of ``twostage.serving.TorchExport`` (same arguments, same ``Served``; the
    checks of k and of the queries are twostage.serving's). ``twostage.serving.load`` returns
    one for a SavedModel folder."""

    def __init__(self, path: Path, model) -> None:
        self.path = path
        self.model = model
        self.catalog_size = int(model.catalog_size.numpy())
        self.num_candidates = int(model.num_candidates.numpy())
        self.default_timestamp = int(model.default_timestamp.numpy())
        self.user_vocab = frozenset(v.decode("utf-8") for v in model.user_vocab.numpy())
        self.seen: served.StoredSeen | None = None   # the training titles per user, if exported
        self.categories: served.StoredCategories | None = None   # genres per row, if exported
        self.history: served.StoredHistory | None = None   # training histories (model.history)
        self.titles = np.array([t.decode("utf-8") for t in model.titles.numpy()], dtype=object)

    @classmethod
    def load(cls, path: Path | str) -> "SavedModelExport":
        """Verify ``export.json`` (every file listed and unchanged:
        ``twostage.serving.read_manifest``), then load the SavedModel. Its graph runs when
        called: load only exports you trust (``twostage.serving.load``).

        Raises:
            twostage.serving.ExportError: one line naming the file and the fix, when ``path``
            is not a verified SavedModel export of ours with ``recommend``.
        """
        path = Path(path)
        manifest = served.read_manifest(path, SAVEDMODEL_KIND)
        try:
            model = load_saved_model(path)
        except Exception as e:  # verified files TF cannot read: another TF version's graph
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise served.ExportError(f"{path}: TensorFlow {tf.__version__} cannot load this "
                                     f"SavedModel ({first}); export the run again with "
                                     f"`twostage export --to tfrs --out {path}`") from None
        if not hasattr(model, "recommend"):
            raise served.ExportError(f"{path} holds the retrieval stage only (no `recommend`: "
                                     "written without a ranking model); export the run again "
                                     "with `twostage export --to tfrs`")
        export = cls(path, model)
        export.seen, export.categories, export.history = served.read_extras(
            path, manifest, export.catalog_size, SAVEDMODEL_KIND)
        return export

    def known_user(self, user_id: str) -> bool:
        """Whether ``user_id`` was in the training data (else the OOV embedding serves it)."""
        return str(user_id) in self.user_vocab

    def recommend(self, user_ids, timestamps=None, k: int = 10, histories=None
                  ) -> "served.Served":
        """The signature's top ``k`` for each query as numpy (see twostage.serving;
        ``histories`` as ``TorchExport.recommend``'s)."""
        k = served.check_k(k, self.catalog_size)
        users, ts = served.query_arrays(user_ids, timestamps, self.default_timestamp)
        given = None if histories is None else served.history_rows(
            histories, served.rows_of_title(self.titles))
        queries = {"user_id": tf.constant(users.astype(str), tf.string),
                   "timestamp": tf.constant(ts, tf.int64), "k": tf.constant(k, tf.int32)}
        if self.history is not None:
            queries[served.HISTORY_INPUT] = tf.constant(self.history.lookup(users, ts, given))
        elif given is not None and any(g is not None for g in given):
            raise ValueError(f"{self.path} has no history feature (its run was trained without "
                             "model.history): drop the histories")
        out = self.model.recommend(queries)
        titles = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(
            out["titles"].numpy())
        return served.Served(titles, out["rows"].numpy().astype(np.int64),
                             out["retrieval_scores"].numpy(), out["ranking_scores"].numpy())
