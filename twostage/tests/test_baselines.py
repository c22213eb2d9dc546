"""Baselines: EASE against the paper's formula on dense numpy, the popularity tie rule, random
against its expectation, lambda chosen on the training split only, the report rows."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twostage import baselines as bl
from twostage import evaluation as ev
from twostage import pipeline, report
from twostage.config import Config


# ---------------------------------------------------------------- EASE, closed form

# 4 users x 5 titles (title 0 is the OOV index: never rated); user 3 rated title 2 twice
USERS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3])
TITLES = np.array([1, 2, 3, 2, 4, 1, 3, 4, 2, 4, 2])


def dense_reference(lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Steck (2019), eq. 8-9, literally: X binary, P = (X^T X + lam I)^-1,
    B = I - P diagMat(1 / diag(P)). Returns (X, B) in float64."""
    x = np.zeros((4, 5))
    x[USERS, TITLES] = 1.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(5))
    b = np.eye(5) - p @ np.diag(1.0 / np.diag(p))
    return x, b


@pytest.mark.parametrize("lam", [0.5, 3.0, 50.0])
def test_ease_weights_equal_the_papers_formula(lam):
    inter = bl.Interactions(USERS, TITLES, num_titles=5)
    g = bl.gram(inter)
    x, b_ref = dense_reference(lam)
    np.testing.assert_array_equal(g, x.T @ x)          # binary: the repeat counts once
    b = bl.ease_weights(g, lam)
    assert b.dtype == np.float32 and np.all(np.diag(b) == 0)
    np.testing.assert_allclose(b, b_ref, rtol=1e-5, atol=1e-7)
    # scores on a corpus with a duplicated title (rows 1 and 4 are title 2)
    corpus = np.array([1, 2, 3, 4, 2])
    scorer = bl.EaseScorer(b, inter.seen(corpus), corpus)
    users = np.array([3, 0, 2, 0])
    np.testing.assert_allclose(scorer.corpus_scores(np.arange(4), users),
                               (x @ b_ref)[users][:, corpus], rtol=1e-5, atol=1e-6)


def test_gram_in_small_user_blocks_equals_the_whole():
    rng = np.random.default_rng(0)
    inter = bl.Interactions(rng.integers(0, 40, 500), rng.integers(0, 30, 500), num_titles=30)
    np.testing.assert_array_equal(bl.gram(inter, budget_bytes=4 * 30 * 3), bl.gram(inter))
    with pytest.raises(ValueError, match="lambda"):
        bl.ease_weights(bl.gram(inter), 0.0)


# ---------------------------------------------------------------- popularity and its ties

def test_tie_priority_more_ratings_first_then_smaller_index():
    np.testing.assert_array_equal(bl.tie_priority(np.array([0, 2, 5, 2, 1])), [4, 1, 0, 2, 3])


def score_queries(scorer, users, titles, corpus, priority, train_users=(), train_titles=()):
    queries = bl.Queries(rows=np.arange(len(users)), users=np.asarray(users),
                         titles=np.asarray(titles), positive=np.ones(len(users), bool))
    seen = ev.SeenTitles(np.asarray(train_users, int), np.asarray(train_titles, int), corpus)
    return bl.score(scorer, queries, seen, corpus, priority)


def test_popular_ties_are_broken_by_title_index_not_in_the_positives_favour():
    # titles 1 and 2 both have 3 ratings, title 3 has 1; title 2 is also corpus row 3
    popularity = np.array([0, 3, 3, 1])
    corpus = np.array([1, 2, 3, 2])
    counts = score_queries(bl.PopularScorer(popularity, corpus), [0, 0, 0], [1, 2, 3],
                           corpus, bl.tie_priority(popularity))
    # title 1 ranks first; title 2 (both rows) second: 1 row above it, not 0 (a favourable
    # tie) and not 2 (its own duplicate); title 3 under all three rows of titles 1 and 2
    np.testing.assert_array_equal(counts.greater, [0, 1, 3])


def test_popular_exclude_seen_through_the_same_code():
    popularity = np.array([0, 5, 4, 3, 2])
    corpus = np.array([1, 2, 3, 4])
    # user 0 rated titles 1 and 2 in training: for its query on title 4 they leave the ranking
    counts = score_queries(bl.PopularScorer(popularity, corpus), [0, 1], [4, 4], corpus,
                           bl.tie_priority(popularity), train_users=[0, 0], train_titles=[1, 2])
    np.testing.assert_array_equal(counts.greater, [3, 3])
    np.testing.assert_array_equal(counts.greater_unseen, [1, 3])


