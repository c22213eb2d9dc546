"""benchmarks.floor's recorder and clock on a toy training loop whose steps differ in size."""
from __future__ import annotations

import pytest
import torch

from benchmarks.floor import StepClock, StepRecorder, floor_of
from torch_impl.optim import KerasAdagrad


def toy_steps(sizes: list[int]) -> None:
    """One Adagrad step per batch size: embedding [20, 4] -> Linear(4, 3) -> scores [B, B]."""
    torch.manual_seed(0)
    table, layer = torch.nn.Embedding(20, 4), torch.nn.Linear(4, 3)
    optimizer = KerasAdagrad([*table.parameters(), *layer.parameters()], lr=0.1)
    for size in sizes:
        optimizer.zero_grad()
        x = layer(table(torch.arange(size) % 20))
        torch.logsumexp(x @ x.T, dim=1).sum().backward()
        optimizer.step()


def test_the_recorder_keeps_only_the_target_steps_floor_ops():
    """Step 1 of batches 5, 7, 9: its products are those of batch 7 only, the largest the
    [7, 7] scores; embedding gathers/backward and the Adagrad update are there. Fails if the
    recorder ignores its target step or drops a kind (e.g. addmm or _foreach_*)."""
    with StepRecorder(target=1) as recorder:
        toy_steps([5, 7, 9])
    assert recorder.steps == 3
    shapes = [(func.overloadpacket.__name__,
               tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
              for kind, func, args, _ in recorder.ops if kind == "matmul"]
    assert ("addmm", ((3,), (7, 4), (4, 3))) in shapes                # Linear forward
    assert ("mm", ((7, 3), (3, 7))) in shapes                         # the scores
    assert all(7 in dims for _, arrays in shapes for dims in arrays if len(dims) == 2
               and dims not in {(4, 3), (3, 4)}), shapes
    names = {func.overloadpacket.__name__ for kind, func, _, _ in recorder.ops
             if kind == "gather_update"}
    assert {"embedding", "embedding_dense_backward"} <= names
    assert any(n.startswith("_foreach_") for n in names), names
    assert max(recorder.product_shapes, key=lambda s: s[0] * s[-1]) == (7, 7)


def test_the_floor_is_its_parts_and_only_retrieval_has_a_softmax():
    """Fails if the softmax is timed for a stage without one, or the sum leaves a part out."""
    with StepRecorder(target=1) as recorder:
        toy_steps([5, 7, 9])
    retrieval = floor_of(recorder, "retrieval", threads=1, repeats=1)
    ranking = floor_of(recorder, "ranking", threads=1, repeats=1)
    assert retrieval["softmax_shape"] == [7, 7] and retrieval["softmax"] > 0
    assert ranking["softmax"] == 0 and ranking["softmax_shape"] is None
    for row in (retrieval, ranking):
        assert row["floor_s"] == pytest.approx(row["matmul"] + row["softmax"]
                                               + row["gather_update"], rel=1e-12)


def test_the_clock_times_the_intervals_between_steps():
    """Three steps give two intervals; one step is an error (no interval to time)."""
    with StepClock() as clock:
        toy_steps([5, 7, 9])
    assert len(clock.stamps) == 3 and clock.median_s() > 0
    assert clock.threads() == torch.get_num_threads()
    with StepClock() as one:
        toy_steps([5])
    with pytest.raises(ValueError, match="two optimizer steps"):
        one.median_s()
