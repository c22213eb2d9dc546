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
audiences), so its figures sit beside the baselines' in the same layout. The window and one
beta per audience (warm users, with a training rating, and cold users, without: the model knows
the one and barely the other) are chosen on the training split's validation slice, with the
counts of the training ratings only, as recent-popular chooses its window (``select``); beta 0
is the model alone, a large beta recent-popular with the model breaking its ties. With
``config.eval.live_history`` the towers read live histories (``pipeline.live_histories``), a
cold user asking through the OOV row keyed by the id it asks as (``prior.asking_ids``).
``twostage run`` adds the same sum with fixed values in the pipeline's own evaluation
(``--recent-beta``: ``prior.RecentBackend``); this module chooses them on validation.

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
from .pipeline import (evaluation_rows, fit_retrieval, live_histories, live_rows, make_backend,
                       warm_rows)
from .prior import asking_ids

RECENT_PRIOR_BETAS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0,
                                          1000.0)
AUDIENCES = ("warm", "cold")


@dataclass(frozen=True)
class RecentPriorScorer:
    """The baselines' :class:`~twostage.baselines.Scorer` of model + recent popularity.

    ``query_rows`` [R] sorted rating rows whose queries ``queries`` [R, D] holds, ``betas``
    [R] >= 0 the weight of each one's counts, ``corpus`` [U, D] the candidate embeddings of the
    corpus's distinct titles and ``corpus_of_row`` [M] each corpus row's index into it (so the
    rows of a duplicated title get one score whatever the kernel's rounding of a product
    column, as the baselines' titles do), ``recent`` the counts (``baselines.RecentScorer``:
    ``corpus_scores(rows, users) -> [n, M]``).
    """

    query_rows: np.ndarray
    queries: np.ndarray
    betas: np.ndarray
    corpus: np.ndarray
    corpus_of_row: np.ndarray
    recent: object

    def corpus_scores(self, rows: np.ndarray, users: np.ndarray) -> np.ndarray:
        """[n] rating rows (each one of ``query_rows``) -> [n, M] float32 scores.

        Raises:
            KeyError: a row outside ``query_rows``.
        """
        at = np.minimum(np.searchsorted(self.query_rows, rows), self.query_rows.size - 1)
        if not np.array_equal(self.query_rows[at], rows):
            raise KeyError("a rating row outside the scorer's query_rows")
        model = (self.queries[at] @ self.corpus.T)[:, self.corpus_of_row]
        betas = self.betas[at].astype(np.float32)
        if not betas.any():
            return model.astype(np.float32)
        counts = self.recent.corpus_scores(rows, users)
        return (model + betas[:, None] * np.log1p(counts)).astype(np.float32)

    def with_betas(self, warm: np.ndarray, beta_warm: float, beta_cold: float
                   ) -> "RecentPriorScorer":
        """The same scorer with ``beta_warm`` for the queries ``warm`` [R] marks (aligned with
        ``query_rows``), ``beta_cold`` for the others."""
        return dataclasses.replace(self, betas=np.where(warm, beta_warm, beta_cold))


def scorer_for(backend: Backend, dataset: Dataset, rows: np.ndarray, events: EventCounts,
               window_days: float | None, beta: float | np.ndarray,
               oov: np.ndarray | None = None) -> RecentPriorScorer:
    """The scorer of ``backend``'s embeddings for the rating ``rows`` (beta: one for all, or
    [R] aligned with ``np.unique(rows)``), with ``events``' counts in the ``window_days``
    (None: all time) before each query's time. ``oov`` [R] bool (aligned alike): these queries
    ask as :func:`asking_ids` words them, through the lookups' OOV row (trained by
    ``train.user_dropout``) instead of their own never-trained row; the user's side features
    are then unknown too, and their histories are the attached index's entries of that id."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    corpus_titles = dataset.corpus_features["title_index"]
    recent = _recent(dataset, events, window_days)
    betas = np.broadcast_to(np.asarray(beta, dtype=np.float64), rows.shape).copy()
    users = asking_ids(dataset.user_id[rows], oov)
    first, corpus_of_row = np.unique(corpus_titles, return_index=True, return_inverse=True)[1:]
    return RecentPriorScorer(rows, backend.query_embeddings(users, dataset.timestamp[rows]),
                             betas, backend.candidate_embeddings(dataset.corpus_titles[first]),
                             corpus_of_row.reshape(-1), recent)


def _recent(dataset: Dataset, events: EventCounts, window_days: float | None) -> RecentScorer:
    """recent-popular's counts of ``events`` in the ``window_days`` (None: all time) before
    each query's time."""
    return RecentScorer(events, None if window_days is None else window_days * DAY_S,
                        dataset.timestamp, dataset.corpus_features["title_index"])


def _counts(scorer: RecentPriorScorer, dataset: Dataset, rows: np.ndarray,
            train: Interactions) -> evaluation.HigherCounts:
    """``baselines.score`` of ``scorer`` on the rating ``rows`` (seen titles: ``train``'s)."""
    corpus = dataset.corpus_features["title_index"]
    return score(scorer, Queries.of(dataset, rows), train.seen(corpus), corpus,
                 tie_priority(train.popularity()))


def _label(days: float | None, beta: float) -> str:
    return f"{'all' if days is None else f'{days:g}d'}/{beta:g}"


