"""Keras' Adagrad, the training loops of both stages, and the TFRS validation metrics, in torch.

Optimizer (tf_keras/src/optimizers/adagrad.py ``Adagrad.update_step`` and optimizer.py
``apply_gradients``): accumulators start at ``initial_accumulator_value`` (0.1); per step
``acc += g * g`` then ``var -= lr * g / sqrt(acc + epsilon)`` (epsilon INSIDE the square root,
1e-7; torch's Adagrad puts it outside and starts at 0). Embedding gradients arrive as
``IndexedSlices`` whose duplicate indices ``apply_gradients`` sums first
(``_deduplicate_sparse_grad``: tf.unique + unsorted_segment_sum), so the sparse update equals the
dense update of the summed gradient on the touched rows, and untouched rows (zero gradient) do
not move in either. Verified with tf_keras 2.21 (gather [1, 1, 2], one step).

Loop (tensorflow_recommenders/models/base.py ``train_step``): loss = task loss (no
regularisation losses here), gradients of it, one optimizer step per batch. History:
``loss[e]`` = mean of the epoch's step losses (as tfrs_impl records it). NOTE: Keras' own
History of a TFRS model records the LAST step's loss as "loss" (``train_step`` returns the raw
batch loss and ``fit`` keeps the last step's logs), and ``evaluate`` likewise reports the last
test batch's loss as "val_loss"; here ``val["loss"]`` is the mean over the evaluation batches.
Per-step losses are available through the ``on_step`` callback of the fit functions; the
validate_* functions also return "last_batch_loss" (the Keras figure), kept out of History so
both backends report the same keys.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from twostage.data.split import epoch_batches
from twostage.backend import History
from twostage.config import Config
from twostage.dataset import Dataset

from .features import SAMPLING_PROBABILITY, Batch, batch_iter, num_rows, select_rows, to_tensors
from .models import RankingModel, RetrievalModel
from .tasks import (Ranking, Retrieval, binary_accuracy, make_ranking_task,
                    make_retrieval_task)


# --- allocator -----------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h mallopt parameters
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``), once per process.

    Every training step allocates the same few-MB activations (a [2048, 2048] score matrix is
    16 MB); glibc serves blocks that large with fresh mmap'd pages and trims freed heap back to
    the OS, so each step pays page faults again. Raising the mmap threshold to 256 MB and the
    trim threshold to 1 GB makes the allocations reuse warm memory: measured -25% time per step
    (ranking 20.3 -> 15.3 ms, retrieval 60 -> 46 ms, one thread, shared 2-core VM). Linux/glibc
    only; opt out with TWOSTAGE_MALLOC_TUNING=0. Returns whether the settings were applied.
    """
    global _malloc_tuned
    if _malloc_tuned or os.environ.get("TWOSTAGE_MALLOC_TUNING", "1") == "0" or \
            not sys.platform.startswith("linux"):
        return _malloc_tuned
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        ok = False
    _malloc_tuned = ok
    return ok


# --- optimizer ------------------------------------------------------------------------------------

