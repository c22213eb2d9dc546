"""One encoder per schema feature kind: fitted on the training data in numpy, applied the same
way by both backends (torch reads the integer / float arrays; TFRS builds its Keras layers from
the fitted vocabularies and boundaries, as ``FeatureSpec`` does for the seed's features).

Each follows a Keras preprocessing layer's rule exactly, so the two backends agree bit for bit:

- ``id`` / ``category`` (:class:`Lookup`): ``StringLookup(vocabulary, mask_token=None)``, the
  vocabulary the sorted distinct values (as the seed's ``np.unique``): value i -> i + 1,
  unknown -> 0.
- ``multi_category`` (:class:`MultiLookup`): the values split on the separator, each looked up
  as ``StringLookup(mask_token="")`` does: padding 0, unknown 1, value i -> i + 2; [N, L].
- ``text`` (:class:`Text`): ``TextVectorization``, the seed's title treatment
  (``FeatureSpec.title_tokens``): padding 0, unknown 1, the first ``MAX_TITLE_TOKENS`` tokens.
- ``numeric`` and ``timestamp`` (:class:`Numeric`): ``Normalization`` with exact float64 moments
  computed in float32 as Keras does, and, with buckets, ``Discretization`` of equal-width
  boundaries from the minimum to the maximum (the seed's timestamp buckets), compared as
  Keras compares them (:meth:`Numeric.bucket`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .features import (KERAS_EPSILON, MAX_TITLE_TOKENS, padded_rows, token_vocabulary,
                       tokenize)

KINDS = ("id", "category", "multi_category", "text", "numeric", "timestamp")
DEFAULT_TIMESTAMP_BUCKETS = 1000   # the seed's
PAD, UNKNOWN = 0, 1                # the padded kinds' reserved ids


def _strings(values: Iterable) -> np.ndarray:
    """[N] values as str (UTF-8 bytes decoded; None as "")."""
    out = [v.decode("utf-8") if isinstance(v, bytes) else ("" if v is None else str(v))
           for v in (values.tolist() if isinstance(values, np.ndarray) else values)]
    return np.array(out, dtype=object)


@dataclass(frozen=True)
class Lookup:
    """``id`` / ``category``: ``vocabulary`` (sorted distinct training values)."""

    vocabulary: tuple[str, ...]

    @classmethod
    def fit(cls, values: Iterable) -> "Lookup":
        return cls(tuple(np.unique(_strings(values).astype(str)).tolist()))

    @property
    def rows(self) -> int:
        """Embedding rows: the vocabulary plus the unknown row 0."""
        return len(self.vocabulary) + 1

    def encode(self, values: Iterable) -> np.ndarray:
        """[N] -> [N] int64 in [0, len(vocabulary)]; 0 = unknown."""
        table = {v: i + 1 for i, v in enumerate(self.vocabulary)}
        return np.array([table.get(v, 0) for v in _strings(values)], dtype=np.int64)


@dataclass(frozen=True)
class MultiLookup:
    """``multi_category``: ``separator`` between a cell's values, ``vocabulary`` (sorted
    distinct training values; empty parts dropped)."""

    separator: str
    vocabulary: tuple[str, ...]

    @classmethod
    def fit(cls, values: Iterable, separator: str) -> "MultiLookup":
        parts = {p for cell in _strings(values) for p in cell.split(separator) if p}
        return cls(separator, tuple(sorted(parts)))

    @property
    def rows(self) -> int:
        """Embedding rows: the vocabulary plus padding 0 and unknown 1."""
        return len(self.vocabulary) + 2

    def encode(self, values: Iterable, length: int | None = None) -> np.ndarray:
        """[N] -> [N, L] int64, 0-padded on the right; L = the most values of a cell unless
        given (longer cells keep their first L)."""
        table = {v: i + 2 for i, v in enumerate(self.vocabulary)}
        rows = [[table.get(p, UNKNOWN) for p in cell.split(self.separator) if p]
                for cell in _strings(values)]
        return padded_rows(rows, length)


@dataclass(frozen=True)
class Text:
    """``text``: ``vocabulary`` (TextVectorization's, without padding and unknown) and
    ``max_tokens`` (embedding rows, as TextVectorization's)."""

    vocabulary: tuple[str, ...]
    max_tokens: int = 10_000

    @classmethod
    def fit(cls, values: Iterable, max_tokens: int = 10_000) -> "Text":
        return cls(token_vocabulary(_strings(values), max_tokens), max_tokens)

    @property
    def rows(self) -> int:
        return self.max_tokens

    def encode(self, values: Iterable, length: int | None = None) -> np.ndarray:
        """[N] -> [N, L] int64 token ids (padding 0, unknown 1), at most MAX_TITLE_TOKENS
        per text; L = the longest text unless given."""
        table = {t: i + 2 for i, t in enumerate(self.vocabulary)}
        rows = [[table.get(t, UNKNOWN) for t in tokenize(cell)] for cell in _strings(values)]
        return padded_rows(rows, length)


@dataclass(frozen=True)
class Numeric:
    """``numeric`` / ``timestamp``: exact float64 ``mean`` and ``variance`` of the training
    values, and the Discretization ``boundaries`` (empty: no buckets)."""

    mean: float
    variance: float
    boundaries: tuple[float, ...] = ()

    @classmethod
    def fit(cls, values: Iterable, buckets: int | None = None) -> "Numeric":
        """Moments of the finite ``values``; ``buckets`` equal-width boundaries (linspace of
        the minimum and maximum, as the seed's timestamps); ValueError when none is finite."""
        x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                       dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size == 0:
            raise ValueError("a numeric feature needs at least one finite training value")
        bounds = tuple(np.linspace(x.min(), x.max(), num=buckets).tolist()) if buckets else ()
        return cls(float(x.mean()), float(x.var()), bounds)

    @property
    def rows(self) -> int:
        """Bucket embedding rows (0 without buckets)."""
        return len(self.boundaries) + 1 if self.boundaries else 0

    def normalized(self, values: Iterable) -> np.ndarray:
        """[N] -> [N] float32 ``(x - mean) / max(sqrt(variance), 1e-7)`` in float32 (Keras)."""
        x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values
                       ).astype(np.float32)
        std = np.maximum(np.sqrt(np.float32(self.variance)), np.float32(KERAS_EPSILON))
        return ((x - np.float32(self.mean)) / std).astype(np.float32)

    def bucket(self, values: Iterable) -> np.ndarray:
        """[N] -> [N] int64 in [0, len(boundaries)]: how many boundaries are <= x, as
        Discretization compares: its float32 boundaries against integers cast to float32, and
        against floats in the input's own precision."""
        if not self.boundaries:
            raise ValueError("this numeric feature has no buckets (fit it with buckets=N)")
        x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
        x = x.astype(np.float32) if x.dtype.kind in "iub" else x.astype(np.float64)
        bounds = np.asarray(self.boundaries, dtype=np.float32).astype(x.dtype)
        return np.searchsorted(bounds, x, side="right").astype(np.int64)


def fit_encoder(kind: str, values: Iterable, *, separator: str | None = None,
                buckets: int | None = None, max_tokens: int = 10_000):
    """The encoder of a schema feature ``kind`` fitted on its training ``values``.

    Raises:
        ValueError: an unknown kind (naming the known ones), or a multi_category without a
            separator.
    """
    if kind in ("id", "category"):
        return Lookup.fit(values)
    if kind == "multi_category":
        if not separator:
            raise ValueError("a multi_category feature needs its separator")
        return MultiLookup.fit(values, separator)
    if kind == "text":
        return Text.fit(values, max_tokens)
    if kind in ("numeric", "timestamp"):
        default = DEFAULT_TIMESTAMP_BUCKETS if kind == "timestamp" else None
        return Numeric.fit(values, buckets if buckets is not None else default)
    raise ValueError(f"unknown feature kind {kind!r}; known: {', '.join(KINDS)}")


__all__ = ["KINDS", "Lookup", "MultiLookup", "Text", "Numeric", "fit_encoder",
           "MAX_TITLE_TOKENS"]
