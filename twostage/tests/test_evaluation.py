"""Hand-computed cases for every metric, with the tie rules of TFRS / Keras / the seed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twostage import evaluation as ev

F32 = np.float32


# ---------------------------------------------------------------- references written literally

def seed_ndcg(pred, gt):
    """The seed's function, verbatim."""
    try:
        idx = pred.index(gt) + 1
        return 1.0 / np.log2(idx + 1)
    except ValueError:
        return 0


def test_positive_scores():
    q = np.array([[1, 2], [3, 4]], F32)
    c = np.array([[5, 6], [7, 8]], F32)
    np.testing.assert_array_equal(ev.positive_scores(q, c), [17, 53])
    with pytest.raises(ValueError, match="same shape"):
        ev.positive_scores(q, c[:1])


# ---------------------------------------------------------------- factorized top-k (scores)

def test_factorized_hand_case_ties_and_duplicates():
    # D = 1: scores are q * item. Corpus rows: 1, 2 (true item), 3, 2 (duplicate title of it).
    corpus = np.array([[1], [2], [3], [2]], F32)
    q = np.array([[1], [1], [-1]], F32)
    true = np.array([[2], [1], [2]], F32)
    # row 0: positive 2; strictly greater: {3} -> 1; the true item and its duplicate tie -> not
    #        counted: hit@1 no, hit@2 yes.
    # row 1: positive 1; greater: {2, 3, 2} -> 3: hit@4 only.
    # row 2: positive -2; scores -1, -2, -3, -2: greater {-1} -> 1: hit@2.
    res = ev.factorized_top_k_accuracy(q, true, corpus, ks=(1, 2, 3, 4))
    assert res == {1: 0.0, 2: 2 / 3, 3: 2 / 3, 4: 1.0}


def test_factorized_positive_tied_with_other_items_counts_as_hit():
    corpus = np.array([[1, 0], [0, 1], [1, 1], [0.5, 0.5]], F32)
    q = np.array([[1, 1]], F32)
    # positive = 1 (item 0), ties with item 1 (score 1); item 2 scores 2 -> rank 2 at worst 2
    res = ev.factorized_top_k_accuracy(q, corpus[[0]], corpus, ks=(1, 2))
    assert res == {1: 0.0, 2: 1.0}
    # all-zero query: every score ties at 0 -> a hit at every k
    res = ev.factorized_top_k_accuracy(np.zeros((1, 2), F32), corpus[[3]], corpus, ks=(1,))
    assert res == {1: 1.0}


def test_factorized_k_larger_than_corpus_is_a_hit():
    corpus = np.array([[3], [2], [1]], F32)
    res = ev.factorized_top_k_accuracy(np.ones((1, 1), F32), np.full((1, 1), -5, F32), corpus,
                                       ks=(1, 3, 4, 100))
    assert res == {1: 0.0, 3: 0.0, 4: 1.0, 100: 1.0}


def test_factorized_non_finite_is_a_miss():
    corpus = np.array([[1], [np.inf]], F32)
    res = ev.factorized_top_k_accuracy(np.ones((2, 1), F32), np.array([[5], [5]], F32),
                                       np.array([[1], [2]], F32), ks=(1,))
    assert res == {1: 1.0}
    res = ev.factorized_top_k_accuracy(np.ones((1, 1), F32), np.array([[5]], F32), corpus,
                                       ks=(1, 5))
    assert res == {1: 0.0, 5: 0.0}


def test_chunks_by_byte_budget_do_not_change_the_result():
    """The same accuracies whatever the chunking. Broken on purpose, it fails: no settle_near_ties
    on a kernel that rounds a row by its place in the block (OPENBLAS_CORETYPE=Haswell moved 5%
    of the counts)."""
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(300, 32)).astype(F32)
    rows = rng.integers(0, 300, 1000)
    q = (corpus[rows] * 0.3 + rng.normal(size=(1000, 32))).astype(F32)
    ks = (1, 5, 10, 50, 100)
    whole = ev.factorized_top_k_accuracy(q, corpus[rows], corpus, ks)
    assert ev.factorized_top_k_accuracy(q, corpus[rows], corpus, ks, budget_bytes=7 * 4 * 300) \
        == whole
    assert ev.chunk_rows(1_000_000, 64 << 20) == 16 and ev.chunk_rows(10, 1) == 1


