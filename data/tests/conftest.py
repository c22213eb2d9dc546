"""Shared fixtures for the data-layer tests: synthetic folders, the real data, lazy TF imports.

TensorFlow is imported only by the tests that compare against tensorflow_datasets / tf_keras, and
only after the environment below is set (tf_keras 2.x must be the Keras that ``tf.keras`` means).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Read once at import: some test modules (test_download) clear the variable per test.
REAL_DATA_DIR = os.environ.get("TWOSTAGE_DATA_DIR") or None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real ml-100k folder from TWOSTAGE_DATA_DIR; the test is skipped when it is unset."""
    if REAL_DATA_DIR is None:
        pytest.skip("TWOSTAGE_DATA_DIR is not set (point it at the ml-100k folder)")
    path = Path(REAL_DATA_DIR)
    if not (path / "u.data").is_file():
        pytest.fail(f"TWOSTAGE_DATA_DIR={REAL_DATA_DIR} has no u.data; fix or unset it")
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A default-size synthetic ml-100k folder (seed 0), generated once per session."""
    from twostage.data.synthetic import generate
    return generate(tmp_path_factory.mktemp("synthetic"), seed=0)


@pytest.fixture(scope="session")
def synthetic_movielens(synthetic_dir):
    from twostage.data.movielens import load_movielens
    return load_movielens(synthetic_dir)


@pytest.fixture(scope="session")
def real_movielens(real_data_dir):
    from twostage.data.movielens import load_movielens
    return load_movielens(real_data_dir)


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, imported lazily so the TF-free tests stay fast."""
    import tensorflow
    return tensorflow


@pytest.fixture(scope="session")
def tf_keras(tf):
    import tf_keras
    return tf_keras
