"""TFRS tasks (losses + metrics) as the seed configures them; the twin of torch_impl/tasks.py.

Retrieval (``tfrs.tasks.Retrieval``, tensorflow_recommenders/tasks/retrieval.py): logits
``q @ c.T`` [B, B]; then ``/ temperature``; then ``- log(clip(p, 1e-6, 1))`` per column (logQ);
then accidental hits (same title as the row's positive, off the diagonal) get ``MIN_FLOAT``;
then hard-negative mining keeps the positive + the top-n negatives; loss =
CategoricalCrossentropy(from_logits, reduction=SUM) against the identity: a SUM over the batch.
The in-training top-k metric is ``tfrs.metrics.FactorizedTopK`` over the corpus
(:func:`attach_corpus_metrics`), updated only when not training, as the seed.

Ranking (``tfrs.tasks.Ranking``): BinaryCrossentropy, batch mean. The labels are [B] and the
predictions [B, 1], so Keras squeezes the predictions first and ``_get_logits`` sees a Squeeze op,
not the Sigmoid: the loss uses the clipped probabilities (eps 1e-7), not the logits (analysed in
torch_impl/tasks.py ``Ranking``; checked in tfrs_impl/tests/test_models.py). That is
``config.task.ranking_loss="keras_graph"``, the only mode this backend supports.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from twostage.config import Config, TaskConfig, section_of
from twostage.recipes import NEGATIVE_PROBABILITY, NEGATIVE_TITLES
from twostage.sampling import SAMPLING_PROBABILITY

CORPUS_BATCH = 128  # the seed's movies.batch(128) for FactorizedTopK


def make_retrieval_task(config: Config | TaskConfig) -> tfrs.tasks.Retrieval:
    """Retrieval with the task section's options passed through (None/False = TFRS defaults;
    a whole Config is accepted). With ``learn_temperature`` the task has no fixed temperature:
    the model's LearnedTemperature scales the queries (:func:`scaled_queries`). TypeError for
    anything else."""
    task = section_of(config, TaskConfig, "make_retrieval_task")
    fixed = None if task.learn_temperature else task.temperature
    return tfrs.tasks.Retrieval(temperature=fixed, num_hard_negatives=task.num_hard_negatives,
                                remove_accidental_hits=task.remove_accidental_hits)


def make_ranking_task(config: Config | None = None) -> tfrs.tasks.Ranking:
    """The seed's Ranking task: BCE on [B, 1] probabilities (``ranking_loss="keras_graph"``)
    with BinaryAccuracy.

    With ``config.distributed.nproc > 1`` (MirroredStrategy) the loss may also run in a replica
    context: tf_keras refuses an AUTO-reduced loss there (losses.py ``_get_reduction``, lines
    197-216) unless ``_allow_sum_over_batch_size`` is set, as ``Model.compile`` sets it for its
    own losses (compile_utils.py line 371). It is set here, so each replica's loss is the mean
    BCE of its slice, the same arithmetic as one process (unscaled: see tfrs_impl/distributed.py).
    """
    loss = tf.keras.losses.BinaryCrossentropy()
    if config is not None and config.distributed.nproc > 1:
        loss._allow_sum_over_batch_size = True
    return tfrs.tasks.Ranking(loss=loss, metrics=[tf.keras.metrics.BinaryAccuracy()])


def attach_corpus_metrics(model, corpus_titles: np.ndarray, ks=None) -> None:
    """Give ``model.task`` FactorizedTopK over ``corpus_titles`` [M] (u.item order, duplicates
    kept), the seed's ``movies.batch(128).map(candidate_model)``: candidate embeddings are
    recomputed with the current weights at every evaluation batch (TFRS Streaming index)."""
    ks = tuple(model.config.eval.top_ks if ks is None else ks)
    titles = tf.data.Dataset.from_tensor_slices(tf.constant([str(t) for t in corpus_titles]))
    model.task.factorized_metrics = [tfrs.metrics.FactorizedTopK(
        candidates=titles.batch(CORPUS_BATCH).map(model.candidate_model), ks=ks)]


def scaled_queries(model, query_embeddings: tf.Tensor) -> tf.Tensor:
    """``q / T`` with the model's learned temperature (``model.temperature``, when
    ``config.task.learn_temperature``), else ``q`` (twin of torch_impl.tasks.scaled_queries)."""
    temperature = getattr(model, "temperature", None)
    return query_embeddings if temperature is None else query_embeddings / temperature.value()


def retrieval_loss(task: tfrs.tasks.Retrieval, config: Config, query_embeddings: tf.Tensor,
                   candidate_embeddings: tf.Tensor, features: Mapping, training: bool,
                   candidate_model=None) -> tf.Tensor:
    """Scalar batch loss of [B, D] query and candidate embeddings (``sample_weight`` [B] from
    the batch when present); updates factorized metrics when not training (score-based: with
    ``remove_accidental_hits`` TFRS would match ids against an id-less index instead). A batch
    with mixed negatives (``negative_titles``) scores them too (:func:`mixed_negatives`, which
    needs ``candidate_model``); the metrics then see the in-batch candidates only."""
    use_probability = config.task.use_sampling_probability
    probability = features.get(SAMPLING_PROBABILITY) if use_probability else None
    if use_probability and probability is None:
        raise KeyError(f"use_sampling_probability is set but the batch has no "
                       f"'{SAMPLING_PROBABILITY}' (see twostage.sampling)")
    ids = features["movie_title"] if config.task.remove_accidental_hits else None
    candidates, mask = candidate_embeddings, None
    if NEGATIVE_TITLES in features:
        candidates, probability, ids, mask = mixed_negatives(
            candidate_model, features, candidate_embeddings, probability, ids)
    loss = task(query_embeddings, candidates,
                sample_weight=features.get("sample_weight"),
                candidate_sampling_probability=probability, candidate_ids=ids,
                compute_metrics=(not training) and ids is None and mask is None,
                score_mask=mask)
    if not training and (ids is not None or mask is not None):
        for metric in task.factorized_metrics:
            metric.update_state(query_embeddings, candidate_embeddings)
    return loss


def mixed_negatives(candidate_model, features: Mapping, candidates: tf.Tensor,
                    probability: tf.Tensor | None, ids: tf.Tensor | None):
    """Append the batch's sampled negatives (``twostage.recipes``; Yang et al. 2020) to the B
    in-batch candidates -> (candidates [B + N, D], sampling probabilities [B + N] (the in-batch
    ones, or 1 = no correction without logQ, then the sampled titles' 1 / V), candidate ids
    [B + N] or None, score mask [B, B + N]: False where a sampled title is the row's positive).
    Twin of torch_impl.tasks.mixed_negatives; TFRS's Retrieval takes the extra columns as
    negatives of every row (its labels are eye(B, B + N))."""
    if candidate_model is None:
        raise ValueError("mixed negatives need the candidate model to embed the sampled titles")
    titles = features[NEGATIVE_TITLES]
    extra = candidate_model(titles)
    b = tf.shape(candidates)[0]
    in_batch = tf.ones([b], tf.float32) if probability is None else tf.reshape(probability, [-1])
    probability = tf.concat([in_batch, tf.reshape(features[NEGATIVE_PROBABILITY], [-1])], 0)
    if ids is not None:
        ids = tf.concat([ids, titles], 0)
    hits = tf.equal(tf.expand_dims(features["movie_title"], 1), tf.expand_dims(titles, 0))
    mask = tf.concat([tf.ones([b, b], tf.bool), tf.logical_not(hits)], 1)
    return tf.concat([candidates, extra], 0), probability, ids, mask
