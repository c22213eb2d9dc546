"""User-id dropout (``--user-dropout``, issue 26's trained cold-user path): the anonymous rows
come from one piece of shared code (``twostage.recipes.user_dropout_view``), so both backends
train on the same batches; here the towers' handling of those rows is compared: both encode a
dropped user as the OOV row, and a few optimizer steps on batches of the view (histories of the
view attached, the ``everything``-like recipe of issue 15 plus dropout) stay within the group 4
tolerances."""
import numpy as np
import pytest

from twostage.recipes import DROPPED_USER, HISTORY, RecipeData, user_dropout_view

from . import checks
from .tolerances import TRAJECTORY_LEARNING_RATE

STEPS = 5
RECIPE = {"history": True, "genres": True, "use_sampling_probability": True,
          "normalize": True, "temperature": 0.1, "learn_temperature": True, "user_dropout": 0.5}
# the dropped rows without a history (the default), or keeping it (--dropout-keeps-history,
# with the longer histories of quality's best-live recipe)
VARIANTS = {"dropped_rows_without_history": {},
            "dropped_rows_keep_history": {"dropout_keeps_history": True, "history_length": 200}}


def _view_and_batches(dataset, config):
    view = user_dropout_view(dataset, config.train.user_dropout, config.seed,
                             config.train.dropout_keeps_history)
    recipe = RecipeData.from_dataset(view, config)
    batches = []
    for rows in checks.training_batches(view, config, STEPS):
        batch = checks.raw_batch(view, rows, config)
        batch[HISTORY] = recipe.histories(view.history_ids[rows], batch["timestamp"],
                                          config.model.history_length)
        batches.append(batch)
    return view, recipe, batches


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_user_dropout_trajectory(dataset, config, variant):
    """Per-step losses and final weights of both backends on dropout batches (fails if one
    backend mapped the dropped ids anywhere but its OOV row, e.g. a torch lookup that kept
    the dropped rows' real user index)."""
    cfg = config.replace(learning_rate=TRAJECTORY_LEARNING_RATE, **RECIPE, **VARIANTS[variant])
    view, recipe, batches = _view_and_batches(dataset, cfg)
    dropped = np.char.startswith(batches[0]["user_id"].astype(str), DROPPED_USER)
    assert 0.3 < dropped.mean() < 0.7
    assert (view.spec.user_index(batches[0]["user_id"])[dropped] == 0).all()
    history = batches[0][HISTORY]
    assert history.shape[1] == cfg.model.history_length
    assert (history[dropped] > 0).any() == cfg.train.dropout_keeps_history
    pair = checks.make_pair(view, cfg)
    pair.torch.attach_recipe_data(recipe)
    pair.tfrs.attach_recipe_data(recipe)
    checks.check_trajectory(pair, "retrieval", batches)
