"""Exact maximum inner product: the serving counterpart of TFRS's ``BruteForce`` layer."""
from __future__ import annotations

import contextlib
import threading

import faiss
import numpy as np

from .base import Index

BLAS_MIN_QUERIES = 20
"""Batches of at least this many queries are scored as one matrix product (FAISS's BLAS path),
smaller ones query by query (its SIMD scan). FAISS 1.15 moved its switch to nx * d >= 128,000
(``distance_compute_blas_threshold``), i.e. 4,000 queries of dim 32; below it every query scans
the whole catalogue from memory. Measured here (300,000 x 32, one thread): the scan takes 18 ms
a query at any batch size, the product 2.6 ms a query at 16 and 0.9 ms at 1,000; 20 queries is
FAISS's switch before 1.15."""

_BLAS_SWITCH = threading.Lock()    # the switch is a FAISS global: one search changes it at a time


@contextlib.contextmanager
def blas_for_batches(dim: int):
    """Within the block, FAISS's exact searches (``IndexFlatIP``, ``faiss.knn``) of dim ``dim``
    score batches of ``BLAS_MIN_QUERIES`` or more queries with BLAS; restored on exit."""
    with _BLAS_SWITCH:
        before = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES * dim  # BLAS: nx*d >= it
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = before


class FlatIndex(Index):
    """``faiss.IndexFlatIP``: every query is scored against every candidate.

    Exact: ``search(queries [N, D], k)`` returns the true top-min(k, M) rows, never padding, with
    scores equal to ``queries @ candidates.T`` up to float32 rounding. No parameters. Batches of
    ``BLAS_MIN_QUERIES`` or more go through one BLAS matrix product (FAISS's switch is set for
    the call and restored).
    """

    kind = "flat"
    PARAMS = ()
    FAISS_TYPE = faiss.IndexFlatIP

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        return faiss.IndexFlatIP(embeddings.shape[1])

    def is_exact(self) -> bool:
        return True

    def _faiss_search(self, encoded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(encoded) < BLAS_MIN_QUERIES:
            return self._index.search(encoded, k)
        with blas_for_batches(encoded.shape[1]):
            return self._index.search(encoded, k)
