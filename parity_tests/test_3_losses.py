"""Group 3: losses (default and every retrieval option) within 1e-5, gradients within 1e-4."""
import numpy as np
import pytest

from . import checks

RETRIEVAL_OPTIONS = {
    "default": {},
    "temperature": {"temperature": 0.2},
    "logq": {"use_sampling_probability": True},
    "accidental_hits": {"remove_accidental_hits": True},
    "hard_negatives": {"num_hard_negatives": 10},
    "all_options": {"temperature": 0.5, "use_sampling_probability": True,
                    "remove_accidental_hits": True, "num_hard_negatives": 20},
}


def _batch(dataset, config):
    rows = checks.training_batches(dataset, config, 1)[0]
    return checks.raw_batch(dataset, rows, config)


@pytest.mark.parametrize("option", sorted(RETRIEVAL_OPTIONS))
def test_retrieval_loss_and_gradients(dataset, config, option):
    cfg = config.replace(**RETRIEVAL_OPTIONS[option])
    pair = checks.make_pair(dataset, cfg)
    checks.check_loss_and_gradients(pair, "retrieval", _batch(dataset, cfg))


def test_retrieval_sample_weights(dataset, config):
    pair = checks.make_pair(dataset, config)
    batch = _batch(dataset, config)
    batch["sample_weight"] = np.random.default_rng(0).uniform(0.1, 2.0, len(batch["user_id"]))
    checks.check_loss_and_gradients(pair, "retrieval", batch)


def test_ranking_loss_and_gradients(dataset, config):
    pair = checks.make_pair(dataset, config)
    checks.check_loss_and_gradients(pair, "ranking", _batch(dataset, config))


def test_losses_on_trained_weights(trained_pair, dataset, config):
    batch = _batch(dataset, config)
    for stage in checks.STAGES:
        checks.check_loss_and_gradients(trained_pair, stage, batch)


@pytest.mark.parametrize("run_eagerly, mode", [(False, "keras_graph"), (True, "keras_eager")])
def test_ranking_loss_modes_equal_a_real_keras_step_at_saturation(run_eagerly, mode):
    """torch's Ranking(mode) against tf_keras' own compiled (``fit``'s tf.function, where
    Grappler folds ``1 - p + eps``) or eager step, on probabilities from saturated logits to
    the middle: the two formulas differ by 0.084 at p = 1 - eps (label 0), so a torch default
    that followed the eager formula fails the graph case, and the reverse."""
    import tensorflow as tf
    import tf_keras as keras
    import torch

    from torch_impl.tasks import Ranking

    logits = np.array([30.0, -30.0, 17.0, -17.0, 3.0, -0.5, 0.0, 30.0], dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 1], dtype=np.float32)
    probs = torch.sigmoid(torch.from_numpy(logits)[:, None])
    # the probabilities come in as data (a unit Dense passes them through): after a sigmoid
    # op Keras would take its logits instead, as the seed's towers never let it
    inputs = keras.Input(shape=(1,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False,
                                                   kernel_initializer="ones")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.BinaryCrossentropy(),
                  run_eagerly=run_eagerly)
    keras_loss = float(model.train_on_batch(tf.constant(probs.numpy()), labels[:, None]))
    ours = float(Ranking(mode)(torch.from_numpy(labels), probs))
    assert ours == pytest.approx(keras_loss, rel=1e-6, abs=0)
    other = "keras_eager" if mode == "keras_graph" else "keras_graph"
    assert float(Ranking(other)(torch.from_numpy(labels), probs)) != pytest.approx(
        keras_loss, rel=1e-4)                          # the saturated rows tell them apart
