"""What the TFRS models are fed: Keras preprocessing layers built from the shared
:class:`FeatureSpec` (no adapt), raw numpy batches as tensors, and the tf.data input columns.

The TFRS models take RAW features, as the seed's: ``user_id`` [B] string, ``timestamp`` [B]
int64, ``movie_title`` [B] string (plus ``label``, ``candidate_sampling_probability``,
``sample_weight`` [B] float32 where a loss needs them). Every preprocessing layer here reproduces
one numpy mapping of the spec exactly (tests check it), so the TFRS models see the same integer
ids and normalized timestamps as the torch models, which consume the spec's encoded arrays
(torch_impl/features.py is the twin). ``adapt_seed_way`` rebuilds the layers as the seed does
(adapt on the data) for the tests that show both routes agree.
"""
from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Union

import numpy as np
import pandas as pd
import tensorflow as tf

from twostage.data.features import MAX_TITLE_TOKENS, FeatureSpec
from twostage.dataset import Dataset
from twostage.config import Config
from twostage.recipes import (HISTORY, NEGATIVE_PROBABILITY, NEGATIVE_TITLES, RecipeData,
                              negative_sampling_probability, query_extras)
from twostage.sampling import SAMPLING_PROBABILITY, candidate_sampling_probability
from twostage.user_features import USER_FEATURE_KEYS

layers = tf.keras.layers
STRING_KEYS: tuple[str, ...] = ("user_id", "movie_title", NEGATIVE_TITLES, *USER_FEATURE_KEYS)
INT_KEYS: tuple[str, ...] = ("timestamp", HISTORY)
# what the query tower reads (the recipes' columns when present)
QUERY_KEYS: tuple[str, ...] = ("user_id", "timestamp", HISTORY, *USER_FEATURE_KEYS)
Batch = dict[str, tf.Tensor]


class MaskedAveragePooling1D(layers.GlobalAveragePooling1D):
    """GlobalAveragePooling1D whose all-masked rows give 0 instead of Keras' 0/0 = NaN.

    Identical to the Keras layer on every row with at least one unmasked step (the masked sum
    divided by the count); a title with no token (e.g. "!!!") gets a zero text vector instead of
    NaN, which would otherwise poison the whole in-batch loss. Every ml-100k title has a token.
    """

    def call(self, inputs, mask=None):
        if mask is None:
            return super().call(inputs)
        weights = tf.expand_dims(tf.cast(mask, inputs.dtype), 2)
        total = tf.reduce_sum(inputs * weights, axis=1)
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


def user_lookup(spec: FeatureSpec) -> layers.StringLookup:
    """[B] str -> [B] int64: OOV -> 0, user_vocab[i] -> i + 1 (spec.user_index)."""
    return layers.StringLookup(vocabulary=list(spec.user_vocab), mask_token=None,
                               name="user_lookup")


def title_lookup(spec: FeatureSpec) -> layers.StringLookup:
    """[B] str -> [B] int64: OOV -> 0, title_vocab[i] -> i + 1 (spec.title_index)."""
    return layers.StringLookup(vocabulary=list(spec.title_vocab), mask_token=None,
                               name="title_lookup")


def timestamp_discretization(spec: FeatureSpec) -> layers.Discretization:
    """[B] int64 -> [B] int64 bucket in [0, len(ts_boundaries)] (spec.timestamp_bucket)."""
    return layers.Discretization(bin_boundaries=list(spec.ts_boundaries),
                                 name="timestamp_discretization")


def timestamp_normalization(spec: FeatureSpec) -> layers.Normalization:
    """[B] int64 -> [B] float32 standardized with the spec's exact moments
    (spec.timestamp_normalized). ``axis=None``: one scalar mean/variance, output shape = input."""
    return layers.Normalization(mean=spec.ts_mean, variance=spec.ts_variance, axis=None,
                                name="timestamp_normalization")


def title_vectorizer(spec: FeatureSpec) -> layers.TextVectorization:
    """[B] str -> [B, L] int64 token ids, 0-padded to the longest title of the batch
    (spec.title_tokens). Vocabulary = padding, [UNK], then spec.token_vocab."""
    return layers.TextVectorization(max_tokens=spec.max_tokens,
                                    vocabulary=spec.keras_token_vocabulary,
                                    name="title_vectorizer")


class FirstTokens(layers.Layer):
    """[B, L] token ids -> [B, min(L, n)]: the first ``n`` tokens of each title, the cap of
    ``twostage.data.features.MAX_TITLE_TOKENS`` (FeatureSpec tokenises the same way)."""

    def __init__(self, n: int = MAX_TITLE_TOKENS, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, tokens):
        return tokens[:, : self.n]

    def get_config(self) -> dict:
        return {**super().get_config(), "n": self.n}


