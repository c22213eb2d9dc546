"""Hierarchical navigable small-world graph (approximate, no training), with the MIPS-to-L2
augmentation for inner-product search."""
from __future__ import annotations

import faiss
import numpy as np

from .base import Index, _positive


class HNSWIndex(Index):
    """``faiss.IndexHNSWFlat``, searching the two-tower model's inner products.

    Args:
      hnsw_m: links per node of the graph (memory and build time grow with it).
      ef_search: candidates explored per query (recall and query time grow with it); FAISS's
        serialization drops it, so ``load`` re-applies the stored value.
      ef_construction: candidates explored per insertion while building (graph quality).
      mips: True (default): the MIPS-to-L2 augmentation, the usual advice because raw inner product is not a metric:
        candidates x become [x, sqrt(R^2 - |x|^2)] and queries [q, 0], with R the largest
        candidate norm of the first ``add``; then |q' - x'|^2 = |q|^2 + R^2 - 2 q.x, so the L2
        order is the inner-product order (exactly: a flat L2 search over the encoded vectors is
        the exact inner-product top-k, tested) and the inner product is recovered as
        (|q|^2 + R^2 - distance) / 2 (float64, then float32). Measured on Gaussian embeddings
        whose norms vary (4,000 x 16, M=8, efConstruction 40): recall@10 0.54 augmented against
        0.99 raw at efSearch 64 (the augmented points crowd a sphere cap, all distances near
        R^2, which misleads the greedy graph walk). On a trained model's embeddings, what the
        index serves, it is the other way round, hence the default: ``benchmarks.index`` (torch, 5 retrieval
        epochs on ml-100k, catalogue enlarged to 100,000 items as TFRS's efficient-serving
        example does, M=32, efConstruction 40) measured recall@100 0.90 augmented against 0.31
        raw at efSearch 128, and 0.99 against 0.40 at efSearch 512. False: FAISS's
        inner-product HNSW on the raw vectors (``--no-index-mips``).
      mips_radius: R, fixed by the first ``add`` (stored, so a loaded index encodes the same
        way); later candidates longer than R are refused: add the whole catalogue at once.

    Approximate, like :class:`~twostage.index.IVFIndex`: results may be padded with row -1 and
    score -inf at the end of a row.
    """

    kind = "hnsw"
    PARAMS = ("hnsw_m", "ef_search", "ef_construction", "mips", "mips_radius")
    SEARCH_PARAMS = ("ef_search",)
    FAISS_TYPE = faiss.IndexHNSWFlat
    # Files of FaissIndex / twostage.index before the augmentation: raw inner-product graphs.
    LEGACY_DEFAULTS = {"ef_construction": 40, "mips": False, "mips_radius": None}

    def __init__(self, hnsw_m: int = 32, ef_search: int = 128, ef_construction: int = 40,
                 mips: bool = True, mips_radius: float | None = None) -> None:
        self.hnsw_m, self.ef_search, self.ef_construction = _positive(
            hnsw_m=hnsw_m, ef_search=ef_search, ef_construction=ef_construction)
        self.mips = bool(mips)
        self.mips_radius = None if mips_radius is None else float(mips_radius)
        self.extra_dims = int(self.mips)
        super().__init__()

    def metric(self) -> int:
        return faiss.METRIC_L2 if self.mips else faiss.METRIC_INNER_PRODUCT

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        if self.mips:
            self.mips_radius = float(np.sqrt((embeddings.astype(np.float64) ** 2).sum(1).max()))
        index = faiss.IndexHNSWFlat(embeddings.shape[1] + self.extra_dims, self.hnsw_m,
                                    self.metric())
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _configure(self, index: faiss.Index) -> None:
        index.hnsw.efSearch = self.ef_search

    def _encode(self, vectors: np.ndarray, queries: bool) -> np.ndarray:
        if not self.mips:
            return vectors
        if queries:
            extra = np.zeros(len(vectors))
        else:
            norms2 = (vectors.astype(np.float64) ** 2).sum(1)
            r2 = self.mips_radius ** 2
            if (norms2 > r2 * (1 + 1e-6)).any():
                raise ValueError(f"hnsw (mips): a candidate is longer ({np.sqrt(norms2.max()):.4g})"
                                 f" than the radius {self.mips_radius:.4g} fixed by the first "
                                 "add; build the index with the whole catalogue in one add")
            extra = np.sqrt(np.maximum(r2 - norms2, 0.0))
        return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)

    def _scores(self, queries: np.ndarray, raw: np.ndarray) -> np.ndarray:
        if not self.mips:
            return raw
        q2 = (queries.astype(np.float64) ** 2).sum(1, keepdims=True)
        return ((q2 + self.mips_radius ** 2 - raw.astype(np.float64)) / 2).astype(np.float32)
