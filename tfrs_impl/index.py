"""Exact top-k retrieval with ``tfrs.layers.factorized_top_k.BruteForce``, as the seed serves it.

Scores are dot products ``query_model(x) @ candidate_model(title).T``; ``tf.math.top_k`` returns
them descending, ties in corpus order. Duplicate titles of the corpus (u.item) have identical
embeddings and so occupy adjacent slots, as in the seed's index.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from .features import to_tensors

DEFAULT_K = 100          # the seed's BruteForce(query_model, k=100)
CANDIDATE_BATCH = 100    # the seed's movies.batch(100).map(candidate_model)


def candidate_embeddings(candidate_model, titles: np.ndarray, batch_size: int = 4096
                         ) -> tf.Tensor:
    """[M] str -> [M, D] float32, computed in batches."""
    titles = to_tensors({"movie_title": np.asarray(titles, dtype=object)})["movie_title"]
    parts = [candidate_model(titles[i: i + batch_size])
             for i in range(0, int(titles.shape[0]), batch_size)]
    return tf.concat(parts, axis=0)


def build_index(query_model, candidate_model, titles: np.ndarray, k: int = DEFAULT_K,
                identifiers: Literal["rows", "titles"] = "rows"
                ) -> tfrs.layers.factorized_top_k.BruteForce:
    """BruteForce over the candidate embeddings of ``titles`` [M]; it returns int32 row
    positions into ``titles`` (``identifiers="rows"``, unambiguous with duplicate titles) or the
    title strings (``"titles"``, the seed's and the SavedModel's choice). ``k`` is clamped to M."""
    titles = np.asarray(titles, dtype=object)
    if len(titles) == 0:
        raise ValueError("cannot build an index over an empty corpus")
    embeddings = candidate_embeddings(candidate_model, titles, CANDIDATE_BATCH)
    ids = (tf.range(len(titles), dtype=tf.int64) if identifiers == "rows"
           else to_tensors({"movie_title": titles})["movie_title"])
    index = tfrs.layers.factorized_top_k.BruteForce(query_model, k=min(k, len(titles)))
    return index.index(embeddings, ids)


def query(index: tfrs.layers.factorized_top_k.BruteForce, user_ids: np.ndarray,
          timestamps: np.ndarray, k: int, batch_size: int = 4096,
          extras: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for raw queries [N]: (scores [N, k'] float32 descending, ids [N, k']) with
    k' = min(k, corpus size); ids as the index was built (int64 rows or str titles).
    ``extras``: the queries' recipe columns (``twostage.recipes.query_extras``: the histories
    [N, H] of ``config.model.history``, the user features [N] str)."""
    size = int(index._candidates.shape[0])
    k = min(int(k), size)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    user_ids = np.asarray(user_ids, dtype=object)
    timestamps = np.asarray(timestamps, dtype=np.int64)
    scores, ids = [], []
    for i in range(0, len(user_ids), batch_size):
        raw = {"user_id": user_ids[i: i + batch_size],
               "timestamp": timestamps[i: i + batch_size]}
        for key, value in (extras or {}).items():
            raw[key] = value[i: i + batch_size]
        batch = to_tensors(raw)
        s, j = index(batch, k=k)
        scores.append(s.numpy())
        ids.append(j.numpy())
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    ids_all = np.concatenate(ids)
    if ids_all.dtype == object:  # tf.string -> bytes
        ids_all = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(ids_all)
    return np.concatenate(scores).astype(np.float32), ids_all
