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

SavedModel export: the query model + a BruteForce index over the corpus with title identifiers,
callable after ``tf.saved_model.load`` as ``m({"user_id": [B] string, "timestamp": [B] int64})``
-> (scores [B, k] float32, titles [B, k] string); also a ``serving_default`` signature returning
{"scores", "titles"}. Written through ``twostage.io.replace_directory(kind="savedmodel")``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import tensorflow as tf

from twostage import io
from twostage import checkpoint as core

from . import index as index_lib
from .models import get_weights, named_variables, set_weights
from .optim import Adagrad, get_accumulators, set_accumulators

BACKEND = "tfrs"
SAVEDMODEL_KIND = "savedmodel"  # twostage.io marker kind of an exported SavedModel folder


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
    ``spec``, ``models`` / ``optimizers`` by stage, ``epochs_done``."""
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


# --- SavedModel for serving --------------------------------------------------------------------
QUERY_SIGNATURE = {"user_id": tf.TensorSpec([None], tf.string, name="user_id"),
                   "timestamp": tf.TensorSpec([None], tf.int64, name="timestamp")}


class ServingModule(tf.Module):
    """Raw queries -> (scores [B, k], titles [B, k]) through a title-identified BruteForce."""

    def __init__(self, index):
        super().__init__()
        self.index = index

    @tf.function(input_signature=[QUERY_SIGNATURE])
    def __call__(self, queries):
        return self.index(queries)

    @tf.function(input_signature=[QUERY_SIGNATURE])
    def serve(self, queries):
        scores, titles = self.index(queries)
        return {"scores": scores, "titles": titles}


def export_saved_model(directory: Path | str, retrieval_model, corpus_titles: np.ndarray,
                       k: int = index_lib.DEFAULT_K, force: bool = False) -> Path:
    """Export query model + BruteForce(k) over ``corpus_titles`` (titles as ids), atomically.
    An existing folder is replaced only if it is a SavedModel export of ours (``force``:
    anything, moved aside to ``<name>.replaced-<time>``, never deleted; twostage.io)."""
    index = index_lib.build_index(retrieval_model.query_model, retrieval_model.candidate_model,
                                  corpus_titles, k=k, identifiers="titles")
    module = ServingModule(index)

    def write(tmp: Path) -> None:
        # Keras warns once per subclassed model that it has no get_config(); irrelevant here
        # (the SavedModel is loaded with tf.saved_model.load, not rebuilt from configs).
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        finally:
            logger.setLevel(level)
    return io.replace_directory(Path(directory), write, SAVEDMODEL_KIND, force=force)


def load_saved_model(directory: Path | str):
    """``tf.saved_model.load``; call the result with raw queries (see the module docstring)."""
    return tf.saved_model.load(str(directory))
