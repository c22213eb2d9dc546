"""Maximum-inner-product candidate index on FAISS (faiss + numpy only; no torch needed).

``FaissIndex("flat")`` is exact (``IndexFlatIP``), the serving counterpart of TFRS's
``BruteForce`` layer; ``"ivf"`` (``IndexIVFFlat``) and ``"hnsw"`` (``IndexHNSWFlat``) are the
approximate indexes the seed mentions for serving, both with the inner-product metric so scores
are the same dot products as the two-tower model's. Evaluate approximate indexes with
``twostage.evaluation.top_k_accuracy_from_ids`` (TFRS's id-based mode): their scores can't be
compared with an exact positive score.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import faiss
import numpy as np

KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")

_threads_configured = False


def configure_threads() -> int:
    """FAISS's OpenMP thread count, left at the process default.

    It is deliberately not lowered here: FAISS and torch share one OpenMP runtime on Linux, so
    ``faiss.omp_set_num_threads(1)`` also dropped torch's intra-op threads to 1 for every later
    training step of the process (seen in the speed benchmark). Set OMP_NUM_THREADS to limit both.
    """
    global _threads_configured
    _threads_configured = True
    return faiss.omp_get_max_threads()


def _float32_rows(x, name: str, dim: int | None = None) -> np.ndarray:
    """[rows, dim] C-contiguous float32, finite, with the expected dim."""
    a = np.asarray(x)
    if a.ndim != 2:
        hint = " (one vector: x.reshape(1, -1))" if a.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {a.shape}{hint}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} have dim {a.shape[1]} but the index holds dim {dim}; embed "
                         "queries and candidates with the same trained model")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a).all(axis=1)).sum())
        raise ValueError(f"{name} contain NaN/inf in {bad} row(s); the model diverged or the "
                         "inputs are bad, so an index over them would return garbage")
    return a


class FaissIndex:
    """Inner-product top-k index over candidate embeddings.

    kind: "flat" (exact IndexFlatIP), "ivf" (IndexIVFFlat: ``nlist`` k-means cells trained on the
    first ``add``'s vectors, ``nprobe`` cells searched) or "hnsw" (IndexHNSWFlat with ``hnsw_m``
    links per node, ``ef_search`` candidates explored per query).
    """

    def __init__(self, kind: str = "flat", nlist: int = 64, nprobe: int = 8, hnsw_m: int = 32,
                 ef_search: int = 128) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("hnsw_m", hnsw_m),
                            ("ef_search", ef_search)):
            if int(value) < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        self.kind = kind
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        self.hnsw_m, self.ef_search = int(hnsw_m), int(ef_search)
        self._index: faiss.Index | None = None
        self._quantizer: faiss.Index | None = None   # IVF: keep the coarse quantizer alive
        configure_threads()

    # ----------------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        return None if self._index is None else int(self._index.d)

    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def is_exact(self) -> bool:
        """True for "flat": its scores are exact dot products (as TFRS's ``is_exact``)."""
        return self.kind == "flat"

    def __repr__(self) -> str:
        return f"FaissIndex(kind={self.kind!r}, dim={self.dim}, ntotal={self.ntotal})"

    # ----------------------------------------------------------------------------------------
    def _build(self, emb: np.ndarray) -> faiss.Index:
        d = emb.shape[1]
        if self.kind == "flat":
            return faiss.IndexFlatIP(d)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
            return index
        nlist = self.nlist
        if nlist > emb.shape[0]:
            warnings.warn(f"ivf: nlist={nlist} exceeds the {emb.shape[0]} vectors to train on; "
                          f"using nlist={emb.shape[0]}", stacklevel=3)
            nlist = emb.shape[0]
        self._quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(self._quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(emb)                 # k-means with FAISS's fixed default seed: reproducible
        index.nprobe = min(self.nprobe, nlist)
        return index

    def add(self, emb) -> "FaissIndex":
        """Append emb [M, D] float32 (finite); rows are numbered in insertion order from 0.
        The first call fixes D (and trains IVF's cells on these vectors)."""
        emb = _float32_rows(emb, "embeddings", self.dim)
        if emb.shape[0] == 0:
            raise ValueError("no embeddings to add: pass at least one [1, D] row")
        if self._index is None:
            self._index = self._build(emb)
        self._index.add(emb)
        return self

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: queries [N, D] -> (scores [N, k'] float32 descending,
        rows [N, k'] int64 positions in insertion order), k' = min(k, ntotal).

        k above the corpus size is clipped to it (as TFRS's Streaming index does), so "flat"
        always returns every row. Approximate kinds may find fewer than k' items for a query;
        those slots are padded with row -1 and score -inf, at the end of the row. Within the
        returned row, equal scores are ordered by ascending row (as ``tf.math.top_k``); which of
        several items tied at the k'-th place is returned is FAISS's choice. Flat scores are exact
        dot products up to float32 rounding (FAISS's BLAS/SIMD order).
        """
        if self._index is None or self.ntotal == 0:
            raise RuntimeError("search before add: call add(corpus_embeddings) first")
        if int(k) < 1:
            raise ValueError(f"k={k} must be >= 1")
        q = _float32_rows(queries, "queries", self.dim)
        k_eff = min(int(k), self.ntotal)
        scores, rows = self._index.search(q, k_eff)
        rows = rows.astype(np.int64, copy=False)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        # Order ties by ascending row; padding (-inf, -1) stays last because -(-inf) is largest.
        order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=-1)
        return (np.take_along_axis(scores, order, axis=1),
                np.take_along_axis(rows, order, axis=1))

    # ----------------------------------------------------------------------------------------
    def params(self) -> dict:
        """Constructor arguments (what ``load`` needs beyond the FAISS bytes)."""
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe,
                "hnsw_m": self.hnsw_m, "ef_search": self.ef_search}

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically (a temporary file in the same folder, then a
        rename) as one ``.npz``: ``faiss`` (``faiss.serialize_index`` bytes) and ``params`` (JSON
        of the constructor arguments; FAISS's own format drops HNSW's efSearch)."""
        if self._index is None:
            raise RuntimeError("nothing to save: call add(corpus_embeddings) first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, faiss=faiss.serialize_index(self._index),
                         params=np.array(json.dumps(self.params())))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FaissIndex":
        """Read an index written by ``save`` (kind and search parameters included)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no index file at {path}; build one and call save() first")
        try:
            with np.load(path, allow_pickle=False) as z:
                params = json.loads(str(z["params"]))
                index = faiss.deserialize_index(np.ascontiguousarray(z["faiss"], dtype=np.uint8))
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"{path} is not an index written by FaissIndex.save: {e}") from e
        out = cls(**params)
        out._index = index
        if out.kind == "ivf":
            index.nprobe = min(out.nprobe, index.nlist)
        elif out.kind == "hnsw":
            index.hnsw.efSearch = out.ef_search
        return out
