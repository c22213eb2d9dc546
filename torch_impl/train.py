"""One training loop for both stages (``fit``), and what each stage plugs into it.

Loop (tensorflow_recommenders/models/base.py ``train_step``): loss = task loss (no
regularisation losses here), gradients of it, one optimizer step per batch; Keras' ``fit``
resets the metrics at each epoch start and validates every ``validation_freq`` epochs
(``twostage.schedule``). The batches are the shared order of ``twostage.schedule.BatchPlan``
(what the TFRS backend is fed), or with ``config.train.shared_batches=False`` a torch permutation.

Device discipline: every feature column of the training split is a tensor on the model's
device for the whole fit; each epoch's batch positions are copied there once; a step is a gather
plus the model and the optimizer, and never reads a device tensor on the host. The step losses
go to a device buffer that is read once per epoch, where the non-finite check runs too.

History (``twostage.backend.History``): ``loss[e]`` = mean of the epoch's step losses,
``loss_per_example[e]``, ``val`` (incl. "loss" and "loss_per_example" over the evaluation
batches), ``epoch_seconds`` (training only). NOTE: Keras' own History of a TFRS model records the
LAST step's loss as "loss" (``train_step`` returns the raw batch loss and ``fit`` keeps the last
step's logs), and ``evaluate`` likewise reports the last test batch's loss as "val_loss"; here
``val["loss"]`` is the mean over the evaluation batches. The validate_* functions also return
"last_batch_loss" (the Keras figure), kept out of History so both backends report the same keys.

Several processes (``torch_impl.distributed``; ``StageParts.parallel``): each step every rank
takes its contiguous slice of the same shared batch, computes its loss (``"replica"`` or
``"global"`` negatives), and after the backward pass one all_reduce sums the gradients before
the identical Adagrad update. The step losses (summed over ranks, as Keras' fit reports them
under MirroredStrategy) are read once per epoch, after one all_reduce. Validation shards the
evaluation batches over the ranks and combines exact pieces (integer hit counts summed, batch
losses gathered in order), so every rank records the single-process figures; only rank 0 draws
the progress bar.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from twostage.backend import EpochCallback, History, per_example
from twostage.config import Config
from twostage.env import ThreadGovernor
from twostage.dataset import Dataset
from twostage.group import Group, SingleProcess
from twostage.recipes import (RecipeData, attach_recipe_data, epoch_negatives,
                              negative_sampling_probability, query_columns)
from twostage.schedule import BatchPlan, should_validate, validation_rows

from .distributed import (DataParallel, TorchGroup, example_loss_sum, sharded_ranking_loss,
                          sharded_retrieval_loss)
from .features import (HISTORY, NEGATIVE_PREFIX, NEGATIVE_PROBABILITY, SAMPLING_PROBABILITY,
                       Batch, batch_iter, num_rows, select_rows, title_table, to_tensors,
                       user_feature_ids)
from .models import RankingModel, RetrievalModel
from .optim import make_optimizer
from .tasks import (TOP_K_METRIC, BinaryAccuracy, Ranking, Retrieval, binary_accuracy,
                    factorized_top_k_hits, make_ranking_task, make_retrieval_task, ranking_loss,
                    retrieval_loss)

# The loss of one training batch -> (scalar loss with its graph, outputs for the metrics or None),
# or the scalar loss alone (no outputs: the retrieval losses).
BatchLoss = Callable[[Batch], "torch.Tensor | tuple[torch.Tensor, Optional[torch.Tensor]]"]


def loss_and_outputs(loss: BatchLoss, batch: Batch
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``loss(batch)`` as (loss, outputs or None)."""
    out = loss(batch)
    return out if isinstance(out, tuple) else (out, None)


class EpochMetric(Protocol):
    """A training metric over one epoch (e.g. ``tasks.BinaryAccuracy``): reset at the epoch
    start, updated every step without reading the device, read once at the epoch end (over the
    updates of every process of ``group``)."""

    name: str

    def reset(self) -> None: ...

    def update(self, batch: Batch, outputs: Optional[torch.Tensor]) -> None: ...

    def result(self, group: Group = SingleProcess()) -> float: ...


