"""Multi-process training on torch.distributed with TFRS's multi-replica semantics (issue 11).

The specification is what TFRS computes under ``tf.distribute.MirroredStrategy`` (TFRS 0.7.7,
tf_keras 2.21), plus one option that TFRS lacks (global in-batch negatives):

- **The batch.** The global batch is ``config.train.batch_size`` rows of the shared
  ``twostage.schedule.BatchPlan``; rank r takes slice r of it in ``np.array_split`` order
  (:class:`Shard`), so one step of N processes sees exactly the examples of one step of one
  process, as MirroredStrategy splits a global batch over its replicas.
- **The gradients.** Every rank starts from rank 0's weights (:meth:`TorchGroup.broadcast_state`:
  a broadcast, not trust in seeds). After the backward pass ONE ``all_reduce(SUM)`` of all
  parameter gradients, flattened into a single buffer (:meth:`TorchGroup.sum_gradients`), then
  the Keras Adagrad update runs identically on every rank. SUM, not DDP's average: Keras sums
  the replicas' gradients (tf_keras/src/optimizers/optimizer.py ``apply_gradients`` ->
  ``aggregate_gradients`` -> optimizers/utils.py ``all_reduce_sum_gradients``:
  ``get_replica_context().all_reduce(ReduceOp.SUM, grads)``), and the TFRS ``train_step``
  (tensorflow_recommenders/models/base.py lines 64-78) differentiates the replica's own loss
  without dividing by the number of replicas.
- **Retrieval negatives** (``config.distributed.cross_process_negatives``):
  ``"replica"``: each rank's ``Retrieval`` loss over its local queries x local candidates (TFRS
  per replica: tasks/retrieval.py never gathers), a SUM over its rows; gradients summed.
  ``"global"``: each rank scores its queries against the candidates of every rank, gathered
  WITH gradients (:meth:`TorchGroup.gather_with_grad`; the backward sums the incoming gradients)
  together with their ids and sampling probabilities (without); row i's positive is column
  ``offset_rank + i``. The ranks' losses sum to the single-process loss of the global batch and
  their summed gradients are its gradients.
- **Ranking.** The seed's ranking loss is ``tfrs.tasks.Ranking(loss=BinaryCrossentropy())``;
  with [B] labels and [B, 1] predictions ``binary_crossentropy``'s ``mean(axis=-1)`` already
  reduces the (squeezed) batch to a scalar, the batch mean. Under a strategy Keras does not run
  it: ``Loss._get_reduction`` (tf_keras/src/losses.py lines 197-216) raises "Please use
  `tf.keras.losses.Reduction.SUM` or `NONE` ..." for an AUTO / SUM_OVER_BATCH_SIZE loss
  outside ``compile`` (``_allow_sum_over_batch_size`` is set only by compile_utils.py line 371).
  With the reduction Keras asks for (SUM or NONE: the same scalar here) each replica's loss is
  the mean over its slice and the gradients are summed, so the step follows the gradient of
  ``sum_r mean_r`` (N times the single-process mean gradient for equal slices; measured with
  tf_keras 2.21 on 2 logical CPUs), and ``fit`` reports that sum. That is ``"replica"`` here.
  ``"global"`` gives the single-process loss: each rank's loss is its rows' SUM divided by the
  global batch size, so the ranks' losses and gradients sum to the single-process mean's. The
  same option thus picks TFRS's per-replica semantics or one process's, for both stages.

Reported figures: a step's loss is the SUM over ranks of the ranks' losses (what Keras' ``fit``
reports under MirroredStrategy: ``reduce_per_replica`` with reduction "auto" sums), read once
per epoch; the per-example loss is the sum of every example's loss over the examples.

Failure: ``init_process_group(timeout=config.distributed.timeout_s)``; gloo applies that timeout
to every collective, and for NCCL ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` (set unless already set)
makes a timed-out collective end the process. A rank that raises closes its connections; the
others fail at their next collective (at once, or after the timeout when a rank stalls).
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from twostage.config import Config

ENV_VARS: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """torch.distributed cannot be set up as the configuration asks (the message says the fix)."""


# --- the group ------------------------------------------------------------------------------------

class TorchGroup:
    """``twostage.group.Group`` over the default torch.distributed process group, plus the
    tensor collectives training needs.

    ``rank``, ``size``; ``device``: where collectives run (CPU for gloo, this process's GPU for
    NCCL); tensors on another device are copied there and back. The numpy collectives
    (:meth:`all_sum`, :meth:`all_gather`) are exact: integer sums, concatenation in rank order.
    ``comm_seconds``: host time spent in this group's collectives so far (benchmarks.scaling;
    gloo's CPU collectives complete inside the call, NCCL's are queued, so there it is the time
    to enqueue them, and waiting shows up in the next host read instead).
    """

    def __init__(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise DistributedError("no torch.distributed process group: call "
                                   "torch_impl.distributed.init_from_env(config) first (under "
                                   "torchrun)")
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if self.backend == "nccl" else torch.device("cpu"))
        self.comm_seconds = 0.0

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.comm_seconds += time.perf_counter() - start

    def __repr__(self) -> str:
        return f"TorchGroup(rank={self.rank}, size={self.size}, backend={self.backend!r})"

    # --- twostage.group.Group (numpy) -----------------------------------------------------------
    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the processes (same shape everywhere; dtype kept)."""
        a = np.asarray(values)
        t = self._to_comm(torch.from_numpy(np.ascontiguousarray(_summable(a))))
        with self._timed():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy().astype(a.dtype if a.dtype != bool else np.int64, copy=False)

    def all_gather(self, rows: np.ndarray) -> np.ndarray:
        """Every process's ``rows`` concatenated along axis 0 in rank order (lengths may
        differ; the other dimensions and the dtype must agree)."""
        a = np.asarray(rows)
        if a.dtype == object:  # strings: pickled, rare (nothing in the pipeline gathers them)
            parts: list = [None] * self.size
            with self._timed():
                dist.all_gather_object(parts, a)
            return np.concatenate(parts)
        lengths = self.all_gather_sizes(len(a))
        t = self._to_comm(torch.from_numpy(np.ascontiguousarray(_summable(a))))
        out = self._gather_padded(t, lengths)
        return out.cpu().numpy().astype(a.dtype, copy=False)

    # --- tensors ---------------------------------------------------------------------------------
    def all_gather_sizes(self, n: int) -> list[int]:
        """Every rank's ``n``, in rank order (one small collective)."""
        t = self._to_comm(torch.tensor([int(n)], dtype=torch.int64))
        parts = [torch.empty_like(t) for _ in range(self.size)]
        with self._timed():
            dist.all_gather(parts, t)
        return [int(p) for p in torch.cat(parts).cpu()]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (a copy-back when it is off ``device``)."""
        t = self._to_comm(tensor)
        with self._timed():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if t is not tensor:
            tensor.copy_(t)
        return tensor

    def gather_rows(self, tensor: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Every rank's ``tensor`` ([sizes[rank], ...]) concatenated along dim 0 in rank order,
        without gradient, on ``tensor``'s device."""
        out = self._gather_padded(self._to_comm(tensor.detach()), sizes)
        return out.to(tensor.device)

    def gather_with_grad(self, tensor: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """:meth:`gather_rows` whose backward gives each rank the SUM over ranks of the
        gradients that reached its rows (the backward of ``torch.distributed.nn.functional
        .all_gather``, which torch 2.13 deprecates and which needs equal sizes; here the last
        batch of an epoch may split unevenly). Every rank must run the backward pass."""
        return _GatherWithGrad.apply(tensor, self, tuple(int(s) for s in sizes))

    def _gather_padded(self, t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """all_gather of [sizes[r], ...] tensors: padded to the largest, then trimmed."""
        longest = max(sizes)
        if t.shape[0] < longest:
            pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
            t = torch.cat([t, pad])
        parts = [torch.empty_like(t) for _ in range(self.size)]
        with self._timed():
            dist.all_gather(parts, t.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def _to_comm(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.device == self.device else tensor.to(self.device)

    # --- training ------------------------------------------------------------------------------
    def sum_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """ONE all_reduce(SUM) of every parameter's gradient, flattened into a single buffer per
        dtype (one here: float32), written back as each parameter's dense ``.grad``.

        Dense on purpose: the models' ``nn.Embedding`` tables produce dense gradients (zero rows
        where no example looked), NCCL has no sparse all_reduce, and one flat buffer is one
        collective per step instead of one per parameter. A missing gradient counts as zeros
        (Keras' update with a zero gradient leaves the weight and its accumulator as they were,
        and ``KerasAdagrad`` skips all-zero rows of the embedding tables anyway).
        """
        params = [p for p in params if p.requires_grad]
        for dtype in dict.fromkeys(p.dtype for p in params):
            group = [p for p in params if p.dtype == dtype]
            grads = [_dense_grad(p) for p in group]
            flat = self._to_comm(torch.cat([g.reshape(-1) for g in grads]))
            with self._timed():
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in group:
                n = p.numel()
                p.grad = flat[offset: offset + n].view_as(p).to(p.device)
                offset += n

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Rank ``src``'s values of ``tensors`` on every rank (one broadcast per dtype)."""
        tensors = list(tensors)
        for dtype in dict.fromkeys(t.dtype for t in tensors):
            group = [t for t in tensors if t.dtype == dtype]
            flat = self._to_comm(torch.cat([t.detach().reshape(-1) for t in group]))
            with self._timed():
                dist.broadcast(flat, src=src)
            offset = 0
            with torch.no_grad():
                for t in group:
                    n = t.numel()
                    t.copy_(flat[offset: offset + n].view_as(t))
                    offset += n

    def broadcast_state(self, module: nn.Module,
                        optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Rank 0's weights, buffers and optimizer state tensors on every rank: identical
        starting points by construction, whatever each process's seed or checkpoint did."""
        tensors = [*module.parameters(), *module.buffers()]
        if optimizer is not None:
            for p in module.parameters():
                tensors += [v for v in optimizer.state.get(p, {}).values()
                            if isinstance(v, torch.Tensor) and v.dim() > 0]
        self.broadcast_(tensors)

    def barrier(self) -> None:
        with self._timed():
            dist.barrier()


def _summable(a: np.ndarray) -> np.ndarray:
    """bool -> int64 (torch collectives do not sum booleans); other dtypes as they are."""
    return a.astype(np.int64) if a.dtype == bool else a


def _dense_grad(p: torch.Tensor) -> torch.Tensor:
    if p.grad is None:
        return torch.zeros_like(p)
    return p.grad.to_dense() if p.grad.is_sparse else p.grad


class _GatherWithGrad(torch.autograd.Function):
    """Forward: every rank's rows in rank order. Backward: all_reduce(SUM) of the gradient of
    the whole gathered tensor, then this rank's rows (the sum over ranks of what each rank's
    loss sent back to them)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: TorchGroup, sizes: tuple[int, ...]
                ) -> torch.Tensor:
        ctx.group, ctx.sizes = group, sizes
        return group.gather_rows(tensor, sizes)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        group, sizes = ctx.group, ctx.sizes
        total = group.sum_(grad.contiguous().clone())
        start = sum(sizes[:group.rank])
        return total[start: start + sizes[group.rank]], None, None


# --- set-up ---------------------------------------------------------------------------------------

_GROUP: Optional[TorchGroup] = None  # one per process, so its comm_seconds add up


def current_group() -> Optional[TorchGroup]:
    """The initialised torch.distributed group of more than one process, else None."""
    global _GROUP
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    if _GROUP is None:
        _GROUP = TorchGroup()
    return _GROUP


def check_world(config: Config, world: int) -> None:
    """Refuse a configuration that ``world`` processes cannot run (DistributedError naming the
    fix): ``nproc`` > 1 must equal the world size (1 = let the launcher decide), the global
    batch must split into equal slices."""
    nproc = config.distributed.nproc
    if nproc > 1 and nproc != world:
        raise DistributedError(f"config asks for nproc={nproc} processes but the launcher "
                               f"started WORLD_SIZE={world}; pass --nproc {world} or launch "
                               f"{nproc} processes (torchrun --nproc-per-node {nproc})")
    if config.train.batch_size % world:
        b = config.train.batch_size
        raise DistributedError(f"batch_size={b} does not divide into {world} equal slices; "
                               f"use --batch-size {b - b % world or world} or another number "
                               "of processes")


def init_from_env(config: Config) -> Optional[TorchGroup]:
    """Join the torch.distributed group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) -> this process's :class:`TorchGroup`, or None for one process.

    gloo when ``config.train.device`` is the CPU, NCCL on CUDA (each process on
    ``cuda:LOCAL_RANK``); ``timeout=config.distributed.timeout_s`` for the set-up and every
    collective. Refuses (DistributedError) ``nproc`` > 1 outside a launcher, an nproc/world
    mismatch, a batch that does not split evenly, and an explicit ``cuda:N`` other than the
    local rank's GPU. Already initialised: checks and returns the group.
    """
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        check_world(config, dist.get_world_size())
        return current_group()
    if world <= 1:
        if config.distributed.nproc > 1 and "RANK" not in env:
            raise DistributedError(f"nproc={config.distributed.nproc} but this process was not "
                                   "started by torch's launcher (no WORLD_SIZE): run `twostage "
                                   "run --nproc N` or `torchrun --nproc-per-node N -m twostage "
                                   "run ...`")
        check_world(config, 1)
        return None
    missing = [k for k in ENV_VARS if k not in env]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the "
                               "processes with torchrun (or set all of "
                               f"{', '.join(ENV_VARS)})")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    check_world(config, world)
    backend = _backend_for(config.train.device, int(env["LOCAL_RANK"]))
    if backend == "nccl":
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(backend, timeout=timedelta(seconds=config.distributed.timeout_s))
    return current_group()


def _backend_for(device: str, local_rank: int) -> str:
    """gloo for the CPU; NCCL for CUDA, after pinning this process to cuda:LOCAL_RANK."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return "gloo"
    if not torch.cuda.is_available():
        raise DistributedError(f"device={device!r} but CUDA is not available; use --device cpu")
    if local_rank >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                               "GPU(s) are visible: one process per GPU (fewer --nproc)")
    if dev.index is not None and dev.index != local_rank:
        raise DistributedError(f"device={device!r}: under torch.distributed each process uses "
                               f"cuda:LOCAL_RANK (here cuda:{local_rank}); pass --device cuda")
    torch.cuda.set_device(local_rank)
    return "nccl"


def shutdown() -> None:
    """Leave the process group (nothing when none was initialised)."""
    global _GROUP
    _GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(config: Config) -> Iterator[Optional[TorchGroup]]:
    """:func:`init_from_env` for the block, left by :func:`shutdown` however it ends: the
    group torchrun describes, or None for one process."""
    group = init_from_env(config)
    try:
        yield group
    finally:
        if group is not None:
            shutdown()


def launch_workers(argv: Sequence[str], nproc: int) -> int:
    """``twostage run --nproc N`` on one machine: ``twostage *argv`` as N torch.distributed
    workers, through torch's own launcher (what ``torchrun --standalone --nproc-per-node N
    -m twostage ...`` does). A failing worker stops the others; its error is its line.

    Returns:
        0 when every worker succeeded.
    Raises:
        RuntimeError: naming each failed rank and its exit code (its error is printed above).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        # "--" ends torchrun's own options: its argparse would take the workers' --nproc for an
        # abbreviation of --nproc-per-node.
        torchrun(["--standalone", "--nproc-per-node", str(nproc), "-m", "--", "twostage",
                  *argv])
    except ChildFailedError as e:
        failures = ", ".join(f"rank {rank} exit code {f.exitcode}"
                             for rank, f in sorted(e.failures.items()))
        raise RuntimeError(f"a worker failed ({failures}); its error is printed above") from None
    return 0


# --- one step's share of the global batch ---------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """This rank's contiguous slice of a global batch of ``sum(sizes)`` rows (``np.array_split``
    order: ranks 0 .. n % size - 1 take one row more)."""

    group: TorchGroup
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, group: TorchGroup, num_rows: int) -> "Shard":
        base, extra = divmod(int(num_rows), group.size)
        return cls(group, tuple(base + (r < extra) for r in range(group.size)))

    @property
    def offset(self) -> int:
        """The global row of this rank's first row."""
        return sum(self.sizes[:self.group.rank])

    @property
    def size(self) -> int:
        return self.sizes[self.group.rank]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch's rows [total] (a view; no host read)."""
        return rows[self.offset: self.offset + self.size]


# --- the losses of a rank's share -----------------------------------------------------------------

def sharded_retrieval_loss(model, task, batch: dict[str, torch.Tensor], shard: Shard, *,
                           use_sampling_probability: bool, negatives: str) -> torch.Tensor:
    """This rank's retrieval loss of its ``batch`` (its slice of the global batch).

    ``"replica"``: ``tasks.retrieval_loss`` of the slice alone (TFRS per replica).
    ``"global"``: its queries [b, D] against the candidates of every rank [B, D] (gathered with
    gradients) with their sampling probabilities and ids (gathered without), positives at
    columns ``shard.offset + i``: the single-process loss's rows ``offset .. offset + b - 1``,
    a SUM over them.
    """
    from .features import SAMPLING_PROBABILITY
    from .tasks import retrieval_loss

    if negatives == "replica":
        if shard.size == 0:  # a last batch smaller than the group: nothing here
            return torch.zeros((), device=batch["title_index"].device)
        return retrieval_loss(model, task, batch, use_sampling_probability)
    if negatives != "global":
        raise ValueError(f"negatives={negatives!r} must be 'replica' or 'global'")
    group = shard.group
    query = model.query_model(batch)
    candidates = group.gather_with_grad(model.candidate_model(batch), shard.sizes)
    columns = []  # the per-candidate inputs, one collective: float64 holds both exactly
    if use_sampling_probability:
        if SAMPLING_PROBABILITY not in batch:
            raise KeyError(f"use_sampling_probability needs a '{SAMPLING_PROBABILITY}' column")
        columns.append(batch[SAMPLING_PROBABILITY].reshape(-1).to(torch.float64))
    if task.remove_accidental_hits:
        columns.append(batch["title_index"].reshape(-1).to(torch.float64))
    probability = ids = None
    if columns:
        gathered = group.gather_rows(torch.stack(columns, dim=1), shard.sizes)
        if use_sampling_probability:
            probability = gathered[:, 0].to(torch.float32)
        if task.remove_accidental_hits:
            ids = gathered[:, -1].to(torch.int64)
    return task(query, candidates, sample_weight=batch.get("sample_weight"),
                candidate_sampling_probability=probability, candidate_ids=ids,
                positive_offset=shard.offset)


def sharded_ranking_loss(model, task, batch: dict[str, torch.Tensor], shard: Shard, *,
                         negatives: str) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ranking loss -> (loss, probabilities [b, 1]).

    ``"replica"``: the mean over the slice (Keras per replica; the summed gradients are those
    of ``sum_r mean_r``, see the module docstring). ``"global"``: the slice's SUM divided by the
    global batch size, so the ranks' losses add up to the single-process batch mean.
    """
    from .tasks import ranking_loss

    if negatives == "global":
        return ranking_loss(model, task, batch, num_examples=shard.total)
    if negatives != "replica":
        raise ValueError(f"negatives={negatives!r} must be 'replica' or 'global'")
    if shard.size == 0:
        return ranking_loss(model, task, batch, num_examples=1)  # an empty sum: 0, not NaN
    return ranking_loss(model, task, batch)


def example_loss_sum(stage: str, loss: torch.Tensor, rows: int, total: int, negatives: str
                     ) -> torch.Tensor:
    """This process's share of the sum of the per-example losses of a global batch of
    ``total`` rows, from its step ``loss`` over its ``rows`` of them (summed over the ranks it
    is the per-example figure's numerator; one process: ``rows == total``)."""
    if stage == "retrieval":
        return loss  # already a SUM over the rank's rows
    return loss * (total if negatives == "global" else rows)


@dataclass
class DataParallel:
    """How a stage trains over a :class:`TorchGroup` (``train.StageParts.parallel``): the
    sharding wrapper of the loss. ``loss(local batch, shard) -> (loss, outputs)`` is the loss
    of a rank's slice; ``negatives`` ("replica" / "global") picks the per-example figures."""

    group: TorchGroup
    stage: str
    loss: Callable[[dict, Shard], tuple[torch.Tensor, Optional[torch.Tensor]]]
    negatives: str

    def shard(self, num_rows: int) -> Shard:
        return Shard.of(self.group, num_rows)

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, Callable]:
        """A global batch's positions [B] -> (this rank's slice of them, the loss of the batch
        they select: ``loss(batch, shard)``)."""
        shard = self.shard(rows.shape[0])
        return shard.take(rows), functools.partial(self.loss, shard=shard)
