"""The ``Index`` interface: maximum-inner-product top-k over candidate embeddings, on FAISS.

Modelled on TFRS's ``layers.factorized_top_k.TopK``: a base class holds everything the kinds
share (validation, ``search``'s ordering and padding, persistence) and each kind only says how
its FAISS index is built (``_new``) and which search-time settings FAISS's serialization drops
(``_configure``). Kinds register themselves in :data:`KINDS` by their ``kind`` name, which is
``config.index.kind`` (``twostage.config.INDEX_KINDS``).

All kinds use the inner-product metric, so scores are the two-tower model's dot products.

File format (``save`` / ``load``): one ``.npz`` with ``faiss`` (``faiss.serialize_index`` bytes,
uint8 [B]), ``params`` (JSON of :meth:`Index.params`: ``kind`` and the constructor arguments,
which FAISS's own format partly drops) and ``format`` (:data:`FORMAT`). Files without
``format`` (written by ``torch_impl.index.FaissIndex.save``, same layout) are read too.
"""
from __future__ import annotations

import abc
import json
import os
import zipfile
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from twostage.io import write_with

from .threads import configure_threads

FORMAT = "twostage.index/1"

KINDS: dict[str, type["Index"]] = {}
"""kind name -> Index subclass, in registration order ("flat", "ivf", "hnsw")."""

_REBUILD = ("rebuild it from the current model's candidate embeddings "
            "(twostage.index.make_index(config).add(embeddings).save(path))")


# --- validation ------------------------------------------------------------------------------
def _float32_rows(x, name: str, dim: int | None = None) -> np.ndarray:
    """[rows, dim] C-contiguous float32, finite, with the expected dim (when given)."""
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


def _positive(**values) -> list[int]:
    """The values as ints; ValueError naming the first one below 1."""
    out = []
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name}={value} must be >= 1")
        out.append(int(value))
    return out


