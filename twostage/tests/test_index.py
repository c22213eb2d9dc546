"""twostage.index: exactness of "flat", recall of "ivf"/"hnsw", persistence, the kind registry,
make_index from the configuration, and errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from twostage.config import INDEX_KINDS, Config
from twostage.index.ivf import guideline_nlist
from twostage.index import (KINDS, FlatIndex, HNSWIndex, Index, IVFIndex, IVFPQIndex, SQIndex,
                            check_k, create_index, make_index)

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
    index = FlatIndex().add(corpus)
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
    index = FlatIndex().add(corpus)
    scores, rows = index.search(np.array([[1, 0]], F32), 10)           # k > M: clipped to 5
    np.testing.assert_array_equal(rows, [[3, 0, 2, 4, 1]])
    np.testing.assert_array_equal(scores, [[2, 1, 1, 1, 0]])


def test_add_twice_appends_rows():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 8)).astype(F32), rng.normal(size=(5, 8)).astype(F32)
    index = FlatIndex().add(a).add(b)
    _, rows = index.search(b[:1] * 100, 1)
    assert len(index) == 15 and rows[0, 0] == 10


@pytest.mark.parametrize("kind,kwargs", [("ivf", {"nlist": 64, "nprobe": 8}),
                                         ("hnsw", {"hnsw_m": 32, "ef_search": 128})])
def test_approximate_recall_is_high(kind, kwargs):
    corpus, queries = clustered(4000, 200)
    index = create_index(kind, **kwargs).add(corpus)
    assert not index.is_exact()
    scores, rows = index.search(queries, 10)
    _, exact_rows = brute_force(queries, corpus, 10)
    assert recall(rows, exact_rows) >= 0.9
    assert (np.diff(scores, axis=1) <= 0).all()
    # scores are true inner products of the returned rows
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", queries, corpus[rows]),
                               rtol=1e-4, atol=1e-3)


def test_ivf_nlist_above_catalog_is_an_error_naming_the_limit():
    corpus, _ = clustered(20, 5, d=8, n_clusters=4)
    with pytest.raises(ValueError, match=r"nlist=64 exceeds the catalog's 20 items.*--index-nlist "
                                         r"to at most 20.*4\*sqrt\(N\) = 18"):
        IVFIndex(nlist=64, nprobe=8).add(corpus)


@pytest.mark.parametrize("m,expected", [(1, 1), (20, 18), (1664, 163), (1_000_000, 4000)])
def test_guideline_nlist_is_four_sqrt_n(m, expected):
    assert guideline_nlist(m) == expected


def test_ivf_default_nlist_follows_the_guideline_and_clips_nprobe():
    corpus, queries = clustered(20, 5, d=8, n_clusters=4)
    index = IVFIndex(nprobe=64).add(corpus)                 # guideline: 18 cells, all probed
    assert index._index.nlist == 18 and index._index.nprobe == 18
    _, rows = index.search(queries, 20)                     # all cells probed: exact
    _, exact_rows = brute_force(queries, corpus, 20)
    assert recall(rows, exact_rows) == 1.0


def test_ivf_pads_missing_results_at_the_end():
    corpus, queries = clustered(200, 10, d=8, n_clusters=20, seed=2)
    index = IVFIndex(nlist=20, nprobe=1).add(corpus)
    scores, rows = index.search(queries, 150)               # one cell holds < 150 vectors
    padded = rows < 0
    assert padded.any()
    assert np.isneginf(scores[padded]).all()
    assert not (padded[:, :-1] & ~padded[:, 1:]).any()      # padding only at the end of rows
    assert (np.diff(np.where(padded, np.finfo(F32).min, scores), axis=1) <= 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    corpus, queries = clustered(500, 20, d=16)
    index = make_index(Config.of(kind=kind, nlist=8, nprobe=3, hnsw_m=12, ef_search=40)
                       ).add(corpus)
    path = tmp_path / "sub" / "index.faiss"
    index.save(path)
    assert sorted(os.listdir(path.parent)) == ["index.faiss"]   # no temporary left behind
    loaded = Index.load(path)
    assert loaded.params() == index.params()
    assert (loaded.kind, loaded.dim, loaded.ntotal) == (kind, 16, 500)
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    index.save(path)                                            # overwrite in place
    assert Index.load(path).ntotal == 500


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="flat, ivf, hnsw"):
        create_index("annoy")
    with pytest.raises(ValueError, match="nprobe"):
        IVFIndex(nprobe=0)
    index = FlatIndex()
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
        Index.load(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="FaissIndex.save"):
        Index.load(tmp_path / "junk")


def test_index_leaves_torch_threads_alone():
    """FAISS and torch share the OpenMP runtime: the index must not lower torch's threads."""
    import torch            # a hard dependency: missing must fail, not skip

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        index = FlatIndex()
        index.add(np.random.default_rng(0).random((20, 4), dtype=np.float32))
        index.search(np.ones((3, 4), np.float32), 5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- the kind registry and make_index --------------------------------------------------------
def test_kinds_registry_matches_the_configuration():
    assert tuple(KINDS) == INDEX_KINDS
    assert KINDS == {"flat": FlatIndex, "ivf": IVFIndex, "hnsw": HNSWIndex,
                     "ivfpq": IVFPQIndex, "sq": SQIndex}
    assert all(cls.kind == kind and issubclass(cls, Index) for kind, cls in KINDS.items())


@pytest.mark.parametrize("kind,cls,params", [
    ("flat", FlatIndex, {}),
    ("ivf", IVFIndex, {"nlist": 16, "nprobe": 4}),
    ("hnsw", HNSWIndex, {"hnsw_m": 8, "ef_search": 24, "ef_construction": 40, "mips": True,
                         "mips_radius": None}),     # the augmentation by default; R set by add
    ("ivfpq", IVFPQIndex, {"nlist": 16, "nprobe": 4, "pq_bytes": 8}),
    ("sq", SQIndex, {}),
])
def test_make_index_builds_the_configured_kind(kind, cls, params):
    config = Config.of(kind=kind, nlist=16, nprobe=4, hnsw_m=8, ef_search=24)
    index = make_index(config)
    assert type(index) is cls and index.kind == kind and index.ntotal == 0 and index.dim is None
    assert index.params() == {"kind": kind, **params}
    assert make_index(config.index).params() == index.params()     # the section alone works too
    assert create_index(**index.params()).params() == index.params()
    corpus, queries = clustered(300, 5, d=8, n_clusters=10)
    index.add(corpus)
    assert index.is_exact() == (kind == "flat")
    assert repr(index).startswith(f"{cls.__name__}(") and "ntotal=300" in repr(index)
    if kind == "ivf":
        assert index._index.nprobe == 4 and index._index.nlist == 16
    if kind == "hnsw":
        assert index._index.hnsw.efSearch == 24
    scores, rows = index.search(queries, 7)
    assert scores.shape == rows.shape == (5, 7)


def test_make_index_defaults_are_the_config_defaults():
    assert make_index(Config()).params() == {"kind": "flat"}
    assert make_index(Config.of(kind="ivf")).params() == IVFIndex().params()
    assert make_index(Config.of(kind="hnsw")).params() == HNSWIndex().params()
    with pytest.raises(TypeError, match="Config"):
        make_index({"kind": "flat"})


def test_nprobe_above_nlist_is_refused():
    with pytest.raises(ValueError, match=r"nprobe=16 exceeds nlist=8"):
        IVFIndex(nlist=8, nprobe=16)
    with pytest.raises(ValueError, match=r"nprobe=16 exceeds nlist=8.*--index-nprobe"):
        make_index(Config.of(kind="ivf", nlist=8, nprobe=16))
    assert IVFIndex(nlist=8, nprobe=8).params()["nprobe"] == 8             # all cells: allowed


def test_unknown_kind_names_the_setting_and_the_kinds():
    from twostage.config import IndexConfig
    message = (r"unknown index kind 'annoy' \(config index.kind, --index-kind\); valid kinds: "
               r"flat, ivf, hnsw, ivfpq, sq")
    with pytest.raises(ValueError, match=message):
        create_index("annoy")
    with pytest.raises(ValueError, match=message):
        make_index(IndexConfig(kind="annoy"))      # the section's own check, worded alike


def test_k_above_the_catalog_clips_or_is_an_error_naming_the_limit():
    corpus, queries = clustered(50, 3, d=8, n_clusters=5)
    index = FlatIndex().add(corpus)
    scores, rows = index.search(queries, 80)                     # default: clipped, as TFRS
    assert rows.shape == (3, 50) and sorted(rows[0]) == list(range(50))
    with pytest.raises(ValueError, match=r"k=80 exceeds the catalog's 50 items.*at most 50"):
        index.search(queries, 80, strict=True)
    assert index.search(queries, 50, strict=True)[1].shape == (3, 50)   # the limit itself: fine
    with pytest.raises(ValueError, match=r"-k=5000 exceeds the catalog's 1,664 items.*lower -k "
                                         r"to at most 1664"):
        check_k(5000, 1664, "-k")
    assert check_k(100, 1664) == 100
    for strict in (False, True):
        with pytest.raises(ValueError, match="k=0 must be >= 1"):
            index.search(queries, 0, strict=strict)


def test_create_index_refuses_other_kinds_parameters():
    with pytest.raises(ValueError, match="flat index takes no parameters, not nlist"):
        create_index("flat", nlist=8)
    with pytest.raises(ValueError, match="hnsw index takes hnsw_m, ef_search, ef_construction, "
                                         "mips, mips_radius, not nprobe"):
        create_index("hnsw", nprobe=3)
    with pytest.raises(ValueError, match="hnsw_m=0"):
        HNSWIndex(hnsw_m=0)


# --- load: dispatch by kind and checks ---------------------------------------------------------
def _saved(tmp_path, kind, name="index.npz"):
    corpus, _ = clustered(300, 1, d=8, n_clusters=10)
    index = create_index(kind, **{"ivf": {"nlist": 10, "nprobe": 3},
                                  "hnsw": {"hnsw_m": 8, "ef_search": 20}}.get(kind, {}))
    path = index.add(corpus).save(tmp_path / name)
    return index, path


@pytest.mark.parametrize("kind", KINDS)
def test_load_dispatches_on_the_stored_kind(kind, tmp_path):
    index, path = _saved(tmp_path, kind)
    assert path == tmp_path / "index.npz"
    loaded = Index.load(path)
    assert type(loaded) is KINDS[kind] and loaded.params() == index.params()
    assert type(KINDS[kind].load(path)) is KINDS[kind]                 # its own class: fine
    if kind == "ivf":
        assert loaded._index.nprobe == 3                                # not kept by FAISS
    if kind == "hnsw":
        assert loaded._index.hnsw.efSearch == 20                        # not kept by FAISS
    other = next(cls for k, cls in KINDS.items() if k != kind)
    with pytest.raises(ValueError, match=f"is a {kind} index.*not a {other.__name__}.*Index.load"):
        other.load(path)
    with np.load(path) as z:
        assert sorted(z.files) == ["faiss", "format", "params"]
        assert json.loads(str(z["params"])) == index.params()


def test_load_reads_files_of_torch_impl_faiss_index(tmp_path):
    """torch_impl.index.FaissIndex.save wrote the same .npz without "format" and with every
    kind's knobs in params."""
    corpus, queries = clustered(200, 4, d=8, n_clusters=10)
    HNSWIndex(hnsw_m=12, ef_search=40, mips=False).add(corpus).save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        raw = z["faiss"]                                        # faiss.serialize_index bytes
    path = tmp_path / "index.npz"
    np.savez(path, faiss=raw, params=np.array(json.dumps(
        {"kind": "hnsw", "nlist": 64, "nprobe": 8, "hnsw_m": 12, "ef_search": 40})))
    loaded = Index.load(path, expect_dim=8, expect_ntotal=200)
    assert type(loaded) is HNSWIndex and loaded.params() == {
        "kind": "hnsw", "hnsw_m": 12, "ef_search": 40, "ef_construction": 40, "mips": False,
        "mips_radius": None}    # FaissIndex's HNSW searched raw inner products
    assert loaded._index.hnsw.efSearch == 40
    assert loaded.search(queries, 5)[1].shape == (4, 5)


@pytest.mark.parametrize("kind", KINDS)
def test_load_checks_expected_dim_and_ntotal(tmp_path, kind):
    _, path = _saved(tmp_path, kind)
    assert Index.load(path, expect_dim=8, expect_ntotal=300).ntotal == 300
    with pytest.raises(ValueError, match=(r"index at .*index\.npz holds 300 items of dim 8 but "
                                          r"the run's corpus has 1,682 items: rebuild it")):
        Index.load(path, expect_ntotal=1682)
    with pytest.raises(ValueError, match=r"holds 300 items of dim 8 but the run's model embeds "
                                         r"in dim 32: rebuild it"):
        Index.load(path, expect_dim=32)


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_load_refuses_files_that_are_not_indexes(tmp_path):
    FlatIndex().add(np.eye(4, dtype=F32)).save(tmp_path / "flat.npz")
    with np.load(tmp_path / "flat.npz") as z:
        good = z["faiss"]                                       # a valid IndexFlatIP
    fix = "rebuild it"
    cases = {
        "npy": (None, "not an .npz archive"),
        "no_params": ({"faiss": good}, "no params entry"),
        "not_json": ({"faiss": good, "params": np.array("{")}, "params is not JSON"),
        "list": ({"faiss": good, "params": np.array("[1]")}, "params is a JSON list"),
        "bytes": ({"faiss": np.zeros(3, np.uint8), "params": np.array('{"kind": "flat"}')},
                  "FAISS cannot read"),
        "kind": ({"faiss": good, "params": np.array('{"kind": "annoy"}')},
                 r"of kind 'annoy', which this twostage does not know \(kinds: flat, ivf, hnsw, "
                 r"ivfpq, sq\)"),
        "missing": ({"faiss": good, "params": np.array('{"kind": "ivf", "nlist": 4}')},
                    r"\(ivf\) lacks nprobe in its parameters"),
        "unknown": ({"faiss": good, "params": np.array('{"kind": "flat", "colour": 1}')},
                    "has unknown colour"),
        "bad_value": ({"faiss": good, "params": np.array(
            '{"kind": "ivf", "nlist": 4, "nprobe": 9}')}, "bad parameters.*nprobe=9 exceeds"),
        "type": ({"faiss": good, "params": np.array(
            '{"kind": "hnsw", "hnsw_m": 4, "ef_search": 9}')},
                 "says kind 'hnsw' but holds a FAISS IndexFlatIP"),
        "format": ({"faiss": good, "params": np.array('{"kind": "flat"}'),
                    "format": np.array("twostage.index/99")}, "format 'twostage.index/99'"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        if arrays is None:
            with open(path, "wb") as f:
                np.save(f, np.zeros(3))
        else:
            _write_npz(path, **arrays)
        with pytest.raises(ValueError, match=message) as e:
            Index.load(path)
        assert str(path) in str(e.value) and fix in str(e.value), name


def test_save_is_atomic_through_twostage_io(tmp_path, monkeypatch):
    index, path = _saved(tmp_path, "flat")
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before                         # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["index.npz"]       # and no temporary is left


def varying_norms(m: int, n: int, d: int = 16, seed: int = 0):
    """Candidates whose norms vary over two orders of magnitude (as trained item towers'),
    and queries: where raw inner-product HNSW loses its way."""
    rng = np.random.default_rng(seed)
    corpus = rng.normal(size=(m, d)) * np.exp(rng.normal(scale=1.2, size=(m, 1)))
    return corpus.astype(F32), rng.normal(size=(n, d)).astype(F32)


def recall_at(k: int, index, corpus, queries) -> float:
    exact = np.argsort(-(queries @ corpus.T), axis=1)[:, :k]
    got = index.search(queries, k)[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, got)]))