def test_num_scoring_higher_and_errors():
    corpus = np.array([[1], [2], [3]], F32)
    greater, finite = ev.num_scoring_higher(np.ones((2, 1)), np.array([[2], [0]]), corpus)
    np.testing.assert_array_equal(greater, [1, 3])
    assert finite.all()
    with pytest.raises(ValueError, match="dim"):
        ev.factorized_top_k_accuracy(np.ones((1, 2)), np.ones((1, 2)), corpus)
    with pytest.raises(ValueError, match="ks"):
        ev.factorized_top_k_accuracy(np.ones((1, 1)), np.ones((1, 1)), corpus, ks=(0,))
    with pytest.raises(ValueError, match="no queries"):
        ev.factorized_top_k_accuracy(np.ones((0, 1)), np.ones((0, 1)), corpus)
    with pytest.raises(ValueError, match="empty"):
        ev.factorized_top_k_accuracy(np.ones((1, 1)), np.ones((1, 1)), np.ones((0, 1)))


def test_factorized_full_size_runs():
    """Broken on purpose, it fails: a hit rule of `greater <= k`, or ties counted against the
    positive (either moves whole percents)."""
    # the real evaluation size: 20,000 test queries x 1,682 movies x 32 dims
    rng = np.random.default_rng(1)
    corpus = rng.normal(size=(1682, 32)).astype(F32)
    rows = rng.integers(0, 1682, 20_000)
    q = rng.normal(size=(20_000, 32)).astype(F32)
    res = ev.factorized_top_k_accuracy(q, corpus[rows], corpus)
    assert list(res) == [1, 5, 10, 50, 100]
    # against float64 scores: a query may differ only where a corpus score lies within the
    # cross-kernel margin of its positive (its float32 rounding decides)
    q64, c64 = q.astype(np.float64), corpus.astype(np.float64)
    diff = q64 @ c64.T - (q64 * c64[rows]).sum(axis=1, keepdims=True)
    margin = 2 * ev.cross_kernel_margin(q, corpus).astype(np.float64)
    sure, maybe = (diff > margin).sum(axis=1), (diff > -margin).sum(axis=1)
    for k, value in res.items():
        low, high = np.mean(maybe < k), np.mean(sure < k)     # certain hits, possible hits
        assert low <= value <= high and high - low < 1e-3, k


# ---------------------------------------------------------------- id-based top-k

def test_ids_hand_case_with_duplicates_padding_and_short_lists():
    retrieved = np.array([["a", "b", "a"], ["x", "y", "z"], ["b", "q", "q"]], dtype=object)
    true = np.array(["a", "z", "q"], dtype=object)
    # row 0: at 1 (duplicate later counts once); row 1: at 3; row 2: at 2
    assert ev.top_k_accuracy_from_ids(retrieved, true, ks=(1, 2, 3, 10)) == {
        1: 1 / 3, 2: 2 / 3, 3: 1.0, 10: 1.0}
    # NaN scores are padding (TFRS/ScaNN): row 1's "z" and row 2's "q"s don't count
    scores = np.array([[3, 2, 1], [3, 2, np.nan], [1, np.nan, np.nan]], F32)
    assert ev.top_k_accuracy_from_ids(retrieved, true, ks=(3,), scores=scores) == {3: 1 / 3}


