"""The train/test split and the seeded per-epoch batch orders (both backends consume these)."""
from __future__ import annotations

import numpy as np
import pytest

from twostage.data.split import (Split, batch_schedule, epoch_batches, make_split,
                                 sequential_batches, temporal_split, train_test_split)


# --- train_test_split --------------------------------------------------------------------------
def test_seed_sizes_80k_20k():
    split = train_test_split(100_000)
    assert isinstance(split, Split)
    assert (len(split.train), len(split.test)) == (80_000, 20_000)
    assert split.train.dtype == split.test.dtype == np.int64


def test_disjoint_and_covering():
    split = train_test_split(100_000, seed=42)
    both = np.concatenate([split.train, split.test])
    np.testing.assert_array_equal(np.sort(both), np.arange(100_000))  # covers, each row once
    assert np.intersect1d(split.train, split.test).size == 0


def test_deterministic_per_seed():
    a, b = train_test_split(100_000, seed=42), train_test_split(100_000, seed=42)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    c = train_test_split(100_000, seed=7)
    assert not np.array_equal(a.train, c.train)


def test_pinned_orders():
    """Pinned values: a change of RNG or algorithm would silently move rows between the sets
    and change every reported number, so it must show up here first."""
    split = train_test_split(100_000, seed=42)
    assert split.train[:5].tolist() == [45262, 49850, 30394, 90177, 95569]
    assert split.test[:5].tolist() == [84743, 6175, 62169, 63077, 46450]
    batches = epoch_batches(10, 4, seed=42, epoch=1)
    assert [b.tolist() for b in batches] == [[0, 8, 7, 4], [3, 1, 2, 9], [6, 5]]


def test_shuffled_not_sorted():
    split = train_test_split(1000)
    assert not np.array_equal(split.train, np.sort(split.train))


@pytest.mark.parametrize("n, fraction, n_train", [
    (2, 0.8, 1), (3, 0.5, 2), (10, 0.01, 1), (10, 0.99, 9), (7, 0.8, 6), (100_001, 0.8, 80_001),
])
def test_small_and_odd_sizes_keep_both_sides_non_empty(n, fraction, n_train):
    split = train_test_split(n, train_fraction=fraction)
    assert len(split.train) == n_train and len(split.test) == n - n_train
    assert len(split.test) >= 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_ratings=1), "at least 2 ratings"),
    (dict(num_ratings=0), "at least 2 ratings"),
    (dict(num_ratings=-5), "at least 2 ratings"),
    (dict(num_ratings=10, train_fraction=0.0), "strictly between 0 and 1"),
    (dict(num_ratings=10, train_fraction=1.0), "strictly between 0 and 1"),
    (dict(num_ratings=10, train_fraction=-0.2), "strictly between 0 and 1"),
    (dict(num_ratings=10, train_fraction=float("nan")), "strictly between 0 and 1"),
])
def test_split_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_test_split(**kwargs)


# --- epoch_batches -----------------------------------------------------------------------------
def test_epoch_reproducible_per_seed_and_epoch():
    a = epoch_batches(80_000, 2048, seed=42, epoch=3)
    b = epoch_batches(80_000, 2048, seed=42, epoch=3)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_epochs_and_seeds_differ():
    e0 = np.concatenate(epoch_batches(1000, 64, seed=1, epoch=0))
    e1 = np.concatenate(epoch_batches(1000, 64, seed=1, epoch=1))
    s2 = np.concatenate(epoch_batches(1000, 64, seed=2, epoch=0))
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, s2)
    # (seed, epoch) is a tuple, not a sum: (1, 2) and (2, 1) are different streams.
    assert not np.array_equal(np.concatenate(epoch_batches(1000, 64, seed=1, epoch=2)),
                              np.concatenate(epoch_batches(1000, 64, seed=2, epoch=1)))


def test_every_example_once_per_epoch_and_last_batch_partial():
    batches = epoch_batches(80_000, 2048, seed=42, epoch=0)
    assert len(batches) == 40  # ceil(80,000 / 2048)
    assert [len(b) for b in batches[:-1]] == [2048] * 39
    assert len(batches[-1]) == 80_000 - 39 * 2048 == 128
    flat = np.concatenate(batches)
    assert flat.dtype == np.int64
    np.testing.assert_array_equal(np.sort(flat), np.arange(80_000))


def test_exact_multiple_has_no_empty_batch():
    batches = epoch_batches(4096, 2048, seed=0, epoch=0)
    assert [len(b) for b in batches] == [2048, 2048]


