"""The six parity checks, as functions that raise :class:`ParityError` on disagreement.

Tests call them on correct backends (they must pass) and on deliberately broken ones
(``test_breaks``: they must fail), so the checks are the specification of parity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from twostage import env

env.setup_tensorflow()  # before TensorFlow is imported below (also done by the root conftest)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from tfrs_impl import features as tf_features  # noqa: E402
from tfrs_impl.backend import TfrsBackend  # noqa: E402
from torch_impl.backend import TorchBackend  # noqa: E402
from twostage import evaluation  # noqa: E402
from twostage.config import Config  # noqa: E402
from twostage.data.features import FeatureSpec  # noqa: E402
from twostage.data.movielens import load_movielens  # noqa: E402
from twostage.data.synthetic import generate  # noqa: E402
from twostage.dataset import Dataset, from_movielens  # noqa: E402
from twostage.export import copy_weights  # noqa: E402
from twostage.pipeline import recommend  # noqa: E402
from twostage.sampling import SAMPLING_PROBABILITY, candidate_sampling_probability  # noqa: E402
from twostage.schedule import BatchPlan  # noqa: E402

from . import tolerances as tol  # noqa: E402
from .compare import ParityError, assert_close, assert_equal, assert_weights_close  # noqa: E402
from .tf_order import tf_positive_scores  # noqa: E402
from .tolerances import assert_top_k_close  # noqa: E402

STAGES = ("retrieval", "ranking")


# --- data -------------------------------------------------------------------------------------
def parity_dataset(config: Config, synthetic_dir: Path, real: Path | None
                   ) -> tuple[Dataset, str]:
    """The real MovieLens 100k when ``real`` names it (the root conftest's real_data_path), else
    seeded synthetic data."""
    if real is not None:
        return from_movielens(load_movielens(real), config), "real"
    directory = generate(synthetic_dir, num_users=300, num_movies=200, num_ratings=8000, seed=7)
    return from_movielens(load_movielens(directory), config), "synthetic"


def raw_batch(dataset: Dataset, rows: np.ndarray, config: Config) -> dict[str, np.ndarray]:
    """Raw columns of ``rows`` (+ logQ probabilities when the config uses them)."""
    batch = dataset.raw(rows)
    if config.task.use_sampling_probability:
        batch[SAMPLING_PROBABILITY] = candidate_sampling_probability(dataset)[rows]
    return batch


def training_batches(dataset: Dataset, config: Config, steps: int) -> list[np.ndarray]:
    """The shared batch order (twostage.schedule.BatchPlan), as rating rows, first ``steps``."""
    return BatchPlan(dataset.split.train, config.train.batch_size, config.seed).first_steps(steps)


@dataclass
class Pair:
    """A torch and a TFRS backend holding the same weights."""

    torch: TorchBackend
    tfrs: TfrsBackend
    config: Config


def make_pair(dataset: Dataset, config: Config, torch_config: Config | None = None) -> Pair:
    """Independently built backends, then retrieval weights copied torch -> TFRS and ranking
    weights TFRS -> torch (both directions of the export exercised). ``torch_config`` lets a
    break test give the torch side other (wrong) settings."""
    t = TorchBackend(torch_config or config, dataset.spec)
    return pair_from(t, TfrsBackend(config, dataset.spec), config)


def pair_from(t: TorchBackend, f: TfrsBackend, config: Config) -> Pair:
    """Share weights between two existing backends (see :func:`make_pair`)."""
    copy_weights(t, f, stages=("retrieval",))
    copy_weights(f, t, stages=("ranking",))
    for stage in STAGES:
        assert_weights_close(f"shared {stage} weights", t.get_weights(stage),
                             f.get_weights(stage), rtol=0.0)
    return Pair(t, f, config)


# --- 1. features ------------------------------------------------------------------------------
def check_features(dataset: Dataset, spec: FeatureSpec | None = None) -> None:
    """Every preprocessing output the torch path uses (the numpy FeatureSpec, or ``spec``)
    equals the tf_keras preprocessing layers of the TFRS path on all ratings and the corpus,
    plus unseen users and titles."""
    spec = spec or dataset.spec
    users = np.concatenate([dataset.user_id, ["no-such-user", ""]]).astype(object)
    titles = np.concatenate([dataset.movie_title, dataset.corpus_titles,
                             ["No Such Movie (2031)", ""]]).astype(object)
    ts = dataset.timestamp
    ref = dataset.spec  # the TFRS layers are built from the fitted spec
    assert_equal("user_index", spec.user_index(users),
                 tf_features.user_lookup(ref)(tf.constant(users.astype(str))).numpy())
    assert_equal("title_index", spec.title_index(titles),
                 tf_features.title_lookup(ref)(tf.constant(titles.astype(str))).numpy())
    assert_equal("ts_bucket", spec.timestamp_bucket(ts),
                 tf_features.timestamp_discretization(ref)(tf.constant(ts)).numpy())
    assert_close("ts_norm", spec.timestamp_normalized(ts),
                 tf_features.timestamp_normalization(ref)(tf.constant(ts)).numpy(),
                 rtol=0.0, atol=tol.FEATURE_NORM_ATOL)
    tokens = tf_features.title_vectorizer(ref)(tf.constant(titles.astype(str))).numpy()
    assert_equal("title_tokens", spec.title_tokens(titles, length=tokens.shape[1]), tokens)


def check_features_seed_way(dataset: Dataset) -> None:
    """The group's reference: the numpy FeatureSpec against the preprocessing layers the seed
    itself builds by Keras ``adapt`` / ``np.unique`` on the raw data
    (``tfrs_impl.features.adapt_seed_way``), not layers built from the spec's own vocabularies
    and boundaries (what :func:`check_features` compares, which would share a wrong fit)."""
    spec = dataset.spec
    seed = tf_features.adapt_seed_way(dataset.user_id, dataset.timestamp, dataset.corpus_titles,
                                      num_buckets=len(spec.ts_boundaries),
                                      max_tokens=spec.max_tokens)
    users = np.concatenate([dataset.user_id, ["no-such-user"]]).astype(object)
    titles = np.concatenate([dataset.corpus_titles, ["No Such Movie (2031)"]]).astype(object)
    ts = dataset.timestamp

    def run(layer, x) -> np.ndarray:
        return layer(tf.constant(x)).numpy()
    assert_equal("user_index (adapt)", spec.user_index(users),
                 run(seed["user_lookup"], users.astype(str)))
    assert_equal("title_index (adapt)", spec.title_index(titles),
                 run(seed["title_lookup"], titles.astype(str)))
    assert_equal("ts_bucket (adapt)", spec.timestamp_bucket(ts),
                 run(seed["timestamp_discretization"], ts))
    assert_close("ts_norm (adapt)", spec.timestamp_normalized(ts),
                 run(seed["timestamp_normalization"], ts), rtol=0.0,
                 atol=tol.FEATURE_ADAPT_NORM_ATOL)
    tokens = run(seed["title_vectorizer"], titles.astype(str))
    assert_equal("title_tokens (adapt)", spec.title_tokens(titles, length=tokens.shape[1]),
                 tokens)


# --- 2. forward -------------------------------------------------------------------------------
def check_forward(pair: Pair, dataset: Dataset, rows: np.ndarray) -> None:
    """Query/candidate embeddings and ranking probabilities of the same raw rows."""
    u, ts, titles = dataset.user_id[rows], dataset.timestamp[rows], dataset.movie_title[rows]
    assert_close("query embeddings", pair.torch.query_embeddings(u, ts),
                 pair.tfrs.query_embeddings(u, ts), rtol=tol.FORWARD_RTOL, atol=tol.FORWARD_ATOL)
    corpus = dataset.corpus_titles
    assert_close("candidate embeddings", pair.torch.candidate_embeddings(corpus),
                 pair.tfrs.candidate_embeddings(corpus), rtol=tol.FORWARD_RTOL,
                 atol=tol.FORWARD_ATOL)
    assert_close("ranking probabilities", pair.torch.ranking_scores(u, ts, titles),
                 pair.tfrs.ranking_scores(u, ts, titles), rtol=tol.FORWARD_RTOL,
                 atol=tol.FORWARD_ATOL)


# --- 3. losses and gradients ------------------------------------------------------------------
def check_loss_and_gradients(pair: Pair, stage: str, batch: dict[str, np.ndarray]) -> None:
    """The task loss of one batch and the gradient of every weight."""
    t_loss, t_grads = pair.torch.loss_and_gradients(stage, batch)
    f_loss, f_grads = pair.tfrs.loss_and_gradients(stage, batch)
    assert_close(f"{stage} loss", t_loss, f_loss, rtol=tol.LOSS_RTOL)
    scale = max(float(np.abs(g).max(initial=0.0)) for g in f_grads.values())
    assert_weights_close(f"{stage} gradient", t_grads, f_grads, rtol=tol.GRAD_RTOL,
                         atol=tol.GRAD_ATOL_OF_MAX * scale)


# --- 4. training trajectory -------------------------------------------------------------------
def stable_steps(backend: TfrsBackend, stage: str, batches: list[dict]) -> int:
    """How many leading steps TF itself reproduces to TRAJECTORY_RTOL / 10 when its initial
    weights are perturbed by 1e-7 relative (float32 noise): beyond that the trajectory is chaotic
    and no float32 implementation can be held to it."""
    from tfrs_impl.backend import TfrsBackend as Tfrs

    rng = np.random.default_rng(0)
    weights = backend.get_weights(stage)
    a, b = Tfrs(backend.config, backend.spec), Tfrs(backend.config, backend.spec)
    a.set_weights(stage, weights)
    b.set_weights(stage, {k: (v * (1 + 1e-7 * rng.choice([-1, 1], v.shape))).astype(v.dtype)
                          for k, v in weights.items()})
    la, lb = np.array(a.train_steps(stage, batches)), np.array(b.train_steps(stage, batches))
    drift = np.abs(la - lb) > tol.TRAJECTORY_RTOL / 10 * np.abs(lb)
    return int(np.argmax(drift)) if drift.any() else len(batches)


def check_trajectory(pair: Pair, stage: str, batches: list[dict], weights: bool = True
                     ) -> None:
    """Per-step losses and (unless ``weights=False``) the final weights after the same
    optimizer steps."""
    t_losses = pair.torch.train_steps(stage, batches)
    f_losses = pair.tfrs.train_steps(stage, batches)
    assert_close(f"{stage} per-step losses", t_losses, f_losses, rtol=tol.TRAJECTORY_RTOL)
    if not weights:
        return
    assert_weights_close(f"{stage} weights after {len(batches)} steps",
                         pair.torch.get_weights(stage), pair.tfrs.get_weights(stage),
                         rtol=tol.TRAJECTORY_RTOL, atol=tol.TRAJECTORY_ATOL)


# --- 5. metrics -------------------------------------------------------------------------------
def tfrs_factorized_top_k(query: np.ndarray, truth: np.ndarray, corpus: np.ndarray,
                          ks: tuple[int, ...]) -> dict[int, float]:
    """TFRS's own FactorizedTopK metric over a corpus of embeddings (score-based)."""
    candidates = tf.data.Dataset.from_tensor_slices(corpus).batch(128)
    metric = tfrs.metrics.FactorizedTopK(candidates=candidates, ks=ks)
    metric.update_state(tf.constant(query), tf.constant(truth))
    return {k: float(r.numpy()) for k, r in zip(ks, metric.result())}


MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray, tuple], dict]


