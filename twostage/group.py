"""The processes a run is spread over, as the framework-free core sees them.

The pipeline shards the evaluation over the processes of a :class:`Group` and combines exact
pieces: integer hit counts are summed, per-row values are gathered in rank order, so every
figure equals the single-process one exactly. ``torch_impl.distributed.TorchGroup`` implements it
over torch.distributed; :class:`SingleProcess` is the default (and what the TFRS backend uses:
MirroredStrategy replicas live in one process).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Group(Protocol):
    """``rank`` in [0, size); collectives take and return numpy arrays on every process."""

    rank: int
    size: int

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the processes (same shape everywhere)."""

    def all_gather(self, rows: np.ndarray) -> np.ndarray:
        """Concatenation along axis 0 of every process's ``rows``, in rank order (lengths may
        differ)."""


class SingleProcess:
    """The group of one process: collectives are the identity."""

    rank, size = 0, 1

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)

    def all_gather(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows)


def shard(rows: np.ndarray, group: Group, block: int = 1) -> np.ndarray:
    """This process's contiguous share of ``rows``, in whole blocks of ``block`` rows: the
    blocks are dealt out in ``np.array_split`` order, so concatenating the shares of ranks
    0..size-1 gives ``rows`` back. Pass the inference batch size as ``block``: a row's float
    result can depend on the batch it is computed in (BLAS blocking), so shards made of the
    single-process batches give bitwise the single-process figures."""
    rows = np.asarray(rows)
    starts = np.arange(0, len(rows), max(int(block), 1))
    mine = np.array_split(starts, group.size)[group.rank]
    if len(mine) == 0:
        return rows[:0]
    return rows[mine[0]: min(mine[-1] + block, len(rows))]
