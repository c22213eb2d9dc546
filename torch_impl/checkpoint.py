"""The torch side of ``twostage.checkpoint`` (the one format of both backends). The twin of
tfrs_impl/checkpoint.py.

:func:`save` collects every weight and its Keras Adagrad accumulator by Keras name
(``models.keras_weight_names``: Dense kernels [in, out], so torch Linear weights and their
accumulators are transposed) plus the epochs done per stage, and hands them to
``twostage.checkpoint.save_checkpoint`` (layout, validation and the atomic folder write live
there). :func:`read` reads them back with ``load_checkpoint`` (CheckpointNotFoundError /
CheckpointError, naming the file and the fix); :func:`restore` checks names and shapes against
the models built from the stored (or given, architecture-compatible) config with
``check_weights`` and assigns weights and accumulators, so a resumed run continues Adagrad
instead of restarting it.

No candidate index is stored: ``build_index`` rebuilds it from the candidate embeddings of the
restored towers (deterministic for every kind), and at catalogue scale the run folder holds the
index files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from twostage import checkpoint as core

from .models import KERAS_PREFIX, get_keras_weights, keras_weight_shapes, set_keras_weights
from .optim import KerasAdagrad, get_accumulators, set_accumulators

BACKEND = "torch"


def framework() -> str:
    """The versions a checkpoint was written with (informational, in meta.json)."""
    return f"torch {torch.__version__}"


def stage_state(stage: str, model: nn.Module, optimizer: KerasAdagrad) -> core.StageState:
    """A stage's weights and Adagrad accumulators by Keras name (numpy copies)."""
    prefix = KERAS_PREFIX[stage]
    return core.StageState(weights=get_keras_weights(model, prefix),
                           accumulators=get_accumulators(optimizer, model, prefix))


def save(directory: Path | str, **kwargs) -> Path:
    """``twostage.checkpoint.save_models`` with this backend's :func:`stage_state`: ``config``,
    ``spec``, ``models`` / ``optimizers`` by stage, ``epochs_done``, ``recipe`` (the attached
    ``RecipeData``: written as recipe.npz when the config uses a recipe that has lookups)."""
    return core.save_models(directory, backend=BACKEND, stage_state=stage_state,
                            framework=framework(), **kwargs)


def restore_stage(directory: Path, stage: str, model: nn.Module, optimizer: KerasAdagrad,
                  state: core.StageState) -> None:
    """Assign a stored stage to ``model`` and ``optimizer`` after checking names and shapes
    against the model (CheckpointError naming the file otherwise)."""
    prefix = KERAS_PREFIX[stage]
    shapes = keras_weight_shapes(model, prefix)
    core.check_weights(directory, stage, state.weights, shapes)
    set_keras_weights(model, state.weights, prefix)
    if state.accumulators is not None:
        core.check_weights(directory, stage, state.accumulators, shapes)
        set_accumulators(optimizer, model, state.accumulators, prefix)


def restore(stored: core.Checkpoint, models: Mapping[str, nn.Module],
            optimizers: Mapping[str, KerasAdagrad]) -> None:
    """Assign every stored stage to the models and optimizers of the same stage."""
    for stage, state in stored.stages.items():
        restore_stage(stored.directory, stage, models[stage], optimizers[stage], state)
