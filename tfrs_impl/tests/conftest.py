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

# small_config and synthetic_dataset come from the repository-level conftest.py.


@pytest.fixture(scope="session")
def real_dataset():
    """The real ml-100k (TWOSTAGE_DATA_DIR) with the seed's configuration; skipped if unset."""
    if REAL_DATA_DIR is None:
        pytest.skip("TWOSTAGE_DATA_DIR is not set (point it at the ml-100k folder)")
    path = Path(REAL_DATA_DIR)
    if not (path / "u.data").is_file():
        pytest.fail(f"TWOSTAGE_DATA_DIR={REAL_DATA_DIR} has no u.data; fix or unset it")
    from twostage.data.movielens import load_movielens
    from twostage.dataset import from_movielens
    return from_movielens(load_movielens(path), Config())
