"""Every parity tolerance, named, with the reason it is not zero."""
import numpy as np

from twostage.evaluation import FLOAT32_UNIT_ROUNDOFF, reduction_gamma

# Integer features (lookups, buckets, token ids) come from one FeatureSpec: no rounding exists.
FEATURE_INT_EXACT = 0
# Normalized timestamp: both compute (float32(x) - mean) / std in float32; 1e-6 covers the order
# of float32 operations between numpy and TF kernels (values are O(1), ulp ~1e-7).
FEATURE_NORM_ATOL = 1e-6
# Against the seed's own Normalization.adapt: Keras casts the timestamps to float32 before
# taking moments and merges batch moments in float32, while the spec keeps exact float64
# moments; on ml-100k the outputs differ by 2e-5 standard deviations (data/tests/
# test_features.py measures it), so 1e-4 leaves a few float32 ulps of headroom.
FEATURE_ADAPT_NORM_ATOL = 1e-4
# Forward outputs in float32: matmul and reduction order differ between oneDNN/Eigen and torch's
# BLAS; relative 1e-5 is ~100 float32 ulps through three layers.
FORWARD_RTOL = 1e-5
FORWARD_ATOL = 1e-6
# Losses: the retrieval loss sums 2048 per-row cross-entropies; float32 summation order alone
# moves it by ~1e-6 relative.
LOSS_RTOL = 1e-5
# Gradients go through one more chain of float32 products and scatter-adds (embedding rows are
# summed over repeated ids in a different order by the two frameworks).
GRAD_RTOL = 1e-4
# Absolute floor, as a fraction of the largest gradient of the stage: some gradients are
# analytically zero (the candidate tower's last bias shifts every logit of a row equally, which
# the softmax cancels), so their computed value is pure float32 rounding (~1e-5 of the scale).
GRAD_ATOL_OF_MAX = 1e-5
# 20 Adagrad steps: per-step rounding differences compound through the accumulators.
TRAJECTORY_RTOL = 1e-4
TRAJECTORY_ATOL = 1e-5
TRAJECTORY_STEPS = 20
# The trajectory runs at learning rate 0.01. At the seed's 0.1 the first steps are chaotic:
# Adagrad moves every weight by ~lr per step and ReLU units near their kink flip on rounding, so
# TF against *itself*, with initial weights perturbed by 1e-7 relative, differs by 1.4e-3 in the
# step-17 loss on ml-100k (measured). No float32 implementation can track it to 1e-4; at 0.01
# torch and TF agree to ~1e-7 after 20 steps. The seed's rate is checked for the steps before
# the chaos sets in (SEED_LR_STEPS, per-step losses), where torch and TF agree to ~3e-7.
TRAJECTORY_LEARNING_RATE = 0.01
SEED_LR_STEPS = 10
# Metrics computed from identical float32 embeddings with the same summation order: exact.
METRIC_EXACT = 0.0
# Index: FAISS's BLAS and TF's matmul may round two near-equal scores differently, so the
# ordering of candidates whose scores differ by less than this (absolute) may swap.
INDEX_SCORE_ATOL = 1e-5
# Two-stage parity drops the rows whose candidate or re-ranking order float32 may decide (two
# different scores within twice the backends' observed difference of the same candidates, about
# 2 ulps); more than this share dropped and the comparison proves too little. Measured: 1.0% of
# the rows on ml-100k, 0.06% on the synthetic data (it was up to 50% allowed, 16% dropped, when
# 1e-5 and exact duplicate-title ties counted as near-ties).
NEAR_TIE_ROWS_MAX = 0.05
# Two MirroredStrategy replicas against the torch replica reference (per step: the sum of the
# two half-batch losses, gradients summed, Keras Adagrad), 10 steps at TRAJECTORY_LEARNING_RATE:
# the same float32 operations per half-batch; measured within 1e-7 relative on ml-100k.
DISTRIBUTED_LOSS_RTOL = 1e-5

# --- float32 reductions computed by two different kernels -------------------------------------
# Two BLAS/ATen/Eigen kernels (or two tilings of one) sum a length-n dot product in different
# orders, with or without FMA. Each result is within gamma_n * sum|x_i y_i| of the exact value
# (Higham, "Accuracy and Stability of Numerical Algorithms", (3.5): gamma_n = n u / (1 - n u),
# u = 2**-24 for float32), so two of them differ by at most twice that. This is the only
# tolerance where a comparison crosses kernels; bitwise checks stay where both sides run the
# same code on the same shapes.
# (gamma_n is twostage.evaluation's, whose near-tie rule rests on the same bound)


def cross_kernel_atol(length: int, scale: float) -> float:
    """Absolute bound on how far two kernels' float32 sums of ``length`` terms whose absolute
    values add up to at most ``scale`` can differ: 2 gamma_n scale, plus one rounding of each
    result (4 u scale)."""
    return (2.0 * reduction_gamma(length) + 4.0 * FLOAT32_UNIT_ROUNDOFF) * float(scale)


def cross_kernel_dot_atol(abs_queries, abs_items) -> np.ndarray:
    """[N, D] |queries|, [M, D] |items| -> [N, 1] absolute bound on how far two kernels' float32
    products ``q @ items.T`` of one query can differ, for every item: 2 gamma_D max_j |q||c_j|,
    plus one rounding of the result (the bound covers its float32 storage too)."""
    q = np.asarray(abs_queries, dtype=np.float64)
    c = np.asarray(abs_items, dtype=np.float64)
    worst = (q @ c.T).max(axis=1, keepdims=True)
    return (2.0 * reduction_gamma(q.shape[1]) + 2.0 * FLOAT32_UNIT_ROUNDOFF) * worst


def assert_top_k_close(scores, rows, ref_scores, ref_rows, atol) -> None:
    """Two top-k results of the same product by two kernels: scores within ``atol`` [N, 1]
    position by position (sorting moves no value further than its error), and the rows equal
    except at positions where the reference holds a near-tie (a neighbour within 2 ``atol``,
    whose order is rounding). The reference may hold more columns than the result: the extra
    ones only reveal a near-tie at the result's last place. Raises AssertionError naming the
    first offending query."""
    width = np.asarray(scores).shape[1]
    scores = np.asarray(scores, np.float64)
    full = np.asarray(ref_scores, np.float64)
    ref_scores, ref_rows = full[:, :width], np.asarray(ref_rows)[:, :width]
    atol = np.broadcast_to(np.asarray(atol, np.float64), (scores.shape[0], 1))
    off = np.abs(scores - ref_scores) > atol
    assert not off.any(), (f"query {np.flatnonzero(off.any(axis=1))[0]}: scores differ by more "
                           f"than the cross-kernel bound (max {np.abs(scores - ref_scores).max():.3g})")
    gap = np.abs(np.diff(full, axis=1)) <= 2 * atol
    near = np.zeros(full.shape, dtype=bool)
    near[:, 1:] |= gap
    near[:, :-1] |= gap
    bad = (np.asarray(rows) != ref_rows) & ~near[:, :width]
    assert not bad.any(), (f"query {np.flatnonzero(bad.any(axis=1))[0]}: rows differ where no "
                           "near-tie explains it")
