"""The Keras Adagrad made from the config, and its accumulators by Keras weight name (what a
checkpoint carries so that a resumed run continues Adagrad)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrs_impl import models, optim, train


@pytest.fixture()
def ranking(synthetic_dataset, small_config):
    return models.build_ranking_model(synthetic_dataset.spec, small_config)


def test_make_optimizer_uses_the_config(small_config):
    config = small_config.replace(learning_rate=0.3, initial_accumulator_value=0.2,
                                  adagrad_epsilon=1e-5)
    optimizer = optim.make_optimizer(config)
    assert isinstance(optimizer, tf.keras.optimizers.Adagrad)
    assert float(optimizer.learning_rate) == pytest.approx(0.3)
    assert optimizer.initial_accumulator_value == 0.2 and optimizer.epsilon == 1e-5


def test_accumulators_by_name_start_at_the_initial_value(ranking, small_config):
    optimizer = optim.make_optimizer(small_config)
    accumulators = optim.get_accumulators(optimizer, ranking)  # builds the optimizer
    weights = models.get_weights(ranking)
    assert list(accumulators) == list(weights)
    for name, value in accumulators.items():
        assert value.shape == weights[name].shape and value.dtype == np.float32
        initial = np.float32(small_config.train.initial_accumulator_value)
        np.testing.assert_array_equal(value, initial)


def test_one_step_adds_the_squared_gradients(ranking, synthetic_dataset, small_config):
    """Keras Adagrad.update_step: acc += g * g (embedding rows: the summed duplicate-row
    gradient, squared), for an optimizer built before fit as the backend builds it."""
    optimizer = optim.make_optimizer(small_config)
    before = optim.get_accumulators(optimizer, ranking)
    train.compile_model(ranking, small_config, optimizer)
    batch = synthetic_dataset.raw(synthetic_dataset.split.train[:64])
    _, grads = train.loss_and_gradients(ranking, batch)
    train.train_steps(ranking, small_config, [batch])
    after = optim.get_accumulators(optimizer, ranking)
    for name, grad in grads.items():
        np.testing.assert_allclose(after[name], before[name] + grad.astype(np.float64) ** 2,
                                   rtol=1e-5, atol=1e-7, err_msg=name)


def test_set_accumulators_round_trip_and_errors(ranking, small_config):
    optimizer = optim.make_optimizer(small_config)
    values = {k: np.full_like(v, 0.5 + i) for i, (k, v) in
              enumerate(optim.get_accumulators(optimizer, ranking).items())}
    optim.set_accumulators(optimizer, ranking, values)
    got = optim.get_accumulators(optimizer, ranking)
    assert all(np.array_equal(got[k], values[k]) for k in values)
    with pytest.raises(KeyError, match="missing"):
        optim.set_accumulators(optimizer, ranking,
                               {k: v for k, v in values.items() if "bias" not in k})
    bad = dict(values)
    bad["ranking_model/ratings/0/bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="shape"):
        optim.set_accumulators(optimizer, ranking, bad)


def test_an_optimizer_serves_one_model(ranking, synthetic_dataset, small_config):
    optimizer = optim.make_optimizer(small_config)
    optim.get_accumulators(optimizer, ranking)
    other = models.build_retrieval_model(synthetic_dataset.spec, small_config)
    with pytest.raises(KeyError, match="one optimizer per model"):
        optim.get_accumulators(optimizer, other)
    train.compile_model(ranking, small_config, optimizer)
    with pytest.raises(ValueError, match="another optimizer"):
        train.compile_model(ranking, small_config, optim.make_optimizer(small_config))


def test_make_optimizer_reads_the_train_section_alone():
    """The builder takes ``config.train`` (issue 23 item 8; twin of the torch test): the same
    Keras hyperparameters as from the whole Config."""
    from twostage.config import Config
    config = Config.of(learning_rate=0.05, initial_accumulator_value=0.2, adagrad_epsilon=1e-6)
    whole, section = optim.make_optimizer(config), optim.make_optimizer(config.train)
    assert whole.get_config() == section.get_config()
    assert section.get_config()["learning_rate"] == pytest.approx(0.05)