def framework_agnostic_top_k(query, truth, corpus, ks) -> dict[int, float]:
    """twostage.evaluation's FactorizedTopK given TF's positive scores (parity_tests/tf_order)."""
    return evaluation.factorized_top_k_accuracy(query, truth, corpus, ks,
                                                positive=tf_positive_scores(query, truth))


def check_metric_semantics(query: np.ndarray, truth: np.ndarray, corpus: np.ndarray,
                           ks: tuple[int, ...], metric: MetricFn = framework_agnostic_top_k
                           ) -> None:
    """The framework-agnostic FactorizedTopK equals TFRS's on the same embeddings, exactly."""
    ours = metric(query, truth, corpus, ks)
    theirs = tfrs_factorized_top_k(query, truth, corpus, ks)
    for k in ks:  # Keras' Mean metric returns float32: compare in float32
        assert_close(f"top-{k} accuracy", np.float32(ours[k]), np.float32(theirs[k]), rtol=0.0,
                     atol=tol.METRIC_EXACT)


def fragile_rows(sorted_scores: np.ndarray, atol: float) -> np.ndarray:
    """[N] bool: rows where two adjacent scores lie within ``atol`` (their order is rounding)."""
    return (np.abs(np.diff(sorted_scores, axis=1)) <= atol).any(axis=1)


