"""Fixtures for the TFRS backend tests: a small synthetic dataset, the real data when available.

Importing tfrs_impl first sets TF_USE_LEGACY_KERAS before TensorFlow binds tf.keras.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import tfrs_impl  # noqa: F401  (environment before tensorflow)
from twostage.config import Config

REAL_DATA_DIR = os.environ.get("TWOSTAGE_DATA_DIR") or None

# Small but not trivial: ~2,400 train / ~600 test ratings, batches of 256 -> 10 steps per epoch.
SMALL = Config(batch_size=256, eval_batch_size=512, retrieval_epochs=2, ranking_epochs=2,
               validation_freq=1, quiet=True)


@pytest.fixture(scope="session")
def small_config() -> Config:
    return SMALL


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """Synthetic ml-100k folder (60 users, 50 movies incl. a duplicate title and the token-less
    title "!!!", 3,000 ratings) encoded with SMALL."""
    from twostage.dataset import synthetic_dataset
    return synthetic_dataset(tmp_path_factory.mktemp("synthetic"), SMALL)


@pytest.fixture(scope="session")
def real_dataset():
    """The real ml-100k (TWOSTAGE_DATA_DIR) with the seed's configuration; skipped if unset."""
    if REAL_DATA_DIR is None:
        pytest.skip("TWOSTAGE_DATA_DIR is not set (point it at the ml-100k folder)")
    path = Path(REAL_DATA_DIR)
    if not (path / "u.data").is_file():
        pytest.fail(f"TWOSTAGE_DATA_DIR={REAL_DATA_DIR} has no u.data; fix or unset it")
    from data.movielens import load_movielens
    from twostage.dataset import from_movielens
    return from_movielens(load_movielens(path), Config())
