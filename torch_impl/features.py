"""Encoded numpy features (``FeatureSpec`` / ``Dataset.encoded``) -> torch tensors, and batching.

The torch models never see raw strings: ``data.features.FeatureSpec`` reproduces the seed's Keras
preprocessing layers in numpy (StringLookup, Discretization, Normalization, TextVectorization),
and this module only moves those arrays into tensors:

- ``user_index``, ``ts_bucket``, ``title_index``  [N] int64 (0 = out of vocabulary, as Keras)
- ``ts_norm``                                     [N] float32
- ``title_tokens``                                [N, L] int64, 0 = padding
- ``label``, ``candidate_sampling_probability``, ``sample_weight`` (optional) [N] float32
- ``history`` [N, H] int64 title ids, 0 = padding (``config.model.history``; twostage.recipes)
- the user features (``config.model.user_features``): ``user_gender``, ``user_age_group``,
  ``user_occupation``, ``user_zip_prefix`` [N] int64 (0 = OOV; ``twostage.user_features.encode``
  of the raw [N] str columns)
- mixed negatives (``twostage.recipes``): ``negative_title_index`` [N'] int64,
  ``negative_title_tokens`` [N', L'] int64 (the candidate keys with the ``negative_`` prefix)
  and ``negative_sampling_probability`` [N'] float32, one set per batch, not per row

Tensors are made once per fit (the whole training split, on the model's device) and indexed per
batch, so a training step copies nothing from the host and allocates nothing but the batch.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from twostage.data.features import FeatureSpec
from twostage.config import Config
from twostage.recipes import (HISTORY, NEGATIVE_PROBABILITY, NEGATIVE_TITLES, RecipeData,
                              query_extras)
from twostage.user_features import USER_FEATURE_KEYS, encode as encode_user_features
from twostage.sampling import SAMPLING_PROBABILITY  # noqa: F401  (the batch key, re-exported)

from .models import bag_mean

QUERY_KEYS: tuple[str, ...] = ("user_index", "ts_bucket", "ts_norm")
CANDIDATE_KEYS: tuple[str, ...] = ("title_index", "title_tokens")
FEATURE_KEYS: tuple[str, ...] = QUERY_KEYS + CANDIDATE_KEYS
NEGATIVE_PREFIX = "negative_"  # candidate inputs of a batch's sampled negatives
# Raw float columns a batch may carry besides the features.
FLOAT_KEYS: tuple[str, ...] = ("label", SAMPLING_PROBABILITY, "sample_weight")

Batch = dict[str, torch.Tensor]


def resolve_device(device: str | torch.device) -> torch.device:
    """``config.train.device`` (``"cpu"`` / ``"cuda"`` / ``"cuda:1"``) -> torch.device; a clear
    error for a malformed name, or a CUDA device this machine or torch build does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device name ({e}); use cpu, cuda "
                         "or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} requested but CUDA is not available (torch "
                               f"{torch.__version__}, {torch.cuda.device_count()} GPU(s) "
                               "visible); use device='cpu' (--device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device={device!r} requested but only "
                               f"{torch.cuda.device_count()} CUDA device(s) are visible; use "
                               f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


def _as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Integers -> int64, floats and bools -> float32 (the dtypes the models expect)."""
    a = np.asarray(array)
    if a.dtype.kind in "iu":
        a = a.astype(np.int64, copy=False)
    elif a.dtype.kind in "fb":
        a = a.astype(np.float32, copy=False)
    else:
        raise TypeError(f"cannot make a tensor of dtype {a.dtype}; encode strings with the "
                        "FeatureSpec first (spec.encode_queries / spec.encode_titles)")
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # a shared read-only table (FeatureSpec.title_token_table)
        a = a.copy()
    return torch.from_numpy(a).to(device)


def to_tensors(arrays: Mapping[str, np.ndarray], device: str | torch.device = "cpu",
               keys: Iterable[str] | None = None) -> Batch:
    """Numpy columns -> tensors on ``device`` (int64 / float32); ``keys`` selects a subset."""
    dev = resolve_device(device)
    names = list(arrays) if keys is None else list(keys)
    missing = [k for k in names if k not in arrays]
    if missing:
        raise KeyError(f"missing feature columns {missing}; have {sorted(arrays)}")
    return {k: _as_tensor(arrays[k], dev) for k in names}


def select_rows(tensors: Mapping[str, torch.Tensor], rows: torch.Tensor) -> Batch:
    """Rows ``rows`` ([B] int64 on the tensors' device) of every column."""
    return {k: v.index_select(0, rows) for k, v in tensors.items()}


def num_rows(tensors: Mapping[str, torch.Tensor]) -> int:
    """Common first dimension of the columns (ValueError if they disagree)."""
    sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"feature columns have different lengths: {sizes}")
    return next(iter(sizes.values()), 0)


