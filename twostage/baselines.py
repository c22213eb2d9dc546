"""Baselines beside every run, scored by the model's own metric code: random, most-popular, EASE.

Each baseline gives every query (a test rating: user, true title) a score per title; the
scores are spread over the corpus rows (duplicate titles share their title's score, as they
share an embedding in the models) and counted by ``twostage.evaluation.count_higher``, the loop
that scores the models, under both protocols (``seed`` and ``exclude_seen``) and on the same
``eval_queries`` sample. Baseline scores tie often (popularity counts), so a tie is broken by a
deterministic order, the same for all three: more training ratings first, then the smaller
title index. The models keep TFRS's rule (ties in the positive's favour).

* ``random``: its exact expectation (no draw, no noise): the true title's position among the
  R corpus rows left in the ranking (its own duplicate rows tie with it, in its favour) is
  uniform over 1..R+1 under a uniformly random order of the rows, so
  hit@k = min(k, R+1) / (R+1), and nDCG and MRR likewise.
* ``popular``: the number of training ratings of each title (Steck's and RecBole's "Pop"),
  scored by its rank in the tie-breaking order, so no two titles tie.
* ``ease``: Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data": X the binary
  user x title matrix of the training ratings, P = (X^T X + lambda I)^-1,
  B = I - P / diag(P) (column j divided by P_jj), so diag(B) = 0; a user's scores are x_u B.
  lambda is chosen from ``EASE_LAMBDAS`` on a validation slice carved out of the TRAINING split
  (``validation_split``; the test split is never read), then B is refitted on the whole
  training split. The dense T x T inverse costs about T^3 flops: up to ``EASE_MAX_TITLES``
  titles (ml-100k: 1,664; ml-1m: 3,706) it is computed in float64, up to ``EASE_MAX_ITEMS``
  in float32 (half the memory and time), and above that (20m, 25m) on the ``EASE_MAX_ITEMS``
  most popular titles only, every other title ranked below them by popularity (the report
  says so: ``restricted_to``). The cap is set by time (T^3), not memory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import evaluation
from .config import Config
from .dataset import Dataset
from .recipes import HistoryIndex
from .schedule import validation_rows

EASE_LAMBDAS: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
EASE_FIRST_LAMBDA = 300.0        # where the search starts (ml-100k's and ml-1m's neighbourhood)
EASE_MAX_TITLES = 5000           # float64 up to here (the seed's figures)
EASE_MAX_ITEMS = 10_000          # float32 up to here; above: the most popular ones only
VALIDATION_FRACTION = 0.1        # of the training split, for EASE's lambda
VALIDATION_MAX_USERS = 1000      # validation ratings of at most this many users (seeded)
BASELINES: tuple[str, ...] = ("random", "popular", "ease", "recent")
# on request (evaluate_baselines' names): EASE reading live histories (LiveEaseScorer)
EXTRA_BASELINES: tuple[str, ...] = ("ease-live",)


# --------------------------------------------------------------------------------------------
# training interactions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interactions:
    """Training ratings as integer indices: ``users`` [R], ``titles`` [R] (the FeatureSpec's
    user and title indices; repeats allowed), ``num_titles`` T (title indices are < T)."""

    users: np.ndarray
    titles: np.ndarray
    num_titles: int

    @classmethod
    def of(cls, dataset: Dataset, rows: np.ndarray) -> "Interactions":
        return cls(dataset.features["user_index"][rows].astype(np.int64),
                   dataset.features["title_index"][rows].astype(np.int64),
                   num_titles(dataset))

    def popularity(self) -> np.ndarray:
        """[T] int64: ratings per title."""
        return np.bincount(self.titles, minlength=self.num_titles).astype(np.int64)

    def seen(self, corpus_titles: np.ndarray) -> evaluation.SeenTitles:
        return evaluation.SeenTitles(self.users, self.titles, corpus_titles)


def num_titles(dataset: Dataset) -> int:
    """Size of the title index space (OOV 0 included)."""
    return int(max(dataset.corpus_features["title_index"].max(initial=0),
                   dataset.features["title_index"].max(initial=0))) + 1


def tie_priority(popularity: np.ndarray) -> np.ndarray:
    """[T] int64 position of each title in the deterministic order that breaks score ties:
    more training ratings first, then the smaller title index."""
    popularity = np.asarray(popularity)
    order = np.lexsort((np.arange(popularity.size), -popularity))
    priority = np.empty(popularity.size, dtype=np.int64)
    priority[order] = np.arange(popularity.size)
    return priority


def validation_split(dataset: Dataset, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows), both out of ``dataset.split.train`` only: a seeded
    ``VALIDATION_FRACTION`` of it for the random split, its latest ratings for the temporal one
    (the validation slice follows the protocol of the test split)."""
    train = np.asarray(dataset.split.train)
    n_val = max(1, int(round(VALIDATION_FRACTION * len(train))))
    if len(train) < 2:
        raise ValueError("the training split has fewer than 2 ratings: no validation slice "
                         "for EASE's lambda")
    if getattr(config.data, "split", "random") == "temporal":
        order = np.argsort(dataset.timestamp[train], kind="stable")
    else:
        order = np.random.default_rng([config.seed, 0xEA5E]).permutation(len(train))
    return np.sort(train[order[:-n_val]]), np.sort(train[order[-n_val:]])