class KerasAdagrad(torch.optim.Optimizer):
    """tf.keras.optimizers.Adagrad (tf_keras 2.21) as a torch optimizer.

    ``acc = acc + g * g``; ``p = p - (lr * g) / sqrt(acc + epsilon)``, with the same float32
    operations in the same order as Keras. Dense gradients use ``torch._foreach_*`` kernels;
    sparse gradients (``nn.Embedding(sparse=True)``) are coalesced (duplicates summed, as Keras'
    ``_deduplicate_sparse_grad``) and update only their rows. Dense gradients of 2-D tables with
    at least ``row_sparse_min_rows`` rows (the embedding tables) update only their rows with a
    non-zero gradient, when those are at most half: the same numbers (a zero-gradient row does
    not move in Keras either), without 7 passes over a mostly untouched 10,000-row token table.
    Accumulators exist from construction (as Keras' ``build``), so ``state_dict`` is complete
    before the first step.
    """

    def __init__(self, params: Iterable, lr: float = 0.001,
                 initial_accumulator_value: float = 0.1, epsilon: float = 1e-7,
                 foreach: bool = True, row_sparse_min_rows: int | None = 512) -> None:
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        if initial_accumulator_value < 0:
            raise ValueError(f"initial_accumulator_value={initial_accumulator_value} must be >= 0")
        defaults = dict(lr=lr, initial_accumulator_value=initial_accumulator_value,
                        epsilon=epsilon, foreach=foreach, row_sparse_min_rows=row_sparse_min_rows)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["accumulator"] = torch.full_like(
                    p, group["initial_accumulator_value"], memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["epsilon"]
            min_rows = group["row_sparse_min_rows"]
            params, grads, accs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc = self.state[p]["accumulator"]
                if p.grad.is_sparse:
                    _sparse_update(p, p.grad, acc, lr, eps)
                elif min_rows is not None and p.dim() == 2 and p.shape[0] >= min_rows and \
                        _row_sparse_update(p, p.grad, acc, lr, eps):
                    pass
                else:
                    params.append(p)
                    grads.append(p.grad)
                    accs.append(acc)
            if params:
                (_foreach_update if group["foreach"] else _loop_update)(
                    params, grads, accs, lr, eps)
        return loss


def _foreach_update(params: list, grads: list, accs: list, lr: float, eps: float) -> None:
    """Keras' dense update_step, vectorised over all parameters. No addcmul/addcdiv: a fused
    multiply-add would round once where Keras rounds twice."""
    torch._foreach_add_(accs, torch._foreach_mul(grads, grads))       # acc += g * g
    denom = torch._foreach_add(accs, eps)
    torch._foreach_sqrt_(denom)                                        # sqrt(acc + eps)
    update = torch._foreach_mul(grads, lr)                             # lr * g
    torch._foreach_div_(update, denom)
    torch._foreach_sub_(params, update)                                # p -= lr * g / denom


def _loop_update(params: list, grads: list, accs: list, lr: float, eps: float) -> None:
    for p, g, acc in zip(params, grads, accs):
        acc.add_(g * g)
        p.sub_((g * lr) / torch.sqrt(acc + eps))


def _row_sparse_update(p: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor, lr: float,
                       eps: float) -> bool:
    """The dense update restricted to rows with a non-zero gradient; False (nothing done) when
    most rows have one. Exact: on an all-zero row Keras' update is acc + 0 and p - 0."""
    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    if rows.numel() > p.shape[0] // 2:
        return False
    g = grad.index_select(0, rows)
    a = acc.index_select(0, rows).add_(g * g)
    acc.index_copy_(0, rows, a)
    p.index_copy_(0, rows, p.index_select(0, rows).sub_((g * lr).div_(a.add_(eps).sqrt_())))
    return True


def _sparse_update(p: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor, lr: float,
                   eps: float) -> None:
    """Keras' IndexedSlices branch after deduplication (coalesce sums duplicate rows)."""
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    acc.index_add_(0, rows, values * values)
    denom = torch.sqrt(acc.index_select(0, rows) + eps)
    p.index_add_(0, rows, (values * (-lr)) / denom)


def make_optimizer(model: nn.Module, config: Config) -> KerasAdagrad:
    """Adagrad(config.learning_rate) with Keras' defaults from the config."""
    return KerasAdagrad(model.parameters(), lr=config.learning_rate,
                        initial_accumulator_value=config.initial_accumulator_value,
                        epsilon=config.adagrad_epsilon)


# --- losses of one batch --------------------------------------------------------------------------

def retrieval_loss(model: RetrievalModel, task: Retrieval, batch: Mapping[str, torch.Tensor],
                   use_sampling_probability: bool = False) -> torch.Tensor:
    """The seed's ``MovielensRetrievalModel.compute_loss``: task(query_model(batch),
    candidate_model(batch)); candidate ids = ``title_index`` when the task removes accidental
    hits; ``candidate_sampling_probability`` [B] and ``sample_weight`` [B] are taken from the
    batch when used / present."""
    query = model.query_model(batch)
    candidate = model.candidate_model(batch)
    probability = None
    if use_sampling_probability:
        if SAMPLING_PROBABILITY not in batch:
            raise KeyError(f"use_sampling_probability needs a '{SAMPLING_PROBABILITY}' column "
                           "(twostage.sampling.candidate_sampling_probability(dataset))")
        probability = batch[SAMPLING_PROBABILITY]
    ids = batch["title_index"] if task.remove_accidental_hits else None
    return task(query, candidate, sample_weight=batch.get("sample_weight"),
                candidate_sampling_probability=probability, candidate_ids=ids)


def ranking_loss(model: RankingModel, task: Ranking, batch: Mapping[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's ``MovielensRankingModel.compute_loss`` -> (loss, probabilities [B, 1])."""
    logits = model.logits(batch)
    predictions = torch.sigmoid(logits)
    loss = task(batch["label"], predictions, logits=logits,
                sample_weight=batch.get("sample_weight"))
    return loss, predictions


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One ``tfrs.models.Model.train_step``: loss, gradients, optimizer step -> detached loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    return loss.detach()


# --- validation metrics ---------------------------------------------------------------------------

def factorized_top_k(query_embeddings: torch.Tensor, true_candidate_embeddings: torch.Tensor,
                     corpus_embeddings: torch.Tensor, ks: Sequence[int] = (1, 5, 10, 50, 100),
                     chunk: int = 4096) -> dict[str, float]:
    """TFRS FactorizedTopK, score-based (metrics/factorized_top_k.py ``update_state`` without
    candidate ids): positive score = rowwise ``sum(q * c_true)``; a query is a hit at k iff
    ``tf.math.in_top_k([positive, top-K corpus scores], 0, k)``, i.e. fewer than k corpus scores
    (``q @ corpus^T``) are STRICTLY greater than the positive score (ties favour the positive);
    in_top_k is False when a score it looks at is not finite (here: any score of the row).

    query/true_candidate [N, D], corpus [M, D] -> {"factorized_top_k/top_{k}_categorical_accuracy":
    mean over the N queries}.
    """
    n = query_embeddings.shape[0]
    if n == 0:
        raise ValueError("factorized_top_k: no queries to evaluate")
    hits = torch.zeros(len(ks), dtype=torch.int64, device=query_embeddings.device)
    kt = torch.tensor(list(ks), device=query_embeddings.device).unsqueeze(0)
    for start in range(0, n, chunk):
        q = query_embeddings[start: start + chunk]
        positive = (q * true_candidate_embeddings[start: start + chunk]).sum(dim=1, keepdim=True)
        scores = q @ corpus_embeddings.T
        greater = (scores > positive).sum(dim=1, keepdim=True)
        valid = torch.isfinite(positive) & torch.isfinite(scores).all(dim=1, keepdim=True)
        hits += ((greater < kt) & valid).sum(dim=0)
    return {f"factorized_top_k/top_{k}_categorical_accuracy": hits[i].item() / n
            for i, k in enumerate(ks)}


def _in_batches(fn: Callable[[Batch], torch.Tensor], tensors: Batch, batch_size: int
                ) -> torch.Tensor:
    return torch.cat([fn(b) for b in batch_iter(tensors, batch_size)], dim=0)


@torch.no_grad()
def validate_retrieval(model: RetrievalModel, task: Retrieval, test: Batch, corpus: Batch,
                       config: Config) -> dict[str, float]:
    """FactorizedTopK over the whole corpus + the task loss of the test batches
    (``eval_batch_size``, in split order, as the seed's ``cached_test``)."""
    model.eval()
    bs = config.eval_batch_size
    queries = _in_batches(model.query_model, test, bs)
    truths = _in_batches(model.candidate_model, test, bs)
    corpus_emb = _in_batches(model.candidate_model, corpus, bs)
    out = factorized_top_k(queries, truths, corpus_emb, config.top_ks, chunk=bs)
    losses = [retrieval_loss(model, task, b, config.use_sampling_probability).item()
              for b in batch_iter(test, bs)]
    out["loss"] = float(np.mean(losses))
    out["last_batch_loss"] = losses[-1]
    model.train()
    return out


@torch.no_grad()
def validate_ranking(model: RankingModel, task: Ranking, test: Batch, config: Config
                     ) -> dict[str, float]:
    """Binary accuracy over the test split + the batch losses (mean and last, see module doc)."""
    model.eval()
    losses, correct = [], 0.0
    for b in batch_iter(test, config.eval_batch_size):
        loss, predictions = ranking_loss(model, task, b)
        losses.append(loss.item())
        correct += binary_accuracy(b["label"], predictions).sum().item()
    model.train()
    return {"binary_accuracy": correct / num_rows(test), "loss": float(np.mean(losses)),
            "last_batch_loss": losses[-1]}


# --- training loops -------------------------------------------------------------------------------

def epoch_order(num_examples: int, config: Config, epoch: int, device: torch.device
                ) -> list[torch.Tensor]:
    """Batches of training positions for ``epoch`` (0-based, absolute): ``data.split.
    epoch_batches`` when ``config.shared_batches`` (the order the TFRS backend is fed), else a
    torch permutation seeded by (seed, epoch)."""
    if config.shared_batches:
        batches = epoch_batches(num_examples, config.batch_size, seed=config.seed, epoch=epoch)
        return [torch.from_numpy(b).to(device) for b in batches]
    seed = int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return list(order.to(device).split(config.batch_size))


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _split_tensors(dataset: Dataset, rows: np.ndarray, device: torch.device,
                   sampling: Optional[np.ndarray] = None) -> Batch:
    arrays = dataset.encoded(rows)
    if sampling is not None:
        arrays[SAMPLING_PROBABILITY] = sampling[rows]
    return to_tensors(arrays, device)


def _check_train_size(dataset: Dataset, what: str) -> None:
    if len(dataset.split.train) == 0:
        raise ValueError(f"cannot fit the {what} model: the training split is empty "
                         "(check the data and config.train_fraction)")


def _raise_non_finite(stage: str, step_losses: torch.Tensor, epoch: int) -> None:
    """FloatingPointError naming the first non-finite step (1-based epoch and step)."""
    bad = (~torch.isfinite(step_losses)).nonzero()
    if len(bad):
        step = int(bad[0, 0])
        raise FloatingPointError(
            f"{stage} loss became {step_losses[step].item()} at epoch {epoch} step {step + 1}; "
            "training diverged or an input is not finite (check for token-less titles with "
            "empty_title='nan', a too-high learning_rate, or non-finite features)")


def _progress(config: Config, stage: str, epoch: int, epochs: int, steps: int):
    return tqdm(total=steps, desc=f"{stage} epoch {epoch}/{epochs}", leave=False,
                disable=config.quiet, unit="step")


StepCallback = Callable[[int, int, float], None]


def _run_epoch(stage: str, step_fn: Callable[[Batch], torch.Tensor], train: Batch,
               batches: list[torch.Tensor], config: Config, epoch: int, epochs: int,
               on_step: Optional[StepCallback] = None) -> torch.Tensor:
    """Run one epoch -> step losses [S] (device tensor); raise on a non-finite loss.
    ``on_step(epoch, step, loss)`` (1-based) sees every step's loss (it syncs the device)."""
    device = batches[0].device
    step_losses = torch.empty(len(batches), dtype=torch.float32, device=device)
    with _progress(config, stage, epoch, epochs, len(batches)) as bar:
        for step, rows in enumerate(batches):
            step_losses[step] = step_fn(select_rows(train, rows))
            if on_step is not None:
                on_step(epoch, step + 1, step_losses[step].item())
            if not bar.disable:
                bar.update(1)
                if step % 10 == 9 or step == len(batches) - 1:
                    bar.set_postfix(loss=f"{step_losses[step].item():.4f}")
    _raise_non_finite(stage, step_losses, epoch)
    return step_losses


def _record_epoch(history: History, step_losses: torch.Tensor, seconds: float) -> None:
    history.loss.append(float(step_losses.double().mean()))
    history.epoch_seconds.append(seconds)


def _record_val(history: History, epoch: int, values: Mapping[str, float]) -> None:
    for name, value in values.items():
        if name == "last_batch_loss":
            continue  # kept out of History so both backends report the same keys
        history.val.setdefault(name, []).append((epoch, float(value)))


def _should_validate(local_epoch: int, epochs: int, config: Config) -> bool:
    return local_epoch % config.validation_freq == 0 or local_epoch == epochs


def fit_retrieval(model: RetrievalModel, dataset: Dataset, config: Config, *,
                  task: Optional[Retrieval] = None,
                  optimizer: Optional[torch.optim.Optimizer] = None,
                  epochs: Optional[int] = None, epoch_offset: int = 0,
                  validate: bool = True, on_step: Optional[StepCallback] = None) -> History:
    """Train the towers on ``dataset.split.train`` (the model's device); validate on the test
    split every ``config.validation_freq`` epochs and after the last.

    ``epoch_offset``: epochs already run (batch orders continue from there). History epochs in
    ``val`` are 1-based within this call; ``epoch_seconds`` time training only. ``on_step``:
    optional ``(epoch, step, loss)`` callback (e.g. step-by-step parity checks).
    """
    _check_train_size(dataset, "retrieval")
    tune_malloc()
    epochs = config.retrieval_epochs if epochs is None else epochs
    task = task or make_retrieval_task(config)
    optimizer = optimizer or make_optimizer(model, config)
    device = _model_device(model)
    sampling = None
    if config.use_sampling_probability:
        from twostage.sampling import candidate_sampling_probability
        sampling = candidate_sampling_probability(dataset)
    train = _split_tensors(dataset, dataset.split.train, device, sampling)
    test = _split_tensors(dataset, dataset.split.test, device, sampling)
    corpus = to_tensors(dataset.corpus_features, device, keys=("title_index", "title_tokens"))

    def step_fn(batch: Batch) -> torch.Tensor:
        return train_step(model, optimizer, lambda: retrieval_loss(
            model, task, batch, config.use_sampling_probability))

    history = History()
    model.train()
    for local in range(1, epochs + 1):
        start = time.perf_counter()
        batches = epoch_order(num_rows(train), config, epoch_offset + local - 1, device)
        losses = _run_epoch("retrieval", step_fn, train, batches, config, local, epochs, on_step)
        _record_epoch(history, losses, time.perf_counter() - start)
        if validate and len(dataset.split.test) and _should_validate(local, epochs, config):
            _record_val(history, local, validate_retrieval(model, task, test, corpus, config))
    return history


def fit_ranking(model: RankingModel, dataset: Dataset, config: Config, *,
                task: Optional[Ranking] = None,
                optimizer: Optional[torch.optim.Optimizer] = None,
                epochs: Optional[int] = None, epoch_offset: int = 0,
                validate: bool = True, on_step: Optional[StepCallback] = None) -> History:
    """Train the ranking model on the training labels; ``metrics["binary_accuracy"][e]`` is
    the epoch's running training accuracy (Keras resets metrics at each epoch start and the
    seed's Ranking task updates BinaryAccuracy in every train step); validation as
    :func:`fit_retrieval` with loss and binary accuracy."""
    _check_train_size(dataset, "ranking")
    tune_malloc()
    epochs = config.ranking_epochs if epochs is None else epochs
    task = task or make_ranking_task(config)
    optimizer = optimizer or make_optimizer(model, config)
    device = _model_device(model)
    train = _split_tensors(dataset, dataset.split.train, device)
    test = _split_tensors(dataset, dataset.split.test, device)
    correct = torch.zeros((), dtype=torch.float64, device=device)

    def step_fn(batch: Batch) -> torch.Tensor:
        def loss_fn() -> torch.Tensor:
            loss, predictions = ranking_loss(model, task, batch)
            correct.add_(binary_accuracy(batch["label"], predictions.detach()).sum())
            return loss
        return train_step(model, optimizer, loss_fn)

    history = History()
    model.train()
    n = num_rows(train)
    for local in range(1, epochs + 1):
        start = time.perf_counter()
        correct.zero_()
        batches = epoch_order(n, config, epoch_offset + local - 1, device)
        losses = _run_epoch("ranking", step_fn, train, batches, config, local, epochs, on_step)
        _record_epoch(history, losses, time.perf_counter() - start)
        history.metrics.setdefault("binary_accuracy", []).append(correct.item() / n)
        if validate and len(dataset.split.test) and _should_validate(local, epochs, config):
            _record_val(history, local, validate_ranking(model, task, test, config))
    return history