def test_mips_augmentation_is_an_exact_reduction_to_l2():
    import faiss
    corpus, queries = varying_norms(2000, 100)
    # efSearch = the catalogue size: the walk reaches every node, so only the plumbing is tested
    index = HNSWIndex(hnsw_m=16, ef_search=2000, mips=True).add(corpus)
    assert index.dim == 16 and index._index.d == 17 and index.metric() == faiss.METRIC_L2
    flat = faiss.IndexFlatL2(17)                      # exact L2 over the encoded vectors ...
    flat.add(index._encode(corpus, queries=False))
    rows = flat.search(index._encode(queries, queries=True), 10)[1]
    exact = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, rows)]) == 1.0  # = MIPS
    assert recall_at(10, index, corpus, queries) >= 0.95
    scores, rows = index.search(queries, 5)           # dot products, recovered from distances
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ corpus.T, rows, axis=1),
                               rtol=1e-4, atol=1e-3)


def test_mips_radius_is_fixed_by_the_first_add_and_survives_save(tmp_path):
    corpus, queries = varying_norms(300, 5, d=8)
    index = HNSWIndex(hnsw_m=8, mips=True).add(corpus)
    with pytest.raises(ValueError, match="longer .* than the radius"):
        index.add(corpus[:1] * 100)
    loaded = Index.load(index.save(tmp_path / "h.npz"), expect_dim=8, expect_ntotal=300)
    assert loaded.mips and loaded.mips_radius == index.mips_radius
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], index.search(queries, 7)[1])


