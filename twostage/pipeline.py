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
from .group import Group, SingleProcess, shard

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


def _group(backend: Backend) -> Group:
    """The processes the backend runs in (torch.distributed workers), else this one."""
    return getattr(backend, "group", None) or SingleProcess()


def evaluate_retrieval(backend: Backend, dataset: Dataset, config: Config) -> dict:
    """Top-k accuracy of the test split over the whole corpus: score-based (TFRS FactorizedTopK
    rule) from the embeddings, and id-based from the backend's index. Each process of the
    backend's group scores its shard of the queries; the integer hit counts are summed, so the
    result equals the single-process one exactly."""
    group, test = _group(backend), dataset.split.test
    mine = shard(test, group, config.eval.eval_batch_size)
    ks = tuple(config.eval.top_ks)
    corpus = backend.candidate_embeddings(dataset.corpus_titles)
    # On an accelerator the backend counts on the device (same tie rules); else numpy.
    on_device = config.train.device != "cpu" and hasattr(backend, "scoring_higher")
    count = backend.scoring_higher if on_device else evaluation.num_scoring_higher
    greater, finite = count(
        backend.query_embeddings(dataset.user_id[mine], dataset.timestamp[mine]),
        backend.candidate_embeddings(dataset.movie_title[mine]), corpus)
    k_max = min(max(ks), len(dataset.corpus_titles))
    _, rows = backend.retrieve(dataset.user_id[mine], dataset.timestamp[mine], k_max)
    match = (dataset.corpus_features["title_index"][rows]
             == dataset.features["title_index"][mine][:, None])
    counts = group.all_sum(np.concatenate([evaluation.hits_at_k(greater, finite, ks),
                                           evaluation.id_hits_at_k(match, ks)]))
    n = len(test)
    return {"top_k_accuracy": {str(k): int(c) / n for k, c in zip(ks, counts[:len(ks)])},
            "top_k_accuracy_index": {str(k): int(c) / n for k, c in zip(ks, counts[len(ks):])}}


def evaluate_ranking(backend: Backend, dataset: Dataset) -> dict:
    """Ranking metrics of the test split; shards' probabilities gathered in order (exact)."""
    group, test = _group(backend), dataset.split.test
    mine = shard(test, group, backend.config.eval.eval_batch_size)
    probs = group.all_gather(backend.ranking_scores(
        dataset.user_id[mine], dataset.timestamp[mine], dataset.movie_title[mine]))
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
    group = _group(backend)
    mine = shard(pos, group, config.eval.eval_batch_size)
    recs = recommend(backend, dataset.user_id[mine], dataset.timestamp[mine], c,
                     dataset.corpus_titles)
    ids = group.all_gather(dataset.corpus_features["title_index"][recs.rows])
    metrics = evaluation.two_stage_metrics(ids, group.all_gather(recs.ranking_scores),
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
