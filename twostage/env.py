"""Process set-up, in one place, called by the entry points (CLI, benchmarks, test configuration).

- :func:`setup_tensorflow`: TFRS 0.7 is written against Keras 2 (``tf_keras``); TensorFlow >= 2.16
  binds ``tf.keras`` to Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set before ``tf.keras`` is
  first touched, and TF's C++ start-up logging buries users unless ``TF_CPP_MIN_LOG_LEVEL=2``.
- :func:`tune_malloc`: glibc allocator settings that make torch's training steps reuse warm
  memory.
- :class:`ThreadGovernor`: how many threads a training epoch should use when other processes
  keep cores busy (torch's OpenMP workers wait for each other at every parallel region, so on a
  busy 2-core machine two threads run 4.7x slower than alone while one thread runs as fast as
  alone: measured by ``python -m benchmarks.speed --contention``).

Nothing here imports torch or tensorflow.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
import tempfile
import time

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h mallopt parameters
_malloc_tuned = False


def setup_tensorflow() -> None:
    """Set TensorFlow's environment before it is imported (idempotent; a user's explicit
    TF_CPP_MIN_LOG_LEVEL wins; legacy Keras is required by TFRS 0.7, so it is forced)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# What TensorFlow's C++ start-up prints before absl's logging is set up, whatever
# TF_CPP_MIN_LOG_LEVEL says, and a user cannot act on: dropped by quiet_native_stderr.
BENIGN_NATIVE_LINES = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "TF-TRT Warning",
)


@contextlib.contextmanager
def quiet_native_stderr(benign: tuple[str, ...] = BENIGN_NATIVE_LINES):
    """Collect what native code writes to file descriptor 2 during the block and write back
    every line that holds none of ``benign``: TensorFlow's start-up notices go, its real
    errors stay. Nothing is filtered when the user asked for TF's logs
    (TF_CPP_MIN_LOG_LEVEL=0)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(pattern in line for pattern in benign):
                    sys.stderr.write(line)
            sys.stderr.flush()


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``), once per process.

    Every training step allocates the same few-MB activations (a [2048, 2048] score matrix is
    16 MB); glibc serves blocks that large with fresh mmap'd pages and trims freed heap back to
    the OS, so each step pays page faults again. Raising the mmap threshold to 256 MB and the
    trim threshold to 1 GB makes the allocations reuse warm memory: measured -25% time per step
    (ranking 20.3 -> 15.3 ms, retrieval 60 -> 46 ms, one thread, shared 2-core VM). Linux/glibc
    only; opt out with TWOSTAGE_MALLOC_TUNING=0. Returns whether the settings were applied.
    """
    global _malloc_tuned
    if _malloc_tuned or os.environ.get("TWOSTAGE_MALLOC_TUNING", "1") == "0" or \
            not sys.platform.startswith("linux"):
        return _malloc_tuned
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        ok = False
    _malloc_tuned = ok
    return ok


def setup_process() -> None:
    """Everything an entry point needs before it imports a backend."""
    setup_tensorflow()
    tune_malloc()


class ThreadGovernor:
    """Threads for the next epoch: ``max_threads`` minus the cores other processes kept busy
    since the last call (Linux ``/proc/stat`` minus this process's own CPU time), at least 1.

    On an idle machine it returns ``max_threads`` (no speed lost); beside a competing job it
    returns fewer, so no OpenMP worker waits on a descheduled sibling. It never exceeds the
    ``max_threads`` it was given (a user's ``torch.set_num_threads`` / OMP_NUM_THREADS is a cap).
    Off, i.e. always ``max_threads``, with TWOSTAGE_ADAPTIVE_THREADS=0, with one thread, or
    where ``/proc/stat`` does not exist. The thread count changes float32 reduction orders, so
    a run that gave way to another process is not bitwise the same as an idle one (warned once);
    set TWOSTAGE_ADAPTIVE_THREADS=0 for bitwise-reproducible runs on a shared machine.
    """

    def __init__(self, max_threads: int, settle_seconds: float = 0.1) -> None:
        self.max_threads = max(1, int(max_threads))
        self._warned = False
        self.enabled = (self.max_threads > 1 and os.path.exists("/proc/stat")
                        and os.environ.get("TWOSTAGE_ADAPTIVE_THREADS", "1") != "0")
        self._last = self._sample() if self.enabled else None
        if self.enabled and settle_seconds > 0:
            time.sleep(settle_seconds)  # a first window, so epoch 1 is sized too

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        """(wall seconds, busy CPU seconds of the whole machine, CPU seconds of this process)."""
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # - idle, iowait
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()

    def others_busy_cores(self) -> float:
        """Average cores used by other processes since the last call."""
        now = self._sample()
        wall, busy, own = (b - a for a, b in zip(self._last, now))
        self._last = now
        return max(0.0, (busy - own) / wall) if wall > 0 else 0.0

    def threads(self) -> int:
        if not self.enabled:
            return self.max_threads
        taken = math.floor(self.others_busy_cores() + 0.5)  # a core is taken when >= half busy
        threads = max(1, min(self.max_threads, (os.cpu_count() or 1) - taken))
        if threads != self.max_threads and not self._warned:
            # The thread count changes float32 reduction orders, so the run is no longer
            # bitwise the same as one on an idle machine: say so, once.
            self._warned = True
            logging.getLogger("twostage").warning(
                "another process keeps %d core(s) busy: training with %d thread(s) instead of "
                "%d while it does (faster on a busy machine; the results then differ in float "
                "rounding from an idle run: TWOSTAGE_ADAPTIVE_THREADS=0 keeps the thread count "
                "fixed for bitwise-reproducible runs)", taken, threads, self.max_threads)
        return threads
