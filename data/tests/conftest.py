"""Shared fixtures for the data-layer tests: synthetic folders, parsed data, lazy TF imports.

``real_data_dir`` comes from the repository-level conftest.py, which also sets TensorFlow's
environment first (tf_keras 2.x must be the Keras that ``tf.keras`` means). TensorFlow is imported
only by the tests that compare against tensorflow_datasets / tf_keras.
"""
from __future__ import annotations

from pathlib import Path

import pytest

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
