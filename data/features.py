"""The feature spec: every preprocessing rule of the seed's Keras layers, fitted once, in numpy.

Both backends build their preprocessing from one :class:`FeatureSpec`, so they see identical
features. Each mapping reproduces the tf_keras layer the seed uses (sources in
``tf_keras/src/layers/preprocessing``):

- ``StringLookup(vocabulary, mask_token=None)`` (one OOV index): OOV -> 0, vocabulary[i] -> i + 1.
- ``Discretization(bin_boundaries)``: ``tf.raw_ops.Bucketize`` keeps the boundaries as float32 and
  compares the (int64) timestamp converted to float32, bucket = #boundaries <= value, in [0, n].
  Timestamps near 8.8e8 are 64 apart in float32, so the float32 rounding decides some buckets.
- ``Normalization``: ``(float32(x) - mean) / maximum(sqrt(variance), 1e-7)`` in float32.
  ``mean``/``variance`` are the exact (float64) moments of all rating timestamps; Keras' ``adapt``
  accumulates them batch-wise in float32 and lands within float32 noise of these.
- ``TextVectorization(max_tokens)``: ``lower_and_strip_punctuation`` (ASCII-only lower-casing,
  then the Keras punctuation regex removed), split on runs of ASCII whitespace; vocabulary sorted
  by count descending, ties by token descending (``np.lexsort(...)[::-1]``), at most
  ``max_tokens - 2`` learned tokens; index 0 is padding, 1 is OOV ``[UNK]``, token i -> i + 2.
  Output padded with 0 to the longest title of the batch.

Fitting and encoding work once per distinct value: titles are tokenised once per movie (and
cached), users looked up once per user, and the per-rating arrays of :meth:`FeatureSpec.
encode_ratings` gathered from those by index, so 25 million ratings cost no per-rating Python.
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import io
from .movielens import MovieLens, column_codes

# tf_keras text_vectorization.DEFAULT_STRIP_REGEX, verbatim.
STRIP_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
# tf.strings.split(sep=None) splits on runs of ASCII whitespace and drops empty pieces.
ASCII_WHITESPACE = re.compile(r"[ \t\n\v\f\r]+")
NON_WHITESPACE = re.compile(r"[^ \t\n\v\f\r]+")
# Tokens kept per title (its first ones): the longest MovieLens title has 16, and the token
# rows of every title are padded to the longest one (docs/data.md).
MAX_TITLE_TOKENS = 64
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
KERAS_EPSILON = 1e-7  # tf_keras.backend.epsilon(), the Normalization floor on the std
PAD_TOKEN, OOV_TOKEN = "", "[UNK]"
SPEC_VERSION = 1


def standardize(text: str) -> str:
    """TextVectorization 'lower_and_strip_punctuation': tf.strings.lower is ASCII-only."""
    return STRIP_PUNCTUATION.sub("", text.translate(_ASCII_LOWER))


def tokenize(text: str) -> list[str]:
    """Standardize, then split on ASCII whitespace as ``tf.strings.split`` does."""
    return list(_tokens(text))


@lru_cache(maxsize=1 << 17)  # every title of ml-25m (62,423) twice over
def _tokens(text: str) -> tuple[str, ...]:
    """:func:`tokenize`, cached: fitting, the corpus and serving see the same titles again.
    At most ``MAX_TITLE_TOKENS`` (the first ones): token rows are padded to the longest title,
    so one huge title would otherwise size every row (a 10 MB title: 23 GB)."""
    words = NON_WHITESPACE.finditer(standardize(text))      # split, empty strings dropped
    return tuple(m.group() for m in itertools.islice(words, MAX_TITLE_TOKENS))


def padded_rows(rows: list[list[int]], length: int | None = None) -> np.ndarray:
    """Lists of ids -> [N, L] int64, 0-padded on the right; L = the longest list unless given
    (longer lists keep their first L)."""
    width = max((len(r) for r in rows), default=0) if length is None else int(length)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : min(len(r), width)] = r[:width]
    return out


def token_vocabulary(texts: Iterable, max_tokens: int) -> tuple[str, ...]:
    """TextVectorization.adapt's vocabulary of ``texts`` (without padding and OOV): tokens by
    count descending, ties by token descending, at most ``max_tokens - 2`` of them."""
    if max_tokens < 3:
        raise ValueError(f"max_tokens={max_tokens} must be >= 3 (padding, OOV, one token)")
    counts = Counter(t for text in texts for t in _tokens(str(text)))
    tokens = np.array(list(counts.keys()), dtype=object)
    freq = np.array(list(counts.values()), dtype=np.int64)
    # Keras sorts the UTF-8 bytes; byte order equals code-point order for valid UTF-8.
    order = np.lexsort((tokens.astype(str), freq))[::-1][: max_tokens - 2]
    return tuple(tokens[order].tolist())


def _as_str_array(values: Iterable) -> np.ndarray:
    """Accept str or UTF-8 bytes (what TF yields) and return an object array of str."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=object)
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.ravel()],
                    dtype=object).reshape(arr.shape)


