"""Train both stages on one backend, evaluate with the framework-agnostic metrics, report.

The seed's protocol: retrieval (two towers, in-batch softmax) then ranking (sigmoid on
rating >= 4), then top-k accuracy over the whole corpus on the test split, ranking metrics on the
test split, and nDCG@10 of the test positives before and after re-ranking 10 retrieved candidates.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import evaluation
from .backend import Backend, EpochCallback, History
from .config import BACKENDS, Config
from .dataset import Dataset

BACKEND_CLASSES = {"torch": ("torch_impl.backend", "TorchBackend"),
                   "tfrs": ("tfrs_impl.backend", "TfrsBackend")}


def backend_class(name: str):
    """Import a backend lazily, so the torch path never loads TensorFlow and vice versa."""
    if name not in BACKEND_CLASSES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKEND_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def make_backend(name: str, config: Config, dataset: Dataset) -> Backend:
    return backend_class(name)(config, dataset.spec)


def load_backend(name: str, directory: Path | str, config: Config | None = None) -> Backend:
    """A saved backend; ``config`` (same architecture) overrides runtime options such as the
    device."""
    return backend_class(name).load(Path(directory), config=config)


def evaluate_retrieval(backend: Backend, dataset: Dataset, config: Config) -> dict:
    """Top-k accuracy of the test split over the whole corpus: score-based (TFRS FactorizedTopK
    rule) from the embeddings, and id-based from the backend's index."""
    test = dataset.split.test
    queries = backend.query_embeddings(dataset.user_id[test], dataset.timestamp[test])
    truths = backend.candidate_embeddings(dataset.movie_title[test])
    corpus = backend.candidate_embeddings(dataset.corpus_titles)
    ks = tuple(k for k in config.eval.top_ks)
    score_based = evaluation.factorized_top_k_accuracy(queries, truths, corpus, ks=ks)
    k_max = min(max(ks), len(dataset.corpus_titles))
    _, rows = backend.retrieve(dataset.user_id[test], dataset.timestamp[test], k_max)
    corpus_ids = dataset.corpus_features["title_index"]
    id_based = evaluation.top_k_accuracy_from_ids(corpus_ids[rows],
                                                  dataset.features["title_index"][test], ks=ks)
    return {"top_k_accuracy": {str(k): float(v) for k, v in score_based.items()},
            "top_k_accuracy_index": {str(k): float(v) for k, v in id_based.items()}}


def evaluate_ranking(backend: Backend, dataset: Dataset) -> dict:
    test = dataset.split.test
    probs = backend.ranking_scores(dataset.user_id[test], dataset.timestamp[test],
                                   dataset.movie_title[test])
    labels = dataset.label[test]
    return {"binary_accuracy": float(evaluation.binary_accuracy(labels, probs)),
            "auc": float(evaluation.auc(labels, probs)),
            "log_loss": float(evaluation.log_loss(labels, probs))}


@dataclass(frozen=True)
class Recommendations:
    """Two-stage output for N queries: C candidates each, in retrieval order.

    ``rows`` [N, C] int64 positions into the indexed titles, ``retrieval_scores`` [N, C] float32
    (descending), ``ranking_scores`` [N, C] float32 (the ranking model's probability of each
    candidate). :meth:`reranked` orders each row by ranking score (stable: ties keep the
    retrieval order, see ``evaluation.rerank``).
    """

    rows: np.ndarray
    retrieval_scores: np.ndarray
    ranking_scores: np.ndarray

    def reranked(self) -> np.ndarray:
        """[N, C] column order of each row by descending ranking score (stable)."""
        return np.argsort(-self.ranking_scores, axis=1, kind="stable")


