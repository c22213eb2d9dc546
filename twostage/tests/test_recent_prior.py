"""Recent popularity and the cold users' OOV route in the pipeline's own evaluation
(``--recent-beta``, ``--recent-beta-cold``, ``--recent-window-days``, ``--cold-as-oov``;
``twostage.prior.RecentBackend``), on both backends: the scores against a brute-force model +
beta log(1 + counts), cold users asking as an id no vocabulary holds, and the figures against
the shared count of those scores."""
from __future__ import annotations

import numpy as np
import pytest

from twostage import evaluation as ev
from twostage import pipeline
from twostage.baselines import DAY_S, EventCounts, num_titles
from twostage.config import Config
from twostage.prior import MAX_RECENT_TITLES, UNKNOWN_USER, RecentBackend
from twostage.tests.test_prior import trained  # noqa: F401  (both backends, trained)


def _counts(ds, rows, days):
    """Brute force: each row's ratings of each title in [t - days, t), the whole log."""
    t = ds.timestamp[rows][:, None]
    inside = (ds.timestamp[None, :] < t) & (ds.timestamp[None, :] >= t - days * DAY_S)
    out = np.zeros((rows.size, num_titles(ds)))
    for i in range(rows.size):
        np.add.at(out[i], ds.features["title_index"][inside[i]], 1)
    return out


def _known(ds, fraction_cold=4):
    """Training users, less every fraction_cold-th (so some test users are cold)."""
    users = np.unique(ds.user_id[ds.split.train])
    return users[np.arange(users.size) % fraction_cold != 0]


def test_scores_are_the_model_plus_beta_log1p_of_the_window_counts(trained, synthetic_dataset):
    ds = synthetic_dataset
    rows, days, known = ds.split.test[:60], 30.0, _known(ds)
    events = EventCounts.of(ds.timestamp, ds.features["title_index"], num_titles(ds))
    recent = RecentBackend(trained, ds.corpus_titles, ds.corpus_features["title_index"],
                           events, days * DAY_S, 2.0, 0.5, known)
    users, stamps = ds.user_id[rows], ds.timestamp[rows]
    got = recent.query_embeddings(users, stamps) @ recent.candidate_embeddings(
        ds.corpus_titles).T
    model = trained.query_embeddings(users, stamps) @ trained.candidate_embeddings(
        ds.corpus_titles).T
    beta = np.where(np.isin(users, known), 2.0, 0.5)[:, None]
    want = model + beta * np.log1p(_counts(ds, rows, days))[:, ds.corpus_features["title_index"]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert not np.isin(users, known).all() and np.isin(users, known).any()


def test_cold_users_ask_through_the_oov_row(trained, synthetic_dataset):
    """With cold_as_oov a cold user's query is the backend's query of an unknown id; a warm
    user's is their own (fails if the mask were ignored or inverted)."""
    ds = synthetic_dataset
    rows, known = ds.split.test[:60], _known(ds)
    events = EventCounts.of(ds.timestamp, ds.features["title_index"], num_titles(ds))
    recent = RecentBackend(trained, ds.corpus_titles, ds.corpus_features["title_index"],
                           events, None, 0.0, 0.0, known, cold_as_oov=True)
    users, stamps = ds.user_id[rows], ds.timestamp[rows]
    cold = ~np.isin(users, known)
    got = recent.query_embeddings(users, stamps)
    np.testing.assert_allclose(got[cold], trained.query_embeddings(
        np.full(int(cold.sum()), UNKNOWN_USER, object), stamps[cold]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[~cold], trained.query_embeddings(users[~cold],
                                                                     stamps[~cold]),
                               rtol=1e-6, atol=1e-7)
    assert got.shape[1] == trained.query_embeddings(users[:1], stamps[:1]).shape[1]


def test_the_pipelines_figures_count_the_augmented_scores(trained, synthetic_dataset,
                                                          small_config):
    """Every top-k accuracy of ``pipeline.evaluate`` with the recent prior equals the shared
    count over the wrapper's embeddings (fails if the evaluation ignored the flags), and the
    report says what was added."""
    ds = synthetic_dataset
    cfg = small_config.replace(recent_beta=1.0, recent_beta_cold=3.0, recent_window_days=0.0)
    report = pipeline.evaluate(trained, ds, cfg)
    recent = pipeline.with_recent(trained, ds, cfg)
    assert (recent.beta_warm, recent.beta_cold, recent.window_s) == (1.0, 3.0, None)
    rows = ds.split.test
    counted = ev.count_scoring_higher(
        recent.query_embeddings(ds.user_id[rows], ds.timestamp[rows]),
        recent.candidate_embeddings(ds.movie_title[rows]),
        recent.candidate_embeddings(ds.corpus_titles), exclude=pipeline.exclusions(ds, rows))
    hits = ev.hits_at_k(counted.greater_unseen, counted.finite, cfg.eval.top_ks)
    assert report["retrieval"]["top_k_accuracy_exclude_seen"] == {
        str(k): h / len(rows) for k, h in zip(cfg.eval.top_ks, hits)}
    assert report["recent_prior"]["beta_cold"] == 3.0
    assert report["recent_prior"]["window_days"] is None
    plain = pipeline.evaluate(trained, ds, small_config)
    assert "recent_prior" not in plain
    assert plain["retrieval"]["top_k_accuracy_exclude_seen"] != \
        report["retrieval"]["top_k_accuracy_exclude_seen"]


def test_off_by_default_and_bad_values_are_refused(trained, synthetic_dataset, small_config):
    assert pipeline.with_recent(trained, synthetic_dataset, small_config) is trained
    with pytest.raises(ValueError, match="recent_window_days=-1"):
        Config.of(recent_window_days=-1)
    with pytest.raises(ValueError, match="choose one"):
        Config.of(prior_beta=0.5, recent_beta=0.5)
    assert Config.of(recent_beta=0.3).eval.recent_beta_cold is None


def test_a_catalogue_too_large_for_dense_columns_is_refused(trained, synthetic_dataset):
    ds = synthetic_dataset
    big = EventCounts.of(ds.timestamp[:5], np.zeros(5, np.int64), MAX_RECENT_TITLES + 1)
    with pytest.raises(ValueError, match="--recent-beta"):
        RecentBackend(trained, ds.corpus_titles, ds.corpus_features["title_index"], big, None,
                      1.0, 1.0, np.array([]))
