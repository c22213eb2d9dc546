"""The popularity prior added back at inference: retrieval score + beta * log q(title).

logQ training (``use_sampling_probability``) subtracts each title's log sampling probability
from its training logit, so the trained scores leave popularity out by design; under a temporal
split, where most test users are new, popularity is most of what can be known. This module adds
``beta * log q`` back to every retrieval score, q the title's share of the TRAINING ratings
(add-one smoothed: (n_t + 1) / (N + T), so a title never rated in training gets the lowest
prior, not -inf). It is done in the shared evaluation, on any backend's embeddings, by one extra
embedding column: queries get a 1, candidates ``beta * log q``, so the score-based metric, the
exclusions and the tie rules stay those of the model (``twostage.evaluation``). ``beta`` is
chosen on a validation slice of the training split (``twostage.pipeline.select_prior_beta``).

:class:`RecentBackend` adds recent popularity the same way (issue 26; ``--recent-beta``): beta *
log(1 + the title's ratings in a window before the query's time), one column per title, and
lets cold users ask through the OOV user row (``--cold-as-oov``). ``twostage.hybrid`` scores
the same sum by the baselines' rule and chooses its window and betas on validation.
"""
from __future__ import annotations

import numpy as np

PRIOR_BETAS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def log_prior(train_titles: np.ndarray, num_titles: int) -> np.ndarray:
    """[R] title indices of the training ratings -> [T] float32 log((n_t + 1) / (R + T))."""
    counts = np.bincount(np.asarray(train_titles, dtype=np.int64), minlength=num_titles)
    return np.log((counts + 1.0) / (counts.sum() + num_titles)).astype(np.float32)