@pytest.mark.parametrize("cls, kwargs, floor", [(IVFPQIndex, {"nlist": 8, "nprobe": 8}, 0.5),
                                               (SQIndex, {}, 0.9)])
def test_compressed_kinds_recall_and_round_trip(tmp_path, cls, kwargs, floor):
    corpus, queries = clustered(2000, 50, d=16, n_clusters=20)
    index = cls(**kwargs).add(corpus)
    assert recall_at(10, index, corpus, queries) >= floor
    assert index._index.sa_code_size() < 16 * 4          # smaller than float32 rows
    loaded = Index.load(index.save(tmp_path / "c.npz"), expect_dim=16, expect_ntotal=2000)
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_ivfpq_impossible_settings_are_named():
    corpus, _ = clustered(300, 1, d=12, n_clusters=5)
    with pytest.raises(ValueError, match="pq_bytes=8 must divide the embedding dim 12"):
        IVFPQIndex(nlist=4, nprobe=2, pq_bytes=8).add(corpus)
    with pytest.raises(ValueError, match="too few to train"):
        IVFPQIndex(nlist=4, nprobe=2, pq_bytes=4).add(corpus[:100])


# --- search settings of a built index, and its size ---------------------------------------------
def test_set_search_changes_settings_without_rebuilding(tmp_path):
    corpus, queries = clustered(2000, 50, d=16, n_clusters=20)
    ivf = IVFIndex(nlist=40, nprobe=1).add(corpus)
    low = recall_at(10, ivf, corpus, queries)
    assert ivf.set_search(nprobe=40) is ivf and ivf._index.nprobe == 40 and ivf.nprobe == 40
    assert recall_at(10, ivf, corpus, queries) == 1.0 > low        # every cell: exact
    assert Index.load(ivf.save(tmp_path / "i.npz")).params()["nprobe"] == 40   # saved too
    guideline = IVFPQIndex(nprobe=2).add(corpus)                     # nlist: 4*sqrt(2000) = 179
    with pytest.raises(ValueError, match=r"ivfpq: nprobe=500 exceeds nlist=179.*--index-nprobe"):
        guideline.set_search(nprobe=500)
    assert guideline._index.nprobe == 2                              # unchanged after refusal
    hnsw = HNSWIndex(hnsw_m=8, ef_search=16).add(corpus)
    hnsw.set_search(ef_search=64)
    assert hnsw._index.hnsw.efSearch == 64 and hnsw.params()["ef_search"] == 64
    with pytest.raises(ValueError, match="ef_search=0 must be >= 1"):
        hnsw.set_search(ef_search=0)
    with pytest.raises(ValueError, match=r"hnsw index: nprobe is not a search setting of this "
                                         r"kind \(search settings: ef_search\)"):
        hnsw.set_search(nprobe=4)
    with pytest.raises(ValueError, match=r"search settings: none"):
        FlatIndex().set_search(ef_search=4)
    assert IVFIndex(nlist=8).set_search(nprobe=8).nprobe == 8        # before add: vs nlist
    with pytest.raises(ValueError, match="nprobe=9 exceeds nlist=8"):
        IVFIndex(nlist=8).set_search(nprobe=9)


