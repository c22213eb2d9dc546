"""The seed's Keras models as ``nn.Module``s, with the seed's attribute names (weights map 1:1).

Inputs are dicts of encoded tensors (see :mod:`torch_impl.features`); the Keras preprocessing
layers of the seed live in ``data.features.FeatureSpec`` and are applied before the model.

Weight mapping to Keras: ``nn.Embedding.weight`` = Keras ``embeddings``; ``nn.Linear.weight`` =
Keras Dense ``kernel`` TRANSPOSED ([out, in] vs [in, out]); ``nn.Linear.bias`` = Dense ``bias``.
``dense_layers`` / ``ratings`` are :class:`DenseStack` lists of Linear layers only (activations are
applied in ``forward``), so ``dense_layers.{i}`` is the i-th Keras Dense of the Sequential.

Initialisation as Keras (tf_keras/src/layers/core/embedding.py: ``embeddings_initializer=
"uniform"`` = RandomUniform(-0.05, 0.05); core/dense.py: ``kernel_initializer="glorot_uniform"``,
``bias_initializer="zeros"``; initializers_v2.py GlorotUniform = VarianceScaling(1, "fan_avg",
"uniform"): U(-l, l), l = sqrt(6 / (fan_in + fan_out))), drawn from a ``torch.Generator`` seeded
with ``config.seed`` (the values differ from TF's RNG; parity tests copy weights).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twostage.config import EMPTY_TITLE_MODES, Config
from twostage.data.features import FeatureSpec
from twostage.recipes import (HISTORY, NUM_GENRES, NUM_RELEASE_BUCKETS, not_attached,
                              query_input)
from twostage.user_features import USER_FEATURES

Batch = Mapping[str, torch.Tensor]
EMBEDDING_INIT_LIMIT = 0.05  # Keras RandomUniform default bounds of Embedding
L2_EPSILON = 1e-12  # tf.math.l2_normalize's default epsilon (on the squared norm)
# Keras weight-name prefix of each stage's model (tfrs_impl's names: the ranking model's layers
# live under the seed's ``ranking_model`` attribute of MovielensRankingModel).
KERAS_PREFIX: dict[str, str] = {"retrieval": "", "ranking": "ranking_model/"}


def masked_mean(embedded: torch.Tensor, mask: torch.Tensor, empty: str = "zero") -> torch.Tensor:
    """Keras ``GlobalAveragePooling1D`` with a mask (pooling/global_average_pooling1d.py, call):
    ``sum(inputs * mask, axis=1) / sum(mask, axis=1)``.

    embedded [B, L, D] float, mask [B, L] bool -> [B, D].
    A row with no unmasked step (a title with no token) is 0/0 = NaN in Keras (checked with
    tf_keras 2.21: ``Embedding(mask_zero=True) + GlobalAveragePooling1D`` on [[0, 0, 0]] gives NaN).
    ``empty="nan"`` reproduces that; ``empty="zero"`` (default) returns a zero vector instead, so
    one token-less title cannot turn the whole loss into NaN. Every ml-100k title has >= 1 token,
    so both modes agree on the real data; the synthetic data has one token-less title ("!!!").
    """
    if empty not in EMPTY_TITLE_MODES:
        raise ValueError(f"empty={empty!r} must be one of {EMPTY_TITLE_MODES}")
    weights = mask.to(embedded.dtype)
    total = (embedded * weights.unsqueeze(-1)).sum(dim=1)
    count = weights.sum(dim=1, keepdim=True)
    if empty == "zero":
        count = count.clamp_min(1.0)  # the sum of an empty row is exactly 0, so the mean is 0
    return total / count


def bag_mean(tokens: torch.Tensor, weight: torch.Tensor, empty: str = "zero",
             flat: bool | None = None) -> torch.Tensor:
    """:func:`masked_mean` of ``weight[tokens]`` with mask ``tokens != 0``, fused in one
    ``embedding_bag`` sum over the non-padding tokens (each bag sums its tokens in order, as the
    masked sum does; the padding row gets no gradient, as Keras' masked product gives it 0).
    About 2x faster than gather * mask + sum. tokens [B, L] int64, weight [V, D] -> [B, D].

    ``flat`` (default: on the CPU): pass only the non-padding tokens, with bag offsets, so the
    backward sorts ~1/3 of the ids a padded [B, L] input would give it. Selecting them
    (``tokens[mask]``) sizes a tensor on the host, so elsewhere (an accelerator, where that would
    stall every step) the padded [B, L] input goes in with ``padding_idx=0``, which skips the
    same tokens in the same order: the same numbers.
    """
    if empty not in EMPTY_TITLE_MODES:
        raise ValueError(f"empty={empty!r} must be one of {EMPTY_TITLE_MODES}")
    mask = tokens != 0
    counts = mask.sum(dim=1)
    if flat is None:
        flat = tokens.device.type == "cpu"
    if flat:
        offsets = counts.cumsum(dim=0) - counts
        total = F.embedding_bag(tokens[mask], weight, offsets, mode="sum")
    else:
        total = F.embedding_bag(tokens, weight, mode="sum", padding_idx=0)
    count = counts.unsqueeze(1).to(total.dtype)
    if empty == "zero":
        count = count.clamp_min(1.0)
    return total / count


class DenseStack(nn.ModuleList):
    """A Keras ``Sequential`` of ``Dense`` layers: Linear layers with per-layer activations.

    ``activations[i]`` in {"relu", "sigmoid", None}; [B, in_features] -> [B, sizes[-1]].
    """

    def __init__(self, in_features: int, sizes: Sequence[int],
                 activations: Sequence[str | None]) -> None:
        if len(sizes) != len(activations):
            raise ValueError(f"{len(sizes)} layer sizes but {len(activations)} activations")
        layers, width = [], in_features
        for size in sizes:
            layers.append(nn.Linear(width, int(size)))
            width = int(size)
        super().__init__(layers)
        self.activations = tuple(activations)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, activation in zip(self, self.activations):
            x = layer(x)
            if activation == "relu":
                x = torch.relu_(x)  # in place: Linear's backward does not need its output
            elif activation == "sigmoid":
                x = torch.sigmoid(x)
        return x


def tower_stack(in_features: int, layer_sizes: Sequence[int]) -> DenseStack:
    """The seed's tower MLP: ReLU on all layers but the last (linear output)."""
    acts = ["relu"] * (len(layer_sizes) - 1) + [None]
    return DenseStack(in_features, layer_sizes, acts)


SPARSE_MIN_ROWS = 4096
"""Id tables (users, titles) of at least this many rows get sparse gradients on the CPU: a
dense gradient costs a pass over the whole table per step (zeroing, scatter, KerasAdagrad's
scan for touched rows), a sparse one only the batch's rows, which Keras' IndexedSlices update
reaches too. Measured here (batch 2,048, dim 32, one thread, step of an embedding alone): 1,000
rows 0.66 ms dense / 0.77 ms sparse; 5,000: 1.11 / 0.81; 20,000: 6.8 / 1.0; 160,000 (the
users of ML-25M): 35 / 1.1. ml-100k's tables (944 users, 1,665 titles) stay dense, bitwise as
before; the two sum a row's duplicate gradients in different orders."""


def embedding(rows: int, dim: int, sparse_min_rows: int | None = None) -> nn.Embedding:
    """``nn.Embedding(rows, dim)``, with sparse gradients when ``rows >= sparse_min_rows``."""
    return nn.Embedding(rows, dim, sparse=sparse_min_rows is not None and rows >= sparse_min_rows)


def sparse_min_rows(device: str | torch.device) -> int | None:
    """:data:`SPARSE_MIN_ROWS` on the CPU; None (dense) on an accelerator, where the dense
    update is one fused kernel and sparse tensors would break CUDA graph capture."""
    return SPARSE_MIN_ROWS if torch.device(device).type == "cpu" else None


class NormalizedTimestamp(nn.Module):
    """Stands for the seed's Keras ``Normalization`` layer: the standardisation itself is done by
    ``FeatureSpec.timestamp_normalized`` (float32, as Keras); here [B] -> [B, 1] (Keras expands a
    rank-1 input to [B, 1] before the concat). No parameters, as Keras' are non-trainable."""

    def forward(self, ts_norm: torch.Tensor) -> torch.Tensor:
        return ts_norm.reshape(-1, 1)


class UserModel(nn.Module):
    """Query features: concat [user_embedding(user_index), timestamp_embedding(ts_bucket),
    ts_norm] -> [B, 2 * dim + 1] (65 for dim 32). With ``history_rows`` (the query tower of
    ``config.model.history``) also the masked mean of ``history_embedding`` over the
    ``history`` title ids [B, H] (0 = padding; no title: a zero vector) -> [B, 3 * dim + 1].

    ``user_features`` (the query tower of ``config.model.user_features``; twostage.user_features):
    also, per feature of ``USER_FEATURES`` in order (gender, age group, occupation, zip prefix),
    ``<attribute>(inputs[key])`` [B, dim] of its [B] int64 ids (0 = OOV, Keras StringLookup's
    index; ``user_features.encode``), after the history part -> + 4 * dim. Why: a user whose
    id row never trained still gets a tower output from their demographics."""

    def __init__(self, num_users: int, num_buckets: int, dim: int = 32,
                 history_rows: int | None = None, sparse_min_rows: int | None = None,
                 user_features: bool = False) -> None:
        super().__init__()
        self.user_embedding = embedding(num_users, dim, sparse_min_rows)
        self.timestamp_embedding = nn.Embedding(num_buckets, dim)
        self.normalized_timestamp = NormalizedTimestamp()
        self.history_embedding = None if history_rows is None else nn.Embedding(history_rows, dim)
        self.user_features = bool(user_features)
        for feature in USER_FEATURES:
            setattr(self, feature.attribute,
                    nn.Embedding(feature.rows, dim) if user_features else None)
        self.out_features = ((2 if history_rows is None else 3)
                             + (len(USER_FEATURES) if user_features else 0)) * dim + 1

    def forward(self, inputs: Batch) -> torch.Tensor:
        parts = [self.user_embedding(inputs["user_index"]),
                 self.timestamp_embedding(inputs["ts_bucket"]),
                 self.normalized_timestamp(inputs["ts_norm"])]
        if self.history_embedding is not None:
            history = query_input(inputs, HISTORY, "history",
                                  "twostage.recipes.RecipeData.histories")
            parts.append(bag_mean(history, self.history_embedding.weight))
        for feature in USER_FEATURES if self.user_features else ():
            parts.append(getattr(self, feature.attribute)(query_input(
                inputs, feature.key, "user_features", "twostage.recipes.query_extras")))
        return torch.cat(parts, dim=1)


def _fill(buffer: torch.Tensor, table: np.ndarray, what: str) -> None:
    """Copy ``table`` into the int64 ``buffer`` of the same shape (ValueError naming ``what``)."""
    if tuple(table.shape) != tuple(buffer.shape):
        raise ValueError(f"{what} {table.shape} does not fit the model's {tuple(buffer.shape)} "
                         "(another spec?)")
    buffer.copy_(torch.from_numpy(np.asarray(table, dtype=np.int64)))


class MovieModel(nn.Module):
    """Candidate features: concat [title_embedding(title_index), masked mean of
    title_text_embedding(title_tokens)] -> [B, 2 * dim] (64 for dim 32). Token id 0 is padding
    (Keras ``Embedding(mask_zero=True)``); see :func:`masked_mean` for the token-less title.

    ``genres`` (the candidate tower of ``config.model.genres``): also the masked mean of
    ``genre_embedding`` (NUM_GENRES + 1 rows, 0 = padding) over the title's genre ids, read from
    ``genre_table`` [title rows, NUM_GENRES] (a buffer, not a weight: data, filled by
    :meth:`attach_genres` from ``twostage.recipes.genre_table``) -> [B, 3 * dim].

    ``release_date`` (``config.model.release_date``): also row ``release_table[title_index]``
    of ``release_embedding`` (NUM_RELEASE_BUCKETS rows; the table a buffer filled by
    :meth:`attach_releases` from ``twostage.recipes.release_table``) -> [B, (3 + genres) * dim]."""

    def __init__(self, num_titles: int, max_tokens: int, dim: int = 32,
                 empty_title: str = "zero", genres: bool = False,
                 token_table: np.ndarray | None = None,
                 sparse_min_rows: int | None = None, release_date: bool = False) -> None:
        super().__init__()
        # [num_titles, L] tokens per title id (FeatureSpec.title_token_table; a buffer, not a
        # weight): what a batch without title_tokens gathers by title_index, as the seed's
        # tower maps a title to its tokens itself (TextVectorization inside the model)
        self.register_buffer("title_token_table", None if token_table is None else
                             torch.tensor(np.asarray(token_table), dtype=torch.int64),
                             persistent=False)
        if empty_title not in EMPTY_TITLE_MODES:
            raise ValueError(f"empty_title={empty_title!r} must be one of {EMPTY_TITLE_MODES}")
        self.title_embedding = embedding(num_titles, dim, sparse_min_rows)
        self.title_text_embedding = nn.Embedding(max_tokens, dim)
        self.genre_embedding = nn.Embedding(NUM_GENRES + 1, dim) if genres else None
        if genres:
            self.register_buffer("genre_table", torch.zeros(num_titles, NUM_GENRES,
                                                            dtype=torch.int64), persistent=False)
        self.genres_attached = False
        self.release_embedding = (nn.Embedding(NUM_RELEASE_BUCKETS, dim) if release_date
                                  else None)
        if release_date:
            self.register_buffer("release_table", torch.zeros(num_titles, dtype=torch.int64),
                                 persistent=False)
        self.releases_attached = False
        self.empty_title = empty_title
        self.out_features = (2 + genres + release_date) * dim

    def attach_genres(self, table: np.ndarray) -> None:
        """Fill ``genre_table`` ([title rows, NUM_GENRES] genre ids per title id)."""
        _fill(self.genre_table, table, "genre table")
        self.genres_attached = True

    def attach_releases(self, table: np.ndarray) -> None:
        """Fill ``release_table`` ([title rows] release bucket per title id)."""
        _fill(self.release_table, table, "release table")
        self.releases_attached = True

    def tokens(self, inputs: Batch) -> torch.Tensor:
        """``inputs["title_tokens"]`` [B, L], else row ``title_index`` of the token table."""
        if "title_tokens" in inputs:
            return inputs["title_tokens"]
        if self.title_token_table is None:
            raise KeyError("no 'title_tokens' column and no token table: build the model with "
                           "build_*_model(spec, config) or pass spec.encode_titles' columns")
        return self.title_token_table.index_select(0, inputs["title_index"])

    def forward(self, inputs: Batch) -> torch.Tensor:
        text = bag_mean(self.tokens(inputs), self.title_text_embedding.weight, self.empty_title)
        parts = [self.title_embedding(inputs["title_index"]), text]
        if self.genre_embedding is not None:
            if not self.genres_attached:
                raise RuntimeError(not_attached("genre table"))
            genre_ids = self.genre_table.index_select(0, inputs["title_index"])
            parts.append(bag_mean(genre_ids, self.genre_embedding.weight))
        if self.release_embedding is not None:
            if not self.releases_attached:
                raise RuntimeError(not_attached("release table"))
            parts.append(self.release_embedding(
                self.release_table.index_select(0, inputs["title_index"])))
        return torch.cat(parts, dim=1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``tf.math.l2_normalize(x, axis=1)`` (tensorflow/python/ops/nn_impl.py): ``x *
    rsqrt(max(sum(x**2), 1e-12))``; the epsilon bounds the squared norm, unlike
    ``F.normalize``'s bound on the norm. [B, D] -> [B, D]."""
    return x * torch.rsqrt(x.square().sum(dim=1, keepdim=True).clamp_min(L2_EPSILON))


class Tower(nn.Module):
    """Features -> dense_layers ([B, layer_sizes[-1]]), L2-normalised when ``normalize``
    (``config.task.normalize``: cosine scores; the index sees unit vectors too)."""

    def __init__(self, embedding_model: nn.Module, layer_sizes: Sequence[int],
                 normalize: bool = False) -> None:
        super().__init__()
        self.embedding_model = embedding_model
        self.dense_layers = tower_stack(embedding_model.out_features, layer_sizes)
        self.normalize = normalize

    def forward(self, inputs: Batch) -> torch.Tensor:
        out = self.dense_layers(self.embedding_model(inputs))
        return l2_normalize(out) if self.normalize else out


class QueryModel(Tower):
    """Query tower: UserModel -> dense_layers (see :class:`Tower`)."""


class CandidateModel(Tower):
    """Candidate tower: MovieModel -> dense_layers (see :class:`Tower`)."""


class LearnedTemperature(nn.Module):
    """A trainable softmax temperature ``T = exp(log_temperature)`` (a scalar, started at
    ``log(initial)``): the log keeps T positive and makes Adagrad's step relative to T. The loss
    divides the query embeddings by T, i.e. ``scores = (q / T) @ c^T`` (tfrs_impl twin:
    ``models.LearnedTemperature``); Keras name ``temperature/log_temperature``, updated by the
    stage's Adagrad like every weight (its own accumulator)."""

    def __init__(self, initial: float = 1.0) -> None:
        super().__init__()
        if not initial > 0:
            raise ValueError(f"initial temperature {initial} must be > 0")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(initial), dtype=torch.float32))

    def value(self) -> torch.Tensor:
        """T = exp(log_temperature), a scalar."""
        return torch.exp(self.log_temperature)


