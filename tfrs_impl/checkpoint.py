"""The TensorFlow side of ``twostage.checkpoint`` (the one format of both backends), and a
SavedModel for serving. The twin of torch_impl/checkpoint.py.

Checkpoint: :func:`save` collects every weight and its Keras Adagrad accumulator by Keras name
(``models.named_variables``, ``optim.get_accumulators``) plus the epochs done per stage, and hands
them to ``twostage.checkpoint.save_checkpoint`` (layout, validation and the atomic folder write
live there). :func:`read` reads them back with ``load_checkpoint`` (CheckpointNotFoundError /
CheckpointError, naming the file and the fix); :func:`restore` checks names and shapes against
the models built from the stored (or given, architecture-compatible) config with
``check_weights`` and assigns weights and accumulators, so a resumed run continues Adagrad
instead of restarting it. No index is stored: ``build_index`` rebuilds the BruteForce.

The SavedModel for serving (retrieval call, ``recommend`` signature of both stages) lives in
:mod:`tfrs_impl.serving`; ``export_saved_model``, ``load_saved_model`` and ``SAVEDMODEL_KIND``
stay importable from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import tensorflow as tf

from twostage import checkpoint as core

from .models import get_weights, named_variables, set_weights
from .optim import Adagrad, get_accumulators, set_accumulators
from .serving import SAVEDMODEL_KIND, export_saved_model, load_saved_model

BACKEND = "tfrs"


def framework() -> str:
    """The versions a checkpoint was written with (informational, in meta.json)."""
    import tensorflow_recommenders as tfrs
    import tf_keras
    return f"tensorflow {tf.__version__}, tf_keras {tf_keras.__version__}, tfrs {tfrs.__version__}"


def stage_state(stage: str, model, optimizer: Adagrad) -> core.StageState:
    """A stage's weights and Adagrad accumulators by Keras name (numpy copies)."""
    return core.StageState(weights=get_weights(model),
                           accumulators=get_accumulators(optimizer, model))


def save(directory: Path | str, **kwargs) -> Path:
    """``twostage.checkpoint.save_models`` with this backend's :func:`stage_state`: ``config``,
    ``spec``, ``models`` / ``optimizers`` by stage, ``epochs_done``, ``recipe`` (the attached
    ``RecipeData``: written as recipe.npz when the config uses a recipe that has lookups)."""
    return core.save_models(directory, backend=BACKEND, stage_state=stage_state,
                            framework=framework(), **kwargs)


def restore_stage(directory: Path, stage: str, model, optimizer: Adagrad,
                  state: core.StageState) -> None:
    """Assign a stored stage to ``model`` and ``optimizer`` after checking names and shapes
    against the model (CheckpointError naming the file otherwise)."""
    shapes = {name: tuple(v.shape) for name, v in named_variables(model).items()}
    core.check_weights(directory, stage, state.weights, shapes)
    set_weights(model, state.weights)
    if state.accumulators is not None:
        core.check_weights(directory, stage, state.accumulators, shapes)
        set_accumulators(optimizer, model, state.accumulators)


def restore(stored: core.Checkpoint, models: Mapping, optimizers: Mapping[str, Adagrad]) -> None:
    """Assign every stored stage to the models and optimizers of the same stage."""
    for stage, state in stored.stages.items():
        restore_stage(stored.directory, stage, models[stage], optimizers[stage], state)


# --- SavedModel for serving: tfrs_impl/serving.py (kept importable from here) ---------------
__all__ = ["BACKEND", "framework", "stage_state", "save", "restore_stage", "restore",
           "SAVEDMODEL_KIND", "export_saved_model", "load_saved_model"]
