"""Compressed indexes for memory: IVF with product quantization, and an 8-bit scalar quantizer."""
from __future__ import annotations

import faiss
import numpy as np

from .base import Index, _positive
from .ivf import IVFIndex

PQ_BITS = 8               # 256 centroids per sub-quantizer
MIN_PQ_TRAINING = 1 << PQ_BITS


class IVFPQIndex(IVFIndex):
    """``faiss.IndexIVFPQ`` with the inner-product metric: IVF cells as :class:`IVFIndex`, each
    vector stored as ``pq_bytes`` one-byte codes (D / pq_bytes dimensions per code), so a
    32-dim float32 embedding (128 bytes) takes ``pq_bytes`` bytes. Scores are approximate dot
    products. ``pq_bytes`` must divide D; training needs at least 256 vectors."""

    kind = "ivfpq"
    PARAMS = ("nlist", "nprobe", "pq_bytes")
    FAISS_TYPE = faiss.IndexIVFPQ

    def __init__(self, nlist: int | None = None, nprobe: int = 8, pq_bytes: int = 8) -> None:
        super().__init__(nlist, nprobe)
        (self.pq_bytes,) = _positive(pq_bytes=pq_bytes)

    def _ivf(self, quantizer: faiss.Index, d: int, nlist: int) -> faiss.Index:
        if d % self.pq_bytes:
            raise ValueError(f"ivfpq: pq_bytes={self.pq_bytes} must divide the embedding dim "
                             f"{d} (--index-pq-bytes)")
        return faiss.IndexIVFPQ(quantizer, d, nlist, self.pq_bytes, PQ_BITS,
                                faiss.METRIC_INNER_PRODUCT)

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        if len(embeddings) < MIN_PQ_TRAINING:
            raise ValueError(f"ivfpq: {len(embeddings)} vectors are too few to train its "
                             f"{1 << PQ_BITS}-centroid codebooks (at least {MIN_PQ_TRAINING}); "
                             "use --index-kind ivf or flat for a catalogue this small")
        return super()._new(embeddings)


class SQIndex(Index):
    """``faiss.IndexScalarQuantizer`` (8 bits per dimension, trained ranges) with the
    inner-product metric: an exhaustive scan over codes 4x smaller than float32. Scores are
    approximate dot products (each dimension rounded to 256 levels)."""

    kind = "sq"
    FAISS_TYPE = faiss.IndexScalarQuantizer

    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        index = faiss.IndexScalarQuantizer(embeddings.shape[1], faiss.ScalarQuantizer.QT_8bit,
                                           faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
        return index