def _lookup(vocabulary: np.ndarray | dict, values: Iterable) -> np.ndarray:
    """StringLookup(mask_token=None, num_oov_indices=1): vocab[i] -> i + 1, unknown -> 0.
    ``vocabulary``: the vocabulary, or its table built once (:func:`lookup_table`)."""
    table = vocabulary if isinstance(vocabulary, dict) else lookup_table(vocabulary)
    return np.array([table.get(v, 0) for v in _as_str_array(values).ravel()], dtype=np.int64)


def lookup_table(vocabulary: Iterable[str]) -> dict[str, int]:
    """{vocab[i]: i + 1}: StringLookup's table."""
    return {v: i + 1 for i, v in enumerate(vocabulary)}


@lru_cache(maxsize=16)
def _vocabulary_table(vocabulary: tuple[str, ...]) -> dict[str, int]:
    """:func:`lookup_table` of a spec's vocabulary, built once (read-only; a 162,541-user
    vocabulary costs 35 ms to build, which per evaluation batch was 7 s of a 25m evaluation).
    Kept outside the frozen spec, whose ``__dict__`` is its fields."""
    return lookup_table(vocabulary)


def _distinct(column: pd.Series) -> np.ndarray:
    """The distinct values a column holds (object array), found through its codes."""
    codes, values = column_codes(column)
    return values[np.bincount(codes, minlength=len(values)) > 0]