def adapt_seed_way(user_ids: Iterable, timestamps: np.ndarray, corpus_titles: Iterable, *,
                   num_buckets: int = 1000, max_tokens: int = 10_000) -> dict[str, layers.Layer]:
    """The seed's preprocessing, fitted by adapt/np.unique on the raw data (tests compare it with
    the spec-built layers).

    user_ids [N] and timestamps [N] of all ratings; corpus_titles [M] every movie (u.item order).
    Keys: user_lookup, title_lookup, timestamp_discretization, timestamp_normalization,
    title_vectorizer.
    """
    ts = np.asarray(timestamps, dtype=np.int64)
    # The seed takes np.unique of the UTF-8 bytes TFDS yields.
    users = np.unique(np.array([str(u).encode("utf-8") for u in user_ids], dtype=object))
    titles_bytes = [str(t).encode("utf-8") for t in corpus_titles]
    norm = layers.Normalization(axis=None)
    norm.adapt(ts)
    vectorizer = layers.TextVectorization(max_tokens=max_tokens)
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(titles_bytes).batch(1000))
    return {
        "user_lookup": layers.StringLookup(vocabulary=users, mask_token=None),
        "title_lookup": layers.StringLookup(
            vocabulary=np.unique(np.array(titles_bytes, dtype=object)), mask_token=None),
        "timestamp_discretization": layers.Discretization(
            np.linspace(ts.min(), ts.max(), num=num_buckets).tolist()),
        "timestamp_normalization": norm,
        "title_vectorizer": vectorizer,
    }


# --- raw numpy -> tensors ----------------------------------------------------------------------
def _strings(values: np.ndarray) -> tf.Tensor:
    """[N] str / bytes / objects -> [N] tf.string (UTF-8)."""
    return tf.constant([v.decode() if isinstance(v, bytes) else str(v) for v in values],
                       dtype=tf.string, shape=[len(values)])


def to_tensors(batch: Mapping[str, np.ndarray]) -> Batch:
    """Raw numpy batch -> tensors with the dtypes the models expect: ``user_id`` /
    ``movie_title`` (/ ``negative_titles``, the user features) [N] tf.string, ``timestamp``
    [N] and ``history`` [N, H] int64, anything else (label, sampling probabilities, sample
    weight) [N] float32."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if key in STRING_KEYS:
            out[key] = _strings(value)
        elif key in INT_KEYS:
            out[key] = tf.constant(value.astype(np.int64))
        else:
            out[key] = tf.constant(value.astype(np.float32))
    return out


# --- tf.data input columns ---------------------------------------------------------------------
class CodedStrings(NamedTuple):
    """A string column of N rows as ``codes`` [N] int32 into its distinct ``values`` [U]
    tf.string: :func:`select_rows` builds a batch's strings from them (``tf.gather`` of the
    values by the batch's codes, inside the input pipeline), so no per-rating string tensor
    exists (at 25M ratings one would hold 25M strings of up to 180 bytes)."""

    codes: tf.Tensor
    values: tf.Tensor

    @classmethod
    def of(cls, column: np.ndarray) -> "CodedStrings":
        codes, values = pd.factorize(np.asarray(column, dtype=object))
        return cls(tf.constant(codes.astype(np.int32)), tf.constant(values.astype(str)))


Column = Union[tf.Tensor, CodedStrings]


def feature_columns(dataset: Dataset, with_sampling_probability: bool = False,
                    extras: Mapping[str, np.ndarray] | None = None) -> dict[str, Column]:
    """All rating rows as constant tensors: user_id/movie_title strings (:class:`CodedStrings`),
    timestamp int64, label float32 [N] (+ candidate_sampling_probability float32 [N],
    twostage.sampling; + ``extras``, the recipes' query columns of every row
    (twostage.recipes.query_columns): ``history`` [N, H] int64, the user features [N] strings).
    """
    columns = {"user_id": CodedStrings.of(dataset.user_id),
               "timestamp": tf.constant(dataset.timestamp.astype(np.int64)),
               "movie_title": CodedStrings.of(dataset.movie_title),
               "label": tf.constant(dataset.label.astype(np.float32))}
    if with_sampling_probability:
        columns[SAMPLING_PROBABILITY] = tf.constant(candidate_sampling_probability(dataset))
    for key, value in (extras or {}).items():
        columns[key] = (CodedStrings.of(value) if key in STRING_KEYS
                        else tf.constant(np.asarray(value, dtype=np.int64)))
    return columns


def query_inputs(features: Mapping[str, tf.Tensor]) -> Batch:
    """The query tower's inputs of a batch: user_id, timestamp (and the history and user
    features when present)."""
    return {k: features[k] for k in QUERY_KEYS if k in features}


def query_arrays(config: Config, recipe: RecipeData | None, user_ids: np.ndarray,
                 timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """Raw query columns of [N] user ids and timestamps, plus what ``recipe`` holds for them
    (``twostage.recipes.query_extras``): the ``history`` [N, H] of ``config.model.history``,
    the user features [N] str of ``config.model.user_features`` (twin of torch_impl.features)."""
    arrays = {"user_id": np.asarray(user_ids, dtype=object),
              "timestamp": np.asarray(timestamps, dtype=np.int64)}
    arrays.update(query_extras(recipe, config, arrays["user_id"], arrays["timestamp"]))
    return arrays


def select_rows(columns: Mapping[str, Column], rows: tf.Tensor) -> Batch:
    """Rows ``rows`` ([B] int64) of every column (``tf.gather``; usable inside tf.data map);
    a :class:`CodedStrings` column gives the rows' strings."""
    return {key: (tf.gather(column.values, tf.gather(column.codes, rows))
                  if isinstance(column, CodedStrings) else tf.gather(column, rows))
            for key, column in columns.items()}