# ---------------------------------------------------------------- random

def test_random_expectation_by_hand():
    # 5 corpus rows, titles 1..4 with title 2 twice; user 0 rated title 4 in training
    corpus = np.array([1, 2, 3, 2, 4])
    seen = ev.SeenTitles([0], [4], corpus)
    queries = bl.Queries(rows=np.arange(2), users=np.array([0, 0]), titles=np.array([1, 2]),
                         positive=np.array([True, False]))
    cfg = Config.of(top_ks=(1, 2), ndcg_k=2, num_candidates=3)
    out = bl.random_expectation(queries, seen, corpus, cfg)
    # seed: R = 4 other rows for title 1, 3 for title 2 (its duplicate ties with it)
    assert out["top_k_accuracy"] == pytest.approx({"1": (1 / 5 + 1 / 4) / 2,
                                                   "2": (2 / 5 + 2 / 4) / 2})
    # exclude_seen: title 4's row leaves: R = 3 and 2
    assert out["top_k_accuracy_exclude_seen"] == pytest.approx({"1": (1 / 4 + 1 / 3) / 2,
                                                                "2": (2 / 4 + 2 / 3) / 2})
    # the positive query (title 1, R = 3 unseen): rank uniform over 1..4
    assert out["positives_exclude_seen"] == pytest.approx(
        {"ndcg@2": (1 + 1 / np.log2(3)) / 4, "hit@2": 2 / 4, "mrr": (1 + 1 / 2 + 1 / 3) / 4})


def test_random_expectation_equals_the_mean_of_random_orders(synthetic_dataset, small_config):
    """Monte Carlo through the shared scoring loop: uniform scores per corpus row, the true
    title's rows tied with it, then the same exclusions."""
    ds, cfg = synthetic_dataset, small_config
    train = bl.Interactions.of(ds, ds.split.train)
    corpus = ds.corpus_features["title_index"]
    seen = train.seen(corpus)
    queries = bl.Queries.of(ds, ds.split.test)
    expected = bl.random_expectation(queries, seen, corpus, cfg)
    rng = np.random.default_rng(0)
    own = corpus[None, :] == queries.titles[:, None]
    draws = []
    for _ in range(40):
        scores = rng.random((queries.rows.size, corpus.size)).astype(np.float32)
        positive = rng.random(queries.rows.size).astype(np.float32)
        scores = np.where(own, positive[:, None], scores)   # the truth's rows tie together

        def block(a, b, s=scores, p=positive):
            return s[a:b], p[a:b]
        counts = ev.count_higher(block, queries.rows.size, 10 ** 6,
                                 exclude=seen.for_queries(queries.users, queries.titles))
        draws.append([np.mean(g < 10) for g in (counts.greater, counts.greater_unseen)])
    mean = np.mean(draws, axis=0)
    se = np.std(draws, axis=0) / np.sqrt(len(draws))
    assert abs(mean[0] - expected["top_k_accuracy"]["10"]) < 4 * se[0] + 1e-9
    assert abs(mean[1] - expected["top_k_accuracy_exclude_seen"]["10"]) < 4 * se[1] + 1e-9
    assert expected["top_k_accuracy_exclude_seen"]["10"] > expected["top_k_accuracy"]["10"]


# ---------------------------------------------------------------- lambda on validation only

def test_validation_slice_comes_from_the_training_split(synthetic_dataset, small_config):
    ds = synthetic_dataset
    fit, val = bl.validation_split(ds, small_config)
    train = set(ds.split.train.tolist())
    assert set(fit.tolist()) | set(val.tolist()) == train and not set(fit) & set(val)
    assert len(val) == round(bl.VALIDATION_FRACTION * len(train))
    fit_t, val_t = bl.validation_split(ds, small_config.replace(split="temporal"))
    assert ds.timestamp[val_t].min() >= ds.timestamp[fit_t].max()


@pytest.fixture(scope="module")
def larger(tmp_path_factory, small_config):
    """300 users, 200 titles: enough that top-1 validation accuracy moves with the data."""
    from twostage.dataset import synthetic_dataset
    return synthetic_dataset(tmp_path_factory.mktemp("larger"), small_config, num_users=300,
                             num_movies=200, num_ratings=8000, seed=7)


