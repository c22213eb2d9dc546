"""fit(): the exact shared batch schedule, History semantics, validation, NaN handling; the
progress bar; train_steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from twostage.data.split import epoch_batches
from tfrs_impl import models, train
from tfrs_impl.features import feature_columns, select_rows, to_tensors
from twostage import evaluation
from twostage.schedule import BatchPlan, validation_epochs


def _manual_training(model, dataset, config, epochs):
    """What fit must do with shared batches: TFRS train_step over epoch_batches, in order."""
    optimizer = tf.keras.optimizers.Adagrad(config.train.learning_rate,
                                            config.train.initial_accumulator_value,
                                            config.train.adagrad_epsilon)
    columns = feature_columns(dataset)
    plan = BatchPlan(dataset.split.train, config.train.batch_size, config.seed)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = []
    for epoch in range(epochs):
        per_step = [float(step(select_rows(columns, rows))) for rows in plan.rows(epoch, 1)]
        losses.append(np.mean(per_step))
    return losses


def test_shared_batches_are_exactly_epoch_batches(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config
    train_rows = ds.split.train
    stream = train.train_dataset(ds, config, 3, feature_columns(ds))
    batches = list(stream)
    expected = [train_rows[b] for e in range(3)
                for b in epoch_batches(len(train_rows), config.train.batch_size, seed=config.seed,
                                       epoch=e)]
    assert len(batches) == len(expected) == 3 * math.ceil(len(train_rows) / config.train.batch_size)
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
    done = {"ranking": 0}  # the backend's epochs_done: where the shared batch order resumes
    train.fit_ranking(twice, ds, config, epochs=1, epochs_done=done)
    assert done == {"ranking": 1}
    h1b = train.fit_ranking(twice, ds, config, epochs=1, epochs_done=done)
    assert done == {"ranking": 2}
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
    ks = config.eval.top_ks
    assert set(history.val) == {f"factorized_top_k/top_{k}_categorical_accuracy" for k in ks} | {
        "loss", "loss_per_example"}
    assert [e for e, _ in history.val["loss"]] == [2, 3]  # every 2 epochs and the last
    # val loss = mean of the per-batch test losses (SUM over each batch), with the final weights
    test = ds.split.test
    bs = config.eval.eval_batch_size
    batch_losses = [train.batch_loss(model, ds.raw(test[i: i + bs]), False)
                    for i in range(0, len(test), bs)]
    assert history.val["loss"][-1][1] == pytest.approx(np.mean(batch_losses), rel=1e-4)
    # per example: the SUM losses over all test examples
    assert [e for e, _ in history.val["loss_per_example"]] == [2, 3]
    assert history.val["loss_per_example"][-1][1] == pytest.approx(
        np.sum(batch_losses) / len(test), rel=1e-4)
    # val top-k = the framework-agnostic restatement of FactorizedTopK on the same embeddings
    q, c = (t.numpy() for t in model.embeddings(to_tensors(ds.raw(test))))
    corpus = model.candidate_model(tf.constant(ds.corpus_titles.astype(str))).numpy()
    # the positive summed as TFRS does (tf.reduce_sum(q * c, 1), TF's order: numpy's differs by
    # an ulp in about half of the rows, which moves queries whose own corpus score ties it)
    positive = tf.reduce_sum(tf.constant(q) * tf.constant(c), axis=1).numpy()
    expected = evaluation.factorized_top_k_accuracy(q, c, corpus, ks=ks, positive=positive)
    for k in ks:
        got = history.val[f"factorized_top_k/top_{k}_categorical_accuracy"][-1][1]
        assert abs(got - expected[k]) <= 2 / len(test), k  # graph vs eager rounding: <= 2 rows


def test_ranking_history_and_seed_shuffle_mode(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config.replace(shared_batches=False)
    model = models.build_ranking_model(ds.spec, config)
    history = train.fit_ranking(model, ds, config, epochs=2)
    assert len(history.loss) == 2 and all(np.isfinite(history.loss))
    assert set(history.metrics) == {"binary_accuracy"}
    assert len(history.metrics["binary_accuracy"]) == 2
    assert set(history.val) == {"binary_accuracy", "loss", "loss_per_example"}
    assert [e for e, _ in history.val["binary_accuracy"]] == [1, 2]
    probs = model.ranking_model(to_tensors(ds.raw(ds.split.test))).numpy()[:, 0]
    accuracy = evaluation.binary_accuracy(ds.label[ds.split.test], probs)
    assert history.val["binary_accuracy"][-1][1] == pytest.approx(accuracy, abs=1e-6)


def test_zero_epochs_is_a_no_op(synthetic_dataset, small_config):
    model = models.build_ranking_model(synthetic_dataset.spec, small_config)
    before = models.get_weights(model)
    history = train.fit_ranking(model, synthetic_dataset, small_config, epochs=0)
    assert history.loss == [] and history.val == {}
    assert all(np.array_equal(v, models.get_weights(model)[k]) for k, v in before.items())


def test_validation_epochs():
    """fit passes twostage.schedule.validation_epochs to Keras' validation_freq."""
    assert validation_epochs(100, 10) == list(range(10, 101, 10))
    assert validation_epochs(25, 10) == [10, 20, 25]
    assert validation_epochs(3, 10) == [3]
    assert validation_epochs(0, 10) == []


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
    config = small_config.replace(empty_title="nan")
    model = (models.build_retrieval_model(ds.spec, config, ds.corpus_titles)
             if stage == "retrieval" else models.build_ranking_model(ds.spec, config))
    fit = train.fit_retrieval if stage == "retrieval" else train.fit_ranking
    with pytest.raises(FloatingPointError,
                       match=rf"{stage} training weights became non-finite .* at epoch 1, step"):
        fit(model, ds, config, epochs=1)


