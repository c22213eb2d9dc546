"""A schema's two towers and ranking model in TFRS / Keras, trained on a
:class:`twostage.data.schema_data.SchemaDataset` (the twin of ``torch_impl/owndata.py``).

The towers are the seed's, built from the schema's slots: each tower concatenates its slots
(``features.SlotConcat``) and applies the seed's tower MLP (``models.dense_stack``); the ranking
model concatenates both towers' slots and applies the seed's ranking MLP with a sigmoid. Losses
are the seed's tasks (``tfrs.tasks.Retrieval`` in-batch softmax, ``tfrs.tasks.Ranking`` BCE),
the optimizer Keras' Adagrad, the batches ``twostage.schedule.BatchPlan``'s (the order the
torch twin trains in), fed to Keras ``fit`` as ``tfrs_impl/train.py`` feeds the seed's models.

Weight names (both twins; Keras layout, kernels [in, out]; mapped explicitly, never from Keras'
automatic layer names): ``{tower}/{feature}/embeddings``, ``{tower}/dense/{i}/kernel`` and
``/bias`` for tower in (query, candidate); ``ranking/{tower}/{feature}/embeddings`` and
``ranking/dense/{i}/kernel`` / ``/bias``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from twostage.backend import EpochCallback, History, check_stage
from twostage.config import Config
from twostage.data.schema_data import SchemaDataset, Slot
from twostage.owndata import TrainerBase
from twostage.schedule import BatchPlan

from . import train as fitting
from .backend import TfrsBackend
from .features import Batch, SlotConcat, encoded_tensors, select_rows
from .models import assign_by_name, dense_stack, seeded
from .tasks import make_ranking_task, make_retrieval_task

keras = tf.keras
Variables = dict[str, tf.Variable]
# HistoryCallback skips the training metrics whose names start with one of these: "" skips
# them all, as the torch twin records none (Keras would log the ranking's binary_accuracy).
NO_TRAINING_METRICS = ("",)


class Tower(keras.Model):
    """slots -> SlotConcat -> the seed's tower MLP -> [B, layer_sizes[-1]]."""

    def __init__(self, slots: tuple[Slot, ...], dim: int, layer_sizes, **kwargs):
        super().__init__(**kwargs)
        self.features = SlotConcat(slots, dim)
        self.dense = dense_stack(layer_sizes)

    def call(self, batch: Batch) -> tf.Tensor:
        return self.dense(self.features(batch))

    def weight_variables(self, prefix: str) -> Variables:
        """{``{prefix}{feature}/embeddings``, ``{prefix}dense/{i}/kernel|bias``: variable}."""
        return {**slot_variables(self.features, prefix),
                **dense_variables(self.dense, f"{prefix}dense")}


class RetrievalModel(tfrs.models.Model):
    """The two towers + ``tfrs.tasks.Retrieval`` (in-batch softmax, SUM over the batch); with
    ``remove_accidental_hits`` the candidate ids are the batch's ``item_index``."""

    def __init__(self, data: SchemaDataset, config: Config, **kwargs):
        super().__init__(**kwargs)
        m = config.model
        self.query = Tower(data.query_slots, m.embedding_dim, m.layer_sizes)
        self.candidate = Tower(data.candidate_slots, m.embedding_dim, m.layer_sizes)
        self.task = make_retrieval_task(config.task)
        self.remove_accidental_hits = config.task.remove_accidental_hits

    def compute_loss(self, features: Batch, training: bool = False) -> tf.Tensor:
        ids = features["item_index"] if self.remove_accidental_hits else None
        return self.task(self.query(features), self.candidate(features), candidate_ids=ids,
                         compute_metrics=not training)

    def weight_variables(self) -> Variables:
        return {**self.query.weight_variables("query/"),
                **self.candidate.weight_variables("candidate/")}


