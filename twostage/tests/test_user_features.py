"""User side features (issue 26; twostage.user_features): the values each rating and each user
get, the Keras StringLookup rule they are encoded by, the unknown-user rule, and how the recipe
data carry them (framework-free; the towers are tested in each backend's test_recipes.py and
compared in parity_tests/test_8_recipes.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twostage.recipes import RecipeData, query_columns, query_extras, user_dropout_view
from twostage.user_features import (AGE_GROUPS, GENDERS, OCCUPATIONS, UNKNOWN,
                                    USER_FEATURE_KEYS, USER_FEATURES, ZIP_PREFIXES, UserTable,
                                    encode, rating_values)


def _frame(**columns) -> pd.DataFrame:
    base = {"user_id": ["1", "2", "1", "3"], "user_gender": [True, False, True, False],
            "bucketized_user_age": np.array([25, 1, 25, 56], np.float32),
            "user_occupation_label": ["writer", "student", "writer", "K-12 student"],
            "user_zip_code": ["85711", "T8H1N", "85711", "none"]}
    return pd.DataFrame({**base, **columns})


def test_vocabularies_are_tfds_and_the_ml1m_age_groups():
    from twostage.data.readers import AGES_1M, OCCUPATIONS_1M, STUDENTS_1M
    from twostage.data.movielens import OCCUPATION_LABELS
    assert GENDERS == ("F", "M") and ZIP_PREFIXES == tuple("0123456789")
    assert AGE_GROUPS == tuple(str(a) for a in AGES_1M)
    # every label either release is mapped to is in the vocabulary (ml-1m's students merged)
    labels = set(OCCUPATION_LABELS.values()) | (set(OCCUPATIONS_1M) - set(STUDENTS_1M))
    assert labels <= set(OCCUPATIONS) and len(OCCUPATIONS) == 22
    assert [f.key for f in USER_FEATURES] == list(USER_FEATURE_KEYS)
    assert [f.rows for f in USER_FEATURES] == [3, 8, 23, 11]


def test_each_rating_gets_its_users_values():
    got = rating_values(_frame())
    assert got["user_gender"].tolist() == ["M", "F", "M", "F"]
    assert got["user_age_group"].tolist() == ["25", "1", "25", "56"]
    assert got["user_zip_prefix"].tolist() == ["8", UNKNOWN, "8", UNKNOWN]  # not a US ZIP
    assert got["user_occupation"].tolist() == ["writer", "student", "writer", "K-12 student"]


def test_encoding_is_stringlookup_with_one_oov_index():
    ids = encode(rating_values(_frame()))
    assert ids["user_gender"].tolist() == [2, 1, 2, 1]
    assert ids["user_age_group"].tolist() == [3, 1, 3, 7]
    assert ids["user_zip_prefix"].tolist() == [9, 0, 9, 0]   # "" and non-digits: OOV row 0
    writer = OCCUPATIONS.index("writer") + 1
    assert ids["user_occupation"].tolist() == [writer, OCCUPATIONS.index("student") + 1,
                                                writer, 0]  # a raw ml-1m text is not a label
    with pytest.raises(KeyError, match="user_values"):
        encode({"user_gender": np.array(["M"])})


def test_the_table_serves_known_users_and_the_oov_row_to_unknown_ones():
    table = UserTable.from_ratings(_frame())
    got = table.lookup(np.array(["3", "nobody", "1"], dtype=object))
    assert [got[k].tolist() for k in USER_FEATURE_KEYS] == [
        ["F", UNKNOWN, "M"], ["56", UNKNOWN, "25"], ["K-12 student", UNKNOWN, "writer"],
        [UNKNOWN, UNKNOWN, "8"]]
    assert all(encode(got)[k][1] == 0 for k in USER_FEATURE_KEYS)  # every feature OOV
    back = UserTable.from_arrays(table.to_arrays())
    assert back.users == table.users and (back.values == table.values).all()
    with pytest.raises(ValueError, match="save the checkpoint again"):
        UserTable.from_arrays({"user_table_ids": np.array(["1"]),
                               "user_table_values": np.array([["M", "25"]])})


def test_data_without_demographics_are_refused():
    with pytest.raises(ValueError, match="--dataset 100k or 1m"):
        rating_values(_frame().drop(columns=["user_zip_code"]))


def test_recipe_data_carry_the_table_and_the_columns(synthetic_dataset, small_config, tmp_path):
    ds, config = synthetic_dataset, small_config.replace(user_features=True)
    recipe = RecipeData.from_dataset(ds, config)
    assert recipe.genres is None and recipe.history is None
    assert set(recipe.users.users) == set(ds.spec.user_vocab)
    columns = query_columns(recipe, ds, config)
    assert sorted(columns) == sorted(USER_FEATURE_KEYS)
    served = query_extras(recipe, config, ds.user_id, ds.timestamp)
    for key in USER_FEATURE_KEYS:  # a rating's own values are its user's table row
        assert (columns[key] == served[key]).all() and len(columns[key]) == len(ds.user_id)
    np.savez(tmp_path / "recipe.npz", **recipe.to_arrays())
    with np.load(tmp_path / "recipe.npz") as stored:
        back = RecipeData.from_arrays(dict(stored))
    assert back.users.users == recipe.users.users
    with pytest.raises(RuntimeError, match="user table"):
        query_extras(RecipeData(), config, ds.user_id[:2], ds.timestamp[:2])


def test_dropped_rows_keep_their_demographics(synthetic_dataset, small_config):
    """User-id dropout hides the id, not what a cold user has: the features of a dropped row
    are its rating's own."""
    ds, config = synthetic_dataset, small_config.replace(user_features=True)
    view = user_dropout_view(ds, 0.5, config.seed)
    recipe = RecipeData.from_dataset(view, config)
    assert set(recipe.users.users) == set(ds.spec.user_vocab)  # real ids, not dropped ones
    plain, dropped = query_columns(recipe, ds, config), query_columns(recipe, view, config)
    assert (view.user_id != ds.user_id).any()
    for key in USER_FEATURE_KEYS:
        assert (plain[key] == dropped[key]).all()


def test_releases_without_demographics_and_exports_are_refused(small_config):
    from types import SimpleNamespace
    from twostage.config import Config
    from twostage.errors import UnsupportedOptionError
    from twostage.export import _export_data
    with pytest.raises(ValueError, match="--dataset 25m lacks; use --dataset 100k or 1m"):
        Config.of(user_features=True, dataset="25m")
    assert Config.of(user_features=True, dataset="1m").model.user_features
    with pytest.raises(UnsupportedOptionError, match="twostage recommend"):
        _export_data(None, SimpleNamespace(config=small_config.replace(user_features=True)))