def test_per_example_losses_and_epoch_callback():
    """History.loss_per_example / val["loss_per_example"] (twostage.backend.per_example over the
    batch sizes); epochs_done counted and on_epoch called after each epoch's validation."""
    calls, done = [], {"retrieval": 5}
    finite = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    finite.build((None, 2))
    recorder = train.HistoryCallback(
        "retrieval", train_sizes=[4, 4, 2], test_sizes=[3, 1], epochs_done=done,
        on_epoch=lambda stage, epoch, h: calls.append(
            (stage, epoch, list(h.loss), dict(h.val))))
    recorder.set_model(finite)
    recorder.on_epoch_begin(0)
    for step, loss in enumerate([8.0, 4.0, 3.0]):
        recorder.on_train_batch_end(step, {"loss": loss})
    recorder.on_test_begin()
    for step, loss in enumerate([6.0, 1.0]):
        recorder.on_test_batch_end(step, {"loss": loss})
    recorder.on_test_end()
    recorder.on_epoch_end(0, {"loss": 3.0, "val_loss": 1.0, "val_regularization_loss": 0.0})
    h = recorder.history
    assert h.loss == [5.0] and h.loss_per_example == [pytest.approx(15.0 / 10)]
    assert h.val == {"loss": [(1, 3.5)], "loss_per_example": [(1, pytest.approx(7.0 / 4))]}
    assert done == {"retrieval": 6}
    assert calls == [("retrieval", 1, [5.0], h.val)]
    # ranking losses are batch means: the per-example loss weights them by batch size
    ranking = train.HistoryCallback("ranking", train_sizes=[4, 4, 2])
    ranking.set_model(finite)
    ranking.on_epoch_begin(0)
    for step, loss in enumerate([1.0, 0.5, 0.25]):
        ranking.on_train_batch_end(step, {"loss": loss})
    ranking.on_epoch_end(0, {})
    assert ranking.history.loss_per_example == [pytest.approx((4 + 2 + 0.5) / 10)]