def test_batch_larger_than_data_and_batch_of_one():
    assert [len(b) for b in epoch_batches(5, 2048, seed=0, epoch=0)] == [5]
    ones = epoch_batches(5, 1, seed=0, epoch=0)
    assert [len(b) for b in ones] == [1] * 5


def test_batch_schedule_is_epoch_batches():
    schedule = list(batch_schedule(300, 64, seed=9, epochs=3))
    assert len(schedule) == 3
    for epoch, batches in enumerate(schedule):
        want = epoch_batches(300, 64, seed=9, epoch=epoch)
        assert all(np.array_equal(x, y) for x, y in zip(batches, want))


def test_sequential_batches():
    batches = sequential_batches(10, 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0].dtype == np.int64


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_examples=100, batch_size=0, seed=0, epoch=0), "batch_size=0 must be >= 1"),
    (dict(num_examples=100, batch_size=-3, seed=0, epoch=0), "batch_size=-3 must be >= 1"),
    (dict(num_examples=0, batch_size=8, seed=0, epoch=0), "num_examples=0 must be >= 1"),
    (dict(num_examples=-1, batch_size=8, seed=0, epoch=0), "num_examples=-1 must be >= 1"),
    (dict(num_examples=100, batch_size=8, seed=-1, epoch=0), "seed=-1 must be >= 0"),
    (dict(num_examples=100, batch_size=8, seed=0, epoch=-1), "epoch=-1 must be >= 0"),
])
def test_epoch_batches_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        epoch_batches(**kwargs)


def test_sequential_batches_bad_arguments():
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        sequential_batches(10, 0)
    with pytest.raises(ValueError, match="num_examples=-1 must be >= 0"):
        sequential_batches(-1, 4)
    assert sequential_batches(0, 4) == []


# --- temporal_split / make_split ----------------------------------------------------------------
def test_temporal_trains_on_the_past():
    rng = np.random.default_rng(3)
    stamps = rng.integers(0, 500, size=10_001)  # many ties
    split = temporal_split(stamps, train_fraction=0.8)
    assert (len(split.train), len(split.test)) == (8001, 2000)  # as the random split's sizes
    assert len(train_test_split(10_001, train_fraction=0.8).train) == 8001
    assert stamps[split.train].max() <= stamps[split.test].min()
    np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.test])),
                                  np.arange(10_001))
    assert split.train.dtype == split.test.dtype == np.int64
    assert (np.diff(stamps[split.train]) >= 0).all() and (np.diff(stamps[split.test]) >= 0).all()


def test_temporal_ties_keep_file_order():
    """Rows of one timestamp on both sides of the boundary: the earlier rows train."""
    stamps = np.array([5, 3, 3, 3, 3, 1, 3, 9, 3, 3])
    split = temporal_split(stamps, train_fraction=0.5)
    assert split.train.tolist() == [5, 1, 2, 3, 4]
    assert split.test.tolist() == [6, 8, 9, 0, 7]


def test_temporal_needs_no_seed_and_checks_like_random():
    stamps = np.arange(10)[::-1]
    assert temporal_split(stamps).train.tolist() == list(range(9, 1, -1))
    with pytest.raises(ValueError, match="need at least 2 ratings"):
        temporal_split(np.array([1]))
    with pytest.raises(ValueError, match="train_fraction=1.0 must be strictly between 0 and 1"):
        temporal_split(stamps, train_fraction=1.0)


def test_make_split():
    stamps = np.random.default_rng(0).integers(0, 10**9, size=1000)
    random = make_split("random", stamps, seed=42, train_fraction=0.8)
    seed = train_test_split(1000, seed=42, train_fraction=0.8)  # the default, byte for byte
    assert random.train.tobytes() == seed.train.tobytes()
    assert random.test.tobytes() == seed.test.tobytes()
    temporal = make_split("temporal", stamps, seed=42, train_fraction=0.8)
    np.testing.assert_array_equal(temporal.train, temporal_split(stamps).train)
    with pytest.raises(ValueError, match="split must be one of random, temporal, not 'time'"):
        make_split("time", stamps, seed=42, train_fraction=0.8)


def test_dataset_uses_config_split(tmp_path):
    """twostage.dataset: --split picks the split; the default stays the seed's shuffle."""
    from twostage.config import Config
    from twostage.dataset import synthetic_dataset
    default = synthetic_dataset(tmp_path / "a", Config.of(split="random"))
    np.testing.assert_array_equal(default.split.train,
                                  train_test_split(len(default.timestamp), seed=42).train)
    temporal = synthetic_dataset(tmp_path / "b", Config.of(split="temporal"))
    assert temporal.timestamp[temporal.split.train].max() <= \
        temporal.timestamp[temporal.split.test].min()
