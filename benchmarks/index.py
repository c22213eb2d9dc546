"""Candidate indexes at catalog scale: recall against speed, build time and memory (issue 13).

    python -m benchmarks.index --items 100000 1000000 10000000 --dim 32 [--run DIR] [--out DIR]
    python -m benchmarks.index --items 5000 --synthetic          # no training: seconds

Embeddings. The catalog grows from "seed rows" and is searched with "queries":

- default: the torch backend trained briefly (``--epochs`` of the retrieval stage, the model's
  last layer ``--dim`` wide) on ml-100k (``--data-dir`` or TWOSTAGE_DATA_DIR). Seed rows: the
  candidate-tower embeddings of the corpus's unique titles (1,664 on ml-100k); queries: the
  query-tower embeddings of a seeded sample of ``--queries`` test-split ratings.
- ``--run DIR``: the same from the torch models of an existing run folder (no training).
- ``--synthetic``: 1,664 random seed rows and random queries whose norms vary like a trained
  tower's (log-normal), for tests and quick looks.
- ``--embeddings NPZ``: the ``embeddings.npz`` (seed rows, queries, their source) that every
  run of this benchmark writes to its ``--out``, to measure again without training.

Enlargement, as TFRS's efficient-serving tutorial does it (tensorflow/recommenders,
docs/examples/efficient_serving.ipynb, "We can simulate this by indexing all of our movies
multiple times": ``movies.repeat(1_000).map(movie_model).map(lambda x: x *
tf.random.uniform(tf.shape(x)))``): the catalog of N items is the M seed rows followed by
N - M perturbed copies, copy i = seed[i mod M] * u with u ~ U[0, 1)^D drawn per coordinate
(numpy, seeded). Each copy keeps its original's signs and rough direction and is shorter
(E|copy| is about 0.58 |original| for Gaussian-like rows), so the catalog's norms vary as the
trained tower's do, scaled down, and the real items stay in it. The JSON records the norm
quantiles of the seed rows and of the catalog.

Per catalog size:

- ground truth: exact top-100 by ``faiss.knn`` (BLAS products; the flat index is measured
  against it like every other kind, so its recall checks the plumbing);
- matrix-multiply floor: the same GEMM (queries [Q, D] @ catalog block [D, B] into a reused
  output buffer, all blocks, no top-k; numpy's BLAS) timed alone, the fastest of a few block
  sizes; exact search is reported beside it (``exact_over_floor``);
- for each index variant (``variants()``: flat; ivf, ivfpq at two code sizes (nprobe sweep); hnsw
  on raw inner products and with the MIPS-to-L2 augmentation (efSearch sweep, same graph
  settings); sq): build seconds, memory (``Index.serialized_bytes``: what the index holds; and
  the growth of this process's resident memory over the build), and per search setting
  recall@100 of a k=100 search against the ground truth and recall@10 of its first 10 rows
  (HNSW, whose walk depends on k: of a k=10 search), queries/s of the k=100 search with one
  batch of all ``--queries`` (best of up to 3 runs) and with ``--single-queries`` batches of
  one (fewer if they take over 30 s: ``single_queries`` says how many ran);
- TFRS's ``BruteForce`` layer on the same catalog and queries, in a child process (the only
  TensorFlow use): its [Q, N] score matrix is computed in query chunks of at most 1 GiB.

HNSW's efSearch below k still returns k rows, from a shallower walk (lower recall@100). Each
index kind uses the project's settings (``twostage.config.IndexConfig`` defaults: nlist the
FAISS guideline 4*sqrt(N), HNSW M and efConstruction). A variant whose
build is estimated (from the smaller sizes of the same run, see ``estimate_build_s``) to exceed
``--budget-s`` is skipped at that size and the JSON and output say so; the first size of a run
has no estimate, so everything chosen is built there.

Writes ``OUT/index.json`` after every variant (atomically; a size still running has
``"complete": false``, so a killed run keeps what it measured; a variant that raises is listed
under ``failed`` and the run goes on), ``OUT/index.png`` (recall@100 against queries/s per size)
and ``OUT/index.md`` (the table) after every size, ``OUT/embeddings.npz`` at the start; prints
progress lines to stderr, then the table and the issue's targets with pass / miss. FAISS uses
``--threads`` OpenMP threads (default: every core).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from twostage import env, io
from twostage.config import Config, IndexConfig

K = 100                    # the two-stage retrieves 100 candidates; recall@10 and @100
SEED_ROWS = 1664           # --synthetic: as many seed rows as ml-100k has unique titles
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (16, 32, 64, 128, 256, 512)
FLOOR_BLOCKS = (1024, 4096, 16384)   # catalog rows per block of the GEMM floor
TFRS_CHUNK_BYTES = 1 << 30
SINGLE_BUDGET_S = 30.0     # batches of one: stop after this long per setting ...
MIN_SINGLES = 20           # ... once this many ran
ONE_GIB = 1 << 30
# Build-time growth with the catalog size N when only one earlier size is known: flat and sq
# copy / train on a sample (N), IVF assigns N vectors to 4*sqrt(N) cells (N^1.5), HNSW inserts
# with a search each (about N log N).
GROWTH = {"flat": 1.0, "sq": 1.0, "ivf": 1.5, "ivfpq": 1.5, "hnsw": 1.2, "tfrs": 1.0}


# --- the variants ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One index configuration and the search setting swept over it."""

    name: str
    kind: str
    params: dict = field(default_factory=dict)
    setting: str | None = None            # the swept search setting (Index.SEARCH_PARAMS)
    values: tuple[int, ...] = ()


