"""A trained retrieval model plus recent popularity: score + beta * log(1 + n(title, window)).

Under ``--split temporal`` the strongest baseline is recent-popular (``twostage.baselines``):
each title scored by its ratings in a window before the query's time, read from the whole
rating log, causal by time alone (nothing at or after the query's time; other users' earlier
test-period ratings count, as a live service's counters would). A model trained on the training
split never sees those counts. This module adds them to the model's retrieval score:

    score(query, title) = q . c  +  beta * log(1 + n(title, [t - window, t)))

with ``q . c`` the backend's own retrieval score (its query and candidate embeddings, a learned
temperature included) and ``n`` the recent-popular baseline's counts (``EventCounts``). It is a
scorer of the baselines' metric code (``baselines.score``: both protocols, the shared tie order,
audiences), so its figures sit beside the baselines' in the same layout. ``beta`` and the window
are chosen together on the training split's validation slice, with the counts of the training
ratings only, as recent-popular chooses its window (``select``); beta 0 is the model alone.

Its figures follow the baselines' rule, not TFRS's: the positive's score is its title's corpus
row of the same product, so float32 rounding never puts the positive's own row above it, as it
can in the models' TFRS-exact report (FactorizedTopK scores the positive by a separate dot
product). At beta 0 it can thus score a model a little above the model's own report.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import evaluation
from .backend import Backend
from .baselines import (DAY_S, RECENT_WINDOWS_DAYS, EventCounts, Interactions, Queries,
                        RecentScorer, score, summarize, tie_priority, validation_queries)
from .config import Config
from .data.split import Split
from .dataset import Dataset
from .pipeline import evaluation_rows, fit_retrieval, make_backend

RECENT_PRIOR_BETAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class RecentPriorScorer:
    """The baselines' :class:`~twostage.baselines.Scorer` of model + recent popularity.

    ``query_rows`` [R] rating rows whose queries ``queries`` [R, D] holds (any order),
    ``corpus`` [M, D] the candidate embeddings of the corpus rows, ``recent`` the counts
    (``baselines.RecentScorer``: ``corpus_scores(rows, users) -> [n, M]``), ``beta`` >= 0.
    """

    query_rows: np.ndarray
    queries: np.ndarray
    corpus: np.ndarray
    recent: object
    beta: float

    def corpus_scores(self, rows: np.ndarray, users: np.ndarray) -> np.ndarray:
        """[n] rating rows (each one of ``query_rows``) -> [n, M] float32 scores."""
        at = np.searchsorted(self.query_rows, rows)
        at = np.minimum(at, self.query_rows.size - 1)
        if not np.array_equal(self.query_rows[at], rows):
            raise KeyError("a rating row outside the scorer's query_rows")
        model = self.queries[at] @ self.corpus.T
        if not self.beta:
            return model.astype(np.float32)
        counts = self.recent.corpus_scores(rows, users)
        return (model + np.float32(self.beta) * np.log1p(counts)).astype(np.float32)


def scorer_for(backend: Backend, dataset: Dataset, rows: np.ndarray, events: EventCounts,
               window_days: float | None, beta: float) -> RecentPriorScorer:
    """The scorer of ``backend``'s embeddings for the rating ``rows``, with ``events``'
    counts in the ``window_days`` (None: all time) before each query's time."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    corpus_titles = dataset.corpus_features["title_index"]
    recent = RecentScorer(events, None if window_days is None else window_days * DAY_S,
                          dataset.timestamp, corpus_titles)
    return RecentPriorScorer(rows, backend.query_embeddings(dataset.user_id[rows],
                                                            dataset.timestamp[rows]),
                             backend.candidate_embeddings(dataset.corpus_titles), recent, beta)


def _counts(scorer: RecentPriorScorer, dataset: Dataset, rows: np.ndarray,
            train: Interactions) -> evaluation.HigherCounts:
    """``baselines.score`` of ``scorer`` on the rating ``rows`` (seen titles: ``train``'s)."""
    corpus = dataset.corpus_features["title_index"]
    return score(scorer, Queries.of(dataset, rows), train.seen(corpus), corpus,
                 tie_priority(train.popularity()))


def select(name: str, dataset: Dataset, config: Config,
           betas: tuple[float, ...] = RECENT_PRIOR_BETAS,
           windows: tuple[float | None, ...] = RECENT_WINDOWS_DAYS) -> dict:
    """beta and the window by validation: a retrieval model of backend ``name`` trained on the
    training split less its validation slice (``baselines.validation_queries``), every
    (window, beta) scored by ``exclude_seen`` top-k accuracy (k = ``config.eval.ndcg_k``) of
    the slice with counts of the TRAINING ratings only. The test split is never read. Exact
    ties keep the smaller beta, then the longer window. Costs one retrieval training.

    Returns:
        {"beta", "window_days", "scores": {"<window>/<beta>": accuracy}, "metric",
        "num_queries"}.
    """
    fit_rows, val_rows = validation_queries(dataset, config)
    held_out = dataclasses.replace(dataset, split=Split(train=fit_rows, test=val_rows))
    backend = make_backend(name, config, held_out)
    fit_retrieval(backend, held_out, config)
    train = Interactions.of(dataset, dataset.split.train)
    events = EventCounts.of(dataset.timestamp[dataset.split.train], train.titles,
                            train.num_titles)
    fit, k = Interactions.of(dataset, fit_rows), int(config.eval.ndcg_k)
    scores, order = {}, []
    for days in sorted(windows, key=lambda d: float("inf") if d is None else -d):
        base = scorer_for(backend, dataset, val_rows, events, days, 0.0)
        for beta in sorted(float(b) for b in betas):
            counts = _counts(dataclasses.replace(base, beta=beta), dataset, val_rows, fit)
            hits = evaluation.hits_at_k(counts.greater_unseen, counts.finite, (k,))
            label = f"{'all' if days is None else f'{days:g}d'}/{beta:g}"
            scores[label] = int(hits[0]) / len(val_rows)
            order.append((label, days, beta))
    best = max(order, key=lambda o: (scores[o[0]], -o[2]))   # first max: longest window
    return {"beta": best[2], "window_days": best[1], "scores": scores,
            "metric": f"top-{k} accuracy, exclude_seen, on the validation slice",
            "num_queries": int(len(val_rows))}


def evaluate(backend: Backend, dataset: Dataset, config: Config, beta: float,
             window_days: float | None, rows: np.ndarray | None = None) -> dict:
    """The figures of ``backend`` + beta * log(1 + recent counts) on ``rows`` (default: the
    evaluation rows), in ``baselines.summarize``'s layout (top-k under both protocols, the
    positives' nDCG / hit / MRR of the scorer's own order, ``by_audience``). The counts read the
    whole rating log before each query's time, as the recent-popular baseline's do."""
    rows = evaluation_rows(dataset, config) if rows is None else np.asarray(rows)
    train = Interactions.of(dataset, dataset.split.train)
    events = EventCounts.of(dataset.timestamp, dataset.features["title_index"],
                            train.num_titles)
    scorer = scorer_for(backend, dataset, rows, events, window_days, beta)
    queries, corpus = Queries.of(dataset, rows), dataset.corpus_features["title_index"]
    figures = summarize(_counts(scorer, dataset, rows, train), queries, config, corpus.size,
                        train.seen(corpus))
    return {**figures, "beta": float(beta), "window_days": window_days}
