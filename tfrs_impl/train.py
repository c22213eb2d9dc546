"""Keras ``fit`` of the TFRS models on tf.data pipelines built from the shared split.

Batches: with ``config.shared_batches`` epoch e (0-based) feeds exactly
``data.split.epoch_batches(len(train), batch_size, seed=config.seed, epoch=e)`` (positions into
``dataset.split.train``), in order, one fit over all epochs; otherwise the seed's
``train.shuffle(100_000).batch(2048)`` (reshuffled every epoch by tf.data).
Validation: ``dataset.split.test`` in order, batches of ``eval_batch_size``, after epochs
``validation_freq, 2 * validation_freq, ...`` and after the last.

History semantics (``twostage.backend.History``):
- ``loss[e]``: mean of the per-step training losses of epoch e. (The "loss" Keras logs for a TFRS
  model is the LAST batch's loss, since ``train_step`` returns the raw batch loss.)
- ``metrics``: per-epoch training metrics that the model updates while training (ranking:
  ``binary_accuracy`` accumulated over the epoch; retrieval: none, its top-k metrics are skipped
  in training as in the seed).
- ``val``: TFRS names (``factorized_top_k/top_100_categorical_accuracy``, ``binary_accuracy``)
  accumulated over the whole test split, and ``loss`` = mean of the per-batch test losses.
- ``epoch_seconds``: wall time of each epoch's training steps, validation excluded.
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np
import tensorflow as tf

from twostage.data.split import epoch_batches
from twostage.backend import History
from twostage.config import Config
from twostage.dataset import Dataset
from twostage.sampling import candidate_sampling_probability

from .tasks import SAMPLING_PROBABILITY

SEED_SHUFFLE_BUFFER = 100_000  # the seed's train.shuffle(100_000)
_LOSS_KEYS = ("loss", "regularization_loss", "total_loss")


# --- data --------------------------------------------------------------------------------------
def feature_columns(dataset: Dataset, with_sampling_probability: bool = False
                    ) -> dict[str, tf.Tensor]:
    """All rating rows as constant tensors: user_id/movie_title string, timestamp int64,
    label float32 [N] (+ candidate_sampling_probability float32 [N])."""
    columns = {"user_id": tf.constant(dataset.user_id.astype(str)),
               "timestamp": tf.constant(dataset.timestamp.astype(np.int64)),
               "movie_title": tf.constant(dataset.movie_title.astype(str)),
               "label": tf.constant(dataset.label.astype(np.float32))}
    if with_sampling_probability:
        columns[SAMPLING_PROBABILITY] = tf.constant(candidate_sampling_probability(dataset))
    return columns


def _gather(columns: dict[str, tf.Tensor]):
    def gather(rows: tf.Tensor) -> dict[str, tf.Tensor]:
        return {key: tf.gather(col, rows) for key, col in columns.items()}
    return gather


def shared_batch_rows(dataset: Dataset, config: Config, epochs: int,
                      first_epoch: int = 0) -> Iterator[np.ndarray]:
    """Rating rows of every batch of epochs first_epoch .. first_epoch + epochs - 1, in order."""
    train = dataset.split.train
    for epoch in range(first_epoch, first_epoch + epochs):
        for positions in epoch_batches(len(train), config.batch_size, seed=config.seed,
                                       epoch=epoch):
            yield train[positions]


def train_dataset(dataset: Dataset, config: Config, epochs: int, columns: dict[str, tf.Tensor],
                  first_epoch: int = 0) -> tf.data.Dataset:
    """The training stream for all ``epochs`` (see the module docstring)."""
    if config.shared_batches:
        rows = tf.data.Dataset.from_generator(
            lambda: shared_batch_rows(dataset, config, epochs, first_epoch),
            output_signature=tf.TensorSpec([None], tf.int64))
    else:
        rows = (tf.data.Dataset.from_tensor_slices(dataset.split.train)
                .shuffle(SEED_SHUFFLE_BUFFER).batch(config.batch_size))
    return rows.map(_gather(columns)).prefetch(2)


def eval_dataset(dataset: Dataset, config: Config, columns: dict[str, tf.Tensor]
                 ) -> tf.data.Dataset:
    """The test split in order, batches of eval_batch_size (the seed's test.batch(4096))."""
    return (tf.data.Dataset.from_tensor_slices(dataset.split.test)
            .batch(config.eval_batch_size).map(_gather(columns)).cache())


def validation_epochs(epochs: int, every: int) -> list[int]:
    """1-based epochs to validate after: every ``every`` epochs, and the last."""
    return sorted(set(range(every, epochs + 1, every)) | ({epochs} if epochs else set()))


# --- callbacks ---------------------------------------------------------------------------------
class HistoryCallback(tf.keras.callbacks.Callback):
    """Collects per-step losses into a History; raises FloatingPointError (naming epoch and step)
    as soon as the loss or any weight is non-finite."""

    def __init__(self, stage: str, skip_train_metrics: tuple[str, ...] = ()):
        super().__init__()
        self.stage = stage
        self.skip = skip_train_metrics
        self.history = History()
        self._steps: list[float] = []
        self._test_losses: list[float] = []
        self._epoch = 0
        self._finite_fn = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._steps = epoch, []
        self._start, self._test_seconds = time.perf_counter(), 0.0

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        # TF hides NaN weights behind finite losses (softmax cross-entropy maps NaN logits to
        # log B per row; BCE's clip maps a NaN probability into [eps, 1 - eps]; both measured),
        # so the weights are checked after every step as well.
        bad = [] if not math.isfinite(loss) or self._weights_finite() else [
            v.name for v in self.model.trainable_variables
            if not bool(tf.reduce_all(tf.math.is_finite(v)))]
        if not math.isfinite(loss) or bad:
            what = f"loss is {loss}" if not bad else f"weights became non-finite ({bad[:3]})"
            raise FloatingPointError(
                f"{self.stage} training {what} at epoch {self._epoch + 1}, step {batch + 1}: "
                f"training diverged. Lower the learning rate, or check the inputs (a title "
                f"with no token is NaN with empty_title='nan').")
        self._steps.append(loss)

    def _weights_finite(self) -> bool:
        if self._finite_fn is None:  # one compiled reduction: ~1 ms per step on ml-100k sizes
            variables = self.model.trainable_variables
            self._finite_fn = tf.function(lambda: tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(v)) for v in variables]))
        return bool(self._finite_fn())

    def on_test_begin(self, logs=None):
        self._test_start, self._test_losses = time.perf_counter(), []

    def on_test_batch_end(self, batch, logs=None):
        self._test_losses.append(float(logs["loss"]))

    def on_test_end(self, logs=None):
        self._test_seconds += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        h = self.history
        h.epoch_seconds.append(time.perf_counter() - self._start - self._test_seconds)
        h.loss.append(float(np.mean(self._steps)) if self._steps else float("nan"))
        for key, value in logs.items():
            if key.startswith("val_"):
                name = key[4:]
                if name in _LOSS_KEYS[1:]:
                    continue
                if name == "loss":
                    value = float(np.mean(self._test_losses))
                h.val.setdefault(name, []).append((epoch + 1, float(value)))
            elif key not in _LOSS_KEYS and not key.startswith(self.skip):
                h.metrics.setdefault(key, []).append(float(value))


