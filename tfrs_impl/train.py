"""Keras ``fit`` of the TFRS models on tf.data pipelines built from the shared split: one fit
skeleton for both stages (the twin of torch_impl/train.py).

Batches: with ``config.train.shared_batches`` epoch e (0-based, counted over all fits of the
stage: ``epochs_done``) feeds exactly ``twostage.schedule.BatchPlan(...).positions(e)``
(positions into ``dataset.split.train``), in order, one Keras fit over all epochs; otherwise the
seed's ``train.shuffle(100_000).batch(2048)`` (reshuffled every epoch by tf.data).
Validation: the test rows of ``twostage.schedule.validation_rows`` (all, or the seeded sample of
``eval_queries``) in order, batches of ``eval_batch_size``, after the epochs
``twostage.schedule.validation_epochs`` names (every ``validation_freq`` and the last).

History semantics (``twostage.backend.History``):
- ``loss[e]``: mean of the per-step training losses of epoch e. (The "loss" Keras logs for a TFRS
  model is the LAST batch's loss, since ``train_step`` returns the raw batch loss.)
- ``loss_per_example[e]``: ``twostage.backend.per_example`` of the epoch's step losses and batch
  sizes; ``val["loss_per_example"]`` likewise over the test batches, beside ``val["loss"]``.
- ``metrics``: per-epoch training metrics that the model updates while training (ranking:
  ``binary_accuracy`` accumulated over the epoch; retrieval: none, its top-k metrics are skipped
  in training as in the seed).
- ``val``: TFRS names (``factorized_top_k/top_100_categorical_accuracy``, ``binary_accuracy``)
  accumulated over the whole test split, and ``loss`` = mean of the per-batch test losses.
- ``epoch_seconds``: wall time of each epoch's training steps, validation excluded.

Under a MirroredStrategy (``strategy``, ``config.distributed.nproc > 1``; tfrs_impl/distributed.py
states the semantics): the training stream is distributed so that replica r trains on the r-th
``np.array_split`` slice of every global batch of the shared order (with ``--no-shared-batches``
Keras splits the seed's shuffled batches itself); a step's loss is what Keras reports, the SUM
of the replicas' losses (retrieval: the replicas' in-batch SUM losses; ranking: the replicas'
mean BCEs, so N replicas report about N times the single-process mean; the per-example losses
divide that back, see HistoryCallback). Validation runs under the strategy too, as Keras fit
runs it, splitting each test batch over the replicas: the top-k and accuracy metrics are exact
over the whole test split (their states are summed over the replicas), the validation loss is
the same sum of the replicas' losses (retrieval: each replica's queries against its own
candidates, fewer negatives than one process's; torch_impl validates with one process's figures
instead).
"""
from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from twostage.backend import EpochCallback, History, RawBatch, check_stage, per_example
from twostage.config import Config
from twostage.dataset import Dataset
from twostage.recipes import RecipeData, attach_recipe_data, epoch_negatives, query_columns
from twostage.schedule import BatchPlan, validation_epochs, validation_rows

from . import distributed, optim
from .features import Batch, NegativeColumns, feature_columns, select_rows, to_tensors
from .models import named_variables

SEED_SHUFFLE_BUFFER = 100_000  # the seed's train.shuffle(100_000)
_LOSS_KEYS = ("loss", "regularization_loss", "total_loss")


# --- data --------------------------------------------------------------------------------------
def batch_plan(dataset: Dataset, config: Config) -> BatchPlan:
    """The shared batch order of ``dataset``'s training split."""
    return BatchPlan(dataset.split.train, config.train.batch_size, config.seed)


def batch_sizes(num_examples: int, batch_size: int) -> list[int]:
    """Sizes of the batches of one pass over ``num_examples`` (the last may be smaller)."""
    return [min(batch_size, num_examples - i) for i in range(0, num_examples, batch_size)]


