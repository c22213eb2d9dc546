"""Model + recent popularity (twostage.hybrid): the scores against a brute-force count of the
log, beta 0 is the model's own ranking, and beta and the window are chosen without reading the
test split."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from parity_tests.tolerances import cross_kernel_dot_atol
from twostage import hybrid, pipeline
from twostage.baselines import DAY_S, EventCounts, num_titles
from twostage.data.split import Split
from twostage.prior import UNKNOWN_USER


@pytest.fixture(scope="module", params=["torch", "tfrs"])
def trained(request, synthetic_dataset, small_config):
    backend = pipeline.make_backend(request.param, small_config, synthetic_dataset)
    backend.fit_retrieval(synthetic_dataset, epochs=1)
    backend.build_index(synthetic_dataset.corpus_titles)
    return backend


def test_scores_are_the_model_plus_beta_log1p_of_the_window_counts(trained, synthetic_dataset):
    """Each score is q . c + beta * log(1 + ratings of the title in [t - window, t)) over the
    whole log, counted here by brute force. Fails if the window took the query's own second
    (not causal), the counts came from another title, or beta were not applied."""
    ds, beta = synthetic_dataset, 0.7
    span = int(ds.timestamp.max() - ds.timestamp.min())
    days = max(span // 3, DAY_S) / DAY_S
    events = EventCounts.of(ds.timestamp, ds.features["title_index"], num_titles(ds))
    rows = ds.split.test[:40]
    scorer = hybrid.scorer_for(trained, ds, rows, events, days, beta)
    got = scorer.corpus_scores(rows, ds.features["user_index"][rows])
    q = trained.query_embeddings(ds.user_id[rows], ds.timestamp[rows])
    c = trained.candidate_embeddings(ds.corpus_titles)
    titles, times = ds.features["title_index"], ds.timestamp
    for i, r in enumerate(rows):
        t = times[r]
        inside = (times < t) & (times >= t - int(days * DAY_S))
        counts = np.bincount(titles[inside], minlength=num_titles(ds))
        want = q[i] @ c.T + beta * np.log1p(counts[ds.corpus_features["title_index"]])
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    corpus = ds.corpus_features["title_index"]
    dup = [np.nonzero(corpus == t)[0] for t in np.unique(corpus) if (corpus == t).sum() > 1]
    assert dup                                  # the synthetic corpus holds a duplicated title
    for same in dup:    # one score per title, whatever the kernel rounds in a product column
        assert (got[:, same] == got[:, same[:1]]).all()


def test_beta_zero_counts_the_models_scores_by_the_baselines_rule(trained, synthetic_dataset,
                                                                   small_config):
    """beta 0: exclude_seen top-k accuracy is a brute-force count of the model's q . c with the
    baselines' rule (the positive is its title's corpus row of the same product; the user's
    training titles leave the ranking, the true title stays). Fails if the scorer dropped the
    model, or the exclusions. (The models' own report follows TFRS instead: the positive's dot
    product against the corpus' products, so its own row may round above it.)"""
    ds = synthetic_dataset
    rows = np.unique(ds.split.test)   # the scorer's order: its embedding batches are these
    got = hybrid.evaluate(trained, ds, small_config, 0.0, 0.0, None, rows=rows)
    q = trained.query_embeddings(ds.user_id[rows], ds.timestamp[rows])
    c = trained.candidate_embeddings(ds.corpus_titles)
    s = q @ c.T
    # the scorer multiplies in blocks: another kernel may round a near-tie the other way, so
    # each query's count is bracketed by the scores within the cross-kernel bound of it
    atol = cross_kernel_dot_atol(np.abs(q), np.abs(c))[:, 0]
    corpus, titles = ds.corpus_features["title_index"], ds.features["title_index"]
    users = ds.features["user_index"]
    train = ds.split.train
    surely, maybe = [], []
    for i, r in enumerate(rows):
        pos = s[i, np.nonzero(corpus == titles[r])[0][0]]
        kept = ~(np.isin(corpus, titles[train][users[train] == users[r]])
                 & (corpus != titles[r])) & (corpus != titles[r])
        surely.append(int(((s[i] > pos + 2 * atol[i]) & kept).sum()))
        maybe.append(int(((s[i] > pos - 2 * atol[i]) & kept).sum()))
    for k, value in got["top_k_accuracy_exclude_seen"].items():
        assert np.mean(np.array(maybe) < int(k)) <= value <= np.mean(np.array(surely) < int(k))
    assert np.mean(np.array(surely) != np.array(maybe)) < 0.05     # near-ties are rare
    assert got["beta_warm"] == got["beta_cold"] == 0.0
    assert set(got["by_audience"]) == {"warm", "cold", "new_title"}


def test_each_audience_gets_its_own_beta(trained, synthetic_dataset):
    """``with_betas``: a query whose user has a training rating gets beta_warm, any other
    beta_cold (fails if the betas were swapped or one applied to all)."""
    ds = synthetic_dataset
    events = EventCounts.of(ds.timestamp, ds.features["title_index"], num_titles(ds))
    rows = np.unique(ds.split.test)
    known = ds.split.train[np.isin(ds.features["user_index"][ds.split.train],
                                   ds.features["user_index"][rows[:30]])]
    warm = hybrid.warm_rows(ds, rows, known)
    assert warm.any() and not warm.all()
    scorer = hybrid.scorer_for(trained, ds, rows, events, None, 0.0).with_betas(warm, 0.0, 3.0)
    plain = hybrid.scorer_for(trained, ds, rows, events, None, 0.0)
    counts = events.before(ds.timestamp[rows])[:, ds.corpus_features["title_index"]]
    users = ds.features["user_index"][rows]
    got, model = scorer.corpus_scores(rows, users), plain.corpus_scores(rows, users)
    np.testing.assert_array_equal(got[warm], model[warm])
    np.testing.assert_allclose(got[~warm], model[~warm] + 3.0 * np.log1p(counts[~warm]),
                               rtol=1e-5, atol=1e-5)


def test_a_large_beta_ranks_by_recent_counts(trained, synthetic_dataset, small_config):
    """beta 1e4 with all-time counts: a title rated more often before the query always ranks
    above one rated less often, whatever the model says (fails if the counts were unused)."""
    ds = synthetic_dataset
    events = EventCounts.of(ds.timestamp, ds.features["title_index"], num_titles(ds))
    rows = ds.split.test[:20]
    scorer = hybrid.scorer_for(trained, ds, rows, events, None, 1e4)
    scores = scorer.corpus_scores(rows, ds.features["user_index"][rows])
    counts = events.before(ds.timestamp[rows])[:, ds.corpus_features["title_index"]]
    for s, n in zip(scores, counts):
        hi, lo = np.nonzero(n[:, None] > n[None, :])
        assert np.all(s[hi] > s[lo])


def test_beta_and_window_are_chosen_without_the_test_split(synthetic_dataset, small_config):
    """The choice is the same when every test rating's title is replaced by another (fails if
    the validation read the test split); the grid is scored in full."""
    ds = synthetic_dataset
    chosen = hybrid.select("torch", ds, small_config, betas=(0.0, 1.0), windows=(7, None))
    titles = ds.movie_title.copy()
    test = ds.split.test
    titles[test] = np.roll(titles[test], 1)
    features = {**ds.features,
                "title_index": ds.features["title_index"].copy()}
    features["title_index"][test] = np.roll(features["title_index"][test], 1)
    poisoned = dataclasses.replace(ds, movie_title=titles, features=features,
                                   split=Split(train=ds.split.train, test=test))
    assert hybrid.select("torch", poisoned, small_config, betas=(0.0, 1.0),
                         windows=(7, None)) == chosen
    for audience in ("warm", "cold"):
        assert set(chosen["scores"][audience]) == {"all/0", "all/1", "7d/0", "7d/1"}
        assert chosen[f"beta_{audience}"] in (0.0, 1.0)
    assert chosen["window_days"] in (7, None)


def test_cold_queries_can_ask_through_the_oov_row(trained, synthetic_dataset):
    """``oov``: the marked queries are the backend's query of an unknown user (its OOV row,
    the one user-id dropout trains), the others their own (fails if the mask were ignored or
    inverted)."""
    ds = synthetic_dataset
    events = EventCounts.of(ds.timestamp, ds.features["title_index"], num_titles(ds))
    rows = np.unique(ds.split.test)[:30]
    oov = np.arange(rows.size) % 3 == 0
    scorer = hybrid.scorer_for(trained, ds, rows, events, None, 0.0, oov)
    unknown = trained.query_embeddings(np.full(int(oov.sum()), UNKNOWN_USER, object),
                                       ds.timestamp[rows[oov]])
    own = trained.query_embeddings(ds.user_id[rows[~oov]], ds.timestamp[rows[~oov]])
    np.testing.assert_allclose(scorer.queries[oov], unknown, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scorer.queries[~oov], own, rtol=1e-6, atol=1e-7)
    assert not np.allclose(scorer.queries[oov],
                           trained.query_embeddings(ds.user_id[rows[oov]], ds.timestamp[rows[oov]]))
