"""The protocol both backends implement, so the pipeline, CLI, export, benchmarks and parity suite
treat them alike.

``torch_impl.backend.TorchBackend`` and ``tfrs_impl.backend.TfrsBackend`` implement it; the
modules behind them mirror each other file for file (docs/CONTRIBUTING.md has the table, and
``twostage/tests/test_mirror.py`` checks it). Everything crossing this interface is numpy, so
evaluation stays framework-agnostic. Weights are named by the Keras attribute path of the seed's
models, Dense kernels [in, out], in both backends. :class:`BackendBase` holds what the two
implementations share (config, spec, ``epochs_done``, recipe data, index invalidation, the
``fit_*`` wrappers), so each twin keeps only its framework's part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from . import evaluation
from .config import Config
from .data.features import FeatureSpec
from .dataset import Dataset, check_same_spec
from .errors import UnsupportedOptionError
from .group import Group
from .recipes import RecipeData, attach_recipe_data

STAGES: tuple[str, ...] = ("retrieval", "ranking")
RawBatch = Mapping[str, np.ndarray]
# Called after every training epoch: (stage, 1-based epoch within the fit, the History so far).
EpochCallback = Callable[[str, int, "History"], None]


def check_supported(backend: str, config: Config,
                    allowed: Mapping[str, tuple]) -> None:
    """Raise UnsupportedOptionError for every ``"section.field"`` of ``config`` whose value is
    not in ``allowed[...]`` (the backend's declared limits)."""
    problems = []
    for path, values in allowed.items():
        section, name = path.split(".")
        value = getattr(getattr(config, section), name)
        if value not in values:
            problems.append(f"{name}={value!r} (supported: {', '.join(map(str, values))})")
    if problems:
        raise UnsupportedOptionError(f"the {backend} backend does not support "
                                     f"{'; '.join(problems)}; use --backend torch for these "
                                     "options or change them")


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} must be one of {STAGES}")
    return stage


@dataclass
class History:
    """Per-epoch training curves of one fit.

    ``loss[e]``: mean of the step losses of epoch e (what Keras' fit reports per step; the
    retrieval loss is a SUM over the batch, the ranking loss a batch mean).
    ``loss_per_example[e]``: the epoch's loss per training example (retrieval: sum of the step
    losses / examples; ranking: the example-weighted mean), comparable with
    ``val["loss_per_example"]`` whatever the batch sizes. ``metrics``: per-epoch training metrics.
    ``val``: metric name -> [(1-based epoch, value), ...]. ``epoch_seconds``: training time.
    """

    loss: list[float] = field(default_factory=list)
    loss_per_example: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    val: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "loss_per_example": self.loss_per_example,
                "metrics": self.metrics,
                "val": {k: [list(p) for p in v] for k, v in self.val.items()},
                "epoch_seconds": self.epoch_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(loss=list(d.get("loss", [])),
                   loss_per_example=list(d.get("loss_per_example", [])),
                   metrics=dict(d.get("metrics", {})),
                   val={k: [(int(e), float(x)) for e, x in v] for k, v in d.get("val", {}).items()},
                   epoch_seconds=list(d.get("epoch_seconds", [])))


def per_example(stage: str, step_losses, batch_sizes) -> float:
    """An epoch's loss per example from its step losses and batch sizes (see History)."""
    losses = np.asarray(step_losses, dtype=np.float64)
    sizes = np.asarray(batch_sizes, dtype=np.float64)
    total = losses.sum() if stage == "retrieval" else (losses * sizes).sum()
    return float(total / max(sizes.sum(), 1.0))