def select(name: str, dataset: Dataset, config: Config,
           betas: tuple[float, ...] = RECENT_PRIOR_BETAS,
           windows: tuple[float | None, ...] = RECENT_WINDOWS_DAYS,
           cold_as_oov: bool = False) -> dict:
    """The window and a beta per audience by validation: a retrieval model of backend ``name``
    trained on the training split less its validation slice (``baselines.validation_queries``),
    every (window, beta) scored by ``exclude_seen`` top-k hits (k = ``config.eval.ndcg_k``) of
    the slice's warm queries (their user has a fit rating) and of its cold ones, with counts of
    the TRAINING ratings only. Per window each audience takes its best beta; the window with the
    most hits in all wins. The test split is never read. Exact ties keep the smaller beta, then
    the longer window. Costs one retrieval training. ``cold_as_oov``: cold queries ask through
    the OOV row (:func:`scorer_for`).

    Returns:
        {"beta_warm", "beta_cold", "window_days", "scores": {audience: {"<window>/<beta>":
        accuracy}}, "metric", "num_queries": {audience: count}}.
    """
    fit_rows, val_rows = validation_queries(dataset, config)
    held_out = dataclasses.replace(dataset, split=Split(train=fit_rows, test=val_rows))
    backend = make_backend(name, config, held_out)
    fit_retrieval(backend, held_out, config)
    train = Interactions.of(dataset, dataset.split.train)
    events = EventCounts.of(dataset.timestamp[dataset.split.train], train.titles,
                            train.num_titles)
    fit, k = Interactions.of(dataset, fit_rows), int(config.eval.ndcg_k)
    queries = Queries.of(dataset, val_rows)                      # the order count_higher keeps
    warm = np.isin(queries.users, fit.users)
    oov = ~warm_rows(dataset, val_rows, fit_rows) if cold_as_oov else None
    masks = {"warm": warm, "cold": ~warm}
    hits = {a: {} for a in AUDIENCES}
    longest_first = sorted(windows, key=lambda d: float("inf") if d is None else -d)
    with live_histories(backend, dataset, **live_rows(dataset, config, dataset.split.train,
                                                      fit_rows, cold_as_oov)):
        embedded = scorer_for(backend, dataset, val_rows, events, None, 0.0, oov)  # towers once
    for days in longest_first:
        base = dataclasses.replace(embedded, recent=_recent(dataset, events, days))
        for beta in sorted(float(b) for b in betas):
            counts = _counts(dataclasses.replace(base, betas=np.full(base.betas.shape, beta)),
                             dataset, val_rows, fit)
            hit = counts.finite & (counts.greater_unseen < k)
            for a in AUDIENCES:
                hits[a][_label(days, beta)] = int(hit[masks[a]].sum())
    ordered = sorted(float(b) for b in betas)

    def best_beta(a: str, days) -> float:               # first max: the smaller beta
        return max(ordered, key=lambda b: (hits[a][_label(days, b)], -b))

    window = max(longest_first, key=lambda d: sum(hits[a][_label(d, best_beta(a, d))]
                                                  for a in AUDIENCES))   # first max: longest
    sizes = {a: int(m.sum()) for a, m in masks.items()}
    return {"beta_warm": best_beta("warm", window), "beta_cold": best_beta("cold", window),
            "window_days": window,
            "scores": {a: {label: h / max(sizes[a], 1) for label, h in hits[a].items()}
                       for a in AUDIENCES},
            "metric": f"top-{k} accuracy, exclude_seen, on the validation slice",
            "num_queries": sizes}


def evaluate(backend: Backend, dataset: Dataset, config: Config, beta_warm: float,
             beta_cold: float, window_days: float | None, rows: np.ndarray | None = None,
             cold_as_oov: bool = False) -> dict:
    """The figures of ``backend`` + beta * log(1 + recent counts) on ``rows`` (default: the
    evaluation rows; beta: ``beta_warm`` for a user with a training rating, else
    ``beta_cold``), in ``baselines.summarize``'s layout (top-k under both protocols, the
    positives' nDCG / hit / MRR of the scorer's own order, ``by_audience``). The counts read the
    whole rating log before each query's time, as the recent-popular baseline's do.
    ``cold_as_oov``: cold queries ask through the OOV row (:func:`scorer_for`)."""
    rows = evaluation_rows(dataset, config) if rows is None else np.asarray(rows)
    train = Interactions.of(dataset, dataset.split.train)
    events = EventCounts.of(dataset.timestamp, dataset.features["title_index"],
                            train.num_titles)
    warm = warm_rows(dataset, rows, dataset.split.train)
    every = np.arange(len(dataset.user_id))
    with live_histories(backend, dataset, **live_rows(dataset, config, every,
                                                      dataset.split.train, cold_as_oov)):
        scorer = scorer_for(backend, dataset, rows, events, window_days, 0.0,
                            ~warm if cold_as_oov else None).with_betas(warm, beta_warm,
                                                                       beta_cold)
    queries, corpus = Queries.of(dataset, rows), dataset.corpus_features["title_index"]
    figures = summarize(_counts(scorer, dataset, rows, train), queries, config, corpus.size,
                        train.seen(corpus))
    return {**figures, "beta_warm": float(beta_warm), "beta_cold": float(beta_cold),
            "window_days": window_days, "cold_as_oov": bool(cold_as_oov),
            "live_history": bool(config.eval.live_history)}
