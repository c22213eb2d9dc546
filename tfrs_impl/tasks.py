"""TFRS tasks (losses + metrics) as the seed configures them, and batch loss/gradient helpers.

Retrieval (``tfrs.tasks.Retrieval``, tensorflow_recommenders/tasks/retrieval.py): logits
``q @ c.T`` [B, B]; then ``/ temperature``; then ``- log(clip(p, 1e-6, 1))`` per column (logQ);
then accidental hits (same title as the row's positive, off the diagonal) get ``MIN_FLOAT``;
then hard-negative mining keeps the positive + the top-n negatives; loss =
CategoricalCrossentropy(from_logits, reduction=SUM) against the identity: a SUM over the batch.

Ranking (``tfrs.tasks.Ranking``): BinaryCrossentropy, batch mean. The labels are [B] and the
predictions [B, 1], so Keras squeezes the predictions first and ``_get_logits`` sees a Squeeze op,
not the Sigmoid: the loss uses the clipped probabilities (eps 1e-7), not the logits (analysed in
torch_impl/tasks.py ``Ranking``; checked in tfrs_impl/tests/test_models.py).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from twostage.config import Config

SAMPLING_PROBABILITY = "candidate_sampling_probability"
CORPUS_BATCH = 128  # the seed's movies.batch(128) for FactorizedTopK


def make_retrieval_task(config: Config) -> tfrs.tasks.Retrieval:
    """Retrieval with the config's options passed through (None/False = TFRS defaults)."""
    return tfrs.tasks.Retrieval(temperature=config.temperature,
                                num_hard_negatives=config.num_hard_negatives,
                                remove_accidental_hits=config.remove_accidental_hits)


def make_ranking_task(config: Config | None = None) -> tfrs.tasks.Ranking:
    """The seed's Ranking task (``config`` carries no ranking option today)."""
    return tfrs.tasks.Ranking(loss=tf.keras.losses.BinaryCrossentropy(),
                              metrics=[tf.keras.metrics.BinaryAccuracy()])


def attach_corpus_metrics(model, corpus_titles: np.ndarray, ks=None) -> None:
    """Give ``model.task`` FactorizedTopK over ``corpus_titles`` [M] (u.item order, duplicates
    kept), the seed's ``movies.batch(128).map(candidate_model)``: candidate embeddings are
    recomputed with the current weights at every evaluation batch (TFRS Streaming index)."""
    ks = tuple(model.config.top_ks if ks is None else ks)
    titles = tf.data.Dataset.from_tensor_slices(tf.constant([str(t) for t in corpus_titles]))
    model.task.factorized_metrics = [tfrs.metrics.FactorizedTopK(
        candidates=titles.batch(CORPUS_BATCH).map(model.candidate_model), ks=ks)]


def retrieval_loss(task: tfrs.tasks.Retrieval, config: Config, query_embeddings: tf.Tensor,
                   candidate_embeddings: tf.Tensor, features: Mapping, training: bool
                   ) -> tf.Tensor:
    """Scalar batch loss (``sample_weight`` [B] from the batch when present); updates
    factorized metrics when not training (score-based)."""
    probability = features.get(SAMPLING_PROBABILITY) if config.use_sampling_probability else None
    if config.use_sampling_probability and probability is None:
        raise KeyError(f"use_sampling_probability is set but the batch has no "
                       f"'{SAMPLING_PROBABILITY}' (see twostage.sampling)")
    ids = features["movie_title"] if config.remove_accidental_hits else None
    loss = task(query_embeddings, candidate_embeddings,
                sample_weight=features.get("sample_weight"),
                candidate_sampling_probability=probability, candidate_ids=ids,
                compute_metrics=(not training) and ids is None)
    if not training and ids is not None:
        # TFRS would match ids against the index's ids; keep the seed's score-based metric.
        for metric in task.factorized_metrics:
            metric.update_state(query_embeddings, candidate_embeddings)
    return loss


# --- batch helpers for the parity suite -------------------------------------------------------
def to_tensors(batch: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
    """Raw numpy batch (user_id/movie_title str, timestamp int64, label/probability float32)
    -> tensors with the dtypes the models expect."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if key in ("user_id", "movie_title"):
            out[key] = tf.constant([v.decode() if isinstance(v, bytes) else str(v) for v in value])
        elif key == "timestamp":
            out[key] = tf.constant(value.astype(np.int64))
        else:
            out[key] = tf.constant(value.astype(np.float32))
    return out


def batch_loss(model, batch: Mapping[str, np.ndarray], training: bool = True) -> float:
    """``model.compute_loss`` of one raw batch (no regularization losses exist in these models)."""
    return float(model.compute_loss(to_tensors(batch), training=training).numpy())


def loss_and_gradients(model, batch: Mapping[str, np.ndarray]
                       ) -> tuple[float, dict[str, np.ndarray]]:
    """(loss, {weight name: dense gradient}) of one training step's loss, via tf.GradientTape,
    exactly what ``tfrs.models.Model.train_step`` differentiates (embedding gradients, which
    TF returns as IndexedSlices, are densified and summed over repeated rows)."""
    variables = model.named_variables()
    features = to_tensors(batch)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(features, training=True)
    grads = tape.gradient(loss, list(variables.values()))
    out = {}
    for (name, variable), grad in zip(variables.items(), grads):
        out[name] = (np.zeros(variable.shape, variable.dtype.as_numpy_dtype) if grad is None
                     else tf.convert_to_tensor(grad).numpy())
    return float(loss.numpy()), out
