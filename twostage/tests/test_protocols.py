"""The exclude_seen protocol, standard errors and the eval_queries sample, against literal
references (hand cases and brute force on small random data)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twostage import evaluation as ev

from parity_tests import tolerances as tol
from parity_tests.tolerances import assert_top_k_close

F32 = np.float32


# ---------------------------------------------------------------- exclusions, by hand

def hand_seen() -> ev.SeenTitles:
    # corpus rows 0..4 hold titles 1, 2, 3, 2, 4 (rows 1 and 3: a duplicated title)
    # training: user 0 rated titles 2 and 4 (4 twice); user 1 rated title 1; user 2 nothing
    return ev.SeenTitles(users=[0, 0, 1, 0], titles=[2, 4, 1, 4],
                         corpus_titles=[1, 2, 3, 2, 4])


def rows_of(ex: ev.Exclusions) -> list[list[int]]:
    return [sorted(ex.cols[ex.indptr[i]:ex.indptr[i + 1]].tolist())
            for i in range(ex.num_queries)]


def test_exclusion_is_by_title_keeps_the_own_title_and_ignores_unknown_users():
    seen = hand_seen()
    ex = seen.exclusions(users=[0, 0, 1, 2, 7], truth_titles=[3, 2, 1, 3, 1])
    # user 0, truth 3: both rows of title 2 (1 and 3) and title 4's row 4
    # user 0, truth 2: its own title stays, only title 4 goes
    # user 1, truth 1: its own (only) title stays: nothing excluded
    # user 2 and an id never seen in training: nothing
    assert rows_of(ex) == [[1, 3, 4], [4], [], [], []]
    np.testing.assert_array_equal(ex.counts(), [3, 1, 0, 0, 0])
    assert rows_of(ex.slice(1, 3)) == [[4], []]
    assert rows_of(ex.take(np.array([0, 0, 4]))) == [[1, 3, 4], [1, 3, 4], []]
    lazy = seen.for_queries([0, 0, 1, 2, 7], [3, 2, 1, 3, 1])
    assert lazy.num_queries == 5 and rows_of(lazy.slice(0, 2)) == [[1, 3, 4], [4]]


def test_contains_and_drop_excluded_keep_order_and_pad():
    ex = hand_seen().exclusions(users=[0, 1], truth_titles=[3, 1])
    rows = np.array([[4, 0, 3, 2, 1], [-1, 0, 1, 2, 3]])
    np.testing.assert_array_equal(ex.contains(rows), [[1, 0, 1, 0, 1], [0, 0, 0, 0, 0]])
    scores = np.array([[5, 4, 3, 2, 1], [9, 8, 7, 6, 5]], F32)
    s, r = ev.drop_excluded(scores, rows, ex, k=3)
    # query 0: rows 0 and 2 remain, the third slot is padding (-1, -inf)
    np.testing.assert_array_equal(r, [[0, 2, -1], [-1, 0, 1]])
    np.testing.assert_array_equal(s, [[4, 2, -np.inf], [9, 8, 7]])


def test_count_higher_drops_only_the_excluded_rows():
    # scores of 2 queries over the 5 corpus rows; positive = score of the true title's row
    scores = np.array([[1, 5, 2, 5, 9], [3, 1, 2, 1, 0]], F32)
    positive = np.array([2, 3], F32)          # query 0: title 3 (row 2); query 1: title 1
    ex = hand_seen().exclusions(users=[0, 1], truth_titles=[3, 1])

    def block(a, b):
        return scores[a:b], positive[a:b]
    counts = ev.count_higher(block, 2, rows_per_block=1, exclude=ex)
    np.testing.assert_array_equal(counts.greater, [3, 0])       # 5, 5, 9 above 2
    np.testing.assert_array_equal(counts.greater_unseen, [0, 0])  # all three are seen
    assert counts.finite.all()


def test_priority_breaks_ties_for_baselines_but_never_against_the_own_title():
    scores = np.array([[4, 4, 4, 4]], F32)     # everything ties
    prio = np.array([2, 0, 1, 0])               # columns 1 and 3: the positive's own title

    def block(a, b):
        return scores[a:b], np.array([4], F32)
    plain = ev.count_higher(block, 1, 1)
    ranked = ev.count_higher(block, 1, 1, column_priority=prio, positive_priority=[1])
    assert plain.greater[0] == 0                # TFRS: ties in the positive's favour
    assert ranked.greater[0] == 2               # priorities 0 (twice) rank first
    assert ev.count_higher(block, 1, 1, column_priority=prio,
                           positive_priority=[0]).greater[0] == 0


# ---------------------------------------------------------------- brute force, random data

def random_problem(seed: int, n: int = 300, m: int = 60, titles: int = 45, users: int = 25):
    rng = np.random.default_rng(seed)
    corpus_titles = rng.integers(1, titles, m)              # duplicates on purpose
    train_users = rng.integers(0, users, 400)
    train_titles = corpus_titles[rng.integers(0, m, 400)]
    q_users = rng.integers(0, users + 3, n)                 # some never trained
    truth_rows = rng.integers(0, m, n)
    # embeddings per TITLE (duplicates share them), as the candidate tower does
    title_emb = rng.normal(size=(titles, 8)).astype(F32)
    corpus = title_emb[corpus_titles]
    q = rng.normal(size=(n, 8)).astype(F32)
    truth_titles = corpus_titles[truth_rows]
    return (corpus_titles, train_users, train_titles, q_users, truth_titles, q,
            title_emb[truth_titles], corpus)


def metric_scores(q, corpus, pos):
    """``q @ corpus.T`` as the metric compares it: near-ties of the positive settled by the
    FMA chain (bitwise the same on every CPU and chunk; ``ev.settle_near_ties``)."""
    return ev.settle_near_ties(q @ corpus.T, pos, q, corpus, ev.cross_kernel_margin(q, corpus))


def brute_force_unseen(corpus_titles, train_users, train_titles, q_users, truth_titles, q,
                       truth, corpus) -> np.ndarray:
    """One query at a time, with Python sets: the definition of exclude_seen."""
    seen: dict[int, set] = {}
    for u, t in zip(train_users.tolist(), train_titles.tolist()):
        seen.setdefault(u, set()).add(t)
    pos = ev.positive_scores(q, truth)
    scores = metric_scores(q, corpus, pos)
    out = []
    for i in range(len(q)):
        drop = seen.get(int(q_users[i]), set()) - {int(truth_titles[i])}
        keep = np.array([t not in drop for t in corpus_titles.tolist()])
        out.append(int(np.count_nonzero(scores[i][keep] > pos[i])))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_exclusion_equals_brute_force(seed):
    """Chunked exclude_seen counts against a one-query-at-a-time set definition. Broken on purpose,
    it fails: excluding the query's own title, or only the rated row of a duplicated title."""
    (corpus_titles, tu, tt, qu, truth_titles, q, truth, corpus) = random_problem(seed)
    seen = ev.SeenTitles(tu, tt, corpus_titles)
    expected = brute_force_unseen(corpus_titles, tu, tt, qu, truth_titles, q, truth, corpus)
    for budget in (4 * 60 * 7, ev.DEFAULT_CHUNK_BYTES):        # 7-row blocks, one block
        counts = ev.count_scoring_higher(q, truth, corpus,
                                         exclude=seen.for_queries(qu, truth_titles),
                                         budget_bytes=budget)
        np.testing.assert_array_equal(counts.greater_unseen, expected)
        greater, _ = ev.num_scoring_higher(q, truth, corpus)
        np.testing.assert_array_equal(counts.greater, greater)  # seed protocol unchanged
    assert (counts.greater_unseen < counts.greater).any()       # exclusion did something


