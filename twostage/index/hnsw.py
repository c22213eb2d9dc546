"""Hierarchical navigable small-world graph (approximate, no training)."""
from __future__ import annotations

import faiss
import numpy as np

from .base import Index, _positive


class HNSWIndex(Index):
    """``faiss.IndexHNSWFlat`` with the inner-product metric.

    Args:
      hnsw_m: links per node of the graph (memory and build time grow with it).
      ef_search: candidates explored per query (recall and query time grow with it); FAISS's
        serialization drops it, so ``load`` re-applies the stored value.

    Approximate, like :class:`~twostage.index.IVFIndex`: results may be padded with row -1 and
    score -inf at the end of a row.
    """

    kind = "hnsw"
    PARAMS = ("hnsw_m", "ef_search")
    FAISS_TYPE = faiss.IndexHNSWFlat

    def __init__(self, hnsw_m: int = 32, ef_search: int = 128) -> None:
        self.hnsw_m, self.ef_search = _positive(hnsw_m=hnsw_m, ef_search=ef_search)
        super().__init__()

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        return faiss.IndexHNSWFlat(embeddings.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)

    def _configure(self, index: faiss.Index) -> None:
        index.hnsw.efSearch = self.ef_search