def check_end_to_end_metrics(pair: Pair, dataset: Dataset, rows: np.ndarray) -> None:
    """Each backend's own embeddings into the metrics: top-k accuracy from the TFRS metric vs
    the numpy evaluation, and two-stage nDCG/hit from FAISS+torch vs BruteForce+TFRS. Rows
    whose outcome hinges on a near-tie (scores within INDEX_SCORE_ATOL, where float32 rounding
    of either framework decides) may differ; every other row must agree exactly."""
    ks = pair.config.eval.top_ks
    u, ts, titles = dataset.user_id[rows], dataset.timestamp[rows], dataset.movie_title[rows]
    tq, tt = pair.torch.query_embeddings(u, ts), pair.torch.candidate_embeddings(titles)
    tc = pair.torch.candidate_embeddings(dataset.corpus_titles)
    fq, ft = pair.tfrs.query_embeddings(u, ts), pair.tfrs.candidate_embeddings(titles)
    fc = pair.tfrs.candidate_embeddings(dataset.corpus_titles)
    ours = evaluation.factorized_top_k_accuracy(tq, tt, tc, ks)
    theirs = tfrs_factorized_top_k(fq, ft, fc, ks)
    # A row is fragile at k when the positive's score is within atol of the k-th corpus score.
    pos = tf_positive_scores(fq, ft)
    scores = np.sort(fq @ fc.T, axis=1)[:, ::-1]
    for k in ks:
        kk = min(k, scores.shape[1])
        near = np.abs(scores[:, :kk + 1] - pos[:, None]).min(axis=1) <= tol.INDEX_SCORE_ATOL
        allowed = near.mean()
        if abs(ours[k] - theirs[k]) > allowed + 1e-12:
            raise ParityError(f"top-{k} accuracy: torch/numpy {ours[k]:.6f} vs TFRS metric "
                              f"{theirs[k]:.6f}: differs by {abs(ours[k] - theirs[k]):.6f}, more "
                              f"than the share of near-tie rows {allowed:.6f}")
    check_two_stage(pair, dataset, rows)


