"""Candidate indexes: maximum-inner-product top-k on FAISS (faiss + numpy; no torch, no TF).

- :mod:`twostage.index.base`    ``Index``: add / search / params / save / load, the kind
  registry ``KINDS``, ``create_index``, input validation, ``check_k`` (k against the catalog)
- :mod:`twostage.index.flat`    ``FlatIndex``: exact (``IndexFlatIP``), TFRS's ``BruteForce``
- :mod:`twostage.index.exact`   ``top_k_inner_product``: exact top-k by BLAS products and a
  threshold filter, FlatIndex's path for large catalogues (FAISS's heap costs as much as the
  product there)
- :mod:`twostage.index.ivf`     ``IVFIndex(nlist, nprobe)``: approximate (``IndexIVFFlat``)
- :mod:`twostage.index.hnsw`    ``HNSWIndex(hnsw_m, ef_search, ef_construction, mips)``:
  approximate (``IndexHNSWFlat``), with the MIPS-to-L2 augmentation by default
- :mod:`twostage.index.quantized` ``IVFPQIndex(nlist, nprobe, pq_bytes)`` and ``SQIndex``:
  compressed (``IndexIVFPQ``, ``IndexScalarQuantizer`` 8-bit)
- :mod:`twostage.index.factory` ``make_index(config)``: the kind and settings of ``config.index``
- :mod:`twostage.index.threads` ``configure_threads``: FAISS's OpenMP threads are left alone

Typical use::

    index = make_index(config).add(candidate_embeddings)      # [M, D] float32
    scores, rows = index.search(query_embeddings, k)           # [N, k'] float32, int64
    index.set_search(nprobe=32)                                # ivf/ivfpq (hnsw: ef_search)
    index.serialized_bytes()                                   # what it holds
    index.save(path)
    index = Index.load(path, expect_dim=D, expect_ntotal=M)    # the stored kind's class

Evaluate approximate kinds (``not index.is_exact()``) with
``twostage.evaluation.top_k_accuracy_from_ids``: their scores can't be compared with an exact
positive score.
"""
from __future__ import annotations

from .base import FORMAT, KINDS, Index, check_k, create_index, index_class
from .flat import FlatIndex        # registration order = KINDS order: flat, ivf, hnsw
from .ivf import IVFIndex
from .hnsw import HNSWIndex
from .quantized import IVFPQIndex, SQIndex
from .factory import make_index
from .threads import configure_threads

__all__ = ["FORMAT", "KINDS", "Index", "FlatIndex", "IVFIndex", "HNSWIndex", "IVFPQIndex",
           "SQIndex", "check_k", "create_index",
           "index_class", "make_index", "configure_threads"]
