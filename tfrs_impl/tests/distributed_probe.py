"""The MirroredStrategy checks that need a fresh process (logical CPU devices can be configured
only before TensorFlow initialises its devices, once per process), run by
tfrs_impl/tests/test_distributed.py as ``python -m tfrs_impl.tests.distributed_probe OUT DATA``;
every result goes to the JSON file OUT (DATA: a folder for the synthetic data).

The hand-written TF reference of one N-replica step (:func:`reference_steps`): for each replica
slice a ``tf.GradientTape`` over ``compute_loss`` of that slice alone, the gradients summed, one
Keras Adagrad ``apply_gradients`` on a model built WITHOUT any strategy; the step's loss is the
sum of the slices' losses. This is what tfrs_impl/distributed.py derives from the TFRS and Keras
sources, written out independently of MirroredStrategy.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from twostage import env

env.setup_process()

import numpy as np  # noqa: E402

from twostage.config import Config  # noqa: E402
from twostage.dataset import synthetic_dataset  # noqa: E402
from twostage.schedule import BatchPlan  # noqa: E402

NPROC = 2
STEPS = 4
# The mirrored step and the hand-written one sum the same float32 values, possibly in another
# order (measured: losses within 5e-8 relative, weights within 4e-8 absolute after 4 steps).
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-7
# Small synthetic data, global batches of 256 -> two replica slices of 128 (the last batch of an
# epoch is uneven on purpose: 2,400 training rows, 9 full batches + 96 rows).
CONFIG = Config.of(batch_size=256, eval_batch_size=512, retrieval_epochs=1, ranking_epochs=1,
                   validation_freq=1, quiet=True, learning_rate=0.01, nproc=NPROC)


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30), initial=0.0))


def weight_excess(w1: dict, w2: dict, rtol: float = WEIGHT_RTOL, atol: float = WEIGHT_ATOL
                  ) -> float:
    """max |a - b| / (atol + rtol |b|) over every named weight (names must match): <= 1 means
    within tolerance. ``atol`` covers weights whose gradient is analytically zero (the candidate
    tower's last bias shifts every logit of a row alike), whose values are float32 rounding."""
    assert w1.keys() == w2.keys()
    return max(float(np.max(np.abs(w1[k] - w2[k]) / (atol + rtol * np.abs(w2[k])), initial=0.0))
               for k in w1)


def same_weights(w1: dict, w2: dict) -> bool:
    return w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)