@dataclass
class StageParts:
    """What differs between the stages; :func:`fit` does the rest.

    ``loss``: the loss of a training batch of one process (precision included:
    :func:`with_precision`); ``validate``: () -> validation values (with "loss" and
    "loss_per_example"), or None; ``metrics``: extra training metrics. ``parallel``: training
    over several processes (``torch_impl.distributed.DataParallel``: the rank's slice of each
    global batch, the loss of that slice, the gradient sum), else None. ``extras``: (absolute
    0-based epoch, steps) -> per step, columns added to the step's batch that are not rows of
    the training split (the sampled negatives of ``config.task.mixed_negatives``), or None.
    """

    stage: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: BatchLoss
    validate: Optional[Callable[[], dict[str, float]]] = None
    metrics: list[EpochMetric] = field(default_factory=list)
    parallel: Optional[DataParallel] = None
    extras: Optional[Callable[[int, int], list[Batch]]] = None

    @property
    def group(self) -> Group:
        return SingleProcess() if self.parallel is None else self.parallel.group

    def split(self, rows: torch.Tensor, loss: BatchLoss
              ) -> tuple[torch.Tensor, BatchLoss, Optional[Callable[[], None]]]:
        """A step's global batch ``rows`` [B] -> (the rows this process trains on, their loss,
        the gradient sync to run before the update or None): the batch, ``loss`` and None in
        one process; with ``parallel`` the rank's slice, its sharded loss and the all_reduce."""
        if self.parallel is None:
            return rows, loss, None
        local, shard_loss = self.parallel.split(rows)
        params = _parameters(self.optimizer)
        return local, shard_loss, lambda: self.parallel.group.sum_gradients(params)

    def rows_here(self, num_rows: int) -> int:
        """How many rows of a global batch of ``num_rows`` this process trains on."""
        return num_rows if self.parallel is None else self.parallel.shard(num_rows).size

    def reduce(self, totals: torch.Tensor) -> torch.Tensor:
        """``totals`` summed over the processes (one all_reduce; itself in one process)."""
        return totals if self.parallel is None else self.parallel.group.sum_(totals)


