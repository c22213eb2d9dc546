"""Data-parallel training of the TFRS backend, the TFRS way: ``tf.distribute.MirroredStrategy``
over ``config.distributed.nproc`` local devices of ONE process (the twin of
torch_impl/distributed.py, which runs the same semantics over torch.distributed processes).

Devices: the first ``nproc`` GPUs when that many are visible, else ``nproc`` logical CPU devices
carved out of the one physical CPU with ``tf.config.set_logical_device_configuration``. That call
must come before TensorFlow initialises its devices (its first op, or a device listing); after
that TensorFlow refuses any change ("Virtual devices cannot be modified after being
initialized", tensorflow/python/eager/context.py ``set_logical_device_configuration``), and
:func:`strategy_for` raises :class:`DeviceSetupError` naming the fix. Setting the same
configuration twice is a no-op, so several backends of one process may each ask for it.

Batches: the GLOBAL batch is ``config.train.batch_size`` (the shared ``BatchPlan`` order);
replica r trains on the r-th ``np.array_split`` slice of every global batch, the slice the r-th
torch process gets (:func:`replica_slices`, :func:`distribute`).

What one optimizer step computes (tensorflow_recommenders 0.7.7, tf_keras 2.21 sources):

- Keras fit runs ``model.train_step`` once per replica on the replica's slice
  (tf_keras/src/engine/training.py ``make_train_function``: ``strategy.run(run_step, ...)``,
  lines 1366-1386). ``tfrs.models.Model.train_step`` (tensorflow_recommenders/models/base.py
  lines 64-85) differentiates ``compute_loss`` as it is, with NO 1/num_replicas scaling, and
  calls ``optimizer.apply_gradients``.
- Retrieval: ``tfrs.tasks.Retrieval.call`` (tasks/retrieval.py lines 172-235) scores the replica's
  queries against the replica's candidates only (``q @ c.T`` of the local [B/N, D] tensors;
  ``labels = tf.eye`` of the local shape) and reduces with SUM (line 86-87). The file still
  defines ``_cross_replica_concat`` (lines 238-321), but nothing in TFRS 0.7.7 calls it: TFRS
  0.7 cannot express ``cross_process_negatives="global"``.
- Ranking: ``tfrs.tasks.Ranking`` (tasks/ranking.py line 89) calls the seed's
  ``BinaryCrossentropy()``, reduction AUTO. Under a strategy tf_keras REFUSES that loss
  (tf_keras/src/losses.py ``Loss._get_reduction``, lines 197-216: "Please use
  `tf.keras.losses.Reduction.SUM` or `tf.keras.losses.Reduction.NONE` for loss reduction when
  losses are used with `tf.distribute.Strategy`, ..."), so the seed's ranking model cannot train
  under MirroredStrategy as written. Only losses given to ``Model.compile`` are let through
  (compile_utils.py line 371 sets ``loss._allow_sum_over_batch_size = True``), and Keras then
  divides them by num_replicas (compile_utils.py lines 302-309, losses_utils.py
  ``scale_loss_for_distribution`` lines 360-365); TFRS's train_step bypasses that container.
  This backend sets the same flag on the ranking task's loss when nproc > 1
  (``tasks.make_ranking_task``) and does NOT scale: each replica's loss is the mean BCE of its
  slice, exactly the single-process loss of that slice, and the gradients are summed like the
  retrieval stage's. (The alternative convention, loss / num_replicas so that the summed gradient
  is the global-batch mean, is what Keras' compile path and TFRS's
  experimental/models/ranking.py line 201 do; torch_impl/distributed.py and the replica
  reference of parity_tests/distributed_run.py use the unscaled sum, as here.)
- Gradients: ``tf_keras`` ``Optimizer.apply_gradients`` (optimizers/optimizer.py lines
  1272-1308) calls ``aggregate_gradients`` -> ``optimizer_utils.all_reduce_sum_gradients``
  (optimizers/utils.py lines 23-57): ``ReplicaContext.all_reduce(ReduceOp.SUM, grads)``: the
  replicas' gradients are SUMMED. Embedding gradients (IndexedSlices) keep their rows, and
  ``_deduplicate_sparse_grad`` (optimizer.py line 727) sums repeated rows before Adagrad squares
  them, so the accumulator grows by the square of the summed gradient (checked against a dense
  reference by tfrs_impl/tests/test_distributed.py). Then ONE Adagrad update of the mirrored
  variables with the summed gradient (``_distributed_apply_gradients_fn``, lines 1419-1433).
- The loss Keras reports for the step is the SUM of the replicas' losses
  (training.py ``reduce_per_replica``, ``reduction="auto"`` -> ``"sum"`` off TPU, lines
  4178-4201).

So one step of N replicas = the sum over r of the single-process loss of slice r, its summed
gradient, one Keras Adagrad step: what ``parity_tests/test_distributed.py`` checks against a
torch replica reference and ``tfrs_impl/tests/test_distributed.py`` against a hand-written TF
one (tf.GradientTape per slice, gradients summed, Keras Adagrad).

Validation inside ``fit`` runs under the strategy (tfrs_impl/train.py says what it reports);
evaluation and inference run outside it, in this one process (``TfrsBackend.group`` is
``twostage.group.SingleProcess``).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from twostage.config import Config

# Why ``cross_process_negatives="global"`` is refused with nproc > 1 (TfrsBackend.check_config).
GLOBAL_NEGATIVES_REASON = (
    "under MirroredStrategy tfrs.tasks.Retrieval scores each replica's queries against that "
    "replica's candidates only: TFRS 0.7 has no cross-replica negatives")


class DeviceSetupError(RuntimeError):
    """TensorFlow already initialised its devices with fewer than the replicas asked for."""


def _gpus(n: int) -> list[str] | None:
    """The first ``n`` visible GPUs, or None when fewer are visible."""
    gpus = tf.config.list_physical_devices("GPU")
    return [f"/gpu:{i}" for i in range(n)] if len(gpus) >= n else None


def logical_cpus(n: int) -> list[str]:
    """``n`` logical CPU devices (``/cpu:0`` .. ``/cpu:n-1``), configured now if TensorFlow has
    not initialised its devices yet. Raises :class:`DeviceSetupError` naming the fix if it has,
    with fewer than ``n`` CPU devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError as e:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise DeviceSetupError(
                f"MirroredStrategy over nproc={n} logical CPU devices needs "
                f"tf.config.set_logical_device_configuration before TensorFlow initialises its "
                f"devices, but this process already initialised them with {have} CPU "
                f"device(s) (TensorFlow: {e}). Fix: build the TFRS backend with nproc={n} "
                f"(or call tfrs_impl.distributed.strategy_for) before any other TensorFlow "
                f"work in the process, or run it in a fresh process, e.g. "
                f"`twostage run --backend tfrs --nproc {n}`.") from None
    return [f"/cpu:{i}" for i in range(n)]


