"""Fixtures shared by every test package: process set-up, the small test configuration, the real
MovieLens folder (found one way, here), and a synthetic dataset."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from twostage import env
from twostage.config import Config

env.setup_process()  # TF's environment before any test module imports TensorFlow


def _private_inductor_cache() -> None:
    """torch.compile's kernels go to a cache of this session's own (removed at exit): kernels
    that another run compiled under another ATEN_CPU_CAPABILITY, left in the shared
    /tmp/torchinductor_<user>, abort the process when loaded (measured: torch 2.13, a
    default-capability run after an avx2 one)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="twostage-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


_private_inductor_cache()  # before any test imports torch._inductor

# Small but not trivial: ~2,400 train / ~600 test ratings, batches of 256 -> 10 steps per epoch.
SMALL = Config.of(batch_size=256, eval_batch_size=512, retrieval_epochs=2, ranking_epochs=2,
                  validation_freq=1, quiet=True)
# Read once at import: some tests (data/tests/test_download.py) clear the variable per test.
REAL_DATA_DIR = os.environ.get("TWOSTAGE_DATA_DIR") or None


def pytest_report_header(config) -> str:
    """Say on the first lines which data the real-data tests and the parity suite use."""
    if REAL_DATA_DIR is None:
        return ("real ml-100k: TWOSTAGE_DATA_DIR unset -> real_data tests skip, the parity "
                "suite runs on synthetic data")
    return f"real ml-100k: {REAL_DATA_DIR}"


@pytest.fixture(scope="session")
def small_config() -> Config:
    return SMALL


@pytest.fixture(scope="session")
def real_data_path() -> Path | None:
    """The real ml-100k folder named by TWOSTAGE_DATA_DIR (CI sets it), or None when unset.
    A set variable that names no ml-100k folder fails loudly instead of skipping."""
    if REAL_DATA_DIR is None:
        return None
    path = Path(REAL_DATA_DIR)
    if not (path / "u.data").is_file():
        pytest.fail(f"TWOSTAGE_DATA_DIR={REAL_DATA_DIR} has no u.data; fix or unset it")
    return path


@pytest.fixture(scope="session")
def real_data_dir(real_data_path) -> Path:
    """The real ml-100k folder; the test is skipped when TWOSTAGE_DATA_DIR is unset."""
    if real_data_path is None:
        pytest.skip("TWOSTAGE_DATA_DIR is not set (point it at the ml-100k folder)")
    return real_data_path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """Synthetic ml-100k folder (60 users, 50 movies incl. a duplicate title and the token-less
    title "!!!", 3,000 ratings) encoded with SMALL."""
    from twostage.dataset import synthetic_dataset
    return synthetic_dataset(tmp_path_factory.mktemp("synthetic"), SMALL)
