"""benchmarks.index at a tiny size on synthetic embeddings (no training), and its parts."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from parity_tests.tolerances import assert_top_k_close, cross_kernel_dot_atol

from benchmarks import index as bench

TINY = ["--synthetic", "--queries", "120", "--single-queries", "10", "--nprobe", "1", "4",
        "--ef-search", "16", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    assert bench.main(["--items", "3000", "--out", str(out), *TINY]) == 0
    return out, json.loads((out / "index.json").read_text())


def test_tiny_run_measures_every_kind_against_exact_search(tiny_run, capsys):
    out, report = tiny_run
    size = report["sizes"]["3000"]
    assert size["items"] == 3000 and size["skipped"] == size["failed"] == [] and size["complete"]
    expected = set(bench.variants(32)) | {"tfrs_bruteforce"}
    assert {r["variant"] for r in size["rows"]} == expected
    assert {r["kind"] for r in size["rows"]} == {"flat", "ivf", "ivfpq", "hnsw", "sq", "tfrs"}
    by = {}
    for r in size["rows"]:
        by.setdefault(r["variant"], []).append(r)
        assert 0.0 <= r["recall_at_10"] <= 1.0 and 0.0 <= r["recall_at_100"] <= 1.0
        assert r["qps_batch"] > 0 and r["qps_single"] > 0 and r["build_s"] >= 0
        assert r["index_bytes"] > 0 and r["single_queries"] == 10
    for exact in ("flat", "tfrs_bruteforce"):      # both exact: they find the ground truth
        assert by[exact][0]["recall_at_10"] == 1.0
        assert by[exact][0]["recall_at_100"] >= 0.999
    assert [r["value"] for r in by["ivf"]] == [1, 4] and by["ivf"][0]["nlist"] == 219
    assert by["ivf"][0]["recall_at_100"] < by["ivf"][1]["recall_at_100"]    # more cells: more
    assert [r["value"] for r in by["hnsw_mips"]] == [16, 64]
    assert by["hnsw_mips"][0]["params"]["mips"] and not by["hnsw"][0]["params"]["mips"]
    assert by["ivfpq8"][0]["index_bytes"] < by["ivf"][0]["index_bytes"]     # codes, not floats
    assert by["sq"][0]["index_bytes"] < by["flat"][0]["index_bytes"] / 3
    assert size["gemm_floor"]["seconds"] > 0 and size["exact_over_floor"] > 0
    assert report["embeddings"]["seed_rows"] == bench.SEED_ROWS
    assert report["embeddings"]["queries"] == 120 and report["machine"]["faiss_threads"] == 1
    assert [t["status"] for t in report["targets"]] == ["not run"] * 4
    assert (out / "index.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "index.md").read_text()
    assert table.count("\n| 3,000 |") == len(size["rows"]) + 1               # + the floor
    with np.load(out / "embeddings.npz") as z:
        assert z["seed_rows"].shape == (bench.SEED_ROWS, 32) and z["queries"].shape == (120, 32)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]         # no temporaries


def test_embeddings_file_reproduces_the_catalog(tiny_run, tmp_path):
    out, report = tiny_run
    assert bench.main(["--items", "3000", "--embeddings", str(out / "embeddings.npz"),
                       "--kinds", "flat", "sq", "--no-tfrs", "--out", str(tmp_path),
                       *TINY[1:]]) == 0
    again = json.loads((tmp_path / "index.json").read_text())
    first = {r["variant"]: r for r in report["sizes"]["3000"]["rows"]}
    rows = again["sizes"]["3000"]["rows"]
    assert [r["variant"] for r in rows] == ["flat", "sq"]
    assert rows[1]["recall_at_100"] == first["sq"]["recall_at_100"]    # same catalog, queries
    assert again["sizes"]["3000"]["catalog_norms"] == report["sizes"]["3000"]["catalog_norms"]


def test_enlarge_appends_perturbed_copies_as_tfrs_does():
    seed = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    big = bench.enlarge(seed, 50, seed=3, block=16)
    assert big.shape == (50, 4) and big.dtype == np.float32
    np.testing.assert_array_equal(big[:7], seed)
    originals = seed[np.arange(7, 50) % 7]
    factor = big[7:] / originals                     # one U[0, 1) draw per coordinate
    assert ((factor >= 0) & (factor < 1)).all() and len(np.unique(factor)) == factor.size
    np.testing.assert_array_equal(bench.enlarge(seed, 50, seed=3, block=16), big)
    assert not np.array_equal(bench.enlarge(seed, 50, seed=4), big)
    np.testing.assert_array_equal(bench.enlarge(seed, 5, seed=3), seed[:5])


def test_exact_top_k_and_recall():
    """Broken on purpose, it fails: an exact_top_k that returns the k lowest scores, or recall that
    counts padding."""
    rng = np.random.default_rng(1)
    catalog = rng.normal(size=(3000, 8)).astype(np.float32)
    queries = rng.normal(size=(40, 8)).astype(np.float32)
    truth = bench.exact_top_k(queries, catalog, 100)
    scores = queries @ catalog.T                      # FAISS's kernel vs numpy's: near-ties
    ref_rows = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    assert_top_k_close(np.take_along_axis(scores, truth, axis=1), truth,
                       np.take_along_axis(scores, ref_rows, axis=1), ref_rows,
                       cross_kernel_dot_atol(np.abs(queries), np.abs(catalog)))
    assert bench.recall(truth, truth, 100) == 1.0
    half = truth.copy()
    half[:, 50:] = -1                                # padding counts as a miss, not a match
    assert bench.recall(half, truth, 100) == 0.5 and bench.recall(half, truth, 10) == 1.0
    assert bench.recall(truth[:, ::-1], truth, 100) == 1.0          # order does not matter


def test_build_estimates_and_the_budget_skip(tmp_path, capsys):
    assert bench.estimate_build_s("ivf", 4000, []) is None
    assert bench.estimate_build_s("ivf", 4000, [(1000, 2.0)]) == pytest.approx(2.0 * 4 ** 1.5)
    assert bench.estimate_build_s("hnsw", 4000, [(1000, 1.0), (2000, 3.0)]) == pytest.approx(
        3.0 * 2 ** (np.log(3) / np.log(2)))                        # the measured growth
    assert bench.estimate_build_s("flat", 4000, [(1000, 5.0), (2000, 1.0)]) == 2.0  # slope >= 1
    seed, queries = bench.synthetic_embeddings(8, 30, seed=0)
    args = argparse.Namespace(seed=0, single_queries=5, budget_s=900.0, tfrs=False)
    chosen = {n: v for n, v in bench.variants(8, (2,), (16,)).items() if n in ("flat", "hnsw")}
    history = {"hnsw": [(1000, 500.0)]}                # 500 s * 2^1.2 > 900 s at 2,000 items
    size = bench.measure_size(2000, seed, queries, args, chosen, history, tmp_path)
    assert [r["variant"] for r in size["rows"]] == ["flat"]
    (skip,) = size["skipped"]
    assert skip["variant"] == "hnsw" and skip["reason"].startswith(
        "estimated build 1,149 s exceeds --budget-s 900 (built in 500.0 s at 1,000 items)")
    assert history["flat"][0][0] == 2000              # measured builds feed the next size
    assert size["complete"] and size["failed"] == []
    assert "hnsw | skipped: estimated build" in bench.table({"2000": size})
    assert "skipped" in capsys.readouterr().err


def _row(variant, kind, value, r100, qps, nbytes=10, batch_s=1.0):
    return {"variant": variant, "kind": kind, "setting": "s", "value": value,
            "recall_at_10": r100, "recall_at_100": r100, "qps_batch": qps, "qps_single": qps,
            "build_s": 1.0, "index_bytes": nbytes, "batch_s": batch_s}


def test_targets_pass_and_miss():
    one = {"items": 10 ** 6, "gemm_floor": {"seconds": 1.0}, "exact_over_floor": 1.4,
           "rows": [_row("flat", "flat", None, 1.0, 100.0, batch_s=1.4),
                    _row("ivf", "ivf", 8, 0.96, 1500.0), _row("ivf", "ivf", 4, 0.90, 3000.0),
                    _row("hnsw", "hnsw", 64, 0.50, 900.0), _row("hnsw_mips", "hnsw", 64, 0.75,
                                                                800.0)]}
    ten = {"items": 10 ** 7, "rows": [_row("flat", "flat", None, 1.0, 10.0, nbytes=2 << 30),
                                      _row("sq", "sq", None, 0.93, 20.0, nbytes=300 << 20),
                                      _row("tfrs_bruteforce", "tfrs", 1, 1.0, 5.0)]}
    speed, mips, memory, floor = bench.targets({"1000000": one, "10000000": ten})
    assert speed["status"] == "pass" and "ivf s=8" in speed["detail"] and "15.0x" in speed["detail"]
    assert mips["status"] == "pass" and "64: +0.250" in mips["detail"]
    assert memory["status"] == "pass" and memory["detail"].startswith("sq: 300 MiB")
    assert floor["status"] == "pass" and "1.40x" in floor["detail"]
    one["rows"][1]["qps_batch"] = 900.0                       # 9x exact: too slow
    one["rows"][4]["recall_at_100"] = 0.6
    one["exact_over_floor"] = 1.6
    ten["rows"][1]["recall_at_100"] = 0.85
    speed, mips, memory, floor = bench.targets({"1000000": one, "10000000": ten})
    assert [t["status"] for t in (speed, mips, memory, floor)] == ["miss"] * 4
    assert "best recall@100 within 1 GiB: 0.850" in memory["detail"]
    assert [t["status"] for t in bench.targets({})] == ["not run"] * 4


def test_bad_arguments_are_refused(tmp_path):
    for argv in (["--items", "2000", "1000"], ["--items", "0"], ["--queries", "0"],
                 ["--budget-s", "0"], ["--nprobe", "0"]):
        with pytest.raises(SystemExit):
            bench.main([*argv, "--synthetic", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown variant.*annoy"):
        bench.main(["--items", "2000", "--synthetic", "--kinds", "annoy", "--out",
                    str(tmp_path)])


def test_a_failing_variant_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = bench.measure_variant

    def flaky(variant, ctx):
        if variant.name == "ivf":
            raise MemoryError("no room")
        return real(variant, ctx)

    monkeypatch.setattr(bench, "measure_variant", flaky)
    assert bench.main(["--items", "2000", "--kinds", "flat", "ivf", "sq", "--no-tfrs",
                       "--out", str(tmp_path), *TINY]) == 0
    size = json.loads((tmp_path / "index.json").read_text())["sizes"]["2000"]
    assert [r["variant"] for r in size["rows"]] == ["flat", "sq"]
    assert size["failed"] == [{"variant": "ivf", "error": "MemoryError: no room"}]
    assert "ivf | failed: MemoryError: no room" in (tmp_path / "index.md").read_text()


def test_single_queries_stop_once_the_time_is_spent():
    import time
    calls = []

    def slow(q):
        calls.append(q.shape)
        time.sleep(0.002)

    qps, done = bench.singles_qps(slow, np.zeros((50, 4), np.float32), budget_s=0.01)
    assert done == len(calls) == bench.MIN_SINGLES and calls[0] == (1, 4)   # batches of one
    assert 0 < qps < 500
    assert bench.singles_qps(lambda q: None, np.zeros((30, 4), np.float32))[1] == 30
