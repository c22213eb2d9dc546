"""TensorFlow's CPU summation order, reproduced in numpy, for the exact metric parity check.

TFRS's FactorizedTopK compares each query's positive score (``tf.reduce_sum(q * c, 1)``) with its
corpus scores (``tf.matmul``). The true item is itself in the corpus, so whether its own corpus
score rounds strictly above the positive decides a rank in about a third of the queries; to
reproduce TFRS's figure exactly the positive must be summed in TF's order. The framework-agnostic
metric (``twostage.evaluation``) sums with numpy and accepts a precomputed ``positive=``; this
module supplies TF's.
"""
from __future__ import annotations

import numpy as np

TF_PACKET_SIZE = 8  # Eigen float packet of the x86 TensorFlow wheels (AVX: 8 x float32)


def tf_row_sum(x, packet_size: int = TF_PACKET_SIZE) -> np.ndarray:
    """[N, D] float32 -> [N] float32 row sums, bit-for-bit in TensorFlow's CPU summation order.

    ``tf.reduce_sum(x, axis=1)`` runs Eigen's ``InnerMostDimReducer<Self, Op, true, false>``
    (tensorflow/include/unsupported/Eigen/CXX11/src/Tensor/TensorReduction.h): while 4 packets
    remain, 4 packet accumulators; they are folded as ((a0 + a1) + a2) + a3; remaining whole
    packets are added into that accumulator; the scalar tail is summed in order; the result is
    ``tail + predux(acc)`` where ``predux`` adds halves (lane i + lane i + P/2, ...). Each step is
    a float32 add here too, so the result is identical (checked against TF 2.21 for
    D = 7, 13, 16, 24, 32, 40, 64, 100). ``packet_size`` is 4 for NEON (aarch64) builds.
    """
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    p = int(packet_size)
    acc = None
    start = 0
    if d >= 4 * p:
        stop = (d // (4 * p)) * (4 * p)
        lanes = [x[:, j * p:(j + 1) * p].copy() for j in range(4)]   # 0 + x is exact
        for block in range(4 * p, stop, 4 * p):
            for j in range(4):
                lanes[j] += x[:, block + j * p:block + (j + 1) * p]
        acc = ((lanes[0] + lanes[1]) + lanes[2]) + lanes[3]
        start = stop
    if start <= d - p:
        stop = (d // p) * p
        for block in range(start, stop, p):
            packet = x[:, block:block + p]
            acc = packet.copy() if acc is None else acc + packet
        start = stop
    tail = np.zeros(n, dtype=np.float32)
    for j in range(start, d):
        tail += x[:, j]
    if acc is None:
        return tail
    while acc.shape[1] > 1:                                          # predux: fold halves
        half = acc.shape[1] // 2
        acc = acc[:, :half] + acc[:, half:]
    return tail + acc[:, 0]



def tf_positive_scores(query_emb, true_cand_emb, packet_size: int = TF_PACKET_SIZE) -> np.ndarray:
    """[N, D], [N, D] -> [N] float32: ``tf.reduce_sum(q * c, axis=1)`` bit for bit (x86)."""
    q = np.asarray(query_emb, dtype=np.float32)
    c = np.asarray(true_cand_emb, dtype=np.float32)
    return tf_row_sum(q * c, packet_size)
