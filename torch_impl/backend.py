"""``TorchBackend``: the seed's models in PyTorch behind ``twostage.backend.Backend``.

Raw strings (user ids, titles) are encoded with the ``FeatureSpec`` (unknown users / titles ->
OOV row 0, unknown tokens -> [UNK], as the Keras lookups); retrieval serves from a
``twostage.index`` Index (flat / ivf / hnsw, from ``config.index``). Every option comes from the
config (``model.empty_title``, ``task.ranking_loss``, ``train.device``, ...). The parity helpers
(get_weights, set_weights, batch_loss, loss_and_gradients, train_steps) mirror
``tfrs_impl.backend.TfrsBackend`` with the same Keras-layout weight names.

Several processes: a ``TorchBackend`` built while a torch.distributed group of more than one
process is initialised (``torch_impl.distributed.init_from_env(config)`` under torchrun) trains
and evaluates over it: ``group`` is then a ``TorchGroup``, every rank starts from rank 0's
weights and optimizer state (broadcast at construction), ``fit_*`` and ``train_steps`` split each
global batch over the ranks (``torch_impl.distributed``), and ``twostage.pipeline`` shards the
evaluation over ``group``. Every rank must make the same calls in the same order.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from twostage.backend import (BackendBase, EpochCallback, History, RawBatch,
                              UnsupportedOptionError, check_stage)
from twostage.checkpoint import load_checkpoint
from twostage.config import Config
from twostage.data.features import FeatureSpec
from twostage.dataset import Dataset, check_spec_matches_config
from twostage.group import Group, SingleProcess
from twostage.index import Index
from twostage.recipes import refuse_in_parallel

from . import checkpoint as ckpt
from . import distributed
from .distributed import (DataParallel, TorchGroup, check_world, current_group,
                          sharded_ranking_loss, sharded_retrieval_loss)
from .features import (NEGATIVE_PREFIX, Batch, batch_iter, encode_raw_batch, query_arrays,
                       resolve_device, to_tensors)
from .index import build_index
from .models import (KERAS_PREFIX, build_ranking_model,
                     build_retrieval_model, get_keras_weights, keras_weight_names,
                     set_keras_weights)
from .optim import make_optimizer
from .tasks import (make_ranking_task, make_retrieval_task, ranking_loss, retrieval_loss,
                    scoring_higher)
from .train import (StageParts, autocast_context, eager_step, fit_ranking, fit_retrieval,
                    with_precision)


class TorchBackend(BackendBase):
    """Retrieval (two towers) + ranking models of the seed in PyTorch, served with FAISS.

    Both models exist from construction (Keras-style init seeded by ``config.seed``; ranking
    by seed + 1) on ``config.train.device``. Repeated ``fit_*`` calls continue training (the
    optimizer state and the batch order's epoch counter ``epochs_done`` carry on).
    ``group``: ``SingleProcess()``, or the ``TorchGroup`` of an initialised torch.distributed
    group of several processes (see the module docstring).
    """

    # the backend's jobs for the CLI: several processes on one machine, and joining them
    launch_workers = staticmethod(distributed.launch_workers)
    process_group = staticmethod(distributed.process_group)

    name = "torch"

    def __init__(self, config: Config, spec: FeatureSpec) -> None:
        self.check_config(config)
        check_spec_matches_config(spec, config)
        super().__init__(config, spec)
        self.device = resolve_device(config.train.device)
        self.retrieval_model = build_retrieval_model(spec, config, device=self.device)
        self.ranking_model = build_ranking_model(spec, config, device=self.device)
        self.retrieval_task = make_retrieval_task(config.task)
        self.ranking_task = make_ranking_task(config.task)
        self.optimizers = {"retrieval": make_optimizer(self.retrieval_model, config.train),
                           "ranking": make_optimizer(self.ranking_model, config.train)}
        self._torch_group: Optional[TorchGroup] = current_group()
        self.group: Group = self._torch_group or SingleProcess()
        self._index: Optional[Index] = None
        self.broadcast_state()

    @property
    def tasks(self) -> dict[str, nn.Module]:
        """The two tasks (``retrieval_task``, ``ranking_task``), by stage."""
        return {"retrieval": self.retrieval_task, "ranking": self.ranking_task}

    def broadcast_state(self) -> None:
        """Rank 0's weights and Adagrad accumulators on every rank (nothing in one process);
        called at construction and after a checkpoint is restored."""
        if self._torch_group is not None:
            for stage, model in self.models.items():
                self._torch_group.broadcast_state(model, self.optimizers[stage])

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Refuse, before any data is loaded, a config this backend cannot run: every option
        is supported; ``config.train.device`` must exist on this machine (ValueError /
        RuntimeError naming the fix, see ``features.resolve_device``); under an initialised
        torch.distributed group the batch must split over its processes and ``nproc`` (when
        > 1) must be their number (``torch_impl.distributed.DistributedError``).
        ``cuda_graphs`` needs a CUDA device, and ``compile`` / ``cuda_graphs`` one process
        (UnsupportedOptionError). Recipes that several processes cannot run:
        ``twostage.recipes.refuse_in_parallel``."""
        device = resolve_device(config.train.device)
        if config.train.cuda_graphs and device.type != "cuda":
            raise UnsupportedOptionError(
                f"cuda_graphs=True needs a CUDA device, not device={config.train.device!r}: "
                "use --device cuda, or drop --cuda-graphs (the CPU has no graph capture)")
        if config.train.cuda_graphs and config.task.mixed_negatives:
            raise UnsupportedOptionError(
                "cuda_graphs=True captures batches of the training split only, not the sampled "
                "titles of mixed_negatives: drop --cuda-graphs or --mixed-negatives")
        group = current_group()
        if config.distributed.nproc > 1 or group is not None:
            refuse_in_parallel(config)
        if group is not None:
            if config.train.cuda_graphs or config.train.compile:
                raise UnsupportedOptionError(
                    "compile=True and cuda_graphs=True run in one process only (the gradient "
                    "all_reduce of several processes is not captured); drop --compile / "
                    "--cuda-graphs or run with --nproc 1")
            check_world(config, group.size)

    # --- training -------------------------------------------------------------------------------
    def _fit(self, stage: str, dataset: Dataset, epochs: int,
             on_epoch: EpochCallback | None) -> History:
        """``torch_impl.train.fit_<stage>`` with this backend's models, tasks and optimizers."""
        fit = fit_retrieval if stage == "retrieval" else fit_ranking
        extra = {"recipe": self.recipe} if stage == "retrieval" else {}
        return fit(self._model(stage), dataset, self.config, epochs,
                   epochs_done=self.epochs_done, on_epoch=on_epoch, parallel=self._torch_group,
                   optimizer=self.optimizers[stage], task=self.tasks[stage], **extra)

    def _batch_loss(self, stage: str, tensors: Batch
                    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(loss, outputs) of one encoded batch: the stage's ``compute_loss``."""
        if stage == "retrieval":
            return retrieval_loss(self.retrieval_model, self.retrieval_task, tensors,
                                  self.config.task.use_sampling_probability), None
        return ranking_loss(self.ranking_model, self.ranking_task, tensors)

    def _shard_loss(self, stage: str, tensors: Batch, shard
                    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(loss, outputs) of this rank's slice (``torch_impl.distributed``)."""
        negatives = self.config.distributed.cross_process_negatives
        if stage == "retrieval":
            return sharded_retrieval_loss(
                self.retrieval_model, self.retrieval_task, tensors, shard,
                use_sampling_probability=self.config.task.use_sampling_probability,
                negatives=negatives), None
        return sharded_ranking_loss(self.ranking_model, self.ranking_task, tensors, shard,
                                    negatives=negatives)

    def train_steps(self, stage: str, batches: Sequence[RawBatch]) -> list[float]:
        """One optimizer step per raw batch (user_id, timestamp, movie_title, label [,
        candidate_sampling_probability, sample_weight]), as ``fit`` takes them -> the per-step
        losses (read from the device once, after the last step). ``epochs_done`` is unchanged.
        Several processes: every rank passes the same GLOBAL batches, takes its slice of each,
        and gets the step losses summed over the ranks (as ``fit`` reports them)."""
        stage = check_stage(stage)
        parallel = None if self._torch_group is None else DataParallel(
            self._torch_group, stage, functools.partial(self._shard_loss, stage),
            self.config.distributed.cross_process_negatives)
        parts = StageParts(stage, self._model(stage), self.optimizers[stage],
                           loss=with_precision(functools.partial(self._batch_loss, stage),
                                               self.config, self.device), parallel=parallel)
        parts.model.train()
        losses = [self._step(parts, batch) for batch in batches]
        self._towers_changed(stage)
        return parts.reduce(torch.stack(losses)).tolist() if losses else []

    def _step(self, parts: StageParts, batch: RawBatch) -> torch.Tensor:
        """The fit's step (``train.eager_step``) on one raw global batch: its rows, and the
        sampled negatives' columns (``negative_``-prefixed, not rows) as the step's extras."""
        tensors = self.encode_batch(batch)
        extra = {k: tensors.pop(k) for k in list(tensors) if k.startswith(NEGATIVE_PREFIX)}
        rows = torch.arange(len(batch["user_id"]), device=self.device)
        return eager_step(parts, tensors)(rows, extra or None)[0]

    # --- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, module: nn.Module, tensors: Batch, width: int) -> np.ndarray:
        module.eval()
        with autocast_context(self.config, self.device):
            parts = [module(b).float().cpu().numpy()
                     for b in batch_iter(tensors, self.config.eval.eval_batch_size)]
        module.train()
        return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)

    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] str, [N] int64 -> [N, D] float32 query-tower outputs."""
        if len(user_ids) != len(timestamps):
            raise ValueError(f"{len(user_ids)} user ids but {len(timestamps)} timestamps")
        tensors = to_tensors(query_arrays(self.spec, self.config, self.recipe, user_ids,
                                          timestamps), self.device)
        return self._run(self.retrieval_model.query_model, tensors,
                         self.config.model.layer_sizes[-1])

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D] float32 candidate-tower outputs."""
        tensors = to_tensors(self.spec.encode_titles(titles), self.device)
        return self._run(self.retrieval_model.candidate_model, tensors,
                         self.config.model.layer_sizes[-1])

    def scoring_higher(self, queries: np.ndarray, truths: np.ndarray, corpus: np.ndarray,
                       budget_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
        """``twostage.evaluation.num_scoring_higher`` computed on this backend's device (exact
        top-k as a matmul plus a count, chunked by ``budget_bytes``; the same tie rules) ->
        numpy (greater [N] int64, finite [N] bool). Embeddings [N, D], [N, D], [M, D]; one
        copy to the device each and one read back. See ``torch_impl.tasks.scoring_higher``."""
        with torch.no_grad():
            greater, finite = scoring_higher(
                *(torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)
                  for a in (queries, truths, corpus)), budget_bytes=budget_bytes)
            return greater.cpu().numpy(), finite.cpu().numpy()

    def build_index(self, titles: np.ndarray) -> None:
        """Index (``config.index``) over the candidate embeddings of ``titles`` (the corpus,
        duplicates kept); rows returned by ``retrieve`` are positions in ``titles``."""
        titles = np.asarray(titles, dtype=object)
        if len(titles) == 0:
            raise ValueError("build_index needs at least one title (pass dataset.corpus_titles)")
        self._index = build_index(self.config.index, self.candidate_embeddings(titles))

    def retrieve(self, user_ids: np.ndarray, timestamps: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k: scores [N, k'] float32 descending, rows [N, k'] int64 into the indexed titles
        (k' = min(k, corpus size), as Index.search / TFRS)."""
        if self._index is None:
            raise RuntimeError("no index: call build_index(dataset.corpus_titles) first (and "
                               "again after training or loading)")
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
        """Weights + Adagrad accumulators by Keras name, epochs done, spec, config and the
        attached recipe lookups (genres, histories, ...), atomically (``twostage.checkpoint``).
        The index is not saved: rebuild it with build_index."""
        ckpt.save(directory, config=self.config, spec=self.spec, models=self.models,
                  optimizers=self.optimizers, epochs_done=self.epochs_done, recipe=self.recipe)

    @classmethod
    def load(cls, directory: Path | str, config: Optional[Config] = None,
             spec: Optional[FeatureSpec] = None) -> "TorchBackend":
        """Rebuild from :meth:`save`'s directory. ``config`` / ``spec``, when given, must match
        the stored ones (architecture fields / fingerprint) and the given config's runtime
        options (device, index, ...) are used; otherwise the stored ones. Raises
        ``twostage.checkpoint.CheckpointNotFoundError`` / ``CheckpointError``. The stored
        recipe lookups are attached (histories: the stored training ratings)."""
        stored = load_checkpoint(directory, backend=cls.name, config=config, spec=spec)
        backend = cls(stored.config, stored.spec)
        ckpt.restore(stored, backend.models, backend.optimizers)
        backend.attach_recipe_data(stored.recipe)
        backend.epochs_done.update(stored.epochs_done)
        backend.broadcast_state()  # several processes: rank 0's copy of the checkpoint
        return backend

    # --- parity helpers (mirror TfrsBackend) ----------------------------------------------------
    def get_weights(self, stage: str) -> dict[str, np.ndarray]:
        """All weights of a stage by tfrs_impl's names, Keras layout (kernel [in, out])."""
        return get_keras_weights(self._model(stage), KERAS_PREFIX[stage])

    def set_weights(self, stage: str, weights: Mapping[str, np.ndarray]) -> None:
        set_keras_weights(self._model(stage), weights, KERAS_PREFIX[stage])
        self._towers_changed(stage)

    def encode_batch(self, batch: RawBatch) -> Batch:
        """Raw numpy batch (user_id, timestamp, movie_title [, label,
        candidate_sampling_probability, sample_weight, mixed negatives]) -> model input
        tensors (``features.encode_raw_batch``)."""
        return encode_raw_batch(self.spec, batch, self.device)

    def batch_loss(self, stage: str, batch: RawBatch, training: bool = True) -> float:
        """The task loss of one raw batch (retrieval: SUM over the batch; ranking: mean BCE).
        ``training`` is accepted for symmetry with TfrsBackend (no layer depends on it). In this
        process alone, whatever ``group`` is (as :meth:`loss_and_gradients`)."""
        stage = check_stage(stage)
        with torch.no_grad():
            return float(self._batch_loss(stage, self.encode_batch(batch))[0])

    def loss_and_gradients(self, stage: str, batch: RawBatch
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {Keras weight name: dense gradient, kernels [in, out]}) of one training step."""
        model = self._model(stage)
        model.zero_grad(set_to_none=True)
        loss = self._batch_loss(stage, self.encode_batch(batch))[0]
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