def with_other_test_rows(ds):
    """The same training split; every test rating moved to a random user and title."""
    rng = np.random.default_rng(0)
    test = ds.split.test
    features = dict(ds.features)
    for key in ("user_index", "title_index"):
        column = features[key].copy()
        column[test] = rng.choice(np.unique(column), len(test))
        features[key] = column
    return dataclasses.replace(ds, features=features)


def test_lambda_is_chosen_without_the_test_split(larger, small_config, monkeypatch):
    ds, cfg = larger, small_config.replace(ndcg_k=1)   # top-1: the most sensitive figure
    grid = (1.0, 10.0, 100.0, 1000.0)
    chosen = bl.select_lambda(ds, cfg, lambdas=grid, first=10.0)
    assert chosen["lambda"] in grid and len(chosen["scores"]) >= 2
    assert chosen["num_fit_ratings"] + round(0.1 * len(ds.split.train)) == len(ds.split.train)
    # other test ratings: the validation scores and the choice must not move at all
    assert bl.select_lambda(with_other_test_rows(ds), cfg, lambdas=grid, first=10.0) == chosen
    # ... and they would if test rows leaked into the fit (the check can fail)
    real_split = bl.validation_split

    def leaky(dataset, config):
        fit, val = real_split(dataset, config)
        return np.concatenate([fit, dataset.split.test]), val
    monkeypatch.setattr(bl, "validation_split", leaky)
    assert (bl.select_lambda(with_other_test_rows(ds), cfg, lambdas=grid, first=10.0)["scores"]
            != bl.select_lambda(ds, cfg, lambdas=grid, first=10.0)["scores"])


def test_the_search_stops_at_a_local_maximum_of_the_full_grid(larger, small_config):
    ds, cfg = larger, small_config.replace(ndcg_k=1)
    grid = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    curve = {f"{lam:g}": bl.select_lambda(ds, cfg, lambdas=(lam,), first=lam)["scores"][f"{lam:g}"]
             for lam in grid}
    assert len(set(curve.values())) > 1                # the curve is not flat here
    walked = bl.select_lambda(ds, cfg, lambdas=grid, first=10000.0)
    assert all(curve[lam] == acc for lam, acc in walked["scores"].items())
    i = grid.index(walked["lambda"])
    for j in (i - 1, i + 1):
        if 0 <= j < len(grid):
            assert curve[f"{grid[j]:g}"] <= curve[f"{grid[i]:g}"]


# ---------------------------------------------------------------- the report

def test_evaluate_baselines_report(synthetic_dataset, small_config):
    ds, cfg = synthetic_dataset, small_config
    out = bl.evaluate_baselines(ds, cfg)
    assert set(out["models"]) == {"random", "popular", "ease", "recent"}
    n = len(ds.split.test)
    assert out["num_queries"] == n
    for name, entry in out["models"].items():
        for key in ("top_k_accuracy", "top_k_accuracy_exclude_seen"):
            acc = entry[key]
            assert list(acc) == [str(k) for k in cfg.eval.top_ks]
            assert all(a <= b for a, b in zip(list(acc.values()), list(acc.values())[1:]))
            for k, p in acc.items():
                assert entry["standard_error"][key][k] == pytest.approx(ev.standard_error(p, n))
        assert set(entry["positives_exclude_seen"]) == {"ndcg@10", "hit@10", "mrr"}
    assert out["models"]["ease"]["lambda"] == out["models"]["ease"]["validation"]["lambda"]
    sampled = bl.evaluate_baselines(ds, cfg.replace(eval_queries=100), names=("popular",))
    assert sampled["num_queries"] == 100