class RankingModel(tfrs.models.Model):
    """concat[query slots, candidate slots] -> Dense(ranking sizes, relu) -> Dense(1, sigmoid)
    -> [B, 1] probabilities; loss ``tfrs.tasks.Ranking`` (BCE) on the batch's ``label``."""

    def __init__(self, data: SchemaDataset, config: Config, **kwargs):
        super().__init__(**kwargs)
        dim, sizes = config.model.embedding_dim, tuple(config.model.ranking_layer_sizes)
        self.query = SlotConcat(data.query_slots, dim)
        self.candidate = SlotConcat(data.candidate_slots, dim)
        self.dense = keras.Sequential(
            [keras.layers.Dense(size, activation="relu") for size in sizes]
            + [keras.layers.Dense(1, activation="sigmoid")], name="ranking_dense")
        self.task = make_ranking_task(config)

    def call(self, batch: Batch) -> tf.Tensor:
        return self.dense(tf.concat([self.query(batch), self.candidate(batch)], axis=1))

    def compute_loss(self, features: Batch, training: bool = False) -> tf.Tensor:
        return self.task(labels=features["label"], predictions=self(features))

    def weight_variables(self) -> Variables:
        return {**slot_variables(self.query, "ranking/query/"),
                **slot_variables(self.candidate, "ranking/candidate/"),
                **dense_variables(self.dense, "ranking/dense")}


# --- weights by canonical name ------------------------------------------------------------------
def slot_variables(concat: SlotConcat, prefix: str) -> Variables:
    """{``{prefix}{feature}/embeddings``: the embedding table of each slot that has one}."""
    return {f"{prefix}{slot.name}/embeddings": layer.embedding.embeddings
            for slot, layer in zip(concat.slots, concat.inputs) if layer.embedding is not None}


def dense_variables(stack: keras.Sequential, prefix: str) -> Variables:
    """{``{prefix}/{i}/kernel`` [in, out], ``{prefix}/{i}/bias`` [out]} of a stack of Dense."""
    out = {}
    for i, layer in enumerate(stack.layers):
        out.update({f"{prefix}/{i}/kernel": layer.kernel, f"{prefix}/{i}/bias": layer.bias})
    return out


def weight_variables(model: RetrievalModel | RankingModel) -> Variables:
    """{canonical name: variable} of a built schema model (module docstring).

    Raises:
        RuntimeError: a trainable variable the names miss (it would go unsaved and unchecked).
    """
    out = model.weight_variables()
    named = {id(v) for v in out.values()}
    if len(named) != len(out) or any(id(v) not in named for v in model.trainable_variables):
        raise RuntimeError(f"{type(model).__name__}: the canonical names do not cover its "
                           f"{len(model.trainable_variables)} trainable variables one to one")
    return out


def build_models(data: SchemaDataset, config: Config) -> dict[str, tfrs.models.Model]:
    """Both stages' models with every variable created (init seeded by ``config.seed``;
    ranking ``config.seed + 1``, so it does not start from the towers' draws)."""
    sample = encoded_tensors(data.examples(np.zeros(1, np.int64)))
    with seeded(config.seed):
        retrieval = RetrievalModel(data, config)
        retrieval.query(sample)
        retrieval.candidate(sample)
    with seeded(config.seed + 1):
        ranking = RankingModel(data, config)
        ranking(sample)
    return {"retrieval": retrieval, "ranking": ranking}


def training_stream(columns: Batch, plan: BatchPlan, config: Config, first_epoch: int,
                    epochs: int) -> tf.data.Dataset:
    """The batches of ``columns`` (the training examples, by position) for ``epochs`` epochs
    from absolute epoch ``first_epoch``: ``plan.positions(e)`` in order with
    ``config.train.shared_batches``, else the seed's ``shuffle(100_000).batch`` of one epoch
    (Keras iterates it again, reshuffled, every epoch)."""
    if config.train.shared_batches:
        def positions():
            for epoch in range(first_epoch, first_epoch + epochs):
                yield from plan.positions(epoch)
        order = tf.data.Dataset.from_generator(
            positions, output_signature=tf.TensorSpec([None], tf.int64))
    else:
        order = (tf.data.Dataset.range(len(plan.train)).shuffle(fitting.SEED_SHUFFLE_BUFFER)
                 .batch(plan.batch_size))
    return order.map(lambda p: select_rows(columns, p)).prefetch(2)