def _corpus_rows(titles: np.ndarray, corpus_titles: np.ndarray) -> np.ndarray:
    """The first corpus row of each title, -1 where the corpus has none."""
    first = {t: i for i, t in reversed(list(enumerate(corpus_titles.tolist())))}
    return np.fromiter((first.get(t, -1) for t in titles.tolist()), dtype=np.int64,
                       count=len(titles))


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabularies and statistics fitted on the data (see the module docstring for the rules).

    user_vocab:     sorted unique user ids (str), embedding rows = len + 1
    title_vocab:    sorted unique movie titles (str), embedding rows = len + 1
    ts_boundaries:  float64 ``linspace(min_ts, max_ts, num_buckets)``, embedding rows = len + 1
    ts_mean, ts_variance: moments of all rating timestamps
    token_vocab:    title tokens by frequency (without the padding and OOV entries)
    max_tokens:     TextVectorization max_tokens (embedding rows of the token table)
    """

    user_vocab: tuple[str, ...]
    title_vocab: tuple[str, ...]
    ts_boundaries: tuple[float, ...]
    ts_mean: float
    ts_variance: float
    token_vocab: tuple[str, ...]
    max_tokens: int = 10_000

    # --- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: MovieLens, *, num_buckets: int = 1000, max_tokens: int = 10_000
            ) -> "FeatureSpec":
        """Fit on all ratings and the whole movie corpus, as the seed does."""
        if max_tokens < 3:
            raise ValueError(f"max_tokens={max_tokens} must be >= 3 (padding, OOV, one token)")
        ts = data.ratings["timestamp"].to_numpy(np.int64)
        return cls(
            user_vocab=tuple(np.unique(_distinct(data.ratings["user_id"]).astype(str)).tolist()),
            title_vocab=tuple(np.unique(data.movies["movie_title"].to_numpy(str)).tolist()),
            ts_boundaries=tuple(np.linspace(ts.min(), ts.max(), num=num_buckets).tolist()),
            ts_mean=float(ts.astype(np.float64).mean()),
            ts_variance=float(ts.astype(np.float64).var()),
            token_vocab=token_vocabulary(data.movies["movie_title"], max_tokens),
            max_tokens=max_tokens,
        )

    # --- sizes ------------------------------------------------------------------------------
    @property
    def num_user_rows(self) -> int:
        return len(self.user_vocab) + 1

    @property
    def num_title_rows(self) -> int:
        return len(self.title_vocab) + 1

    @property
    def num_bucket_rows(self) -> int:
        return len(self.ts_boundaries) + 1

    @property
    def keras_token_vocabulary(self) -> list[str]:
        """What TextVectorization.get_vocabulary() returns: padding, OOV, then tokens."""
        return [PAD_TOKEN, OOV_TOKEN, *self.token_vocab]

    # --- mappings ---------------------------------------------------------------------------
    def user_index(self, user_ids: Iterable) -> np.ndarray:
        """[N] str -> [N] int64 in [0, len(user_vocab)]; 0 = out of vocabulary."""
        return _lookup(_vocabulary_table(self.user_vocab), user_ids)

    def title_index(self, titles: Iterable) -> np.ndarray:
        """[N] str -> [N] int64 in [0, len(title_vocab)]; 0 = out of vocabulary."""
        return _lookup(_vocabulary_table(self.title_vocab), titles)

    def timestamp_bucket(self, timestamps: Sequence[int] | np.ndarray) -> np.ndarray:
        """[N] int -> [N] int64 in [0, len(ts_boundaries)], float32 comparisons as Bucketize."""
        bounds = np.asarray(self.ts_boundaries, dtype=np.float32)
        values = np.asarray(timestamps).astype(np.float32)
        return np.searchsorted(bounds, values, side="right").astype(np.int64)

    def timestamp_normalized(self, timestamps: Sequence[int] | np.ndarray) -> np.ndarray:
        """[N] int -> [N] float32, Keras Normalization in float32."""
        values = np.asarray(timestamps).astype(np.float32)
        std = np.maximum(np.sqrt(np.float32(self.ts_variance)), np.float32(KERAS_EPSILON))
        return ((values - np.float32(self.ts_mean)) / std).astype(np.float32)

    def title_tokens(self, titles: Iterable, length: int | None = None) -> np.ndarray:
        """[N] str -> [N, L] int64 token ids, 0-padded; L = longest title unless given."""
        table = {t: i + 2 for i, t in enumerate(self.token_vocab)}
        rows = [[table.get(t, 1) for t in _tokens(s)] for s in _as_str_array(titles).ravel()]
        return padded_rows(rows, length)

    def encode(self, user_ids: Iterable, timestamps: Iterable, titles: Iterable
               ) -> dict[str, np.ndarray]:
        """All model inputs for N (user, timestamp, title) rows; see :func:`query_features`."""
        return {**self.encode_queries(user_ids, timestamps), **self.encode_titles(titles)}

    def encode_queries(self, user_ids: Iterable, timestamps: Iterable) -> dict[str, np.ndarray]:
        """Query-tower inputs: user_index [N], ts_bucket [N], ts_norm [N] float32."""
        ts = np.asarray(list(timestamps) if not isinstance(timestamps, np.ndarray) else timestamps,
                        dtype=np.int64)
        return {"user_index": self.user_index(user_ids), "ts_bucket": self.timestamp_bucket(ts),
                "ts_norm": self.timestamp_normalized(ts)}

    def encode_titles(self, titles: Iterable) -> dict[str, np.ndarray]:
        """Candidate-tower inputs: title_index [N], title_tokens [N, L]. Each distinct title is
        looked up and tokenised once (re-ranking encodes every query's candidates: 10 rows a
        query, about 1,600 distinct titles in 200,000 rows on ml-100k)."""
        codes, distinct = pd.factorize(_as_str_array(titles).ravel())
        return {"title_index": self.title_index(distinct)[codes],
                "title_tokens": self.title_tokens(distinct)[codes]}

    def title_token_table(self) -> np.ndarray:
        """[V + 1, L] int64: row i = the tokens of title id i (``title_vocab[i - 1]``), row 0
        (the out-of-vocabulary title) none; L = the longest title of the vocabulary, i.e. of
        the corpus. What a rating's tokens are gathered from by its ``title_index``, instead of
        an [N, L] copy per rating (25M ratings x 20 tokens of int64: 4 GB). Computed once per
        spec (the dataset and each tower ask for it) and read-only: copy before writing."""
        return _title_token_table(self)

    def encode_ratings(self, ratings: pd.DataFrame, corpus_titles: np.ndarray,
                       corpus_features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The encoded inputs of every rating of ``ratings`` (a MovieLens ratings frame), equal to
        ``encode_queries`` of its users and timestamps plus the ``title_index`` of its titles,
        but computed per distinct user and title: a title's index is the corpus row's
        (``corpus_features`` of ``corpus_titles``, from :meth:`encode_titles`), gathered by
        index. No ``title_tokens``: those of a rating are row ``title_index`` of
        :meth:`title_token_table` (every title of a MovieLens rating is in the vocabulary).
        """
        user_codes, users = column_codes(ratings["user_id"])
        title_codes, titles = column_codes(ratings["movie_title"])
        timestamps = ratings["timestamp"].to_numpy(dtype=np.int64)
        rows = _corpus_rows(titles, corpus_titles)
        per_title = (corpus_features["title_index"][rows] if (rows >= 0).all()
                     else self.title_index(titles))  # titles outside the corpus: look them up
        return {"user_index": self.user_index(users)[user_codes],
                "ts_bucket": self.timestamp_bucket(timestamps),
                "ts_norm": self.timestamp_normalized(timestamps),
                "title_index": per_title[title_codes]}

    # --- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"version": SPEC_VERSION, "user_vocab": list(self.user_vocab),
                "title_vocab": list(self.title_vocab), "ts_boundaries": list(self.ts_boundaries),
                "ts_mean": self.ts_mean, "ts_variance": self.ts_variance,
                "token_vocab": list(self.token_vocab), "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        if not isinstance(d, dict):
            raise ValueError(f"a feature spec is a JSON object, got {type(d).__name__}")
        if d.get("version") != SPEC_VERSION:
            raise ValueError(f"feature spec version {d.get('version')!r} is not supported "
                             f"(expected {SPEC_VERSION}); re-run training to rebuild it")
        return cls(user_vocab=tuple(d["user_vocab"]), title_vocab=tuple(d["title_vocab"]),
                   ts_boundaries=tuple(float(x) for x in d["ts_boundaries"]),
                   ts_mean=float(d["ts_mean"]), ts_variance=float(d["ts_variance"]),
                   token_vocab=tuple(d["token_vocab"]), max_tokens=int(d["max_tokens"]))

    def save(self, path: Path | str) -> None:
        """Write JSON atomically (floats round-trip exactly through repr)."""
        io.write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> "FeatureSpec":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except KeyError as e:
            raise ValueError(f"{path}: not a readable feature spec (missing key {e})") from e
        except (OSError, ValueError) as e:  # ValueError covers JSON and UTF-8 decoding errors
            raise ValueError(f"{path}: not a readable feature spec ({e})") from e

    def fingerprint(self) -> str:
        """Short content hash, stored in checkpoints to catch a model/spec mismatch."""
        import hashlib
        blob = json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]


@lru_cache(maxsize=4)
def _title_token_table(spec: FeatureSpec) -> np.ndarray:
    """:meth:`FeatureSpec.title_token_table`, once per spec (a frozen, hashable value)."""
    tokens = spec.title_tokens(np.asarray(spec.title_vocab, dtype=object))
    table = np.concatenate([np.zeros((1, tokens.shape[1]), np.int64), tokens])
    table.flags.writeable = False
    return table
