"""twostage.index.exact (blocked products + threshold filter) against FAISS's IndexFlatIP and
against the tie rule of ``tf.math.top_k``, directly and through FlatIndex's routing.

Two kernels (FAISS's BLAS and numpy's, or two tile shapes of one) round a float32 product
differently in the last bits, so random-data comparisons use the derived cross-kernel bound
(``parity_tests.tolerances.cross_kernel_dot_atol``). The tie rules are checked bitwise on
integer-valued data, whose products are exact in every order on every CPU."""
from __future__ import annotations

import numpy as np
import pytest

from twostage.index import FlatIndex, flat
from twostage.index import exact
from twostage.index.exact import GROUP, blas_threads_settable, top_k_inner_product

from parity_tests.tolerances import assert_top_k_close, cross_kernel_dot_atol

F32 = np.float32
pytestmark = pytest.mark.skipif(not blas_threads_settable(),
                                reason="numpy's BLAS threads cannot be set (not OpenBLAS)")


def reference(queries, corpus, k):
    """Top-k by (score descending, row ascending) of numpy's float32 BLAS product: the
    ``tf.math.top_k`` rule, ties at the k-th place going to the lowest rows."""
    scores = queries @ corpus.T
    rows = np.array([np.lexsort((np.arange(len(corpus)), -s))[:k] for s in scores])
    return np.take_along_axis(scores, rows, axis=1), rows


@pytest.fixture
def route(monkeypatch):
    """route(True): FlatIndex sends every batch of >= 20 queries through exact; False: none."""
    def set_route(fast: bool) -> None:
        monkeypatch.setattr(flat, "EXACT_MIN_ITEMS", 1 if fast else 10**12)
        monkeypatch.setattr(flat, "EXACT_MIN_QUERIES", 1)
        monkeypatch.setattr(flat, "EXACT_MAX_K", 10**9)
    return set_route


@pytest.fixture
def calls(monkeypatch):
    """How many times FlatIndex called top_k_inner_product."""
    count = [0]

    def spy(*args, **kwargs):
        count[0] += 1
        return top_k_inner_product(*args, **kwargs)

    monkeypatch.setattr(flat, "top_k_inner_product", spy)
    return count


def both(index, queries, k, route):
    """(FAISS's result, exact's result) through FlatIndex.search."""
    route(False)
    faiss_result = index.search(queries, k)
    route(True)
    return faiss_result, index.search(queries, k)


def random_data(n_items, n_queries, dim, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_items, dim)).astype(F32),
            rng.standard_normal((n_queries, dim)).astype(F32))


def integer_data(n_items, n_queries, dim, seed=0):
    """Small integers: every product and sum is exact in float32, so all kernels agree."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-6, 7, (n_items, dim)).astype(F32),
            rng.integers(-6, 7, (n_queries, dim)).astype(F32))


def assert_close_to(queries, corpus, result, expected):
    """result == expected up to the cross-kernel rounding of ``queries @ corpus.T``."""
    atol = cross_kernel_dot_atol(np.abs(queries), np.abs(corpus))
    assert_top_k_close(*result, *expected, atol)


@pytest.mark.parametrize("k", [1, 10, 100, 300])
def test_flat_equals_faiss_on_random_data(k, route, calls):
    """Exact's top-k against FAISS's, within the cross-kernel bound. Broken on purpose, it fails: a
    tile offset off by one row, or a threshold that drops a candidate."""
    corpus, queries = random_data(12_000, 300, 32)
    index = FlatIndex().add(corpus)
    (f_scores, f_rows), (scores, rows) = both(index, queries, k, route)
    assert calls[0] == 1 and rows.shape == (300, k) and rows.dtype == np.int64
    assert_close_to(queries, corpus, (scores, rows), (f_scores, f_rows))
    assert scores.dtype == F32 and (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("k", [1, 10, 100])
def test_flat_equals_faiss_bitwise_on_exact_products(k, route, calls):
    """Where every kernel computes the same floats, the two agree to the bit."""
    corpus, queries = integer_data(3_000, 300, 32)
    corpus[:, 0] += np.arange(3_000, dtype=F32) * 512     # 7 * 512 > twice the rest's range:
    queries[:, 0] = 7                                      # distinct scores, all below 2**24
    index = FlatIndex().add(corpus)
    (f_scores, f_rows), (scores, rows) = both(index, queries, k, route)
    assert calls[0] == 1
    np.testing.assert_array_equal(rows, f_rows)
    np.testing.assert_array_equal(scores, f_scores)


@pytest.mark.parametrize("dim,tile,threads", [(7, 64, 1), (33, 128, 2), (16, 48, 3)])
def test_many_tiles_and_threads_match_reference(dim, tile, threads):
    """Ragged tiles and several workers against numpy's top-k. Broken on purpose, it fails: a
    worker's query chunk merged at the wrong offset, or ties resolved to a higher row."""
    corpus, queries = random_data(5_003, 150, dim, seed=dim)   # a ragged last tile
    result = top_k_inner_product(queries, corpus, 50, threads=threads, tile=tile)
    assert_close_to(queries, corpus, result, reference(queries, corpus, 50))
    exact_corpus, exact_queries = integer_data(5_003, 150, dim, seed=dim)   # ties everywhere
    scores, rows = top_k_inner_product(exact_queries, exact_corpus, 50, threads=threads,
                                       tile=tile)
    exp_scores, exp_rows = reference(exact_queries, exact_corpus, 50)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(scores, exp_scores)


