"""Exact maximum inner product: the serving counterpart of TFRS's ``BruteForce`` layer.

Large catalogues are searched by :func:`twostage.index.exact.top_k_inner_product` (the same
BLAS products as FAISS, then a threshold filter instead of FAISS's per-score heap), the rest by
FAISS's ``IndexFlatIP``; both return the same rows and scores (see ``FlatIndex``)."""
from __future__ import annotations

import contextlib
import threading

import faiss
import numpy as np

from .base import Index
from .exact import MAX_ROWS, blas_threads_settable, top_k_inner_product
from .threads import configure_threads

BLAS_MIN_QUERIES = 20
"""Batches of at least this many queries are scored as one matrix product (FAISS's BLAS path),
smaller ones query by query (its SIMD scan). FAISS 1.15 moved its switch to nx * d >= 128,000
(``distance_compute_blas_threshold``), i.e. 4,000 queries of dim 32; below it every query scans
the whole catalogue from memory. Measured here (300,000 x 32, one thread): the scan takes 18 ms
a query at any batch size, the product 2.6 ms a query at 16 and 0.9 ms at 1,000; 20 queries is
FAISS's switch before 1.15."""

EXACT_MIN_ITEMS = 250_000
EXACT_MIN_QUERIES = 256
EXACT_MAX_K = 256
"""Catalogues of at least ``EXACT_MIN_ITEMS`` rows, searched with at least ``EXACT_MIN_QUERIES``
queries and k <= ``EXACT_MAX_K``, go through ``twostage.index.exact`` (blocked products and a
threshold filter); the rest through FAISS. Measured on this 2-core machine (random data, dim
32, one run, ms of ``twostage.index.exact`` / FAISS): 1,000 queries x 1,000,000 items k=100:
619 / 898 (the products alone: 478); k=10: 538 / 1,045; k=1,000: 1,397 / 1,026 (its
candidates grow with k); 300,000 items: 264 / 295; 100,000: 139 / 99 (fixed costs); 200
queries: 167 / 176; 50 queries: 76 / 61 (one worker). The limits lie between those points."""
_SAFE_BOUND = 1e37   # D * max|query| * max|item| below it: no product or partial sum overflows

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
    ``BLAS_MIN_QUERIES`` or more are scored with BLAS matrix products: large catalogues and
    batches with small k (``EXACT_MIN_ITEMS``, ``EXACT_MIN_QUERIES``, ``EXACT_MAX_K``) through
    ``twostage.index.exact``, where FAISS's heap over every score would cost as much as the
    product; the rest through FAISS (its switch set for the call and restored). Both give the
    same BLAS scores and rows, equal scores by ascending row, except among rows tied at the
    k-th place: ``twostage.index.exact`` keeps the lowest (``tf.math.top_k``'s rule), FAISS
    some of them (measured on duplicated rows: the lowest, the highest or a run between, by k
    and layout). Products that could overflow float32 stay on FAISS (its inf/NaN handling).
    """

    kind = "flat"
    PARAMS = ()
    FAISS_TYPE = faiss.IndexFlatIP

    def __init__(self) -> None:
        super().__init__()
        self._largest = (0, 0.0)   # (rows seen, max |element| over them): the overflow bound

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        return faiss.IndexFlatIP(embeddings.shape[1])

    def is_exact(self) -> bool:
        return True

    def _faiss_search(self, encoded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(encoded) < BLAS_MIN_QUERIES:
            return self._index.search(encoded, k)
        if self._blocked(encoded, k):
            return top_k_inner_product(encoded, self._vectors(), k, threads=configure_threads())
        with blas_for_batches(encoded.shape[1]):
            return self._index.search(encoded, k)

    def _vectors(self) -> np.ndarray:
        """The held candidates [M, D] float32: a view of FAISS's storage, no copy."""
        n, d = self.ntotal, self._index.d
        return faiss.rev_swig_ptr(self._index.get_xb(), n * d).reshape(n, d)

    def _blocked(self, queries: np.ndarray, k: int) -> bool:
        """Whether ``twostage.index.exact`` searches this batch (it is the faster one, and
        every score is certainly finite)."""
        n = self.ntotal
        if not (EXACT_MIN_ITEMS <= n < MAX_ROWS and k <= EXACT_MAX_K
                and len(queries) >= EXACT_MIN_QUERIES
                and blas_threads_settable()):
            return False
        done, largest = self._largest
        if done < n:                              # add() appended rows since the last search
            largest = max(largest, float(np.abs(self._vectors()[done:]).max()))
            self._largest = (n, largest)
        return queries.shape[1] * float(np.abs(queries).max()) * largest < _SAFE_BOUND