def batch_iter(tensors: Mapping[str, torch.Tensor], batch_size: int) -> Iterator[Batch]:
    """Sequential (unshuffled) batches, for inference and evaluation; slices are views."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    n = num_rows(tensors)
    for start in range(0, n, batch_size):
        yield {k: v[start: start + batch_size] for k, v in tensors.items()}


def encode_queries(spec: FeatureSpec, user_ids, timestamps,
                   device: str | torch.device = "cpu") -> Batch:
    """Raw [N] user ids (str) and [N] timestamps (int) -> query-tower input tensors.
    Unknown users map to the OOV row 0, as Keras StringLookup."""
    return to_tensors(spec.encode_queries(user_ids, timestamps), device)


def encode_titles(spec: FeatureSpec, titles, device: str | torch.device = "cpu") -> Batch:
    """Raw [N] titles (str) -> candidate-tower input tensors (unknown titles -> OOV row 0,
    unknown tokens -> [UNK] id 1, padding 0 to the longest title of ``titles``)."""
    return to_tensors(spec.encode_titles(titles), device)


def encode_raw_batch(spec: FeatureSpec, batch: Mapping[str, np.ndarray],
                     device: str | torch.device = "cpu") -> Batch:
    """A raw batch (user_id, timestamp, movie_title [, label, candidate_sampling_probability,
    sample_weight] [, negative_titles, negative_sampling_probability] [, history] [, the user
    features, [N] str each]) -> model input tensors (the sampled negatives as
    ``negative_``-prefixed candidate inputs; the user features as StringLookup ids)."""
    arrays = dict(spec.encode(batch["user_id"], batch["timestamp"], batch["movie_title"]))
    for key in FLOAT_KEYS:
        if key in batch:
            arrays[key] = np.asarray(batch[key], dtype=np.float32)
    if HISTORY in batch:
        arrays[HISTORY] = np.asarray(batch[HISTORY], dtype=np.int64)
    arrays.update(user_feature_ids(batch))
    if NEGATIVE_TITLES in batch:
        for key, value in spec.encode_titles(batch[NEGATIVE_TITLES]).items():
            arrays[NEGATIVE_PREFIX + key] = value
        arrays[NEGATIVE_PROBABILITY] = np.asarray(batch[NEGATIVE_PROBABILITY], dtype=np.float32)
    return to_tensors(arrays, device)


def negative_inputs(batch: Mapping[str, torch.Tensor]) -> Batch:
    """The candidate-tower inputs of a batch's sampled negatives (prefix removed), or {}."""
    return {k[len(NEGATIVE_PREFIX):]: v for k, v in batch.items()
            if k.startswith(NEGATIVE_PREFIX) and k != NEGATIVE_PROBABILITY}


def title_table(spec: FeatureSpec, device: str | torch.device = "cpu") -> Batch:
    """Candidate-tower inputs of every title id: row i = title id i (row 0: the OOV title, no
    token), for gathering sampled negatives on the device. title_index [V + 1],
    title_tokens [V + 1, L]."""
    tokens = spec.title_token_table()
    index = np.arange(len(tokens), dtype=np.int64)
    return to_tensors({"title_index": index, "title_tokens": tokens}, device)


def user_feature_ids(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The user-feature columns of ``columns`` encoded for the towers.

    Args:
        columns: raw columns; the user features (``USER_FEATURE_KEYS``) [N] str, if any.
    Returns:
        {key: [N] int64 StringLookup ids} (``twostage.user_features.encode``), or {} when
        ``columns`` holds none of them.
    Raises:
        KeyError: only some of the user features are present.
    """
    if not any(key in columns for key in USER_FEATURE_KEYS):
        return {}
    return encode_user_features(columns)


def query_arrays(spec: FeatureSpec, config: Config, recipe: RecipeData | None, user_ids,
                 timestamps) -> dict[str, np.ndarray]:
    """Query-tower inputs of raw [N] user ids and timestamps: the spec's encoding, plus what
    ``recipe`` holds for them (``twostage.recipes.query_extras``): the ``history`` [N, H] of
    ``config.model.history``, the user-feature ids [N] of ``config.model.user_features``."""
    arrays = dict(spec.encode_queries(user_ids, timestamps))
    extras = query_extras(recipe, config, user_ids, timestamps)
    if HISTORY in extras:
        arrays[HISTORY] = extras[HISTORY]
    arrays.update(user_feature_ids(extras))
    return arrays


# --- schema features (twostage.data.schema_data): one layer per feature kind ----------------------

class SlotInput(torch.nn.Module):
    """One schema slot (``twostage.data.schema_data.Slot``) -> [B, slot.width(dim)]:

    - ``id`` / ``category``: ``embedding(x)``, x [B] int64 (0 = unknown);
    - ``multi_category`` / ``text``: the mean of ``embedding`` over the non-zero ids of x
      [B, L] (0 = padding; no id: a zero vector), the seed's title-text pooling;
    - ``timestamp`` / ``numeric``: [``embedding(bucket)`` when the slot has buckets,
      ``norm`` [B, 1]], the seed's timestamp features.
    Keras twin: ``tfrs_impl.features.SlotInput``.
    """

    def __init__(self, slot, dim: int) -> None:
        super().__init__()
        self.slot = slot
        self.embedding = torch.nn.Embedding(slot.rows, dim) if slot.rows else None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        slot = self.slot
        if slot.kind in ("id", "category"):
            return self.embedding(batch[slot.name])
        if slot.kind in ("multi_category", "text"):
            return bag_mean(batch[slot.name], self.embedding.weight)
        norm = batch[f"{slot.name}/norm"].reshape(-1, 1)
        if self.embedding is None:
            return norm
        return torch.cat([self.embedding(batch[f"{slot.name}/bucket"]), norm], dim=1)


class SlotConcat(torch.nn.Module):
    """A tower's slots side by side: [B, sum of slot widths] (the seed's UserModel /
    MovieModel for any schema). ``inputs[i]`` is the :class:`SlotInput` of ``slots[i]``."""

    def __init__(self, slots, dim: int) -> None:
        super().__init__()
        self.slots = tuple(slots)
        self.inputs = torch.nn.ModuleList(SlotInput(s, dim) for s in self.slots)
        self.out_features = sum(s.width(dim) for s in self.slots)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([layer(batch) for layer in self.inputs], dim=1)
