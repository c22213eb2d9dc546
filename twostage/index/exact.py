"""Exact top-k inner products over a large catalogue, close to the cost of the matrix product.

FAISS's exact search (``IndexFlatIP`` on its BLAS path) scores a block of the catalogue with one
matrix product, then pushes every score through a heap or reservoir one at a time: on 2 cores
that scalar loop costs as much as the product itself (docs/indexes.md, "Candidate indexes at catalog
scale": 1.93x the product alone at 1,000 queries x 1,000,000 items).

Here each worker thread owns a chunk of the queries and walks the catalogue in tiles small
enough to stay in its core's cache: one single-threaded BLAS product per tile, then a
vectorised filter against each query's running k-th best score (its threshold). The filter
reads the tile once, as the maximum of every ``GROUP`` consecutive catalogue rows per query;
only the few groups above a query's threshold are looked at row by row, and only their rows
above it become candidates. Once the first tile has set the thresholds almost nothing passes,
so the whole search costs about one product plus one read of each score from cache.

Ranking is by (score descending, row ascending) exactly: candidates are held as int64 keys
that pack the score's order-preserving bits above the complemented row, so an ``np.partition``
of keys is an exact top-k with ``tf.math.top_k``'s tie rule (the lower row wins).

Threads: the workers run numpy's OpenBLAS single-threaded (set for the call and restored, as
threadpoolctl does); :func:`blas_threads_settable` says whether this numpy's BLAS allows it.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

GROUP = 16                  # catalogue rows per maximum of the filter's first pass
SCORES_PER_TILE = 1 << 18   # a worker's product: 1 MiB of float32, read back from its cache
MIN_TILE_ROWS, MAX_TILE_ROWS = 256, 1 << 16
MIN_CHUNK_QUERIES = 32      # fewer queries per worker: its thread costs more than it saves
MAX_ROWS = 1 << 32          # rows are packed into a key's low 32 bits
_EMPTY = np.iinfo(np.int64).min    # an unused candidate slot: below every real key
_ROW_MASK = np.int64(0xFFFFFFFF)


# --- numpy's BLAS threads ------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _openblas() -> tuple | None:
    """(get, set) of the OpenBLAS numpy links (found among the loaded libraries, under numpy's
    folder: FAISS's own OpenBLAS is OpenMP-threaded and left alone), or None (not Linux, or
    numpy on another BLAS)."""
    base = os.path.dirname(np.__file__)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(p for p in paths if p.startswith(base)):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    set_.argtypes = [ctypes.c_int]
                    return get, set_
    return None


def blas_threads_settable() -> bool:
    """True when numpy's BLAS threads can be set here (the workers need one thread each)."""
    return _openblas() is not None


_BLAS_LOCK = threading.Lock()   # one search at a time changes numpy's BLAS threads


@contextlib.contextmanager
def _single_threaded_blas():
    """numpy's OpenBLAS runs each product on one thread within the block; restored on exit.
    Other threads' numpy products meanwhile run single-threaded too (correct, slower)."""
    funcs = _openblas()
    if funcs is None:
        raise RuntimeError("numpy's BLAS threads cannot be set here (not OpenBLAS on Linux); "
                           "check blas_threads_settable() before top_k_inner_product")
    get, set_ = funcs
    with _BLAS_LOCK:
        before = int(get())
        set_(1)
        try:
            yield
        finally:
            set_(before)


