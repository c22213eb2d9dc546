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


def two_stage_report(backend, dataset: Dataset, rows: np.ndarray, c: int):
    """pipeline.recommend of the test rows -> (retrieval scores, candidate title ids, ranking
    scores [rows, c] in retrieval order, true title ids)."""
    recs = recommend(backend, dataset.user_id[rows], dataset.timestamp[rows], c,
                     dataset.corpus_titles)
    ids = dataset.corpus_features["title_index"][recs.rows]
    return recs.retrieval_scores, ids, recs.ranking_scores, dataset.features["title_index"][rows]


def check_two_stage(pair: Pair, dataset: Dataset, rows: np.ndarray) -> None:
    """nDCG@k / hit@k before and after re-ranking, per query, on rows without near-ties."""
    c, k = pair.config.eval.num_candidates, pair.config.eval.ndcg_k
    pair.torch.build_index(dataset.corpus_titles)
    pair.tfrs.build_index(dataset.corpus_titles)
    ts_, t_ids, t_rank, truth = two_stage_report(pair.torch, dataset, rows, c + 1)
    fs_, f_ids, f_rank, _ = two_stage_report(pair.tfrs, dataset, rows, c + 1)
    stable = ~(fragile_rows(fs_, tol.INDEX_SCORE_ATOL)
               | fragile_rows(np.sort(f_rank[:, :c], axis=1), tol.INDEX_SCORE_ATOL))
    if stable.mean() < 0.5:
        raise ParityError(f"only {stable.mean():.1%} of rows are free of near-ties; the "
                          "comparison would prove nothing")
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
