"""Framework-agnostic evaluation: retrieval top-K accuracy, ranking metrics, two-stage nDCG.

Numpy only (no torch / tensorflow), so both backends are scored by the same code. Everything is
vectorised; the [N, M] score matrix of the retrieval metric is computed in row chunks so memory
stays at ``chunk * M`` floats.

Tie rules (verified against the sources named in each docstring):

* ``factorized_top_k_accuracy`` reproduces TFRS 0.7.7 ``FactorizedTopK`` in its score-based mode
  (no candidate ids): a query is a hit at k iff FEWER THAN k corpus scores are STRICTLY greater
  than the positive score, so every tie goes in the positive's favour. The true item is itself in
  the corpus (and so are its duplicate titles, which share its embedding); they only count
  against the query when their corpus score rounds strictly above the positive score.
* ``top_k_accuracy_from_ids`` is TFRS's id-based mode: a hit iff the true id is among the first
  k retrieved ids (any duplicate id counts once).
* ``two_stage_metrics`` re-ranks with a STABLE descending sort (candidates with equal ranking
  scores keep their retrieval order) and scores the FIRST occurrence of the truth, as the seed's
  ``pred.index(gt)``.

Two protocols (both reported by ``twostage.pipeline``):

* ``seed``: every test rating is ranked against the whole corpus, titles the user already rated
  in training included (the seed's and TFRS's metric; the parity suite keeps using it).
* ``exclude_seen`` (the standard one, RecBole's): the titles the user rated in TRAINING are
  removed from that user's ranking before counting. Exclusion is BY TITLE, as hits are counted
  (``hits_at_k`` compares scores of title embeddings, ``id_hits_at_k`` title indices): every
  corpus row whose title the user rated is removed, duplicate rows of that title included. The
  query's own title is never removed (a user who rated one of two rows of a duplicated title in
  training and the other in test keeps the test title), so the truth can always be found.
  :class:`SeenTitles` builds the per-query :class:`Exclusions`; :func:`count_higher` applies
  them inside the byte-budget chunks (no [N, M] mask is ever built).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 50, 100)
AUDIENCES: tuple[str, ...] = ("warm", "cold", "new_title")   # SeenTitles.audiences
DEFAULT_CHUNK_BYTES = 64 << 20  # one [rows, M] float32 score block: 64 MB whatever M is
SETTLE_PAIRS = 1 << 17          # near-tie pairs recomputed at a time: ~64 MB of float64 rows


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def _float32_matrix(x, name: str) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {a.shape}")
    return a


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks={ks} must be a non-empty sequence of positive integers")
    return ks


def _check_nonempty(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"no {what} to evaluate: pass at least one row")


def _id_kind(a: np.ndarray) -> str:
    """'num' for numeric ids, 'str' / 'bytes' for text ids (object arrays: by first element)."""
    if a.dtype.kind in "iuf":
        return "num"
    if a.dtype.kind == "U":
        return "str"
    if a.dtype.kind == "S":
        return "bytes"
    if a.dtype.kind == "O" and a.size:
        first = a.flat[0]
        if isinstance(first, (bytes, np.bytes_)):
            return "bytes"
        if isinstance(first, (str, np.str_)):
            return "str"
        if isinstance(first, (int, float, np.integer, np.floating)):
            return "num"
    return "other"


def _check_ids(ranked_ids, true_ids, ranked_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate [N, C] ids against [N] true ids; refuse mixed kinds, which would never match."""
    ranked = np.asarray(ranked_ids)
    truth = np.asarray(true_ids)
    if ranked.ndim != 2:
        raise ValueError(f"{ranked_name} must be 2-D [num_queries, num_candidates], "
                         f"got shape {ranked.shape}")
    if truth.ndim == 2 and truth.shape[1] == 1:
        truth = truth[:, 0]
    if truth.ndim != 1 or truth.shape[0] != ranked.shape[0]:
        raise ValueError(f"true_ids must be 1-D with one id per row of {ranked_name} "
                         f"({ranked.shape[0]}), got shape {truth.shape}")
    _check_nonempty(ranked.shape[0], "queries")
    kinds = {_id_kind(ranked), _id_kind(truth)}
    if len(kinds) > 1 and ranked.size:
        raise TypeError(f"{ranked_name} and true_ids hold different id kinds {sorted(kinds)}; "
                        "pass both as titles (same str/bytes type) or both as integer indices")
    return ranked, truth


def _check_binary(labels, probs, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    """Flatten [N] or [N, 1] labels and predictions; labels must be 0/1, predictions finite."""
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels {np.shape(labels)} and {name} {np.shape(probs)} must have the "
                         "same number of elements")
    _check_nonempty(y.size, "examples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 (e.g. rating >= threshold as float32)")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} contain NaN or inf; the model diverged or the inputs are bad")
    return y, p