# --------------------------------------------------------------------------------------------
# the three scorers
# --------------------------------------------------------------------------------------------

class Scorer(Protocol):
    """[n] rating rows and their users -> [n, M] float32 scores of the corpus rows (higher is
    better; duplicate rows of a title get their title's score)."""

    def corpus_scores(self, rows: np.ndarray, users: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PopularScorer:
    """Every query gets each title's rank in the popularity order (training rating count,
    ties by title index: ``tie_priority``) as score, higher first: the same order as the
    counts, without ties between titles. A broadcast view: no [n, M] copy."""

    popularity: np.ndarray
    corpus_titles: np.ndarray
    ties = False   # its scores never tie between titles: no tie-break pass needed

    def corpus_scores(self, rows: np.ndarray, users: np.ndarray) -> np.ndarray:
        rank = tie_priority(self.popularity)[self.corpus_titles]
        per_row = (self.popularity.size - rank).astype(np.float32)   # exact below 2^24
        return np.broadcast_to(per_row, (len(rows), per_row.size))


@dataclass(frozen=True)
class EaseColumns:
    """Which titles EASE models: ``column`` [T] int64, each title's row / column of B, or -1
    for a title left out (catalogues above ``EASE_MAX_ITEMS``: all but the most popular)."""

    column: np.ndarray

    @classmethod
    def of(cls, popularity: np.ndarray, limit: int | None = None) -> "EaseColumns":
        """Every title when there are at most ``limit`` (default ``EASE_MAX_ITEMS``), else the
        ``limit`` first in the tie-breaking order (the most popular)."""
        limit = EASE_MAX_ITEMS if limit is None else limit
        t = popularity.size
        priority = tie_priority(popularity)
        column = np.where(priority < limit, priority, -1) if t > limit else np.arange(t)
        return cls(column.astype(np.int64))

    @property
    def size(self) -> int:
        return int((self.column >= 0).sum())

    @property
    def restricted(self) -> bool:
        return bool((self.column < 0).any())

    def interactions(self, interactions: Interactions) -> Interactions:
        """The ratings of the modelled titles, their titles renumbered to columns."""
        kept = self.column[interactions.titles]
        return Interactions(interactions.users[kept >= 0], kept[kept >= 0], self.size)


@dataclass(frozen=True)
class EaseScorer:
    """x_u B for each query's user (x_u: the modelled titles the user rated in training),
    computed directly on the corpus columns of B. Corpus rows of titles EASE leaves out
    (``columns``) score just below the row's lowest modelled score, all equal, so the
    tie-breaking order ranks them by popularity."""

    weights: np.ndarray                 # B [C, C] float32, zero diagonal (C modelled titles)
    history: evaluation.SeenTitles      # the training titles of each user
    corpus_titles: np.ndarray
    columns: EaseColumns | None = None  # None: every title is its own column

    def __post_init__(self) -> None:
        column = (np.arange(self.weights.shape[0]) if self.columns is None
                  else self.columns.column)
        corpus = column[self.corpus_titles]
        outside = corpus < 0
        modelled = np.ascontiguousarray(self.weights[:, np.maximum(corpus, 0)])
        modelled[:, outside] = 0.0
        object.__setattr__(self, "_column", column)
        object.__setattr__(self, "_outside", outside)
        object.__setattr__(self, "_columns", modelled)      # [C, M], computed once

    def corpus_scores(self, rows: np.ndarray, users: np.ndarray) -> np.ndarray:
        distinct, inverse = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
        query, title = self.history.titles_of(distinct)
        return self.scores_of(distinct.size, query, title)[inverse]  # a GEMM row per user

    def scores_of(self, n: int, query: np.ndarray, title: np.ndarray) -> np.ndarray:
        """[n, M] float32 x B of n histories given as pairs (``query`` [K] in [0, n),
        ``title`` [K] title index)."""
        x = np.zeros((n, self.weights.shape[0]), dtype=np.float32)
        kept = self._column[title]
        x[query[kept >= 0], kept[kept >= 0]] = 1.0
        scores = x @ self._columns
        if self._outside.any():
            floor = scores[:, ~self._outside].min(axis=1, keepdims=True) - 1.0
            scores[:, self._outside] = floor
        return scores


@dataclass(frozen=True)
class LiveEaseScorer:
    """EASE with each query's x its user's ratings strictly before the query's second in the
    whole ``log`` (a ``recipes.HistoryIndex`` of every rating: the index the models' live
    histories read, ``recipes.live_recipe``; test-period ratings included, as recent-popular's
    counts): the baseline of ``config.eval.live_history``'s models."""

    ease: EaseScorer
    log: HistoryIndex
    user_id: np.ndarray             # of every rating row
    timestamps: np.ndarray          # of every rating row

    def corpus_scores(self, rows: np.ndarray, users: np.ndarray) -> np.ndarray:
        query, title = self.log.before(self.user_id[rows], self.timestamps[rows])
        return self.ease.scores_of(len(rows), query, title)


def gram(interactions: Interactions, budget_bytes: int = evaluation.DEFAULT_CHUNK_BYTES
         ) -> np.ndarray:
    """X^T X [T, T] float64 of the binary user x title matrix (repeated ratings count once),
    accumulated over blocks of users so X is never held whole."""
    t = interactions.num_titles
    pairs = evaluation.sorted_unique(interactions.users * t + interactions.titles)
    users, titles = pairs // t, pairs % t
    distinct, user_pos = np.unique(users, return_inverse=True)
    g = np.zeros((t, t), dtype=np.float64)
    step = evaluation.chunk_rows(t, budget_bytes)
    bounds = np.searchsorted(user_pos, np.arange(0, distinct.size + step, step))
    for lo, hi, first in zip(bounds[:-1], bounds[1:], range(0, distinct.size, step)):
        x = np.zeros((min(step, distinct.size - first), t), dtype=np.float32)
        x[user_pos[lo:hi] - first, titles[lo:hi]] = 1.0
        g += x.T @ x                        # counts < 2^24: exact in float32
    return g


def ease_weights(g: np.ndarray, lam: float) -> np.ndarray:
    """Steck's closed form from the Gram matrix: P = (G + lam I)^-1, B = I - P / diag(P)
    (B_ij = -P_ij / P_jj off the diagonal), diag(B) = 0. -> B [T, T] float32."""
    if not lam > 0:
        raise ValueError(f"EASE lambda={lam} must be > 0 (G + lambda I must be invertible)")
    dtype = np.float64 if g.shape[0] <= EASE_MAX_TITLES else np.float32  # half the cost
    p = g.astype(dtype) + dtype(lam) * np.eye(g.shape[0], dtype=dtype)
    p = np.linalg.inv(p)
    b = p / (-np.diag(p))[None, :]
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


# --------------------------------------------------------------------------------------------
# recent-popular: title counts in a window before the query's time
# --------------------------------------------------------------------------------------------

DAY_S = 86_400
RECENT_WINDOWS_DAYS: tuple[float | None, ...] = (1, 7, 30, 90, 365, None)   # None: all before
CHECKPOINT_BYTES = 64 << 20      # memory of EventCounts' prefix counts


@dataclass(frozen=True)
class EventCounts:
    """How often each title was rated strictly before any time: a rating log ``times`` [E]
    (ascending) and ``titles`` [E], with prefix counts ``prefix`` [E // stride + 1, T] int32
    every ``stride`` events (stride chosen so they fit ``CHECKPOINT_BYTES``); a query adds the
    at most ``stride`` events after its checkpoint."""

    times: np.ndarray
    titles: np.ndarray
    prefix: np.ndarray
    stride: int

    @classmethod
    def of(cls, times, titles, num_titles: int, budget_bytes: int = CHECKPOINT_BYTES
           ) -> "EventCounts":
        order = np.argsort(np.asarray(times), kind="stable")
        times = np.asarray(times, dtype=np.int64)[order]
        titles = np.asarray(titles, dtype=np.int64)[order]
        checkpoints = max(1, budget_bytes // (4 * max(num_titles, 1)) - 1)
        stride = max(1, -(-times.size // checkpoints))
        rows = times.size // stride + 1          # prefix[j]: the first j * stride events
        first = np.arange(times.size) // stride + 1          # the first checkpoint after each
        kept = first < rows                                  # the tail is no checkpoint's
        prefix = np.bincount(first[kept] * num_titles + titles[kept],
                             minlength=rows * num_titles).reshape(rows, num_titles)
        return cls(times, titles, np.cumsum(prefix, axis=0).astype(np.int32), stride)

    def before(self, when) -> np.ndarray:
        """[n] times -> [n, T] int32: ratings of each title at times strictly before each."""
        at = np.searchsorted(self.times, np.asarray(when, dtype=np.int64), side="left")
        base = at // self.stride
        counts = self.prefix[np.minimum(base, self.prefix.shape[0] - 1)].copy()
        lengths = at - base * self.stride
        query = np.repeat(np.arange(at.size, dtype=np.int64), lengths)
        events = evaluation._ranges(base * self.stride, lengths)
        np.add.at(counts, (query, self.titles[events]), 1)
        return counts

    def window(self, when, seconds: float | None) -> np.ndarray:
        """[n] times -> [n, T]: ratings in [t - seconds, t) (every earlier one when None)."""
        counts = self.before(when)
        if seconds is not None:
            counts -= self.before(np.asarray(when, dtype=np.int64) - int(seconds))
        return counts


@dataclass(frozen=True)
class RecentScorer:
    """Each query's score of a title: its ratings in the ``seconds`` before the query's time
    (``timestamps[row]``; causal: nothing at or after it), read off ``events``. Ties (common:
    small counts) are broken by the shared tie order (training popularity, then index)."""

    events: EventCounts
    seconds: float | None
    timestamps: np.ndarray
    corpus_titles: np.ndarray

    def corpus_scores(self, rows: np.ndarray, users: np.ndarray) -> np.ndarray:
        counts = self.events.window(self.timestamps[rows], self.seconds)
        return counts[:, self.corpus_titles].astype(np.float32)   # exact below 2^24


def _window_label(days: float | None) -> str:
    return "all" if days is None else f"{days:g}d"


def select_window(dataset: Dataset, config: Config,
                  windows: tuple[float | None, ...] = RECENT_WINDOWS_DAYS) -> dict:
    """recent-popular's window by validation, on the training split only: the validation
    slice's ratings (``validation_split``, at most ``VALIDATION_MAX_USERS`` users) are scored
    with counts of the TRAINING ratings before each one's time, by ``exclude_seen`` top-k
    accuracy (k = ``config.eval.ndcg_k``; titles seen in the fit rows removed), every window
    of ``windows`` (days; None: all time). Exact ties keep the longer window. -> {"window_days",
    "scores": {label: acc}, "metric", "num_queries"}."""
    fit_rows, val_rows = validation_queries(dataset, config)
    fit, train = Interactions.of(dataset, fit_rows), Interactions.of(dataset, dataset.split.train)
    corpus = dataset.corpus_features["title_index"]
    events = EventCounts.of(dataset.timestamp[dataset.split.train], train.titles,
                            train.num_titles)
    seen, queries = fit.seen(corpus), Queries.of(dataset, val_rows)
    priority, k = tie_priority(fit.popularity()), int(config.eval.ndcg_k)
    scores: dict[str, float] = {}
    for days in windows:
        scorer = RecentScorer(events, None if days is None else days * DAY_S,
                              dataset.timestamp, corpus)
        counts = score(scorer, queries, seen, corpus, priority)
        hits = evaluation.hits_at_k(counts.greater_unseen, counts.finite, (k,))
        scores[_window_label(days)] = int(hits[0]) / queries.rows.size
    longest_first = sorted(windows, key=lambda d: float("inf") if d is None else -d)
    best = max(longest_first, key=lambda d: scores[_window_label(d)])   # first max: longest
    return {"window_days": best, "scores": scores,
            "metric": f"top-{k} accuracy, exclude_seen, on the validation slice",
            "num_queries": int(queries.rows.size)}


# --------------------------------------------------------------------------------------------
# scoring with the shared metric code
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Queries:
    """Evaluation queries ordered by user (consecutive blocks then share users, which EASE
    scores once per block): rating ``rows``, ``users``, true ``titles``, ``positive`` (label 1)."""

    rows: np.ndarray
    users: np.ndarray
    titles: np.ndarray
    positive: np.ndarray

    @classmethod
    def of(cls, dataset: Dataset, rows: np.ndarray) -> "Queries":
        rows = np.asarray(rows)
        users = dataset.features["user_index"][rows].astype(np.int64)
        order = np.argsort(users, kind="stable")
        rows = rows[order]
        return cls(rows, users[order], dataset.features["title_index"][rows].astype(np.int64),
                   dataset.label[rows] == 1)


def score(scorer: Scorer, queries: Queries, seen: evaluation.SeenTitles,
          corpus_titles: np.ndarray, priority: np.ndarray,
          budget_bytes: int = evaluation.DEFAULT_CHUNK_BYTES) -> evaluation.HigherCounts:
    """Count, per query, the corpus rows ranked above its true title under both protocols
    (``evaluation.count_higher``, ties by ``priority``). The positive is the score of the
    first corpus row of the true title, read from the same block (so its duplicate rows tie
    with it exactly)."""
    corpus_titles = np.asarray(corpus_titles, dtype=np.int64)
    first_row = _first_rows(corpus_titles, priority.size)
    missing = queries.titles[first_row[queries.titles] < 0]
    if missing.size:
        raise ValueError(f"title index {int(missing[0])} of a rating has no corpus row; the "
                         "corpus must hold every rated title (rebuild the dataset)")

    def block(start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        scores = scorer.corpus_scores(queries.rows[start:end], queries.users[start:end])
        return scores, scores[np.arange(end - start), first_row[queries.titles[start:end]]]

    ties = getattr(scorer, "ties", True)
    return evaluation.count_higher(
        block, queries.rows.size, evaluation.chunk_rows(corpus_titles.size, budget_bytes),
        exclude=seen.for_queries(queries.users, queries.titles),
        column_priority=priority[corpus_titles] if ties else None,
        positive_priority=priority[queries.titles] if ties else None)


def _first_rows(corpus_titles: np.ndarray, num_titles: int) -> np.ndarray:
    """[T] int64: the first corpus row of each title, -1 for a title with none."""
    first = np.full(num_titles, -1, dtype=np.int64)
    rows = np.arange(corpus_titles.size, dtype=np.int64)
    first[corpus_titles[::-1]] = rows[::-1]       # the last write (smallest row) wins
    return first


def random_expectation(queries: Queries, seen: evaluation.SeenTitles,
                       corpus_titles: np.ndarray, config: Config) -> dict:
    """The random baseline's exact expected figures (see the module docstring), in
    ``summarize``'s layout; standard errors are the binomial ones of N queries."""
    m = np.asarray(corpus_titles).size
    others = m - seen.rows_of_title[queries.titles]                 # R under the seed protocol
    unseen = others - seen.excluded_counts(queries.users, queries.titles)
    return _with_audiences(lambda mask: _random_figures(others[mask], unseen[mask],
                                                        queries.positive[mask], config, m),
                           queries, seen)


def _random_figures(others: np.ndarray, unseen: np.ndarray, positive: np.ndarray,
                    config: Config, m: int) -> dict:
    """``random_expectation`` of N queries from R per query under each protocol."""
    ks, n = tuple(config.eval.top_ks), others.size
    k, c = config.eval.ndcg_k, min(config.eval.num_candidates, m)
    out: dict = {"standard_error": {}}
    for suffix, r in (("", others), ("_exclude_seen", unseen)):
        places = (r + 1).astype(np.float64)                          # positions 1..R+1
        acc = {str(kk): float(np.mean(np.minimum(kk, places) / places)) for kk in ks}
        out["top_k_accuracy" + suffix] = acc
        out["standard_error"]["top_k_accuracy" + suffix] = {
            kk: evaluation.standard_error(v, n) for kk, v in acc.items()}
        if positive.any():
            out["positives" + suffix] = _expected_rank_metrics(places[positive], min(k, c), c)
    return out


def _with_audiences(figures, queries: Queries, seen: evaluation.SeenTitles) -> dict:
    """``figures(mask)`` of all queries, plus ``by_audience``: {audience: figures of its
    queries and ``num_queries``} (``SeenTitles.audiences``; an empty audience: its count)."""
    masks = seen.audiences(queries.users, queries.titles)
    out = figures(np.ones(queries.rows.size, dtype=bool))
    out["by_audience"] = {name: {**(figures(mask) if mask.any() else {}),
                                 "num_queries": int(mask.sum())}
                          for name, mask in masks.items()}
    return out


def _expected_rank_metrics(places: np.ndarray, k: int, c: int) -> dict[str, float]:
    """Mean over queries of E[nDCG@k], P(hit@k), E[RR within c] for a rank uniform over
    1..places."""
    ranks = np.arange(1, max(k, c) + 1, dtype=np.float64)
    gain = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(ranks + 1.0))])
    rr = np.concatenate([[0.0], np.cumsum(1.0 / ranks)])
    within_k, within_c = np.minimum(places, k).astype(int), np.minimum(places, c).astype(int)
    return {f"ndcg@{k}": float(np.mean(gain[within_k] / places)),
            f"hit@{k}": float(np.mean(within_k / places)),
            "mrr": float(np.mean(rr[within_c] / places))}


def summarize(counts: evaluation.HigherCounts, queries: Queries, config: Config,
              num_corpus: int, seen: evaluation.SeenTitles | None = None) -> dict:
    """Top-k accuracies (both protocols, with standard errors) and, on the positive queries,
    nDCG@k / hit@k / MRR of the baseline's own order (``positives*``), comparable with the
    model's two-stage figures; with ``seen`` (the training titles), the same per audience under
    ``by_audience`` (``_with_audiences``)."""
    ks = tuple(config.eval.top_ks)
    k, c = config.eval.ndcg_k, min(config.eval.num_candidates, num_corpus)

    def figures(mask: np.ndarray) -> dict:
        n, finite, positive = int(mask.sum()), counts.finite[mask], queries.positive[mask]
        out: dict = {"standard_error": {}}
        for suffix, greater in (("", counts.greater), ("_exclude_seen", counts.greater_unseen)):
            greater = greater[mask]
            hits = evaluation.hits_at_k(greater, finite, ks)
            acc = {str(kk): int(h) / n for kk, h in zip(ks, hits)}
            out["top_k_accuracy" + suffix] = acc
            out["standard_error"]["top_k_accuracy" + suffix] = {
                kk: evaluation.standard_error(v, n) for kk, v in acc.items()}
            if positive.any():
                out["positives" + suffix] = evaluation.rank_metrics(
                    greater[positive], finite[positive], min(k, c), c)
        return out

    return _with_audiences(figures, queries, seen) if seen is not None else figures(
        np.ones(queries.rows.size, dtype=bool))


# --------------------------------------------------------------------------------------------
# EASE's lambda, on the training split only
# --------------------------------------------------------------------------------------------

def select_lambda(dataset: Dataset, config: Config, lambdas: tuple[float, ...] = EASE_LAMBDAS,
                  first: float = EASE_FIRST_LAMBDA) -> dict:
    """EASE's lambda by validation: fit on the training split minus its validation slice
    (``validation_split``), score the slice's ratings (those of at most
    ``VALIDATION_MAX_USERS`` users, a seeded sample: EASE's cost is one GEMM row per user)
    with ``exclude_seen`` top-k accuracy, k = ``config.eval.ndcg_k``. The grid
    is walked from ``first`` towards the better neighbour until the score drops (validation
    accuracy is unimodal in log lambda in practice), so 3-4 inverses instead of 7. Exact ties
    keep the larger lambda (stronger regularisation). -> {"lambda", "scores": {lambda: acc},
    "metric", "num_queries", "num_fit_ratings"}."""
    fit_rows, val_rows = validation_queries(dataset, config)
    fit = Interactions.of(dataset, fit_rows)
    columns = EaseColumns.of(fit.popularity())
    g = gram(columns.interactions(fit))
    seen = fit.seen(dataset.corpus_features["title_index"])
    queries = Queries.of(dataset, val_rows)
    priority = tie_priority(fit.popularity())
    k = int(config.eval.ndcg_k)
    grid = sorted(float(x) for x in lambdas)
    scores: dict[float, float] = {}

    def validate(i: int) -> float:
        lam = grid[i]
        if lam not in scores:
            corpus = dataset.corpus_features["title_index"]
            counts = score(EaseScorer(ease_weights(g, lam), seen, corpus, columns), queries,
                           seen, corpus, priority)
            hits = evaluation.hits_at_k(counts.greater_unseen, counts.finite, (k,))
            scores[lam] = int(hits[0]) / queries.rows.size
        return scores[lam]

    best = int(np.argmin(np.abs(np.log(grid) - np.log(first))))
    while True:
        around = [j for j in (best - 1, best, best + 1) if 0 <= j < len(grid)]
        top = max(around, key=lambda j: (validate(j), grid[j]))
        if top == best:
            break
        best = top
    return {"lambda": grid[best], "scores": {f"{lam:g}": v for lam, v in sorted(scores.items())},
            "metric": f"top-{k} accuracy, exclude_seen, on the validation slice",
            "num_queries": int(queries.rows.size), "num_fit_ratings": int(fit_rows.size)}


def validation_queries(dataset: Dataset, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): ``validation_split``, its validation ratings those of at
    most ``VALIDATION_MAX_USERS`` users (a seeded sample), as every choice made on validation
    (EASE's lambda, recent-popular's window, the popularity prior's beta) scores them."""
    fit_rows, val_rows = validation_split(dataset, config)
    return fit_rows, _rows_of_some_users(dataset, val_rows, VALIDATION_MAX_USERS, config.seed)


def _rows_of_some_users(dataset: Dataset, rows: np.ndarray, max_users: int, seed: int
                        ) -> np.ndarray:
    """The ``rows`` of at most ``max_users`` of their users (a seeded sample), order kept."""
    users = dataset.features["user_index"][rows]
    distinct = np.unique(users)
    kept = evaluation.sample_rows(distinct, max_users, seed)
    return rows[np.isin(users, kept)]


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------

def evaluate_baselines(dataset: Dataset, config: Config, rows: np.ndarray | None = None,
                       names: tuple[str, ...] | None = None) -> dict:
    """Every baseline on ``rows`` (default: the model's evaluation rows, the test split or its
    ``eval_queries`` sample) -> {"models": {name: figures}, "num_queries", "tie_break"}. Each
    entry: ``top_k_accuracy``, ``top_k_accuracy_exclude_seen``, ``positives`` /
    ``positives_exclude_seen`` (nDCG@k, hit@k, MRR within num_candidates), ``standard_error``,
    ``seconds``; EASE adds ``lambda``, ``validation`` and, above ``EASE_MAX_ITEMS`` titles,
    ``restricted_to`` (what it modelled)."""
    rows = validation_rows(dataset.split.test, config) if rows is None else np.asarray(rows)
    names = BASELINES if names is None else names
    train = Interactions.of(dataset, dataset.split.train)
    corpus = dataset.corpus_features["title_index"]
    seen, popularity = train.seen(corpus), train.popularity()
    priority, queries = tie_priority(popularity), Queries.of(dataset, rows)
    out: dict = {}
    for name in names:
        start = time.perf_counter()
        if name == "random":
            figures = {**random_expectation(queries, seen, corpus, config),
                       "expectation": True}
        elif name == "recent" and np.unique(dataset.timestamp).size < 2:
            figures = {"skipped": "every rating has the same time (no time column)"}
        else:
            scorer, extra = _scorer(name, dataset, config, train, seen, popularity)
            figures = {**summarize(score(scorer, queries, seen, corpus, priority), queries,
                                   config, corpus.size, seen), **extra}
        out[name] = {**figures, "seconds": time.perf_counter() - start}
    return {"models": out, "num_queries": int(rows.size),
            "tie_break": "more training ratings first, then the smaller title index"}


def _scorer(name: str, dataset: Dataset, config: Config, train: Interactions,
            seen: evaluation.SeenTitles, popularity: np.ndarray) -> tuple[Scorer, dict]:
    corpus = dataset.corpus_features["title_index"]
    if name == "popular":
        return PopularScorer(popularity, corpus), {}
    if name == "ease":
        chosen = select_lambda(dataset, config)
        columns = EaseColumns.of(popularity)
        weights = ease_weights(gram(columns.interactions(train)), chosen["lambda"])
        extra = {"lambda": chosen["lambda"], "validation": chosen}
        if columns.restricted:
            extra["restricted_to"] = (f"the {columns.size} most popular of {popularity.size} "
                                      "title ids; the others ranked below them by popularity")
        return EaseScorer(weights, seen, corpus, columns), extra
    if name == "ease-live":
        ease, extra = _scorer("ease", dataset, config, train, seen, popularity)
        log = HistoryIndex.from_ratings(dataset.user_id, dataset.timestamp,
                                        dataset.features["title_index"])
        return LiveEaseScorer(ease, log, dataset.user_id, dataset.timestamp), extra
    if name == "recent":
        chosen = select_window(dataset, config)
        days = chosen["window_days"]
        every = np.arange(dataset.timestamp.size)    # the whole log: causal by time alone
        events = EventCounts.of(dataset.timestamp, dataset.features["title_index"][every],
                                popularity.size)
        return (RecentScorer(events, None if days is None else days * DAY_S, dataset.timestamp,
                             corpus), {"window_days": days, "validation": chosen})
    raise ValueError(f"unknown baseline {name!r}; choose from "
                     f"{', '.join(BASELINES + EXTRA_BASELINES)}")