@pytest.mark.parametrize("k", [7, 99, 150, 1000])
def test_duplicated_rows_keep_the_lowest_rows_of_a_tie(k, route, calls):
    """Broken on purpose, it fails: keys that order equal scores by descending row (the lowest-row
    rule of tf.math.top_k)."""
    base, queries = integer_data(300, 40, 8, seed=3)   # exact: identical rows tie anywhere
    corpus = np.tile(base, (60, 1))               # every score tied 60 times (at least)
    index = FlatIndex().add(corpus)
    (f_scores, f_rows), (scores, rows) = both(index, queries, k, route)
    exp_scores, exp_rows = reference(queries, corpus, k)
    np.testing.assert_array_equal(rows, exp_rows)
    np.testing.assert_array_equal(scores, exp_scores)
    assert (np.diff(rows, axis=1)[np.diff(scores, axis=1) == 0] > 0).all()
    # FAISS: the same scores and the same rows above the k-th score; of the rows tied at
    # the k-th score it keeps some (here not always the lowest: its choice, by k and layout)
    np.testing.assert_array_equal(scores, f_scores)
    above = scores > scores[:, -1:]
    assert (~above).any() and (k < 60 or above.any())
    np.testing.assert_array_equal(rows[above], f_rows[above])


def test_keys_order_by_score_then_lower_row():
    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.standard_normal(500).astype(F32) * 1e3,
                             np.array([0.0, -0.0, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45], F32)])
    scores = np.concatenate([scores, scores[::-1]])    # every score twice, on other rows
    rows = rng.permutation(len(scores)).astype(np.int64) * 1_000_003 % (1 << 32)
    keys = exact._keys(scores, rows)
    np.testing.assert_array_equal(np.argsort(-keys, kind="stable"),
                                  np.lexsort((rows, -scores)))       # -0.0 == 0.0: by row
    plus, minus = exact._keys(np.array([0.0, -0.0], F32), np.array([10, 5]))
    assert minus > plus                                  # equal scores: row 5 first
    back_scores, back_rows = exact._unkey(keys)
    np.testing.assert_array_equal(back_rows, rows)
    np.testing.assert_array_equal(back_scores, scores)


def test_all_equal_scores_and_zero_queries():
    corpus = np.ones((2_000, 4), F32)
    queries = np.vstack([np.ones((40, 4), F32), np.zeros((40, 4), F32)])  # zeros: +-0.0 ties
    scores, rows = top_k_inner_product(queries, corpus, 25, threads=2, tile=64)
    np.testing.assert_array_equal(rows, np.broadcast_to(np.arange(25), (80, 25)))
    np.testing.assert_array_equal(scores[:40], 4.0)
    np.testing.assert_array_equal(scores[40:], 0.0)


def test_ascending_catalogue_every_row_a_candidate():
    """Each row beats every earlier one: the candidates overflow their slots on every tile."""
    corpus = np.repeat(np.linspace(-1, 1, 6_000, dtype=F32)[:, None], 4, axis=1)
    queries = np.vstack([np.ones((30, 4), F32), -np.ones((30, 4), F32)])
    _, rows = top_k_inner_product(queries, corpus, 40, threads=2, tile=256)
    np.testing.assert_array_equal(rows[:30], np.broadcast_to(np.arange(5_999, 5_959, -1), (30, 40)))
    np.testing.assert_array_equal(rows[30:], np.broadcast_to(np.arange(40), (30, 40)))


