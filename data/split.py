"""Deterministic train/test split and seeded per-epoch batch orders, shared by both backends.

The seed shuffles the 100,000 ratings once (seed 42) and takes the first 80,000 for training and
the next 20,000 for testing, then reshuffles the training set every epoch into batches of 2048.
Here both shuffles come from numpy's PCG64 so the torch and TFRS paths can be fed exactly the
same examples in exactly the same batches.

``--split temporal`` (:func:`temporal_split`) trains on the earliest 80% of the ratings by
timestamp and tests on the rest, so that no model is evaluated on ratings older than some it was
trained on (the random split lets the future leak into training).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Split:
    """Row indices into ``MovieLens.ratings`` (int64), disjoint."""

    train: np.ndarray
    test: np.ndarray


def _train_size(num_ratings: int, train_fraction: float) -> int:
    """``round(f * n)`` rows train, at least one row on each side."""
    if num_ratings < 2:
        raise ValueError(f"need at least 2 ratings to split, got {num_ratings}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction} must be strictly between 0 and 1")
    return min(max(int(round(train_fraction * num_ratings)), 1), num_ratings - 1)


def train_test_split(num_ratings: int, *, seed: int = 42, train_fraction: float = 0.8) -> Split:
    """Shuffle ``range(num_ratings)`` once; the first ``round(f * n)`` rows train, the rest test."""
    n_train = _train_size(num_ratings, train_fraction)
    order = np.random.default_rng(seed).permutation(num_ratings).astype(np.int64)
    return Split(train=order[:n_train], test=order[n_train:])


def temporal_split(timestamps: np.ndarray, *, train_fraction: float = 0.8) -> Split:
    """The earliest ``round(f * n)`` ratings by timestamp train, the rest test.

    Ratings of equal timestamps keep their file order (a stable sort), so a tie at the boundary
    is split the same way on every run and machine. Both sides are in time order.
    """
    timestamps = np.asarray(timestamps)
    n_train = _train_size(len(timestamps), train_fraction)
    order = np.argsort(timestamps, kind="stable").astype(np.int64)
    return Split(train=order[:n_train], test=order[n_train:])


SPLITS = ("random", "temporal")


def make_split(kind: str, timestamps: np.ndarray, *, seed: int, train_fraction: float) -> Split:
    """``config.data.split``: 'random' (the seed's shuffle, :func:`train_test_split`) or
    'temporal' (:func:`temporal_split`)."""
    if kind == "random":
        return train_test_split(len(timestamps), seed=seed, train_fraction=train_fraction)
    if kind == "temporal":
        return temporal_split(timestamps, train_fraction=train_fraction)
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {kind!r} (--split)")


def epoch_batches(num_examples: int, batch_size: int, *, seed: int, epoch: int
                  ) -> list[np.ndarray]:
    """Batches (positions into the training set) for one epoch; the last may be smaller.

    The permutation depends only on (seed, epoch), so any epoch can be reproduced on its own.
    """
    _check_batch_size(batch_size)
    if num_examples < 1:  # numpy would return an empty permutation: a silent no-op epoch
        raise ValueError(f"num_examples={num_examples} must be >= 1: there is nothing to train on")
    for name, value in (("seed", seed), ("epoch", epoch)):
        if value < 0:  # numpy's SeedSequence only says "expected non-negative integer"
            raise ValueError(f"{name}={value} must be >= 0")
    order = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)
    return [order[i: i + batch_size] for i in range(0, num_examples, batch_size)]


def batch_schedule(num_examples: int, batch_size: int, *, seed: int, epochs: int
                   ) -> Iterator[list[np.ndarray]]:
    """``epoch_batches`` for epochs 0 .. epochs-1."""
    for epoch in range(epochs):
        yield epoch_batches(num_examples, batch_size, seed=seed, epoch=epoch)


def sequential_batches(num_examples: int, batch_size: int) -> list[np.ndarray]:
    """Unshuffled batches, for evaluation (an empty set gives no batches)."""
    _check_batch_size(batch_size)
    if num_examples < 0:
        raise ValueError(f"num_examples={num_examples} must be >= 0")
    idx = np.arange(num_examples, dtype=np.int64)
    return [idx[i: i + batch_size] for i in range(0, num_examples, batch_size)]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