def train_dataset(dataset: Dataset, config: Config, epochs: int, columns: Batch,
                  first_epoch: int = 0, replicas: int = 1, negatives: int = 0
                  ) -> tf.data.Dataset:
    """The training stream for all ``epochs`` (see the module docstring). ``replicas`` > 1
    (shared batches only): every global batch is followed by its slices instead, replica 0's
    first (``distributed.split_batch``), the per-replica stream of ``distributed.distribute``.
    ``negatives`` > 0: each batch carries that many mixed negatives (the retrieval stage of
    ``config.task.mixed_negatives``; :func:`_with_negatives`)."""
    n = negatives
    if n and replicas > 1:
        raise ValueError("mixed negatives run on one replica (TfrsBackend.check_config)")
    if config.train.shared_batches:
        plan = batch_plan(dataset, config)
        if n:
            return _with_negatives(plan, dataset, columns, n, first_epoch, epochs)
        rows = tf.data.Dataset.from_generator(
            lambda: plan.rows(first_epoch, epochs),
            output_signature=tf.TensorSpec([None], tf.int64))
        if replicas > 1:
            rows = rows.flat_map(lambda r: distributed.split_batch(r, replicas))
    else:
        if replicas > 1:
            raise ValueError("the seed's shuffled batches are split by Keras itself; pass "
                             "replicas=1 (fit does)")
        rows = (tf.data.Dataset.from_tensor_slices(dataset.split.train)
                .shuffle(SEED_SHUFFLE_BUFFER).batch(config.train.batch_size))
        if n:
            negatives = NegativeColumns(dataset.spec, n)
            return rows.map(lambda r: {**select_rows(columns, r),
                                       **negatives.sampled_in_graph()}).prefetch(2)
    return rows.map(lambda r: select_rows(columns, r)).prefetch(2)


def _with_negatives(plan: BatchPlan, dataset: Dataset, columns: Batch, n: int,
                    first_epoch: int, epochs: int) -> tf.data.Dataset:
    """The shared batches, each with the mixed negatives ``twostage.recipes.epoch_negatives``
    draws for its (epoch, step): the ids the torch backend trains on."""
    num_titles = len(dataset.spec.title_vocab)

    def rows_and_ids():
        for epoch in range(first_epoch, first_epoch + epochs):
            batches = plan.positions(epoch)
            ids = epoch_negatives(num_titles, n, plan.seed, epoch, len(batches))
            for step, positions in enumerate(batches):
                yield plan.train[positions], ids[step]

    negatives = NegativeColumns(dataset.spec, n)
    pairs = tf.data.Dataset.from_generator(
        rows_and_ids, output_signature=(tf.TensorSpec([None], tf.int64),
                                        tf.TensorSpec([n], tf.int64)))
    return pairs.map(lambda r, ids: {**select_rows(columns, r), **negatives(ids)}).prefetch(2)


def training_input(dataset: Dataset, config: Config, epochs: int, columns: Batch,
                   first_epoch: int = 0, strategy=None, negatives: int = 0):
    """What fit trains on: :func:`train_dataset`, distributed over ``strategy``'s replicas in
    the shared order (``distributed.distribute``) when there is a strategy and shared batches;
    the seed's shuffled batches are handed to Keras, which splits each over the replicas."""
    n = distributed.num_replicas(strategy)
    if n == 1 or not config.train.shared_batches:
        return train_dataset(dataset, config, epochs, columns, first_epoch,
                             negatives=negatives)
    return distributed.distribute(strategy, lambda: train_dataset(
        dataset, config, epochs, columns, first_epoch, replicas=n))


def eval_dataset(dataset: Dataset, config: Config, columns: Batch) -> tf.data.Dataset:
    """The validation rows (all of the test split unless ``eval_queries``) in order, batches
    of eval_batch_size (the seed's test.batch(4096))."""
    return (tf.data.Dataset.from_tensor_slices(validation_rows(dataset.split.test, config))
            .batch(config.eval.eval_batch_size).map(lambda r: select_rows(columns, r)).cache())


