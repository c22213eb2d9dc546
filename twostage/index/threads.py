"""FAISS's OpenMP threads: left to the process, because torch shares them."""
from __future__ import annotations

import faiss


def configure_threads() -> int:
    """FAISS's OpenMP thread count, left at the process default (returned).

    It is deliberately not lowered here: FAISS and torch share one OpenMP runtime on Linux, so
    ``faiss.omp_set_num_threads(1)`` also dropped torch's intra-op threads to 1 for every later
    training step of the process (seen in the speed benchmark). Set OMP_NUM_THREADS to limit both.
    Every :class:`~twostage.index.Index` calls this on construction, so the policy lives here once.
    """
    return faiss.omp_get_max_threads()
