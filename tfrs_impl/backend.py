"""``TfrsBackend``: the seed's TFRS models behind ``twostage.backend.Backend`` (numpy in, out)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from twostage.data.features import FeatureSpec
from twostage.backend import History
from twostage.config import Config
from twostage.dataset import Dataset, check_same_spec

from . import checkpoint, index as index_lib, models, tasks, train

STAGES = ("retrieval", "ranking")


class TfrsBackend:
    """Retrieval (two towers) + ranking models of the seed, on TensorFlow Recommenders.

    Both models exist from construction (variables created, init seeded by ``config.seed``);
    ``fit_*`` train them; ``build_index`` + ``retrieve`` serve with BruteForce.
    """

    name = "tfrs"

    def __init__(self, config: Config, spec: FeatureSpec, *, retrieval_model=None,
                 ranking_model=None):
        self.config = config
        self.spec = spec
        self.retrieval_model = (models.build_retrieval_model(spec, config)
                                if retrieval_model is None else retrieval_model)
        self.ranking_model = (models.build_ranking_model(spec, config)
                              if ranking_model is None else ranking_model)
        self._index = None
        self._corpus_attached = False

    # --- training ------------------------------------------------------------------------------
    def _check_dataset(self, dataset: Dataset) -> None:
        check_same_spec(dataset, self.spec)

    def fit_retrieval(self, dataset: Dataset, epochs: int | None = None) -> History:
        self._check_dataset(dataset)
        if not self._corpus_attached:  # before compile: Keras collects metrics at fit time
            tasks.attach_corpus_metrics(self.retrieval_model, dataset.corpus_titles)
            self._corpus_attached = True
        self._index = None  # the towers change; a built index would be stale
        return train.fit_retrieval(self.retrieval_model, dataset, self.config, epochs)

    def fit_ranking(self, dataset: Dataset, epochs: int | None = None) -> History:
        self._check_dataset(dataset)
        return train.fit_ranking(self.ranking_model, dataset, self.config, epochs)

    # --- inference -----------------------------------------------------------------------------
    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] str, [N] int64 -> [N, D] float32."""
        user_ids = np.asarray(user_ids, dtype=object)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        bs = self.config.eval_batch_size
        parts = [self.retrieval_model.query_model(tasks.to_tensors(
                     {"user_id": user_ids[i: i + bs], "timestamp": timestamps[i: i + bs]})).numpy()
                 for i in range(0, len(user_ids), bs)]
        return (np.concatenate(parts) if parts else
                np.zeros((0, self.config.layer_sizes[-1]), np.float32)).astype(np.float32)

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D] float32."""
        if len(titles) == 0:
            return np.zeros((0, self.config.layer_sizes[-1]), np.float32)
        return index_lib.candidate_embeddings(self.retrieval_model.candidate_model, titles,
                                              self.config.eval_batch_size).numpy()

    def build_index(self, titles: np.ndarray) -> None:
        """BruteForce over ``titles`` (the corpus, duplicates kept); ids = row positions."""
        self._index = index_lib.build_index(self.retrieval_model.query_model,
                                            self.retrieval_model.candidate_model, titles)

    def retrieve(self, user_ids: np.ndarray, timestamps: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N, k] float32 descending, rows [N, k] int64 into the indexed titles);
        k is clamped to the corpus size."""
        if self._index is None:
            raise RuntimeError("no index: call build_index(dataset.corpus_titles) first (and "
                               "again after training)")
        scores, rows = index_lib.query(self._index, user_ids, timestamps, k,
                                       self.config.eval_batch_size)
        return scores, rows.astype(np.int64)

    def ranking_scores(self, user_ids: np.ndarray, timestamps: np.ndarray, titles: np.ndarray
                       ) -> np.ndarray:
        """[N] inputs -> [N] float32 sigmoid probabilities."""
        user_ids = np.asarray(user_ids, dtype=object)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        titles = np.asarray(titles, dtype=object)
        bs = self.config.eval_batch_size
        parts = [self.ranking_model.ranking_model(tasks.to_tensors(
                     {"user_id": user_ids[i: i + bs], "timestamp": timestamps[i: i + bs],
                      "movie_title": titles[i: i + bs]})).numpy()[:, 0]
                 for i in range(0, len(user_ids), bs)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    # --- persistence ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        checkpoint.save(directory, self.retrieval_model, self.ranking_model, self.spec,
                        self.config)

    @classmethod
    def load(cls, directory: Path) -> "TfrsBackend":
        config, spec, retrieval, ranking = checkpoint.load(directory)
        return cls(config, spec, retrieval_model=retrieval, ranking_model=ranking)

    def export_saved_model(self, directory: Path, corpus_titles: np.ndarray,
                           k: int = index_lib.DEFAULT_K) -> Path:
        """SavedModel of query model + BruteForce over ``corpus_titles`` (see checkpoint)."""
        return checkpoint.export_saved_model(directory, self.retrieval_model, corpus_titles, k)

    # --- parity helpers ------------------------------------------------------------------------
    def _model(self, stage: str):
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} must be one of {STAGES}")
        return self.retrieval_model if stage == "retrieval" else self.ranking_model

    def get_weights(self, stage: str) -> dict[str, np.ndarray]:
        """All trainable weights of a stage by name (Keras layout: kernel [in, out])."""
        return models.get_weights(self._model(stage))

    def set_weights(self, stage: str, weights: dict[str, np.ndarray]) -> None:
        models.set_weights(self._model(stage), weights)
        if stage == "retrieval":
            self._index = None

    def batch_loss(self, stage: str, batch: dict[str, np.ndarray], training: bool = True
                   ) -> float:
        """The task loss of one raw batch (retrieval: SUM over the batch; ranking: mean BCE).
        Retrieval batches need ``candidate_sampling_probability`` when the config uses it."""
        return tasks.batch_loss(self._model(stage), batch, training)

    def loss_and_gradients(self, stage: str, batch: dict[str, np.ndarray]
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, dense gradients by weight name) of one training step, via tf.GradientTape."""
        return tasks.loss_and_gradients(self._model(stage), batch)

    def retrieval_loss(self, batch: dict[str, np.ndarray], training: bool = True) -> float:
        return self.batch_loss("retrieval", batch, training)

    def ranking_loss(self, batch: dict[str, np.ndarray], training: bool = True) -> float:
        return self.batch_loss("ranking", batch, training)
