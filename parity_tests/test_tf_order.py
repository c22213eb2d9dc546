"""TF's summation order (parity_tests/tf_order.py) against a literal Eigen reduction, and the
framework-agnostic top-k metric against a literal FactorizedTopK reference given TF's positives
(no TensorFlow needed: the references are written out step by step)."""
from __future__ import annotations

import numpy as np
import pytest

from twostage import evaluation as ev

from .tf_order import tf_positive_scores, tf_row_sum

F32 = np.float32


def tfrs_score_based_reference(q, c, corpus, ks):
    """TFRS FactorizedTopK.update_state, step by step: top max(ks) corpus scores, y_pred =
    [positive, top_k...], in_top_k(target 0) = count(y_pred > positive) < k, non-finite: miss."""
    pos = tf_row_sum(q * c)
    # the metric's products: near-ties of the positive settled by the FMA chain
    scores = ev.settle_near_ties(q @ corpus.T, pos, q, corpus, ev.cross_kernel_margin(q, corpus))
    top = -np.sort(-scores, axis=1)[:, :max(ks)]
    y_pred = np.concatenate([pos[:, None], top], axis=1)
    finite = np.isfinite(y_pred).all(axis=1)
    greater = (y_pred > pos[:, None]).sum(axis=1)
    return {k: float(np.mean(finite & (greater < k))) for k in ks}


def eigen_scalar_sum(row, p=8):
    """Eigen InnerMostDimReducer<.., true, false> + SumReducer::finalizeBoth + predux, scalar."""
    n = len(row)
    row = [F32(v) for v in row]
    acc0, start = [F32(0)] * p, 0
    if n >= 4 * p:
        accs = [[F32(0)] * p for _ in range(4)]
        stop = (n // (4 * p)) * 4 * p
        for j in range(0, stop, 4 * p):
            for a in range(4):
                accs[a] = [F32(accs[a][i] + row[j + a * p + i]) for i in range(p)]
        acc0 = accs[0]
        for a in (1, 2, 3):
            acc0 = [F32(acc0[i] + accs[a][i]) for i in range(p)]
        start = stop
    if start <= n - p:
        stop = (n // p) * p
        for j in range(start, stop, p):
            acc0 = [F32(acc0[i] + row[j + i]) for i in range(p)]
        start = stop
    tail = F32(0)
    for j in range(start, n):
        tail = F32(tail + row[j])
    while len(acc0) > 1:
        h = len(acc0) // 2
        acc0 = [F32(acc0[i] + acc0[i + h]) for i in range(h)]
    return F32(tail + acc0[0])


@pytest.mark.parametrize("d", [1, 5, 8, 9, 16, 31, 32, 33, 40, 64, 70, 100])
def test_tf_row_sum_matches_literal_eigen_order(d):
    x = np.random.default_rng(d).normal(size=(40, d)).astype(F32) * F32(1e3)
    expected = np.array([eigen_scalar_sum(r) for r in x], dtype=F32)
    np.testing.assert_array_equal(tf_row_sum(x), expected)


def test_tf_row_sum_order_is_not_sequential():
    # one packet of 8 + nothing else: predux adds lanes (0+4), (2+6) | (1+5), (3+7)
    x = np.zeros((1, 8), F32)
    x[0, 0], x[0, 1], x[0, 5] = 2.0 ** 24, 1.0, 1.0
    assert tf_row_sum(x)[0] == F32(2.0 ** 24 + 2)          # 1 + 1 summed first
    seq = F32(0)
    for v in x[0]:
        seq = F32(seq + v)
    assert seq == F32(2.0 ** 24)                              # each +1 lost alone


def test_factorized_matches_tfrs_reference_with_ties_and_chunks():
    rng = np.random.default_rng(0)
    m, n, d = 300, 1000, 32
    corpus = rng.normal(size=(m, d)).astype(F32)
    corpus[200:210] = corpus[:10]                       # duplicate titles
    corpus[250:260] = np.round(corpus[250:260])         # coarse values -> exact ties
    rows = rng.integers(0, m, n)
    q = (corpus[rows] * 0.3 + rng.normal(size=(n, d))).astype(F32)
    q[:20] = 0                                          # all ties
    q[20:40] = np.round(q[20:40])
    ks = (1, 5, 10, 50, 100)
    expected = tfrs_score_based_reference(q, corpus[rows], corpus, ks)
    pos = tf_positive_scores(q, corpus[rows])
    assert ev.factorized_top_k_accuracy(q, corpus[rows], corpus, ks, positive=pos) == expected
    assert ev.factorized_top_k_accuracy(q, corpus[rows], corpus, ks, budget_bytes=7 * 4 * m,
                                       positive=pos) == expected


@pytest.mark.parametrize("d", [5, 8, 9, 31, 32, 33, 40, 64, 100])
def test_tf_row_sum_matches_tf_reduce_sum_itself(d):
    """The emulation against TensorFlow's own kernel (not a second copy of the algorithm), on
    widths below, at and across the packet and 4-packet blocks, with values whose order of
    summation changes the float32 result.
    Broken on purpose, it fails: predux folding lanes (i, i + 1) instead of (i, i + P/2)."""
    import tensorflow as tf
    rng = np.random.default_rng(d)
    x = (rng.normal(size=(500, d)) * np.exp(rng.normal(size=(500, d)) * 4)).astype(F32)
    theirs = tf.reduce_sum(tf.constant(x), axis=1).numpy()
    np.testing.assert_array_equal(tf_row_sum(x), theirs)
    if d >= 16:                                   # the order matters on this data
        assert (np.sum(x, axis=1, dtype=F32) != theirs).any()


def test_the_literal_reference_equals_tfrs_factorized_top_k_itself():
    """The step-by-step reference above against TFRS's own FactorizedTopK (tf.matmul, TF's
    reduce_sum, in_top_k) on tie-heavy data: duplicate titles, coarse values, all-zero queries.
    Values on a 1/4 grid make every product and sum exact, so both see the same floats and the
    comparison is of the rules (ties, duplicates, non-finite rows), not of rounding."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs
    rng = np.random.default_rng(1)
    m, n, d = 120, 400, 16
    corpus = (rng.integers(-8, 9, size=(m, d)) / 4).astype(F32)
    corpus[100:110] = corpus[:10]                        # duplicate titles
    rows = rng.integers(0, m, n)
    q = (rng.integers(-8, 9, size=(n, d)) / 4).astype(F32)
    q[:20] = 0                                           # every score ties
    ks = (1, 5, 10, 50)
    metric = tfrs.metrics.FactorizedTopK(
        candidates=tf.data.Dataset.from_tensor_slices(corpus).batch(32), ks=ks)
    metric.update_state(tf.constant(q), tf.constant(corpus[rows]))
    theirs = {k: float(r.numpy()) for k, r in zip(ks, metric.result())}
    ours = tfrs_score_based_reference(q, corpus[rows], corpus, ks)
    assert {k: np.float32(v) for k, v in ours.items()} == \
        {k: np.float32(v) for k, v in theirs.items()}
    assert ev.factorized_top_k_accuracy(q, corpus[rows], corpus, ks) == ours