def two_stage_report(backend, dataset: Dataset, rows: np.ndarray, c: int, exclusions=None):
    """pipeline.recommend of the test rows -> (retrieval scores, candidate title ids, ranking
    scores [rows, c] in retrieval order, true title ids). ``exclusions``: exclude_seen's."""
    recs = recommend(backend, dataset.user_id[rows], dataset.timestamp[rows], c,
                     dataset.corpus_titles, exclude=exclusions)
    ids = np.where(recs.rows >= 0,
                   dataset.corpus_features["title_index"][np.maximum(recs.rows, 0)], -1)
    return recs.retrieval_scores, ids, recs.ranking_scores, dataset.features["title_index"][rows]


def _inexact_ties(sorted_scores: np.ndarray, atol: float) -> np.ndarray:
    """[N] bool: rows where two adjacent scores differ, by at most ``atol``."""
    gaps = np.abs(np.diff(sorted_scores, axis=1))
    return ((gaps > 0) & (gaps <= atol)).any(axis=1)


def _observed_gap(a: np.ndarray, b: np.ndarray, same: np.ndarray, what: str) -> float:
    """The largest |a - b| where both backends hold the same candidate; ParityError when it
    passes the forward tolerance (a real difference, not rounding)."""
    gap = float(np.abs(a.astype(np.float64) - b)[same].max(initial=0.0))
    bound = tol.FORWARD_RTOL * float(np.abs(b[same]).max(initial=0.0)) + tol.FORWARD_ATOL
    if gap > bound:
        raise ParityError(f"{what} scores of the same candidates differ by {gap:.3g}, more "
                          f"than the forward tolerance {bound:.3g}")
    return max(gap, float(np.finfo(np.float32).tiny))