# --- registry --------------------------------------------------------------------------------
def index_class(kind: str) -> type["Index"]:
    """The :class:`Index` subclass registered as ``kind``; ValueError listing the kinds."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} (config index.kind, --index-kind); valid "
                         f"kinds: {', '.join(KINDS)}")
    return KINDS[kind]


def check_k(k: int, catalog: int, setting: str = "k") -> int:
    """``k`` as an int if 1 <= k <= ``catalog``; else ValueError naming ``setting`` (the caller's
    flag, e.g. ``"-k"``) and the limit. For callers that want more results than the catalog
    holds to be an error rather than :meth:`Index.search`'s clipping (TFRS's ``BruteForce``
    fails the same way: ``tf.math.top_k`` needs k <= M)."""
    if int(k) < 1:
        raise ValueError(f"{setting}={k} must be >= 1")
    if int(k) > catalog:
        raise ValueError(f"{setting}={k} exceeds the catalog's {catalog:,} items: an index can "
                         f"return at most {catalog:,}; lower {setting} to at most {catalog}")
    return int(k)


def create_index(kind: str, **params) -> "Index":
    """An empty index of ``kind`` with constructor ``params`` (``create_index(**ix.params())``
    builds an empty twin of ``ix``). ValueError for an unknown kind, a parameter the kind does
    not take, or an impossible value."""
    cls = index_class(kind)
    unknown = sorted(set(params) - set(cls.PARAMS))
    if unknown:
        takes = ", ".join(cls.PARAMS) or "no parameters"
        raise ValueError(f"{kind} index takes {takes}, not {', '.join(unknown)}")
    return cls(**params)


# --- the interface ---------------------------------------------------------------------------
class Index(abc.ABC):
    """Inner-product top-k index over candidate embeddings [M, D] float32.

    Rows are numbered in insertion order from 0 across ``add`` calls; the first ``add`` fixes D
    (and trains the kinds that learn from data). Subclasses set:

    - ``kind``: the registry name (``config.index.kind``);
    - ``PARAMS``: constructor argument names, stored as attributes of the same names;
    - ``FAISS_TYPE``: the FAISS class they build (checked on ``load``);

    and implement ``_new`` (and ``_configure`` when search settings must be re-applied).
    """

    kind: ClassVar[str]
    PARAMS: ClassVar[tuple[str, ...]] = ()
    FAISS_TYPE: ClassVar[type]
    extra_dims: int = 0   # dimensions _encode appends (HNSW's MIPS augmentation)
    LEGACY_DEFAULTS: ClassVar[dict] = {}   # what an older file's missing settings meant
    SEARCH_PARAMS: ClassVar[tuple[str, ...]] = ()   # of PARAMS, those set_search may change

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return
        old = KINDS.get(kind)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__,
                                                                      cls.__qualname__):
            raise TypeError(f"index kind {kind!r} registered twice: {old.__qualname__} and "
                            f"{cls.__qualname__}")
        KINDS[kind] = cls

    def __init__(self) -> None:
        self._index: faiss.Index | None = None
        configure_threads()

    # --- what a kind provides ----------------------------------------------------------------
    @abc.abstractmethod
    def _new(self, embeddings: np.ndarray) -> faiss.Index:
        """An empty FAISS index (trained if the kind trains) for the first ``add``'s
        ``embeddings`` [M, D] float32; ``add`` then calls ``_configure`` and adds them."""

    def _configure(self, index: faiss.Index) -> None:
        """Apply this object's search-time settings to ``index`` (after ``_new`` and after
        ``load``: FAISS's serialization does not keep them all). Default: none."""

    # Kinds that search a transformed space (HNSW's MIPS-to-L2 augmentation) override these
    # three: the FAISS metric they build with, and the maps in and out of that space.
    def metric(self) -> int:
        """The FAISS metric of the built index (inner product unless a kind transforms)."""
        return faiss.METRIC_INNER_PRODUCT

    def _encode(self, vectors: np.ndarray, queries: bool) -> np.ndarray:
        """Candidates (``queries=False``) or queries [N, D] -> what the FAISS index holds."""
        return vectors

    def _scores(self, queries: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """FAISS's raw results [N, k] for ``queries`` [N, D] -> inner products."""
        return raw

    def is_exact(self) -> bool:
        """True when scores and rows are the exact top-k (as TFRS's ``TopK.is_exact``)."""
        return False

    def _faiss_search(self, encoded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's search of encoded queries (a kind may tune FAISS around it)."""
        return self._index.search(encoded, k)

    # --- state -------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        """D, the embedding size (None before the first ``add``)."""
        return None if self._index is None else int(self._index.d) - self.extra_dims

    @property
    def ntotal(self) -> int:
        """M, the number of candidates added (0 before the first ``add``)."""
        return 0 if self._index is None else int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def params(self) -> dict:
        """``{"kind": ..., <constructor argument>: value}``: what ``load`` needs beyond the FAISS
        bytes, and what ``create_index(**params)`` takes."""
        return {"kind": self.kind, **{name: getattr(self, name) for name in self.PARAMS}}

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)}" for name in self.PARAMS)
        return f"{type(self).__name__}({args}; dim={self.dim}, ntotal={self.ntotal})"

    def set_search(self, **settings) -> "Index":
        """Change search-time settings (``SEARCH_PARAMS``: ivf/ivfpq ``nprobe``, hnsw
        ``ef_search``) of this index, built or not, without rebuilding; returns self. ValueError
        naming the setting for one the kind has not, a value below 1, or one the built index
        cannot honour (nprobe above its cells)."""
        unknown = sorted(set(settings) - set(self.SEARCH_PARAMS))
        if unknown:
            takes = ", ".join(self.SEARCH_PARAMS) or "none"
            raise ValueError(f"{self.kind} index: {', '.join(unknown)} is not a search setting "
                             f"of this kind (search settings: {takes})")
        values = dict(zip(settings, _positive(**settings)))
        self._check_search(values)
        for name, value in values.items():
            setattr(self, name, value)
        if self._index is not None:
            self._configure(self._index)
        return self

    def _check_search(self, values: dict) -> None:
        """ValueError if the built index cannot honour these search settings. Default: none."""

    def serialized_bytes(self) -> int:
        """Bytes of ``faiss.write_index`` of this index (what it holds in memory, give or take
        FAISS's headers), counted without materialising them (0 before the first ``add``)."""
        if self._index is None:
            return 0
        total = 0

        def count(chunk: bytes) -> None:
            nonlocal total
            total += len(chunk)

        faiss.write_index(self._index, faiss.PyCallbackIOWriter(count))
        return total

    # --- add / search ------------------------------------------------------------------------
    def add(self, embeddings) -> "Index":
        """Append candidates.

        Args:
          embeddings: [M, D] float32 (anything ``np.asarray`` converts), finite, M >= 1; D must
            equal ``dim`` after the first call.

        Returns:
          Self, numbering the new rows ``ntotal_before .. ntotal_before + M - 1``.
        """
        emb = _float32_rows(embeddings, "embeddings", self.dim)
        if emb.shape[0] == 0:
            raise ValueError("no embeddings to add: pass at least one [1, D] row")
        if self._index is None:
            index = self._new(emb)
            self._configure(index)
            self._index = index
        self._index.add(self._encode(emb, queries=False))
        return self

    def search(self, queries, k: int, *, strict: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k candidates by inner product.

        Args:
          queries: [N, D] float32, finite.
          k: >= 1; above ``ntotal`` it is clipped to it (as TFRS's Streaming index), so an exact
            index then returns every row.
          strict: True: k above ``ntotal`` is a ValueError naming the limit (``check_k``).

        Returns:
          (scores [N, k'] float32 descending, rows [N, k'] int64 insertion positions) with
          k' = min(k, ntotal). Approximate kinds may find fewer than k' items for a query; those
          slots hold row -1 and score -inf, at the end of the row. Equal scores are ordered by
          ascending row (as ``tf.math.top_k``); which of several items tied at the k'-th place
          is returned is FAISS's choice, except in ``FlatIndex``'s large-catalogue path
          (``twostage.index.exact``), which keeps the lowest rows as ``tf.math.top_k``. Exact
          scores are dot products up to float32 rounding (the BLAS/SIMD order).
        """
        if self._index is None or self.ntotal == 0:
            raise RuntimeError("search before add: call add(corpus_embeddings) first")
        if strict:
            k_eff = check_k(k, self.ntotal)
        elif int(k) < 1:
            raise ValueError(f"k={k} must be >= 1")
        else:
            k_eff = min(int(k), self.ntotal)
        q = _float32_rows(queries, "queries", self.dim)
        raw, rows = self._faiss_search(self._encode(q, queries=True), k_eff)
        scores = self._scores(q, raw)
        rows = rows.astype(np.int64, copy=False)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        if (scores[:, 1:] < scores[:, :-1]).all():   # strictly descending: no tie to order
            return scores, rows
        # Order ties by ascending row; padding (-inf, -1) stays last because -(-inf) is largest.
        order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=-1)
        return (np.take_along_axis(scores, order, axis=1),
                np.take_along_axis(rows, order, axis=1))

    # --- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` (one ``.npz`` whatever the suffix, see the module
        docstring) atomically through ``twostage.io.write_with``; returns the path."""
        if self._index is None:
            raise RuntimeError("nothing to save: call add(corpus_embeddings) first")
        payload = faiss.serialize_index(self._index)
        params = json.dumps(self.params())

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:        # a file object: np.savez(path) would add ".npz"
                np.savez(f, format=np.array(FORMAT), faiss=payload, params=np.array(params))
                f.flush()
                os.fsync(f.fileno())

        return write_with(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_dim: int | None = None,
             expect_ntotal: int | None = None) -> "Index":
        """Read a file written by ``save``, as the class its stored kind names.

        ``Index.load`` returns any kind; ``IVFIndex.load`` (a subclass) refuses other kinds.
        ``expect_dim`` / ``expect_ntotal``, when given, must equal the stored index's D / M (the
        current model's embedding size, the run's corpus size): a stale index fails here
        rather than returning rows of another corpus.

        Raises:
          FileNotFoundError: no file at ``path``.
          ValueError: not this format, unknown kind, missing or bad parameters, a FAISS index
            of another type, or a mismatch with ``expect_dim`` / ``expect_ntotal``; the message
            names the path and the fix.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no index file at {path}; build one and call save() first")
        params, index = _read(path)
        kind = params.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise ValueError(f"index at {path} is of kind {kind!r}, which this twostage does not "
                             f"know (kinds: {', '.join(KINDS)}); {_REBUILD}")
        sub = KINDS[kind]
        if not issubclass(sub, cls):
            raise ValueError(f"index at {path} is a {kind} index ({sub.__name__}), not a "
                             f"{cls.__name__}; load it with twostage.index.Index.load")
        params = {**sub.LEGACY_DEFAULTS, **params}   # settings older files did not store
        missing = [name for name in sub.PARAMS if name not in params]
        unknown = sorted(set(params) - {"kind"} - {n for c in KINDS.values() for n in c.PARAMS})
        if missing or unknown:
            what = "; ".join(([f"lacks {', '.join(missing)}"] if missing else []) +
                             ([f"has unknown {', '.join(unknown)}"] if unknown else []))
            raise ValueError(f"index at {path} ({kind}) {what} in its parameters: it was not "
                             f"written by Index.save or is damaged; {_REBUILD}")
        try:
            out = sub(**{name: params[name] for name in sub.PARAMS})
        except (TypeError, ValueError) as e:
            raise ValueError(f"index at {path} has bad parameters ({e}); {_REBUILD}") from None
        if not isinstance(index, sub.FAISS_TYPE) or index.metric_type != out.metric():
            raise ValueError(f"index at {path} says kind {kind!r} but holds a FAISS "
                             f"{type(index).__name__} (metric {index.metric_type}); {kind} "
                             f"needs {sub.FAISS_TYPE.__name__} with metric {out.metric()}; "
                             f"{_REBUILD}")
        out._configure(index)
        out._index = index
        out._check_expected(path, expect_dim, expect_ntotal)
        return out

    def _check_expected(self, path: Path, expect_dim: int | None,
                        expect_ntotal: int | None) -> None:
        held = f"index at {path} holds {self.ntotal:,} items of dim {self.dim}"
        if expect_ntotal is not None and self.ntotal != int(expect_ntotal):
            raise ValueError(f"{held} but the run's corpus has {int(expect_ntotal):,} items: "
                             f"{_REBUILD}")
        if expect_dim is not None and self.dim != int(expect_dim):
            raise ValueError(f"{held} but the run's model embeds in dim {int(expect_dim)}: "
                             f"{_REBUILD}")


def _read(path: Path) -> tuple[dict, faiss.Index]:
    """(params dict, deserialized FAISS index) of an index file; ValueError if not ours."""
    def not_ours(why: str) -> ValueError:
        return ValueError(f"{path} is not an index written by twostage.index's Index.save (or "
                          f"torch_impl's FaissIndex.save, same layout): {why}. Point at the "
                          f"index file, or {_REBUILD}")

    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise not_ours(f"unreadable as .npz ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise not_ours("a single .npy array, not an .npz archive")
    with z:
        missing = sorted({"faiss", "params"} - set(z.files))
        if missing:
            raise not_ours(f"no {' / '.join(missing)} entry (it holds {sorted(z.files)})")
        try:
            fmt = str(z["format"]) if "format" in z.files else FORMAT
            raw_params, raw_faiss = z["params"], z["faiss"]
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise not_ours(f"damaged archive ({e})") from None
    if fmt != FORMAT:
        raise ValueError(f"index at {path} has format {fmt!r}; this twostage reads {FORMAT!r}: "
                         f"{_REBUILD}")
    if raw_params.shape != () or raw_params.dtype.kind != "U":
        raise not_ours(f"params is a {raw_params.dtype} array of shape {raw_params.shape}, not "
                       "a JSON string")
    try:
        params = json.loads(str(raw_params))
    except ValueError as e:
        raise not_ours(f"params is not JSON ({e})") from None
    if not isinstance(params, dict):
        raise not_ours(f"params is a JSON {type(params).__name__}, not an object")
    if raw_faiss.ndim != 1 or raw_faiss.dtype != np.uint8:
        raise not_ours(f"faiss is a {raw_faiss.dtype} array of shape {raw_faiss.shape}, not "
                       "serialized bytes")
    try:
        index = faiss.deserialize_index(np.ascontiguousarray(raw_faiss))
    except RuntimeError as e:
        raise not_ours(f"FAISS cannot read its index bytes ({str(e).strip().splitlines()[0]})"
                       ) from None
    return params, index