def test_ids_faiss_padding_and_errors():
    retrieved = np.array([[4, -1], [-1, -1]])
    assert ev.top_k_accuracy_from_ids(retrieved, np.array([4, 7]), ks=(1, 2)) == {1: 0.5, 2: 0.5}
    with pytest.raises(ValueError, match="sorted"):
        ev.top_k_accuracy_from_ids(retrieved, np.array([4, 7]), scores=np.array([[1, 2], [2, 1]]))
    with pytest.raises(TypeError, match="id kinds"):
        ev.top_k_accuracy_from_ids(retrieved, np.array(["a", "b"], dtype=object))
    with pytest.raises(TypeError, match="id kinds"):
        ev.top_k_accuracy_from_ids(np.array([[b"a"]], dtype=object), np.array(["a"], dtype=object))
    with pytest.raises(ValueError, match="one id per row"):
        ev.top_k_accuracy_from_ids(retrieved, np.array([4]))


# ---------------------------------------------------------------- ranking metrics

def test_binary_accuracy_threshold_is_strict():
    labels = np.array([1, 0, 0, 1, 1], F32)
    probs = np.array([0.9, 0.5, 0.4, 0.5, 0.51], F32)   # 0.5 predicts 0 (prob > threshold)
    assert ev.binary_accuracy(labels, probs) == pytest.approx(4 / 5)
    assert ev.binary_accuracy(labels[:, None], probs[:, None]) == pytest.approx(4 / 5)
    assert ev.binary_accuracy(labels, probs, threshold=0.6) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="0/1"):
        ev.binary_accuracy([0.5], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        ev.binary_accuracy([1], [np.nan])


def test_auc_hand_case_with_ties():
    # positives {0.8, 0.3}, negatives {0.8, 0.1}: pairs 0.5 + 1 + 0 + 1 = 2.5 of 4
    assert ev.auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(0.625)
    assert ev.auc([1, 0], [0.7, 0.7]) == pytest.approx(0.5)
    assert ev.auc([0, 1, 1], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert math.isnan(ev.auc([1, 1], [0.1, 0.2]))


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    probs = rng.integers(0, 20, 400) / 20            # many ties
    pos, neg = probs[labels == 1], probs[labels == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum())
    assert ev.auc(labels, probs) == pytest.approx(pairwise / (len(pos) * len(neg)), abs=1e-12)


def test_log_loss_keras_clipping():
    e = F32(1e-7)
    labels = np.array([1, 0, 1, 0], F32)
    probs = np.array([0.9, 0.2, 0.0, 1.0], F32)
    p = np.clip(probs, e, F32(1) - e)
    expected = [-np.log(p[0] + e), -np.log(F32(1) - p[1] + e),
                -np.log(p[2] + e), -np.log(F32(1) - p[3] + e)]
    assert ev.log_loss(labels, probs) == pytest.approx(float(np.mean(expected)), rel=1e-6)
    assert ev.log_loss([1], [0.0]) == pytest.approx(-math.log(2e-7), rel=1e-5)
    assert ev.log_loss([1, 0], [0.9, 0.2]) == pytest.approx(
        -(math.log(0.9 + 1e-7) + math.log(0.8 + 1e-7)) / 2, rel=1e-6)


def test_log_loss_from_logits():
    x = [-30.0, -1.0, 0.0, 2.0, 40.0]
    y = [1, 0, 1, 1, 0]
    # -log(sigmoid(x)) = log1p(exp(-x)); -log(1 - sigmoid(x)) = log1p(exp(x))
    expected = [math.log1p(math.exp(-xi)) if yi else math.log1p(math.exp(xi))
                for xi, yi in zip(x, y)]
    assert ev.log_loss_from_logits(y, x) == pytest.approx(sum(expected) / 5, rel=1e-12)


# ---------------------------------------------------------------- two-stage

def test_rerank_is_stable_descending():
    cand = np.array([["x", "y", "z", "w"]], dtype=object)
    scores = np.array([[0.7, 0.7, 0.1, 0.9]], F32)
    np.testing.assert_array_equal(ev.rerank(cand, scores), [["w", "x", "y", "z"]])
    with pytest.raises(ValueError, match="NaN"):
        ev.rerank(cand, np.array([[np.nan, 0, 0, 0]]))


def test_first_occurrence_with_duplicates_and_ndcg_values():
    ranked = np.array([["a", "b", "c", "b"], ["a", "a", "c", "d"], ["q", "r", "s", "t"]],
                      dtype=object)
    true = np.array(["b", "a", "z"], dtype=object)
    np.testing.assert_array_equal(ev.first_hit_rank(ranked, true), [2, 1, 0])
    assert ev.ndcg_at_k(ranked, true, 4) == pytest.approx((1 / math.log2(3) + 1 + 0) / 3)
    assert ev.ndcg_at_k(ranked, true, 1) == pytest.approx(1 / 3)
    assert ev.hit_rate_at_k(ranked, true, 2) == pytest.approx(2 / 3)
    assert ev.mrr(ranked, true) == pytest.approx((0.5 + 1) / 3)


def test_two_stage_hand_case():
    cand = np.array([["a", "b", "c", "b"],      # truth b at 2; reranked: b (0.9) first
                     ["x", "y", "z", "w"],      # x, y tie at 0.7 -> stable: x stays first
                     ["p", "q", "r", "s"]],     # truth at 4 > k=3
                    dtype=object)
    scores = np.array([[0.5, 0.9, 0.5, 0.9], [0.7, 0.7, 0.1, 0.9], [0.1, 0.2, 0.3, 0.4]], F32)
    true = np.array(["b", "y", "s"], dtype=object)
    out = ev.two_stage_metrics(cand, scores, true, k=3)
    assert list(out) == ["ndcg@3_retrieval", "ndcg@3_reranked", "hit@3_retrieval",
                         "hit@3_reranked", "mrr_retrieval", "mrr_reranked"]
    g2, g3 = 1 / math.log2(3), 1 / math.log2(4)
    # retrieval ranks: 2, 2, 4 (outside k)   reranked: b,b,a,c -> 1; w,x,y,z -> 3; s,r,q,p -> 1
    assert out["ndcg@3_retrieval"] == pytest.approx((g2 + g2 + 0) / 3)
    assert out["ndcg@3_reranked"] == pytest.approx((1 + g3 + 1) / 3)
    assert out["hit@3_retrieval"] == pytest.approx(2 / 3)
    assert out["hit@3_reranked"] == pytest.approx(1.0)
    assert out["mrr_retrieval"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert out["mrr_reranked"] == pytest.approx((1 + 1 / 3 + 1) / 3)


def test_two_stage_matches_seed_code_on_random_rows():
    rng = np.random.default_rng(3)
    n, c = 500, 10
    titles = np.array([f"t{i}" for i in range(15)], dtype=object)
    cand = titles[rng.integers(0, 15, (n, c))]               # duplicates within rows
    scores = (rng.integers(0, 4, (n, c)) / 4).astype(F32)    # many ties
    true = titles[rng.integers(0, 15, n)]
    out = ev.two_stage_metrics(cand, scores, true, k=10)
    seed_retrieval = np.mean([seed_ndcg(list(cand[i]), true[i]) for i in range(n)])
    # the seed's np.argsort(-score) on 10 items was insertion sort (stable) in its numpy
    seed_reranked = np.mean([seed_ndcg(list(cand[i][np.argsort(-scores[i], kind="stable")]),
                                       true[i]) for i in range(n)])
    assert out["ndcg@10_retrieval"] == pytest.approx(seed_retrieval, abs=1e-12)
    assert out["ndcg@10_reranked"] == pytest.approx(seed_reranked, abs=1e-12)


def test_two_stage_integer_ids_and_errors():
    cand = np.array([[3, 1, 2]])
    out = ev.two_stage_metrics(cand, np.array([[0.1, 0.2, 0.3]]), np.array([3]), k=2)
    assert out["hit@2_retrieval"] == 1.0 and out["hit@2_reranked"] == 0.0
    with pytest.raises(ValueError, match="k=4"):
        ev.two_stage_metrics(cand, np.zeros((1, 3)), np.array([3]), k=4)
    with pytest.raises(TypeError, match="id kinds"):
        ev.two_stage_metrics(cand, np.zeros((1, 3)), np.array(["3"]), k=2)
    with pytest.raises(ValueError, match="ranking_scores"):
        ev.two_stage_metrics(cand, np.zeros((1, 2)), np.array([3]), k=2)


def test_near_ties_are_settled_alike_whatever_the_kernel_rounded():
    """Scores from another kernel (here: the BLAS product moved by up to 8 ulp, as another
    tiling or CPU rounds it) compare with the positives exactly as numpy's own do, and
    identical corpus rows score identically near the positive wherever they sit. Without the
    settling the comparisons flip (checked below), which is what made chunked metrics differ."""
    rng = np.random.default_rng(4)
    corpus = rng.normal(size=(400, 32)).astype(F32)
    corpus[300:] = corpus[:100]                                # duplicates at other places
    rows = rng.integers(0, 400, 2000)
    q = (corpus[rows] * 0.5 + rng.normal(size=(2000, 32))).astype(F32)
    pos = ev.positive_scores(q, corpus[rows])
    margin = ev.cross_kernel_margin(q, corpus)
    raw = q @ corpus.T
    ulp = np.spacing(np.abs(raw)).astype(F32)
    other = (raw + rng.integers(-8, 9, raw.shape).astype(F32) * ulp).astype(F32)
    assert ((other > pos[:, None]) != (raw > pos[:, None])).any()   # the kernels disagree
    a = ev.settle_near_ties(raw.copy(), pos, q, corpus, margin)
    b = ev.settle_near_ties(other.copy(), pos, q, corpus, margin)
    np.testing.assert_array_equal(a > pos[:, None], b > pos[:, None])
    near = np.abs(a - pos[:, None]) <= margin
    np.testing.assert_array_equal(a[:, :100][near[:, :100]], a[:, 300:][near[:, :100]])


def test_fma_chain_dot_is_the_sequential_fma_order():
    """fma(a, b, acc) once per element in order, one rounding each: on these values a plain
    float32 multiply-then-add loses the low product bits that the chain keeps."""
    a = np.array([[1.0, 1 + 2.0 ** -12]], F32)
    b = np.array([[-1.0, 1 + 2.0 ** -12]], F32)
    # -1 + (1 + 2^-12)^2 = 2^-11 + 2^-24 in one fma; a float32 product first rounds away 2^-24
    assert ev.fma_chain_dot(a, b)[0] == F32(2.0 ** -11 + 2.0 ** -24)
    assert F32(-1.0) + F32(a[0, 1] * b[0, 1]) == F32(2.0 ** -11)
    assert ev.fma_chain_dot(a[:, ::-1], b[:, ::-1])[0] == F32(2.0 ** -11)   # order matters


def test_settling_is_sliced_and_skips_non_finite_rows(monkeypatch):
    """All-tied rows (zero queries: every score equals the positive) are settled in slices
    of SETTLE_PAIRS pairs with the same result; a non-finite query or corpus row gets no
    margin (a miss anyway), so it neither inflates the others' margins nor is recomputed.
    Broken on purpose, it fails: slices that skip their last pairs, or an inf corpus row that
    makes every score of every query a near-tie."""
    rng = np.random.default_rng(7)
    corpus = rng.normal(size=(50, 8)).astype(F32)
    q = rng.normal(size=(30, 8)).astype(F32)
    q[:5] = 0.0
    pos = ev.positive_scores(q, corpus[rng.integers(0, 50, 30)])
    margin = ev.cross_kernel_margin(q, corpus)
    whole = ev.settle_near_ties(q @ corpus.T, pos, q, corpus, margin)
    monkeypatch.setattr(ev, "SETTLE_PAIRS", 7)
    sliced = ev.settle_near_ties(q @ corpus.T, pos, q, corpus, margin)
    np.testing.assert_array_equal(sliced, whole)
    bad_corpus = corpus.copy()
    bad_corpus[3] = np.inf
    q[7] = np.nan
    bad = ev.cross_kernel_margin(q, bad_corpus)
    np.testing.assert_array_equal(bad[[i for i in range(30) if i != 7]],
                                  margin[[i for i in range(30) if i != 7]])
    assert bad[7, 0] == 0.0