def check_two_stage(pair: Pair, dataset: Dataset, rows: np.ndarray, exclusions=None) -> None:
    """nDCG@k / hit@k before and after re-ranking, per query, on rows without near-ties
    (``exclusions``: under exclude_seen, candidates retrieved after exclusion). Both backends
    go through the same ``pipeline.recommend`` (retrieve, drop excluded, re-rank: shared by
    design, tested once against brute force by check_exclusion_brute_force and
    twostage/tests/test_protocols.py); what differs, and is compared, is each backend's
    retrieval and ranking scores."""
    c, k = pair.config.eval.num_candidates, pair.config.eval.ndcg_k
    pair.torch.build_index(dataset.corpus_titles)
    pair.tfrs.build_index(dataset.corpus_titles)
    ts_, t_ids, t_rank, truth = two_stage_report(pair.torch, dataset, rows, c + 1, exclusions)
    fs_, f_ids, f_rank, _ = two_stage_report(pair.tfrs, dataset, rows, c + 1, exclusions)
    # near-ties are judged at what float32 explains here: twice the largest difference of the
    # two backends' scores of the same candidates (itself within the forward tolerance)
    same = t_ids == f_ids
    retr_gap = _observed_gap(ts_, fs_, same, "retrieval")
    rank_gap = _observed_gap(t_rank[:, :c], f_rank[:, :c], same[:, :c], "ranking")
    # (exact ties are no near-ties: duplicate titles score alike in both, bit for bit, and the
    # same stable rules order them)
    stable = ~(_inexact_ties(fs_, 2 * retr_gap)
               | _inexact_ties(np.sort(f_rank[:, :c], axis=1), 2 * rank_gap))
    if stable.mean() < 1 - tol.NEAR_TIE_ROWS_MAX:
        raise ParityError(f"{(~stable).mean():.1%} of rows hold near-ties (more than "
                          f"NEAR_TIE_ROWS_MAX {tol.NEAR_TIE_ROWS_MAX:.0%}): the comparison "
                          "would leave out too much")
    t = evaluation.two_stage_metrics(t_ids[stable, :c], t_rank[stable, :c], truth[stable], k=k)
    f = evaluation.two_stage_metrics(f_ids[stable, :c], f_rank[stable, :c], truth[stable], k=k)
    for name in t:
        assert_close(f"two-stage {name} ({int(stable.sum())} rows)", t[name], f[name],
                     rtol=0.0, atol=1e-12)


