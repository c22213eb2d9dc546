"""FaissIndex: exactness of "flat", recall of "ivf"/"hnsw", persistence and errors."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

try:
    from torch_impl.index import KINDS, FaissIndex
except ImportError:  # repo root not on sys.path: load the module from its file
    _spec = importlib.util.spec_from_file_location(
        "torch_impl_index", Path(__file__).resolve().parents[1] / "index.py")
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    KINDS, FaissIndex = _module.KINDS, _module.FaissIndex

F32 = np.float32


def brute_force(queries, corpus, k):
    scores = queries @ corpus.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def clustered(n_points, n_queries, d=32, n_clusters=40, seed=0):
    """Gaussian clusters (what trained embeddings look like; uniform noise has no structure for
    IVF to exploit)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d)) * 3
    corpus = centers[rng.integers(0, n_clusters, n_points)] + rng.normal(size=(n_points, d))
    queries = centers[rng.integers(0, n_clusters, n_queries)] + rng.normal(size=(n_queries, d))
    return corpus.astype(F32), queries.astype(F32)


def recall(rows, exact_rows):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, exact_rows)])


def test_flat_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(1682, 32)).astype(F32)
    queries = rng.normal(size=(300, 32)).astype(F32)
    index = FaissIndex().add(corpus)
    assert index.is_exact() and index.ntotal == 1682 and index.dim == 32
    scores, rows = index.search(queries, 100)
    exp_scores, exp_rows = brute_force(queries, corpus, 100)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert scores.shape == rows.shape == (300, 100)
    # FAISS's BLAS rounds differently from numpy's, so two items within an ulp may swap places
    # (or trade the 100th slot); everywhere else the rows are identical.
    differ = rows != exp_rows
    assert differ.mean() < 1e-3
    exact = queries.astype(np.float64) @ corpus.T.astype(np.float64)
    got = np.take_along_axis(exact, rows, axis=1)[differ]
    want = np.take_along_axis(exact, exp_rows, axis=1)[differ]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores, exp_scores, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    _, one_rows = index.search(queries[:1], 5)              # < 20 queries: FAISS's SIMD path
    np.testing.assert_array_equal(one_rows, exp_rows[:1, :5])


def test_ties_ordered_by_ascending_row_and_k_clipped():
    corpus = np.array([[1, 0], [0, 1], [1, 0], [2, 0], [1, 0]], F32)   # rows 0, 2, 4 tie
    index = FaissIndex().add(corpus)
    scores, rows = index.search(np.array([[1, 0]], F32), 10)           # k > M: clipped to 5
    np.testing.assert_array_equal(rows, [[3, 0, 2, 4, 1]])
    np.testing.assert_array_equal(scores, [[2, 1, 1, 1, 0]])


def test_add_twice_appends_rows():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 8)).astype(F32), rng.normal(size=(5, 8)).astype(F32)
    index = FaissIndex().add(a).add(b)
    _, rows = index.search(b[:1] * 100, 1)
    assert len(index) == 15 and rows[0, 0] == 10


@pytest.mark.parametrize("kind,kwargs", [("ivf", {"nlist": 64, "nprobe": 8}),
                                         ("hnsw", {"hnsw_m": 32, "ef_search": 128})])
def test_approximate_recall_is_high(kind, kwargs):
    corpus, queries = clustered(4000, 200)
    index = FaissIndex(kind, **kwargs).add(corpus)
    assert not index.is_exact()
    scores, rows = index.search(queries, 10)
    _, exact_rows = brute_force(queries, corpus, 10)
    assert recall(rows, exact_rows) >= 0.9
    assert (np.diff(scores, axis=1) <= 0).all()
    # scores are true inner products of the returned rows
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", queries, corpus[rows]),
                               rtol=1e-4, atol=1e-3)


def test_ivf_nlist_clipped_to_corpus_with_warning():
    corpus, queries = clustered(20, 5, d=8, n_clusters=4)
    with pytest.warns(UserWarning, match="nlist=64 exceeds the 20 vectors"):
        index = FaissIndex("ivf", nlist=64, nprobe=64).add(corpus)
    _, rows = index.search(queries, 20)                     # all cells probed: exact
    _, exact_rows = brute_force(queries, corpus, 20)
    assert recall(rows, exact_rows) == 1.0


def test_ivf_pads_missing_results_at_the_end():
    corpus, queries = clustered(200, 10, d=8, n_clusters=20, seed=2)
    index = FaissIndex("ivf", nlist=20, nprobe=1).add(corpus)
    scores, rows = index.search(queries, 150)               # one cell holds < 150 vectors
    padded = rows < 0
    assert padded.any()
    assert np.isneginf(scores[padded]).all()
    assert not (padded[:, :-1] & ~padded[:, 1:]).any()      # padding only at the end of rows
    assert (np.diff(np.where(padded, np.finfo(F32).min, scores), axis=1) <= 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    corpus, queries = clustered(500, 20, d=16)
    index = FaissIndex(kind, nlist=8, nprobe=3, hnsw_m=12, ef_search=40).add(corpus)
    path = tmp_path / "sub" / "index.faiss"
    index.save(path)
    assert sorted(os.listdir(path.parent)) == ["index.faiss"]   # no temporary left behind
    loaded = FaissIndex.load(path)
    assert loaded.params() == index.params()
    assert (loaded.kind, loaded.dim, loaded.ntotal) == (kind, 16, 500)
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    index.save(path)                                            # overwrite in place
    assert FaissIndex.load(path).ntotal == 500


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="flat, ivf, hnsw"):
        FaissIndex("annoy")
    with pytest.raises(ValueError, match="nprobe"):
        FaissIndex("ivf", nprobe=0)
    index = FaissIndex()
    with pytest.raises(RuntimeError, match="add"):
        index.search(np.ones((1, 4), F32), 1)
    with pytest.raises(RuntimeError, match="add"):
        index.save(tmp_path / "x")
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.array([[1, np.nan, 0, 0]], F32))
    with pytest.raises(ValueError, match="at least one"):
        index.add(np.ones((0, 4), F32))
    index.add(np.eye(4, dtype=F32))
    with pytest.raises(ValueError, match="dim 3"):
        index.search(np.ones((1, 3), F32), 1)
    with pytest.raises(ValueError, match="dim 5"):
        index.add(np.ones((1, 5), F32))
    with pytest.raises(ValueError, match="reshape"):
        index.search(np.ones(4, F32), 1)
    with pytest.raises(ValueError, match="inf"):
        index.search(np.array([[np.inf, 0, 0, 0]], F32), 1)
    with pytest.raises(ValueError, match="k=0"):
        index.search(np.ones((1, 4), F32), 0)
    with pytest.raises(FileNotFoundError):
        FaissIndex.load(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="FaissIndex.save"):
        FaissIndex.load(tmp_path / "junk")


def test_index_leaves_torch_threads_alone():
    """FAISS and torch share the OpenMP runtime: the index must not lower torch's threads."""
    import torch

    from torch_impl.index import FaissIndex

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        index = FaissIndex("flat")
        index.add(np.random.default_rng(0).random((20, 4), dtype=np.float32))
        index.search(np.ones((3, 4), np.float32), 5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
