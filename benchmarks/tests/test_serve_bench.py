"""benchmarks.serve's pieces that need no server: the request draws and the table."""
from __future__ import annotations

import itertools

from benchmarks import serve


def test_request_draws_are_lazy_seeded_and_bounded():
    """A soak asks for up to 10**9 requests: the draws come a chunk at a time (drawn at once,
    they took 23 GB and the OOM killer ended the benchmark). Break: draw ``limit`` at once and
    the first call below exhausts memory."""
    first = list(itertools.islice(serve._picks(["a", "b", "c"], 10**12, seed=1), 5))
    assert first == list(itertools.islice(serve._picks(["a", "b", "c"], 10**12, seed=1), 5))
    assert len(list(serve._picks(["a", "b"], 10_001, seed=2, chunk=4096))) == 10_001
    assert set(serve._picks(["a", "b"], 1000, seed=3)) == {"a", "b"}


def test_table_shows_the_http_ceiling_when_measured():
    floor = [{"policy": p, "users": 1, "p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0,
              "users_per_s": 1000.0} for p in ("owned", "process default")]
    load = [{"concurrency": 1, "requests_per_s": 400.0, "p50_ms": 2.0, "p95_ms": 2.5,
             "p99_ms": 3.0, "errors": 0, "healthz": {"requests_per_s": 1500.0}}]
    text = serve.table({"floor": floor, "load": load})
    assert "GET /healthz requests/s" in text.splitlines()[0]
    assert text.splitlines()[2].endswith("| 1,500 |")
    load[0].pop("healthz")
    assert "healthz" not in serve.table({"floor": floor, "load": load})