# --- 6. index ---------------------------------------------------------------------------------
def check_index(pair: Pair, dataset: Dataset, rows: np.ndarray, k: int = 100) -> None:
    """FAISS exact and TFRS BruteForce return the same top-k titles per query; where they
    differ, the two scores are a near-tie (within INDEX_SCORE_ATOL)."""
    u, ts = dataset.user_id[rows], dataset.timestamp[rows]
    pair.torch.build_index(dataset.corpus_titles)
    pair.tfrs.build_index(dataset.corpus_titles)
    k = min(k, len(dataset.corpus_titles))
    t_scores, t_rows = pair.torch.retrieve(u, ts, k)
    f_scores, f_rows = pair.tfrs.retrieve(u, ts, k)
    assert_close("index scores", t_scores, f_scores, rtol=tol.FORWARD_RTOL,
                 atol=tol.INDEX_SCORE_ATOL)
    t_ids = dataset.corpus_features["title_index"][t_rows]
    f_ids = dataset.corpus_features["title_index"][f_rows]
    differ = t_ids != f_ids
    if differ.any():
        # A swap is legitimate only between neighbours whose scores are within tolerance.
        nxt = np.abs(np.diff(f_scores, axis=1, append=-np.inf))
        prv = np.abs(np.diff(f_scores, axis=1, prepend=np.inf))
        tie = np.minimum(nxt, prv) <= tol.INDEX_SCORE_ATOL
        bad = differ & ~tie
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            raise ParityError(f"index: {int(bad.sum())} top-{k} entries differ without a tie; "
                              f"first at query {i}, rank {j}: FAISS "
                              f"{dataset.corpus_titles[t_rows[i, j]]!r} ({t_scores[i, j]:.7g}) vs "
                              f"BruteForce {dataset.corpus_titles[f_rows[i, j]]!r} "
                              f"({f_scores[i, j]:.7g})")


# --- 7. the exclude_seen protocol -------------------------------------------------------------
ExclusionsFn = Callable[[Dataset, np.ndarray], "evaluation.QueryExclusions"]


def _exclusions(dataset: Dataset, rows: np.ndarray):
    from twostage.pipeline import exclusions
    return exclusions(dataset, rows)


def seen_reference(dataset: Dataset, rows: np.ndarray) -> list[np.ndarray]:
    """The definition of exclude_seen, from the raw strings: for each rating row, the corpus
    rows whose title its user rated in training, its own title kept (Python sets)."""
    train = dataset.split.train
    seen: dict[str, set] = {}
    for user, title in zip(dataset.user_id[train], dataset.movie_title[train]):
        seen.setdefault(user, set()).add(title)
    corpus = dataset.corpus_titles.astype(str)
    out = []
    for r in rows:
        drop = seen.get(dataset.user_id[r], set()) - {dataset.movie_title[r]}
        out.append(np.flatnonzero(np.isin(corpus, sorted(drop))) if drop
                   else np.zeros(0, np.int64))
    return out