def test_serialized_bytes_counts_what_the_index_holds(tmp_path):
    corpus, _ = clustered(3000, 1, d=16, n_clusters=20)
    assert FlatIndex().serialized_bytes() == 0
    sizes = {}
    for kind, params in (("flat", {}), ("sq", {}), ("ivfpq", {"pq_bytes": 4})):
        index = create_index(kind, **params).add(corpus)
        sizes[kind] = index.serialized_bytes()
        with np.load(index.save(tmp_path / f"{kind}.npz")) as z:
            assert sizes[kind] == z["faiss"].size                    # = faiss.serialize_index
    raw = 3000 * 16 * 4
    assert raw < sizes["flat"] < raw * 1.01
    assert raw / 4 < sizes["sq"] < raw / 4 * 1.05                    # one byte per dimension
    assert sizes["ivfpq"] < raw / 2                                  # 4 code bytes + 8 id bytes


def test_flat_scores_batches_with_one_matrix_product_and_restores_faiss(monkeypatch):
    """FAISS 1.15 scans query by query below nx * d = 128,000 (4,000 queries of dim 32): the
    flat index switches batches of BLAS_MIN_QUERIES or more to the BLAS path for the call."""
    import faiss

    from twostage.index import flat

    corpus, queries = clustered(500, 64, d=16)
    index = FlatIndex().add(corpus)
    seen = []
    real = index._index

    class Spy:
        def search(self, x, k):
            seen.append(faiss.cvar.distance_compute_blas_threshold)
            return real.search(x, k)

    monkeypatch.setattr(index, "_index", Spy())
    monkeypatch.setattr(Spy, "ntotal", 500, raising=False)
    monkeypatch.setattr(Spy, "d", 16, raising=False)
    before = faiss.cvar.distance_compute_blas_threshold
    batched = index.search(queries, 10)
    one = index.search(queries[:flat.BLAS_MIN_QUERIES - 1], 10)
    assert seen == [flat.BLAS_MIN_QUERIES * 16, before]           # BLAS for the batch only
    assert faiss.cvar.distance_compute_blas_threshold == before   # restored
    exact = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(batched[1], exact)
    np.testing.assert_array_equal(one[1], exact[: flat.BLAS_MIN_QUERIES - 1])
