"""Fixtures for the torch backend tests (no TF)."""
from __future__ import annotations

import pytest


# small_config and synthetic_dataset come from the repository-level conftest.py.


def pytest_generate_tests(metafunc):
    """Tests marked ``bitwise`` (a claim of bitwise-equal torch results) run at 1 and at 2
    threads: a claim checked at one thread only says nothing of the threaded kernels."""
    if metafunc.definition.get_closest_marker("bitwise") is not None:
        metafunc.parametrize("torch_threads", [1, 2], indirect=True, ids=["1thread", "2threads"])


@pytest.fixture
def torch_threads(request) -> int:
    """The torch thread count of a ``bitwise`` test (1 for every other test)."""
    return getattr(request, "param", 1)


@pytest.fixture(autouse=True)
def one_torch_thread(torch_threads):
    """Run each torch test single-threaded (``bitwise`` tests: also at 2 threads; restored
    afterwards): the batches here are tiny, and on a shared 2-core machine OpenMP's second
    thread stalls for up to seconds per epoch whenever another process holds a core
    (measured: 0.05 s epochs became 1.5 s)."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    yield
    torch.set_num_threads(previous)
