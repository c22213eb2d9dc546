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
from importlib import resources
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import io
from .backend import UnsupportedOptionError, scoring_higher_on_host
from . import pipeline
from .baselines import evaluate_baselines
from .index import make_index
from .config import Config
from .data.download import resolve_data_dir
from .data.schema_data import Options, SchemaDataset
from .schema import Schema

log = logging.getLogger(__name__)
BACKENDS = {"torch": "torch_impl.owndata", "tfrs": "tfrs_impl.owndata"}
RUN_KIND = "schema run"
RUNS_KIND = "schema runs"   # --backend both: a schema run folder per backend
KINDS = (RUN_KIND, RUNS_KIND)
WEIGHTS = "weights.npz"
SHIPPED = Path(str(resources.files("twostage.data") / "schemas"))   # ml-100k.toml, ...
RUN_VERSION = 1


def check_schema_config(config: Config) -> None:
    """Refuse the options schema runs do not offer yet (UnsupportedOptionError naming the flag).

    Offered: the model sizes, the seed's tasks (temperature, hard negatives, accidental hits),
    Adagrad and batch options, the split, the evaluation options but the priors and the cold
    users' OOV route, one process on the CPU or a GPU in fp32.
    """
    refused = [(config.model.genres, "--genres"), (config.model.history, "--history"),
               (config.model.user_features, "--user-features"),
               (config.model.release_date, "--release-date"),
               (config.task.mixed_negatives, "--mixed-negatives"),
               (config.task.learn_temperature, "--learn-temperature"),
               (config.task.use_sampling_probability, "--use-sampling-probability"),
               (config.task.normalize, "--normalize"),
               (config.distributed.nproc > 1, "--nproc"),
               (config.train.compile, "--compile"), (config.train.cuda_graphs, "--cuda-graphs"),
               (config.train.precision != "fp32", "--precision"),
               (config.train.user_dropout, "--user-dropout"),
               (config.eval.prior_beta, "--prior-beta"),
               (any(config.eval.recent_betas), "--recent-beta"),
               (config.eval.cold_as_oov, "--cold-as-oov")]
    names = [flag for on, flag in refused if on]
    if names:
        raise UnsupportedOptionError(
            f"{', '.join(names)}: not offered for --schema runs yet (MovieLens recipes and "
            "multi-process training read the seed's features); drop them")


