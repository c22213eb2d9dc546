"""``TorchBackend``: the seed's models in PyTorch behind ``twostage.backend.Backend``.

Raw strings (user ids, titles) are encoded with the ``FeatureSpec`` (unknown users / titles ->
OOV row 0, unknown tokens -> [UNK], as the Keras lookups); retrieval serves from a FAISS index
(``torch_impl.index.FaissIndex``: flat / ivf / hnsw, from ``config.index`` and its knobs).
The parity helpers (get_weights, set_weights, batch_loss, loss_and_gradients) mirror
``tfrs_impl.backend.TfrsBackend`` with the same Keras-layout weight names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from twostage.data.features import FeatureSpec
from twostage.backend import History
from twostage.config import Config
from twostage.dataset import Dataset, check_same_spec

from . import checkpoint as ckpt
from .features import SAMPLING_PROBABILITY, Batch, batch_iter, resolve_device, to_tensors
from .models import (build_ranking_model, build_retrieval_model, get_keras_weights,
                     keras_weight_names, set_keras_weights)
from .tasks import make_ranking_task, make_retrieval_task
from .train import fit_ranking, fit_retrieval, make_optimizer, ranking_loss, retrieval_loss

STAGES = ("retrieval", "ranking")
KERAS_PREFIX = {"retrieval": "", "ranking": "ranking_model/"}  # tfrs_impl's weight names


def check_spec_matches_config(spec: FeatureSpec, config: Config) -> None:
    """The spec's table sizes must be the ones the config asks for."""
    problems = []
    if len(spec.ts_boundaries) != config.num_buckets:
        problems.append(f"spec has {len(spec.ts_boundaries)} timestamp boundaries but "
                        f"config.num_buckets={config.num_buckets}")
    if spec.max_tokens != config.max_tokens:
        problems.append(f"spec.max_tokens={spec.max_tokens} but config.max_tokens="
                        f"{config.max_tokens}")
    if problems:
        raise ValueError("feature spec and config disagree: " + "; ".join(problems)
                         + " (fit the spec with this config: twostage.dataset.from_movielens)")