# --- callbacks ---------------------------------------------------------------------------------
class HistoryCallback(tf.keras.callbacks.Callback):
    """Collects per-step losses into a History; raises FloatingPointError (naming epoch and step)
    as soon as the loss or any weight is non-finite. After every epoch (after its validation)
    it counts the epoch in ``epochs_done[stage]`` and calls ``on_epoch(stage, epoch, history)``.

    ``train_sizes`` / ``test_sizes``: the batch sizes of one epoch / of the test pass, for the
    per-example losses (an empty sequence leaves those out). ``replicas``: MirroredStrategy
    replicas, whose losses Keras sums per step: a ranking step then reports the sum of the
    replicas' mean BCEs, so its per-example loss is ``loss / replicas`` per example of the batch
    (exact when the batch splits into equal slices, as every full batch does; the last, partial
    batch of an epoch may differ by one row between slices)."""

    def __init__(self, stage: str, skip_train_metrics: tuple[str, ...] = (), *,
                 train_sizes: Sequence[int] = (), test_sizes: Sequence[int] = (),
                 epochs_done: dict[str, int] | None = None, on_epoch: EpochCallback | None = None,
                 replicas: int = 1):
        super().__init__()
        self.stage = stage
        self.replicas = replicas
        self.skip = skip_train_metrics
        self.train_sizes, self.test_sizes = list(train_sizes), list(test_sizes)
        self.epochs_done, self.on_epoch = epochs_done, on_epoch
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

    def _per_example(self, losses: list[float], sizes: list[int]) -> float | None:
        if not sizes or not losses:
            return None
        if self.stage == "ranking" and self.replicas > 1:  # a sum of the replicas' means
            losses = [loss / self.replicas for loss in losses]
        return per_example(self.stage, losses, sizes[:len(losses)])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        h = self.history
        h.epoch_seconds.append(time.perf_counter() - self._start - self._test_seconds)
        h.loss.append(float(np.mean(self._steps)) if self._steps else float("nan"))
        train_pe = self._per_example(self._steps, self.train_sizes)
        if train_pe is not None:
            h.loss_per_example.append(train_pe)
        for key, value in logs.items():
            if key.startswith("val_"):
                name = key[4:]
                if name in _LOSS_KEYS[1:]:
                    continue
                if name == "loss":
                    value = float(np.mean(self._test_losses))
                    val_pe = self._per_example(self._test_losses, self.test_sizes)
                    if val_pe is not None:
                        h.val.setdefault("loss_per_example", []).append((epoch + 1, val_pe))
                h.val.setdefault(name, []).append((epoch + 1, float(value)))
            elif key not in _LOSS_KEYS and not key.startswith(self.skip):
                h.metrics.setdefault(key, []).append(float(value))
        if self.epochs_done is not None:
            self.epochs_done[self.stage] = self.epochs_done.get(self.stage, 0) + 1
        if self.on_epoch is not None:
            self.on_epoch(self.stage, epoch + 1, h)


class ProgressCallback(tf.keras.callbacks.Callback):
    """ONE tqdm bar per stage over all steps of the fit, showing the epoch, the step and the
    loss: the step loss Keras already logged (no extra device read), then the epoch's mean and
    the latest validation value of ``watch`` at the end of each epoch."""

    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, history: History,
                 watch: str):
        super().__init__()
        from tqdm.auto import tqdm
        self.bar = tqdm(total=epochs * steps_per_epoch, desc=f"tfrs {stage}", unit="step",
                        leave=False)
        self.epochs, self.history, self.watch = epochs, history, watch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.bar.set_postfix({"epoch": f"{self._epoch + 1}/{self.epochs}", "step": batch + 1,
                              "loss": f"{float(logs['loss']):.4g}"}, refresh=False)
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        postfix = {"epoch": f"{epoch + 1}/{self.epochs}", "loss": f"{self.history.loss[-1]:.4g}"}
        if self.history.val.get(self.watch):
            postfix[self.watch.split("/")[-1]] = f"{self.history.val[self.watch][-1][1]:.4f}"
        self.bar.set_postfix(postfix)

    def on_train_end(self, logs=None):
        self.bar.close()


# --- fit ---------------------------------------------------------------------------------------
def compile_model(model, config: Config, optimizer: optim.Adagrad | None = None
                  ) -> optim.Adagrad:
    """Compile ``model`` once with ``optimizer`` (default: ``optim.make_optimizer(config)``) and
    return its optimizer; a compiled model keeps it, so a later fit continues its accumulators."""
    if getattr(model, "optimizer", None) is None:
        model.compile(optimizer=optimizer or optim.make_optimizer(config))
    elif optimizer is not None and model.optimizer is not optimizer:
        raise ValueError(f"{type(model).__name__} is compiled with another optimizer; one "
                         "optimizer per model (its accumulators are the training state)")
    return model.optimizer