def variants(dim: int, nprobes: tuple[int, ...] = NPROBES,
             ef_searches: tuple[int, ...] = EF_SEARCHES) -> dict[str, Variant]:
    """The measured variants for embeddings of width ``dim``, by name: IVF-PQ with D/4 and D/2
    code bytes, HNSW with the configuration's graph settings, raw and augmented."""
    d = IndexConfig()
    graph = {"hnsw_m": d.hnsw_m, "ef_construction": d.ef_construction}
    nprobes, ef_searches = tuple(sorted(set(nprobes))), tuple(sorted(set(ef_searches)))
    out = [Variant("flat", "flat"),
           Variant("ivf", "ivf", {}, "nprobe", nprobes)]
    for pq in sorted({b for b in (dim // 4, dim // 2) if b >= 1 and dim % b == 0}):
        out.append(Variant(f"ivfpq{pq}", "ivfpq", {"pq_bytes": pq}, "nprobe", nprobes))
    out += [Variant("hnsw", "hnsw", {**graph, "mips": False}, "ef_search", ef_searches),
            Variant("hnsw_mips", "hnsw", {**graph, "mips": True}, "ef_search", ef_searches),
            Variant("sq", "sq")]
    return {v.name: v for v in out}


# --- embeddings --------------------------------------------------------------------------------
def synthetic_embeddings(dim: int, num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(seed rows [1664, dim], queries [num_queries, dim]) float32: Gaussian directions with
    log-normal norms (a trained tower's norms vary over an order of magnitude)."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> np.ndarray:
        x = rng.normal(size=(n, dim)) * np.exp(rng.normal(scale=0.5, size=(n, 1)))
        return x.astype(np.float32)

    return rows(SEED_ROWS), rows(num_queries)


def unique_in_order(values: np.ndarray) -> np.ndarray:
    """Distinct values in first-seen order (u.item repeats 18 titles)."""
    return np.asarray(list(dict.fromkeys(values.tolist())), dtype=object)


def model_embeddings(args) -> tuple[np.ndarray, np.ndarray, dict]:
    """(seed rows, queries, facts) from a torch model: trained here or read from ``--run``."""
    from twostage.dataset import load_dataset
    from twostage.pipeline import load_backend, make_backend

    if args.run:
        from twostage.checkpoint import stored_config
        from twostage.rundir import RunDir
        _, folder = RunDir.open(args.run).backend_dir("torch")
        config = stored_config(folder).replace(device="cpu", nproc=1, quiet=True)
        if config.model.layer_sizes[-1] != args.dim:
            raise SystemExit(f"--dim {args.dim}: the run {args.run} embeds in dim "
                             f"{config.model.layer_sizes[-1]}; pass --dim "
                             f"{config.model.layer_sizes[-1]}")
        dataset = load_dataset(config, args.data_dir, progress=False)
        backend = load_backend("torch", folder, config)
        source = f"run {args.run} (torch)"
    else:
        config = Config.of(data_dir=args.data_dir, retrieval_epochs=args.epochs,
                           validation_freq=10 ** 6, layer_sizes=(64, args.dim), quiet=True,
                           seed=args.seed)
        dataset = load_dataset(config, progress=False)
        backend = make_backend("torch", config, dataset)
        _step(f"training the torch retrieval stage for {args.epochs} epochs")
        backend.fit_retrieval(dataset)
        source = f"torch, {args.epochs} retrieval epochs on {dataset.facts()['source']}"
    titles = unique_in_order(dataset.corpus_titles)
    test = dataset.split.test
    pick = np.sort(np.random.default_rng(args.seed).choice(
        len(test), min(args.queries, len(test)), replace=False))
    rows = test[pick]
    seed_rows = backend.candidate_embeddings(titles)
    queries = backend.query_embeddings(dataset.user_id[rows], dataset.timestamp[rows])
    return (np.ascontiguousarray(seed_rows, np.float32), np.ascontiguousarray(queries, np.float32),
            {"source": source, "titles": int(len(titles)), "test_ratings": int(len(test))})


def embeddings(args) -> tuple[np.ndarray, np.ndarray, dict]:
    """(seed rows [M, D], queries [Q, D], facts) from the source the arguments name."""
    if args.synthetic:
        seed_rows, queries = synthetic_embeddings(args.dim, args.queries, args.seed)
        return seed_rows, queries, {"source": "synthetic (Gaussian directions, log-normal "
                                              "norms)"}
    if not args.embeddings:
        return model_embeddings(args)
    with np.load(args.embeddings) as z:
        seed_rows, queries = z["seed_rows"], z["queries"][: args.queries]
        facts = json.loads(str(z["facts"]))
    if seed_rows.shape[1] != args.dim:
        raise SystemExit(f"--dim {args.dim}: {args.embeddings} holds dim {seed_rows.shape[1]}")
    return seed_rows, queries, {**facts, "file": str(args.embeddings)}


def enlarge(seed_rows: np.ndarray, n: int, seed: int, block: int = 1 << 20) -> np.ndarray:
    """[n, D] float32: the seed rows, then perturbed copies seed[i mod M] * U[0, 1)^D (TFRS's
    efficient-serving recipe; see the module docstring). n < M keeps the first n seed rows."""
    m, d = seed_rows.shape
    out = np.empty((n, d), np.float32)
    out[: min(n, m)] = seed_rows[: min(n, m)]
    rng = np.random.default_rng(seed)
    for start in range(m, n, block):
        stop = min(n, start + block)
        out[start:stop] = seed_rows[np.arange(start, stop) % m]
        out[start:stop] *= rng.random((stop - start, d), dtype=np.float32)
    return out


def norm_quantiles(x: np.ndarray) -> dict[str, float]:
    """Quantiles of the row norms (in blocks: no [N, D] temporary)."""
    norms = np.concatenate([np.linalg.norm(x[i: i + (1 << 20)], axis=1)
                            for i in range(0, len(x), 1 << 20)])
    return {f"p{q}": float(np.percentile(norms, q)) for q in (1, 10, 50, 90, 99)}


# --- exact search, the floor, recall -----------------------------------------------------------
def blocks(n: int, size: int):
    """(start, stop) of consecutive blocks of ``size`` rows out of ``n``."""
    return ((s, min(n, s + size)) for s in range(0, n, size))


def exact_top_k(queries: np.ndarray, catalog: np.ndarray, k: int) -> np.ndarray:
    """Rows [Q, min(k, N)] of the exact top-k inner products, best first, by ``faiss.knn``
    (BLAS products in blocks of the catalog, then a reservoir per query; not the FlatIndex
    under test). Ties at the k-th place: any of them."""
    import faiss

    from twostage.index.flat import blas_for_batches
    with blas_for_batches(queries.shape[1]):
        return faiss.knn(queries, catalog, min(k, len(catalog)), faiss.METRIC_INNER_PRODUCT)[1]


def gemm_floor_s(queries: np.ndarray, catalog: np.ndarray) -> tuple[float, int]:
    """(seconds, block rows) of queries @ catalog.T alone: numpy float32 BLAS products over
    blocks of the catalog into one reused output buffer, no top-k; the fastest block size of
    ``FLOOR_BLOCKS`` (1,024 is FAISS's own; small blocks keep the output in cache), each the
    best of up to 3 runs."""
    best = None
    for size in FLOOR_BLOCKS:
        out = np.empty((len(queries), size), np.float32)

        def run() -> None:
            for start, stop in blocks(len(catalog), size):
                np.matmul(queries, catalog[start:stop].T, out=out[:, : stop - start])

        seconds = best_time(run)[0]
        if best is None or seconds < best[0]:
            best = (seconds, size)
    return best


def recall(rows: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |rows[:, :k] & truth[:, :k]| / k (padding -1 never matches)."""
    k = min(k, truth.shape[1])
    got = rows[:, :k]
    got = np.where(got < 0, -1 - np.arange(got.shape[1]), got)   # distinct, never a row
    hits = [np.intersect1d(x, y, assume_unique=True).size for x, y in zip(got, truth[:, :k])]
    return float(np.mean(hits) / k)


def best_time(fn: Callable[[], object], budget_s: float = 5.0, repeats: int = 3
              ) -> tuple[float, object]:
    """(the fastest of up to ``repeats`` calls, stopping once ``budget_s`` is spent, the last
    result)."""
    times, spent, result = [], 0.0, None
    while len(times) < repeats and (not times or spent < budget_s):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times), result


def singles_qps(search: Callable[[np.ndarray], object], queries: np.ndarray,
                budget_s: float = SINGLE_BUDGET_S) -> tuple[float, int]:
    """(queries/s, how many ran) of ``queries`` searched one at a time (batches of one), in
    order, stopping early once ``budget_s`` is spent and ``MIN_SINGLES`` ran (an exhaustive
    scan of 10 million items takes seconds per query)."""
    t, done = time.perf_counter(), 0
    for q in queries:
        search(q[None, :])
        done += 1
        if done >= MIN_SINGLES and time.perf_counter() - t > budget_s:
            break
    return done / (time.perf_counter() - t), done


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- measuring ---------------------------------------------------------------------------------
@dataclass
class Context:
    """What every measurement of one catalog size shares."""

    catalog: np.ndarray
    queries: np.ndarray
    singles: np.ndarray
    truth: np.ndarray           # [Q, 100] exact rows
    budget_s: float
    history: dict               # variant name -> [(items, build seconds)] of earlier sizes


def estimate_build_s(kind: str, items: int, earlier: list[tuple[int, float]]) -> float | None:
    """Build seconds at ``items`` from earlier (items, seconds) of the same variant: the growth
    exponent of the last two sizes (between 1 and 2), else ``GROWTH[kind]``; None if none."""
    if not earlier:
        return None
    n1, t1 = earlier[-1]
    slope = GROWTH[kind]
    if len(earlier) >= 2:
        n0, t0 = earlier[-2]
        if n1 > n0 and t0 > 0 and t1 > 0:
            slope = min(2.0, max(1.0, math.log(t1 / t0) / math.log(n1 / n0)))
    return t1 * (items / n1) ** slope


def over_budget(name: str, kind: str, ctx: Context) -> str | None:
    """Why the variant is skipped at this size (estimated build above the budget), or None."""
    items = len(ctx.catalog)
    earlier = ctx.history.get(name, [])
    estimate = estimate_build_s(kind, items, earlier)
    if estimate is None or estimate <= ctx.budget_s:
        return None
    n1, t1 = earlier[-1]
    return (f"estimated build {estimate:,.0f} s exceeds --budget-s {ctx.budget_s:,.0f} "
            f"(built in {t1:,.1f} s at {n1:,} items)")


def measure_search(index, ctx: Context) -> dict:
    """Recall@10, recall@100 and queries/s (one batch of all queries; batches of one)."""
    index.search(ctx.queries[:10], K)                                  # warm-up
    batch_s, (_, rows100) = best_time(lambda: index.search(ctx.queries, K))
    # Scans rank the same cells or codes whatever k, so their top 10 is the top-100's head;
    # HNSW's walk depends on k, so it searches again.
    rows10 = index.search(ctx.queries, 10)[1] if index.kind == "hnsw" else rows100[:, :10]
    qps_single, singles = singles_qps(lambda q: index.search(q, K), ctx.singles)
    return {"recall_at_10": recall(rows10, ctx.truth, 10),
            "recall_at_100": recall(rows100, ctx.truth, K),
            "qps_batch": len(ctx.queries) / batch_s, "batch_s": batch_s,
            "qps_single": qps_single, "single_queries": singles}


def measure_variant(variant: Variant, ctx: Context) -> list[dict]:
    """Build the variant once, then measure each of its search settings -> result rows."""
    from twostage.index import create_index

    gc.collect()
    rss0, t = rss_bytes(), time.perf_counter()
    index = create_index(variant.kind, **variant.params).add(ctx.catalog)
    build_s = time.perf_counter() - t
    rss1 = rss_bytes()
    built = {"variant": variant.name, "kind": variant.kind, "params": index.params(),
             "build_s": build_s, "index_bytes": index.serialized_bytes(),
             "rss_delta_bytes": None if rss0 is None or rss1 is None else rss1 - rss0}
    if hasattr(index._index, "nlist"):
        built["nlist"] = int(index._index.nlist)
    ctx.history.setdefault(variant.name, []).append((len(ctx.catalog), build_s))
    _step(f"  {variant.name}: built in {build_s:,.1f} s, {built['index_bytes'] / 2**20:,.1f} MiB")
    rows = []
    values = variant.values or (None,)
    if variant.setting == "nprobe":
        values = tuple(v for v in values if v <= built["nlist"])
    for value in values:
        if value is not None:
            index.set_search(**{variant.setting: value})
        row = {**built, "setting": variant.setting, "value": value, **measure_search(index, ctx)}
        rows.append(row)
        _step(f"  {_label(row)}: recall@10 {row['recall_at_10']:.3f}, recall@100 "
              f"{row['recall_at_100']:.3f}, {row['qps_batch']:,.0f} q/s batched, "
              f"{row['qps_single']:,.0f} q/s single")
    del index
    gc.collect()
    return rows


# --- TFRS BruteForce, in a child process ----------------------------------------------------
def tfrs_child(folder: Path, singles: int) -> int:
    """``--tfrs-child``: BruteForce over ``folder``/catalog.npy, searched with queries.npy;
    writes rows100.npy (its top-100 rows) and prints one JSON line of timings."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    catalog = np.load(folder / "catalog.npy", mmap_mode="r")
    queries = np.load(folder / "queries.npy")
    t = time.perf_counter()
    layer = tfrs.layers.factorized_top_k.BruteForce(k=K)
    layer.index(tf.constant(catalog))
    build_s = time.perf_counter() - t
    search = tf.function(lambda q: layer(q, k=min(K, len(catalog))), input_signature=[
        tf.TensorSpec([None, catalog.shape[1]], tf.float32)])
    chunk = int(max(1, min(len(queries), TFRS_CHUNK_BYTES // (4 * len(catalog)))))

    def batched() -> np.ndarray:
        return np.concatenate([search(queries[i: i + chunk])[1].numpy()
                               for i in range(0, len(queries), chunk)])

    search(queries[:chunk])                                              # trace, warm up
    batch_s, rows100 = best_time(batched)
    search(queries[:1])
    qps_single, done = singles_qps(lambda q: search(q)[1].numpy(), queries[:singles])
    np.save(folder / "rows100.npy", rows100)
    print(json.dumps({"build_s": build_s, "batch_s": batch_s, "qps_single": qps_single,
                      "single_queries": done, "chunk": chunk}))
    return 0


def measure_tfrs(ctx: Context, out: Path) -> list[dict]:
    """TFRS BruteForce on the same catalog and queries (child process) -> one result row."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".tfrs-") as tmp:
        folder = Path(tmp)
        np.save(folder / "catalog.npy", ctx.catalog)
        np.save(folder / "queries.npy", ctx.queries)
        environment = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, "-m", "benchmarks.index", "--tfrs-child", tmp,
                               "--single-queries", str(len(ctx.singles))], env=environment,
                              cwd=Path(__file__).resolve().parents[1], capture_output=True,
                              text=True)
        if done.returncode:
            raise RuntimeError(f"the TFRS BruteForce child failed ({done.returncode}):\n"
                               f"{done.stderr[-3000:]}")
        seconds = json.loads(done.stdout.strip().splitlines()[-1])
        rows100 = np.load(folder / "rows100.npy")
    ctx.history.setdefault("tfrs_bruteforce", []).append((len(ctx.catalog), seconds["build_s"]))
    row = {"variant": "tfrs_bruteforce", "kind": "tfrs", "params": {"k": K},
           "build_s": seconds["build_s"], "index_bytes": int(ctx.catalog.nbytes),
           "rss_delta_bytes": None, "setting": "query_chunk", "value": seconds["chunk"],
           "recall_at_10": recall(rows100[:, :10], ctx.truth, 10),
           "recall_at_100": recall(rows100, ctx.truth, K),
           "qps_batch": len(ctx.queries) / seconds["batch_s"], "batch_s": seconds["batch_s"],
           "qps_single": seconds["qps_single"], "single_queries": seconds["single_queries"]}
    _step(f"  {_label(row)}: recall@100 {row['recall_at_100']:.3f}, {row['qps_batch']:,.0f} q/s "
          f"batched, {row['qps_single']:,.0f} q/s single")
    return [row]


def measure_size(items: int, seed_rows: np.ndarray, queries: np.ndarray, args,
                 chosen: dict[str, Variant], history: dict, out: Path,
                 on_variant: Callable[[dict], None] = lambda result: None) -> dict:
    """Everything measured at one catalog size; ``on_variant(result so far)`` after each
    variant (the driver writes the JSON then, so a killed run keeps what it measured)."""
    load = os.getloadavg()[0]        # this process's own work counts too (up to --threads)
    _step(f"[{items:,} items] building the catalog")
    catalog = enlarge(seed_rows, items, args.seed + 1)
    t = time.perf_counter()
    truth = exact_top_k(queries, catalog, K)
    truth_s = time.perf_counter() - t
    floor_s, floor_block = gemm_floor_s(queries, catalog)
    _step(f"[{items:,} items] ground truth in {truth_s:,.1f} s; GEMM floor {floor_s:.3f} s for "
          f"{len(queries):,} queries")
    ctx = Context(catalog, queries, queries[: args.single_queries], truth, args.budget_s,
                  history)
    result = {"items": items, "load_average_at_start": load,
              "catalog_norms": norm_quantiles(catalog),
              "ground_truth_s": truth_s,
              "gemm_floor": {"seconds": floor_s, "queries": len(queries),
                             "block_rows": floor_block, "flops": 2.0 * len(queries) * items
                             * catalog.shape[1]},
              "rows": [], "skipped": [], "failed": [], "complete": False}
    jobs = [(name, v.kind, lambda v=v: measure_variant(v, ctx)) for name, v in chosen.items()]
    if args.tfrs:
        jobs.append(("tfrs_bruteforce", "tfrs", lambda: measure_tfrs(ctx, out)))
    for name, kind, job in jobs:
        why = over_budget(name, kind, ctx)
        if why:
            result["skipped"].append({"variant": name, "reason": why})
            _step(f"  {name}: skipped, {why}")
            continue
        _step(f"[{items:,} items] {name}")
        try:
            result["rows"].extend(job())
        except Exception as e:          # one variant failing must not lose the others' hours
            result["failed"].append({"variant": name, "error": f"{type(e).__name__}: {e}"})
            _step(f"  {name}: FAILED, {type(e).__name__}: {e}")
        exact = _flat(result)
        if exact:
            result["exact_over_floor"] = exact["batch_s"] / floor_s
        on_variant(result)
    result["complete"] = True
    result["load_average_at_end"] = os.getloadavg()[0]
    return result


# --- targets, table, plot ----------------------------------------------------------------------
def _flat(size: dict) -> dict | None:
    return next((r for r in size["rows"] if r["variant"] == "flat"), None)


def _label(row: dict) -> str:
    return row["variant"] + ("" if row["value"] is None or row["kind"] == "tfrs"
                             else f" {row['setting']}={row['value']}")


def _approximate(size: dict) -> list[dict]:
    return [r for r in size["rows"] if r["kind"] not in ("flat", "tfrs")]


def target_speed(size: dict | None) -> dict:
    """1M items: a setting with recall@100 >= 0.95 at >= 10x exact search's batched queries/s."""
    name = "1M items: recall@100 >= 0.95 at >= 10x the queries/s of exact search (batched)"
    if size is None or _flat(size) is None:
        return {"target": name, "status": "not run"}
    exact = _flat(size)["qps_batch"]
    good = [r for r in _approximate(size) if r["recall_at_100"] >= 0.95]
    best = max(good, key=lambda r: r["qps_batch"], default=None)
    if best is None:
        return {"target": name, "status": "miss", "detail": "no setting reaches recall@100 0.95"}
    ratio = best["qps_batch"] / exact
    return {"target": name, "status": "pass" if ratio >= 10 else "miss",
            "detail": f"{_label(best)}: recall@100 {best['recall_at_100']:.3f} at "
                      f"{ratio:.1f}x exact ({best['qps_batch']:,.0f} vs {exact:,.0f} q/s)"}


def target_mips(size: dict | None) -> dict:
    """1M items: HNSW with the MIPS augmentation >= 0.2 above raw inner-product HNSW in
    recall@100 at equal efSearch (pass if at some efSearch; every difference is listed)."""
    name = "1M items: HNSW+MIPS recall@100 >= raw-IP HNSW + 0.2 at equal efSearch"
    raw = {r["value"]: r for r in (size or {"rows": []})["rows"] if r["variant"] == "hnsw"}
    aug = {r["value"]: r for r in (size or {"rows": []})["rows"] if r["variant"] == "hnsw_mips"}
    common = sorted(set(raw) & set(aug))
    if not common:
        return {"target": name, "status": "not run"}
    gains = {ef: aug[ef]["recall_at_100"] - raw[ef]["recall_at_100"] for ef in common}
    return {"target": name, "status": "pass" if max(gains.values()) >= 0.2 else "miss",
            "detail": "gain at efSearch " + ", ".join(f"{ef}: {g:+.3f}" for ef, g in
                                                        gains.items())}


def target_memory(size: dict | None) -> dict:
    """10M items: an index of at most 1 GiB with recall@100 >= 0.9."""
    name = "10M items: an index in <= 1 GiB with recall@100 >= 0.9"
    if size is None:
        return {"target": name, "status": "not run"}
    fits = [r for r in size["rows"] if r["kind"] != "tfrs" and r["index_bytes"] <= ONE_GIB]
    good = [r for r in fits if r["recall_at_100"] >= 0.9]
    best = max(good, key=lambda r: r["qps_batch"], default=None)
    if best is None:
        top = max(fits, key=lambda r: r["recall_at_100"], default=None)
        detail = ("no index of <= 1 GiB was measured" if top is None else
                  f"best recall@100 within 1 GiB: {top['recall_at_100']:.3f} ({_label(top)})")
        return {"target": name, "status": "miss", "detail": detail}
    return {"target": name, "status": "pass",
            "detail": f"{_label(best)}: {best['index_bytes'] / 2**20:,.0f} MiB, recall@100 "
                      f"{best['recall_at_100']:.3f}, {best['qps_batch']:,.0f} q/s batched"}


def target_floor(size: dict | None) -> dict:
    """1M items: exact search of the query batch within 1.5x the GEMM floor."""
    name = "1M items: exact search (batched) within 1.5x the matrix-multiply floor"
    if size is None or "exact_over_floor" not in size:
        return {"target": name, "status": "not run"}
    ratio = size["exact_over_floor"]
    return {"target": name, "status": "pass" if ratio <= 1.5 else "miss",
            "detail": f"exact {_flat(size)['batch_s']:.3f} s, floor "
                      f"{size['gemm_floor']['seconds']:.3f} s: {ratio:.2f}x"}


def targets(sizes: dict[str, dict]) -> list[dict]:
    one, ten = sizes.get(str(10 ** 6)), sizes.get(str(10 ** 7))
    return [target_speed(one), target_mips(one), target_memory(ten), target_floor(one)]


def table(sizes: dict[str, dict]) -> str:
    """Markdown: one line per index setting and size, the floor beside exact search."""
    lines = ["| items | index | setting | recall@10 | recall@100 | q/s batched | q/s single | "
             "build s | MiB |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for size in sizes.values():
        n = f"{size['items']:,}"
        for r in size["rows"]:
            setting = "" if r["value"] is None else f"{r['setting']}={r['value']}"
            lines.append(f"| {n} | {r['variant']} | {setting} | {r['recall_at_10']:.3f} | "
                         f"{r['recall_at_100']:.3f} | {r['qps_batch']:,.0f} | "
                         f"{r['qps_single']:,.0f} | {r['build_s']:,.1f} | "
                         f"{r['index_bytes'] / 2**20:,.1f} |")
            if r["variant"] == "flat":
                floor = size["gemm_floor"]
                lines.append(f"| {n} | GEMM floor (no top-k) | | | | "
                             f"{floor['queries'] / floor['seconds']:,.0f} | | | |")
        for s in size["skipped"]:
            lines.append(f"| {n} | {s['variant']} | skipped: {s['reason']} | | | | | | |")
        for s in size.get("failed", []):
            lines.append(f"| {n} | {s['variant']} | failed: {s['error']} | | | | | | |")
    return "\n".join(lines)


def plot(sizes: dict[str, dict], path: Path) -> None:
    """Recall@100 against batched queries/s, one panel per size, one line per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes.values()):
        names = dict.fromkeys(r["variant"] for r in size["rows"])
        for name in names:
            rows = [r for r in size["rows"] if r["variant"] == name]
            ax.plot([r["recall_at_100"] for r in rows], [r["qps_batch"] for r in rows],
                    marker="o", markersize=3, label=name)
        exact = _flat(size)
        if exact:
            ax.axhline(10 * exact["qps_batch"], color="grey", linestyle=":", linewidth=1,
                       label="10x exact")
        ax.axvline(0.95, color="grey", linestyle="--", linewidth=0.8)
        ax.set(xscale="linear", yscale="log", xlabel="recall@100 vs exact",
               ylabel="queries/s (batch)", title=f"{size['items']:,} items")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


# --- driver ------------------------------------------------------------------------------------
def _step(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def machine(threads: int) -> dict:
    """Facts of this machine and the libraries that did the work (torch only if imported)."""
    import platform

    import faiss
    facts = {"python": platform.python_version(), "platform": platform.platform(),
             "cpus": os.cpu_count(), "processor": platform.processor(),
             "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
             "faiss": faiss.__version__, "faiss_threads": threads, "numpy": np.__version__}
    if "torch" in sys.modules:
        facts["torch"] = sys.modules["torch"].__version__
    return facts


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000],
                   help="catalog sizes, ascending")
    p.add_argument("--dim", type=int, default=32, help="embedding width")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run", help="a run folder whose torch models give the embeddings")
    source.add_argument("--synthetic", action="store_true",
                        help="random embeddings of varying norm instead of a trained model")
    source.add_argument("--embeddings", metavar="NPZ",
                        help="the embeddings.npz an earlier run of this benchmark wrote")
    p.add_argument("--data-dir", help="MovieLens folder (default: TWOSTAGE_DATA_DIR, cache)")
    p.add_argument("--epochs", type=int, default=5, help="retrieval epochs when training here")
    p.add_argument("--queries", type=int, default=1000, help="queries, searched as one batch")
    p.add_argument("--single-queries", type=int, default=200,
                   help="of those, how many are also searched one at a time")
    p.add_argument("--nprobe", type=int, nargs="+", default=list(NPROBES),
                   help="ivf / ivfpq nprobe values swept (those above nlist are left out)")
    p.add_argument("--ef-search", type=int, nargs="+", default=list(EF_SEARCHES),
                   help="hnsw efSearch values swept")
    p.add_argument("--kinds", nargs="+", metavar="VARIANT",
                   help="variants to measure (default: all: flat ivf ivfpq<D/4> ivfpq<D/2> "
                   "hnsw hnsw_mips sq)")
    p.add_argument("--no-tfrs", dest="tfrs", action="store_false",
                   help="leave out TFRS's BruteForce (no TensorFlow)")
    p.add_argument("--budget-s", type=float, default=900.0,
                   help="skip a variant whose build is estimated to take longer at a size")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="FAISS OpenMP threads (default: every core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/index")
    p.add_argument("--tfrs-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    problems = [f"{name} must be >= 1" for name, v in (
        ("--dim", args.dim), ("--queries", args.queries), ("--single-queries",
                                                          args.single_queries),
        ("--epochs", args.epochs), ("--threads", args.threads),
        ("--nprobe", min(args.nprobe)), ("--ef-search", min(args.ef_search))) if v < 1]
    if any(n < 1 for n in args.items) or args.items != sorted(set(args.items)):
        problems.append(f"--items {' '.join(map(str, args.items))}: sizes must be >= 1, distinct "
                        "and ascending (build estimates come from the smaller sizes)")
    if args.budget_s <= 0:
        problems.append(f"--budget-s {args.budget_s} must be > 0")
    if problems:
        p.error("; ".join(problems))
    return args


def chosen_variants(args) -> dict[str, Variant]:
    known = variants(args.dim, tuple(args.nprobe), tuple(args.ef_search))
    unknown = sorted(set(args.kinds or ()) - set(known))
    if unknown:
        raise SystemExit(f"--kinds: unknown variant(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(known)}")
    return {n: v for n, v in known.items() if not args.kinds or n in args.kinds}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.tfrs_child:
        return tfrs_child(Path(args.tfrs_child), args.single_queries)
    env.setup_process()
    chosen = chosen_variants(args)
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        _step(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores before starting: "
              "other processes share the cores, so timings will be slow and noisy")
    out = io.ensure_writable_dir(args.out, "--out")
    seed_rows, queries, facts = embeddings(args)
    import faiss
    faiss.omp_set_num_threads(args.threads)   # after training: torch sets OpenMP's count too
    io.write_with(out / "embeddings.npz", lambda tmp: np.savez(
        tmp, seed_rows=seed_rows, queries=queries, facts=np.array(json.dumps(facts))))
    args.single_queries = min(args.single_queries, len(queries))
    report = {"machine": machine(args.threads), "date": time.strftime("%Y-%m-%d %H:%M"),
              "args": {k: v for k, v in vars(args).items() if k != "tfrs_child"},
              "embeddings": {**facts, "dim": args.dim, "seed_rows": int(len(seed_rows)),
                             "queries": int(len(queries)), "single_queries": args.single_queries,
                             "seed_norms": norm_quantiles(seed_rows),
                             "query_norms": norm_quantiles(queries),
                             "enlargement": "TFRS efficient_serving: seed rows, then "
                                            "seed[i mod M] * U[0,1)^D"},
              "sizes": {}}
    history: dict = {}
    for items in args.items:
        def partial(result: dict, items: int = items) -> None:
            report["sizes"][str(items)] = result
            report["targets"] = targets(report["sizes"])
            io.write_json(out / "index.json", report)

        partial(measure_size(items, seed_rows, queries, args, chosen, history, out, partial))
        plot(report["sizes"], out / "index.png")
        io.write_text(out / "index.md", table(report["sizes"]) + "\n")
        _step(f"[{items:,} items] done; wrote {out / 'index.json'}, index.png, index.md")
    print(table(report["sizes"]))
    print()
    for t in report["targets"]:
        print(f"- {t['status'].upper():>8}  {t['target']}" + (f": {t['detail']}"
                                                            if "detail" in t else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
