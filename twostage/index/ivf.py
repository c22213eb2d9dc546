"""Inverted-file index: k-means cells, a few of them searched per query (approximate)."""
from __future__ import annotations

import warnings

import faiss
import numpy as np

from .base import Index, _positive


class IVFIndex(Index):
    """``faiss.IndexIVFFlat`` with the inner-product metric.

    Args:
      nlist: k-means cells, trained on the first ``add``'s vectors [M, D] (FAISS's fixed default
        seed: reproducible). Above M it is clipped to M with a UserWarning (nprobe with it).
      nprobe: cells searched per query, 1 <= nprobe <= nlist; nprobe == nlist is exact.

    Approximate: a query whose probed cells hold fewer than k' candidates gets padded results
    (row -1, score -inf, at the end); evaluate with ids, not against exact positive scores.
    """

    kind = "ivf"
    PARAMS = ("nlist", "nprobe")
    FAISS_TYPE = faiss.IndexIVFFlat

    def __init__(self, nlist: int = 64, nprobe: int = 8) -> None:
        nlist, nprobe = _positive(nlist=nlist, nprobe=nprobe)
        if nprobe > nlist:
            raise ValueError(f"ivf: nprobe={nprobe} exceeds nlist={nlist}: a query can search at "
                             f"most the {nlist} cells there are; lower nprobe (--ivf-nprobe) or "
                             "raise nlist (--ivf-nlist)")
        super().__init__()
        self.nlist, self.nprobe = nlist, nprobe
        self._quantizer: faiss.Index | None = None   # keep the coarse quantizer alive

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        m, d = embeddings.shape
        nlist = self.nlist
        if nlist > m:
            warnings.warn(f"ivf: nlist={nlist} exceeds the {m} vectors to train on; using "
                          f"nlist={m}" + (f" and nprobe={m}" if self.nprobe > m else ""),
                          stacklevel=3)
            nlist = m
        self._quantizer = faiss.IndexFlatIP(d)
        index = self._ivf(self._quantizer, d, nlist)
        index.train(embeddings)
        return index

    def _ivf(self, quantizer: faiss.Index, d: int, nlist: int) -> faiss.Index:
        """The untrained FAISS IVF index over ``quantizer`` (IVFPQIndex stores codes instead)."""
        return faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)

    def _configure(self, index: faiss.Index) -> None:
        index.nprobe = min(self.nprobe, index.nlist)   # serialization does not keep nprobe