class TorchBackend:
    """Retrieval (two towers) + ranking models of the seed in PyTorch, served with FAISS.

    Both models exist from construction (Keras-style init seeded by ``config.seed``; ranking
    by seed + 1). Repeated ``fit_*`` calls continue training (optimizer state and the batch
    order's epoch counter carry on). ``empty_title``: "zero" (default) or "nan" (Keras) for a
    title with no token; ``ranking_loss_mode``: see ``torch_impl.tasks.Ranking``.
    """

    name = "torch"

    def __init__(self, config: Config, spec: FeatureSpec, *, empty_title: str = "zero",
                 ranking_loss_mode: str = "keras_graph") -> None:
        check_spec_matches_config(spec, config)
        self.config = config
        self.spec = spec
        self.device = resolve_device(config.device)
        self.empty_title = empty_title
        self.retrieval_model = build_retrieval_model(spec, config, empty_title=empty_title,
                                                     device=self.device)
        self.ranking_model = build_ranking_model(spec, config, empty_title=empty_title,
                                                 device=self.device)
        self.retrieval_task = make_retrieval_task(config)
        self.ranking_task = make_ranking_task(config, loss_mode=ranking_loss_mode)
        self.optimizers = {"retrieval": make_optimizer(self.retrieval_model, config),
                           "ranking": make_optimizer(self.ranking_model, config)}
        self.epochs_done = {"retrieval": 0, "ranking": 0}
        self._index = None
        self._index_titles: Optional[np.ndarray] = None

    # --- training -------------------------------------------------------------------------------
    def _check_dataset(self, dataset: Dataset) -> None:
        check_same_spec(dataset, self.spec)

    def fit_retrieval(self, dataset: Dataset, epochs: int | None = None) -> History:
        """Train the towers (see ``torch_impl.train.fit_retrieval``); drops a built index."""
        self._check_dataset(dataset)
        epochs = self.config.retrieval_epochs if epochs is None else epochs
        self._index, self._index_titles = None, None  # the towers change: the index goes stale
        history = fit_retrieval(self.retrieval_model, dataset, self.config,
                                task=self.retrieval_task, optimizer=self.optimizers["retrieval"],
                                epochs=epochs, epoch_offset=self.epochs_done["retrieval"])
        self.epochs_done["retrieval"] += epochs
        return history

    def fit_ranking(self, dataset: Dataset, epochs: int | None = None) -> History:
        """Train the ranking model (see ``torch_impl.train.fit_ranking``)."""
        self._check_dataset(dataset)
        epochs = self.config.ranking_epochs if epochs is None else epochs
        history = fit_ranking(self.ranking_model, dataset, self.config, task=self.ranking_task,
                              optimizer=self.optimizers["ranking"], epochs=epochs,
                              epoch_offset=self.epochs_done["ranking"])
        self.epochs_done["ranking"] += epochs
        return history

    # --- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, module: torch.nn.Module, tensors: Batch, width: int) -> np.ndarray:
        module.eval()
        parts = [module(b).float().cpu().numpy()
                 for b in batch_iter(tensors, self.config.eval_batch_size)]
        module.train()
        return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)

    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] str, [N] int64 -> [N, D] float32 query-tower outputs."""
        if len(user_ids) != len(timestamps):
            raise ValueError(f"{len(user_ids)} user ids but {len(timestamps)} timestamps")
        tensors = to_tensors(self.spec.encode_queries(user_ids, timestamps), self.device)
        return self._run(self.retrieval_model.query_model, tensors, self.config.layer_sizes[-1])

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D] float32 candidate-tower outputs."""
        tensors = to_tensors(self.spec.encode_titles(titles), self.device)
        return self._run(self.retrieval_model.candidate_model, tensors,
                         self.config.layer_sizes[-1])

    def build_index(self, titles: np.ndarray) -> None:
        """FAISS index (``config.index``) over the candidate embeddings of ``titles`` (the
        corpus, duplicates kept); rows returned by ``retrieve`` are positions in ``titles``."""
        from .index import FaissIndex
        titles = np.asarray(titles, dtype=object)
        if len(titles) == 0:
            raise ValueError("build_index needs at least one title (pass dataset.corpus_titles)")
        c = self.config
        index = FaissIndex(kind=c.index, nlist=c.ivf_nlist, nprobe=c.ivf_nprobe, hnsw_m=c.hnsw_m,
                           ef_search=c.hnsw_ef_search)
        index.add(self.candidate_embeddings(titles))
        self._index, self._index_titles = index, titles

    def retrieve(self, user_ids: np.ndarray, timestamps: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k: scores [N, k] float32 descending, rows [N, k] int64 into the indexed titles
        (k is clipped to the corpus size, as FaissIndex.search / TFRS)."""
        if self._index is None:
            raise RuntimeError("no index: call build_index(dataset.corpus_titles) first (and "
                               "again after training)")
        return self._index.search(self.query_embeddings(user_ids, timestamps), k)

    def ranking_scores(self, user_ids: np.ndarray, timestamps: np.ndarray, titles: np.ndarray
                       ) -> np.ndarray:
        """[N] inputs -> [N] float32 sigmoid probabilities of the ranking model."""
        if not len(user_ids) == len(timestamps) == len(titles):
            raise ValueError(f"lengths differ: {len(user_ids)} user ids, {len(timestamps)} "
                             f"timestamps, {len(titles)} titles")
        arrays = self.spec.encode(user_ids, timestamps, titles)
        return self._run(self.ranking_model, to_tensors(arrays, self.device), 1)[:, 0]

    # --- persistence ----------------------------------------------------------------------------
    def save(self, directory: Path | str) -> None:
        """Models + optimizer states + spec + config (+ the index if built), atomically."""
        ckpt.save_checkpoint(
            directory, config=self.config, spec=self.spec,
            models={"retrieval": self.retrieval_model, "ranking": self.ranking_model},
            optimizers=self.optimizers, index=self._index, index_titles=self._index_titles,
            extra={"epochs_done": self.epochs_done, "empty_title": self.empty_title,
                   "ranking_loss_mode": self.ranking_task.loss_mode})

    @classmethod
    def load(cls, directory: Path | str, config: Optional[Config] = None,
             spec: Optional[FeatureSpec] = None) -> "TorchBackend":
        """Rebuild from :meth:`save`'s directory. ``config`` / ``spec``, when given, must match
        the stored ones (architecture fields / fingerprint) and the given config's runtime
        options (device, index, ...) are used; otherwise the stored ones."""
        c = ckpt.load_checkpoint(directory, config=config, spec=spec)
        extra = c.meta.get("extra", {})
        backend = cls(c.config, c.spec, empty_title=extra.get("empty_title", "zero"),
                      ranking_loss_mode=extra.get("ranking_loss_mode", "keras_graph"))
        for stage in STAGES:
            if stage in c.states:
                ckpt.load_state(backend._model(stage), c.states[stage]["model"], stage,
                                c.directory)
                if c.states[stage].get("optimizer") is not None:
                    backend.optimizers[stage].load_state_dict(c.states[stage]["optimizer"])
        backend.epochs_done.update(extra.get("epochs_done", {}))
        index_file = c.directory / "index.npz"
        if index_file.is_file():
            from .index import FaissIndex
            backend._index = FaissIndex.load(index_file)
            titles = ckpt._read_json(c.directory / "index_titles.json", "index titles")
            backend._index_titles = np.asarray(titles, dtype=object)
        return backend

    # --- parity helpers (mirror TfrsBackend) ----------------------------------------------------
    def _model(self, stage: str):
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} must be one of {STAGES}")
        return self.retrieval_model if stage == "retrieval" else self.ranking_model

    def get_weights(self, stage: str) -> dict[str, np.ndarray]:
        """All weights of a stage by tfrs_impl's names, Keras layout (kernel [in, out])."""
        return get_keras_weights(self._model(stage), KERAS_PREFIX[stage])

    def set_weights(self, stage: str, weights: Mapping[str, np.ndarray]) -> None:
        set_keras_weights(self._model(stage), dict(weights), KERAS_PREFIX[stage])
        if stage == "retrieval":
            self._index, self._index_titles = None, None

    def encode_batch(self, batch: Mapping[str, np.ndarray]) -> Batch:
        """Raw numpy batch (user_id, timestamp, movie_title [, label,
        candidate_sampling_probability, sample_weight]) -> model input tensors."""
        arrays = dict(self.spec.encode(batch["user_id"], batch["timestamp"],
                                       batch["movie_title"]))
        for key in ("label", SAMPLING_PROBABILITY, "sample_weight"):
            if key in batch:
                arrays[key] = np.asarray(batch[key], dtype=np.float32)
        return to_tensors(arrays, self.device)

    def _batch_loss_tensor(self, stage: str, tensors: Batch) -> torch.Tensor:
        if stage == "retrieval":
            return retrieval_loss(self.retrieval_model, self.retrieval_task, tensors,
                                  self.config.use_sampling_probability)
        return ranking_loss(self.ranking_model, self.ranking_task, tensors)[0]

    def batch_loss(self, stage: str, batch: Mapping[str, np.ndarray], training: bool = True
                   ) -> float:
        """The task loss of one raw batch (retrieval: SUM over the batch; ranking: mean BCE).
        ``training`` is accepted for symmetry with TfrsBackend (no layer depends on it)."""
        with torch.no_grad():
            return float(self._batch_loss_tensor(stage, self.encode_batch(batch)))

    def loss_and_gradients(self, stage: str, batch: Mapping[str, np.ndarray]
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {Keras weight name: dense gradient, kernels [in, out]}) of one training step."""
        model = self._model(stage)
        model.zero_grad(set_to_none=True)
        loss = self._batch_loss_tensor(stage, self.encode_batch(batch))
        loss.backward()
        params = dict(model.named_parameters())
        grads = {}
        for keras, (name, transposed) in keras_weight_names(model, KERAS_PREFIX[stage]).items():
            p = params[name]
            g = torch.zeros_like(p) if p.grad is None else p.grad
            g = g.to_dense() if g.is_sparse else g
            grads[keras] = (g.T if transposed else g).detach().cpu().numpy().copy()
        model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    def retrieval_loss(self, batch: Mapping[str, np.ndarray], training: bool = True) -> float:
        return self.batch_loss("retrieval", batch, training)

    def ranking_loss(self, batch: Mapping[str, np.ndarray], training: bool = True) -> float:
        return self.batch_loss("ranking", batch, training)
