"""Fixtures for the torch backend tests (no TF)."""
from __future__ import annotations

import pytest


# small_config and synthetic_dataset come from the repository-level conftest.py.


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