def check_exclusion_brute_force(backend, dataset: Dataset, rows: np.ndarray,
                                exclusions: ExclusionsFn = _exclusions) -> None:
    """The exclusion (``evaluation.count_scoring_higher`` with the pipeline's block-built
    exclusions, and ``pipeline.retrieve_unseen``) equals a dense one-query-at-a-time reference
    built from the raw strings: the same count of corpus rows above every positive, exactly,
    and the same retrieved titles. Both count on one score matrix computed alike (one float32
    GEMM block): BLAS may round a product differently in a block of another height (measured:
    6 of 1,600 rows moved by one at 97-row blocks, where the true title's own row ties its
    positive), which is the score rule's matter, not the exclusion's."""
    from twostage.pipeline import retrieve_unseen

    u, ts, titles = dataset.user_id[rows], dataset.timestamp[rows], dataset.movie_title[rows]
    q, truth = backend.query_embeddings(u, ts), backend.candidate_embeddings(titles)
    corpus = backend.candidate_embeddings(dataset.corpus_titles)
    excluded = exclusions(dataset, rows)
    counts = evaluation.count_scoring_higher(q, truth, corpus, exclude=excluded,
                                             budget_bytes=4 * corpus.shape[0] * len(rows))
    pos = evaluation.positive_scores(q, truth)
    scores = evaluation.settle_near_ties(q @ np.ascontiguousarray(corpus.T), pos, q, corpus,
                                         evaluation.cross_kernel_margin(q, corpus))
    reference = seen_reference(dataset, rows)
    expected = np.array([np.count_nonzero(np.delete(scores[i], drop) > pos[i])
                         for i, drop in enumerate(reference)])
    assert_close("exclude_seen: corpus rows above the positive", counts.greater_unseen,
                 expected, rtol=0.0, atol=tol.METRIC_EXACT)
    k = min(100, len(dataset.corpus_titles))
    backend.build_index(dataset.corpus_titles)
    got_scores, got = retrieve_unseen(backend, u, ts, k, excluded, block=512)
    full_scores, full = backend.retrieve(u, ts, len(dataset.corpus_titles))
    # sub-batches embed their queries in batches of another height than the full retrieve:
    # a kernel may round a row by its batch, so rows within FORWARD_RTOL may swap
    atol = tol.FORWARD_RTOL * np.abs(full_scores).max(axis=1, keepdims=True)
    for i, drop in enumerate(reference):
        keep = ~np.isin(full[i], drop)
        width = int((got[i] >= 0).sum())
        assert width == min(k, int(keep.sum())), f"query {i}: {width} rows retrieved"
        assert_top_k_close(got_scores[i:i + 1, :width], got[i:i + 1, :width],
                           full_scores[i:i + 1][:, keep][:, :width + 1],
                           full[i:i + 1][:, keep][:, :width + 1], atol[i:i + 1])


def tfrs_query_with_exclusions(backend: TfrsBackend, dataset: Dataset, rows: np.ndarray,
                               excluded: list[np.ndarray], k: int, batch: int = 128
                               ) -> tuple[np.ndarray, np.ndarray]:
    """TFRS's own exclusion: ``BruteForce.query_with_exclusions`` (retrieve k + E, push the
    excluded ids down, keep k) over the corpus rows as identifiers -> (scores, rows)."""
    from tfrs_impl.index import build_index

    model = backend.retrieval_model
    index = build_index(model.query_model, model.candidate_model, dataset.corpus_titles)
    scores, ids = [], []
    for start in range(0, len(rows), batch):
        part = excluded[start:start + batch]
        width = max(1, max(len(e) for e in part))
        table = np.full((len(part), width), -1, np.int64)        # -1 matches no row id
        for i, e in enumerate(part):
            table[i, :len(e)] = e
        r = rows[start:start + batch]
        s, j = index.query_with_exclusions(
            tf_features.to_tensors({"user_id": dataset.user_id[r],
                                    "timestamp": dataset.timestamp[r]}),
            tf.constant(table), k=k)
        scores.append(s.numpy())
        ids.append(j.numpy().astype(np.int64))
    return np.concatenate(scores), np.concatenate(ids)


