"""fit(): the exact shared batch schedule, History semantics, validation, NaN handling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from twostage.data.split import epoch_batches
from tfrs_impl import models, tasks, train
from twostage import evaluation


def _manual_training(model, dataset, config, epochs):
    """What fit must do with shared batches: TFRS train_step over epoch_batches, in order."""
    optimizer = tf.keras.optimizers.Adagrad(config.learning_rate,
                                            config.initial_accumulator_value,
                                            config.adagrad_epsilon)
    columns = train.feature_columns(dataset)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = []
    for epoch in range(epochs):
        per_step = [float(step({k: tf.gather(v, rows) for k, v in columns.items()}))
                    for rows in train.shared_batch_rows(dataset, config, 1, first_epoch=epoch)]
        losses.append(np.mean(per_step))
    return losses


def test_shared_batches_are_exactly_epoch_batches(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config
    train_rows = ds.split.train
    stream = train.train_dataset(ds, config, 3, train.feature_columns(ds))
    batches = list(stream)
    expected = [train_rows[b] for e in range(3)
                for b in epoch_batches(len(train_rows), config.batch_size, seed=config.seed,
                                       epoch=e)]
    assert len(batches) == len(expected) == 3 * math.ceil(len(train_rows) / config.batch_size)
    for got, rows in zip(batches, expected):
        np.testing.assert_array_equal(got["timestamp"].numpy(), ds.timestamp[rows])
        assert [t.decode() for t in got["movie_title"].numpy()] == list(ds.movie_title[rows])
        assert [u.decode() for u in got["user_id"].numpy()] == list(ds.user_id[rows])


def test_fit_equals_manual_train_steps_on_shared_batches(synthetic_dataset, small_config):
    """Proves end to end that fit consumed batch i of epoch e = epoch_batches(...)[i]."""
    ds, config = synthetic_dataset, small_config.replace(validation_freq=100)
    fitted = models.build_retrieval_model(ds.spec, config, ds.corpus_titles)
    manual = models.build_retrieval_model(ds.spec, config)
    history = train.fit_retrieval(fitted, ds, config, epochs=2)
    manual_losses = _manual_training(manual, ds, config, 2)
    np.testing.assert_allclose(history.loss, manual_losses, rtol=1e-5)
    expected = models.get_weights(manual)
    for name, value in models.get_weights(fitted).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_second_fit_continues_the_schedule(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config.replace(validation_freq=100)
    once = models.build_ranking_model(ds.spec, config)
    twice = models.build_ranking_model(ds.spec, config)
    h2 = train.fit_ranking(once, ds, config, epochs=2)
    train.fit_ranking(twice, ds, config, epochs=1)
    h1b = train.fit_ranking(twice, ds, config, epochs=1)
    assert h1b.loss[0] == pytest.approx(h2.loss[1], rel=1e-5)
    a, b = models.get_weights(once), models.get_weights(twice)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_retrieval_history_and_validation(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config.replace(validation_freq=2)
    model = models.build_retrieval_model(ds.spec, config, ds.corpus_titles)
    history = train.fit_retrieval(model, ds, config, epochs=3)
    assert len(history.loss) == len(history.epoch_seconds) == 3
    assert history.metrics == {}  # top-k is not computed while training (as the seed)
    ks = config.top_ks
    assert set(history.val) == {f"factorized_top_k/top_{k}_categorical_accuracy" for k in ks} | {
        "loss"}
    assert [e for e, _ in history.val["loss"]] == [2, 3]  # every 2 epochs and the last
    # val loss = mean of the per-batch test losses (SUM over each batch), with the final weights
    test = ds.split.test
    batch_losses = [tasks.batch_loss(model, ds.raw(test[i: i + config.eval_batch_size]), False)
                    for i in range(0, len(test), config.eval_batch_size)]
    assert history.val["loss"][-1][1] == pytest.approx(np.mean(batch_losses), rel=1e-4)
    # val top-k = the framework-agnostic restatement of FactorizedTopK on the same embeddings
    q, c = (t.numpy() for t in model.embeddings(tasks.to_tensors(ds.raw(test))))
    corpus = model.candidate_model(tf.constant(ds.corpus_titles.astype(str))).numpy()
    expected = evaluation.factorized_top_k_accuracy(q, c, corpus, ks=ks)
    for k in ks:
        got = history.val[f"factorized_top_k/top_{k}_categorical_accuracy"][-1][1]
        assert abs(got - expected[k]) <= 2 / len(test), k  # graph vs eager rounding: <= 2 rows


def test_ranking_history_and_seed_shuffle_mode(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config.replace(shared_batches=False)
    model = models.build_ranking_model(ds.spec, config)
    history = train.fit_ranking(model, ds, config, epochs=2)
    assert len(history.loss) == 2 and all(np.isfinite(history.loss))
    assert set(history.metrics) == {"binary_accuracy"} and len(history.metrics["binary_accuracy"]) == 2
    assert set(history.val) == {"binary_accuracy", "loss"}
    assert [e for e, _ in history.val["binary_accuracy"]] == [1, 2]
    probs = model.ranking_model(tasks.to_tensors(ds.raw(ds.split.test))).numpy()[:, 0]
    accuracy = evaluation.binary_accuracy(ds.label[ds.split.test], probs)
    assert history.val["binary_accuracy"][-1][1] == pytest.approx(accuracy, abs=1e-6)


def test_zero_epochs_is_a_no_op(synthetic_dataset, small_config):
    model = models.build_ranking_model(synthetic_dataset.spec, small_config)
    before = models.get_weights(model)
    history = train.fit_ranking(model, synthetic_dataset, small_config, epochs=0)
    assert history.loss == [] and history.val == {}
    assert all(np.array_equal(v, models.get_weights(model)[k]) for k, v in before.items())


def test_validation_epochs():
    assert train.validation_epochs(100, 10) == list(range(10, 101, 10))
    assert train.validation_epochs(25, 10) == [10, 20, 25]
    assert train.validation_epochs(3, 10) == [3]
    assert train.validation_epochs(0, 10) == []


def test_nan_loss_names_epoch_and_step():
    recorder = train.HistoryCallback("ranking")
    recorder.on_epoch_begin(4)
    with pytest.raises(FloatingPointError, match="ranking training loss is nan at epoch 5, step 3"):
        recorder.on_train_batch_end(2, {"loss": float("nan")})


@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_nan_weights_behind_a_finite_loss_are_caught(synthetic_dataset, small_config, stage):
    """A token-less title ("!!!") is NaN with Keras' pooling (empty_title="nan"); TF then keeps
    the loss finite (softmax CE maps NaN logits to log B; BCE clips a NaN probability), so the
    weights are checked after every step."""
    ds = synthetic_dataset
    model = (models.build_retrieval_model(ds.spec, small_config, ds.corpus_titles,
                                          empty_title="nan") if stage == "retrieval"
             else models.build_ranking_model(ds.spec, small_config, empty_title="nan"))
    fit = train.fit_retrieval if stage == "retrieval" else train.fit_ranking
    with pytest.raises(FloatingPointError,
                       match=rf"{stage} training weights became non-finite .* at epoch 1, step"):
        fit(model, ds, small_config, epochs=1)
