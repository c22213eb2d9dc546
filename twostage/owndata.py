"""Your own data, end to end: ``train(data, config, backend) -> Run``, then ``Run.report``,
``Run.recommend``, ``Run.save`` and :func:`load_run`.

A run trains the schema's towers (``{torch,tfrs}_impl.owndata.SchemaTrainer``), then the ranking
model when the data is labelled (or when ``ranking_negatives`` draws negatives for implicit
data), and evaluates them as the seed protocol does: top-k accuracy of the test interactions over
the whole corpus, nDCG@k of the test positives before and after re-ranking the retrieved
candidates, beside the random and most-popular baselines.
"""
from __future__ import annotations

import importlib
import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import evaluation, io
from .backend import UnsupportedOptionError
from .baselines import evaluate_baselines
from .config import Config
from .data.schema_data import Options, SchemaDataset
from .schema import Schema
from .schedule import validation_rows

log = logging.getLogger(__name__)
BACKENDS = {"torch": "torch_impl.owndata", "tfrs": "tfrs_impl.owndata"}
RUN_KIND = "schema run"
RUNS_KIND = "schema runs"   # --backend both: a schema run folder per backend
KINDS = (RUN_KIND, RUNS_KIND)
WEIGHTS = "weights.npz"
RUN_VERSION = 1


def check_schema_config(config: Config) -> None:
    """Refuse the options schema runs do not offer yet (UnsupportedOptionError naming the flag).

    Offered: the model sizes, the seed's tasks (temperature, hard negatives, accidental hits),
    Adagrad and batch options, the split, the evaluation options, one process on the CPU or a
    GPU in fp32.
    """
    refused = [(config.model.genres, "--genres"), (config.model.history, "--history"),
               (config.task.mixed_negatives, "--mixed-negatives"),
               (config.task.learn_temperature, "--learn-temperature"),
               (config.task.use_sampling_probability, "--use-sampling-probability"),
               (config.task.normalize, "--normalize"),
               (config.distributed.nproc > 1, "--nproc"),
               (config.train.compile, "--compile"), (config.train.cuda_graphs, "--cuda-graphs"),
               (config.train.precision != "fp32", "--precision")]
    names = [flag for on, flag in refused if on]
    if names:
        raise UnsupportedOptionError(
            f"{', '.join(names)}: not offered for --schema runs yet (MovieLens recipes and "
            "multi-process training read the seed's features); drop them")


