"""Train both stages on one backend, evaluate with the framework-agnostic metrics, report.

The seed's protocol: retrieval (two towers, in-batch softmax) then ranking (sigmoid on
rating >= 4), then top-k accuracy over the whole corpus on the test split, ranking metrics on the
test split, and nDCG@10 of the test positives before and after re-ranking 10 retrieved candidates.

Every retrieval figure is also reported under ``exclude_seen`` (``*_exclude_seen`` keys; the
titles the user rated in training leave the ranking, see ``twostage.evaluation``), with the
baselines of ``twostage.baselines`` (random, most-popular, EASE) scored by the same code, and a
comparison of the model against each (``vs_baselines``). ``config.eval.eval_queries`` evaluates
a seeded sample of the test rows; every accuracy carries its binomial standard error.
"""
from __future__ import annotations

import dataclasses
import importlib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import evaluation
from .backend import Backend, EpochCallback, History
from .baselines import DAY_S, EventCounts, evaluate_baselines, num_titles, validation_queries
from .config import BACKENDS, Config
from .dataset import Dataset
from .data.split import Split
from .group import Group, SingleProcess, shard
from .prior import PRIOR_BETAS, PriorBackend, RecentBackend, asking_ids, log_prior
from .recipes import RecipeData, live_recipe, user_dropout_view
from .schedule import validation_rows

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


def evaluation_rows(dataset: Dataset, config: Config) -> np.ndarray:
    """The test rows every metric is computed on: all of them, or the seeded sample of
    ``config.eval.eval_queries`` (in test-split order)."""
    return validation_rows(dataset.split.test, config)


def seen_titles(dataset: Dataset) -> evaluation.SeenTitles:
    """What ``exclude_seen`` removes: the training titles of each user, by title index."""
    train = dataset.split.train
    return evaluation.SeenTitles(dataset.features["user_index"][train],
                                 dataset.features["title_index"][train],
                                 dataset.corpus_features["title_index"])


def exclusions(dataset: Dataset, rows: np.ndarray,
               seen: evaluation.SeenTitles | None = None) -> evaluation.QueryExclusions:
    """``exclude_seen`` exclusions of the rating rows ``rows`` (their users and true titles),
    built block by block as the evaluation consumes them."""
    seen = seen or seen_titles(dataset)
    return seen.for_queries(dataset.features["user_index"][rows],
                            dataset.features["title_index"][rows])


def _accuracies(ks: tuple[int, ...], counts: np.ndarray, n: int) -> tuple[dict, dict]:
    """Integer hit counts per k -> ({k: accuracy}, {k: binomial standard error})."""
    acc = {str(k): int(c) / n for k, c in zip(ks, counts)}
    return acc, {k: evaluation.standard_error(v, n) for k, v in acc.items()}


def evaluate_retrieval(backend: Backend, dataset: Dataset, config: Config,
                       rows: np.ndarray | None = None,
                       seen: evaluation.SeenTitles | None = None) -> dict:
    """Top-k accuracy of the test split (or ``rows``) over the whole corpus, under both
    protocols: score-based (TFRS FactorizedTopK rule) from the embeddings, and id-based from the
    backend's index. Each process of the backend's group scores its shard of the queries; the
    integer hit counts are summed, so the result equals the single-process one exactly."""
    group = _group(backend)
    rows = evaluation_rows(dataset, config) if rows is None else rows
    mine = shard(rows, group, config.eval.eval_batch_size)
    ks = tuple(config.eval.top_ks)
    users, stamps = dataset.user_id[mine], dataset.timestamp[mine]
    excluded = exclusions(dataset, mine, seen)
    queries = backend.query_embeddings(users, stamps)
    truths = backend.candidate_embeddings(dataset.movie_title[mine])
    corpus = backend.candidate_embeddings(dataset.corpus_titles)
    # exclude_seen is counted in numpy, in the same pass as the seed protocol; on an
    # accelerator the backend counts the seed protocol on the device (same tie rules).
    counted = evaluation.count_scoring_higher(queries, truths, corpus, exclude=excluded)
    greater, finite = counted.greater, counted.finite
    if config.train.device != "cpu":  # the Backend protocol's count on the accelerator
        greater, finite = backend.scoring_higher(queries, truths, corpus)
    k_max = min(max(ks), len(dataset.corpus_titles))
    truth = dataset.features["title_index"][mine][:, None]
    _, retrieved = backend.retrieve(users, stamps, k_max)
    _, unseen = retrieve_unseen(backend, users, stamps, k_max, excluded,
                                config.eval.eval_batch_size)
    # every figure as a per-query rank (hit at k iff rank < k), so subsets count alike
    ranks = ((greater, finite), _id_rank(_title_index(dataset, retrieved) == truth),
             (counted.greater_unseen, counted.finite),
             _id_rank(_title_index(dataset, unseen) == truth))
    masks = {None: np.ones(len(mine), dtype=bool),
             **excluded.seen.audiences(excluded.users, excluded.truths)}
    counts = group.all_sum(np.concatenate(
        [[int(m.sum()), *(c for r in ranks for c in evaluation.hits_at_k(r[0][m], r[1][m], ks))]
         for m in masks.values()]))
    per = 1 + len(ranks) * len(ks)
    blocks = {name: _retrieval_block(ks, counts[i * per:(i + 1) * per])
              for i, name in enumerate(masks)}
    return {**blocks.pop(None), "by_audience": blocks}