@runtime_checkable
class Backend(Protocol):
    """A trained-or-trainable pair of models (retrieval + ranking) on one framework.

    ``epochs_done``: epochs trained so far per stage (a later fit continues the shared batch
    order from there; saved in checkpoints). ``group``: the processes the backend trains and
    evaluates in (``twostage.group``; one process unless torch.distributed is initialised). A config value the backend cannot honour is refused
    at construction with :class:`UnsupportedOptionError`.
    """

    name: str
    config: Config
    spec: FeatureSpec
    epochs_done: dict[str, int]
    group: Group

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Raise UnsupportedOptionError (or a clear RuntimeError, e.g. no CUDA) for what this
        backend cannot honour; the CLI calls it before any data is loaded."""

    # --- training ------------------------------------------------------------------------
    def fit_retrieval(self, dataset: Dataset, epochs: int | None = None,
                      on_epoch: EpochCallback | None = None) -> History:
        """Train the two towers on ``dataset.split.train`` (in-batch softmax); validate on
        ``dataset.split.test`` every ``config.train.validation_freq`` epochs and after the last."""

    def fit_ranking(self, dataset: Dataset, epochs: int | None = None,
                    on_epoch: EpochCallback | None = None) -> History:
        """Train the ranking model on ``dataset.split.train`` labels (rating >= threshold)."""

    def train_steps(self, stage: str, batches: list[RawBatch]) -> list[float]:
        """One optimizer step per raw batch (user_id, timestamp, movie_title, label [,
        candidate_sampling_probability, sample_weight]) -> the per-step losses."""

    # --- inference -----------------------------------------------------------------------
    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] str, [N] int64 -> [N, D] float32 query-tower outputs."""

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D] float32 candidate-tower outputs."""

    def build_index(self, titles: np.ndarray) -> None:
        """Index the candidate embeddings of ``titles`` (the corpus, duplicates kept)."""

    def retrieve(self, user_ids: np.ndarray, timestamps: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the built index: scores [N, k'] float32 (descending), rows [N, k'] int64
        (positions into the indexed titles), k' = min(k, corpus size)."""

    def ranking_scores(self, user_ids: np.ndarray, timestamps: np.ndarray, titles: np.ndarray
                       ) -> np.ndarray:
        """[N] inputs -> [N] float32 sigmoid probabilities of the ranking model."""

    def scoring_higher(self, queries: np.ndarray, truths: np.ndarray, corpus: np.ndarray,
                       budget_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
        """``twostage.evaluation.num_scoring_higher`` where this backend computes fastest (its
        accelerator, or numpy): [N, D], [N, D], [M, D] float32 -> (greater [N] int64, finite
        [N] bool), the same tie rules; at most ``budget_bytes`` of scores alive at a time."""

    # --- weights and losses (export, parity) ---------------------------------------------
    def get_weights(self, stage: str) -> dict[str, np.ndarray]:
        """All weights of a stage by Keras name (Dense kernels [in, out]), numpy copies."""

    def set_weights(self, stage: str, weights: Mapping[str, np.ndarray]) -> None:
        """Assign every weight of a stage; names and shapes must match exactly."""

    def batch_loss(self, stage: str, batch: RawBatch, training: bool = True) -> float:
        """The task loss of one raw batch (retrieval: SUM over the batch; ranking: mean BCE)."""

    def loss_and_gradients(self, stage: str, batch: RawBatch
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, dense gradient of every weight by Keras name) of one training step."""

    # --- persistence ---------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write weights, Adagrad accumulators, epochs done, spec and config atomically
        (``twostage.checkpoint`` format, the same for both backends)."""


def scoring_higher_on_host(queries: np.ndarray, truths: np.ndarray, corpus: np.ndarray,
                           budget_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Backend.scoring_higher` in numpy (``evaluation.num_scoring_higher``), for
    backends that count nowhere faster."""
    return evaluation.num_scoring_higher(queries, truths, corpus, budget_bytes=budget_bytes)


class BackendBase:
    """What both backends share behind :class:`Backend`: ``config``, ``spec``,
    ``epochs_done``, the attached recipe lookups (``recipe``), the built index (``_index``,
    dropped whenever the towers or their lookups change), the ``fit_*`` wrappers and the
    ``*_loss`` shortcuts. A twin supplies ``retrieval_model``, ``ranking_model`` and
    :meth:`_fit`, and the rest of the protocol.

    ``epochs_done[stage]`` advances by one after every epoch (before ``on_epoch`` sees it),
    on both backends, by their ``train.fit_*``; a checkpoint written from ``on_epoch`` thus
    resumes the batch order after that epoch.
    """

    name = ""
    retrieval_model: object
    ranking_model: object

    def __init__(self, config: Config, spec: FeatureSpec) -> None:
        self.config, self.spec = config, spec
        self.epochs_done: dict[str, int] = {stage: 0 for stage in STAGES}
        self.recipe: RecipeData | None = None  # genre / history lookups (twostage.recipes)
        self._index = None

    @property
    def models(self) -> dict:
        """The two models, by stage."""
        return {"retrieval": self.retrieval_model, "ranking": self.ranking_model}

    def _model(self, stage: str):
        return self.models[check_stage(stage)]

    def attach_recipe_data(self, recipe: RecipeData | None) -> None:
        """The towers' genre table and user histories (``twostage.recipes``): ``fit_retrieval``
        attaches its dataset's, ``load`` the checkpoint's. Drops a built index."""
        if recipe is not None:
            attach_recipe_data(self.retrieval_model, recipe)
        self.recipe, self._index = recipe, None

    def _towers_changed(self, stage: str) -> None:
        """A built index is stale once the retrieval towers train or get new weights."""
        if stage == "retrieval":
            self._index = None

    # --- training ------------------------------------------------------------------------------
    def fit_retrieval(self, dataset: Dataset, epochs: int | None = None,
                      on_epoch: EpochCallback | None = None) -> History:
        """:meth:`Backend.fit_retrieval`: attaches ``dataset``'s recipe lookups, drops a built
        index, then the twin's ``train.fit_retrieval`` (``epochs`` default:
        ``config.train.retrieval_epochs``)."""
        check_same_spec(dataset, self.spec)
        self.attach_recipe_data(RecipeData.from_dataset(dataset, self.config))
        epochs = self.config.train.retrieval_epochs if epochs is None else epochs
        return self._fit("retrieval", dataset, epochs, on_epoch)

    def fit_ranking(self, dataset: Dataset, epochs: int | None = None,
                    on_epoch: EpochCallback | None = None) -> History:
        """:meth:`Backend.fit_ranking` (``epochs`` default: ``config.train.ranking_epochs``)."""
        check_same_spec(dataset, self.spec)
        epochs = self.config.train.ranking_epochs if epochs is None else epochs
        return self._fit("ranking", dataset, epochs, on_epoch)

    def _fit(self, stage: str, dataset: Dataset, epochs: int,
             on_epoch: EpochCallback | None) -> History:
        """The twin's ``train.fit_<stage>`` of ``epochs`` epochs from ``epochs_done``."""
        raise NotImplementedError(f"{type(self).__name__} must define _fit")

    # --- losses (parity) -----------------------------------------------------------------------
    def batch_loss(self, stage: str, batch: RawBatch, training: bool = True) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define batch_loss")

    def retrieval_loss(self, batch: RawBatch, training: bool = True) -> float:
        """``batch_loss("retrieval", ...)``."""
        return self.batch_loss("retrieval", batch, training)

    def ranking_loss(self, batch: RawBatch, training: bool = True) -> float:
        """``batch_loss("ranking", ...)``."""
        return self.batch_loss("ranking", batch, training)

    # --- evaluation ----------------------------------------------------------------------------
    def scoring_higher(self, queries: np.ndarray, truths: np.ndarray, corpus: np.ndarray,
                       budget_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Backend.scoring_higher`; here in numpy (:func:`scoring_higher_on_host`)."""
        return scoring_higher_on_host(queries, truths, corpus, budget_bytes)