def _watch(stage: str, config: Config) -> str:
    """The validation metric the progress bar shows."""
    return (f"factorized_top_k/top_{max(config.eval.top_ks)}_categorical_accuracy"
            if stage == "retrieval" else "binary_accuracy")


def fit_stage(stage: str, model, dataset: Dataset, config: Config, epochs: int | None = None,
              *, epochs_done: dict[str, int] | None = None,
              on_epoch: EpochCallback | None = None, parallel=None,
              recipe: RecipeData | None = None, optimizer: optim.Adagrad | None = None,
              validate: bool = True) -> History:
    """Train a stage's model (retrieval: a MovielensRetrievalModel with corpus metrics attached;
    ranking: a MovielensRankingModel on ``label``) on the training split; validate on the test
    split. ``epochs_done[stage]`` (counted up per epoch) is where the shared batch order
    resumes; ``on_epoch`` is called after every epoch, after its validation. ``parallel``: the
    MirroredStrategy the model was built in (nproc > 1), or None. ``recipe``: the retrieval
    towers' genre / history lookups (default: ``RecipeData.from_dataset(dataset, config)``),
    attached to the model; its query columns (histories, user features) become columns of every
    batch. ``optimizer``: the one the model is compiled with on its first fit (default
    ``optim.make_optimizer``); ``validate=False`` skips validation."""
    strategy = parallel
    check_stage(stage)
    default = config.train.retrieval_epochs if stage == "retrieval" else config.train.ranking_epochs
    epochs = default if epochs is None else epochs
    retrieval = stage == "retrieval"
    train_rows = len(dataset.split.train)
    test_rows = len(validation_rows(dataset.split.test, config))
    recorder = HistoryCallback(
        stage, ("factorized_top_k",) if retrieval else (),
        train_sizes=batch_sizes(train_rows, config.train.batch_size),
        test_sizes=batch_sizes(test_rows, config.eval.eval_batch_size),
        epochs_done=epochs_done, on_epoch=on_epoch, replicas=distributed.num_replicas(strategy))
    if epochs == 0:
        return recorder.history
    with distributed.scope(strategy):
        compile_model(model, config, optimizer)
    extras = None
    if retrieval:
        recipe = recipe if recipe is not None else RecipeData.from_dataset(dataset, config)
        attach_recipe_data(model, recipe)
        extras = query_columns(recipe, dataset, config)
    columns = feature_columns(dataset, retrieval and config.task.use_sampling_probability,
                              extras)
    first_epoch = (epochs_done or {}).get(stage, 0)
    steps = math.ceil(train_rows / config.train.batch_size)
    callbacks = [recorder]
    if not config.output.quiet:
        callbacks.append(ProgressCallback(stage, epochs, steps, recorder.history,
                                          _watch(stage, config)))
    negatives = config.task.mixed_negatives if retrieval else 0
    model.fit(training_input(dataset, config, epochs, columns, first_epoch, strategy, negatives),
              epochs=epochs, steps_per_epoch=steps if config.train.shared_batches else None,
              validation_data=eval_dataset(dataset, config, columns) if validate else None,
              validation_freq=validation_epochs(epochs, config.train.validation_freq),
              callbacks=callbacks, verbose=0)
    return recorder.history


def fit_retrieval(model, dataset: Dataset, config: Config, epochs: int | None = None, *,
                  epochs_done: dict[str, int] | None = None,
                  on_epoch: EpochCallback | None = None, parallel=None,
                  recipe: RecipeData | None = None, optimizer: optim.Adagrad | None = None,
                  validate: bool = True) -> History:
    """:func:`fit_stage` of the retrieval stage (the twin of ``torch_impl.train
    .fit_retrieval``, same arguments but torch's ``task``: a TFRS model holds its task)."""
    return fit_stage("retrieval", model, dataset, config, epochs, epochs_done=epochs_done,
                     on_epoch=on_epoch, parallel=parallel, recipe=recipe, optimizer=optimizer,
                     validate=validate)


