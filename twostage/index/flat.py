"""Exact maximum inner product: the serving counterpart of TFRS's ``BruteForce`` layer."""
from __future__ import annotations

import faiss
import numpy as np

from .base import Index


class FlatIndex(Index):
    """``faiss.IndexFlatIP``: every query is scored against every candidate.

    Exact: ``search(queries [N, D], k)`` returns the true top-min(k, M) rows, never padding, with
    scores equal to ``queries @ candidates.T`` up to float32 rounding. No parameters.
    """

    kind = "flat"
    PARAMS = ()
    FAISS_TYPE = faiss.IndexFlatIP

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        return faiss.IndexFlatIP(embeddings.shape[1])

    def is_exact(self) -> bool:
        return True