def test_exclusion_by_row_would_differ_from_by_title():
    """The rule matters: excluding only the rated ROW leaves its duplicate in the ranking."""
    corpus_titles = np.array([1, 2, 2, 3])
    seen = ev.SeenTitles([0], [2], corpus_titles)
    ex = seen.exclusions([0], [3])
    assert rows_of(ex) == [[1, 2]]              # both rows of title 2, not just one


def test_drop_excluded_equals_a_filtered_full_ranking():
    (corpus_titles, tu, tt, qu, truth_titles, q, truth, corpus) = random_problem(5)
    ex = ev.SeenTitles(tu, tt, corpus_titles).exclusions(qu, truth_titles)
    scores = q @ corpus.T
    order = np.argsort(-scores, axis=1, kind="stable")
    k = 10
    extra = int(ex.counts().max())
    s, r = ev.drop_excluded(np.take_along_axis(scores, order[:, :k + extra], 1),
                            order[:, :k + extra], ex, k)
    for i in range(len(q)):
        dropped = set(ex.cols[ex.indptr[i]:ex.indptr[i + 1]].tolist())
        expected = [j for j in order[i].tolist() if j not in dropped][:k]
        assert r[i].tolist() == expected


# ---------------------------------------------------------------- errors, samples, ranks

def test_standard_error_is_binomial():
    assert ev.standard_error(0.25, 300) == pytest.approx(math.sqrt(0.25 * 0.75 / 300))
    assert ev.standard_error(0.0, 10) == 0.0 and ev.standard_error(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        ev.standard_error(0.5, 0)


def test_standard_error_matches_the_spread_of_samples():
    """The formula is what the spread of many independent samples' accuracies shows."""
    rng = np.random.default_rng(0)
    hits = rng.random(200_000) < 0.3
    accs = [hits[ev.sample_rows(np.arange(hits.size), 500, s)].mean() for s in range(300)]
    assert np.std(accs) == pytest.approx(ev.standard_error(0.3, 500), rel=0.15)


def test_sample_rows_is_seeded_ordered_and_complete_when_large():
    rows = np.arange(100, 200)
    a, b = ev.sample_rows(rows, 10, 1), ev.sample_rows(rows, 10, 1)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 10 and len(set(a.tolist())) == 10 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, ev.sample_rows(rows, 10, 2))
    np.testing.assert_array_equal(ev.sample_rows(rows, None, 1), rows)
    np.testing.assert_array_equal(ev.sample_rows(rows, 500, 1), rows)