# --- candidate keys --------------------------------------------------------------------------
def _keys(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64 keys, larger for (higher score, then lower row)."""
    s = (scores + np.float32(0)).astype(np.float32, copy=False)  # -0.0 -> +0.0: equal scores
    bits = s.view(np.int32).astype(np.int64)
    bits ^= (bits >> 31) & 0x7FFFFFFF          # negative floats: reverse the magnitude order
    return (bits << 32) | (_ROW_MASK - rows)


def _unkey(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32, rows int64) of keys made by ``_keys``."""
    bits = keys >> 32
    bits ^= (bits >> 31) & 0x7FFFFFFF
    return bits.astype(np.int32).view(np.float32), _ROW_MASK - (keys & _ROW_MASK)


class _Candidates:
    """The running top-k of a chunk of n queries, fed tiles of ``rows`` catalogue rows [rows, n]
    in ascending row order.

    ``keys`` [n, cap] holds each query's candidates (``count`` slots used); ``threshold`` is its
    k-th best score at its last compaction: a later row scoring at most that ranks below k
    earlier rows, so it is dropped. A tile's first pass takes, per query, the maximum of each
    ``GROUP`` rows ``i, i + rows/GROUP, ...`` (contiguous slices: a vectorised reduction) and
    keeps the groups above the threshold; those are filtered row by row and inserted in batches
    (``flush``), which keeps numpy's per-call cost off the per-tile path."""

    def __init__(self, first: np.ndarray, k: int, rows: int) -> None:
        """Seed from the first tile's scores [w >= k, n] (rows 0 .. w-1)."""
        w, n = first.shape
        self.k, self.cap, self.rows = k, k + max(32, k // 4), rows
        top = np.partition(_keys(first.T, np.arange(w, dtype=np.int64)), w - k, axis=1)[:, w - k:]
        self.keys = np.full((n, self.cap), _EMPTY, np.int64)
        self.keys[:, :k] = top
        self.count = np.full(n, k, np.int64)
        self.threshold = _unkey(top.min(axis=1))[0]
        self._best = np.empty((rows // GROUP, n), np.float32)
        self._above = np.empty((rows // GROUP, n), bool)
        self._pending: list[tuple[np.ndarray, np.ndarray, int]] = []   # (scores, hits, start)
        self._waiting, self._flush_at = 0, 8 * n

    def offer(self, scores: np.ndarray, start: int) -> None:
        """Take the candidates among a tile's scores [w, n] of rows start .. start+w-1."""
        w, n = scores.shape
        if w != self.rows:                      # the catalogue's last, shorter tile
            self.flush()
            query, row = np.divmod(np.flatnonzero(scores.T > self.threshold[:, None]), w)
            self._insert(query, start + row, scores[row, query])
            return
        np.max(scores.reshape(GROUP, w // GROUP, n), axis=0, out=self._best)
        hits = np.flatnonzero(np.greater(self._best, self.threshold, out=self._above))
        if hits.size:           # a hit = group * n + query; take its GROUP scores
            self._pending.append((np.take(scores.reshape(GROUP, -1), hits, axis=1), hits,
                                  start))
            self._waiting += hits.size
            if self._waiting >= self._flush_at:
                self.flush()

    def flush(self) -> None:
        """Filter the pending groups row by row and insert what beats the thresholds."""
        if not self._pending:
            return
        values = np.concatenate([v for v, _, _ in self._pending], axis=1)    # [GROUP, P]
        hits = np.concatenate([h for _, h, _ in self._pending])
        start = np.repeat([s for _, _, s in self._pending], [h.size for _, h, _ in self._pending])
        self._pending, self._waiting = [], 0
        group, query = np.divmod(hits, len(self.count))
        member, hit = np.divmod(np.flatnonzero(values > self.threshold[query]), hits.size)
        query = query[hit]
        # _insert wants them by query; a 16-bit stable argsort is a radix sort
        order = np.argsort(query.astype(np.uint16) if len(self.count) <= 1 << 16 else query,
                           kind="stable")
        member, hit = member[order], hit[order]
        self._insert(query[order], start[hit] + group[hit] + member * (self.rows // GROUP),
                     values[member, hit])

    def _insert(self, query: np.ndarray, row: np.ndarray, score: np.ndarray) -> None:
        """Add candidates; ``query`` ascending (each query's candidates contiguous)."""
        if query.size == 0:
            return
        new = _keys(score, row.astype(np.int64, copy=False))
        per_query = np.bincount(query, minlength=len(self.count))
        rank = np.arange(query.size) - (np.cumsum(per_query) - per_query)[query]
        full = np.flatnonzero(self.count + per_query > self.cap)
        if full.size:
            self._compact(full)
            over = full[per_query[full] > self.cap - self.k]
            if over.size:          # more than the free slots even so: select with them now
                query, rank, new = self._merge(over, query, rank, new, per_query)
        self.keys[query, self.count[query] + rank] = new
        self.count += per_query

    def _merge(self, over: np.ndarray, query: np.ndarray, rank: np.ndarray, new: np.ndarray,
               per_query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keep the top k of ``over``'s compacted candidates plus their new ones; returns the
        other queries' (query, rank, new) and zeroes ``over``'s ``per_query``."""
        at = np.full(len(self.count), -1)
        at[over] = np.arange(over.size)
        mine = at[query] >= 0
        wide = np.full((over.size, self.k + int(per_query[over].max())), _EMPTY, np.int64)
        wide[:, : self.k] = self.keys[over, : self.k]
        wide[at[query[mine]], self.k + rank[mine]] = new[mine]
        self._keep_top(over, wide)
        per_query[over] = 0
        return query[~mine], rank[~mine], new[~mine]

    def _compact(self, queries: np.ndarray) -> None:
        """Keep only the top k of ``queries``' candidates."""
        self._keep_top(queries, self.keys[queries])

    def _keep_top(self, queries: np.ndarray, candidates: np.ndarray) -> None:
        """``queries``' slots := the top k of ``candidates`` [len(queries), >= k]; their
        thresholds rise to the k-th best."""
        k, width = self.k, candidates.shape[1]
        top = np.partition(candidates, width - k, axis=1)[:, width - k:]
        self.keys[queries] = _EMPTY
        self.keys[queries, :k] = top
        self.count[queries] = k
        self.threshold[queries] = _unkey(top.min(axis=1))[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n, k], rows [n, k]) best first, equal scores by ascending row."""
        self.flush()
        self._compact(np.arange(len(self.keys)))
        return _unkey(np.sort(self.keys[:, : self.k], axis=1)[:, ::-1])


# --- the search ------------------------------------------------------------------------------
def tile_rows(chunk_queries: int) -> int:
    """Catalogue rows per product for a worker of ``chunk_queries`` queries: about
    ``SCORES_PER_TILE`` scores, a multiple of ``GROUP``."""
    rows = min(MAX_TILE_ROWS, max(MIN_TILE_ROWS, SCORES_PER_TILE // max(1, chunk_queries)))
    return rows - rows % GROUP


def _chunks(num_queries: int, threads: int) -> list[tuple[int, int]]:
    """(start, stop) query ranges, one per worker, none under ``MIN_CHUNK_QUERIES``."""
    parts = max(1, min(threads, num_queries // MIN_CHUNK_QUERIES))
    edges = np.linspace(0, num_queries, parts + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _search_chunk(queries: np.ndarray, catalog: np.ndarray, k: int, tile: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One worker: the exact top-k of ``queries`` [n, D] over the whole catalogue."""
    m, qt = len(catalog), queries.T
    first = min(m, max(tile, k))
    candidates = _Candidates(np.matmul(catalog[:first], qt), k, tile)
    out = np.empty((tile, len(queries)), np.float32)
    for start in range(first, m, tile):
        stop = min(m, start + tile)
        # The last tile is the catalogue's last ``tile`` rows, of which only the new ones are
        # offered: OpenBLAS rounds tiny products (its small-matrix kernels) differently.
        low = stop - tile
        scores = np.matmul(catalog[low:stop], qt, out=out)
        candidates.offer(scores[start - low:], start)
    return candidates.result()


def top_k_inner_product(queries: np.ndarray, catalog: np.ndarray, k: int, *,
                        threads: int = 1, tile: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries @ catalog.T`` per query.

    Args:
      queries: [N, D] float32.
      catalog: [M, D] float32, M < 2**32 (e.g. a view of a FAISS flat index's storage).
      k: 1 <= k <= M.
      threads: workers, each with a chunk of the queries and one BLAS thread.
      tile: catalogue rows per product (default ``tile_rows`` of the chunk), a multiple of
        ``GROUP``.

    Returns:
      (scores [N, k] float32, rows [N, k] int64): best first, equal scores by ascending row,
      and of several rows tied at the k-th place the lowest (``tf.math.top_k``'s rule). Scores
      are the BLAS products' float32 values. The caller keeps them finite: NaN from an
      overflowing product would be dropped.

    Raises:
      ValueError: k out of range, too many rows, or a tile not a multiple of ``GROUP``.
      RuntimeError: numpy's BLAS threads cannot be set (``blas_threads_settable()``).
    """
    n, m = len(queries), len(catalog)
    if not 1 <= k <= m:
        raise ValueError(f"k={k} must be in [1, {m}] (the catalogue's rows)")
    if m >= MAX_ROWS:
        raise ValueError(f"{m:,} catalogue rows: at most {MAX_ROWS - 1:,} fit the 32-bit row keys")
    if tile is not None and (tile < GROUP or tile % GROUP):
        raise ValueError(f"tile={tile} must be a positive multiple of GROUP={GROUP}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    catalog = np.ascontiguousarray(catalog, dtype=np.float32)   # no copy for FAISS's storage
    ranges = _chunks(n, threads)
    size = tile or tile_rows(ranges[0][1] - ranges[0][0])

    def work(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        return _search_chunk(queries[bounds[0]:bounds[1]], catalog, k, size)

    with _single_threaded_blas():
        if len(ranges) == 1:
            results = [work(ranges[0])]
        else:
            with ThreadPoolExecutor(len(ranges)) as pool:
                results = list(pool.map(work, ranges))
    return (np.concatenate([s for s, _ in results]), np.concatenate([r for _, r in results]))
