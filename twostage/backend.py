"""The interface both backends implement, so the pipeline, CLI and benchmarks treat them alike.

``torch_impl.backend.TorchBackend`` and ``tfrs_impl.backend.TfrsBackend`` implement it; the
modules behind them mirror each other file for file (features, models, tasks, train, index,
checkpoint). Everything crossing this interface is numpy, so evaluation stays framework-agnostic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .config import Config
from .dataset import Dataset


@dataclass
class History:
    """Per-epoch training curves. ``loss[e]`` is the mean of the step losses of epoch e (what
    Keras' fit reports); ``val`` maps a metric name to [(epoch, value), ...] (1-based epochs)."""

    loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    val: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "metrics": self.metrics,
                "val": {k: [list(p) for p in v] for k, v in self.val.items()},
                "epoch_seconds": self.epoch_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(loss=list(d.get("loss", [])), metrics=dict(d.get("metrics", {})),
                   val={k: [(int(e), float(x)) for e, x in v] for k, v in d.get("val", {}).items()},
                   epoch_seconds=list(d.get("epoch_seconds", [])))


@runtime_checkable
class Backend(Protocol):
    """A trained-or-trainable pair of models (retrieval + ranking) on one framework."""

    name: str
    config: Config

    def fit_retrieval(self, dataset: Dataset, epochs: int | None = None) -> History:
        """Train the two towers on ``dataset.split.train`` (in-batch softmax); validate on
        ``dataset.split.test`` every ``config.validation_freq`` epochs and after the last."""

    def fit_ranking(self, dataset: Dataset, epochs: int | None = None) -> History:
        """Train the ranking model on ``dataset.split.train`` labels (rating >= threshold)."""

    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] str, [N] int64 -> [N, D] float32 query-tower outputs."""

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D] float32 candidate-tower outputs."""

    def build_index(self, titles: np.ndarray) -> None:
        """Index the candidate embeddings of ``titles`` (the corpus, duplicates kept)."""

    def retrieve(self, user_ids: np.ndarray, timestamps: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over the built index: scores [N, k] float32 (descending), rows [N, k] int64
        (positions into the indexed titles)."""

    def ranking_scores(self, user_ids: np.ndarray, timestamps: np.ndarray, titles: np.ndarray
                       ) -> np.ndarray:
        """[N] inputs -> [N] float32 sigmoid probabilities of the ranking model."""

    def save(self, directory: Path) -> None:
        """Write models, feature spec and config under ``directory`` atomically."""