class RetrievalModel(nn.Module):
    """The two towers (the seed's MovielensRetrievalModel minus its task), and the learned
    temperature when ``config.task.learn_temperature``."""

    def __init__(self, query_model: QueryModel, candidate_model: CandidateModel,
                 temperature: LearnedTemperature | None = None) -> None:
        super().__init__()
        self.query_model = query_model
        self.candidate_model = candidate_model
        self.temperature = temperature

    def forward(self, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (query embeddings [B, D], candidate embeddings [B, D]) of aligned rows."""
        return self.query_model(inputs), self.candidate_model(inputs)


class RankingModel(nn.Module):
    """concat [user_embeddings (65), movie_embeddings (64)] -> ratings: Dense 256 relu,
    Dense 64 relu, Dense 1 sigmoid. ``forward`` returns probabilities [B, 1]; ``logits`` the
    input of the final sigmoid [B, 1] (for the from-logits loss mode)."""

    def __init__(self, user_embeddings: UserModel, movie_embeddings: MovieModel,
                 layer_sizes: Sequence[int] = (256, 64)) -> None:
        super().__init__()
        self.user_embeddings = user_embeddings
        self.movie_embeddings = movie_embeddings
        in_features = user_embeddings.out_features + movie_embeddings.out_features
        sizes = [*layer_sizes, 1]
        # The sigmoid is applied in forward so that logits() can stop before it.
        self.ratings = DenseStack(in_features, sizes, ["relu"] * len(layer_sizes) + [None])

    def logits(self, inputs: Batch) -> torch.Tensor:
        features = torch.cat([self.user_embeddings(inputs), self.movie_embeddings(inputs)], dim=1)
        return self.ratings(features)

    def forward(self, inputs: Batch) -> torch.Tensor:
        return torch.sigmoid(self.logits(inputs))


# --- initialisation and builders ----------------------------------------------------------------

def keras_init_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every Embedding and Linear in ``module`` (in ``modules()`` order) as Keras:
    Embedding U(-0.05, 0.05); Linear weight glorot_uniform, bias zeros. Returns ``module``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
                m.weight.uniform_(-EMBEDDING_INIT_LIMIT, EMBEDDING_INIT_LIMIT,
                                  generator=generator)
            elif isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape  # Keras kernel [fan_in, fan_out], transposed
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                m.weight.uniform_(-limit, limit, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
    return module


def _user_model(spec: FeatureSpec, config: Config, device: str | torch.device,
                history: bool = False, user_features: bool = False) -> UserModel:
    return UserModel(spec.num_user_rows, spec.num_bucket_rows, config.model.embedding_dim,
                     spec.num_title_rows if history else None, sparse_min_rows(device),
                     user_features)


def _movie_model(spec: FeatureSpec, config: Config, device: str | torch.device,
                 recipes: bool = False) -> MovieModel:
    """The candidate features; ``recipes``: with the genres / release dates of
    ``config.model`` (the retrieval tower; the ranking model reads the seed's features)."""
    m = config.model
    return MovieModel(spec.num_title_rows, spec.max_tokens, m.embedding_dim, m.empty_title,
                      recipes and m.genres, token_table=spec.title_token_table(),
                      sparse_min_rows=sparse_min_rows(device),
                      release_date=recipes and m.release_date)


def learned_temperature(config: Config) -> LearnedTemperature | None:
    """The trainable temperature of ``config.task.learn_temperature``, started at
    ``config.task.temperature`` (or 1), else None."""
    if not config.task.learn_temperature:
        return None
    return LearnedTemperature(config.task.temperature or 1.0)


def build_retrieval_model(spec: FeatureSpec, config: Config, *,
                          device: str | torch.device = "cpu") -> RetrievalModel:
    """Query and candidate towers sized by ``spec``/``config`` (token-less titles pooled as
    ``config.model.empty_title``), Keras-initialised from ``torch.Generator().manual_seed(
    config.seed)`` on the CPU (same values on any device)."""
    sizes, normalize = config.model.layer_sizes, config.task.normalize
    model = RetrievalModel(
        QueryModel(_user_model(spec, config, device, config.model.history,
                               config.model.user_features), sizes, normalize),
        CandidateModel(_movie_model(spec, config, device, recipes=True), sizes,
                       normalize),
        learned_temperature(config))
    keras_init_(model, torch.Generator().manual_seed(config.seed))
    return model.to(device)


def build_ranking_model(spec: FeatureSpec, config: Config, *,
                        device: str | torch.device = "cpu") -> RankingModel:
    """The ranking model, Keras-initialised from ``torch.Generator().manual_seed(config.seed
    + 1)`` (+1 so that its embeddings do not start equal to the retrieval model's)."""
    model = RankingModel(_user_model(spec, config, device), _movie_model(spec, config, device),
                         config.model.ranking_layer_sizes)
    keras_init_(model, torch.Generator().manual_seed(config.seed + 1))
    return model.to(device)


# --- Keras-layout weights (names as tfrs_impl.models.named_variables) ---------------------------

def keras_weight_names(model: nn.Module, prefix: str = "") -> dict[str, tuple[str, bool]]:
    """{Keras name: (torch parameter name, transposed)}: "a.b.weight" of an Embedding ->
    "a/b/embeddings", of a Linear -> "a/b/kernel" (transposed), "bias" -> "bias"."""
    kinds = {name: type(m) for name, m in model.named_modules()}
    out = {}
    for name, _ in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        linear = issubclass(kinds[owner], nn.Linear)
        if leaf == "weight":
            leaf = "kernel" if linear else "embeddings"
        keras = f"{prefix}{owner.replace('.', '/')}/{leaf}"
        out[keras] = (name, linear and leaf == "kernel")
    return out


def keras_weight_shapes(model: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{Keras name: shape in Keras layout} (what a checkpoint of this model must hold)."""
    params = dict(model.named_parameters())
    return {k: tuple(params[n].shape[::-1] if t else params[n].shape)
            for k, (n, t) in keras_weight_names(model, prefix).items()}


def to_keras(tensors: Mapping[str, torch.Tensor], model: nn.Module, prefix: str = ""
             ) -> dict[str, np.ndarray]:
    """Per-parameter tensors keyed by torch parameter name (the parameters themselves, or their
    optimizer accumulators) -> {Keras name: numpy copy in Keras layout}."""
    out = {}
    for keras, (name, transposed) in keras_weight_names(model, prefix).items():
        value = tensors[name].detach().cpu().numpy()
        out[keras] = (value.T if transposed else value).copy()
    return out


def assign_from_keras(targets: Mapping[str, torch.Tensor], model: nn.Module,
                      values: Mapping[str, np.ndarray], prefix: str = "",
                      what: str = "weight") -> None:
    """Copy Keras-layout arrays into ``targets`` (keyed by torch parameter name, as in
    :func:`to_keras`); names and shapes must match exactly (KeyError / ValueError)."""
    names = keras_weight_names(model, prefix)
    missing, unexpected = sorted(set(names) - set(values)), sorted(set(values) - set(names))
    if missing or unexpected:
        raise KeyError(f"{what} names do not match {type(model).__name__}: missing {missing}, "
                       f"unexpected {unexpected}")
    with torch.no_grad():
        for keras, (name, transposed) in names.items():
            value = np.asarray(values[keras], dtype=np.float32)
            value = value.T if transposed else value
            target = targets[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{keras}: {what} shape {np.asarray(values[keras]).shape} does "
                                 "not fit the model (built from another spec/config?)")
            # reshape: ascontiguousarray makes a 0-d array (a learned temperature) [1]
            target.copy_(torch.from_numpy(np.ascontiguousarray(value).reshape(value.shape)))


def get_keras_weights(model: nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """All parameters as numpy copies in Keras layout (Dense kernel [in, out])."""
    return to_keras(dict(model.named_parameters()), model, prefix)


def set_keras_weights(model: nn.Module, weights: Mapping[str, np.ndarray],
                      prefix: str = "") -> None:
    """Assign every parameter from Keras-layout arrays; names and shapes must match exactly."""
    assign_from_keras(dict(model.named_parameters()), model, weights, prefix)