def test_above_its_size_limit_ease_models_the_most_popular_titles(synthetic_dataset,
                                                                   small_config, monkeypatch):
    """Over EASE_MAX_ITEMS titles, B covers the most popular ones; every other title scores
    just below the user's lowest modelled score, so popularity orders them (ties broken by
    the shared tie order), and the report says what was modelled."""
    monkeypatch.setattr(bl, "EASE_MAX_ITEMS", 10)
    monkeypatch.setattr(bl, "EASE_MAX_TITLES", 5)            # the float32 path too
    out = bl.evaluate_baselines(synthetic_dataset, small_config, names=("popular", "ease"))
    ease = out["models"]["ease"]
    assert "the 10 most popular of" in ease["restricted_to"]
    for figures in (ease["top_k_accuracy"], ease["top_k_accuracy_exclude_seen"]):
        assert all(0 <= v <= 1 for v in figures.values())
    train = bl.Interactions.of(synthetic_dataset, synthetic_dataset.split.train)
    popularity = train.popularity()
    columns = bl.EaseColumns.of(popularity)
    assert columns.size == 10 and columns.restricted
    assert set(np.flatnonzero(columns.column >= 0)) == set(
        np.argsort(bl.tie_priority(popularity))[:10])
    corpus = synthetic_dataset.corpus_features["title_index"]
    weights = bl.ease_weights(bl.gram(columns.interactions(train)), 100.0)
    scores = bl.EaseScorer(weights, train.seen(corpus), corpus, columns).corpus_scores(
        np.arange(3), train.users[:3])
    outside = columns.column[corpus] < 0
    assert (scores[:, outside] < scores[:, ~outside].min(axis=1, keepdims=True)).all()
    assert (scores[:, outside] == scores[:, outside][:, :1]).all()   # tied: popularity decides


def test_ease_in_float32_agrees_with_float64(synthetic_dataset, monkeypatch):
    train = bl.Interactions.of(synthetic_dataset, synthetic_dataset.split.train)
    g = bl.gram(train)
    exact = bl.ease_weights(g, 30.0)
    monkeypatch.setattr(bl, "EASE_MAX_TITLES", 5)
    np.testing.assert_allclose(bl.ease_weights(g, 30.0), exact, atol=1e-5)
    assert bl.EaseColumns.of(train.popularity()).restricted is False   # 50 <= EASE_MAX_ITEMS


def test_comparison_ratio_and_difference():
    model = {"retrieval": {"top_k_accuracy": {"10": 0.06}, "top_k_accuracy_exclude_seen":
                           {"10": 0.09}},
             "two_stage": {"ndcg@10_reranked": 0.02}, "two_stage_exclude_seen":
             {"ndcg@10_reranked": 0.04}}
    base = {"models": {"popular": {"top_k_accuracy": {"10": 0.05},
                                   "top_k_accuracy_exclude_seen": {"10": 0.0},
                                   "positives": {"ndcg@10": 0.04},
                                   "positives_exclude_seen": {"ndcg@10": 0.08}}}}
    versus = pipeline.compare_to_baselines(model, base)["popular"]
    assert versus["seed"]["top_k_accuracy.10"] == pytest.approx(
        {"model": 0.06, "baseline": 0.05, "difference": 0.01, "ratio": 1.2})
    assert versus["seed"]["ndcg@10"] == pytest.approx(
        {"model": 0.02, "baseline": 0.04, "difference": -0.02, "ratio": 0.5})
    assert "ratio" not in versus["exclude_seen"]["top_k_accuracy.10"]   # baseline scored 0
    text = report.comparison_table({"torch": {**model, "vs_baselines": {"popular": versus}}})
    assert "| torch vs most-popular | seed | x1.20 (+0.0100) | x0.50 (-0.0200) |" in text
    assert "| torch vs most-popular | exclude_seen | x∞ (+0.0900) | x0.50 (-0.0400) |" in text


def test_results_markdown_states_the_sample_and_the_errors():
    model = {"retrieval": {"top_k_accuracy": {"10": 0.06}, "top_k_accuracy_exclude_seen":
                           {"10": 0.09},
                           "standard_error": {"top_k_accuracy_exclude_seen": {"10": 0.0064}}},
             "eval_sample": {"num_queries": 2000, "num_test_rows": 20000, "sampled": True,
                             "eval_queries": 2000, "seed": 42, "exclude_seen": "by title"}}
    text = report.results_markdown({"torch": model})
    assert "| exclude_seen | top-10 | 0.0900 ± 0.0064 |" in text
    assert "Evaluated 2000 of 20000 test ratings (a seeded sample (eval_queries=2000" in text


# ---------------------------------------------------------------- recent-popular, audiences

