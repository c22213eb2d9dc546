"""Fixtures for the torch backend tests: a small synthetic dataset and its config (no TF)."""
from __future__ import annotations

import pytest

from twostage.config import Config

# Small but not trivial (as tfrs_impl's tests): ~2,400 train / ~600 test ratings, batches of 256.
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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each torch test single-threaded (restored afterwards): the batches here are tiny, and
    on a shared 2-core machine OpenMP's second thread stalls for up to seconds per epoch
    whenever another process holds a core (measured: 0.05 s epochs became 1.5 s)."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