def train_step(optimizer: torch.optim.Optimizer, loss: BatchLoss, batch: Batch,
               sync: Optional[Callable[[], None]] = None
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One ``tfrs.models.Model.train_step``: loss, gradients, optimizer step -> (detached loss,
    outputs). ``sync()`` runs between the backward pass and the update (the gradient
    all_reduce of several processes). Queues device work only."""
    optimizer.zero_grad(set_to_none=True)
    value = loss(batch)  # loss_and_outputs inlined: one frame less between fit and the loss
    value, outputs = value if isinstance(value, tuple) else (value, None)
    if value.requires_grad:  # a rank whose slice is empty has no graph (its gradient: zeros)
        value.backward()
    if sync is not None:
        sync()
    optimizer.step()
    return value.detach(), outputs


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


# --- precision, compiled and graph-captured steps -------------------------------------------------

def graphs_enabled(config: Config, device: torch.device) -> bool:
    """Whether a one-process fit on ``device`` captures its step as a CUDA graph:
    ``config.train.cuda_graphs`` when set, else (None, the default) on CUDA without mixed
    negatives. Measured on an H200 (``benchmarks/device_check.sh``): the seed's retrieval step
    0.80 ms captured vs 2.8 ms eager, the seed protocol's fit 7.0 s vs 24.8 s, same figures."""
    if config.train.cuda_graphs is not None:
        return config.train.cuda_graphs
    return device.type == "cuda" and not config.task.mixed_negatives


def autocast_context(config: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``config.train.precision == "bf16"`` (the towers;
    ``torch_impl.tasks.fp32_scores`` keeps the score matrix, and so the softmax / log-sum-exp
    and the losses, in fp32), else nothing at all (fp32: bitwise the code without it)."""
    if config.train.precision == "bf16":
        # no cast cache under CUDA graphs (torch's rule for autocast with graph capture)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              cache_enabled=not graphs_enabled(config, device))
    return contextlib.nullcontext()


def with_precision(loss: Callable, config: Config, device: torch.device) -> Callable:
    """``loss`` run under :func:`autocast_context` (the backward pass stays outside it, as
    torch recommends); ``loss`` itself when fp32."""
    if config.train.precision != "bf16":
        return loss

    def run(*args, **kwargs):
        with autocast_context(config, device):
            return loss(*args, **kwargs)
    return run


# One training step of a batch given by its positions ``rows`` [B] into the training split
# (and the step's extra columns, or None) -> (detached loss, outputs for the metrics or None,
# the batch it trained on).
StepFn = Callable[..., tuple[torch.Tensor, Optional[torch.Tensor], Batch]]


def eager_step(parts: StageParts, train: Batch, loss: Optional[BatchLoss] = None) -> StepFn:
    """The plain step: this process's rows of the batch (``StageParts.split``) gathered on the
    device (plus the step's extra columns), then :func:`train_step`."""
    loss = parts.loss if loss is None else loss

    def step(rows: torch.Tensor, extra: Optional[Batch] = None):
        rows, loss_of, sync = parts.split(rows, loss)
        batch = select_rows(train, rows)
        if extra:
            batch.update(extra)
        value, outputs = train_step(parts.optimizer, loss_of, batch, sync)
        return value, outputs, batch
    return step


def compiled_step(parts: StageParts, train: Batch) -> StepFn:
    """:func:`eager_step` with the forward pass and the loss ``torch.compile``d (dynamic=False:
    shapes are specialised, so the last, smaller batch of an epoch gets its own graph once);
    the backward pass runs the compiled backward graph, the Adagrad update stays eager (its
    CPU row-sparse path sizes tensors on the host)."""
    return eager_step(parts, train, torch.compile(parts.loss, dynamic=False))


class CudaGraphStep:
    """The whole training step (gather, forward, backward, Keras Adagrad update) captured once
    as a CUDA graph for the full batch size and replayed: one launch per step, no host work.

    Static buffers: ``rows`` (the batch positions are copied into it, device to device), and
    the graph's loss, outputs and batch, returned after each replay (valid until the next).
    The first ``warmup`` full batches are ordinary steps on a side stream (what capture needs:
    warmed-up kernels and allocator), so training is the eager one step by step; gradients are
    set to None before capture, so the backward pass allocates them in the graph's pool.
    Batches of another size (the last of an epoch) run the uncaptured step (``fallback``).
    KerasAdagrad on CUDA neither allocates outside the graph nor reads the device on the host
    (its row-sparse path is CPU only), so it is captured with the rest.
    """

    def __init__(self, parts: StageParts, train: Batch, batch_size: int, warmup: int = 3,
                 loss: Optional[BatchLoss] = None) -> None:
        device = next(iter(train.values())).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the training tensors on a CUDA device, not "
                             f"{device}; use cuda_graphs=False")
        self.parts, self.train, self.batch_size = parts, train, int(batch_size)
        self.loss = parts.loss if loss is None else loss
        self.fallback = eager_step(parts, train, self.loss)
        self.warmup = int(warmup)
        self.warmed = 0
        self.rows = torch.zeros(self.batch_size, dtype=torch.int64, device=device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self._out: Optional[tuple] = None

    def _capture(self) -> None:
        optimizer = self.parts.optimizer
        optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            batch = select_rows(self.train, self.rows)
            value, outputs = loss_and_outputs(self.loss, batch)
            value.backward()
            optimizer.step()
        self.graph, self._out = graph, (value.detach(), outputs, batch)

    def __call__(self, rows: torch.Tensor, extra: Optional[Batch] = None):
        if extra:
            raise ValueError("CUDA graphs capture batches of the training split only; per-step "
                             "extra columns (mixed negatives) are refused by the backend's "
                             "check_config")
        if rows.shape[0] != self.batch_size:
            return self.fallback(rows)
        if self.graph is None and self.warmed < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fallback(rows)
            torch.cuda.current_stream().wait_stream(side)
            self.warmed += 1
            return out
        if self.graph is None:
            self._capture()
        self.rows.copy_(rows)
        self.graph.replay()
        return self._out


def make_step(parts: StageParts, train: Batch, config: Config, batch_size: int) -> StepFn:
    """The step ``config.train`` asks for: captured as a CUDA graph (:func:`graphs_enabled`;
    with ``compile`` the compiled forward is what is captured), compiled (``compile``), or
    eager."""
    if graphs_enabled(config, next(iter(train.values())).device):
        loss = torch.compile(parts.loss, dynamic=False) if config.train.compile else None
        return CudaGraphStep(parts, train, batch_size, loss=loss)
    if config.train.compile:
        return compiled_step(parts, train)
    return eager_step(parts, train)


# --- the batch order ------------------------------------------------------------------------------

def epoch_order(plan: BatchPlan, config: Config, epoch: int, device: torch.device
                ) -> list[torch.Tensor]:
    """Batches of positions into the training split for ``epoch`` (0-based, absolute), on
    ``device`` with one copy: ``plan.positions(epoch)`` when ``config.train.shared_batches``
    (the order the TFRS backend is fed), else a torch permutation seeded by (seed, epoch)."""
    if config.train.shared_batches:
        batches = plan.positions(epoch)
        sizes = [len(b) for b in batches]
        order = torch.from_numpy(np.concatenate(batches).astype(np.int64, copy=False))
    else:
        seed = int(np.random.SeedSequence([plan.seed, epoch]).generate_state(1)[0])
        order = torch.randperm(len(plan.train), generator=torch.Generator().manual_seed(seed))
        sizes = [len(b) for b in order.split(plan.batch_size)]
    return list(order.to(device).split(sizes))


# --- the loop -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _threads_restored() -> Iterator[None]:
    """torch's intra-op thread count as it was, whatever the governor set during a fit."""
    previous = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _raise_non_finite(stage: str, step_losses: np.ndarray, epoch: int) -> None:
    """FloatingPointError naming the first non-finite step (1-based epoch and step)."""
    bad = np.flatnonzero(~np.isfinite(step_losses))
    if len(bad):
        step = int(bad[0])
        raise FloatingPointError(
            f"{stage} loss became {step_losses[step]} at epoch {epoch} step {step + 1}; "
            "training diverged or an input is not finite (check for token-less titles with "
            "empty_title='nan', a too-high learning_rate, or non-finite features)")


def run_epoch(parts: StageParts, train: Batch, batches: list[torch.Tensor],
              on_step: Callable[[], None] = lambda: None,
              step_fn: Optional[StepFn] = None,
              extras: Optional[list[Batch]] = None) -> torch.Tensor:
    """One epoch of optimizer steps, in one process or several (``parts.parallel``; every rank
    passes the same GLOBAL ``batches``).

    Args:
        batches: per step, positions [B] into ``train`` (on its device).
        on_step: called after every step (the progress bar; it gets nothing to read).
        step_fn: the step (:func:`make_step`; default :func:`eager_step`).
        extras: each step's extra columns (``StageParts.extras``) or None.
    Returns:
        [2, S] float64 on the device, not read: the step losses and each step's sum of the
        per-example losses (``distributed.example_loss_sum``), summed over the processes.
    """
    step_fn = eager_step(parts, train) if step_fn is None else step_fn
    out = torch.zeros(2, len(batches), dtype=torch.float64, device=batches[0].device)
    negatives = "replica" if parts.parallel is None else parts.parallel.negatives
    for metric in parts.metrics:
        metric.reset()
    for step, rows in enumerate(batches):
        value, outputs, batch = step_fn(rows, None if extras is None else extras[step])
        out[0, step] = value
        total = rows.shape[0]
        out[1, step] = example_loss_sum(parts.stage, value.double(), parts.rows_here(total),
                                        total, negatives)
        for metric in parts.metrics:
            metric.update(batch, outputs)
        on_step()
    return parts.reduce(out)


def _record_val(history: History, epoch: int, values: Mapping[str, float]) -> None:
    for name, value in values.items():
        if name == "last_batch_loss":
            continue  # kept out of History so both backends report the same keys
        history.val.setdefault(name, []).append((epoch, float(value)))


def fit(parts: StageParts, train: Batch, plan: BatchPlan, config: Config, *, epochs: int,
        epochs_done: Optional[dict[str, int]] = None,
        on_epoch: Optional[EpochCallback] = None) -> History:
    """Train ``parts.model`` for ``epochs`` epochs: the one epoch loop, of one process or of
    several (``parts.parallel``: every rank runs this with the same arguments; only rank 0
    draws the progress bar).

    Args:
        train: feature tensors of the training split, on the model's device.
        plan: the batch order; epoch e (0-based, absolute) is ``epoch_order(plan, ..., e)``.
        epochs_done: epochs already run per stage (the batch order resumes there); advanced
            by one after each epoch, before ``on_epoch`` (as tfrs_impl.train's HistoryCallback).
        on_epoch: called as ``on_epoch(stage, epoch, history)`` (1-based within this call)
            after each epoch and its validation (``twostage.schedule.should_validate``).
    Returns:
        The fit's History (module docstring).
    Raises:
        FloatingPointError: a non-finite step loss (naming the epoch and step).

    One progress bar for the whole stage (``config.output.quiet`` hides it); its loss is the
    finished epoch's mean, so no step reads the device."""
    history = History()
    epochs_done = {} if epochs_done is None else epochs_done
    if epochs == 0:
        return history
    device = next(parts.model.parameters()).device
    stage = parts.stage
    parts.model.train()
    # Threads sized per epoch to what other processes leave free (CPU only; see ThreadGovernor).
    governor = ThreadGovernor(torch.get_num_threads() if device.type == "cpu" else 1)
    step_fn = make_step(parts, train, config, plan.batch_size)
    with tqdm(total=epochs * plan.steps_per_epoch, desc=f"torch {stage}", unit="step",
              leave=False, disable=config.output.quiet or parts.group.rank != 0) as bar, \
            _threads_restored():
        for epoch in range(1, epochs + 1):
            torch.set_num_threads(governor.threads())
            bar.set_postfix_str(f"epoch {epoch}/{epochs}" + (
                f", loss {history.loss[-1]:.4f}" if history.loss else ""), refresh=False)
            start = time.perf_counter()
            absolute = epochs_done.get(stage, 0)
            batches = epoch_order(plan, config, absolute, device)
            extras = None if parts.extras is None else parts.extras(absolute, len(batches))
            # the epoch's one read of the device (after one all_reduce with several processes)
            totals = run_epoch(parts, train, batches, on_step=lambda: bar.update(1),
                               step_fn=step_fn, extras=extras).cpu().numpy()
            history.epoch_seconds.append(time.perf_counter() - start)
            _record_epoch(history, parts, epoch, totals, [len(b) for b in batches])
            if parts.validate is not None and should_validate(
                    epoch, epochs, config.train.validation_freq):
                with autocast_context(config, device):
                    _record_val(history, epoch, parts.validate())
            bar.set_postfix_str(f"epoch {epoch}/{epochs}, loss {history.loss[-1]:.4f}")
            epochs_done[stage] = absolute + 1
            if on_epoch is not None:
                on_epoch(stage, epoch, history)
    return history


def _record_epoch(history: History, parts: StageParts, epoch: int, totals: np.ndarray,
                  sizes: list[int]) -> None:
    """The epoch's loss, loss per example and training metrics from :func:`run_epoch`'s
    ``totals`` [2, S] (read once); FloatingPointError on a non-finite step loss."""
    losses = totals[0].astype(np.float32)  # float32 step losses, exact in float64
    _raise_non_finite(parts.stage, losses, epoch)  # the same losses on every rank
    history.loss.append(float(losses.astype(np.float64).mean()))
    history.loss_per_example.append(float(totals[1].sum() / max(sum(sizes), 1)))
    for metric in parts.metrics:
        history.metrics.setdefault(metric.name, []).append(metric.result(parts.group))


# --- validation -----------------------------------------------------------------------------------

def _in_batches(fn: Callable[[Batch], torch.Tensor], tensors: Batch, batch_size: int
                ) -> torch.Tensor:
    return torch.cat([fn(b).float() for b in batch_iter(tensors, batch_size)], dim=0)


def _my_batches(tensors: Batch, batch_size: int, group: Group) -> tuple[Batch, list[int]]:
    """This process's share of the evaluation batches of ``tensors``: whole batches, contiguous
    (``np.array_split`` of the batch indices), so each row is computed in the very batch it
    would be in one process (bitwise the same figures) -> (its rows, every batch's size)."""
    n = num_rows(tensors)
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    mine = np.array_split(np.arange(len(sizes)), group.size)[group.rank]
    start = int(mine[0]) * batch_size if len(mine) else n
    stop = start + sum(sizes[int(i)] for i in mine)
    return {k: v[start:stop] for k, v in tensors.items()}, sizes


def _loss_values(stage: str, losses: list[torch.Tensor], sizes: list[int],
                 group: Group = SingleProcess()) -> dict[str, float]:
    """"loss" (mean of the batch losses), "loss_per_example" and "last_batch_loss" (the Keras
    figure), reading this process's batch losses from the device once; ``group``: every
    process's batch losses gathered in batch order."""
    mine = (torch.stack(losses).cpu().numpy().astype(np.float64) if losses
            else np.zeros(0, np.float64))
    values = group.all_gather(mine)
    return {"loss": float(values.mean()), "loss_per_example": per_example(stage, values, sizes),
            "last_batch_loss": float(values[-1])}


@torch.no_grad()
def validate_retrieval(model: RetrievalModel, task: Retrieval, test: Batch, corpus: Batch,
                       config: Config, group: Group = SingleProcess()) -> dict[str, float]:
    """FactorizedTopK over the whole corpus + the task loss of the test batches
    (``eval_batch_size``, in split order, as the seed's ``cached_test``). With a ``group``,
    each process takes its share of the batches (:func:`_my_batches`); hit counts are summed
    and batch losses gathered, so every process gets the single-process figures."""
    model.eval()
    bs, ks = config.eval.eval_batch_size, tuple(config.eval.top_ks)
    n = num_rows(test)
    if n == 0:
        raise ValueError("factorized_top_k: no queries to evaluate")
    mine, sizes = _my_batches(test, bs, group)
    corpus_emb = _in_batches(model.candidate_model, corpus, bs)
    hits = np.zeros(len(ks), dtype=np.int64)
    if num_rows(mine):
        queries = _in_batches(model.query_model, mine, bs)
        truths = _in_batches(model.candidate_model, mine, bs)
        hits = factorized_top_k_hits(queries, truths, corpus_emb, ks, chunk=bs).cpu().numpy()
    hits = group.all_sum(hits)
    out = {TOP_K_METRIC.format(k): int(h) / n for k, h in zip(ks, hits)}
    losses = [retrieval_loss(model, task, b, config.task.use_sampling_probability)
              for b in batch_iter(mine, bs)]
    out.update(_loss_values("retrieval", losses, sizes, group))
    model.train()
    return out


@torch.no_grad()
def validate_ranking(model: RankingModel, task: Ranking, test: Batch, config: Config,
                     group: Group = SingleProcess()) -> dict[str, float]:
    """Binary accuracy over the test split + the batch losses (see :func:`_loss_values`);
    ``group`` as :func:`validate_retrieval`."""
    model.eval()
    mine, sizes = _my_batches(test, config.eval.eval_batch_size, group)
    losses = []
    correct = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for b in batch_iter(mine, config.eval.eval_batch_size):
        loss, predictions = ranking_loss(model, task, b)
        losses.append(loss)
        correct += binary_accuracy(b["label"], predictions).sum(dtype=torch.float64)
    model.train()
    correct = group.all_sum(np.array([float(correct)]))[0]
    return {"binary_accuracy": float(correct) / num_rows(test),
            **_loss_values("ranking", losses, sizes, group)}


# --- the two stages -------------------------------------------------------------------------------

def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def split_tensors(dataset: Dataset, rows: np.ndarray, device: torch.device,
                  sampling: Optional[np.ndarray] = None,
                  extras: Optional[Mapping[str, np.ndarray]] = None) -> Batch:
    """Encoded features (+ label, + the logQ column when given, + ``extras``: the recipes'
    query columns of every rating row, ``twostage.recipes.query_columns``: the histories
    [N, H], the user features [N] str, encoded to ids) of ``rows``, on ``device``. No
    title_tokens: the towers gather a title's tokens from their table by title_index
    (``MovieModel.tokens``), so the split costs 48 bytes a rating on the device, not 48 + 8 L."""
    arrays = dataset.encoded(rows)
    if sampling is not None:
        arrays[SAMPLING_PROBABILITY] = sampling[rows]
    if extras:
        picked = {key: np.asarray(value)[rows] for key, value in extras.items()}
        if HISTORY in picked:
            arrays[HISTORY] = picked[HISTORY]
        arrays.update(user_feature_ids(picked))
    return to_tensors(arrays, device)


def _check_train_size(dataset: Dataset, what: str) -> None:
    if len(dataset.split.train) == 0:
        raise ValueError(f"cannot fit the {what} model: the training split is empty "
                         "(check the data and config.data.train_fraction)")


def _plan(dataset: Dataset, config: Config) -> BatchPlan:
    return BatchPlan(dataset.split.train, config.train.batch_size, config.seed)


def _parallel(group: Optional[TorchGroup], stage: str, loss, config: Config
              ) -> Optional[DataParallel]:
    if group is None or group.size == 1:
        return None
    return DataParallel(group, stage, loss, config.distributed.cross_process_negatives)


def retrieval_parts(model: RetrievalModel, dataset: Dataset, config: Config, *,
                    task: Optional[Retrieval] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, validate: bool = True,
                    parallel: Optional[TorchGroup] = None,
                    recipe: Optional[RecipeData] = None) -> tuple[StageParts, Batch]:
    """What :func:`fit` needs to train the towers -> (parts, the training split's tensors on
    the model's device, with the logQ column when ``config.task.use_sampling_probability`` and
    the recipes' query columns: histories, user features). ``parallel``: train over its processes
    (``config.distributed.cross_process_negatives``). ``recipe``: the genre / history lookups
    (default: ``RecipeData.from_dataset(dataset, config)``), attached to the model."""
    _check_train_size(dataset, "retrieval")
    task = task or make_retrieval_task(config)
    device = _model_device(model)
    logq = config.task.use_sampling_probability
    sampling = None
    if logq:
        from twostage.sampling import candidate_sampling_probability
        sampling = candidate_sampling_probability(dataset)
    recipe = recipe if recipe is not None else RecipeData.from_dataset(dataset, config)
    attach_recipe_data(model, recipe)
    extras = query_columns(recipe, dataset, config)
    train = split_tensors(dataset, dataset.split.train, device, sampling, extras)
    group = _parallel(parallel, "retrieval", with_precision(functools.partial(
        sharded_retrieval_loss, model, task, use_sampling_probability=logq,
        negatives=config.distributed.cross_process_negatives), config, device), config)
    check = None
    if validate and len(dataset.split.test):
        test = split_tensors(dataset, validation_rows(dataset.split.test, config), device,
                             sampling, extras)
        corpus = to_tensors(dataset.corpus_features, device, keys=("title_index", "title_tokens"))
        where = SingleProcess() if group is None else group.group
        check = functools.partial(validate_retrieval, model, task, test, corpus, config, where)
    parts = StageParts("retrieval", model, optimizer or make_optimizer(model, config),
                       loss=with_precision(functools.partial(retrieval_loss, model, task,
                                                             use_sampling_probability=logq),
                                           config, device),
                       validate=check, parallel=group,
                       extras=negative_sampler(dataset, config, device))
    return parts, train


def negative_sampler(dataset: Dataset, config: Config, device: torch.device
                     ) -> Optional[Callable[[int, int], list[Batch]]]:
    """``StageParts.extras`` of ``config.task.mixed_negatives`` (None when 0): (epoch, steps)
    -> per step the sampled titles' candidate inputs (``negative_``-prefixed, gathered on the
    device from one table of every title) and their sampling probabilities, the ids of
    ``twostage.recipes.epoch_negatives`` (what the TFRS backend is fed); one copy per epoch."""
    n = config.task.mixed_negatives
    if not n:
        return None
    table = title_table(dataset.spec, device)
    num_titles = len(dataset.spec.title_vocab)
    probability = torch.from_numpy(negative_sampling_probability(num_titles, n)).to(device)

    def sample(epoch: int, steps: int) -> list[Batch]:
        ids = torch.from_numpy(epoch_negatives(num_titles, n, config.seed, epoch, steps))
        out = []
        for row in ids.to(device).unbind(0):
            extra = {NEGATIVE_PREFIX + k: v.index_select(0, row) for k, v in table.items()}
            extra[NEGATIVE_PROBABILITY] = probability
            out.append(extra)
        return out
    return sample


def ranking_parts(model: RankingModel, dataset: Dataset, config: Config, *,
                  task: Optional[Ranking] = None,
                  optimizer: Optional[torch.optim.Optimizer] = None, validate: bool = True,
                  parallel: Optional[TorchGroup] = None) -> tuple[StageParts, Batch]:
    """What :func:`fit` needs to train the ranking model (see :func:`retrieval_parts`)."""
    _check_train_size(dataset, "ranking")
    task = task or make_ranking_task(config)
    device = _model_device(model)
    train = split_tensors(dataset, dataset.split.train, device)
    group = _parallel(parallel, "ranking", with_precision(functools.partial(
        sharded_ranking_loss, model, task, negatives=config.distributed.cross_process_negatives),
        config, device), config)
    check = None
    if validate and len(dataset.split.test):
        test = split_tensors(dataset, validation_rows(dataset.split.test, config), device)
        where = SingleProcess() if group is None else group.group
        check = functools.partial(validate_ranking, model, task, test, config, where)
    parts = StageParts("ranking", model, optimizer or make_optimizer(model, config),
                       loss=with_precision(functools.partial(ranking_loss, model, task), config,
                                           device),
                       validate=check, metrics=[BinaryAccuracy()], parallel=group)
    return parts, train


def fit_retrieval(model: RetrievalModel, dataset: Dataset, config: Config,
                  epochs: Optional[int] = None, *,
                  epochs_done: Optional[dict[str, int]] = None,
                  on_epoch: Optional[EpochCallback] = None,
                  parallel: Optional[TorchGroup] = None,
                  recipe: Optional[RecipeData] = None,
                  optimizer: Optional[torch.optim.Optimizer] = None, validate: bool = True,
                  task: Optional[Retrieval] = None) -> History:
    """Train the towers on ``dataset.split.train`` (the model's device); validate on the test
    split (FactorizedTopK + loss) every ``config.train.validation_freq`` epochs and after the
    last (the twin of ``tfrs_impl.train.fit_retrieval``, same arguments but ``task``).

    Args:
        epochs: default ``config.train.retrieval_epochs``.
        epochs_done: epochs run so far per stage; the batch order resumes there, and it is
            advanced after each epoch (:func:`fit`).
        on_epoch: ``on_epoch(stage, epoch, history)`` after each epoch.
        parallel: the TorchGroup to train over (every rank calls this with the same
            arguments), or None for one process.
        recipe: the genre / history lookups (default ``RecipeData.from_dataset``).
        optimizer: default ``make_optimizer(model, config)``; validate: False skips it.
        task: the Retrieval task (torch only: TFRS's model holds its task); default
            ``make_retrieval_task(config)``.
    Returns:
        The History of the fit.
    """
    parts, train = retrieval_parts(model, dataset, config, task=task, optimizer=optimizer,
                                   validate=validate, parallel=parallel, recipe=recipe)
    epochs = config.train.retrieval_epochs if epochs is None else epochs
    return fit(parts, train, _plan(dataset, config), config, epochs=epochs,
               epochs_done=epochs_done, on_epoch=on_epoch)


def fit_ranking(model: RankingModel, dataset: Dataset, config: Config,
                epochs: Optional[int] = None, *,
                epochs_done: Optional[dict[str, int]] = None,
                on_epoch: Optional[EpochCallback] = None,
                parallel: Optional[TorchGroup] = None,
                optimizer: Optional[torch.optim.Optimizer] = None, validate: bool = True,
                task: Optional[Ranking] = None) -> History:
    """Train the ranking model on the training labels (arguments as :func:`fit_retrieval`;
    ``epochs`` default ``config.train.ranking_epochs``). ``metrics["binary_accuracy"][e]`` is
    the epoch's running training accuracy (Keras resets metrics at each epoch start and the
    seed's Ranking task updates BinaryAccuracy in every train step); validation: loss and
    binary accuracy."""
    parts, train = ranking_parts(model, dataset, config, task=task, optimizer=optimizer,
                                 validate=validate, parallel=parallel)
    epochs = config.train.ranking_epochs if epochs is None else epochs
    return fit(parts, train, _plan(dataset, config), config, epochs=epochs,
               epochs_done=epochs_done, on_epoch=on_epoch)