# --------------------------------------------------------------------------------------------
# retrieval: TFRS FactorizedTopK
# --------------------------------------------------------------------------------------------

def positive_scores(query_emb, true_cand_emb) -> np.ndarray:
    """[N, D], [N, D] -> [N] float32 row-wise dot products (TFRS: ``tf.reduce_sum(q * c, 1)``),
    products in float32, summed by numpy. TF sums in another order, so about half of the rows
    differ by an ulp; the parity suite passes TF's exact order through ``positive=`` of
    :func:`num_scoring_higher` (``parity_tests/tf_order.py``)."""
    q = _float32_matrix(query_emb, "query_emb")
    c = _float32_matrix(true_cand_emb, "true_cand_emb")
    if q.shape != c.shape:
        raise ValueError(f"query_emb {q.shape} and true_cand_emb {c.shape} must have the same "
                         "shape: one true candidate embedding per query")
    return np.sum(q * c, axis=1, dtype=np.float32)


def chunk_rows(num_columns: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows of a [rows, num_columns] float32 score block that fit in ``budget_bytes``."""
    return max(1, int(budget_bytes) // (4 * max(int(num_columns), 1)))


FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


def reduction_gamma(length: int) -> float:
    """gamma_n of a float32 sum of ``length`` terms in any order, with or without FMA: the
    result is within gamma_n * sum|terms| of the exact sum (Higham, "Accuracy and Stability
    of Numerical Algorithms", (3.5): gamma_n = n u / (1 - n u), u = 2**-24). ValueError when
    n u >= 1."""
    nu = int(length) * FLOAT32_UNIT_ROUNDOFF
    if not 0 <= nu < 1:
        raise ValueError(f"length={length}: gamma_n needs n * 2**-24 < 1")
    return nu / (1.0 - nu)


def fma_chain_dot(a, b) -> np.ndarray:
    """[P, D], [P, D] -> [P] float32: ``acc = fma(a[:, d], b[:, d], acc)`` for d = 0..D-1 in
    float32, the order of an x86 GEMM's main kernel (and of TF's matmul), emulated with exact
    float64 products so that every CPU computes the same bits for the same pair of rows."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    acc = np.zeros(a.shape[0], dtype=np.float32)
    for d in range(a.shape[1]):
        acc = (a[:, d] * b[:, d] + acc).astype(np.float32)
    return acc


def cross_kernel_margin(queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """[N, D], [M, D] float32 -> [N, 1] float32: how far two float32 kernels' ``q @ c`` of one
    query can lie apart, for any corpus row: (2 gamma_D + 4 u) ||q|| max ||c|| (Higham (3.5),
    u = 2**-24; any summation order, with or without FMA), plus a denormal floor."""
    u, gamma = FLOAT32_UNIT_ROUNDOFF, reduction_gamma(max(queries.shape[1], 1))
    with np.errstate(over="ignore", invalid="ignore"):
        corpus_norms = np.sqrt(np.sum(np.square(corpus, dtype=np.float64), axis=1))
        norms = np.sqrt(np.sum(np.square(queries, dtype=np.float64), axis=1, keepdims=True))
        largest = float(np.max(corpus_norms[np.isfinite(corpus_norms)], initial=0.0))
        margin = (2.0 * gamma + 4.0 * u) * norms * largest + 1e-37
    # a non-finite row is a miss whatever its ties: no margin, nothing to settle
    return np.where(np.isfinite(margin), margin, 0.0).astype(np.float32)


def settle_near_ties(scores: np.ndarray, positive: np.ndarray, queries: np.ndarray,
                     corpus: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Replace, in place, every BLAS score within ``margin`` of its row's positive by its
    :func:`fma_chain_dot`; returns ``scores``.

    scores [n, M] (``queries @ corpus.T`` by any kernel), positive [n], queries [n, D], corpus
    [M, D], margin [n, 1] (:func:`cross_kernel_margin`). Every other score lies on the same
    side of the positive as its chain value, so ``scores > positive`` afterwards is the same
    on every CPU, chunk size, shard and row position (docs/decisions.md: GEMM kernels round a
    row differently by its place in their tiles)."""
    pos = np.asarray(positive, dtype=np.float32).reshape(-1, 1)
    with np.errstate(invalid="ignore"):
        row, col = np.nonzero(np.abs(scores - pos) <= margin)
    for start in range(0, row.size, SETTLE_PAIRS):      # all-tied rows: memory stays bounded
        r, c = row[start:start + SETTLE_PAIRS], col[start:start + SETTLE_PAIRS]
        scores[r, c] = fma_chain_dot(queries[r], corpus[c])
    return scores


def num_scoring_higher(query_emb, true_cand_emb, corpus_emb,
                       budget_bytes: int = DEFAULT_CHUNK_BYTES, positive=None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For each query, how many corpus items score STRICTLY above its positive.

    query_emb [N, D], true_cand_emb [N, D], corpus_emb [M, D] (cast to float32; scores are
    float32 ``q @ corpus.T`` like TFRS's ``tf.matmul``). Returns (``greater`` [N] int64,
    ``finite`` [N] bool: the positive and all M corpus scores of that row are finite).
    The 1-based rank of the positive with ties in its favour is ``greater + 1``.
    ``positive`` [N]: the positive scores, if computed otherwise than :func:`positive_scores`;
    the score matrix is processed in blocks of ``budget_bytes``.
    """
    counts = count_scoring_higher(query_emb, true_cand_emb, corpus_emb,
                                  budget_bytes=budget_bytes, positive=positive)
    return counts.greater, counts.finite


def count_scoring_higher(query_emb, true_cand_emb, corpus_emb,
                         exclude: "Exclusions | QueryExclusions | None" = None,
                         budget_bytes: int = DEFAULT_CHUNK_BYTES, positive=None
                         ) -> "HigherCounts":
    """:func:`num_scoring_higher` under both protocols in one pass over the score matrix:
    ``greater`` (seed) and, when ``exclude`` [N queries] is given, ``greater_unseen``
    (``exclude_seen``: the excluded corpus rows are not counted). Same arguments and rules."""
    q = _float32_matrix(query_emb, "query_emb")
    corpus = _float32_matrix(corpus_emb, "corpus_emb")
    pos = (positive_scores(q, true_cand_emb) if positive is None
           else np.asarray(positive, dtype=np.float32).reshape(-1))
    if pos.shape[0] != q.shape[0]:
        raise ValueError(f"positive has {pos.shape[0]} scores for {q.shape[0]} queries")
    if corpus.shape[1] != q.shape[1]:
        raise ValueError(f"corpus_emb dim {corpus.shape[1]} != query_emb dim {q.shape[1]}")
    if corpus.shape[0] == 0:
        raise ValueError("corpus_emb is empty: index at least one candidate")
    corpus_t = np.ascontiguousarray(corpus.T)
    margin = cross_kernel_margin(q, corpus)

    def block(start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        scores = settle_near_ties(q[start:end] @ corpus_t, pos[start:end], q[start:end],
                                  corpus, margin[start:end])
        return scores, pos[start:end]                      # [chunk, M] float32, [chunk]
    return count_higher(block, q.shape[0], chunk_rows(corpus.shape[0], budget_bytes),
                        exclude=exclude)


@dataclass(frozen=True)
class HigherCounts:
    """Per query: corpus rows ranked above its positive under each protocol.

    ``greater`` [N] int64 (seed protocol), ``greater_unseen`` [N] int64 or None
    (``exclude_seen``; None when no exclusions were given), ``finite`` [N] bool (the positive and
    all M scores of the row are finite; a non-finite row is a miss under both protocols)."""

    greater: np.ndarray
    greater_unseen: np.ndarray | None
    finite: np.ndarray


ScoreBlock = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def count_higher(block: ScoreBlock, num_queries: int, rows_per_block: int,
                 exclude: "Exclusions | QueryExclusions | None" = None, column_priority=None,
                 positive_priority=None) -> HigherCounts:
    """THE counting loop of every score-based metric (models and baselines alike).

    ``block(start, end)`` -> (scores [end-start, M] of queries start..end against the corpus,
    their positive scores [end-start]); it is called for consecutive blocks of
    ``rows_per_block`` queries, so at most one block of scores is alive at a time. A corpus row
    ranks above the positive when its score is STRICTLY greater (TFRS's rule: ties in the
    positive's favour), or, when ``column_priority`` [M] and ``positive_priority`` [N] are given
    (baselines, whose scores may tie), when it ties and its priority is smaller (ranked first by
    a deterministic order). Rows with the positive's own priority (its duplicate titles) never
    count. With priorities, the positive must be one of the block's own scores (the baselines
    read it from the column of the true title), so a row where a single column ties holds no
    other tie and skips the rule. ``exclude``: per-query corpus rows dropped for
    ``greater_unseen``; their verdicts are read from the same block, so the two protocols differ
    exactly by the excluded rows.
    """
    if exclude is not None and exclude.num_queries != num_queries:
        raise ValueError(f"exclusions for {exclude.num_queries} queries, scores for "
                         f"{num_queries}")
    prio = None if column_priority is None else np.asarray(column_priority)
    pos_prio = None if prio is None else np.asarray(positive_priority).reshape(-1)
    greater = np.empty(num_queries, dtype=np.int64)
    unseen = None if exclude is None else np.empty(num_queries, dtype=np.int64)
    finite = np.empty(num_queries, dtype=bool)
    step = max(int(rows_per_block), 1)
    for start in range(0, num_queries, step):
        end = min(start + step, num_queries)
        scores, pos = block(start, end)
        pos = np.asarray(pos).reshape(-1, 1)
        higher = scores > pos
        if prio is not None:
            # only rows where something besides the positive's own column ties need the rule
            tied = scores == pos
            rows = np.flatnonzero(np.count_nonzero(tied, axis=1) > 1)
            higher[rows] |= tied[rows] & (prio[None, :] < pos_prio[start + rows, None])
        greater[start:end] = np.count_nonzero(higher, axis=1)
        finite[start:end] = np.isfinite(pos[:, 0]) & np.isfinite(scores).all(axis=1)
        if unseen is not None:
            row, col = exclude.slice(start, end).pairs()
            flat = higher.reshape(-1)[row * higher.shape[1] + col]   # flat gather: faster
            dropped = np.bincount(row[flat], minlength=end - start)
            unseen[start:end] = greater[start:end] - dropped
    return HigherCounts(greater, unseen, finite)


def factorized_top_k_accuracy(query_emb, true_cand_emb, corpus_emb,
                              ks: Sequence[int] = DEFAULT_KS,
                              budget_bytes: int = DEFAULT_CHUNK_BYTES, positive=None
                              ) -> dict[int, float]:
    """TFRS ``FactorizedTopK`` top-k categorical accuracy, score-based (no candidate ids).

    query_emb [N, D], true_cand_emb [N, D] (the embedding of each query's true candidate),
    corpus_emb [M, D] (the whole corpus, true items and duplicate titles included).
    Returns {k: fraction of queries whose positive is in the top k}.

    TFRS 0.7.7 (``metrics/factorized_top_k.py``, ``FactorizedTopK.update_state``):
    ``positive_scores = reduce_sum(q * c, 1, keepdims=True)``; ``top_k_predictions`` = the
    max(ks) largest corpus scores; ``y_pred = concat([positive_scores, top_k_predictions], 1)``;
    ``hit = tf.math.in_top_k(targets=0, predictions=y_pred, k)``; the result is the Mean of the
    hits over all queries. The in_top_k kernel counts the entries of y_pred STRICTLY greater than
    the target's (the positive is never greater than itself) and reports a hit iff that count is
    < k; a row with any non-finite entry is a miss. Because the top max(ks) scores are the largest
    ones, for every k <= max(ks) this equals "fewer than k of ALL M corpus scores are > positive",
    which is what is computed here. k > M is always a hit (TFRS's Streaming index returns only
    min(k, M) scores and in_top_k accepts k above the column count).

    Non-finite: a row is a miss when its positive or any of its M corpus scores is non-finite
    (TFRS only sees the top max(ks) scores, so a -inf far down the list would not count there).

    Rounding: the true item's own corpus row ties its positive up to rounding, so rounding
    decides some ranks. Corpus scores within the cross-kernel bound of the positive are settled
    by one CPU-independent rule (:func:`settle_near_ties`), so the result is the same on every
    CPU, chunk size and shard; ``positive`` takes TF's summation order, with which it equals
    TFRS's own metric (the parity suite checks it; measurements in docs/decisions.md).
    """
    ks = _check_ks(ks)
    greater, finite = num_scoring_higher(query_emb, true_cand_emb, corpus_emb,
                                         budget_bytes=budget_bytes, positive=positive)
    _check_nonempty(greater.shape[0], "queries")
    return dict(zip(ks, (hits_at_k(greater, finite, ks) / greater.shape[0]).tolist()))


def hits_at_k(greater: np.ndarray, finite: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """[len(ks)] int64: queries that are a hit at each k (``num_scoring_higher``'s output),
    integers, so shards of the queries can be summed exactly."""
    return np.array([np.count_nonzero(finite & (greater < k)) for k in _check_ks(ks)],
                    dtype=np.int64)


def top_k_accuracy_from_ids(retrieved_ids, true_ids, ks: Sequence[int] = DEFAULT_KS,
                            scores=None) -> dict[int, float]:
    """TFRS ``FactorizedTopK`` id-based accuracy (for approximate indexes such as IVF / HNSW).

    retrieved_ids [N, K] sorted best first, true_ids [N] (or [N, 1]); optional scores [N, K].
    A query is a hit at k iff its true id equals any of its first min(k, K) retrieved ids
    (several matches, e.g. duplicate titles, count once: TFRS clips the match sum to [0, 1]).
    TFRS treats NaN scores as padding that never matches and asserts the scores are sorted;
    both are done here when ``scores`` is given. FAISS pads with id -1, which never matches a
    real row index or title.
    """
    ks = _check_ks(ks)
    retrieved, truth = _check_ids(retrieved_ids, true_ids, "retrieved_ids")
    match = retrieved == truth[:, None]
    if scores is not None:
        s = np.asarray(scores, dtype=np.float32)
        if s.shape != retrieved.shape:
            raise ValueError(f"scores {s.shape} must match retrieved_ids {retrieved.shape}")
        padding = np.isnan(s)
        filled = np.where(padding, np.finfo(np.float32).min, s)
        if (np.diff(filled, axis=1) > 0).any():
            raise ValueError("Top-K predictions must be sorted (descending scores per row)")
        match &= ~padding
    return dict(zip(ks, (id_hits_at_k(match, ks) / match.shape[0]).tolist()))


def id_hits_at_k(match: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """[len(ks)] int64 from ``match`` [N, K] (retrieved id == true id, best first): queries with
    a match among their first k (integers, summable over shards)."""
    k_max = match.shape[1]
    if k_max == 0:
        return np.zeros(len(ks), dtype=np.int64)
    hit_by = np.logical_or.accumulate(match, axis=1)  # [N, K]: hit within the first j+1
    return np.array([np.count_nonzero(hit_by[:, min(k, k_max) - 1]) for k in ks],
                    dtype=np.int64)


# --------------------------------------------------------------------------------------------
# ranking: Keras metrics on sigmoid probabilities
# --------------------------------------------------------------------------------------------

def binary_accuracy(labels, probs, threshold: float = 0.5) -> float:
    """Keras ``BinaryAccuracy``: mean of ``labels == (probs > threshold)``; [N] or [N, 1].

    tf_keras ``metrics_utils.binary_matches``: ``y_pred > threshold`` (strict, so a probability
    equal to the threshold predicts 0), compared in the predictions' dtype (float32 here).
    """
    y, p = _check_binary(labels, probs)
    p = p.astype(np.float32)
    predicted = (p > np.float32(threshold)).astype(np.float32)
    return float(np.mean(predicted == y.astype(np.float32)))


def auc(labels, probs) -> float:
    """Exact ROC AUC (Mann-Whitney U): P(score of a random positive > a random negative), ties
    counting 1/2 (average ranks of tied scores). [N] or [N, 1]. NaN when only one class occurs.

    Note: Keras' ``AUC`` metric instead interpolates over 200 thresholds; this is the exact value.
    """
    y, p = _check_binary(labels, probs)
    positive = y.astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(p.astype(np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = ends - (counts - 1) / 2.0          # 1-based average rank of each tie group
    rank_sum = mid_ranks[inverse.reshape(-1)][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy from probabilities, Keras-style: [N] or [N, 1].

    tf_keras ``backend.binary_crossentropy`` (probability path): ``p = clip(p, eps, 1 - eps)``;
    ``-(y * log(p + eps) + (1 - y) * log(1 - p + eps))`` elementwise in float32, then the mean
    (here accumulated in float64). Keras' TRAINING loss for a sigmoid Dense output takes the
    logits path instead (``_get_logits``), see ``log_loss_from_logits``.
    """
    y, p = _check_binary(labels, probs)
    y = y.astype(np.float32)
    e = np.float32(eps)
    p = np.clip(p.astype(np.float32), e, np.float32(1.0) - e)
    bce = -(y * np.log(p + e) + (np.float32(1.0) - y) * np.log(np.float32(1.0) - p + e))
    return float(np.mean(bce, dtype=np.float64))


def log_loss_from_logits(labels, logits) -> float:
    """Mean ``tf.nn.sigmoid_cross_entropy_with_logits``: max(x, 0) - x*y + log1p(exp(-|x|))."""
    y, x = _check_binary(labels, logits, name="logits")
    x = x.astype(np.float64)
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))


# --------------------------------------------------------------------------------------------
# two-stage: retrieval order vs re-ranked order
# --------------------------------------------------------------------------------------------

def rerank(candidate_ids, ranking_scores) -> np.ndarray:
    """Order each row of candidate_ids [N, C] by descending ranking_scores [N, C].

    Ties keep the retrieval order (stable sort of ``-scores``). The seed calls
    ``np.argsort(-score)`` (default kind) on 10 float32 scores; the numpy of its time ran
    insertion sort for n <= 16 there, which is stable. Current numpy on AVX-512 / AVX2 machines
    dispatches that call to an unstable SIMD sort, so the explicit ``kind="stable"`` is what
    reproduces the seed on every machine.
    """
    cand = np.asarray(candidate_ids)
    s = np.asarray(ranking_scores)
    if cand.ndim != 2 or s.shape != cand.shape:
        raise ValueError(f"candidate_ids {cand.shape} and ranking_scores {s.shape} must both be "
                         "[num_queries, num_candidates]")
    if s.dtype.kind not in "iuf":
        raise TypeError(f"ranking_scores must be numeric, got dtype {s.dtype}")
    if np.isnan(s).any():
        raise ValueError("ranking_scores contain NaN; the ranking model diverged")
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(cand, order, axis=1)


def first_hit_rank(ranked_ids, true_ids, k: int | None = None) -> np.ndarray:
    """[N, C], [N] -> [N] int64: 1-based position of the FIRST occurrence of the true id among
    the first k (all C when None) ids of each row, 0 when absent (the seed's ``pred.index``)."""
    ranked, truth = _check_ids(ranked_ids, true_ids, "ranked_ids")
    if k is not None:
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        ranked = ranked[:, :k]
    match = ranked == truth[:, None]
    if match.shape[1] == 0:
        return np.zeros(match.shape[0], dtype=np.int64)
    found = match.any(axis=1)
    return np.where(found, match.argmax(axis=1) + 1, 0).astype(np.int64)


def ndcg_at_k(ranked_ids, true_ids, k: int) -> float:
    """Mean nDCG@k with one relevant item: 1/log2(rank + 1) for the first occurrence of the
    truth at 1-based rank <= k, else 0 (the ideal DCG is 1). [N, C], [N]."""
    rank = first_hit_rank(ranked_ids, true_ids, k).astype(np.float64)
    gains = np.zeros_like(rank)
    hit = rank > 0
    gains[hit] = 1.0 / np.log2(rank[hit] + 1.0)
    return float(gains.mean())


def hit_rate_at_k(ranked_ids, true_ids, k: int) -> float:
    """Fraction of rows whose truth is among their first k ids. [N, C], [N]."""
    return float((first_hit_rank(ranked_ids, true_ids, k) > 0).mean())


def mrr(ranked_ids, true_ids, k: int | None = None) -> float:
    """Mean reciprocal rank of the first occurrence of the truth (0 when absent) within the
    first k ids (all C when None). [N, C], [N]."""
    rank = first_hit_rank(ranked_ids, true_ids, k).astype(np.float64)
    rr = np.zeros_like(rank)
    rr[rank > 0] = 1.0 / rank[rank > 0]
    return float(rr.mean())


def two_stage_metrics(candidate_ids, ranking_scores, true_ids, k: int = 10) -> dict[str, float]:
    """Score the retrieval order and the re-ranked order of the same candidates.

    candidate_ids [N, C] in retrieval order (titles or title indices; duplicates possible since
    titles repeat in the corpus), ranking_scores [N, C] (ranking model outputs for those
    candidates), true_ids [N] (same id kind). k <= C.
    Returns ``ndcg@{k}_retrieval``, ``ndcg@{k}_reranked``, ``hit@{k}_retrieval``,
    ``hit@{k}_reranked`` (truth among the first k) and ``mrr_retrieval``, ``mrr_reranked``
    (over all C candidates), each a mean over the N queries. Re-ranking: ``rerank`` (stable
    descending); nDCG/hit/MRR use the first occurrence of the truth.
    """
    cand, truth = _check_ids(candidate_ids, true_ids, "candidate_ids")
    if not 1 <= k <= cand.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the number of candidates "
                         f"({cand.shape[1]}); retrieve at least k candidates per query")
    orders = {"retrieval": cand, "reranked": rerank(cand, ranking_scores)}
    out: dict[str, float] = {}
    for metric, fn in ((f"ndcg@{k}", lambda r: ndcg_at_k(r, truth, k)),
                       (f"hit@{k}", lambda r: hit_rate_at_k(r, truth, k)),
                       ("mrr", lambda r: mrr(r, truth))):
        for name, ranked in orders.items():
            out[f"{metric}_{name}"] = fn(ranked)
    return out


# --------------------------------------------------------------------------------------------
# exclude_seen: which corpus rows each query drops
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Exclusions:
    """Per query, the corpus rows removed from its ranking, in CSR form: the rows of query i
    are ``cols[indptr[i]:indptr[i + 1]]``, distinct (in no particular order). ``num_columns``: the
    corpus size M. Memory is O(excluded pairs) of the queries it holds, so build it per block
    of queries (``SeenTitles.exclusions``) rather than for a whole large test split."""

    indptr: np.ndarray
    cols: np.ndarray
    num_columns: int

    @property
    def num_queries(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        """[N] int64: rows excluded per query."""
        return np.diff(self.indptr)

    def slice(self, start: int, end: int) -> "Exclusions":
        """The exclusions of queries start..end (renumbered from 0)."""
        ptr = self.indptr[start: end + 1]
        return Exclusions(ptr - ptr[0], self.cols[ptr[0]: ptr[-1]], self.num_columns)

    def take(self, queries: np.ndarray) -> "Exclusions":
        """The exclusions of the given query positions, in that order."""
        queries = np.asarray(queries, dtype=np.int64)
        lengths = self.counts()[queries]
        cols = self.cols[_ranges(self.indptr[queries], lengths)]
        return Exclusions(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), cols,
                          self.num_columns)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(query [nnz], corpus row [nnz]) int64."""
        return np.repeat(np.arange(self.num_queries, dtype=np.int64), self.counts()), self.cols

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """rows [N, K] corpus rows (one line per query; -1 padding never matches) -> [N, K]
        bool: the row is excluded for that query."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape[0] != self.num_queries:
            raise ValueError(f"{rows.shape[0]} lines of rows for {self.num_queries} queries")
        query, col = self.pairs()
        codes = np.sort(query * self.num_columns + col)
        wanted = (np.arange(rows.shape[0], dtype=np.int64)[:, None] * self.num_columns + rows)
        if codes.size == 0:
            return np.zeros(rows.shape, dtype=bool)
        at = np.minimum(np.searchsorted(codes, wanted), codes.size - 1)
        return (codes[at] == wanted) & (rows >= 0)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.asarray(starts, dtype=np.int64) - np.cumsum(lengths) + lengths,
                        lengths)
    return offsets + np.arange(total, dtype=np.int64)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique of a 1-D integer array by sort + neighbour comparison (numpy 2's hash-based
    unique was several times slower on the ~1M training pairs of ml-1m)."""
    values = np.sort(np.asarray(values).reshape(-1))
    if values.size == 0:
        return values
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


class SeenTitles:
    """The titles each user rated in training, and the corpus rows they occupy.

    ``users`` [R], ``titles`` [R]: integer user and title indices of the TRAINING ratings;
    ``corpus_titles`` [M]: the title index of every corpus row (duplicate titles share one).
    Held as the distinct (user, title) pairs, each expanded into its corpus rows once, so a
    block of queries is one range gather. Memory: O(distinct training pairs + M).
    """

    def __init__(self, users, titles, corpus_titles) -> None:
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        titles = np.asarray(titles, dtype=np.int64).reshape(-1)
        if users.shape != titles.shape:
            raise ValueError(f"{users.shape[0]} training users but {titles.shape[0]} titles")
        corpus = np.asarray(corpus_titles, dtype=np.int64).reshape(-1)
        if corpus.size == 0:
            raise ValueError("the corpus is empty: nothing to exclude from")
        size = int(max(corpus.max(initial=0), titles.max(initial=0))) + 1
        self.pairs = sorted_unique(users * size + titles)        # distinct, sorted by user
        self.num_titles, self.num_columns = size, corpus.size
        self.pair_users, self.pair_titles = self.pairs // size, self.pairs % size
        # title -> its corpus rows (ascending); each pair -> the rows of its title
        rows_by_title = np.argsort(corpus, kind="stable").astype(np.int64)
        title_ptr = np.searchsorted(corpus[rows_by_title], np.arange(size + 1))
        self.rows_of_title = np.diff(title_ptr)
        per_pair = self.rows_of_title[self.pair_titles]
        self.pair_ptr = np.concatenate([[0], np.cumsum(per_pair)]).astype(np.int64)
        self.seen_rows = rows_by_title[_ranges(title_ptr[self.pair_titles], per_pair)]
        self.seen_row_titles = np.repeat(self.pair_titles, per_pair)

    def _pair_range(self, users) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        return (np.searchsorted(self.pair_users, users, side="left"),
                np.searchsorted(self.pair_users, users, side="right"))

    def titles_of(self, users) -> tuple[np.ndarray, np.ndarray]:
        """(query [P], title [P]): the training titles of each of ``users`` [N]."""
        first, last = self._pair_range(users)
        query = np.repeat(np.arange(first.size, dtype=np.int64), last - first)
        return query, self.pair_titles[_ranges(first, last - first)]

    def for_queries(self, users, truth_titles) -> "QueryExclusions":
        """The ``exclude_seen`` exclusions of N queries, built block by block on demand (what
        the evaluation passes around: memory stays O(one block's excluded pairs))."""
        return QueryExclusions(self, np.asarray(users).reshape(-1),
                               np.asarray(truth_titles).reshape(-1))

    def exclusions(self, users, truth_titles) -> Exclusions:
        """The ``exclude_seen`` exclusions of N queries: for query i (user ``users[i]``, true
        title ``truth_titles[i]``), every corpus row of every title that user rated in
        training, except the rows of its own true title."""
        truth = np.asarray(truth_titles, dtype=np.int64).reshape(-1)
        first, last = self._pair_range(users)
        if truth.size != first.size:
            raise ValueError(f"{first.size} users but {truth.size} true titles")
        start, lengths = self.pair_ptr[first], self.pair_ptr[last] - self.pair_ptr[first]
        at = _ranges(start, lengths)
        query = np.repeat(np.arange(truth.size, dtype=np.int64), lengths)
        own = self.seen_row_titles[at] == truth[query]
        per_query = lengths - np.bincount(query[own], minlength=truth.size)
        return Exclusions(np.concatenate([[0], np.cumsum(per_query)]).astype(np.int64),
                          self.seen_rows[at[~own]], self.num_columns)

    def audiences(self, users, titles) -> dict[str, np.ndarray]:
        """Who a query is, by what training knew of it: ``users`` [N], ``titles`` [N] (integer
        indices) -> {audience: [N] bool} for :data:`AUDIENCES`: ``warm`` (the user has at least
        one training rating), ``cold`` (none) and ``new_title`` (the title has none). Under a
        temporal split most test users are cold, which one overall figure hides."""
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        titles = np.asarray(titles, dtype=np.int64).reshape(-1)
        first, last = self._pair_range(users)
        rated = np.zeros(self.num_titles, dtype=bool)
        rated[self.pair_titles] = True
        known = (titles >= 0) & (titles < self.num_titles)
        warm = last > first
        return {"warm": warm, "cold": ~warm,
                "new_title": ~np.where(known, rated[np.where(known, titles, 0)], False)}

    def excluded_counts(self, users, truth_titles) -> np.ndarray:
        """[N] int64: how many corpus rows ``exclusions`` would drop per query, without
        building them."""
        truth = np.asarray(truth_titles, dtype=np.int64).reshape(-1)
        first, last = self._pair_range(users)
        total = self.pair_ptr[last] - self.pair_ptr[first]
        code = np.asarray(users, dtype=np.int64).reshape(-1) * self.num_titles + truth
        at = np.minimum(np.searchsorted(self.pairs, code), max(self.pairs.size - 1, 0))
        rated = (self.pairs[at] == code) if self.pairs.size else np.zeros(truth.size, bool)
        return total - np.where(rated, self.rows_of_title[truth], 0)


@dataclass(frozen=True)
class QueryExclusions:
    """Lazy :class:`Exclusions` of N queries (user, true title): ``slice(start, end)`` builds
    the exclusions of one block only (:meth:`SeenTitles.exclusions`)."""

    seen: SeenTitles
    users: np.ndarray
    truths: np.ndarray

    def __post_init__(self) -> None:
        if self.users.shape != self.truths.shape:
            raise ValueError(f"{self.users.size} users but {self.truths.size} true titles")

    @property
    def num_queries(self) -> int:
        return int(self.users.size)

    @property
    def num_columns(self) -> int:
        return self.seen.num_columns

    def slice(self, start: int, end: int) -> Exclusions:
        return self.seen.exclusions(self.users[start:end], self.truths[start:end])


def drop_excluded(scores: np.ndarray, rows: np.ndarray, exclude: Exclusions, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Retrieved (scores [N, K], rows [N, K]) best first, with at least k + (rows excluded for
    that query) columns where the corpus allows -> the first min(k, K) rows that are not
    excluded, order kept (TFRS ``TopK.query_with_exclusions`` retrieves k + exclusions and
    keeps the best k non-excluded the same way). When fewer remain (a user who rated nearly
    the whole corpus), the tail is padding: row -1, score -inf (TFRS would return excluded
    candidates there)."""
    dropped = exclude.contains(rows)
    width = min(int(k), rows.shape[1])
    order = np.argsort(dropped, axis=1, kind="stable")[:, :width]
    kept_rows = np.take_along_axis(rows, order, axis=1).astype(np.int64)
    kept_scores = np.take_along_axis(np.asarray(scores, dtype=np.float32), order, axis=1)
    pad = np.take_along_axis(dropped, order, axis=1)
    kept_rows[pad] = -1
    kept_scores[pad] = -np.inf
    return kept_scores, kept_rows


# --------------------------------------------------------------------------------------------
# ranks, standard errors, query samples
# --------------------------------------------------------------------------------------------

def rank_metrics(greater: np.ndarray, finite: np.ndarray, k: int, num_candidates: int
                 ) -> dict[str, float]:
    """nDCG@k, hit@k and MRR (within ``num_candidates``) from the score-based rank
    ``greater + 1`` (non-finite rows: misses): what :func:`two_stage_metrics` computes on a
    retrieved list, for rankers without an index (the baselines)."""
    rank = np.where(finite, np.asarray(greater) + 1, 0).astype(np.float64)
    _check_nonempty(rank.size, "queries")
    in_k = (rank > 0) & (rank <= k)
    in_c = (rank > 0) & (rank <= num_candidates)
    gains = np.where(in_k, 1.0 / np.log2(np.where(in_k, rank, 1.0) + 1.0), 0.0)
    rr = np.where(in_c, 1.0 / np.where(in_c, rank, 1.0), 0.0)
    return {f"ndcg@{k}": float(gains.mean()), f"hit@{k}": float(in_k.mean()),
            "mrr": float(rr.mean())}


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n independent queries:
    sqrt(p (1 - p) / n)."""
    if n < 1:
        raise ValueError(f"n={n}: a standard error needs at least one query")
    p = float(p)
    return float(np.sqrt(max(p * (1.0 - p), 0.0) / n))


def sample_rows(rows: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A seeded sample of n of ``rows`` without replacement, in their original order (so
    batches and shards stay as for the whole split); all rows when n is None or >= len."""
    rows = np.asarray(rows)
    if n is None or n >= len(rows):
        return rows
    if n < 1:
        raise ValueError(f"eval_queries={n} must be >= 1")
    picked = np.random.default_rng([seed, 0x5E1EC7]).choice(len(rows), size=n, replace=False)
    return rows[np.sort(picked)]