def fit_ranking(model, dataset: Dataset, config: Config, epochs: int | None = None, *,
                epochs_done: dict[str, int] | None = None,
                on_epoch: EpochCallback | None = None, parallel=None,
                optimizer: optim.Adagrad | None = None, validate: bool = True) -> History:
    """:func:`fit_stage` of the ranking stage (the twin of ``torch_impl.train.fit_ranking``)."""
    return fit_stage("ranking", model, dataset, config, epochs, epochs_done=epochs_done,
                     on_epoch=on_epoch, parallel=parallel, optimizer=optimizer,
                     validate=validate)


def _tensor_dataset(raw_batches: Sequence[RawBatch]) -> tf.data.Dataset:
    """One element per raw batch, in order."""
    data = tf.data.Dataset.from_tensors(to_tensors(raw_batches[0]))
    for batch in raw_batches[1:]:
        data = data.concatenate(tf.data.Dataset.from_tensors(to_tensors(batch)))
    return data


def train_steps(model, config: Config, raw_batches: Sequence[RawBatch], strategy=None
                ) -> list[float]:
    """``model.fit`` over exactly ``raw_batches``, one optimizer step each (tfrs.models.Model
    .train_step + the model's Keras Adagrad, traced as in training) -> the per-step losses its
    train_step reports. Retrieval batches need ``candidate_sampling_probability`` when the
    config uses it. ``strategy`` (nproc > 1): each raw batch is a global batch, replica r steps
    on its r-th ``np.array_split`` slice, and the loss is Keras' sum over the replicas."""
    with distributed.scope(strategy):
        compile_model(model, config)
    if not raw_batches:
        return []
    n = distributed.num_replicas(strategy)
    if n == 1:
        data = _tensor_dataset(raw_batches)
    else:
        slices = distributed.split_raw_batches(raw_batches, n)
        data = distributed.distribute(strategy, lambda: _tensor_dataset(slices))
    losses: list[float] = []
    record = tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda step, logs: losses.append(float(logs["loss"])))
    model.fit(data, epochs=1, steps_per_epoch=len(raw_batches) if n > 1 else None, verbose=0,
              callbacks=[record])
    return losses


# --- one batch: loss and gradients (parity, export checks) ------------------------------------
def _on_one_replica(strategy, fn, *args):
    """``fn(*args)`` as one process computes it; with a strategy, in a replica context (where
    the models' mirrored metrics can update: tf.distribute refuses SyncOnRead ``assign_add`` in
    the cross-replica context) with every replica given the whole batch: replica 0's result."""
    if strategy is None:
        return fn(*args)
    logger = tf.get_logger()  # "Using MirroredStrategy eagerly has significant overhead": a
    level = logger.level      # parity helper, one batch, not a training loop
    logger.setLevel("ERROR")
    try:
        out = strategy.run(fn, args=args)
    finally:
        logger.setLevel(level)
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], out)


def batch_loss(model, batch: Mapping[str, np.ndarray], training: bool = True,
               strategy=None) -> float:
    """``model.compute_loss`` of one raw batch (no regularization losses exist in these
    models): the single-process loss of the whole batch, also with a ``strategy``."""
    loss = _on_one_replica(strategy, lambda f: model.compute_loss(f, training=training),
                           to_tensors(batch))
    return float(loss.numpy())


def loss_and_gradients(model, batch: Mapping[str, np.ndarray], strategy=None
                       ) -> tuple[float, dict[str, np.ndarray]]:
    """(loss, {weight name: dense gradient}) of one training step's loss, via tf.GradientTape,
    exactly what ``tfrs.models.Model.train_step`` differentiates (embedding gradients, which
    TF returns as IndexedSlices, are densified and summed over repeated rows). With a
    ``strategy``: the single-process loss and gradient of the whole batch (one replica's)."""
    variables = named_variables(model)

    def compute(features):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(features, training=True)
        grads = tape.gradient(loss, list(variables.values()))
        return loss, [tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
                      for v, g in zip(variables.values(), grads)]

    loss, grads = _on_one_replica(strategy, compute, to_tensors(batch))
    return float(loss.numpy()), {name: g.numpy() for name, g in zip(variables, grads)}