class NegativeColumns:
    """The mixed negatives of a batch (``twostage.recipes``) from their title ids [N] (1-based
    into ``spec.title_vocab``): ``negative_titles`` [N] string and
    ``negative_sampling_probability`` [N] float32 (usable inside tf.data map)."""

    def __init__(self, spec: FeatureSpec, n: int):
        self.n, self.num_titles = int(n), len(spec.title_vocab)
        self.vocab = tf.constant(list(spec.title_vocab), dtype=tf.string)
        self.probability = tf.constant(negative_sampling_probability(self.num_titles, self.n))

    def __call__(self, ids: tf.Tensor) -> Batch:
        return {NEGATIVE_TITLES: tf.gather(self.vocab, ids - 1),
                NEGATIVE_PROBABILITY: self.probability}

    def sampled_in_graph(self) -> Batch:
        """Unshared (``--no-shared-batches``) batches: N ids drawn by tf.random, not the shared
        ``twostage.recipes.sample_negatives`` stream."""
        return self(tf.random.uniform([self.n], 1, self.num_titles + 1, dtype=tf.int64))


# --- schema features (twostage.data.schema_data): one layer per feature kind ----------------------
PADDED_KINDS = ("multi_category", "text")


def encoded_tensors(arrays: Mapping[str, np.ndarray]) -> Batch:
    """Encoded numpy columns (``SchemaDataset.examples`` / ``query_inputs`` /
    ``candidate_inputs``) -> tensors: integers int64, floats and bools float32, the dtypes the
    schema towers read (twin of ``torch_impl.features.to_tensors``).

    Raises:
        TypeError: a column of strings or objects (encode it with the SchemaDataset first).
    """
    out = {}
    for key, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind not in "iufb":
            raise TypeError(f"column {key!r} has dtype {a.dtype}; the schema towers read the "
                            "SchemaDataset's encoded int64 / float32 arrays")
        out[key] = tf.constant(a.astype(np.int64 if a.dtype.kind in "iu" else np.float32))
    return out


def trim_padding(ids: tf.Tensor) -> tf.Tensor:
    """[B, L] ids padded with 0 on the right -> [B, L'], L' the batch's longest row: the width
    TextVectorization pads a batch to, so the pooled sums run over the seed's shapes (a wider
    reduction can round differently: 1e-8 per step, 1e-4 of the loss after an epoch)."""
    width = tf.reduce_max(tf.reduce_sum(tf.cast(ids != 0, tf.int32), axis=1))
    return ids[:, :width]


class SlotInput(layers.Layer):
    """One schema slot (``twostage.data.schema_data.Slot``) -> [B, slot.width(dim)]:

    - ``id`` / ``category``: ``embedding(x)``, x [B] int64 (0 = unknown);
    - ``multi_category`` / ``text``: :class:`MaskedAveragePooling1D` of
      ``Embedding(mask_zero=True)`` over x [B, L] (0 = padding; no id: a zero vector), the
      seed's title-text pooling;
    - ``timestamp`` / ``numeric``: [``embedding(bucket)`` when the slot has buckets,
      ``norm`` [B, 1]], the seed's timestamp features.
    Keras default initializers (embeddings uniform(-0.05, 0.05)). Torch twin:
    ``torch_impl.features.SlotInput``.
    """

    def __init__(self, slot, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.slot = slot
        padded = slot.kind in PADDED_KINDS
        self.embedding = (layers.Embedding(slot.rows, dim, mask_zero=padded)
                          if slot.rows else None)
        self.pooling = MaskedAveragePooling1D() if padded else None

    def call(self, batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        slot = self.slot
        if slot.kind in ("id", "category"):
            return self.embedding(batch[slot.name])
        if self.pooling is not None:
            ids = trim_padding(batch[slot.name])
            return self.pooling(self.embedding(ids), mask=self.embedding.compute_mask(ids))
        norm = tf.reshape(batch[f"{slot.name}/norm"], (-1, 1))
        if self.embedding is None:
            return norm
        return tf.concat([self.embedding(batch[f"{slot.name}/bucket"]), norm], axis=1)


class SlotConcat(layers.Layer):
    """A tower's slots side by side: [B, sum of slot widths] (the seed's UserModel /
    MovieModel for any schema). ``inputs[i]`` is the :class:`SlotInput` of ``slots[i]``."""

    def __init__(self, slots, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.slots = tuple(slots)
        self.inputs = [SlotInput(s, dim) for s in self.slots]
        self.out_features = sum(s.width(dim) for s in self.slots)

    def call(self, batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return tf.concat([layer(batch) for layer in self.inputs], axis=1)