def recommend(backend: Backend, user_ids: np.ndarray, timestamps: np.ndarray,
              num_candidates: int, titles: np.ndarray) -> Recommendations:
    """THE retrieve -> score -> re-rank path (evaluation, ``twostage recommend`` and the parity
    suite all call it): retrieve ``num_candidates`` from the built index, score each candidate
    with the ranking model. ``titles`` [M] are the indexed titles (``build_index``'s input)."""
    scores, rows = backend.retrieve(user_ids, timestamps, num_candidates)
    c = rows.shape[1]
    ranking = backend.ranking_scores(np.repeat(np.asarray(user_ids, dtype=object), c),
                                     np.repeat(np.asarray(timestamps, dtype=np.int64), c),
                                     np.asarray(titles, dtype=object)[rows].ravel())
    return Recommendations(rows, scores, ranking.reshape(rows.shape))


def evaluate_two_stage(backend: Backend, dataset: Dataset, config: Config) -> dict:
    """The seed's protocol: every test positive is a query; its movie is the one relevant item."""
    test = dataset.split.test
    pos = test[dataset.label[test] == 1]
    if len(pos) == 0:
        raise ValueError("the test split has no positive ratings; nothing to re-rank")
    c = min(config.eval.num_candidates, len(dataset.corpus_titles))
    recs = recommend(backend, dataset.user_id[pos], dataset.timestamp[pos], c,
                     dataset.corpus_titles)
    ids = dataset.corpus_features["title_index"][recs.rows]
    metrics = evaluation.two_stage_metrics(ids, recs.ranking_scores,
                                           dataset.features["title_index"][pos],
                                           k=min(config.eval.ndcg_k, c))
    metrics["num_queries"] = int(len(pos))
    return metrics


def check_trainable(dataset: Dataset, config: Config) -> None:
    """Fail before training on data the protocol cannot evaluate (one line, the fix)."""
    label = dataset.label
    if not len(dataset.split.train):
        raise ValueError("the training split is empty; check the data and train_fraction")
    if not label[dataset.split.test].any():
        raise ValueError(f"no test rating reaches rating_threshold="
                         f"{config.data.rating_threshold} (ranking label 1), so the two-stage "
                         "nDCG has no query; use data with higher ratings or lower "
                         "--rating-threshold")
    if label[dataset.split.train].all() or not label[dataset.split.train].any():
        raise ValueError("the training labels are all equal (every rating above or below "
                         f"rating_threshold={config.data.rating_threshold}); the ranking model "
                         "has nothing to learn: change --rating-threshold")


def evaluate(backend: Backend, dataset: Dataset, config: Config) -> dict:
    backend.build_index(dataset.corpus_titles)
    return {"retrieval": evaluate_retrieval(backend, dataset, config),
            "ranking": evaluate_ranking(backend, dataset),
            "two_stage": evaluate_two_stage(backend, dataset, config)}


def run_backend(name: str, dataset: Dataset, config: Config,
                on_epoch: EpochCallback | None = None
                ) -> tuple[Backend, dict, dict[str, History]]:
    """Train both stages, evaluate -> (backend, report, histories). Saving is the caller's
    (``twostage.rundir.write`` writes a whole run folder at once)."""
    start = time.perf_counter()
    backend = make_backend(name, config, dataset)
    t0 = time.perf_counter()
    retrieval_history = backend.fit_retrieval(dataset, on_epoch=on_epoch)
    t1 = time.perf_counter()
    ranking_history = backend.fit_ranking(dataset, on_epoch=on_epoch)
    t2 = time.perf_counter()
    report = evaluate(backend, dataset, config)
    t3 = time.perf_counter()
    report["timings_s"] = {"retrieval_fit": t1 - t0, "ranking_fit": t2 - t1,
                           "evaluation": t3 - t2, "total": t3 - start}
    report["config"] = config.to_dict()
    report["dataset"] = dataset.facts()
    histories = {"retrieval": retrieval_history, "ranking": ranking_history}
    report["history"] = {k: h.to_dict() for k, h in histories.items()}
    return backend, report, histories


def flatten(report: dict, prefix: str = "") -> dict[str, float]:
    """{'a': {'b': 1}} -> {'a.b': 1}, numbers only (for tables and comparisons)."""
    out: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