def weight_file(directory: Path | str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (canonical weight names) as ``directory/weights.npz``, atomically."""
    return io.write_with(Path(directory) / WEIGHTS, lambda p: np.savez(p, **arrays))


class TrainerBase:
    """What both backends' SchemaTrainers share: the refused options, the stages' epoch
    counters, inference through the twin models' ``query`` / ``candidate`` towers and the
    ranking model, and saving the canonical weights. A twin supplies ``models`` (by stage),
    ``_run(model, arrays) -> [N, ...]``, ``get_weights`` and ``set_weights``.

    ``epochs_done[stage]`` advances after every epoch, on both twins, as
    ``twostage.backend.BackendBase``'s (their ``train.fit`` / ``HistoryCallback`` count it)."""

    name = ""

    def __init__(self, data: SchemaDataset, config: Config) -> None:
        check_schema_config(config)
        self.data, self.config = data, config
        self.epochs_done = {"retrieval": 0, "ranking": 0}

    def fit(self, stage: str, epochs: int, examples: Mapping[str, np.ndarray] | None = None,
            on_epoch=None):
        """Train ``stage`` for ``epochs`` epochs in ``BatchPlan`` order (each twin's own).

        Args:
            stage: "retrieval" or "ranking".
            epochs: epochs to add (the batch order carries on from ``epochs_done``).
            examples: the training arrays (default: ``data.examples`` of the training split;
                the ranker of implicit data: ``data.ranking_examples``).
            on_epoch: called as ``on_epoch(stage, epoch, history)`` after each epoch.
        Returns:
            The epochs' ``twostage.backend.History`` (loss = mean step loss, per-example
            losses, epoch times; no training metrics).
        Raises:
            FloatingPointError: the loss or a weight became non-finite (naming epoch and step).
        """
        raise NotImplementedError(f"{type(self).__name__} must define fit")

    def query_embeddings(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Query-tower arrays [N] -> [N, D] float32."""
        return self._run(self.models["retrieval"].query, inputs)

    def candidate_embeddings(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Candidate-tower arrays [M] -> [M, D] float32."""
        return self._run(self.models["retrieval"].candidate, inputs)

    def ranking_scores(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Both towers' arrays [N] -> [N] float32 probabilities."""
        return self._run(self.models["ranking"], inputs)[:, 0]

    def save(self, directory: Path | str) -> None:
        """Both stages' weights (``weights.npz``, canonical names) into ``directory``."""
        weight_file(directory, {k: v for s in self.models
                                for k, v in self.get_weights(s).items()})

    def load_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Weights of :meth:`save` (both stages)."""
        for stage in self.models:
            self.set_weights(stage, arrays)


def trainer_class(backend: str):
    """The SchemaTrainer of ``backend`` ("torch" or "tfrs"), imported on demand."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[backend]).SchemaTrainer


# releases that share a shipped schema's file layout
SAME_LAYOUT = {"ml-20m": "ml-25m", "ml-latest-small": "ml-25m"}


def shipped_schema(name: str) -> Path | None:
    """The path of a schema shipped with the package (``ml-100k``, ``ml-1m``, ``ml-25m``, and
    ``ml-20m`` / ``ml-latest-small``, which share ml-25m's layout), or None."""
    path = SHIPPED / f"{SAME_LAYOUT.get(name, name)}.toml"
    return path if path.is_file() else None


def read_schema(schema: str | Path, data_dir: str | Path | None = None) -> Schema:
    """A schema file, or the name of a shipped one (:data:`SHIPPED`), whose paths are then
    relative to its MovieLens folder: ``data_dir``, else ``TWOSTAGE_DATA_DIR``, the cache or a
    verified download, as ``--dataset``."""
    shipped = shipped_schema(str(schema))
    if shipped is None:
        return Schema.from_toml(schema)
    folder = resolve_data_dir(data_dir, dataset=str(schema).removeprefix("ml-"))
    return Schema.from_toml(shipped, folder=folder, source=str(schema))


def load(schema: Schema | str | Path, config: Config | None = None,
         drop_unknown_items: bool = False, data_dir: str | Path | None = None
         ) -> SchemaDataset:
    """Read and encode a schema's files.

    Args:
        schema: a :class:`Schema`, the path of its TOML file, or a shipped schema's name
            (``"ml-100k"``: the article's dataset; see :func:`read_schema`).
        config: the split, buckets and tokens to encode with (default ``Config()``).
        drop_unknown_items: drop interactions whose item the items table lacks.
        data_dir: a shipped schema's data folder (default: as ``--dataset`` finds it).
    Returns:
        The encoded :class:`SchemaDataset`.
    Raises:
        SchemaError, TableError: one line naming the file, the column and the fix.
    """
    if not isinstance(schema, Schema):
        schema = read_schema(schema, data_dir or (config.data.data_dir if config else None))
    return SchemaDataset.load(schema, Options.from_config(config or Config()),
                              drop_unknown_items)


@dataclass
class Report:
    """What a run measured, in the seed run's layout (``twostage.pipeline``).

    ``metrics``: the model's report (``retrieval``, ``ranking``, ``two_stage``,
    ``two_stage_exclude_seen``, ``eval_sample``; retrieval only without a ranker);
    ``baselines``: ``twostage.baselines.evaluate_baselines``' report; ``stages``: the
    per-epoch losses of each trained stage; ``dataset``: facts; ``notes``: what the run
    skipped and why. :meth:`table` is what the CLI prints and the README's tables show.
    """

    backend: str
    dataset: dict
    metrics: dict
    baselines: dict
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

    def table(self, k: int = 10) -> dict[str, dict[str, float]]:
        """{row: {column: value}}: the model and each baseline, top-k accuracy at every k and
        nDCG@``k`` (the model's after re-ranking, a baseline's of its own order), each also
        with the user's training items excluded ("excl. seen")."""
        rows = {f"{self.backend} model": self.metrics,
                **{name: entry for name, entry in self.baselines.get("models", {}).items()
                   if "skipped" not in entry}}
        out = {}
        for row, report in rows.items():
            out[row] = {}
            for protocol, tag in (("seed", ""), ("exclude_seen", " excl. seen")):
                for name, value in pipeline.protocol_figures(report, protocol, k).items():
                    out[row][name.replace("top_k_accuracy.", "top-") + tag] = value
        return out

    def markdown(self, k: int = 10) -> str:
        """:meth:`table` as Markdown, then the notes."""
        table = self.table(k)
        columns = list(dict.fromkeys(c for row in table.values() for c in row))
        lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {row} | " + " | ".join(_cell(values, c) for c in columns) + " |"
                  for row, values in table.items()]
        return "\n".join(lines + [f"- {n}" for n in self.notes]) + "\n"


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
          ranking_negatives: int = 0, on_epoch=None) -> Run:
    """Train both stages of a schema run and evaluate them.

    Args:
        data: from :func:`load` or ``SchemaDataset.from_frames``.
        config: epochs, sizes and evaluation options (default ``Config()``: the seed's).
        backend: "torch" or "tfrs".
        ranking_negatives: implicit data: train the ranker on each positive against this many
            items drawn uniformly from the corpus (seeded); 0 trains retrieval only.
        on_epoch: ``on_epoch(stage, epoch, history)`` after every epoch of either stage
            (``twostage.report.TensorBoardWriter`` is one).
    Returns:
        The :class:`Run` (its ``report`` holds the metrics and the baselines).
    Raises:
        UnsupportedOptionError: an option schema runs do not offer (``check_schema_config``).
    """
    config = config or Config()
    trainer = trainer_class(backend)(data, config)
    notes, stages = [], {}
    stages["retrieval"] = trainer.fit("retrieval", config.train.retrieval_epochs,
                                      on_epoch=on_epoch).loss
    examples = ranking_examples(data, config, ranking_negatives, notes)
    if examples is not None:
        stages["ranking"] = trainer.fit("ranking", config.train.ranking_epochs,
                                        examples=examples, on_epoch=on_epoch).loss
    metrics = evaluate(trainer, data, config, examples is not None)
    report = Report(backend, data.facts(), metrics, baseline_report(data, config, notes),
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


@dataclass(frozen=True)
class ProtocolView:
    """A schema's data as ``twostage.pipeline`` and ``twostage.baselines`` read the seed's
    dataset, so a schema run is evaluated by the seed protocol's own code: ``user_id`` [N] and
    ``timestamp`` [N] (the time column, or 0) of every interaction, ``movie_title`` [N] its
    item's identity (``[items] identity``, else its id) and ``corpus_titles`` [M] every corpus
    row's, ``features`` user_index / title_index [N] and ``corpus_features`` title_index [M]
    (the user's and the identity's lookup codes: the seed's indices for ``ml-100k``),
    ``label`` [N], ``split``."""

    data: SchemaDataset
    user_id: np.ndarray
    timestamp: np.ndarray
    movie_title: np.ndarray
    corpus_titles: np.ndarray
    features: dict[str, np.ndarray]
    corpus_features: dict[str, np.ndarray]
    label: np.ndarray
    split: Any

    def facts(self) -> dict:
        return self.data.facts()


def protocol_view(data: SchemaDataset) -> ProtocolView:
    """The :class:`ProtocolView` of ``data``."""
    identity = data.schema.items.identity if data.schema.items is not None else None
    if identity is None:
        codes, names = np.arange(1, len(data.item_ids) + 1), data.item_ids
    else:
        codes = data.items[identity]
        names = np.asarray(("",) + data.encoders[identity].vocabulary, dtype=object)[codes]
    time = data.time if data.time is not None else np.zeros(data.num_interactions, np.int64)
    return ProtocolView(
        data, data.user_ids[data.user_row], time, names[data.item_row], names,
        {"user_index": data.users["user"][data.user_row], "title_index": codes[data.item_row]},
        {"title_index": codes}, data.label, data.split)


class ProtocolBackend:
    """A SchemaTrainer behind the methods of ``twostage.backend.Backend`` the evaluation
    calls (embeddings, index, retrieval, ranking scores of raw ids), on a ProtocolView's ids."""

    def __init__(self, trainer, view: ProtocolView, config: Config) -> None:
        self.trainer, self.view, self.config = trainer, view, config
        first = {}
        for row, name in enumerate(view.corpus_titles.tolist()):
            first.setdefault(name, row)
        self._row = first            # an identity's first corpus row (its features)
        self._index = None

    def _rows(self, titles) -> np.ndarray:
        return np.array([self._row[t] for t in np.asarray(titles, dtype=object).tolist()],
                        dtype=np.int64)

    def _queries(self, user_ids, timestamps) -> dict[str, np.ndarray]:
        return self.view.data.user_inputs(user_ids, np.asarray(timestamps, np.int64))

    def query_embeddings(self, user_ids, timestamps) -> np.ndarray:
        return self.trainer.query_embeddings(self._queries(user_ids, timestamps))

    def candidate_embeddings(self, titles) -> np.ndarray:
        return self.trainer.candidate_embeddings(self.view.data.candidate_inputs(
            self._rows(titles)))

    def build_index(self, titles) -> None:
        self._index = make_index(self.config).add(np.ascontiguousarray(
            self.candidate_embeddings(titles), dtype=np.float32))

    def retrieve(self, user_ids, timestamps, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(self.query_embeddings(user_ids, timestamps), k)

    def ranking_scores(self, user_ids, timestamps, titles) -> np.ndarray:
        inputs = {**self._queries(user_ids, timestamps),
                  **self.view.data.candidate_inputs(self._rows(titles))}
        return self.trainer.ranking_scores(inputs)

    def scoring_higher(self, queries: np.ndarray, truths: np.ndarray, corpus: np.ndarray,
                       budget_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
        """``twostage.backend.Backend.scoring_higher``, counted in numpy."""
        return scoring_higher_on_host(queries, truths, corpus, budget_bytes)


def evaluate(trainer, data: SchemaDataset, config: Config, ranked: bool) -> dict:
    """The seed protocol's report of a trained schema run (``twostage.pipeline.evaluate``'s
    sections; without a ranker, retrieval only), on the test split or its ``eval_queries``
    sample."""
    view = protocol_view(data)
    if len(data.split.test) == 0:
        return {}
    backend = ProtocolBackend(trainer, view, config)
    if ranked:
        return pipeline.evaluate(backend, view, config)
    backend.build_index(view.corpus_titles)
    rows = pipeline.evaluation_rows(view, config)
    return {"retrieval": pipeline.evaluate_retrieval(backend, view, config, rows),
            "eval_sample": pipeline.sample_facts(view, config, rows)}


def baseline_report(data: SchemaDataset, config: Config, notes: list[str]) -> dict:
    """Random (its exact expectation), most-popular and EASE (lambda on a validation slice of
    the training split; skipped above ``baselines.EASE_MAX_TITLES`` items, said in ``notes``)
    on the model's evaluation rows, by ``twostage.baselines``."""
    if len(data.split.test) == 0:
        return {}
    found = evaluate_baselines(protocol_view(data), config)
    notes.extend(f"{name} skipped: {entry['skipped']}"
                 for name, entry in found["models"].items() if "skipped" in entry)
    return found


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