class SchemaTrainer(TrainerBase):
    """Both stages of a schema run: build, fit, embed, score, save (on the CPU, as
    ``TfrsBackend``).

    ``fit(stage, epochs)`` continues training (``epochs_done`` carries the batch order on).
    """

    name = "tfrs"

    def __init__(self, data: SchemaDataset, config: Config) -> None:
        """Build both stages' models and their Adagrads.

        Raises:
            UnsupportedOptionError: an option schema runs (``check_schema_config``) or this
                backend (``TfrsBackend.check_config``: e.g. a CUDA device) do not offer.
        """
        super().__init__(data, config)
        TfrsBackend.check_config(config)
        self.models = build_models(data, config)
        for model in self.models.values():
            fitting.compile_model(model, config)  # its Adagrad (optim.make_optimizer)
        self.optimizers = {s: m.optimizer for s, m in self.models.items()}

    # --- losses -------------------------------------------------------------------------------
    def loss(self, stage: str, batch: Batch) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(loss, outputs) of an encoded batch (``SchemaDataset.examples`` as tensors):
        retrieval the in-batch softmax SUM (outputs None), ranking the mean BCE and its [B, 1]
        probabilities."""
        model = self.models[check_stage(stage)]
        if stage == "retrieval":
            return model.compute_loss(batch, training=True), None
        predictions = model(batch)
        return model.task(labels=batch["label"], predictions=predictions), predictions

    def examples(self, rows: np.ndarray) -> Batch:
        """The tensors of interaction ``rows`` (``SchemaDataset.examples``)."""
        return encoded_tensors(self.data.examples(np.asarray(rows, np.int64)))

    # --- training -----------------------------------------------------------------------------
    def fit(self, stage: str, epochs: int, examples: Mapping[str, np.ndarray] | None = None,
            on_epoch: EpochCallback | None = None) -> History:
        """:meth:`twostage.owndata.TrainerBase.fit` by Keras fit (tfrs_impl.train's
        callbacks)."""
        stage = check_stage(stage)
        if examples is None:
            examples = self.data.examples(self.data.split.train)
        n, size = len(examples["label"]), self.config.train.batch_size
        recorder = fitting.HistoryCallback(
            stage, NO_TRAINING_METRICS, train_sizes=fitting.batch_sizes(n, size),
            epochs_done=self.epochs_done, on_epoch=on_epoch)  # it counts the epochs done
        if epochs == 0:
            return recorder.history
        plan = BatchPlan(np.arange(n), size, self.config.seed)
        stream = training_stream(encoded_tensors(examples), plan, self.config,
                                 self.epochs_done[stage], epochs)
        callbacks = [recorder] + ([] if self.config.output.quiet else [fitting.ProgressCallback(
            stage, epochs, plan.steps_per_epoch, recorder.history, watch="loss")])
        self.models[stage].fit(
            stream, epochs=epochs, verbose=0, callbacks=callbacks,
            steps_per_epoch=plan.steps_per_epoch if self.config.train.shared_batches else None)
        return recorder.history

    def batch_loss(self, stage: str, rows: np.ndarray) -> float:
        """The loss of one batch of interaction ``rows``, no update."""
        return float(self.loss(stage, self.examples(rows))[0])

    def loss_and_gradients(self, stage: str, rows: np.ndarray
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {weight name: dense gradient, Keras layout}) of one batch, no update
        (embedding gradients, IndexedSlices in TF, are densified: repeated rows summed)."""
        variables = weight_variables(self.models[check_stage(stage)])
        batch = self.examples(rows)
        with tf.GradientTape() as tape:
            value = self.loss(stage, batch)[0]
        grads = tape.gradient(value, list(variables.values()))
        return float(value), {name: (np.zeros(v.shape, np.float32) if g is None
                                     else tf.convert_to_tensor(g).numpy())
                              for (name, v), g in zip(variables.items(), grads)}

    # --- inference ----------------------------------------------------------------------------
    def _run(self, layer: keras.layers.Layer, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """``layer`` over ``arrays`` [N, ...] in batches of ``eval_batch_size`` -> [N, ...]."""
        size = self.config.eval.eval_batch_size
        n = len(next(iter(arrays.values())))
        return np.concatenate([
            layer(encoded_tensors({k: v[start:start + size] for k, v in arrays.items()}),
                  training=False).numpy()
            for start in range(0, n, size)])

    # --- weights ------------------------------------------------------------------------------
    def get_weights(self, stage: str) -> dict[str, np.ndarray]:
        """Every weight of ``stage`` by canonical name, Keras layout (module docstring)."""
        return {k: v.numpy().copy()
                for k, v in weight_variables(self.models[check_stage(stage)]).items()}

    def set_weights(self, stage: str, weights: Mapping[str, np.ndarray]) -> None:
        """Set every weight of ``stage`` (other names in ``weights`` are ignored).

        Raises:
            KeyError: a weight of ``stage`` that ``weights`` lacks (named).
            ValueError: a shape that does not fit (nothing is assigned then).
        """
        variables = weight_variables(self.models[check_stage(stage)])
        assign_by_name(variables, {k: weights[k] for k in variables},
                       f"weight names of the {stage} schema model")
