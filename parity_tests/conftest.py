"""Shared fixtures: one dataset (real when the root conftest finds it, else synthetic) and a
briefly trained weight set shared by both backends (untrained towers score everything alike,
which would make every ranking comparison a tie)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from twostage.config import Config

from . import checks

TRAINED_STEPS = 120


@pytest.fixture(scope="session")
def config() -> Config:
    return Config.of(quiet=True, retrieval_epochs=3, ranking_epochs=2, validation_freq=10 ** 6)


class SyntheticParityWarning(UserWarning):
    """The parity suite ran on synthetic data: the real ml-100k checks did not run."""


@pytest.fixture(scope="session")
def dataset_and_kind(config, tmp_path_factory, real_data_path):
    """(dataset, "real" | "synthetic"); the synthetic fallback warns (counted in pytest's
    summary line), so a CI run without the real files cannot pass for a real-data run."""
    dataset, kind = checks.parity_dataset(config, tmp_path_factory.mktemp("synthetic-ml"),
                                          real_data_path)
    if kind != "real":
        warnings.warn(SyntheticParityWarning(
            "the parity suite ran on SYNTHETIC data (TWOSTAGE_DATA_DIR is unset): set it to the "
            "real ml-100k folder to run the real-data parity checks"))
    return dataset, kind


@pytest.fixture(scope="session")
def dataset(dataset_and_kind):
    return dataset_and_kind[0]


@pytest.fixture(scope="session")
def eval_rows(dataset) -> np.ndarray:
    return dataset.split.test[:4096]


@pytest.fixture(scope="session")
def trained_pair(dataset, config) -> checks.Pair:
    """Torch trained for a few epochs, its weights copied into TFRS (both stages)."""
    from tfrs_impl.backend import TfrsBackend
    from torch_impl.backend import TorchBackend
    from twostage.export import copy_weights

    # About 120 optimizer steps per stage whatever the data size (3 epochs of ml-100k).
    steps_per_epoch = -(-len(dataset.split.train) // config.train.batch_size)
    epochs = max(1, -(-TRAINED_STEPS // steps_per_epoch))
    t = TorchBackend(config, dataset.spec)
    t.fit_retrieval(dataset, epochs=epochs)
    t.fit_ranking(dataset, epochs=epochs)
    f = TfrsBackend(config, dataset.spec)
    copy_weights(t, f)
    return checks.Pair(t, f, config)