def test_rank_metrics_equal_two_stage_metrics_on_the_same_ranking():
    rng = np.random.default_rng(3)
    greater = rng.integers(0, 15, 50)
    finite = rng.random(50) > 0.1
    c = 10
    ranked = np.full((50, c), -1)                     # a list with the truth (id 7) at rank
    for i, (g, f) in enumerate(zip(greater, finite)):
        if f and g < c:
            ranked[i, g] = 7
    ours = ev.rank_metrics(greater, finite, k=5, num_candidates=c)
    ref = ev.two_stage_metrics(ranked, np.zeros((50, c)), np.full(50, 7), k=5)
    assert ours == pytest.approx({"ndcg@5": ref["ndcg@5_retrieval"],
                                  "hit@5": ref["hit@5_retrieval"], "mrr": ref["mrr_retrieval"]})


# ---------------------------------------------------------------- the pipeline, torch backend

@pytest.fixture(scope="module")
def trained(synthetic_dataset, small_config):
    from torch_impl.backend import TorchBackend
    backend = TorchBackend(small_config, synthetic_dataset.spec)
    backend.fit_retrieval(synthetic_dataset, epochs=1)
    backend.build_index(synthetic_dataset.corpus_titles)
    return backend


def training_sets(ds) -> dict[str, set]:
    seen: dict[str, set] = {}
    for u, t in zip(ds.user_id[ds.split.train], ds.movie_title[ds.split.train]):
        seen.setdefault(u, set()).add(t)
    return seen


def test_pipeline_exclude_seen_equals_brute_force(trained, synthetic_dataset, small_config):
    from twostage import pipeline
    ds, cfg = synthetic_dataset, small_config
    rows = ds.split.test
    report = pipeline.evaluate_retrieval(trained, ds, cfg)
    users, stamps, truth = ds.user_id[rows], ds.timestamp[rows], ds.movie_title[rows]
    seen = training_sets(ds)
    q = trained.query_embeddings(users, stamps)
    corpus = trained.candidate_embeddings(ds.corpus_titles)
    pos = ev.positive_scores(q, trained.candidate_embeddings(truth))
    scores = metric_scores(q, corpus, pos)
    _, full = trained.retrieve(users, stamps, len(ds.corpus_titles))   # the whole ranking
    ks = cfg.eval.top_ks
    score_hits, id_hits = np.zeros(len(ks)), np.zeros(len(ks))
    for i in range(len(rows)):
        drop = seen.get(users[i], set()) - {truth[i]}
        keep = np.array([t not in drop for t in ds.corpus_titles])
        greater = np.count_nonzero(scores[i][keep] > pos[i])
        listed = [ds.corpus_titles[r] for r in full[i] if ds.corpus_titles[r] not in drop]
        for j, k in enumerate(ks):
            score_hits[j] += greater < k
            id_hits[j] += truth[i] in listed[:k]
    n = len(rows)
    assert report["top_k_accuracy_exclude_seen"] == pytest.approx(
        {str(k): h / n for k, h in zip(ks, score_hits)}, abs=1e-12)
    assert report["top_k_accuracy_index_exclude_seen"] == pytest.approx(
        {str(k): h / n for k, h in zip(ks, id_hits)}, abs=1e-12)
    # the synthetic users rated most titles: excluding them must change the figures
    assert report["top_k_accuracy_exclude_seen"] != report["top_k_accuracy"]
    assert report["num_queries"] == n
    for name in ("top_k_accuracy", "top_k_accuracy_exclude_seen"):
        for k, p in report[name].items():
            assert report["standard_error"][name][k] == pytest.approx(math.sqrt(p * (1 - p) / n))