def replica_devices(n: int) -> list[str]:
    """The devices of ``n`` replicas: the first ``n`` GPUs where that many exist, else ``n``
    logical CPU devices (:func:`logical_cpus`)."""
    if n < 1:
        raise ValueError(f"nproc={n} must be >= 1")
    return _gpus(n) or logical_cpus(n)


def strategy_for(config: Config) -> tf.distribute.MirroredStrategy | None:
    """``MirroredStrategy`` over ``config.distributed.nproc`` local devices, or None for nproc 1
    (the backend then runs without any strategy, as before). Call it before anything else
    touches TensorFlow (see :func:`logical_cpus`)."""
    n = config.distributed.nproc
    if n == 1:
        return None
    return tf.distribute.MirroredStrategy(replica_devices(n))


def num_replicas(strategy: tf.distribute.Strategy | None) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def scope(strategy: tf.distribute.Strategy | None):
    """``strategy.scope()`` (where models, optimizers and metrics that train must be created and
    compiled), or a no-op context without a strategy."""
    return strategy.scope() if strategy is not None else nullcontext()


# --- batches -----------------------------------------------------------------------------------
def replica_slices(rows: np.ndarray, n: int) -> list[np.ndarray]:
    """The ``n`` replicas' shares of one global batch, ``np.array_split`` order (replica r gets
    the r-th contiguous slice; the first ``len(rows) % n`` slices are one row longer)."""
    return np.array_split(np.asarray(rows), n)


def split_batch(rows: tf.Tensor, n: int) -> tf.data.Dataset:
    """A global batch ``rows`` [B] -> a dataset of its ``n`` slices in :func:`replica_slices`
    order (TF ops, usable inside ``Dataset.flat_map``)."""
    size = tf.shape(rows, out_type=tf.int64)[0]
    base, extra = size // n, size % n
    r = tf.range(n, dtype=tf.int64)
    starts = r * base + tf.minimum(r, extra)
    ends = starts + base + tf.cast(r < extra, tf.int64)
    return tf.data.Dataset.from_tensor_slices((starts, ends)).map(lambda s, e: rows[s:e])


def distribute(strategy: tf.distribute.Strategy, per_replica: Callable[[], tf.data.Dataset]
               ) -> tf.distribute.DistributedDataset:
    """A distributed dataset from ``per_replica()``, whose consecutive elements are the slices of
    replicas 0, 1, ..., N-1 of one global batch, then of the next one: MirroredStrategy hands the
    elements of its one input pipeline to the replicas in turn (round robin), so replica r
    receives exactly the r-th slice of every global batch (checked by tfrs_impl/tests)."""
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if context.num_input_pipelines != 1:  # MirroredStrategy: one pipeline, N replicas
            raise RuntimeError(f"expected one input pipeline, got {context.num_input_pipelines}")
        return per_replica()
    return strategy.distribute_datasets_from_function(dataset_fn)


def split_raw_batches(batches: Sequence[dict], n: int) -> list[dict]:
    """Raw numpy global batches -> their replica slices in order (n per batch)."""
    out = []
    for batch in batches:
        size = len(next(iter(batch.values())))
        for part in replica_slices(np.arange(size), n):
            out.append({k: np.asarray(v)[part] for k, v in batch.items()})
    return out
