"""The seed's Keras/TFRS models, with preprocessing built from the shared FeatureSpec.

Class and attribute names are the seed's, so weights map 1:1 onto torch_impl (see "Model
naming" in docs/CONTRIBUTING.md). All models take RAW features:
``user_id`` [B] string, ``timestamp`` [B] int64, ``movie_title`` [B] string.

Deviation from the seed's text, as in the TFRS tutorials it copies: the normalized timestamp
([B]) is reshaped to [B, 1] before the concat (the seed's concat of [B, 32] with [B] cannot run).

Weights are named by attribute path (:func:`named_variables`, derived by walking the models'
attributes), e.g. ``query_model/dense_layers/0/kernel`` (Keras layout [in, out]; torch Linear
weight = kernel.T), ``candidate_model/embedding_model/title_text_embedding/embeddings``
([rows, dim]) and ``ranking_model/ratings/2/bias``; the parity suite compares them with torch's.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from twostage.config import EMPTY_TITLE_MODES, Config
from twostage.data.features import FeatureSpec
from twostage.recipes import (HISTORY, HISTORY_LENGTH, NUM_GENRES, NUM_RELEASE_BUCKETS,
                              not_attached, query_input)
from twostage.user_features import USER_FEATURES

from . import features
from .features import MaskedAveragePooling1D, query_inputs
from . import tasks

keras = tf.keras


def text_pooling(empty_title: str) -> keras.layers.Layer:
    """``"nan"``: the seed's Keras GlobalAveragePooling1D exactly; ``"zero"`` (default, as
    torch_impl): :class:`MaskedAveragePooling1D`."""
    if empty_title not in EMPTY_TITLE_MODES:
        raise ValueError(f"empty_title={empty_title!r} must be one of {EMPTY_TITLE_MODES}")
    return (keras.layers.GlobalAveragePooling1D() if empty_title == "nan"
            else MaskedAveragePooling1D())


def dense_stack(layer_sizes: Sequence[int], name: str = "dense_layers") -> keras.Sequential:
    """Dense per size, ReLU on all but the last (the seed's tower MLP)."""
    stack = keras.Sequential(name=name)
    for size in layer_sizes[:-1]:
        stack.add(keras.layers.Dense(size, activation="relu"))
    for size in layer_sizes[-1:]:
        stack.add(keras.layers.Dense(size))
    return stack


class UserModel(keras.Model):
    """{"user_id": [B] str, "timestamp": [B] int64} -> [B, 2 * dim + 1]
    = concat[user embedding, timestamp-bucket embedding, normalized timestamp].

    ``history`` (the query tower of ``config.model.history``): also the masked mean of
    ``history_embedding`` over ``inputs["history"]`` [B, H] int64 title ids (0 = padding, the
    spec's title_index; twostage.recipes) -> [B, 3 * dim + 1]; no title gives zeros.

    ``user_features`` (the query tower of ``config.model.user_features``; twostage.user_features):
    also, per feature of ``USER_FEATURES`` in order (gender, age group, occupation, zip prefix),
    ``StringLookup(vocabulary, mask_token=None)`` (OOV -> 0) then ``Embedding(len + 1, dim)``
    of ``inputs[key]`` [B] str, after the history part -> + 4 * dim. Why: a user whose id row
    never trained still gets a tower output from their demographics."""

    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, history: bool = False,
                 user_features: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.user_features = bool(user_features)
        for feature in USER_FEATURES:
            setattr(self, feature.attribute, keras.Sequential([
                keras.layers.StringLookup(vocabulary=list(feature.vocabulary), mask_token=None,
                                          name=f"{feature.key}_lookup"),
                keras.layers.Embedding(feature.rows, embedding_dim),
            ], name=feature.attribute) if user_features else None)
        self.history_embedding = None
        if history:
            self.history_embedding = keras.Sequential([
                keras.layers.Embedding(spec.num_title_rows, embedding_dim, mask_zero=True),
                MaskedAveragePooling1D(),
            ], name="history_embedding")
        self.user_embedding = keras.Sequential([
            features.user_lookup(spec),
            keras.layers.Embedding(spec.num_user_rows, embedding_dim),
        ], name="user_embedding")
        self.timestamp_embedding = keras.Sequential([
            features.timestamp_discretization(spec),
            keras.layers.Embedding(spec.num_bucket_rows, embedding_dim),
        ], name="timestamp_embedding")
        self.normalized_timestamp = features.timestamp_normalization(spec)

    def call(self, inputs):
        parts = [self.user_embedding(inputs["user_id"]),
                 self.timestamp_embedding(inputs["timestamp"]),
                 tf.reshape(self.normalized_timestamp(inputs["timestamp"]), (-1, 1))]
        if self.history_embedding is not None:
            parts.append(self.history_embedding(query_input(
                inputs, HISTORY, "history", "twostage.recipes.RecipeData.histories")))
        for feature in USER_FEATURES if self.user_features else ():
            parts.append(getattr(self, feature.attribute)(query_input(
                inputs, feature.key, "user_features", "twostage.recipes.query_extras")))
        return tf.concat(parts, axis=1)


def _fill(variable: tf.Variable, table: np.ndarray, what: str) -> None:
    """Assign ``table`` to the int64 ``variable`` of the same shape (ValueError naming
    ``what``)."""
    if tuple(table.shape) != tuple(variable.shape):
        raise ValueError(f"{what} {table.shape} does not fit the model's "
                         f"{tuple(variable.shape)} (another spec?)")
    variable.assign(np.asarray(table, dtype=np.int64))


class MovieModel(keras.Model):
    """[B] str titles -> [B, 2 * dim] = concat[title embedding, masked mean of token embeddings].

    Token ids come from TextVectorization (0 = padding, masked by ``mask_zero``); the text table
    has ``max_tokens`` rows as in the seed, whatever the learned vocabulary size. A title with
    no token pools to zeros (``empty_title="zero"``) or NaN as Keras (``"nan"``).

    ``genres`` (the candidate tower of ``config.model.genres``): also the masked mean of
    ``genre_embedding`` (NUM_GENRES + 1 rows, 0 = padding) over the title's genre ids, gathered
    by title id from ``genre_table`` (a non-trainable int64 variable: data, filled by
    :meth:`attach_genres` from ``twostage.recipes.genre_table``) -> [B, 3 * dim].

    ``release_date`` (``config.model.release_date``): also ``release_embedding`` (a plain
    Embedding of NUM_RELEASE_BUCKETS rows) of the title's release bucket, gathered by title id
    from ``release_table`` (non-trainable, filled by :meth:`attach_releases` from
    ``twostage.recipes.release_table``) -> [B, (3 + genres) * dim].
    """

    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, empty_title: str = "zero",
                 genres: bool = False, release_date: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.genre_embedding = None
        if genres:
            self.genre_embedding = keras.Sequential([
                keras.layers.Embedding(NUM_GENRES + 1, embedding_dim, mask_zero=True),
                MaskedAveragePooling1D(),
            ], name="genre_embedding")
            self.genre_table = tf.Variable(tf.zeros([spec.num_title_rows, NUM_GENRES], tf.int64),
                                           trainable=False, name="genre_table")
        self.genres_attached = False
        self.release_embedding = None
        if release_date:
            self.release_embedding = keras.layers.Embedding(NUM_RELEASE_BUCKETS, embedding_dim,
                                                            name="release_embedding")
            self.release_table = tf.Variable(tf.zeros([spec.num_title_rows], tf.int64),
                                             trainable=False, name="release_table")
        self.releases_attached = False
        self.title_embedding = keras.Sequential([
            features.title_lookup(spec),
            keras.layers.Embedding(spec.num_title_rows, embedding_dim),
        ], name="title_embedding")
        self.title_vectorizer = features.title_vectorizer(spec)
        self.title_text_embedding = keras.Sequential([
            self.title_vectorizer,
            features.FirstTokens(name="first_tokens"),
            keras.layers.Embedding(spec.max_tokens, embedding_dim, mask_zero=True),
            text_pooling(empty_title),
        ], name="title_text_embedding")

    def attach_genres(self, table: np.ndarray) -> None:
        """Fill ``genre_table`` ([title rows, NUM_GENRES] genre ids per title id)."""
        _fill(self.genre_table, table, "genre table")
        self.genres_attached = True

    def attach_releases(self, table: np.ndarray) -> None:
        """Fill ``release_table`` ([title rows] release bucket per title id)."""
        _fill(self.release_table, table, "release table")
        self.releases_attached = True

    def call(self, titles):
        parts = [self.title_embedding(titles), self.title_text_embedding(titles)]
        if self.genre_embedding is not None or self.release_embedding is not None:
            ids = self.title_embedding.layers[0](titles)  # its StringLookup: the title id
        if self.genre_embedding is not None:
            if not self.genres_attached:
                raise RuntimeError(not_attached("genre table"))
            parts.append(self.genre_embedding(tf.gather(self.genre_table, ids)))
        if self.release_embedding is not None:
            if not self.releases_attached:
                raise RuntimeError(not_attached("release table"))
            parts.append(self.release_embedding(tf.gather(self.release_table, ids)))
        return tf.concat(parts, axis=1)


def normalized(x: tf.Tensor, normalize: bool) -> tf.Tensor:
    """``tf.math.l2_normalize(x, axis=1)`` when ``normalize`` (cosine scores), else ``x``."""
    return tf.math.l2_normalize(x, axis=1) if normalize else x


class Tower(keras.Model):
    """embedding_model -> dense_layers ([B, layer_sizes[-1]]), L2-normalised when
    ``normalize`` (``config.task.normalize``: cosine scores; the index sees unit vectors too)."""

    def __init__(self, embedding_model: keras.Model, layer_sizes: Sequence[int],
                 normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.embedding_model = embedding_model
        self.dense_layers = dense_stack(layer_sizes)
        self.normalize = normalize

    def call(self, inputs):
        return normalized(self.dense_layers(self.embedding_model(inputs)), self.normalize)


class QueryModel(Tower):
    """Raw query features -> [B, layer_sizes[-1]] query embeddings."""

    def __init__(self, spec: FeatureSpec, layer_sizes: Sequence[int], embedding_dim: int = 32,
                 normalize: bool = False, history: bool = False, user_features: bool = False,
                 **kwargs):
        super().__init__(UserModel(spec, embedding_dim, history, user_features), layer_sizes,
                         normalize, **kwargs)


class CandidateModel(Tower):
    """[B] str titles -> [B, layer_sizes[-1]] candidate embeddings."""

    def __init__(self, spec: FeatureSpec, layer_sizes: Sequence[int], embedding_dim: int = 32,
                 empty_title: str = "zero", normalize: bool = False, genres: bool = False,
                 release_date: bool = False, **kwargs):
        super().__init__(MovieModel(spec, embedding_dim, empty_title, genres, release_date),
                         layer_sizes, normalize, **kwargs)


class LearnedTemperature(keras.layers.Layer):
    """A trainable softmax temperature ``T = exp(log_temperature)``, a scalar started at
    ``log(initial)`` (the log keeps T positive). The loss divides the queries by T before
    ``tfrs.tasks.Retrieval`` (built without a temperature then): scores ``(q / T) @ c^T``.
    Weight name ``temperature/log_temperature``; the model's Keras Adagrad updates it like every
    weight (its own accumulator, started at initial_accumulator_value)."""

    def __init__(self, initial: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not initial > 0:
            raise ValueError(f"initial temperature {initial} must be > 0")
        self.log_temperature = self.add_weight(
            name="log_temperature", shape=(), dtype=tf.float32,
            initializer=keras.initializers.Constant(float(np.log(initial))))

    def value(self) -> tf.Tensor:
        """T = exp(log_temperature), a scalar."""
        return tf.exp(self.log_temperature)


class MovielensRetrievalModel(tfrs.models.Model):
    """Two towers + tfrs.tasks.Retrieval (in-batch softmax, SUM over the batch).

    Batch features: user_id, timestamp, movie_title, and ``candidate_sampling_probability`` [B]
    when ``config.task.use_sampling_probability``. Factorized top-k metrics (over the corpus
    given to :func:`tasks.attach_corpus_metrics`) are computed only when not training, as the
    seed does, and always score-based: with ``remove_accidental_hits`` the title ids go to the
    loss only (TFRS would otherwise switch the metric to id-based matching against an id-less
    index). A title with no token pools as ``config.model.empty_title`` says.
    """

    def __init__(self, spec: FeatureSpec, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        m = config.model
        normalize = config.task.normalize
        self.query_model = QueryModel(spec, m.layer_sizes, m.embedding_dim, normalize, m.history,
                                      m.user_features)
        self.candidate_model = CandidateModel(spec, m.layer_sizes, m.embedding_dim, m.empty_title,
                                              normalize, m.genres, m.release_date)
        if config.task.learn_temperature:
            self.temperature = LearnedTemperature(config.task.temperature or 1.0)
        self.task = tasks.make_retrieval_task(config)

    def embeddings(self, features: dict) -> tuple[tf.Tensor, tf.Tensor]:
        """(query [B, D], candidate [B, D]) embeddings of a batch."""
        query = self.query_model(query_inputs(features))
        return query, self.candidate_model(features["movie_title"])

    def compute_loss(self, features, training=False):
        query_embeddings, movie_embeddings = self.embeddings(features)
        query_embeddings = tasks.scaled_queries(self, query_embeddings)
        return tasks.retrieval_loss(self.task, self.config, query_embeddings, movie_embeddings,
                                    features, training=training,
                                    candidate_model=self.candidate_model)


class RankingModel(keras.Model):
    """Raw features -> [B, 1] sigmoid probability: MLP on concat[user (65), movie (64)]."""

    def __init__(self, spec: FeatureSpec, layer_sizes: Sequence[int] = (256, 64),
                 embedding_dim: int = 32, empty_title: str = "zero", **kwargs):
        super().__init__(**kwargs)
        self.user_embeddings = UserModel(spec, embedding_dim)
        self.movie_embeddings = MovieModel(spec, embedding_dim, empty_title)
        self.ratings = keras.Sequential(
            [keras.layers.Dense(size, activation="relu") for size in layer_sizes]
            + [keras.layers.Dense(1, activation="sigmoid")], name="ratings")

    def call(self, inputs):
        user_embedding = self.user_embeddings({"user_id": inputs["user_id"],
                                               "timestamp": inputs["timestamp"]})
        movie_embedding = self.movie_embeddings(inputs["movie_title"])
        return self.ratings(tf.concat([user_embedding, movie_embedding], axis=1))


class MovielensRankingModel(tfrs.models.Model):
    """RankingModel + tfrs.tasks.Ranking(BinaryCrossentropy, [BinaryAccuracy]) on ``label``
    (the seed's user_pref = rating >= threshold). Metrics update in training too, as the seed."""

    def __init__(self, spec: FeatureSpec, config: Config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        m = config.model
        self.ranking_model = RankingModel(spec, m.ranking_layer_sizes, m.embedding_dim,
                                          m.empty_title)
        self.task = tasks.make_ranking_task(config)

    def compute_loss(self, features, training=False):
        predictions = self.ranking_model({"user_id": features["user_id"],
                                          "timestamp": features["timestamp"],
                                          "movie_title": features["movie_title"]})
        return self.task(labels=features["label"], predictions=predictions)


# --- construction ------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """tf.keras.utils.set_random_seed for the block: unseeded tf_keras initializers draw their op
    seeds from Python's ``random``, so all three generators must be seeded for a reproducible
    init. Python's and numpy's global states are restored afterwards (no leak to the caller)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    tf.keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _sample_inputs(spec: FeatureSpec) -> dict[str, tf.Tensor]:
    """One in-vocabulary example, to create every (lazily built) variable."""
    return {"user_id": tf.constant([spec.user_vocab[0]]),
            "timestamp": tf.constant([int(spec.ts_boundaries[0])], tf.int64),
            "movie_title": tf.constant([spec.title_vocab[0]]),
            HISTORY: tf.zeros([1, HISTORY_LENGTH], tf.int64),
            **{f.key: tf.constant([f.vocabulary[0]]) for f in USER_FEATURES}}


def build_retrieval_model(spec: FeatureSpec, config: Config,
                          corpus_titles: np.ndarray | None = None) -> MovielensRetrievalModel:
    """The seed's retrieval model with all variables created (init seeded by ``config.seed``).

    ``corpus_titles`` [M] (Dataset.corpus_titles): attach FactorizedTopK over that corpus;
    without it the task has no factorized metrics (enough for losses, gradients, serving).
    """
    with seeded(config.seed):
        model = MovielensRetrievalModel(spec, config)
        movie = model.candidate_model.embedding_model
        # only to create the variables: the zero tables are never served
        movie.genres_attached = movie.releases_attached = True
        model.embeddings(_sample_inputs(spec))
        movie.genres_attached = movie.releases_attached = False
    if corpus_titles is not None:
        tasks.attach_corpus_metrics(model, corpus_titles)
    return model


def build_ranking_model(spec: FeatureSpec, config: Config) -> MovielensRankingModel:
    """The seed's ranking model with all variables created (init seeded by ``config.seed + 1``,
    so it does not start from the retrieval towers' draws)."""
    with seeded(config.seed + 1):
        model = MovielensRankingModel(spec, config)
        model.ranking_model(_sample_inputs(spec))
    return model


# --- weights by name ---------------------------------------------------------------------------
def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else prefix or name


def _short_name(variable: tf.Variable) -> str:
    """``.../dense_3/kernel:0`` -> ``kernel`` (the name the layer gave ``add_weight``)."""
    return variable.name.split("/")[-1].split(":")[0]


def _weight_children(layer: keras.layers.Layer) -> list[tuple[str, keras.layers.Layer]]:
    """(name, sub-layer) of every sub-layer of ``layer`` that owns trainable weights.

    A Sequential names its layers by their index among the layers that own weights, and by
    nothing when only one does (``user_embedding`` = [StringLookup, Embedding] ->
    ``user_embedding/embeddings``; ``ratings`` = 3 Dense -> ``ratings/2/bias``). Any other layer
    names them by the public attribute holding them, in assignment order (``vars``)."""
    if isinstance(layer, keras.Sequential):
        owners = [child for child in layer.layers if child.trainable_weights]
        return [("" if len(owners) == 1 else str(i), child) for i, child in enumerate(owners)]
    return [(name, value) for name, value in vars(layer).items()
            if not name.startswith("_") and isinstance(value, keras.layers.Layer)
            and value.trainable_weights]


def _walk(layer: keras.layers.Layer, prefix: str, out: dict[str, tf.Variable]) -> None:
    """Add ``layer``'s weights to ``out`` by attribute path: its sub-layers' (recursively), then
    the weights it created itself with ``add_weight`` (``Dense.kernel``, ``Embedding.embeddings``;
    tf_keras keeps those in ``_trainable_weights``, base_layer.py ``add_weight``)."""
    for name, child in _weight_children(layer):
        _walk(child, _join(prefix, name), out)
    for variable in layer._trainable_weights:
        name = _join(prefix, _short_name(variable))
        if name in out and out[name] is not variable:
            raise RuntimeError(f"two weights of {type(layer).__name__} are both named {name!r}; "
                               "give them distinct names (add_weight(name=...))")
        out[name] = variable


def named_variables(model: keras.layers.Layer) -> dict[str, tf.Variable]:
    """Every trainable variable of ``model`` by attribute path, e.g.
    ``query_model/embedding_model/user_embedding/embeddings``, ``query_model/dense_layers/0/kernel``
    (path rules: :func:`_weight_children`). Raises if a variable is reachable only through a
    private attribute (it would otherwise go unsaved, untransferred and unchecked)."""
    out: dict[str, tf.Variable] = {}
    _walk(model, "", out)
    named = {id(v) for v in out.values()}
    unnamed = [v.name for v in model.trainable_variables if id(v) not in named]
    if unnamed or len(named) != len(out):
        raise RuntimeError(f"{type(model).__name__}: trainable variables {unnamed[:3]} have no "
                           "attribute path (or one variable has two); assign their layers to "
                           "public attributes")
    return out


def get_weights(model) -> dict[str, np.ndarray]:
    """All trainable weights by attribute path -> numpy copies (see module docstring)."""
    return {name: v.numpy().copy() for name, v in named_variables(model).items()}


def set_weights(model, weights: dict[str, np.ndarray]) -> None:
    """Assign every named weight; names and shapes must match exactly (nothing partial)."""
    assign_by_name(named_variables(model), weights, f"weight names of {type(model).__name__}")


def assign_by_name(variables: dict[str, tf.Variable], values, what: str) -> None:
    """Assign ``values[name]`` to every variable; KeyError unless the names match exactly,
    ValueError (naming the variable) on a shape mismatch; nothing is assigned then."""
    missing = sorted(set(variables) - set(values))
    unexpected = sorted(set(values) - set(variables))
    if missing or unexpected:
        raise KeyError(f"{what} do not match: missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}")
    arrays = {name: np.asarray(values[name]) for name in variables}
    for name, variable in variables.items():
        if tuple(arrays[name].shape) != tuple(variable.shape):
            raise ValueError(f"{name}: shape {arrays[name].shape} does not fit "
                             f"{tuple(variable.shape)} (built from another spec/config?)")
    for name, variable in variables.items():
        variable.assign(arrays[name].astype(variable.dtype.as_numpy_dtype))
