"""TFDS' own MovieLens parsers as the reference the data-layer readers are compared with.

The reference is ``tensorflow_datasets.structured.movielens_parsing`` run on a folder, each record
passed through the ``movielens/<name>-*`` builder's ``FeaturesDict.encode_example`` so the TFDS
feature types apply (user_rating float32, timestamp int64, ages float32, user_gender bool,
genres and occupation label as ClassLabel, mapped back to names). Our columns must then be equal
field by field, row by row, with the same numpy dtypes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# (ratings parser, movies parser) per TFDS format, by the names of movielens_parsing.
PARSERS = {"100k": ("parse_100k_ratings_data", "parse_100k_movies_data"),
           "1m": ("parse_1m_ratings_data", "parse_1m_movies_data"),
           "csv": ("parse_current_ratings_data", "parse_current_movies_data")}


def tfds_features(tmp_dir: Path, dataset: str) -> dict:
    """FeaturesDicts of movielens/<dataset>-ratings and -movies (built offline)."""
    import tensorflow_datasets as tfds
    return {table: tfds.builder(f"movielens/{dataset}-{table}", data_dir=str(tmp_dir)).info.features
            for table in ("ratings", "movies")}


def _decode(features, encoded: dict) -> dict:
    """One encoded TFDS example -> plain values: str, numpy scalars, tuple of genre names."""
    out = {}
    for key, value in encoded.items():
        feature = features[key]
        if key == "movie_genres":
            out[key] = tuple(feature.feature.int2str(int(i)) for i in value)
        elif key == "user_occupation_label":
            out[key] = feature.int2str(int(value))
        else:
            out[key] = np.asarray(value).item() if feature.np_dtype == object else value[()]
    return out


# the columns we read that TFDS' parsers drop (u.item's release date; tested in
# twostage/tests/test_release_dates.py)
BEYOND_TFDS = {"movie_release_date"}


def tfds_columns(features, directory: Path, table: str, layout: str = "100k"
                 ) -> dict[str, list]:
    """Run TFDS' parser of ``layout`` for ``table`` ('ratings' or 'movies'); typed columns."""
    from tensorflow_datasets.structured import movielens_parsing as parsing
    parse = getattr(parsing, PARSERS[layout][table == "movies"])
    fdict = features[table]
    rows = [_decode(fdict, fdict.encode_example(rec)) for _, rec in parse(str(directory))]
    return {key: [r[key] for r in rows] for key in rows[0]}


def assert_same_records(ours: pd.DataFrame, ref: dict[str, list], features) -> None:
    """Every field of every row equal, in order; numeric columns also in the TFDS dtype."""
    fields = tuple(features.keys())
    assert set(ref) == set(fields)
    assert set(ours.columns) - BEYOND_TFDS == set(fields)
    assert len(ours) == len(ref[fields[0]])
    for key in fields:
        feature = features[key]
        got, want = ours[key].tolist(), ref[key]
        if key == "movie_genres":
            got = [tuple(g) for g in got]
        elif key != "user_occupation_label" and feature.np_dtype != object:
            assert ours[key].dtype == np.dtype(feature.np_dtype), key
            got = ours[key].to_numpy()
            want = np.asarray(want, dtype=feature.np_dtype)
            bad = np.flatnonzero(got != want)
        if key in ("movie_genres", "user_occupation_label") or feature.np_dtype == object:
            assert all(isinstance(v, (str, tuple)) for v in got), key
            bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        assert len(bad) == 0, f"{key}: {len(bad)} rows differ, first row {bad[0]}: " \
                              f"ours {got[bad[0]]!r} vs TFDS {want[bad[0]]!r}"


def check_against_tfds(ml, features, layout: str = "100k") -> None:
    """``ml`` (a MovieLens read from its folder) equals TFDS' records of the same folder."""
    for table, frame in (("ratings", ml.ratings), ("movies", ml.movies)):
        assert_same_records(frame, tfds_columns(features, ml.source, table, layout),
                            features[table])
