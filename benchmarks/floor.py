"""The measured floor of a torch training step on this machine (``python -m benchmarks.speed``).

A step's floor is what it cannot do without, each piece timed alone at the step's own sizes:

- ``matmul``: every matrix product of the step (``mm``, ``addmm``, ``bmm``, ... forward and
  backward), replayed on copies of its inputs;
- ``softmax`` (stages with an in-batch softmax: retrieval): ``torch.softmax`` over the step's
  largest matrix-product output (the [B, B] scores), forward, and the cross-entropy's gradient
  ``(softmax - labels) * upstream`` as one in-place pass: the unfused minimum;
- ``gather_update``: the embedding gathers and their backward (``embedding``,
  ``_embedding_bag``, ``index_select``, ``index_copy_``, ...) and the Adagrad arithmetic
  (``_foreach_*``), replayed as recorded.

What the step does beyond these (element-wise passes, reductions, allocation, autograd and
Python bookkeeping, thread hand-offs) is the distance ``step / floor`` measures. The step is
recorded op by op by a ``TorchDispatchMode`` between two optimizer steps (a global optimizer
step hook counts them), so whatever the training loop runs, its own ops are what is replayed.
"""
from __future__ import annotations

import statistics
import time
import timeit
from typing import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

MATMUL = {"mm", "addmm", "bmm", "baddbmm", "addmv", "mv", "dot", "_addmm_activation"}
GATHER_UPDATE = {"embedding", "embedding_dense_backward", "_embedding_bag",
                 "_embedding_bag_forward_only", "_embedding_bag_backward",
                 "_embedding_bag_dense_backward", "_embedding_bag_sparse_backward",
                 "index_select", "index", "index_copy_", "index_add_", "index_put_", "gather",
                 "scatter_add_"}
SOFTMAX_STAGES = ("retrieval",)
KINDS = ("matmul", "softmax", "gather_update")


def kind_of(func) -> str | None:
    """The floor class of an aten op (None: not part of the floor)."""
    name = func.overloadpacket.__name__
    if name in MATMUL:
        return "matmul"
    if name in GATHER_UPDATE or name.startswith("_foreach_"):
        return "gather_update"
    return None


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


class StepRecorder(TorchDispatchMode):
    """Records the floor ops of optimizer step number ``target`` (0-based) with copies of their
    inputs taken before they run (in-place ops change them), and its matrix products' output
    shapes.

    Use as ``with StepRecorder(1) as r: backend.fit_retrieval(dataset, epochs=1)``; then
    ``r.ops``: [(kind, op, args, kwargs)], ``r.product_shapes``: [shape], ``r.steps``: steps
    seen.
    """

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target, self.steps = target, 0
        self.ops: list[tuple[str, Callable, tuple, dict]] = []
        self.product_shapes: list[tuple[int, ...]] = []
        self._hook = None

    def __enter__(self):
        self._hook = register_optimizer_step_post_hook(self._stepped)
        return super().__enter__()

    def __exit__(self, *exc):
        self._hook.remove()
        return super().__exit__(*exc)

    def _stepped(self, optimizer, args, kwargs) -> None:
        self.steps += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = kind_of(func) if self.steps == self.target else None
        if kind is not None:
            self.ops.append((kind, func, tree_map(_copy, args), tree_map(_copy, kwargs)))
        out = func(*args, **kwargs)
        if kind == "matmul":
            self.product_shapes.append(tuple(out.shape))
        return out


class StepClock:
    """Wall time between consecutive optimizer steps while in the block, and the torch thread
    count each step ran with: ``median_s()``, ``threads()``."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.thread_counts: list[int] = []
        self._hook = None

    def __enter__(self) -> "StepClock":
        self._hook = register_optimizer_step_post_hook(self._stepped)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()

    def _stepped(self, optimizer, args, kwargs) -> None:
        self.stamps.append(time.perf_counter())
        self.thread_counts.append(torch.get_num_threads())

    def median_s(self) -> float:
        """Median seconds from one step's end to the next's (the first step's set-up is not
        in any interval; ValueError with fewer than two steps)."""
        if len(self.stamps) < 2:
            raise ValueError("need at least two optimizer steps to time one")
        return statistics.median(b - a for a, b in zip(self.stamps, self.stamps[1:]))

    def threads(self) -> int:
        return int(statistics.median_low(self.thread_counts))


def median_seconds(fn: Callable[[], None], repeats: int, warmup: bool = False) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``, after one untimed call if
    ``warmup`` (allocator, first touch of pages, BLAS buffers)."""
    if warmup:
        fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def softmax_floor_s(shape: tuple[int, ...], repeats: int) -> float:
    """Seconds of the unfused minimal softmax cross-entropy at ``shape`` [Q, C]: the softmax
    (one ATen kernel) forward, then ``(softmax - labels) * upstream`` in place."""
    scores = torch.randn(shape)
    upstream = torch.ones(shape[0], 1)

    def run() -> None:
        p = torch.softmax(scores, dim=1)
        p.diagonal().sub_(1.0)
        p.mul_(upstream)
    return median_seconds(run, repeats, warmup=True)


def replay_s(ops: list[tuple[str, Callable, tuple, dict]], repeats: int) -> float:
    """Median seconds of running ``ops`` once each, in order, on their recorded inputs."""
    def run() -> None:
        for _, func, args, kwargs in ops:
            func(*args, **kwargs)
    return median_seconds(run, repeats, warmup=True) if ops else 0.0


def floor_of(recorder: StepRecorder, stage: str, threads: int, repeats: int = 7) -> dict:
    """{kind: seconds} of the recorded step's floor, and their sum under "floor_s", timed with
    ``threads`` torch threads (those the step ran with)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {kind: replay_s([op for op in recorder.ops if op[0] == kind], repeats)
               for kind in ("matmul", "gather_update")}
        largest = max(recorder.product_shapes, key=lambda s: torch.Size(s).numel(),
                      default=None)
        out["softmax"] = (softmax_floor_s(largest, repeats)
                          if stage in SOFTMAX_STAGES and largest is not None else 0.0)
    finally:
        torch.set_num_threads(before)
    out["floor_s"] = sum(out[k] for k in KINDS)
    out["softmax_shape"] = list(largest) if out["softmax"] else None
    return out


def stage_floor(backend, dataset, stage: str, repeats: int = 7) -> dict:
    """One stage's step against its floor, on the torch ``backend`` (trained further: two
    timed epochs, then one recorded): {"step_s", "floor_s", per kind, "ratio", "threads",
    "steps_per_epoch"}."""
    fit = getattr(backend, f"fit_{stage}")
    with StepClock() as clock:
        fit(dataset, epochs=2)
    steps_per_epoch = len(clock.stamps) // 2
    target = 1 if steps_per_epoch > 1 else 0   # step 0 also holds the epoch's set-up
    with StepRecorder(target) as recorder:
        fit(dataset, epochs=1)
    floor = floor_of(recorder, stage, clock.threads(), repeats)
    step = clock.median_s()
    return {"step_s": step, **floor, "ratio": step / floor["floor_s"],
            "threads": clock.threads(), "steps_per_epoch": steps_per_epoch}