class ProgressCallback(tf.keras.callbacks.Callback):
    """tqdm bar over epochs with the mean step loss and the latest validation metric."""

    def __init__(self, stage: str, epochs: int, history: History, watch: str):
        super().__init__()
        from tqdm.auto import tqdm
        self.bar = tqdm(total=epochs, desc=f"tfrs {stage}", unit="epoch", leave=False)
        self.history, self.watch = history, watch

    def on_epoch_end(self, epoch, logs=None):
        postfix = {"loss": f"{self.history.loss[-1]:.4g}"}
        if self.history.val.get(self.watch):
            postfix[self.watch.split("/")[-1]] = f"{self.history.val[self.watch][-1][1]:.4f}"
        self.bar.set_postfix(postfix)
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


# --- fit ---------------------------------------------------------------------------------------
def compile_model(model, config: Config) -> None:
    """Adagrad(learning_rate) with Keras' defaults spelled out from the config; compiled once, so
    a second fit continues with the same accumulators."""
    if getattr(model, "optimizer", None) is not None:
        return
    model.compile(optimizer=tf.keras.optimizers.Adagrad(
        learning_rate=config.learning_rate,
        initial_accumulator_value=config.initial_accumulator_value,
        epsilon=config.adagrad_epsilon))


def _fit(model, dataset: Dataset, config: Config, epochs: int, stage: str, watch: str,
         skip_train_metrics: tuple[str, ...], with_probability: bool) -> History:
    recorder = HistoryCallback(stage, skip_train_metrics)
    if epochs == 0:
        return recorder.history
    compile_model(model, config)
    columns = feature_columns(dataset, with_probability)
    first_epoch = getattr(model, "_twostage_epochs_done", 0)
    callbacks = [recorder]
    if not config.quiet:
        callbacks.append(ProgressCallback(stage, epochs, recorder.history, watch))
    steps = math.ceil(len(dataset.split.train) / config.batch_size)
    model.fit(train_dataset(dataset, config, epochs, columns, first_epoch),
              epochs=epochs, steps_per_epoch=steps if config.shared_batches else None,
              validation_data=eval_dataset(dataset, config, columns),
              validation_freq=validation_epochs(epochs, config.validation_freq),
              callbacks=callbacks, verbose=0)
    # A later fit continues the shared batch schedule where this one stopped.
    model._twostage_epochs_done = first_epoch + epochs
    return recorder.history


def fit_retrieval(model, dataset: Dataset, config: Config, epochs: int | None = None) -> History:
    """Train a MovielensRetrievalModel (with corpus metrics attached) on the training split."""
    epochs = config.retrieval_epochs if epochs is None else epochs
    watch = f"factorized_top_k/top_{max(config.top_ks)}_categorical_accuracy"
    return _fit(model, dataset, config, epochs, "retrieval", watch, ("factorized_top_k",),
                config.use_sampling_probability)


def fit_ranking(model, dataset: Dataset, config: Config, epochs: int | None = None) -> History:
    """Train a MovielensRankingModel on ``label`` (rating >= threshold)."""
    epochs = config.ranking_epochs if epochs is None else epochs
    return _fit(model, dataset, config, epochs, "ranking", "binary_accuracy", (), False)
