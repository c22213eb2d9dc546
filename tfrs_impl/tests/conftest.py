"""Fixtures for the TFRS backend tests: the real data when available.

small_config, synthetic_dataset and real_data_dir come from the repository-level conftest.py
(which sets TensorFlow's environment first; importing tfrs_impl does it too).
"""
from __future__ import annotations

import pytest

import tfrs_impl  # noqa: F401  (environment before tensorflow)
from twostage.config import Config


@pytest.fixture(scope="session")
def real_dataset(real_data_dir):
    """The real ml-100k (TWOSTAGE_DATA_DIR) with the seed's configuration; skipped if unset."""
    from twostage.data.movielens import load_movielens
    from twostage.dataset import from_movielens
    return from_movielens(load_movielens(real_data_dir), Config())
