"""User side features (issue 26): the MovieLens demographics the query tower embeds, in numpy.

``config.model.user_features`` adds to the query tower one embedding per feature of
:data:`USER_FEATURES`, so a user whose id embedding never trained (a cold user under
``--split temporal``) still gets a tower output from what the data says about them:

- ``user_gender``: "F" / "M" (TFDS ``user_gender``, true = male);
- ``user_age_group``: TFDS ``bucketized_user_age`` as text, the ml-1m age groups "1" (under
  18), "18", "25", "35", "45", "50", "56" (56+). Why these buckets: they are what TFDS exposes
  for BOTH releases (ml-1m stores only the group, ml-100k's raw age is bucketized to it by the
  reader, ``data.movielens._bucketize_age``), so one vocabulary serves both; they equal Keras
  ``Discretization(bin_boundaries=[18, 25, 35, 45, 50, 56])`` of ml-100k's raw age;
- ``user_occupation``: TFDS ``user_occupation_label``, the 22 names of its ClassLabel (the
  labels both releases are mapped onto; ml-1m's two student kinds merged into "student");
- ``user_zip_prefix``: the first character of ``user_zip_code`` when it is an ASCII digit (the
  US ZIP code's national area, 0-9); anything else (Canadian postal codes, "none") is "", which
  no vocabulary holds.

Each vocabulary is FIXED (as the genres' ClassLabel, ``twostage.recipes.NUM_GENRES``), not
adapted on the data, so the tower's size does not depend on the data and a checkpoint needs no
vocabulary. Lookups follow Keras ``StringLookup(vocabulary, mask_token=None)`` (one OOV index):
vocabulary[i] -> i + 1, anything else -> 0, the OOV row of an ``Embedding(len + 1, dim)``.

A user the user table does not hold (none in MovieLens: every user of u.user / users.dat
rates; an id first met at serving time) gets "" for every feature: the OOV row of each
embedding, as an unknown value would. The per-rating features of a training row are that
rating's own (the ratings frame joins them per row), so a row made anonymous by user-id
dropout (``recipes.user_dropout_view``) keeps its demographics, as a cold user has them.

Raw batch keys: :data:`USER_FEATURE_KEYS`, each [B] str (what TFRS looks up in the graph); the
torch backend encodes them with :func:`encode` to [B] int64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .data.movielens import column_codes

GENDERS: tuple[str, ...] = ("F", "M")
AGE_GROUPS: tuple[str, ...] = ("1", "18", "25", "35", "45", "50", "56")
# TFDS movielens.py _info: the user_occupation_label ClassLabel names, in its order.
OCCUPATIONS: tuple[str, ...] = (
    "academic/educator", "artist", "clerical/admin", "customer service", "doctor/health care",
    "entertainment", "executive/managerial", "farmer", "homemaker", "lawyer", "librarian",
    "other/not specified", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "student", "technician/engineer", "tradesman/craftsman", "unemployed",
    "writer",
)
ZIP_PREFIXES: tuple[str, ...] = tuple("0123456789")
UNKNOWN = ""  # the value of a feature the data lacks: in no vocabulary, so the OOV row
# the ratings-frame columns (data.movielens.MovieLens) the features come from
SOURCE_COLUMNS: tuple[str, ...] = ("user_gender", "bucketized_user_age",
                                   "user_occupation_label", "user_zip_code")


@dataclass(frozen=True)
class UserFeature:
    """One feature: its raw batch ``key``, the tower ``attribute`` holding its embedding (the
    Keras weight ``query_model/embedding_model/<attribute>/embeddings``) and its fixed
    ``vocabulary`` (embedding rows: ``rows`` = len + 1, row 0 = OOV)."""

    key: str
    attribute: str
    vocabulary: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.vocabulary) + 1


USER_FEATURES: tuple[UserFeature, ...] = (
    UserFeature("user_gender", "gender_embedding", GENDERS),
    UserFeature("user_age_group", "age_embedding", AGE_GROUPS),
    UserFeature("user_occupation", "occupation_embedding", OCCUPATIONS),
    UserFeature("user_zip_prefix", "zip_embedding", ZIP_PREFIXES),
)
USER_FEATURE_KEYS: tuple[str, ...] = tuple(f.key for f in USER_FEATURES)


def check_columns(ratings: pd.DataFrame, dataset: str = "") -> None:
    """Refuse a ratings frame without the demographic columns, naming the fix.

    Args:
        ratings: a MovieLens ratings frame (``MovieLens.ratings``).
        dataset: the release's name, for the message.
    Raises:
        ValueError: a column of :data:`SOURCE_COLUMNS` is missing (20m, 25m, latest-small and
            own data have no user table).
    """
    missing = [c for c in SOURCE_COLUMNS if c not in ratings.columns]
    if missing:
        raise ValueError(f"model.user_features needs the user demographics of ml-100k or ml-1m, "
                         f"which {dataset or 'this data'} lacks ({', '.join(missing)}); use "
                         "--dataset 100k or 1m, or turn user_features off")


def _mapped(column: pd.Series, convert) -> np.ndarray:
    """[N] object: ``convert`` of each row's value, run once per distinct value."""
    codes, values = column_codes(column)
    return np.asarray([convert(v) for v in values], dtype=object)[codes] if len(values) else \
        np.full(len(column), UNKNOWN, dtype=object)


def _gender(value) -> str:
    return "M" if bool(value) else "F"


def _age_group(value) -> str:
    number = float(value)
    return str(int(number)) if np.isfinite(number) and number == int(number) else UNKNOWN


def _zip_prefix(value) -> str:
    text = str(value)
    return text[0] if text[:1] in ZIP_PREFIXES else UNKNOWN