RETRIEVAL_FIGURES = ("top_k_accuracy", "top_k_accuracy_index", "top_k_accuracy_exclude_seen",
                     "top_k_accuracy_index_exclude_seen")


def _retrieval_block(ks: tuple[int, ...], counts: np.ndarray) -> dict:
    """[1 + 4 len(ks)] int (queries, then the hits of each of RETRIEVAL_FIGURES per k) ->
    the retrieval report of those queries (just ``num_queries`` when there are none)."""
    n, report, errors = int(counts[0]), {}, {}
    if n == 0:
        return {"num_queries": 0}
    for i, name in enumerate(RETRIEVAL_FIGURES):
        report[name], errors[name] = _accuracies(
            ks, counts[1 + i * len(ks):1 + (i + 1) * len(ks)], n)
    return {**report, "num_queries": n, "standard_error": errors}


def _id_rank(match: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """match [N, K] (retrieved id == true id, best first) -> (rank [N], finite [N]): the
    0-based position of the first match (K when none), so ``hits_at_k`` counts a hit at k
    exactly as ``evaluation.id_hits_at_k`` does."""
    found = match.any(axis=1) if match.shape[1] else np.zeros(match.shape[0], dtype=bool)
    first = match.argmax(axis=1) if match.shape[1] else np.zeros(match.shape[0], np.int64)
    return np.where(found, first, np.iinfo(np.int64).max).astype(np.int64), found


def _title_index(dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    """Title index of corpus rows [N, C]; padding (-1) gets -1, which matches no title."""
    rows = np.asarray(rows, dtype=np.int64)
    ids = dataset.corpus_features["title_index"][np.maximum(rows, 0)]
    return np.where(rows >= 0, ids, -1)


UNSEEN_SUB_BATCH = 512  # queries per retrieval call, grouped by how many titles they drop


def retrieve_unseen(backend: Backend, user_ids: np.ndarray, timestamps: np.ndarray, k: int,
                    exclude: evaluation.Exclusions | evaluation.QueryExclusions,
                    block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The backend's top-k after ``exclude_seen``: retrieve k + (rows excluded for the query)
    and keep the first k rows not excluded (``evaluation.drop_excluded``, as TFRS
    ``query_with_exclusions``). Exclusion counts vary tenfold between users (ml-100k: median
    144, max 582 rows), so each block of ``block`` queries is retrieved in sub-batches of
    ``UNSEEN_SUB_BATCH`` queries with similar counts, each asking only for k + its own largest
    count. Sub-batches depend only on the block (whole inference batches, as ``shard`` deals
    them), so torch.distributed shards get the single-process results exactly.
    -> scores [N, k'] float32, rows [N, k'] int64 (-1: padding), k' = min(k, corpus size)."""
    n = len(user_ids)
    width = None
    scores_out = rows_out = None
    for start in range(0, n, block):
        end = min(start + block, n)
        mine = exclude.slice(start, end)
        counts = mine.counts()
        order = np.argsort(counts, kind="stable")
        for lo in range(0, end - start, UNSEEN_SUB_BATCH):
            picked = order[lo:lo + UNSEEN_SUB_BATCH]
            extra = int(counts[picked].max(initial=0))
            scores, rows = backend.retrieve(user_ids[start + picked],
                                            timestamps[start + picked], k + extra)
            scores, rows = evaluation.drop_excluded(scores, rows, mine.take(picked), k)
            if scores_out is None:
                width = rows.shape[1]
                scores_out = np.empty((n, width), np.float32)
                rows_out = np.empty((n, width), np.int64)
            scores_out[start + picked], rows_out[start + picked] = scores, rows
    if scores_out is None:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return scores_out, rows_out


def evaluate_ranking(backend: Backend, dataset: Dataset, rows: np.ndarray | None = None
                     ) -> dict:
    """Ranking metrics of the test split (or ``rows``); shards' probabilities gathered in
    order (exact)."""
    group = _group(backend)
    rows = dataset.split.test if rows is None else rows
    mine = shard(rows, group, backend.config.eval.eval_batch_size)
    probs = group.all_gather(backend.ranking_scores(
        dataset.user_id[mine], dataset.timestamp[mine], dataset.movie_title[mine]))
    labels = dataset.label[rows]
    accuracy = float(evaluation.binary_accuracy(labels, probs))
    return {"binary_accuracy": accuracy,
            "auc": float(evaluation.auc(labels, probs)),
            "log_loss": float(evaluation.log_loss(labels, probs)),
            "num_queries": int(len(rows)),
            "standard_error": {"binary_accuracy": evaluation.standard_error(accuracy,
                                                                            len(rows))}}


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
              num_candidates: int, titles: np.ndarray,
              exclude: evaluation.QueryExclusions | None = None, block: int = 4096
              ) -> Recommendations:
    """THE retrieve -> score -> re-rank path (evaluation, ``twostage recommend`` and the parity
    suite all call it): retrieve ``num_candidates`` from the built index, score each candidate
    with the ranking model. ``titles`` [M] are the indexed titles (``build_index``'s input).
    ``exclude``: per-query corpus rows never to recommend (``exclude_seen``): the candidates
    are the first ``num_candidates`` after exclusion (:func:`retrieve_unseen`). Padding rows
    (-1: too few remain after exclusion, or an approximate index found too few) get ranking
    score -inf, so they stay last after re-ranking, and are never scored as a title."""
    if exclude is None:
        scores, rows = backend.retrieve(user_ids, timestamps, num_candidates)
    else:
        scores, rows = retrieve_unseen(backend, user_ids, timestamps, num_candidates, exclude,
                                       block)
    # An approximate index pads with row -1 too (too few candidates in the probed cells).
    valid = rows >= 0
    per_row = valid.sum(axis=1)
    ranking = np.full(rows.shape, -np.inf, dtype=np.float32)
    ranking[valid] = backend.ranking_scores(
        np.repeat(np.asarray(user_ids, dtype=object), per_row),
        np.repeat(np.asarray(timestamps, dtype=np.int64), per_row),
        np.asarray(titles, dtype=object)[rows[valid]])
    return Recommendations(rows, scores, ranking)


def evaluate_two_stage(backend: Backend, dataset: Dataset, config: Config,
                       rows: np.ndarray | None = None, exclude_seen: bool = False,
                       seen: evaluation.SeenTitles | None = None) -> dict:
    """The seed's protocol: every test positive (of ``rows``, default the test split) is a
    query; its movie is the one relevant item. ``exclude_seen``: the candidates are retrieved
    after removing the user's training titles (``retrieve N candidates after exclusion``)."""
    rows = dataset.split.test if rows is None else rows
    pos = rows[dataset.label[rows] == 1]
    if len(pos) == 0:
        raise ValueError("the test split has no positive ratings; nothing to re-rank")
    c = min(config.eval.num_candidates, len(dataset.corpus_titles))
    group = _group(backend)
    mine = shard(pos, group, config.eval.eval_batch_size)
    exclude = exclusions(dataset, mine, seen) if exclude_seen else None
    recs = recommend(backend, dataset.user_id[mine], dataset.timestamp[mine], c,
                     dataset.corpus_titles, exclude=exclude, block=config.eval.eval_batch_size)
    ids = group.all_gather(_title_index(dataset, recs.rows))
    ranking, truth = group.all_gather(recs.ranking_scores), dataset.features["title_index"][pos]
    k = min(config.eval.ndcg_k, c)
    audiences = (seen or seen_titles(dataset)).audiences(dataset.features["user_index"][pos],
                                                          truth)
    return {**_two_stage_block(ids, ranking, truth, k),
            "by_audience": {name: _two_stage_block(ids[m], ranking[m], truth[m], k)
                            for name, m in audiences.items()}}


def _two_stage_block(ids: np.ndarray, ranking: np.ndarray, truth: np.ndarray, k: int) -> dict:
    """``evaluation.two_stage_metrics`` of N queries with their count and the hit rates'
    standard errors (just ``num_queries`` when N is 0)."""
    if len(truth) == 0:
        return {"num_queries": 0}
    metrics = evaluation.two_stage_metrics(ids, ranking, truth, k=k)
    metrics["num_queries"] = int(len(truth))
    metrics["standard_error"] = {name: evaluation.standard_error(value, len(truth))
                                 for name, value in metrics.items() if name.startswith("hit@")}
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
    """Every model metric under both protocols, on ``evaluation_rows`` (the test split or its
    seeded ``eval_queries`` sample); with ``config.eval.live_history`` the histories read the
    whole rating log before each query (:func:`live_histories`)."""
    every = np.arange(len(dataset.user_id))
    with live_histories(backend, dataset, **live_rows(dataset, config, every,
                                                      dataset.split.train,
                                                      config.eval.cold_as_oov)):
        report = _evaluate(backend, dataset, config)
    if config.eval.live_history:
        report["live_history"] = ("histories read every rating strictly before the query's "
                                  "second (test-period ratings included); twostage.recipes."
                                  "live_recipe")
    return report


def warm_rows(dataset: Dataset, rows: np.ndarray, known_rows: np.ndarray) -> np.ndarray:
    """[R] bool aligned with ``np.unique(rows)``: the rating's user has a rating among
    ``known_rows`` (the split the model trained on)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    users = dataset.features["user_index"]
    return np.isin(users[rows], users[np.asarray(known_rows)])


def live_rows(dataset: Dataset, config: Config, log_rows: np.ndarray, known_rows: np.ndarray,
              cold_as_oov: bool) -> dict:
    """:func:`live_histories`' arguments for ``config.eval.live_history`` (else ``rows``
    None): the histories read ``log_rows``, a user without a rating among ``known_rows`` keyed
    as it asks (``prior.asking_ids``) when ``cold_as_oov``."""
    if not config.eval.live_history:
        return {"rows": None}
    rows = np.unique(np.asarray(log_rows, dtype=np.int64))   # warm_rows' alignment
    oov = ~warm_rows(dataset, rows, known_rows) if cold_as_oov else None
    return {"rows": rows, "user_ids": asking_ids(dataset.user_id[rows], oov)}


def _evaluate(backend: Backend, dataset: Dataset, config: Config) -> dict:
    beta = config.eval.prior_beta
    backend = with_recent(with_prior(backend, dataset, beta), dataset, config)
    backend.build_index(dataset.corpus_titles)
    rows, seen = evaluation_rows(dataset, config), seen_titles(dataset)
    report = {"retrieval": evaluate_retrieval(backend, dataset, config, rows, seen),
              "ranking": evaluate_ranking(backend, dataset, rows),
              "two_stage": evaluate_two_stage(backend, dataset, config, rows, seen=seen),
              "two_stage_exclude_seen": evaluate_two_stage(backend, dataset, config, rows,
                                                           exclude_seen=True, seen=seen),
              "eval_sample": sample_facts(dataset, config, rows)}
    if beta:
        report["popularity_prior"] = {
            "beta": beta, "retrieval": "exact top-k of score + beta * log q (twostage.prior)",
            "q": "share of the training ratings, (n + 1) / (N + T)"}
    if isinstance(backend, RecentBackend):
        e = config.eval
        report["recent_prior"] = {
            "beta_warm": backend.beta_warm, "beta_cold": backend.beta_cold,
            "window_days": e.recent_window_days or None, "cold_as_oov": e.cold_as_oov,
            "retrieval": "exact top-k of score + beta * log(1 + the title's ratings in the "
                         "window before the query's time, whole log) (twostage.prior)"}
    return report


def with_recent(backend: Backend, dataset: Dataset, config: Config) -> Backend:
    """``backend`` with ``config.eval``'s recent-popularity prior and cold users' OOV route
    (``prior.RecentBackend``: counts of the whole log before each query's time; warm = a
    training rating); ``backend`` itself when neither is on."""
    e = config.eval
    if not (any(e.recent_betas) or e.cold_as_oov):
        return backend
    events = EventCounts.of(dataset.timestamp, dataset.features["title_index"],
                            num_titles(dataset))
    return RecentBackend(backend, dataset.corpus_titles, dataset.corpus_features["title_index"],
                         events, e.recent_window_days * DAY_S or None, *e.recent_betas,
                         np.unique(dataset.user_id[dataset.split.train]), e.cold_as_oov)


@contextmanager
def live_histories(backend: Backend, dataset: Dataset, rows: np.ndarray | None,
                   user_ids: np.ndarray | None = None):
    """While open, ``backend``'s histories read the rating ``rows`` of ``dataset`` (asked for
    as ``user_ids`` [R], default their users' ids) instead of its training split's; the
    trained lookups are attached again on exit (a later save or export never stores test
    ratings). ``rows`` None: nothing changes.

    Raises:
        ValueError: ``rows`` given but the backend has no history lookups.
    """
    if rows is None:
        yield backend
        return
    trained = backend.recipe
    ids = dataset.user_id[rows] if user_ids is None else user_ids
    backend.attach_recipe_data(live_recipe(trained, ids, dataset.timestamp[rows],
                                           dataset.features["title_index"][rows]))
    try:
        yield backend
    finally:
        backend.attach_recipe_data(trained)


def with_prior(backend: Backend, dataset: Dataset, beta: float) -> Backend:
    """``backend`` whose retrieval scores gain ``beta * log q(title)`` (``twostage.prior``; q
    from ``dataset.split.train``); ``backend`` itself when beta is 0."""
    if not beta:
        return backend
    train_titles = dataset.features["title_index"][dataset.split.train]
    return PriorBackend(backend, dataset.corpus_titles, dataset.corpus_features["title_index"],
                        log_prior(train_titles, num_titles(dataset)), beta)


def select_prior_beta(name: str, dataset: Dataset, config: Config,
                      betas: tuple[float, ...] = PRIOR_BETAS) -> dict:
    """The popularity prior's beta by validation: a retrieval model of backend ``name`` trained
    on the training split less its validation slice (``baselines.validation_queries``: for the
    temporal split, its latest ratings), each beta scored by ``exclude_seen`` top-k accuracy
    (k = ``config.eval.ndcg_k``) of the slice; exact ties keep the smaller beta. The test split
    is never read. Costs one retrieval training. -> {"beta", "scores": {beta: acc}, "metric",
    "num_queries", "num_fit_ratings"}."""
    fit_rows, val_rows = validation_queries(dataset, config)
    held_out = dataclasses.replace(dataset, split=Split(train=fit_rows, test=val_rows))
    backend = make_backend(name, config, held_out)
    fit_retrieval(backend, held_out, config)
    k, scores = int(config.eval.ndcg_k), {}
    for beta in sorted(float(b) for b in betas):
        prior = PriorBackend(backend, held_out.corpus_titles,
                             held_out.corpus_features["title_index"],
                             log_prior(held_out.features["title_index"][fit_rows],
                                       num_titles(held_out)), beta)
        prior.build_index(held_out.corpus_titles)
        top = evaluate_retrieval(prior, held_out, config.replace(top_ks=(k,)), val_rows)
        scores[f"{beta:g}"] = top["top_k_accuracy_exclude_seen"][str(k)]
    best = max(scores, key=lambda b: (scores[b], -float(b)))
    return {"beta": float(best), "scores": scores,
            "metric": f"top-{k} accuracy, exclude_seen, on the validation slice",
            "num_queries": int(len(val_rows)), "num_fit_ratings": int(len(fit_rows))}


AUDIENCE_BLOCKS = ("retrieval", "two_stage", "two_stage_exclude_seen")


def audience_view(report: dict, audience: str) -> dict:
    """One audience (``evaluation.AUDIENCES``: warm users, cold users, new titles) of a model
    report, shaped like the report ({"num_queries", "retrieval", "two_stage",
    "two_stage_exclude_seen"}, from each block's ``by_audience``), so ``protocol_figures`` and
    the report tables read an audience as they read the whole test set; a baseline entry's
    ``by_audience[audience]`` as it is. {"num_queries": 0} when the report has none."""
    if "retrieval" not in report:
        return report.get("by_audience", {}).get(audience, {"num_queries": 0})
    view = {block: report[block]["by_audience"][audience] for block in AUDIENCE_BLOCKS
            if "by_audience" in report.get(block, {})}
    if "retrieval" not in view:
        return {"num_queries": 0}
    return {"num_queries": view["retrieval"]["num_queries"], **view}


def sample_facts(dataset: Dataset, config: Config, rows: np.ndarray) -> dict:
    """What was evaluated: N queries of the test split (a seeded sample or all of it)."""
    return {"num_queries": int(len(rows)), "num_test_rows": int(len(dataset.split.test)),
            "sampled": bool(len(rows) < len(dataset.split.test)),
            "eval_queries": config.eval.eval_queries, "seed": int(config.seed),
            "exclude_seen": "by title: every corpus row of a title the user rated in training, "
                            "except the query's own title"}


def fit_retrieval(backend: Backend, dataset: Dataset, config: Config,
                  on_epoch: EpochCallback | None = None) -> History:
    """``backend.fit_retrieval`` on ``dataset``, or with ``config.train.user_dropout`` on its
    ``recipes.user_dropout_view`` (the same anonymous rows on both backends), the recipe tables
    (histories) of ``dataset`` itself attached afterwards for inference."""
    rate = config.train.user_dropout
    view = user_dropout_view(dataset, rate, config.seed, config.train.dropout_keeps_history)
    history = backend.fit_retrieval(view, on_epoch=on_epoch)
    if rate:
        backend.attach_recipe_data(RecipeData.from_dataset(dataset, config))
    return history


def run_backend(name: str, dataset: Dataset, config: Config,
                on_epoch: EpochCallback | None = None, baselines: dict | None = None
                ) -> tuple[Backend, dict, dict[str, History]]:
    """Train both stages, evaluate -> (backend, report, histories). Saving is the caller's
    (``twostage.rundir.write`` writes a whole run folder at once). ``baselines``: the report of
    ``twostage.baselines.evaluate_baselines`` on the same data and config (computed here when
    None; pass it to share one computation between backends); the report gets it under
    ``baselines`` and the model's comparison with each under ``vs_baselines``."""
    start = time.perf_counter()
    backend = make_backend(name, config, dataset)
    t0 = time.perf_counter()
    retrieval_history = fit_retrieval(backend, dataset, config, on_epoch)
    t1 = time.perf_counter()
    ranking_history = backend.fit_ranking(dataset, on_epoch=on_epoch)
    t2 = time.perf_counter()
    report = evaluate(backend, dataset, config)
    t3 = time.perf_counter()
    if baselines is None:
        baselines = evaluate_baselines(dataset, config)
    report["baselines"] = baselines
    report["vs_baselines"] = compare_to_baselines(report, baselines)
    # setup: building the backend (imports of the framework, device start-up, the models)
    report["timings_s"] = {"setup": t0 - start, "retrieval_fit": t1 - t0, "ranking_fit": t2 - t1,
                           "evaluation": t3 - t2, "total": t3 - start}
    report["config"] = config.to_dict()
    report["dataset"] = dataset.facts()
    histories = {"retrieval": retrieval_history, "ranking": ranking_history}
    report["history"] = {k: h.to_dict() for k, h in histories.items()}
    return backend, report, histories


PROTOCOLS = ("seed", "exclude_seen")


def protocol_figures(report: dict, protocol: str, k: int) -> dict[str, float]:
    """The compared figures of a model report or a baseline entry under one protocol:
    ``top_k_accuracy.<k>`` for every k and ``ndcg@<k>`` (the model's after re-ranking, a
    baseline's of its own order)."""
    suffix = "" if protocol == "seed" else "_exclude_seen"
    acc = (report.get("retrieval", report)).get("top_k_accuracy" + suffix, {})
    out = {f"top_k_accuracy.{key}": float(v) for key, v in acc.items()}
    two = report.get("two_stage" + suffix) or report.get("positives" + suffix, {})
    ndcg = two.get(f"ndcg@{k}_reranked", two.get(f"ndcg@{k}"))
    if ndcg is not None:
        out[f"ndcg@{k}"] = float(ndcg)
    return out


def compare_to_baselines(report: dict, baselines: dict) -> dict:
    """By how much the model beats (or trails) each baseline: per baseline, protocol and
    figure, ``model``, ``baseline``, ``difference`` (model - baseline) and ``ratio``
    (model / baseline; absent when the baseline scored 0). Skipped baselines are left out."""
    k = next((int(name.split("@")[1].split("_")[0]) for name in report.get("two_stage", {})
              if name.startswith("ndcg@")), 10)
    out: dict = {}
    for name, entry in baselines.get("models", {}).items():
        if entry.get("skipped"):
            continue
        out[name] = {}
        for protocol in PROTOCOLS:
            mine, theirs = (protocol_figures(report, protocol, k),
                            protocol_figures(entry, protocol, k))
            out[name][protocol] = {
                figure: {"model": mine[figure], "baseline": theirs[figure],
                         "difference": mine[figure] - theirs[figure],
                         **({"ratio": mine[figure] / theirs[figure]} if theirs[figure] else {})}
                for figure in mine if figure in theirs}
    return out


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