def check_exclude_seen(pair: Pair, dataset: Dataset, rows: np.ndarray,
                       exclusions: ExclusionsFn = _exclusions) -> None:
    """exclude_seen agrees between the backends, each with its own embeddings and index:
    score-based top-k (the numpy metric on torch vs TFRS embeddings, TF's positive order on the
    TFRS side) within the share of near-tie rows, as ``check_end_to_end_metrics``; the torch
    pipeline's id-based exclusion (FAISS + ``retrieve_unseen``) against TFRS's own
    ``query_with_exclusions``, equal titles except near-ties, as ``check_index``; two-stage
    nDCG/hit/MRR after exclusion equal on rows without near-ties, as ``check_two_stage``."""
    from twostage.pipeline import retrieve_unseen

    ks = pair.config.eval.top_ks
    u, ts, titles = dataset.user_id[rows], dataset.timestamp[rows], dataset.movie_title[rows]
    excluded = exclusions(dataset, rows)
    tq, tt = pair.torch.query_embeddings(u, ts), pair.torch.candidate_embeddings(titles)
    tc = pair.torch.candidate_embeddings(dataset.corpus_titles)
    fq, ft = pair.tfrs.query_embeddings(u, ts), pair.tfrs.candidate_embeddings(titles)
    fc = pair.tfrs.candidate_embeddings(dataset.corpus_titles)
    fpos = tf_positive_scores(fq, ft)
    ours = evaluation.count_scoring_higher(tq, tt, tc, exclude=excluded)
    theirs = evaluation.count_scoring_higher(fq, ft, fc, exclude=excluded, positive=fpos)
    # a query's hit at k may flip only where float32 may: the backends' scores (and positives)
    # lie within twice their observed difference of the same corpus rows of each other
    dense = fq @ fc.T
    margin = 2 * (_observed_gap(tq @ tc.T, dense, np.ones(dense.shape, bool), "corpus")
                  + _observed_gap(evaluation.positive_scores(tq, tt), fpos,
                                  np.ones(len(fpos), bool), "positive"))
    row, col = excluded.slice(0, len(rows)).pairs()
    dense[row, col] = -np.inf                    # judged on the rows left in the ranking
    sure = (dense > fpos[:, None] + margin).sum(axis=1)
    maybe = (dense > fpos[:, None] - margin).sum(axis=1)
    n = len(rows)
    for k in ks:
        fragile = (sure < k) & (maybe >= k)
        a = np.count_nonzero(ours.finite & (ours.greater_unseen < k)) / n
        b = np.count_nonzero(theirs.finite & (theirs.greater_unseen < k)) / n
        if abs(a - b) > fragile.mean() + 1e-12:
            raise ParityError(f"exclude_seen top-{k} accuracy: torch {a:.6f} vs TFRS {b:.6f}: "
                              f"differs by {abs(a - b):.6f}, more than the share of rows "
                              f"float32 may flip {fragile.mean():.6f}")
    k = min(max(ks), len(dataset.corpus_titles))
    pair.torch.build_index(dataset.corpus_titles)
    t_scores, t_rows = retrieve_unseen(pair.torch, u, ts, k, excluded,
                                       pair.config.eval.eval_batch_size)
    per_query = excluded.slice(0, n)
    lists = [per_query.cols[per_query.indptr[i]:per_query.indptr[i + 1]] for i in range(n)]
    f_scores, f_rows = tfrs_query_with_exclusions(pair.tfrs, dataset, rows, lists, k)
    _compare_retrieved("exclude_seen index", dataset, t_scores, t_rows, f_scores, f_rows)
    check_two_stage(pair, dataset, rows, exclusions=excluded)


def _compare_retrieved(what: str, dataset: Dataset, t_scores, t_rows, f_scores, f_rows
                       ) -> None:
    """Same titles at every rank, except swaps between TFRS neighbours whose scores are within
    INDEX_SCORE_ATOL (rounding decides their order)."""
    assert_close(f"{what} scores", t_scores, f_scores, rtol=tol.FORWARD_RTOL,
                 atol=tol.INDEX_SCORE_ATOL)
    ids = dataset.corpus_features["title_index"]
    t_ids, f_ids = ids[t_rows], ids[f_rows]
    nxt = np.abs(np.diff(f_scores, axis=1, append=-np.inf))
    prv = np.abs(np.diff(f_scores, axis=1, prepend=np.inf))
    bad = (t_ids != f_ids) & ~(np.minimum(nxt, prv) <= tol.INDEX_SCORE_ATOL)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise ParityError(f"{what}: {int(bad.sum())} entries differ without a tie; first at "
                          f"query {i}, rank {j}: torch {dataset.corpus_titles[t_rows[i, j]]!r} "
                          f"({t_scores[i, j]:.7g}) vs TFRS "
                          f"{dataset.corpus_titles[f_rows[i, j]]!r} ({f_scores[i, j]:.7g})")