def rating_values(ratings: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each rating row's features as text, from its own demographic columns.

    Args:
        ratings: a MovieLens ratings frame of N rows with :data:`SOURCE_COLUMNS`.
    Returns:
        {key of :data:`USER_FEATURE_KEYS`: [N] object array of str}; a value outside a
        vocabulary stays as it is (the lookup makes it OOV).
    Raises:
        ValueError: the frame lacks a demographic column (:func:`check_columns`).
    Why: training rows carry the rating's own user fields, so user-id dropout keeps them.
    """
    check_columns(ratings)
    occupation = _mapped(ratings["user_occupation_label"], str)
    return {"user_gender": np.where(ratings["user_gender"].to_numpy(dtype=bool), "M",
                                    "F").astype(object),
            "user_age_group": _mapped(pd.Series(ratings["bucketized_user_age"].to_numpy()),
                                      _age_group),
            "user_occupation": occupation,
            "user_zip_prefix": _mapped(ratings["user_zip_code"], _zip_prefix)}


@dataclass(frozen=True)
class UserTable:
    """Every user's features, for serving any query by user id.

    ``users``: user id (str) -> row; ``values`` [U, len(USER_FEATURES)] object array of str,
    column j = ``USER_FEATURES[j]``.
    """

    users: dict
    values: np.ndarray

    @classmethod
    def from_ratings(cls, ratings: pd.DataFrame) -> "UserTable":
        """The table of every user of a ratings frame (all splits: demographics are known at
        sign-up, not learned from ratings, so a test-only user's are no leak).

        Args:
            ratings: a MovieLens ratings frame with ``user_id`` and :data:`SOURCE_COLUMNS`.
        Returns:
            the table, one row per distinct user (the values of their first rating row).
        Raises:
            ValueError: the frame lacks a demographic column.
        """
        per_row = rating_values(ratings)
        codes, names = column_codes(ratings["user_id"])
        present, rows = np.unique(codes, return_index=True)  # each user's earliest row
        values = np.stack([per_row[k][rows] for k in USER_FEATURE_KEYS], axis=1) if len(
            rows) else np.zeros((0, len(USER_FEATURES)), dtype=object)
        return cls({str(u): i for i, u in enumerate(names[present].tolist())},
                   values.astype(object))

    def lookup(self, user_ids: Iterable) -> dict[str, np.ndarray]:
        """The features of [N] user ids.

        Args:
            user_ids: [N] str (or bytes-free objects whose ``str`` is the id).
        Returns:
            {key: [N] object array of str}; an id the table lacks gets :data:`UNKNOWN` for
            every feature (the OOV row of each embedding).
        """
        ids = np.asarray(list(user_ids) if not isinstance(user_ids, np.ndarray) else user_ids,
                         dtype=object)
        codes, distinct = pd.factorize(ids.astype(str)) if len(ids) else (
            np.zeros(0, np.int64), np.zeros(0, dtype=object))
        slots = np.array([self.users.get(u, -1) for u in distinct], dtype=np.int64)
        found = slots[codes] if len(ids) else np.zeros(0, np.int64)
        padded = np.concatenate([self.values, np.full((1, len(USER_FEATURES)), UNKNOWN,
                                                      dtype=object)])
        taken = padded[np.where(found >= 0, found, len(self.values))]
        return {f.key: taken[:, j] for j, f in enumerate(USER_FEATURES)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (beside a checkpoint's weights): ``user_table_ids`` [U] str (by
        row), ``user_table_values`` [U, F] str."""
        names = sorted(self.users, key=self.users.get)
        return {"user_table_ids": np.asarray(names, dtype=str),
                "user_table_values": np.asarray(self.values, dtype=str).reshape(
                    len(names), len(USER_FEATURES))}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "UserTable":
        """The inverse of :meth:`to_arrays`.

        Raises:
            ValueError: the arrays' shapes do not fit (another version's checkpoint).
        """
        ids = [str(u) for u in arrays["user_table_ids"]]
        values = np.asarray(arrays["user_table_values"]).astype(str).astype(object)
        if values.ndim != 2 or values.shape != (len(ids), len(USER_FEATURES)):
            raise ValueError(f"user_table_values {values.shape} must be [{len(ids)}, "
                             f"{len(USER_FEATURES)}]; save the checkpoint again with this "
                             "version")
        return cls({u: i for i, u in enumerate(ids)}, values)


def encode(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keras ``StringLookup(vocabulary, mask_token=None)`` of each feature, in numpy.

    Args:
        values: {key: [N] str} (:func:`rating_values`, :meth:`UserTable.lookup`, a raw batch).
    Returns:
        {key: [N] int64}: vocabulary[i] -> i + 1, anything else -> 0 (OOV).
    Raises:
        KeyError: a key of :data:`USER_FEATURE_KEYS` is missing, naming where it comes from.
    Why: the torch towers read ids; TFRS computes the same ids in the graph.
    """
    missing = [k for k in USER_FEATURE_KEYS if k not in values]
    if missing:
        raise KeyError(f"user feature columns {missing} are missing; add "
                       "twostage.recipes.RecipeData.user_values(user_ids) to the batch")
    out = {}
    for feature in USER_FEATURES:
        table = {v: i + 1 for i, v in enumerate(feature.vocabulary)}
        column = np.asarray(values[feature.key], dtype=object)
        codes, distinct = pd.factorize(column.astype(str)) if len(column) else (
            np.zeros(0, np.int64), [])
        ids = np.array([table.get(v, 0) for v in distinct], dtype=np.int64)
        out[feature.key] = ids[codes] if len(column) else np.zeros(0, np.int64)
    return out
