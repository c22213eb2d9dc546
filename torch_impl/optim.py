"""Keras' Adagrad as a torch optimizer, made from the config, and its accumulators by Keras name.

tf_keras/src/optimizers/adagrad.py ``Adagrad.build`` / ``update_step`` and optimizer.py
``apply_gradients`` (tf_keras 2.21): accumulators start at ``initial_accumulator_value`` (0.1);
per step ``acc += g * g`` then ``var -= lr * g / sqrt(acc + epsilon)`` (epsilon INSIDE the square
root, 1e-7; torch's Adagrad puts it outside and starts at 0). Embedding gradients arrive as
``IndexedSlices`` whose duplicate indices ``apply_gradients`` sums first
(``_deduplicate_sparse_grad``: tf.unique + unsorted_segment_sum), so the sparse update equals the
dense update of the summed gradient on the touched rows, and untouched rows (zero gradient) do
not move in either. Verified with tf_keras 2.21 (gather [1, 1, 2], one step).

Checkpoints store the accumulators by the Keras weight name of their parameter (Dense kernels
[in, out], see ``torch_impl.models.keras_weight_names``), as ``tfrs_impl.optim`` does, so a
resumed run of either backend continues the same optimizer state.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from twostage.config import Config, TrainConfig, section_of

from .models import assign_from_keras, to_keras

ACCUMULATOR = "accumulator"  # the per-parameter state key (as torch.optim.Adagrad's "sum")


def _without_dynamo_import(name: str) -> Callable:
    """``torch.optim.Optimizer.<name>`` without its ``torch._disable_dynamo`` wrapper while
    ``torch._dynamo`` is not loaded.

    The wrapper imports ``torch._dynamo`` (0.8 s, and it probes for TensorFlow) on its first
    call, only to mark the method as not to be traced; no graph is being traced before dynamo is
    loaded, so the plain method does the same. Once something loaded dynamo (``--compile``),
    the wrapped method runs, as in torch.

    Args:
        name: a method of ``torch.optim.Optimizer`` (``add_param_group``, ``zero_grad``, ...).
    Returns:
        the method to put on the subclass.
    """
    wrapped = getattr(torch.optim.Optimizer, name)
    plain = getattr(wrapped, "__wrapped__", wrapped)  # functools.wraps of torch/_compile.py

    @functools.wraps(plain)
    def method(self, *args, **kwargs):
        return (wrapped if "torch._dynamo" in sys.modules else plain)(self, *args, **kwargs)
    return method


class KerasAdagrad(torch.optim.Optimizer):
    """tf.keras.optimizers.Adagrad (tf_keras 2.21) as a torch optimizer.

    ``acc = acc + g * g``; ``p = p - (lr * g) / sqrt(acc + epsilon)``, with the same float32
    operations in the same order as Keras. Dense gradients use ``torch._foreach_*`` kernels;
    sparse gradients (``nn.Embedding(sparse=True)``) are coalesced on the CPU (duplicates summed,
    as Keras' ``_deduplicate_sparse_grad``) and update only their rows. On the CPU, dense
    gradients of 2-D tables with at least ``row_sparse_min_rows`` rows (the embedding tables)
    update only their rows with a non-zero gradient, when those are at most half: the same
    numbers (a zero-gradient row does not move in Keras either), without 7 passes over a mostly
    untouched 10,000-row token table. Accumulators exist from construction (as Keras' ``build``),
    so ``state_dict`` is complete before the first step.

    The update never reads a tensor on the host for a parameter off the CPU, so a training step
    on an accelerator queues its kernels without waiting for them (see :func:`_row_sparse_update`).
    Building it, ``zero_grad`` and the state dicts never import ``torch._dynamo``
    (:func:`_without_dynamo_import`).
    """

    add_param_group = _without_dynamo_import("add_param_group")
    zero_grad = _without_dynamo_import("zero_grad")
    state_dict = _without_dynamo_import("state_dict")
    load_state_dict = _without_dynamo_import("load_state_dict")

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
                self.state[p][ACCUMULATOR] = torch.full_like(
                    p, group["initial_accumulator_value"], memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["epsilon"]
            params, grads, accs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, acc = p.grad, self.state[p][ACCUMULATOR]
                if grad.is_sparse and grad.device.type == "cpu":
                    _sparse_update(p, grad, acc, lr, eps)
                    continue
                if grad.is_sparse:  # off the CPU: coalesce would size its output on the host
                    grad = grad.to_dense()  # duplicates summed, as Keras; then the dense update
                if _row_sparse_worthwhile(p, group["row_sparse_min_rows"]) and \
                        _row_sparse_update(p, grad, acc, lr, eps):
                    continue
                params.append(p)
                grads.append(grad)
                accs.append(acc)
            if params:
                (_foreach_update if group["foreach"] else _loop_update)(
                    params, grads, accs, lr, eps)
        return loss


def _row_sparse_worthwhile(p: torch.Tensor, min_rows: int | None) -> bool:
    """Only CPU tables of at least ``min_rows`` rows take the row-sparse path: finding the
    touched rows (``nonzero``) needs their count on the host, which on an accelerator would
    block the host until the backward pass has run, every step; there the dense update of a
    10,000-row table costs microseconds anyway. Both paths give bitwise-equal results."""
    return min_rows is not None and p.device.type == "cpu" and p.dim() == 2 and \
        p.shape[0] >= min_rows


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
    most rows have one. Exact: on an all-zero row Keras' update is acc + 0 and p - 0. CPU only
    (``nonzero`` sizes its output on the host; see :func:`_row_sparse_worthwhile`)."""
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


def make_optimizer(model: nn.Module, config: Config | TrainConfig) -> KerasAdagrad:
    """Adagrad over ``model``'s parameters with the train section's learning rate and Keras'
    accumulator start and epsilon (a whole Config is accepted; tfrs_impl.optim.make_optimizer
    builds the Keras one from the same fields). TypeError for anything else."""
    train = section_of(config, TrainConfig, "make_optimizer")
    return KerasAdagrad(model.parameters(), lr=train.learning_rate,
                        initial_accumulator_value=train.initial_accumulator_value,
                        epsilon=train.adagrad_epsilon)


# --- accumulators by Keras weight name -----------------------------------------------------------

def _accumulators_by_parameter(optimizer: KerasAdagrad, model: nn.Module
                               ) -> dict[str, torch.Tensor]:
    """{torch parameter name: its accumulator}; every parameter of ``model`` must be optimised
    by ``optimizer``."""
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if not state or ACCUMULATOR not in state:
            raise KeyError(f"parameter {name} of {type(model).__name__} has no Adagrad "
                           "accumulator: build the optimizer with make_optimizer(model, config)")
        out[name] = state[ACCUMULATOR]
    return out


def get_accumulators(optimizer: KerasAdagrad, model: nn.Module, prefix: str = ""
                     ) -> dict[str, np.ndarray]:
    """{Keras weight name: accumulator} as float32 numpy copies in Keras layout (the
    accumulator of a Dense kernel is [in, out], like the kernel)."""
    return to_keras(_accumulators_by_parameter(optimizer, model), model, prefix)


def set_accumulators(optimizer: KerasAdagrad, model: nn.Module,
                     accumulators: Mapping[str, np.ndarray], prefix: str = "") -> None:
    """Assign every accumulator from Keras-layout arrays; names and shapes must match exactly
    (KeyError / ValueError otherwise)."""
    assign_from_keras(_accumulators_by_parameter(optimizer, model), model, accumulators, prefix,
                      what="accumulator")
