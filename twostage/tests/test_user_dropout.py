"""user_dropout_view (the shared anonymous rows of --user-dropout) and pipeline.fit_retrieval's
use of it."""
from __future__ import annotations

import numpy as np
import pytest

from twostage import pipeline
from twostage.recipes import (DROPPED_USER, HISTORY, RecipeData, query_columns, query_extras,
                              user_dropout_view)


def _dropped(view) -> np.ndarray:
    return np.char.startswith(view.user_id.astype(str), DROPPED_USER)


def test_view_anonymises_a_seeded_share_of_training_rows_only(synthetic_dataset):
    """round(rate * train) training rows, none of the test split, user_index 0 (OOV), the same
    rows for the same seed and others for another (fails if test rows were touched, the index
    kept, or the draw unseeded)."""
    ds = synthetic_dataset
    view = user_dropout_view(ds, 0.25, seed=7)
    dropped = _dropped(view)
    assert dropped.sum() == round(0.25 * len(ds.split.train))
    assert not dropped[ds.split.test].any()
    assert (view.features["user_index"][dropped] == 0).all()
    np.testing.assert_array_equal(view.features["user_index"][~dropped],
                                  ds.features["user_index"][~dropped])
    assert (view.spec.user_index(view.user_id[dropped]) == 0).all()
    np.testing.assert_array_equal(_dropped(user_dropout_view(ds, 0.25, seed=7)), dropped)
    assert not np.array_equal(_dropped(user_dropout_view(ds, 0.25, seed=8)), dropped)
    assert user_dropout_view(ds, 0.0, seed=7) is ds
    with pytest.raises(ValueError, match="--user-dropout"):
        user_dropout_view(ds, 1.0, seed=7)


def test_a_dropped_row_has_no_history(synthetic_dataset, small_config):
    """A dropped row is served as a cold user is: no history (fails if all dropped rows shared
    one id: they would get each other's titles as history)."""
    cfg = small_config.replace(history=True)
    view = user_dropout_view(synthetic_dataset, 0.5, seed=1)
    rows = np.flatnonzero(_dropped(view))
    histories = RecipeData.from_dataset(view, cfg).histories(view.user_id[rows],
                                                             view.timestamp[rows])
    assert (histories == 0).all()


def test_fit_retrieval_trains_on_the_view_and_serves_the_real_histories(synthetic_dataset,
                                                                        small_config):
    """After fit_retrieval with dropout, the backend's histories are the real dataset's
    (fails if the view's, with the dropped ratings missing, stayed attached)."""
    from torch_impl.backend import TorchBackend
    cfg = small_config.replace(history=True, user_dropout=0.5, retrieval_epochs=1)
    ds = synthetic_dataset
    backend = TorchBackend(cfg, ds.spec)
    pipeline.fit_retrieval(backend, ds, cfg)
    rows = ds.split.test[:50]
    real = RecipeData.from_dataset(ds, cfg).histories(ds.user_id[rows], ds.timestamp[rows])
    np.testing.assert_array_equal(
        backend.recipe.histories(ds.user_id[rows], ds.timestamp[rows]), real)


def test_dropout_keeps_history_keeps_the_dropped_rows_histories(synthetic_dataset,
                                                                small_config):
    """With ``dropout_keeps_history`` a dropped row's training history is its user's, as
    without dropout, while its id stays anonymous (fails if the history were read under the
    anonymous id, or the id kept)."""
    ds = synthetic_dataset
    cfg = small_config.replace(history=True, user_dropout=0.5, dropout_keeps_history=True)
    view = user_dropout_view(ds, 0.5, seed=1, keep_history=True)
    rows = np.flatnonzero(_dropped(view))
    assert rows.size and (view.features["user_index"][rows] == 0).all()
    recipe = RecipeData.from_dataset(view, cfg)
    kept = query_columns(recipe, view, cfg)[HISTORY]
    real = query_columns(RecipeData.from_dataset(ds, cfg), ds, cfg)[HISTORY]
    np.testing.assert_array_equal(kept, real)
    assert (kept[rows] > 0).any()
    lost = query_columns(RecipeData.from_dataset(user_dropout_view(ds, 0.5, seed=1), cfg),
                         user_dropout_view(ds, 0.5, seed=1), cfg)[HISTORY]
    assert (lost[rows] == 0).all()


def test_dropout_keeps_history_needs_dropout_and_history_length_is_read():
    from twostage.config import Config
    with pytest.raises(ValueError, match="--user-dropout"):
        Config.of(dropout_keeps_history=True)
    with pytest.raises(ValueError, match="history_length=0"):
        Config.of(history_length=0)


def test_history_length_sets_the_columns_width(synthetic_dataset, small_config):
    """``model.history_length`` N: training columns and queries carry the most recent N
    titles (fails if the width were the constant 50 or the wrong end were kept)."""
    ds = synthetic_dataset
    short, wide = (small_config.replace(history=True, history_length=n) for n in (3, 80))
    recipe = RecipeData.from_dataset(ds, short)
    three = query_columns(recipe, ds, short)[HISTORY]
    eighty = query_columns(recipe, ds, wide)[HISTORY]
    assert three.shape == (len(ds.user_id), 3) and eighty.shape == (len(ds.user_id), 80)
    np.testing.assert_array_equal(three, eighty[:, -3:])
    rows = ds.split.test[:20]
    extras = query_extras(recipe, wide, ds.user_id[rows], ds.timestamp[rows])[HISTORY]
    np.testing.assert_array_equal(extras, eighty[rows])
