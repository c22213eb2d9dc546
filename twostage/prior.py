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
"""
from __future__ import annotations

import numpy as np

PRIOR_BETAS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def log_prior(train_titles: np.ndarray, num_titles: int) -> np.ndarray:
    """[R] title indices of the training ratings -> [T] float32 log((n_t + 1) / (R + T))."""
    counts = np.bincount(np.asarray(train_titles, dtype=np.int64), minlength=num_titles)
    return np.log((counts + 1.0) / (counts.sum() + num_titles)).astype(np.float32)


class PriorBackend:
    """A trained backend whose retrieval scores gain ``beta * log q``: what
    ``twostage.pipeline``'s evaluation calls (embeddings, ``build_index``, ``retrieve``,
    ``ranking_scores``, ``config``, ``group``), the rest left to ``backend``.

    ``titles`` [M] str and ``title_index`` [M] int: the corpus (every title a query or a
    candidate can name) and its title indices; ``log_q`` [T] from :func:`log_prior`.
    ``retrieve`` is exact (a numpy top-k of the augmented scores, ties by corpus row) whatever
    index the backend was built with."""

    def __init__(self, backend, titles: np.ndarray, title_index: np.ndarray,
                 log_q: np.ndarray, beta: float) -> None:
        self.backend, self.beta = backend, float(beta)
        self.config = backend.config
        self.group = getattr(backend, "group", None)
        self._prior = dict(zip(np.asarray(titles, dtype=object).tolist(),
                               (self.beta * log_q[np.asarray(title_index)]).tolist()))
        self._corpus: np.ndarray | None = None

    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] -> [N, D + 1] float32: the model's query and a 1."""
        q = self.backend.query_embeddings(user_ids, timestamps)
        return np.hstack([q, np.ones((q.shape[0], 1), np.float32)])

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D + 1] float32: the model's candidate and beta * log q of its title
        (KeyError naming a title outside the corpus)."""
        c = self.backend.candidate_embeddings(titles)
        prior = np.array([self._prior[t] for t in np.asarray(titles, dtype=object).tolist()],
                         dtype=np.float32)
        return np.hstack([c, prior[:, None]])

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