def test_k_above_catalogue_is_clipped(route, calls):
    """Broken on purpose, it fails: k not clipped to the catalogue (padding rows would be
    returned)."""
    corpus, queries = random_data(500, 64, 8)
    index = FlatIndex().add(corpus)
    (f_scores, f_rows), (scores, rows) = both(index, queries, 600, route)
    assert calls[0] == 1 and rows.shape == (64, 500)
    assert_close_to(queries, corpus, (scores, rows), (f_scores, f_rows))
    np.testing.assert_array_equal(np.sort(rows, axis=1), np.broadcast_to(np.arange(500), (64, 500)))


def test_one_query_and_odd_inputs(route, calls):
    corpus, queries = integer_data(3_000, 40, 16)     # exact products: bitwise below
    exp_scores, exp_rows = reference(queries, corpus, 20)
    scores, rows = top_k_inner_product(queries[:1], corpus, 20, threads=2)
    np.testing.assert_array_equal(rows, exp_rows[:1])
    np.testing.assert_array_equal(scores, exp_scores[:1])         # one query: BLAS's gemv
    route(True)
    index = FlatIndex().add(corpus)
    wide = np.zeros((40, 32), F32)
    wide[:, ::2] = queries                           # a strided, non-contiguous view
    for odd in (queries.astype(np.float64), wide[:, ::2]):
        got_scores, got_rows = index.search(odd, 20)
        np.testing.assert_array_equal(got_rows, exp_rows)
        np.testing.assert_array_equal(got_scores, exp_scores)
    assert calls[0] == 2


def test_routing(monkeypatch, calls):
    corpus, queries = random_data(2_000, 30, 8)
    index = FlatIndex().add(corpus)
    monkeypatch.setattr(flat, "EXACT_MIN_ITEMS", 2_000)
    monkeypatch.setattr(flat, "EXACT_MIN_QUERIES", 25)
    monkeypatch.setattr(flat, "EXACT_MAX_K", 50)
    index.search(queries, 50)
    assert calls[0] == 1
    index.search(queries[:24], 50)               # too few queries
    index.search(queries, 51)                    # k too large
    index.search(queries[:10], 5)                # under BLAS_MIN_QUERIES: FAISS's scan
    assert calls[0] == 1
    monkeypatch.setattr(flat, "EXACT_MIN_ITEMS", 2_001)
    index.search(queries, 50)                    # catalogue too small
    assert calls[0] == 1
    index.add(corpus[:1])                        # now 2,001 rows: the bound covers the new row
    index.search(queries, 50)
    assert calls[0] == 2 and index._largest[0] == 2_001


def test_overflowing_products_stay_on_faiss(route, calls):
    corpus, queries = random_data(1_000, 30, 4)
    corpus[7] = 1e30
    index = FlatIndex().add(corpus)
    huge = queries.copy()
    huge[0] = 1e10                                # 4 * 1e10 * 1e30: float32 overflows
    (f_scores, f_rows), (scores, rows) = both(index, huge, 10, route)
    assert calls[0] == 0                          # FAISS's inf/NaN handling, unchanged
    np.testing.assert_array_equal(rows, f_rows)
    np.testing.assert_array_equal(scores, f_scores)
    assert np.isinf(scores[0, 0])
    scores, rows = index.search(np.abs(queries) + 1, 10)   # large but finite: exact's
    assert calls[0] == 1 and (rows[:, 0] == 7).all() and np.isfinite(scores).all()


def test_blas_threads_restored_and_errors():
    get, _ = exact._openblas()
    before = int(get())
    corpus, queries = random_data(1_000, 80, 8)
    top_k_inner_product(queries, corpus, 5, threads=2)
    assert int(get()) == before
    with pytest.raises(ValueError, match="k=0"):
        top_k_inner_product(queries, corpus, 0)
    with pytest.raises(ValueError, match="k=1001"):
        top_k_inner_product(queries, corpus, 1_001)
    with pytest.raises(ValueError, match=f"multiple of GROUP={GROUP}"):
        top_k_inner_product(queries, corpus, 5, tile=GROUP + 1)
    assert int(get()) == before
