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
from typing import Mapping, Optional

import torch
from torch import nn

from twostage import checkpoint as core
from twostage.config import Config
from twostage.data.features import FeatureSpec

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


def save(directory: Path | str, *, config: Config, spec: FeatureSpec,
         models: Mapping[str, nn.Module], optimizers: Mapping[str, KerasAdagrad],
         epochs_done: Mapping[str, int]) -> Path:
    """Write both stages' weights and accumulators, the epochs done, the spec and the config
    (``twostage.checkpoint`` format, atomically). ``models`` / ``optimizers``: by stage."""
    stages = {stage: stage_state(stage, model, optimizers[stage])
              for stage, model in models.items()}
    return core.save_checkpoint(directory, backend=BACKEND, config=config, spec=spec,
                                stages=stages, epochs_done=epochs_done, framework=framework())


def read(directory: Path | str, *, config: Optional[Config] = None,
         spec: Optional[FeatureSpec] = None) -> core.Checkpoint:
    """``twostage.checkpoint.load_checkpoint`` of a torch checkpoint: a given ``config`` must
    agree on the architecture fields (its runtime options are used then); a given ``spec`` must
    be the stored one."""
    return core.load_checkpoint(directory, backend=BACKEND, config=config, spec=spec)


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