def test_event_counts_are_causal_and_windowed():
    """EventCounts.before(t) counts ratings strictly before t, against a brute-force count
    (fails if ``before`` searched with side="right": events at t would count; or if a
    checkpoint's remainder were dropped: stride 3 leaves remainders)."""
    rng = np.random.default_rng(0)
    times, titles = rng.integers(0, 50, 200), rng.integers(0, 6, 200)
    counts = bl.EventCounts.of(times, titles, 6, budget_bytes=4 * 6 * 80)
    assert counts.stride > 1
    when = np.array([0, 1, 17, 25, 49, 50, 51])
    brute = np.array([np.bincount(titles[times < t], minlength=6) for t in when])
    np.testing.assert_array_equal(counts.before(when), brute)
    recent = np.array([np.bincount(titles[(times < t) & (times >= t - 10)], minlength=6)
                       for t in when])
    np.testing.assert_array_equal(counts.window(when, 10), recent)


def test_recent_popular_never_reads_the_query_time_or_later(synthetic_dataset, small_config):
    """A query's scores are its title counts before its own time: moving every rating at or
    after it does not change them (fails if the scorer counted the whole log)."""
    ds = synthetic_dataset
    titles = ds.features["title_index"]
    events = bl.EventCounts.of(ds.timestamp, titles, int(titles.max()) + 1)
    corpus = ds.corpus_features["title_index"]
    row = int(np.argsort(ds.timestamp)[len(ds.timestamp) // 2])
    scorer = bl.RecentScorer(events, None, ds.timestamp, corpus)
    past = ds.timestamp < ds.timestamp[row]
    only_past = bl.EventCounts.of(ds.timestamp[past], titles[past], int(titles.max()) + 1)
    np.testing.assert_array_equal(
        scorer.corpus_scores(np.array([row]), np.array([0])),
        bl.RecentScorer(only_past, None, ds.timestamp, corpus).corpus_scores(
            np.array([row]), np.array([0])))


def test_recent_window_is_chosen_on_the_training_split(synthetic_dataset, small_config):
    """select_window reads the training split only: the same choice and scores with the test
    ratings' titles scrambled (fails if its event log included the test split)."""
    cfg = small_config.replace(split="temporal")
    ds = _temporal(synthetic_dataset)
    chosen = bl.select_window(ds, cfg)
    assert set(chosen["scores"]) == {bl._window_label(d) for d in bl.RECENT_WINDOWS_DAYS}
    assert chosen["scores"][bl._window_label(chosen["window_days"])] == max(
        chosen["scores"].values())
    features = dict(ds.features)
    scrambled = features["title_index"].copy()
    scrambled[ds.split.test] = np.random.default_rng(1).permutation(scrambled[ds.split.test])
    features["title_index"] = scrambled
    assert bl.select_window(dataclasses.replace(ds, features=features), cfg) == chosen


def _temporal(ds):
    """``ds`` with 8 users and 2 titles rated only late (cold users, new titles), split by
    time."""
    from twostage.data.split import temporal_split
    late_user = np.isin(ds.features["user_index"], np.unique(ds.features["user_index"])[:8])
    new_title = np.isin(ds.features["title_index"], np.unique(ds.features["title_index"])[:2])
    stamps = ds.timestamp + (late_user + 2 * new_title) * (np.ptp(ds.timestamp) + 1)
    return dataclasses.replace(ds, timestamp=stamps,
                               split=temporal_split(stamps, train_fraction=0.8))


def test_audience_figures_equal_the_figures_of_their_rows(synthetic_dataset, small_config):
    """Each baseline's ``by_audience`` entry equals evaluate_baselines on that audience's rows
    alone, and warm + cold cover every query (fails if the audience masks were taken in the
    test split's order while the queries are sorted by user)."""
    ds = _temporal(synthetic_dataset)
    cfg = small_config.replace(split="temporal")
    out = bl.evaluate_baselines(ds, cfg)
    rows = ds.split.test
    masks = pipeline.seen_titles(ds).audiences(ds.features["user_index"][rows],
                                               ds.features["title_index"][rows])
    assert masks["cold"].any() and masks["warm"].any() and masks["new_title"].any()
    for name, mask in masks.items():
        if not mask.any():
            continue
        alone = bl.evaluate_baselines(ds, cfg, rows=rows[mask])["models"]
        for baseline, entry in out["models"].items():
            part = entry["by_audience"][name]
            assert part["num_queries"] == int(mask.sum())
            for key in ("top_k_accuracy", "top_k_accuracy_exclude_seen",
                        "positives_exclude_seen"):
                assert part[key] == pytest.approx(alone[baseline][key]), (baseline, name, key)