def reference_steps(model, optimizer, raw_batches, n: int) -> list[float]:
    """The hand-written N-replica step (module docstring) -> the per-step losses."""
    import tensorflow as tf

    from tfrs_impl.features import to_tensors

    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)  # traced as Keras fit traces train_step
    def slice_loss_and_grads(features):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(features, training=True)
        return loss, tape.gradient(loss, variables)

    @tf.function(reduce_retracing=True)
    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))

    losses = []
    for batch in raw_batches:
        total, summed = 0.0, None
        for part in np.array_split(np.arange(len(batch["user_id"])), n):
            loss, grads = slice_loss_and_grads(to_tensors({k: v[part] for k, v in batch.items()}))
            grads = [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices -> dense rows summed
            summed = grads if summed is None else [a + b for a, b in zip(summed, grads)]
            total += float(loss)
        apply(summed)
        losses.append(total)
    return losses


def check_slices(backend, dataset, config) -> dict:
    """Replica r receives the r-th np.array_split slice of every global batch of the shared
    order (one epoch, uneven last batch included) and of a tiny batch (an empty slice)."""
    import tensorflow as tf

    from tfrs_impl import distributed, train

    plan = BatchPlan(dataset.split.train, config.train.batch_size, config.seed)
    columns = {"row": tf.range(len(dataset.user_id), dtype=tf.int64)}
    data = train.training_input(dataset, config, 1, columns, 0, backend.strategy)
    got = [[r["row"].numpy().tolist() for r in backend.strategy.experimental_local_results(x)]
           for x in data]
    expected = [[s.tolist() for s in np.array_split(rows, NPROC)] for rows in plan.rows(0, 1)]
    tiny = distributed.distribute(backend.strategy, lambda: tf.data.Dataset.from_tensors(
        tf.constant([7], tf.int64)).flat_map(lambda r: distributed.split_batch(r, NPROC)))
    tiny_got = [[v.numpy().tolist() for v in backend.strategy.experimental_local_results(x)]
                for x in tiny]
    return {"equal": got == expected, "steps": len(got),
            "last_sizes": [len(s) for s in got[-1]] if got else [],
            "tiny": tiny_got}


def seed_ranking_error(backend, dataset, config) -> str | None:
    """Train the SEED's ranking task (BinaryCrossentropy(), reduction AUTO, no flag) under the
    strategy: the error tf_keras raises, or None if it trained."""
    from tfrs_impl import models, optim, train

    seed_config = config.replace(nproc=1)  # tasks.make_ranking_task leaves the loss as the seed's
    with backend.strategy.scope():
        model = models.build_ranking_model(dataset.spec, seed_config)
        optimizer = optim.make_optimizer(seed_config)
    train.compile_model(model, seed_config, optimizer)
    plan = BatchPlan(dataset.split.train, config.train.batch_size, config.seed)
    try:
        train.train_steps(model, seed_config, [dataset.raw(plan.first_steps(1)[0])],
                          strategy=backend.strategy)
    except ValueError as e:
        return f"{type(e).__name__}: {e}"
    return None


def check_against_reference(backend, dataset, config) -> dict:
    """TfrsBackend.train_steps under MirroredStrategy vs :func:`reference_steps` (a plain,
    strategy-free model with the same initial weights), both stages; plus the whole-batch
    single-process loss of step 1, which the replica semantics must NOT reproduce."""
    from tfrs_impl import optim
    from tfrs_impl.backend import TfrsBackend

    plain = TfrsBackend(config.replace(nproc=1), dataset.spec)
    plan = BatchPlan(dataset.split.train, config.train.batch_size, config.seed)
    batches = [dataset.raw(rows) for rows in plan.first_steps(STEPS)]
    out = {}
    for stage in ("retrieval", "ranking"):
        plain.set_weights(stage, backend.get_weights(stage))
        whole_batch = plain.batch_loss(stage, batches[0])
        slices = [plain.batch_loss(stage, {k: v[p] for k, v in batches[0].items()})
                  for p in np.array_split(np.arange(len(batches[0]["user_id"])), NPROC)]
        optimizer = optim.make_optimizer(config)
        reference = reference_steps(plain.models[stage], optimizer, batches, NPROC)
        mirrored = backend.train_steps(stage, batches)
        out[stage] = {"mirrored": mirrored, "reference": reference,
                      "loss_rel": max_rel(mirrored, reference),
                      "weights_excess": weight_excess(backend.get_weights(stage),
                                                      plain.get_weights(stage)),
                      "accumulators_excess": weight_excess(
                          backend.get_accumulators(stage),
                          optim.get_accumulators(optimizer, plain.models[stage])),
                      "whole_batch_step1": whole_batch, "slices_step1": slices}
    return out


def check_single_batch_helpers(backend, dataset, config) -> dict:
    """batch_loss / loss_and_gradients under the strategy = the single-process ones."""
    from tfrs_impl.backend import TfrsBackend

    plain = TfrsBackend(config.replace(nproc=1), dataset.spec)
    batch = dataset.raw(dataset.split.train[:64])
    out = {}
    for stage in ("retrieval", "ranking"):
        plain.set_weights(stage, backend.get_weights(stage))
        loss, grads = backend.loss_and_gradients(stage, batch)
        p_loss, p_grads = plain.loss_and_gradients(stage, batch)
        out[stage] = {"loss_rel": max_rel(loss, p_loss),
                      "batch_loss_rel": max_rel(backend.batch_loss(stage, batch), p_loss),
                      "grad_abs": max(float(np.abs(grads[k] - p_grads[k]).max()) for k in grads)}
    return out


def _exported_scores_error(backend, dataset, directory) -> float:
    """A SavedModel of the mirrored towers serves the backend's own top-k scores."""
    import tensorflow as tf

    from tfrs_impl.checkpoint import load_saved_model

    path = backend.export_saved_model(directory, dataset.corpus_titles, k=5)
    users, ts = dataset.user_id[:8], dataset.timestamp[:8]
    scores, _ = load_saved_model(path)({"user_id": tf.constant(users.astype(str)),
                                        "timestamp": tf.constant(ts)})
    backend.build_index(dataset.corpus_titles)
    return float(np.abs(scores.numpy() - backend.retrieve(users, ts, 5)[0]).max())


def _top_k_checks(backend, dataset, config, k: int) -> dict:
    """``top_{k}_fragile``: the fraction of evaluated queries whose top-k hit another kernel's
    rounding could flip (fewer than k corpus scores above the positive by more than the
    cross-kernel margin, at least k above it minus the margin); ``top_{k}_replica0``: the
    top-k accuracy of replica 0's half of every validation batch alone (what a validation that
    counted one replica's shard would report)."""
    from twostage import evaluation, pipeline

    rows = pipeline.evaluation_rows(dataset, config)
    batches = [np.array_split(rows[i:i + config.eval.eval_batch_size], 2)[0]
               for i in range(0, len(rows), config.eval.eval_batch_size)]
    half = np.concatenate(batches)
    replica0 = evaluation.factorized_top_k_accuracy(
        backend.query_embeddings(dataset.user_id[half], dataset.timestamp[half]),
        backend.candidate_embeddings(dataset.movie_title[half]),
        backend.candidate_embeddings(dataset.corpus_titles), (k,))[k]
    return {f"top_{k}_fragile": _fragile_fraction(backend, dataset, rows, k),
            f"top_{k}_replica0": replica0}


def _fragile_fraction(backend, dataset, rows: np.ndarray, k: int) -> float:
    """See :func:`_top_k_checks`."""
    from twostage import evaluation

    q = backend.query_embeddings(dataset.user_id[rows], dataset.timestamp[rows])
    t = backend.candidate_embeddings(dataset.movie_title[rows])
    corpus = backend.candidate_embeddings(dataset.corpus_titles)
    pos = evaluation.positive_scores(q, t)[:, None]
    per_sum = (evaluation.reduction_gamma(q.shape[1])           # gamma_D + one rounding
               + 2 * evaluation.FLOAT32_UNIT_ROUNDOFF)
    # per pair: a kernel's product is within per_sum * sum|q_d c_d| of the exact one, and so is
    # the positive; two kernels differ by at most twice both
    q64 = np.abs(q).astype(np.float64)
    margin = 2 * per_sum * (q64 @ np.abs(corpus).T.astype(np.float64)
                            + (q64 * np.abs(t)).sum(axis=1, keepdims=True))
    scores = q @ corpus.T
    sure = (scores > pos + margin).sum(axis=1)
    maybe = (scores > pos - margin).sum(axis=1)
    return float(np.mean((sure < k) & (maybe >= k)))


def check_fit_save_load(backend, dataset, config, directory) -> dict:
    """fit both stages (shared order, validation under the strategy), evaluate outside it,
    save, load back under a strategy, export a SavedModel."""
    from tfrs_impl.backend import TfrsBackend
    from twostage import pipeline

    retrieval = backend.fit_retrieval(dataset)
    # the last validation's top-10 state, summed over the replicas by the strategy
    top10 = backend.retrieval_model.task.factorized_metrics[0]._top_k_metrics[
        list(config.eval.top_ks).index(10)]
    validated = {"count": float(top10.count.numpy()), "total": float(top10.total.numpy())}
    ranking = backend.fit_ranking(dataset)
    report = pipeline.evaluate(backend, dataset, config)
    backend.save(directory)
    loaded = TfrsBackend.load(directory)
    exported = _exported_scores_error(backend, dataset, Path(directory).parent / "savedmodel")
    same = all(same_weights(loaded.get_weights(s), backend.get_weights(s)) and
               same_weights(loaded.get_accumulators(s), backend.get_accumulators(s))
               for s in ("retrieval", "ranking"))
    return {"retrieval_history": retrieval.to_dict(), "ranking_history": ranking.to_dict(),
            "top_k": report["retrieval"]["top_k_accuracy"],
            **_top_k_checks(backend, dataset, config, 10),
            "top_10_validated": validated,
            "num_validation_rows": int(len(pipeline.evaluation_rows(dataset, config))),
            "binary_accuracy": report["ranking"]["binary_accuracy"],
            "log_loss": report["ranking"]["log_loss"],
            "epochs_done": backend.epochs_done, "group_size": backend.group.size,
            "loaded_same": same, "loaded_replicas": loaded.strategy.num_replicas_in_sync,
            "exported_scores_error": exported,
            "loaded_epochs_done": loaded.epochs_done}


def main(out_path: str, data_dir: str) -> None:
    start = time.perf_counter()
    dataset = synthetic_dataset(Path(data_dir) / "synthetic", CONFIG)
    from tfrs_impl.backend import TfrsBackend  # nothing above ran a TensorFlow op
    backend = TfrsBackend(CONFIG, dataset.spec)  # configures the logical devices first

    import tensorflow as tf
    from tfrs_impl import distributed

    results: dict = {
        "devices": [d.name for d in tf.config.list_logical_devices("CPU")],
        "replicas": backend.strategy.num_replicas_in_sync,
        "variable_type": type(backend.retrieval_model.trainable_variables[0]).__name__,
        "again_same_devices": distributed.replica_devices(NPROC)}
    plain = TfrsBackend(CONFIG.replace(nproc=1), dataset.spec)
    results["init_equals_single_process"] = all(
        same_weights(plain.get_weights(s), backend.get_weights(s))
        for s in ("retrieval", "ranking"))
    for name, check in (("slices", lambda: check_slices(backend, dataset, CONFIG)),
                        ("seed_ranking_error", lambda: seed_ranking_error(backend, dataset,
                                                                         CONFIG)),
                        ("reference", lambda: check_against_reference(backend, dataset, CONFIG)),
                        ("helpers", lambda: check_single_batch_helpers(backend, dataset, CONFIG)),
                        ("fit", lambda: check_fit_save_load(backend, dataset, CONFIG,
                                                            Path(data_dir) / "ckpt"))):
        try:
            results[name] = check()
        except Exception:  # reported by the test that reads this check
            results[name] = {"exception": traceback.format_exc()}
    results["seconds"] = time.perf_counter() - start
    Path(out_path).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