def test_fit_reports_every_epoch_after_validation(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config.replace(validation_freq=2)
    model = models.build_ranking_model(ds.spec, config)
    seen, done = [], {"ranking": 0}

    def on_epoch(stage, epoch, history):
        seen.append((stage, epoch, len(history.loss), [e for e, _ in history.val["loss"]]
                     if "loss" in history.val else []))
    history = train.fit_ranking(model, ds, config, epochs=3, epochs_done=done, on_epoch=on_epoch)
    assert seen == [("ranking", 1, 1, []), ("ranking", 2, 2, [2]), ("ranking", 3, 3, [2, 3])]
    assert done == {"ranking": 3} and len(history.loss_per_example) == 3
    steps = math.ceil(len(ds.split.train) / config.train.batch_size)
    sizes = train.batch_sizes(len(ds.split.train), config.train.batch_size)
    assert len(sizes) == steps and sum(sizes) == len(ds.split.train)


def test_one_progress_bar_per_stage(synthetic_dataset, small_config, monkeypatch):
    """One tqdm bar over all steps of the fit, with epoch, step and loss; none when quiet."""
    import tqdm.auto
    bars = []

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            self.kwargs = dict(kwargs)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.postfixes, self.steps = [], 0
            bars.append(self)

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            self.postfixes.append(dict(ordered_dict or {}, **kwargs))

        def update(self, n=1):
            self.steps += n

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    ds = synthetic_dataset
    steps = math.ceil(len(ds.split.train) / small_config.train.batch_size)
    model = models.build_ranking_model(ds.spec, small_config)
    train.fit_ranking(model, ds, small_config.replace(quiet=False), epochs=2)
    assert len(bars) == 1 and bars[0].total == 2 * steps and bars[0].steps == 2 * steps
    assert bars[0].kwargs["desc"] == "tfrs ranking"
    last_step = bars[0].postfixes[steps - 1]
    assert last_step["epoch"] == "1/2" and last_step["step"] == steps and "loss" in last_step
    assert bars[0].postfixes[-1]["epoch"] == "2/2" and "binary_accuracy" in bars[0].postfixes[-1]
    train.fit_ranking(model, ds, small_config, epochs=1)  # quiet
    assert len(bars) == 1


def test_train_steps_are_fit_steps_on_exactly_these_batches(synthetic_dataset, small_config):
    """train_steps = one TFRS train_step + Keras Adagrad per raw batch, in order (the parity
    suite's trajectory check runs on it)."""
    ds, config = synthetic_dataset, small_config
    plan = BatchPlan(ds.split.train, config.train.batch_size, config.seed)
    batches = [ds.raw(rows) for rows in plan.first_steps(4)]
    for stage, build in (("retrieval", models.build_retrieval_model),
                         ("ranking", models.build_ranking_model)):
        fitted, manual = build(ds.spec, config), build(ds.spec, config)
        losses = train.train_steps(fitted, config, batches)
        optimizer = tf.keras.optimizers.Adagrad(config.train.learning_rate,
                                                config.train.initial_accumulator_value,
                                                config.train.adagrad_epsilon)
        expected = []
        for batch in batches:
            with tf.GradientTape() as tape:
                loss = manual.compute_loss(to_tensors(batch), training=True)
            grads = tape.gradient(loss, manual.trainable_variables)
            optimizer.apply_gradients(zip(grads, manual.trainable_variables))
            expected.append(float(loss))
        np.testing.assert_allclose(losses, expected, rtol=1e-5, err_msg=stage)
        a, b = models.get_weights(fitted), models.get_weights(manual)
        for name in a:  # atol: the candidate tower's output bias gets ~0 gradients (softmax)
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert train.train_steps(models.build_ranking_model(ds.spec, config), config, []) == []


def test_validation_takes_the_eval_queries_sample(synthetic_dataset, small_config):
    """With eval_queries the fit validates on the seeded sample the evaluation uses
    (twostage.schedule.validation_rows), in test-split order; without, on every test row."""
    from twostage.schedule import validation_rows
    ds = synthetic_dataset
    columns = feature_columns(ds)
    for n, expected in ((37, 37), (None, len(ds.split.test))):
        config = small_config.replace(eval_queries=n)
        rows = validation_rows(ds.split.test, config)
        batches = list(train.eval_dataset(ds, config, columns))
        got = np.concatenate([b["timestamp"].numpy() for b in batches])
        assert len(got) == expected
        np.testing.assert_array_equal(got, ds.timestamp[rows])
