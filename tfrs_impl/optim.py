"""The Keras Adagrad of the seed, made from the config, and its accumulators by weight name.

The twin of torch_impl/optim.py (``KerasAdagrad``, a torch restatement of this optimizer). The
accumulators are what a checkpoint must carry so that a resumed run continues Adagrad instead of
restarting it (``twostage.checkpoint`` stores them under the weights' Keras names).

tf_keras 2.21 (tf_keras/src/optimizers/adagrad.py, optimizer.py):
- ``Adagrad.build(var_list)`` creates one accumulator per variable, filled with
  ``initial_accumulator_value``, in ``optimizer._accumulators`` (a list in ``var_list`` order);
  ``Optimizer.build`` maps ``optimizer._var_key(variable)`` to that position in
  ``optimizer._index_dict``. Building is once only (``_built``); ``apply_gradients`` builds on
  first use with the trainable variables and raises KeyError for a variable it was not built on.
- ``update_step``: ``acc += g * g; var -= lr * g / sqrt(acc + epsilon)`` (sparse rows alike).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from twostage.config import Config, TrainConfig, section_of

from .models import assign_by_name, named_variables

Adagrad = tf.keras.optimizers.Adagrad


def make_optimizer(config: Config | TrainConfig) -> Adagrad:
    """Keras Adagrad with the train section's learning rate, initial accumulator and epsilon
    (the seed's ``Adagrad(learning_rate=0.1)`` with Keras' other defaults spelled out; a whole
    Config is accepted). TypeError for anything else."""
    train = section_of(config, TrainConfig, "make_optimizer")
    return Adagrad(learning_rate=train.learning_rate,
                   initial_accumulator_value=train.initial_accumulator_value,
                   epsilon=train.adagrad_epsilon)


def build(optimizer: Adagrad, model) -> dict[str, tf.Variable]:
    """Create the accumulators of ``model``'s trainable variables now, unless the optimizer is
    built already (then on these variables); returns the variables by Keras name."""
    variables = named_variables(model)
    if not getattr(optimizer, "_built", False):
        optimizer.build(list(variables.values()))
    missing = [name for name, v in variables.items()
               if optimizer._var_key(v) not in optimizer._index_dict]
    if missing:
        raise KeyError(f"the optimizer was built on other variables (no accumulator for "
                       f"{missing[:3]}); use one optimizer per model, made by make_optimizer")
    return variables


def accumulators(optimizer: Adagrad, model) -> dict[str, tf.Variable]:
    """{Keras weight name: its accumulator variable} (the optimizer is built first if needed)."""
    variables = build(optimizer, model)
    return {name: optimizer._accumulators[optimizer._index_dict[optimizer._var_key(v)]]
            for name, v in variables.items()}


def get_accumulators(optimizer: Adagrad, model) -> dict[str, np.ndarray]:
    """{Keras weight name: accumulator} as numpy copies, shaped like the weights."""
    return {name: acc.numpy().copy() for name, acc in accumulators(optimizer, model).items()}


def set_accumulators(optimizer: Adagrad, model, values: Mapping[str, np.ndarray]) -> None:
    """Assign every accumulator by Keras weight name; names and shapes must match exactly
    (KeyError / ValueError otherwise)."""
    assign_by_name(accumulators(optimizer, model), values,
                   f"accumulator names of {type(model).__name__}")