class AugmentedBackend:
    """A trained backend whose retrieval score gains ``extra_query . extra_candidate``: one or
    more columns appended to each query and candidate embedding, so the score-based metric, the
    exclusions and the tie rules stay the model's (``twostage.evaluation``). What
    ``twostage.pipeline``'s evaluation calls (embeddings, ``build_index``, ``retrieve``,
    ``ranking_scores``, ``scoring_higher``, ``config``, ``group``); ``retrieve`` is exact (a
    numpy top-k of the augmented scores, ties by corpus row) whatever index the backend has.
    Subclasses give :meth:`extra_query`, :meth:`extra_candidate` and may rename the users a
    query asks as (:meth:`asks_as`)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.config = backend.config
        self.group = getattr(backend, "group", None)
        self._corpus: np.ndarray | None = None

    def asks_as(self, user_ids: np.ndarray) -> np.ndarray:
        """[N] the ids the query tower is given (default: ``user_ids``)."""
        return user_ids

    def extra_query(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N, E] float32 columns appended to the queries."""
        raise NotImplementedError

    def extra_candidate(self, titles: np.ndarray) -> np.ndarray:
        """[M, E] float32 columns appended to the candidates."""
        raise NotImplementedError

    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] -> [N, D + E] float32: the model's query (asked as :meth:`asks_as`) and
        :meth:`extra_query`."""
        q = self.backend.query_embeddings(self.asks_as(user_ids), timestamps)
        return np.hstack([q, self.extra_query(user_ids, timestamps)]).astype(np.float32)

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D + E] float32: the model's candidate and :meth:`extra_candidate`."""
        c = self.backend.candidate_embeddings(titles)
        return np.hstack([c, self.extra_candidate(titles)]).astype(np.float32)

    def build_index(self, titles: np.ndarray) -> None:
        self._corpus = self.candidate_embeddings(titles)

    def retrieve(self, user_ids: np.ndarray, timestamps: np.ndarray, k: int,
                 block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the augmented scores: scores [N, k'] float32 (descending, ties by
        corpus row), rows [N, k'] int64, k' = min(k, M)."""
        if self._corpus is None:
            raise RuntimeError("call build_index(corpus titles) before retrieve")
        q = self.query_embeddings(user_ids, timestamps)
        width = min(int(k), self._corpus.shape[0])
        rows = np.empty((q.shape[0], width), np.int64)
        scores = np.empty((q.shape[0], width), np.float32)
        for start in range(0, q.shape[0], block):
            s = q[start:start + block] @ self._corpus.T
            order = np.argsort(-s, axis=1, kind="stable")[:, :width]
            rows[start:start + block] = order
            scores[start:start + block] = np.take_along_axis(s, order, axis=1)
        return scores, rows

    def ranking_scores(self, user_ids: np.ndarray, timestamps: np.ndarray, titles: np.ndarray
                       ) -> np.ndarray:
        return self.backend.ranking_scores(user_ids, timestamps, titles)

    def scoring_higher(self, queries: np.ndarray, truths: np.ndarray, corpus: np.ndarray,
                       budget_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
        """The backend's count (``Backend.scoring_higher``) of the augmented embeddings."""
        return self.backend.scoring_higher(queries, truths, corpus, budget_bytes)


class PriorBackend(AugmentedBackend):
    """``backend`` whose retrieval scores gain ``beta * log q``: queries get a 1, candidates
    ``beta * log q`` of their title. ``titles`` [M] str and ``title_index`` [M] int: the
    corpus (every title a query or a candidate can name) and its title indices; ``log_q`` [T]
    from :func:`log_prior`."""

    def __init__(self, backend, titles: np.ndarray, title_index: np.ndarray,
                 log_q: np.ndarray, beta: float) -> None:
        super().__init__(backend)
        self.beta = float(beta)
        self._prior = dict(zip(np.asarray(titles, dtype=object).tolist(),
                               (self.beta * log_q[np.asarray(title_index)]).tolist()))

    def extra_query(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        return np.ones((len(user_ids), 1), np.float32)

    def extra_candidate(self, titles: np.ndarray) -> np.ndarray:
        """[M, 1] beta * log q of each title (KeyError naming a title outside the corpus)."""
        return np.array([self._prior[t] for t in np.asarray(titles, dtype=object).tolist()],
                        dtype=np.float32)[:, None]


# Prefix of the id a cold user asks as: no vocabulary holds it (the lookups' OOV row, index 0,
# Keras StringLookup's rule); + the user's own id, so a live history index can still key it.
UNKNOWN_USER = "\x1f<unknown user>"
MAX_RECENT_TITLES = 10_000   # the recent prior's dense [N, T] columns: a few thousand titles


def asking_ids(user_ids: np.ndarray, oov: np.ndarray | None) -> np.ndarray:
    """[R] object: ``user_ids``, those ``oov`` marks as ``UNKNOWN_USER + id`` (no vocabulary
    holds it: the OOV row; one id per user, so a live history index keys each one's ratings)."""
    users = np.asarray(user_ids, dtype=object)
    if oov is None:
        return users
    return np.array([f"{UNKNOWN_USER}{u}" if o else u for u, o in zip(users.tolist(), oov)],
                    dtype=object)


class RecentBackend(AugmentedBackend):
    """``backend`` whose retrieval scores gain ``beta * log(1 + n(title, [t - window, t)))``
    (recent-popular's causal counts of ``events``, ``baselines.EventCounts``: the whole log
    before the query's time), beta ``beta_warm`` for a user of ``known_users`` (a training
    rating) and ``beta_cold`` for the others, who ask through the OOV row when
    ``cold_as_oov``. One column per title: the query carries its beta-weighted log counts, a
    candidate the one-hot of its title, so duplicate titles score alike. ``window_s`` None:
    every earlier rating.

    Raises:
        ValueError: a catalogue above ``MAX_RECENT_TITLES`` titles (the columns are dense).
    """

    def __init__(self, backend, titles: np.ndarray, title_index: np.ndarray, events,
                 window_s: float | None, beta_warm: float, beta_cold: float,
                 known_users: np.ndarray, cold_as_oov: bool = False) -> None:
        super().__init__(backend)
        num_titles = int(events.prefix.shape[1])
        if (beta_warm or beta_cold) and num_titles > MAX_RECENT_TITLES:
            raise ValueError(f"the recent-popularity prior scores {num_titles} titles densely "
                             f"(at most {MAX_RECENT_TITLES}); drop --recent-beta")
        self.events, self.window_s = events, window_s
        self.beta_warm, self.beta_cold = float(beta_warm), float(beta_cold)
        self.known = frozenset(np.asarray(known_users, dtype=object).astype(str).tolist())
        self.cold_as_oov = bool(cold_as_oov)
        self._title = dict(zip(np.asarray(titles, dtype=object).tolist(),
                               np.asarray(title_index, dtype=np.int64).tolist()))
        self._width = num_titles if (beta_warm or beta_cold) else 0

    def _cold(self, user_ids: np.ndarray) -> np.ndarray:
        return np.array([str(u) not in self.known for u in np.asarray(user_ids).tolist()],
                        dtype=bool)

    def asks_as(self, user_ids: np.ndarray) -> np.ndarray:
        return asking_ids(user_ids, self._cold(user_ids)) if self.cold_as_oov else user_ids

    def extra_query(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        if not self._width:
            return np.zeros((len(user_ids), 0), np.float32)
        counts = self.events.window(np.asarray(timestamps, dtype=np.int64), self.window_s)
        beta = np.where(self._cold(user_ids), self.beta_cold, self.beta_warm)
        return (beta[:, None] * np.log1p(counts)).astype(np.float32)

    def extra_candidate(self, titles: np.ndarray) -> np.ndarray:
        """[M, T] one-hot of each title's index (KeyError naming a title outside the corpus)."""
        ids = np.array([self._title[t] for t in np.asarray(titles, dtype=object).tolist()],
                       dtype=np.int64)
        out = np.zeros((ids.size, self._width), np.float32)
        if self._width:
            out[np.arange(ids.size), ids] = 1.0
        return out
