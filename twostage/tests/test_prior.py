"""The popularity prior at inference (score + beta * log q), on both backends: the evaluation
against a brute-force count of the augmented scores, beta 0 leaves every figure alone, a large
beta ranks by popularity, and beta is chosen without reading the test split."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twostage import evaluation as ev
from twostage import pipeline
from twostage.baselines import num_titles
from twostage.prior import PriorBackend, log_prior


@pytest.fixture(scope="module", params=["torch", "tfrs"])
def trained(request, synthetic_dataset, small_config):
    backend = pipeline.make_backend(request.param, small_config, synthetic_dataset)
    backend.fit_retrieval(synthetic_dataset, epochs=1)
    backend.fit_ranking(synthetic_dataset, epochs=1)
    return backend


def prior_of(ds) -> np.ndarray:
    return log_prior(ds.features["title_index"][ds.split.train], num_titles(ds))


def test_log_prior_is_the_smoothed_training_share():
    """(n + 1) / (N + T) by hand (fails without the add-one smoothing: log 0 = -inf)."""
    np.testing.assert_allclose(np.exp(log_prior(np.array([1, 1, 2]), 4)),
                               [1 / 7, 3 / 7, 2 / 7, 1 / 7], rtol=1e-6)


def test_prior_scores_and_top_k_equal_a_brute_force_count(trained, synthetic_dataset,
                                                          small_config):
    """With beta = 0.5, every top-k accuracy of the pipeline (both protocols) equals the shared
    count over [q, 1] . [c, beta log q(title)] built here from the model's own embeddings
    (fails if the prior column were dropped, mis-signed or taken from another title)."""
    ds, beta = synthetic_dataset, 0.5
    report = pipeline.evaluate(trained, ds, small_config.replace(prior_beta=beta))
    rows = ds.split.test
    prior = beta * prior_of(ds)

    def augmented(embeddings: np.ndarray, column: np.ndarray) -> np.ndarray:
        return np.hstack([embeddings, column[:, None].astype(np.float32)])

    queries = trained.query_embeddings(ds.user_id[rows], ds.timestamp[rows])
    counted = ev.count_scoring_higher(
        augmented(queries, np.ones(len(rows))),
        augmented(trained.candidate_embeddings(ds.movie_title[rows]),
                  prior[ds.features["title_index"][rows]]),
        augmented(trained.candidate_embeddings(ds.corpus_titles),
                  prior[ds.corpus_features["title_index"]]),
        exclude=pipeline.exclusions(ds, rows))
    for name, greater in (("top_k_accuracy", counted.greater),
                          ("top_k_accuracy_exclude_seen", counted.greater_unseen)):
        hits = ev.hits_at_k(greater, counted.finite, small_config.eval.top_ks)
        assert report["retrieval"][name] == {
            str(k): h / len(rows) for k, h in zip(small_config.eval.top_ks, hits)}
    assert report["popularity_prior"]["beta"] == beta
    assert report["retrieval"]["top_k_accuracy_exclude_seen"] != pipeline.evaluate(
        trained, ds, small_config)["retrieval"]["top_k_accuracy_exclude_seen"]


def test_beta_zero_is_the_model_itself(trained, synthetic_dataset, small_config):
    """prior_beta 0 evaluates the backend itself (fails if the wrapper were always applied:
    its exact top-k would replace the backend's index)."""
    assert pipeline.with_prior(trained, synthetic_dataset, 0.0) is trained
    assert "popularity_prior" not in pipeline.evaluate(trained, synthetic_dataset, small_config)


def test_a_large_beta_ranks_by_training_popularity(trained, synthetic_dataset):
    """beta = 1e4 swamps the model: every query's first retrieved title is the most rated
    in training (fails if the prior were added with the wrong sign)."""
    ds = synthetic_dataset
    prior = PriorBackend(trained, ds.corpus_titles, ds.corpus_features["title_index"],
                         prior_of(ds), 1e4)
    prior.build_index(ds.corpus_titles)
    _, rows = prior.retrieve(ds.user_id[:20], ds.timestamp[:20], 3)
    popular = np.argmax(prior_of(ds))
    assert (ds.corpus_features["title_index"][rows[:, 0]] == popular).all()


def test_beta_is_chosen_on_the_training_split_only(synthetic_dataset, small_config):
    """select_prior_beta gives the same choice and scores when the test ratings' titles are
    scrambled (fails if it trained or validated on the test split)."""
    cfg = small_config.replace(retrieval_epochs=1)
    chosen = pipeline.select_prior_beta("torch", synthetic_dataset, cfg)
    assert chosen["scores"][f"{chosen['beta']:g}"] == max(chosen["scores"].values())
    ds = synthetic_dataset
    features = dict(ds.features)
    scrambled = features["title_index"].copy()
    scrambled[ds.split.test] = np.random.default_rng(3).permutation(scrambled[ds.split.test])
    features["title_index"] = scrambled
    again = pipeline.select_prior_beta("torch", dataclasses.replace(ds, features=features), cfg)
    assert again == chosen