def test_two_stage_candidates_exclude_the_seen_titles(trained, synthetic_dataset, small_config,
                                                     monkeypatch):
    """Broken on purpose, it fails: an excluded title kept, or the first k taken before dropping
    the seen ones."""
    from twostage import pipeline
    monkeypatch.setattr(pipeline, "UNSEEN_SUB_BATCH", 7)   # several sub-batches per block
    ds = synthetic_dataset
    rows = ds.split.test[:80]
    seen = training_sets(ds)
    c = 45   # of 49 distinct titles: more than the heavier users have left unrated
    recs = pipeline.recommend(trained, ds.user_id[rows], ds.timestamp[rows], c,
                              ds.corpus_titles, exclude=pipeline.exclusions(ds, rows), block=32)
    full_scores, full = trained.retrieve(ds.user_id[rows], ds.timestamp[rows],
                                         len(ds.corpus_titles))
    # recommend embeds sub-batches of 7 queries, retrieve all 80 at once: a kernel may round a
    # row's embedding by its batch (torch's avx2 GEMM does), so near-tied rows may swap
    atol = tol.FORWARD_RTOL * np.abs(full_scores).max(axis=1)
    padded = 0
    for i, r in enumerate(rows):
        drop = seen.get(ds.user_id[r], set()) - {ds.movie_title[r]}
        kept = np.array([ds.corpus_titles[j] not in drop for j in full[i].tolist()])
        expected, expected_scores = full[i][kept][:c + 1], full_scores[i][kept][:c + 1]
        got = recs.rows[i][recs.rows[i] >= 0]
        assert got.shape == expected[:c].shape
        assert_top_k_close(recs.retrieval_scores[i][None, :got.size], got[None],
                           expected_scores[None],
                           expected[None], atol[i])
        assert (recs.ranking_scores[i][recs.rows[i] < 0] == -np.inf).all()
        padded += int((recs.rows[i] < 0).sum())
    assert padded > 0   # these synthetic users rated most titles: the padding is used
    reranked = np.take_along_axis(recs.rows, recs.reranked(), axis=1)
    for line in reranked:   # padding stays last after re-ranking
        assert (line[: (line >= 0).sum()] >= 0).all()


def test_eval_queries_reports_the_sample_and_its_errors(trained, synthetic_dataset,
                                                        small_config):
    from twostage import pipeline
    cfg = small_config.replace(eval_queries=150)
    ds = synthetic_dataset
    report = pipeline.evaluate(trained, ds, cfg)
    sample = pipeline.evaluation_rows(ds, cfg)
    assert len(sample) == 150 and set(sample.tolist()) <= set(ds.split.test.tolist())
    assert report["eval_sample"] == pytest.approx({
        **report["eval_sample"], "num_queries": 150, "num_test_rows": len(ds.split.test),
        "sampled": True, "eval_queries": 150})
    retrieval = report["retrieval"]
    assert retrieval["num_queries"] == 150 and report["ranking"]["num_queries"] == 150
    assert retrieval == pipeline.evaluate_retrieval(trained, ds, small_config, rows=sample)
    for name, values in retrieval["standard_error"].items():
        for k, se in values.items():
            p = retrieval[name][k]
            assert se == pytest.approx(math.sqrt(p * (1 - p) / 150))
    positives = int((ds.label[sample] == 1).sum())
    for key in ("two_stage", "two_stage_exclude_seen"):
        assert report[key]["num_queries"] == positives
        p = report[key]["hit@10_reranked"]
        assert report[key]["standard_error"]["hit@10_reranked"] == pytest.approx(
            math.sqrt(p * (1 - p) / positives))


def test_recommend_never_scores_an_index_padding_row_as_a_title():
    """An approximate index pads with row -1; recommend must not score it as titles[-1]."""
    from twostage.pipeline import recommend

    class PaddingIndexBackend:
        seen_titles: list = []

        def retrieve(self, users, stamps, k):
            rows = np.array([[2, 0, -1], [1, -1, -1]])
            scores = np.where(rows >= 0, 1.0, -np.inf).astype(np.float32)
            return scores, rows

        def ranking_scores(self, users, stamps, titles):
            self.seen_titles.extend(titles)
            return np.arange(len(titles), dtype=np.float32)

    backend = PaddingIndexBackend()
    recs = recommend(backend, np.array(["1", "2"], dtype=object), np.array([5, 6]), 3,
                     np.array(["a", "b", "c"], dtype=object))
    assert backend.seen_titles == ["c", "a", "b"]          # never "c" for a -1 row
    assert np.isneginf(recs.ranking_scores[recs.rows < 0]).all()
    assert np.isfinite(recs.ranking_scores[recs.rows >= 0]).all()
