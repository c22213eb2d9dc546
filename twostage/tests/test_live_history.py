"""Live histories (``config.eval.live_history``): the history recipe reads every rating strictly
before the query's second, test-period ones included, and nothing at or after it; the trained
lookups come back afterwards; EASE reading the same histories (``ease-live``) against a
brute-force x B; the hybrid keys a cold user's ratings under the id it asks as."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twostage import hybrid, pipeline
from twostage.baselines import (EaseScorer, Interactions, LiveEaseScorer, ease_weights, gram,
                                num_titles)
from twostage.config import Config
from twostage.prior import UNKNOWN_USER
from twostage.recipes import HISTORY_LENGTH, HistoryIndex, RecipeData, live_recipe


@pytest.fixture(scope="module")
def live_config(small_config):
    return small_config.replace(history=True, live_history=True)


@pytest.fixture(scope="module", params=["torch", "tfrs"])
def trained(request, synthetic_dataset, live_config):
    backend = pipeline.make_backend(request.param, live_config, synthetic_dataset)
    backend.fit_retrieval(synthetic_dataset, epochs=1)
    return backend


def _before(ds, row: int) -> list[int]:
    """Brute force: the titles the row's user rated strictly before its second, by time."""
    mine = np.flatnonzero((ds.user_id == ds.user_id[row]) & (ds.timestamp < ds.timestamp[row]))
    mine = mine[np.argsort(ds.timestamp[mine], kind="stable")]
    return ds.features["title_index"][mine].tolist()


def test_the_live_recipe_reads_every_earlier_rating_and_nothing_later(synthetic_dataset,
                                                                      live_config):
    ds = synthetic_dataset
    trained = RecipeData.from_dataset(ds, live_config)
    live = live_recipe(trained, ds.user_id, ds.timestamp, ds.features["title_index"])
    rows = ds.split.test[:200]
    got = live.histories(ds.user_id[rows], ds.timestamp[rows])
    for row, history in zip(rows, got):
        want = _before(ds, row)[-HISTORY_LENGTH:]
        assert history[history > 0].tolist() == want      # title ids are >= 1 (0: OOV row)
    train_only = trained.histories(ds.user_id[rows], ds.timestamp[rows])
    assert (got != train_only).any(), "no test row has an earlier test-period rating"
    assert live.genres is trained.genres and live.users is trained.users


def test_the_live_recipe_needs_the_history_recipe(synthetic_dataset):
    ds = synthetic_dataset
    with pytest.raises(ValueError, match="user histories"):
        live_recipe(None, ds.user_id, ds.timestamp, ds.features["title_index"])


def test_live_history_without_the_history_recipe_is_refused():
    with pytest.raises(ValueError, match="--history"):
        Config.of(live_history=True)
    assert Config.of(live_history=True, history=True).eval.live_history


def test_query_embeddings_under_live_histories_ignore_the_future(trained, synthetic_dataset):
    """Titles of every rating at or after a cut change nothing for queries before it; the
    same change before the cut does (fails if the histories read at or after the query)."""
    ds = synthetic_dataset
    cut = int(np.quantile(ds.timestamp, 0.7))
    rows = ds.split.test[ds.timestamp[ds.split.test] < cut][:100]
    every = np.arange(len(ds.user_id))

    def embed(dataset):
        with pipeline.live_histories(trained, dataset, every):
            return trained.query_embeddings(dataset.user_id[rows], dataset.timestamp[rows])

    def rotated(mask):
        titles = ds.features["title_index"].copy()
        titles[mask] = titles[mask] % (num_titles(ds) - 1) + 1
        return dataclasses.replace(ds, features={**ds.features, "title_index": titles})

    base = embed(ds)
    np.testing.assert_array_equal(embed(rotated(ds.timestamp >= cut)), base)
    assert not np.array_equal(embed(rotated(ds.timestamp < cut)), base)


def test_evaluate_reports_live_histories_and_restores_the_trained_ones(trained,
                                                                      synthetic_dataset,
                                                                      live_config):
    ds = synthetic_dataset
    before = trained.recipe
    report = pipeline.evaluate(trained, ds, live_config)
    assert trained.recipe is before
    assert "live_history" in report
    offline = pipeline.evaluate(trained, ds, live_config.replace(live_history=False))
    assert "live_history" not in offline
    assert report["retrieval"] != offline["retrieval"]


def test_history_index_before_is_the_brute_force(synthetic_dataset):
    ds = synthetic_dataset
    log = HistoryIndex.from_ratings(ds.user_id, ds.timestamp, ds.features["title_index"])
    rows = ds.split.test[:150]
    query, title = log.before(ds.user_id[rows], ds.timestamp[rows])
    for i, row in enumerate(rows):
        assert sorted(title[query == i].tolist()) == sorted(_before(ds, row))


def test_ease_live_is_x_b_of_the_earlier_ratings(synthetic_dataset):
    """Each query's scores are its user's ratings strictly before its second, as a binary row,
    times B (fails if the log were cut at the training split or at the query's own second)."""
    ds = synthetic_dataset
    train = Interactions.of(ds, ds.split.train)
    corpus = ds.corpus_features["title_index"]
    weights = ease_weights(gram(train), 100.0)
    ease = EaseScorer(weights, train.seen(corpus), corpus)
    log = HistoryIndex.from_ratings(ds.user_id, ds.timestamp, ds.features["title_index"])
    scorer = LiveEaseScorer(ease, log, ds.user_id, ds.timestamp)
    rows = ds.split.test[:80]
    got = scorer.corpus_scores(rows, ds.features["user_index"][rows])
    x = np.zeros((rows.size, weights.shape[0]), np.float32)
    for i, row in enumerate(rows):
        x[i, _before(ds, row)] = 1.0
    np.testing.assert_allclose(got, (x @ weights)[:, corpus], rtol=1e-5, atol=1e-6)
    offline = ease.corpus_scores(rows, ds.features["user_index"][rows])
    assert not np.allclose(got, offline)


def test_the_hybrid_keys_a_cold_users_live_history_under_the_id_it_asks_as(
        trained, synthetic_dataset, live_config):
    """Cold queries ask through the OOV row (an id no vocabulary holds) yet read their own
    earlier ratings: the scorer's queries equal the backend's of that id under a live index
    keyed alike, and differ from the OOV row with no history."""
    ds = synthetic_dataset
    events = hybrid.EventCounts.of(ds.timestamp, ds.features["title_index"], num_titles(ds))
    rows = np.unique(ds.split.test)[:40]
    known = ds.split.train[ds.features["user_index"][ds.split.train] % 4 != 0]
    every = np.arange(len(ds.user_id))
    args = hybrid.live_rows(ds, live_config, every, known, cold_as_oov=True)
    cold = ~hybrid.warm_rows(ds, rows, known)
    assert cold.any() and (~cold).any()
    with pipeline.live_histories(trained, ds, **args):
        scorer = hybrid.scorer_for(trained, ds, rows, events, None, 0.0, cold)
        asked = hybrid.asking_ids(ds.user_id[rows], cold)
        direct = trained.query_embeddings(asked, ds.timestamp[rows])
    np.testing.assert_allclose(scorer.queries, direct, rtol=1e-6, atol=1e-7)
    assert all(str(a).startswith(UNKNOWN_USER) for a in asked[cold])
    empty = trained.query_embeddings(asked[cold], ds.timestamp[rows[cold]])   # trained index
    assert not np.allclose(scorer.queries[cold], empty)
    assert hybrid.live_rows(ds, live_config.replace(live_history=False), every, known,
                            True) == {"rows": None}
