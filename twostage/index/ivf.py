"""Inverted-file index: k-means cells, a few of them searched per query (approximate)."""
from __future__ import annotations

import math

import faiss
import numpy as np

from .base import Index, _positive


class IVFIndex(Index):
    """``faiss.IndexIVFFlat`` with the inner-product metric.

    Args:
      nlist: k-means cells, trained on the first ``add``'s vectors [M, D] (FAISS's fixed default
        seed: reproducible), at most M. None: the FAISS guideline ``guideline_nlist(M)`` =
        4*sqrt(M) (the wiki's range is 4*sqrt(M) to 16*sqrt(M); the low end keeps cells full
        enough to train on), with nprobe clipped to it.
      nprobe: cells searched per query, 1 <= nprobe <= nlist; nprobe == nlist is exact.

    Approximate: a query whose probed cells hold fewer than k' candidates gets padded results
    (row -1, score -inf, at the end); evaluate with ids, not against exact positive scores.
    """

    kind = "ivf"
    PARAMS = ("nlist", "nprobe")
    SEARCH_PARAMS = ("nprobe",)
    FAISS_TYPE = faiss.IndexIVFFlat

    def __init__(self, nlist: int | None = None, nprobe: int = 8) -> None:
        (nprobe,) = _positive(nprobe=nprobe)
        if nlist is not None:
            (nlist,) = _positive(nlist=nlist)
        if nlist is not None and nprobe > nlist:
            raise ValueError(f"ivf: nprobe={nprobe} exceeds nlist={nlist}: a query can search at "
                             f"most the {nlist} cells there are; lower nprobe (--index-nprobe) or "
                             "raise nlist (--index-nlist)")
        super().__init__()
        self.nlist, self.nprobe = nlist, nprobe
        self._quantizer: faiss.Index | None = None   # keep the coarse quantizer alive

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        m, d = embeddings.shape
        nlist = guideline_nlist(m) if self.nlist is None else self.nlist
        if nlist > m:
            raise ValueError(f"{self.kind}: nlist={nlist} exceeds the catalog's {m} items (k-means "
                             f"needs a vector per cell); set --index-nlist to at most {m}, or "
                             "leave it unset for the FAISS guideline 4*sqrt(N) = "
                             f"{guideline_nlist(m)}")
        self._quantizer = faiss.IndexFlatIP(d)
        index = self._ivf(self._quantizer, d, nlist)
        index.train(embeddings)
        return index

    def _ivf(self, quantizer: faiss.Index, d: int, nlist: int) -> faiss.Index:
        """The untrained FAISS IVF index over ``quantizer`` (IVFPQIndex stores codes instead)."""
        return faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)

    def _configure(self, index: faiss.Index) -> None:
        # serialization does not keep nprobe; with the guideline nlist it may exceed the cells
        index.nprobe = min(self.nprobe, index.nlist)

    def _check_search(self, values: dict) -> None:
        cells = self.nlist if self._index is None else int(self._index.nlist)
        if cells is not None and values.get("nprobe", 0) > cells:
            raise ValueError(f"{self.kind}: nprobe={values['nprobe']} exceeds nlist={cells}: a "
                             f"query can search at most the {cells} cells there are; lower "
                             "nprobe (--index-nprobe)")


def guideline_nlist(num_items: int) -> int:
    """FAISS's rule of thumb for the number of IVF cells, 4*sqrt(N) (at least 1, at most N)."""
    return max(1, min(num_items, int(round(4 * math.sqrt(num_items)))))
