"""Fixtures shared by the backends' tests: the small configuration and a synthetic dataset."""
from __future__ import annotations

import pytest

from twostage.config import Config

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