def weight_file(directory: Path | str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (canonical weight names) as ``directory/weights.npz``, atomically."""
    return io.write_with(Path(directory) / WEIGHTS, lambda p: np.savez(p, **arrays))


def trainer_class(backend: str):
    """The SchemaTrainer of ``backend`` ("torch" or "tfrs"), imported on demand."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[backend]).SchemaTrainer


def load(schema: Schema | str | Path, config: Config | None = None,
         drop_unknown_items: bool = False) -> SchemaDataset:
    """Read and encode a schema's files.

    Args:
        schema: a :class:`Schema`, or the path of its TOML file.
        config: the split, buckets and tokens to encode with (default ``Config()``).
        drop_unknown_items: drop interactions whose item the items table lacks.
    Returns:
        The encoded :class:`SchemaDataset`.
    Raises:
        SchemaError, TableError: one line naming the file, the column and the fix.
    """
    if not isinstance(schema, Schema):
        schema = Schema.from_toml(schema)
    return SchemaDataset.load(schema, Options.from_config(config or Config()),
                              drop_unknown_items)


@dataclass
class Report:
    """What a run measured. ``metrics``: the model's figures; ``baselines``: {name: figures};
    ``stages``: the per-epoch losses of each trained stage; ``dataset``: facts;
    ``notes``: what the run skipped and why."""

    backend: str
    dataset: dict
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    stages: dict[str, list[float]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"version": RUN_VERSION, "backend": self.backend, "dataset": self.dataset,
                "metrics": self.metrics, "baselines": self.baselines, "stages": self.stages,
                "notes": self.notes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Report":
        return cls(d["backend"], d["dataset"], d["metrics"], d["baselines"], d["stages"],
                   list(d.get("notes", [])))

    def markdown(self) -> str:
        """The report as a Markdown table: model and baselines, one row each."""
        names = sorted({k for m in [self.metrics, *self.baselines.values()] for k in m})
        rows = [f"| {self.backend} model | " + " | ".join(_cell(self.metrics, n) for n in names)]
        rows += [f"| {b} | " + " | ".join(_cell(m, n) for n in names)
                 for b, m in self.baselines.items()]
        head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
        notes = "".join(f"\n- {n}" for n in self.notes)
        return head + "\n" + " |\n".join(rows) + " |\n" + notes


def _cell(metrics: Mapping[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"


@dataclass
class Run:
    """A trained schema run: the data, the config, the trainer and its :class:`Report`."""

    data: SchemaDataset
    config: Config
    trainer: Any
    report: Report

    def recommend(self, user_ids, k: int = 10, exclude_seen: bool = True) -> np.ndarray:
        """The top ``k`` item ids of each user, best first, by the retrieval towers.

        Args:
            user_ids: [N] ids as in the interactions (unknown users: the unknown row).
            k: items per user (at most the corpus size).
            exclude_seen: drop the items each user interacted with in the training split.
        Returns:
            [N, k] object array of item ids (str).
        """
        if not 1 <= k <= len(self.data.item_ids):
            raise ValueError(f"k={k} must be between 1 and the corpus size "
                             f"({len(self.data.item_ids)})")
        queries = self.trainer.query_embeddings(self.data.user_inputs(user_ids))
        corpus = self.trainer.candidate_embeddings(
            self.data.candidate_inputs(np.arange(len(self.data.item_ids))))
        scores = queries @ corpus.T
        if exclude_seen:
            seen = self.data.seen_items(self.data.split.train)
            for i, row in enumerate(_user_rows(self.data, user_ids)):
                scores[i, seen.get(int(row), [])] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return self.data.item_ids[top]

    def save(self, directory: Path | str, force: bool = False) -> Path:
        """Weights, config, report and schema source into a new run folder (atomically; an
        existing folder is replaced only if it is a schema run, or with ``force``)."""
        return io.replace_directory(directory, self.write, kind=RUN_KIND, force=force,
                                    extra_marker=self.meta())

    def meta(self) -> dict:
        """What the run folder's marker records: the backend and the schema file."""
        return {"version": RUN_VERSION, "backend": self.trainer.name,
                "schema": self.data.schema.source}

    def write(self, folder: Path) -> None:
        """The run's files into ``folder`` (:meth:`save` makes it atomic)."""
        self.trainer.save(folder)
        io.write_json(folder / "config.json", self.config.to_dict())
        io.write_json(folder / "report.json", self.report.to_dict())
        io.write_text(folder / "report.md", self.report.markdown())


def save_runs(runs: list[Run], directory: Path | str, force: bool = False) -> Path:
    """One run: :meth:`Run.save`. Several (``--backend both``): one folder holding a schema
    run folder per backend, written atomically as a whole."""
    if len(runs) == 1:
        return runs[0].save(directory, force=force)

    def write(tmp: Path) -> None:
        for run in runs:
            sub = tmp / run.trainer.name
            sub.mkdir()
            run.write(sub)
            io.write_marker(sub, RUN_KIND, run.meta())
    return io.replace_directory(directory, write, kind=RUNS_KIND, force=force)


def _user_rows(data: SchemaDataset, user_ids) -> np.ndarray:
    index = {u: i for i, u in enumerate(data.user_ids.tolist())}
    return np.array([index.get(str(u), -1) for u in user_ids], dtype=np.int64)


def train(data: SchemaDataset, config: Config | None = None, backend: str = "torch",
          ranking_negatives: int = 0) -> Run:
    """Train both stages of a schema run and evaluate them.

    Args:
        data: from :func:`load` or ``SchemaDataset.from_frames``.
        config: epochs, sizes and evaluation options (default ``Config()``: the seed's).
        backend: "torch" or "tfrs".
        ranking_negatives: implicit data: train the ranker on each positive against this many
            items drawn uniformly from the corpus (seeded); 0 trains retrieval only.
    Returns:
        The :class:`Run` (its ``report`` holds the metrics and the baselines).
    Raises:
        UnsupportedOptionError: an option schema runs do not offer (``check_schema_config``).
    """
    config = config or Config()
    trainer = trainer_class(backend)(data, config)
    notes, stages = [], {}
    stages["retrieval"] = trainer.fit("retrieval", config.train.retrieval_epochs).loss
    examples = ranking_examples(data, config, ranking_negatives, notes)
    if examples is not None:
        stages["ranking"] = trainer.fit("ranking", config.train.ranking_epochs,
                                        examples=examples).loss
    metrics = evaluate(trainer, data, config, examples is not None)
    report = Report(backend, data.facts(), metrics, baseline_metrics(data, config, notes),
                    stages, notes)
    return Run(data, config, trainer, report)


def ranking_examples(data: SchemaDataset, config: Config, negatives: int, notes: list[str]
                     ) -> dict[str, np.ndarray] | None:
    """What the ranker trains on: the training split of labelled data; for implicit data with
    ``negatives`` > 0, each training interaction against ``negatives`` uniform draws
    (``SchemaDataset.ranking_examples``, seeded by ``config.seed``); None (said in ``notes``
    and on stderr) for implicit data without negatives."""
    if not data.implicit:
        return data.examples(data.split.train)
    if negatives <= 0:
        message = ("implicit data (no label): the ranking stage is skipped; pass "
                   "--ranking-negatives N to train it on N sampled items per positive")
        notes.append(message)
        print(f"twostage: {message}", file=sys.stderr)
        return None
    notes.append(f"implicit data: the ranker trained on each positive against {negatives} "
                 "items drawn uniformly from the catalog")
    return data.ranking_examples(data.split.train, negatives, config.seed)


def evaluate(trainer, data: SchemaDataset, config: Config, ranked: bool) -> dict[str, float]:
    """The seed protocol's figures of a trained schema run on the evaluation rows (the test
    split, or its ``eval_queries`` sample), each also with the user's training items excluded
    (``_exclude_seen``): top-k accuracy over the whole corpus; with a ranker, nDCG@k of the
    positives' ``num_candidates`` retrieved items before (``ndcg@k_retrieval``) and after
    re-ranking (``ndcg@k``)."""
    rows = validation_rows(data.split.test, config)
    if len(rows) == 0:
        return {}
    view = index_view(data)
    corpus = trainer.candidate_embeddings(data.candidate_inputs(np.arange(len(data.item_ids))))
    queries = trainer.query_embeddings(data.query_inputs(rows))
    users, truth = view.features["user_index"][rows], view.features["title_index"][rows]
    seen = evaluation.SeenTitles(view.features["user_index"][data.split.train],
                                 view.features["title_index"][data.split.train],
                                 view.corpus_features["title_index"])
    exclude = seen.exclusions(users, truth)
    counts = evaluation.count_scoring_higher(queries, corpus[truth - 1], corpus, exclude=exclude)
    out = {}
    for suffix, greater in (("", counts.greater), ("_exclude_seen", counts.greater_unseen)):
        hits = evaluation.hits_at_k(greater, counts.finite, config.eval.top_ks)
        out.update({f"top_{k}_accuracy{suffix}": int(h) / len(rows)
                    for k, h in zip(config.eval.top_ks, hits)})
    positive = data.label[rows] > 0
    if ranked and positive.any():
        for suffix, excluded in (("", None), ("_exclude_seen", exclude.take(
                np.flatnonzero(positive)))):
            out.update(_two_stage(trainer, data, rows[positive], queries[positive], corpus,
                                  excluded, config, suffix))
    return out


def _two_stage(trainer, data: SchemaDataset, rows: np.ndarray, queries: np.ndarray,
               corpus: np.ndarray, exclude, config: Config, suffix: str) -> dict[str, float]:
    """nDCG@k of the retrieved candidates of positive ``rows`` before and after re-ranking."""
    c = min(config.eval.num_candidates, len(data.item_ids))
    scores = queries @ corpus.T
    if exclude is not None:
        scores[exclude.pairs()] = -np.inf
    candidates = np.argsort(-scores, axis=1, kind="stable")[:, :c]
    inputs = {**{k: np.repeat(v, c, axis=0) for k, v in data.query_inputs(rows).items()},
              **data.candidate_inputs(candidates.ravel())}
    ranking = trainer.ranking_scores(inputs).reshape(len(rows), c)
    k = min(config.eval.ndcg_k, c)
    metrics = evaluation.two_stage_metrics(candidates, ranking, data.item_row[rows], k)
    return {f"ndcg@{k}{suffix}": metrics[f"ndcg@{k}_reranked"],
            f"ndcg@{k}_retrieval{suffix}": metrics[f"ndcg@{k}_retrieval"]}


@dataclass(frozen=True)
class IndexView:
    """What ``twostage.baselines`` and the exclusions read of a dataset, for a schema's data:
    ``features`` user_index [N] (user rows) and title_index [N] (item rows + 1: 0 stays the
    unknown id, as the seed's), ``corpus_features`` title_index [M] (every item, in corpus
    order), ``label``, ``split``, ``timestamp`` (the time column, or the row order)."""

    features: dict[str, np.ndarray]
    corpus_features: dict[str, np.ndarray]
    label: np.ndarray
    split: Any
    timestamp: np.ndarray


def index_view(data: SchemaDataset) -> IndexView:
    """The :class:`IndexView` of ``data``."""
    return IndexView({"user_index": data.user_row, "title_index": data.item_row + 1},
                     {"title_index": np.arange(1, len(data.item_ids) + 1)}, data.label,
                     data.split, data.time if data.time is not None
                     else np.arange(data.num_interactions))


def baseline_metrics(data: SchemaDataset, config: Config, notes: list[str]
                     ) -> dict[str, dict[str, float]]:
    """Random (its exact expectation), most-popular and EASE (lambda on a validation slice of
    the training split; skipped above ``baselines.EASE_MAX_TITLES`` items) on the model's
    evaluation rows, by ``twostage.baselines``, flattened as :func:`evaluate`'s names (nDCG@k
    of the baseline's own order)."""
    if len(data.split.test) == 0:
        return {}
    found = evaluate_baselines(index_view(data), config)["models"]
    names = {"random": "random", "popular": "most_popular", "ease": "ease"}
    notes.extend(f"{names[n]} skipped: {f['skipped']}" for n, f in found.items()
                 if "skipped" in f)
    return {names[n]: _flat(f) for n, f in found.items() if "skipped" not in f}


def _flat(figures: dict) -> dict[str, float]:
    out = {}
    for suffix in ("", "_exclude_seen"):
        out.update({f"top_{k}_accuracy{suffix}": float(v)
                    for k, v in figures[f"top_k_accuracy{suffix}"].items()})
        for name, value in figures.get(f"positives{suffix}", {}).items():
            if name.startswith("ndcg@"):
                out[f"{name}{suffix}"] = float(value)
    return out


def load_run(directory: Path | str, data: SchemaDataset | None = None,
             backend: str | None = None) -> Run:
    """A run saved by :meth:`Run.save` (or one backend's of :func:`save_runs`), ready to
    ``recommend``.

    Args:
        directory: the run folder.
        data: the run's data (default: read again from the schema file it names).
        backend: which backend's run, in a folder of both.
    Raises:
        ValueError: not a schema run folder (naming what is missing).
    """
    directory = Path(directory)
    if io.marker_kind(directory) == RUNS_KIND:
        subs = sorted(p.name for p in directory.iterdir() if p.name in BACKENDS)
        if backend not in subs:
            raise ValueError(f"{directory} holds the runs of {', '.join(subs)}: choose one "
                             "with backend=... (--backend)")
        directory = directory / backend
    if io.marker_kind(directory) != RUN_KIND:
        raise ValueError(f"{directory}: not a schema run folder (no {io.MARKER} of a "
                         f"{RUN_KIND}); pass the folder Run.save or `twostage run --schema` "
                         "wrote")
    meta = json.loads((directory / io.MARKER).read_text(encoding="utf-8"))
    config = Config.from_dict(json.loads((directory / "config.json").read_text("utf-8")))
    report = Report.from_dict(json.loads((directory / "report.json").read_text("utf-8")))
    data = data if data is not None else load(meta["schema"], config)
    trainer = trainer_class(meta["backend"])(data, config)  # KeyError: checked above
    with np.load(directory / WEIGHTS) as arrays:
        trainer.load_weights({k: arrays[k] for k in arrays.files})
    return Run(data, config, trainer, report)


__all__ = ["load", "train", "Run", "Report", "load_run", "check_schema_config"]
