"""`twostage serve` under load on loopback, beside the in-process floor (issue 24).

    python -m benchmarks.serve --export PATH --concurrency 1 8 64 --seconds 20 [--out DIR]
    python -m benchmarks.serve --export PATH --floor-only            # the thread policies alone
    python -m benchmarks.serve --export PATH --concurrency 8 --soak-seconds 300

PATH: anything ``twostage serve`` accepts (a run folder or either export).

1. The floor, in this process: ``twostage.engine.open_engine(PATH).serve`` of one query of B
   users, B each value of ``--concurrency`` (the batch a fully batched server would run), under
   two thread policies: "owned" (the serving path's: FAISS on one thread, torch on
   ``--threads``; ``twostage.serving.owned_threads``) and "process default" (both libraries'
   OpenMP pools as the process starts them: what the issue measured first). Median, p99 of
   ``--floor-calls`` calls after ``--floor-warmup``; users/s = B / median.
2. The service: ``python -m twostage serve PATH --port 0`` as a child process on 127.0.0.1;
   per concurrency C, C clients (each on its own kept-alive connection) send one-user
   ``POST /recommend`` requests (seeded users of the training vocabulary, k = ``-k``) back to
   back for ``--seconds`` (and at most ``--max-requests``): p50 / p95 / p99 latency, requests/s,
   errors (any non-200 or transport error), and the server's batches. The client is a minimal
   HTTP/1.1 client on asyncio streams (:func:`exchange`): httpx's AsyncClient cost more CPU per
   request than the server itself at 64 connections (measured on a busy 2-core machine: 130
   requests/s against the server that answered 1,684 to this client). The client runs on the
   same cores as the server: state that beside any figure.
   ``--ceiling`` also drives ``GET /healthz`` at each concurrency (no model, no JSON body): the
   requests/s the HTTP stack and the client sustain on these cores, which bounds the service.
3. ``--soak-seconds S``: the same at ``--soak-concurrency`` for S seconds, the server's resident
   memory (/proc/PID/status VmRSS) after the warm-up and at the end.

Writes OUT/serve.json, OUT/serve.md (the table) and OUT/serve.png (latency and throughput by
concurrency, the floor beside), prints the table and the issue's targets with pass / miss.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from twostage import io

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"c1_p50_over_floor": 2.0, "c1_p99_ms": 10.0, "c64_throughput_share": 0.6,
           "c64_p99_ms": 100.0, "soak_rss_growth": 0.05}


def machine() -> dict:
    facts = {"python": platform.python_version(), "platform": platform.platform(),
             "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]}
    torch = sys.modules.get("torch")
    return {**facts, **({"torch": torch.__version__} if torch else {})}


def percentiles(seconds: list[float]) -> dict:
    """{"p50_ms", "p95_ms", "p99_ms"} of latencies in seconds (None when there are none)."""
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    ms = np.asarray(seconds) * 1e3
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}


# --- 1. the in-process floor -----------------------------------------------------------------
def floor(engine, users: list[str], sizes: list[int], k: int, calls: int, warmup: int
          ) -> list[dict]:
    """Per thread policy and batch size: the latency of ``engine.serve`` of one query."""
    from twostage import serving
    from twostage.engine import Query

    rows = []
    for policy in ("owned", "process default"):
        with (contextlib.nullcontext() if policy == "owned" else _unowned(serving)):
            for size in sizes:
                query = Query(np.array(users[:size], dtype=object),
                              np.full(size, engine.default_timestamp, np.int64), k,
                              engine.num_candidates, np.zeros(0, np.int64), False)
                times = _timed(lambda: engine.serve([query]), calls, warmup)
                median = float(np.median(times))
                rows.append({"policy": policy, "users": size, **percentiles(times),
                             "users_per_s": size / median})
    return rows


@contextlib.contextmanager
def _unowned(serving):
    """The serving path without its thread ownership (the process's OpenMP defaults)."""
    owned = serving.owned_threads
    serving.owned_threads = lambda threads=1: contextlib.nullcontext()
    try:
        yield
    finally:
        serving.owned_threads = owned


def _timed(call, calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


# --- 2. the service --------------------------------------------------------------------------
@contextlib.contextmanager
def server(path: str, flags: list[str]):
    """``twostage serve PATH --port 0 FLAGS`` as a child -> (base URL, pid); SIGTERM at exit."""
    proc = subprocess.Popen([sys.executable, "-m", "twostage", "serve", path, "--port", "0",
                             *flags], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        if " on http://" not in line:
            raise RuntimeError(f"twostage serve did not start (exit {proc.wait(30)})")
        yield line.split(" on ", 1)[1].split()[0], proc.pid
    finally:
        proc.terminate()
        proc.wait(60)


async def drive(url: str, users: list[str], concurrency: int, seconds: float, k: int,
                max_requests: int, seed: int, healthz: bool = False) -> dict:
    """``concurrency`` clients, one kept-alive connection each, sending one-user requests back
    to back for ``seconds`` (at most ``max_requests`` in all); ``healthz``: ``GET /healthz``
    instead (no model work: what the HTTP stack and this client alone sustain)."""
    picks = _picks(users, max_requests, seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    host, port = url.rsplit("/", 1)[-1].split(":")

    async def client() -> None:
        connection = None
        for user in picks:
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            try:
                connection = connection or await asyncio.open_connection(host, int(port))
                status, keep = await exchange(*connection, None if healthz else
                                              {"user_id": user, "k": k})
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                status, keep = type(e).__name__, False
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
            if not keep and connection:
                connection[1].close()
                connection = None
        if connection:
            connection[1].close()

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.monotonic() - began
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": wall,
            "requests_per_s": len(latencies) / wall, "errors": sum(errors.values()),
            "error_kinds": errors, **percentiles(latencies)}


def _picks(users: list[str], limit: int, seed: int, chunk: int = 4096):
    """``limit`` seeded uniform draws of ``users``, drawn ``chunk`` at a time (a soak's limit
    of 10**9 drawn at once took 23 GB)."""
    rng = np.random.default_rng(seed)
    for start in range(0, limit, chunk):
        yield from rng.choice(users, size=min(chunk, limit - start)).tolist()


async def exchange(reader, writer, body: dict | None) -> tuple[int, bool]:
    """One HTTP/1.1 POST /recommend (``body`` None: GET /healthz) on a kept-alive connection
    -> (status, connection kept). The server always answers with Content-Length
    (twostage.service)."""
    if body is None:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
    else:
        payload = json.dumps(body).encode()
        writer.write(b"POST /recommend HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(payload), payload))
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    await reader.readexactly(int(headers["content-length"]))
    return int(head[0].split()[1]), headers.get("connection") != "close"


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def load_test(args, users: list[str]) -> tuple[list[dict], dict | None]:
    import urllib.request

    flags = ["--threads", str(args.threads), "--batch-wait-ms", str(args.batch_wait_ms),
             "--http", args.http, *([] if args.freeze_heap else ["--no-freeze-heap"])]
    rows, soak = [], None
    with server(args.export, flags) as (url, pid):
        asyncio.run(drive(url, users, 4, min(2.0, args.seconds), args.k, 10_000, 1))  # warm-up
        for c in args.concurrency:
            row = asyncio.run(drive(url, users, c, args.seconds, args.k, args.max_requests, c))
            with urllib.request.urlopen(url + "/metadata", timeout=30) as answer:
                row["batches"] = json.load(answer)["batching"]
            if args.ceiling:
                row["healthz"] = asyncio.run(drive(url, users, c, args.seconds, args.k,
                                                   args.max_requests, c, healthz=True))
            rows.append(row)
            print(f"c={c}: {row['requests_per_s']:.0f} req/s, p99 {row['p99_ms']} ms, "
                  f"{row['errors']} errors", file=sys.stderr)
        if args.soak_seconds:
            before = resident_bytes(pid)
            run = asyncio.run(drive(url, users, args.soak_concurrency, args.soak_seconds,
                                    args.k, 10 ** 9, 99))
            after = resident_bytes(pid)
            soak = {**run, "rss_before_bytes": before, "rss_after_bytes": after,
                    "rss_growth": after / before - 1}
    return rows, soak


# --- report ----------------------------------------------------------------------------------
def targets(report: dict) -> dict:
    """The issue's targets, each {"value", "target", "pass"} (absent when not measured)."""
    owned = {r["users"]: r for r in report["floor"] if r["policy"] == "owned"}
    load = {r["concurrency"]: r for r in report["load"]}
    out = {}

    def check(name: str, value, ok) -> None:
        out[name] = {"value": value, "target": TARGETS[name], "pass": bool(ok)}
    if 1 in load and 1 in owned and load[1]["p50_ms"] is not None:
        ratio = load[1]["p50_ms"] / owned[1]["p50_ms"]
        check("c1_p50_over_floor", ratio, ratio <= TARGETS["c1_p50_over_floor"])
        check("c1_p99_ms", load[1]["p99_ms"], load[1]["p99_ms"] < TARGETS["c1_p99_ms"])
    if 64 in load and 64 in owned and load[64]["p99_ms"] is not None:
        share = load[64]["requests_per_s"] / owned[64]["users_per_s"]
        check("c64_throughput_share", share,
              share >= TARGETS["c64_throughput_share"] and load[64]["errors"] == 0)
        check("c64_p99_ms", load[64]["p99_ms"], load[64]["p99_ms"] < TARGETS["c64_p99_ms"])
    if report.get("soak"):
        soak = report["soak"]
        check("soak_rss_growth", soak["rss_growth"],
              soak["rss_growth"] < TARGETS["soak_rss_growth"] and soak["errors"] == 0)
    return out


def table(report: dict) -> str:
    floor_at = {(r["policy"], r["users"]): r for r in report["floor"]}
    ceiling = any("healthz" in r for r in report["load"])
    lines = ["| concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors | floor users/s "
             "(owned threads) | floor p50 ms | floor p50 ms (process default) |"
             + (" GET /healthz requests/s |" if ceiling else ""),
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
             + (" ---: |" if ceiling else "")]
    fmt = lambda v, d=2: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
    sizes = sorted({r["users"] for r in report["floor"]})
    load = {r["concurrency"]: r for r in report["load"]}
    for c in sorted(set(sizes) | set(load)):
        row, own, dflt = load.get(c, {}), floor_at.get(("owned", c), {}), floor_at.get(
            ("process default", c), {})
        lines.append(f"| {c} | {fmt(row.get('requests_per_s'), 0)} | {fmt(row.get('p50_ms'))} "
                     f"| {fmt(row.get('p95_ms'))} | {fmt(row.get('p99_ms'))} | "
                     f"{row.get('errors', '-')} | {fmt(own.get('users_per_s'), 0)} | "
                     f"{fmt(own.get('p50_ms'))} | {fmt(dflt.get('p50_ms'))} |"
                     + (f" {fmt(row.get('healthz', {}).get('requests_per_s'), 0)} |"
                        if ceiling else ""))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    for policy in ("owned", "process default"):
        rows = [r for r in report["floor"] if r["policy"] == policy]
        thr.plot([r["users"] for r in rows], [r["users_per_s"] for r in rows], "o--",
                 label=f"in-process floor ({policy} threads)")
    load = report["load"]
    if load:
        cs = [r["concurrency"] for r in load]
        for q in ("p50_ms", "p99_ms"):
            lat.plot(cs, [r[q] for r in load], "o-", label=f"service {q[:3]}")
        thr.plot(cs, [r["requests_per_s"] for r in load], "o-", label="service requests/s")
    for ax, label in ((lat, "latency (ms)"), (thr, "users/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (service) / users per call (floor)")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"twostage serve on loopback, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--export", required=True, help="a run folder or an export")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency")
    p.add_argument("--max-requests", type=int, default=200_000, help="per concurrency")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (serve --threads)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--floor-calls", type=int, default=50)
    p.add_argument("--floor-warmup", type=int, default=30)
    p.add_argument("--floor-only", action="store_true", help="no server")
    p.add_argument("--ceiling", action="store_true", help="also drive GET /healthz at each "
                   "concurrency: the requests/s of the HTTP stack and client without the model")
    p.add_argument("--soak-seconds", type=float, default=0.0)
    p.add_argument("--soak-concurrency", type=int, default=8)
    p.add_argument("--http", choices=("httptools", "h11"), default="httptools",
                   help="the server's HTTP parser (serve --http; default httptools)")
    p.add_argument("--out", default="runs/serve",
                   help="folder of the outputs (default runs/serve)")
    p.add_argument("--no-freeze-heap", dest="freeze_heap", action="store_false",
                   help="the server's serve --no-freeze-heap")
    p.add_argument("--name", default="serve",
                   help="stem of the outputs: NAME.json, NAME.md, NAME.png (default serve)")
    args = p.parse_args(argv)
    if min(args.concurrency) < 1 or args.seconds <= 0 or args.max_requests < 1:
        p.error("--concurrency values must be >= 1, --seconds > 0, --max-requests >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from twostage.engine import open_engine

    args = parse(argv)
    engine = open_engine(args.export, threads=args.threads, seen=False)
    users = sorted(engine.vocab)
    if len(users) < max(args.concurrency):
        users = (users * (max(args.concurrency) // len(users) + 1))
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "export": str(args.export), "kind": engine.kind,
              "catalog_size": engine.catalog_size, "k": args.k, "threads": args.threads,
              "batch_wait_ms": args.batch_wait_ms, "http": args.http,
              "freeze_heap": args.freeze_heap,
              "floor": floor(engine, users, args.concurrency, args.k, args.floor_calls,
                             args.floor_warmup),
              "load": [], "soak": None}
    del engine
    if not args.floor_only:
        report["load"], report["soak"] = load_test(args, users)
    report["targets"] = targets(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / f"{args.name}.json", report)
    io.write_text(out / f"{args.name}.md", table(report) + "\n")
    plot(report, out / f"{args.name}.png")
    print(table(report))
    for name, t in report["targets"].items():
        print(f"{name}: {t['value']:.3g} (target {t['target']}): "
              f"{'pass' if t['pass'] else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
