"""``TfrsBackend``: the seed's TFRS models behind ``twostage.backend.Backend`` (numpy in, out).

The twin of torch_impl/backend.py. What this backend cannot honour is refused at construction
(:data:`SUPPORTED`, ``twostage.backend.check_supported``): it serves with BruteForce (exact, so
``index.kind="flat"`` only), runs on the CPU, and its ranking loss is what Keras fit computes
(``task.ranking_loss="keras_graph"``).

``config.distributed.nproc > 1``: the models and optimizers are built in the scope of a
``tf.distribute.MirroredStrategy`` over nproc local devices (``tfrs_impl.distributed``, which
states the semantics with their TFRS/Keras source lines) and trained by Keras fit on a
distributed dataset: the global batch ``config.train.batch_size`` is split into nproc
``np.array_split`` slices, one per replica, each scored against its own candidates only
(``distributed.cross_process_negatives="replica"``; "global" is refused,
:data:`DISTRIBUTED_SUPPORTED`). The backend stays one process (``group`` is
``SingleProcess``); inference and evaluation run outside the strategy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from twostage.backend import (STAGES, BackendBase, EpochCallback, History, RawBatch,
                              UnsupportedOptionError, check_supported)
from twostage.checkpoint import load_checkpoint
from twostage.config import Config
from twostage.data.features import FeatureSpec
from twostage.dataset import Dataset, check_spec_matches_config
from twostage.group import SingleProcess
from twostage.recipes import refuse_in_parallel

from . import checkpoint, distributed, index as index_lib, models, optim, tasks, train
from .features import query_arrays, to_tensors

# "section.field" -> the values this backend honours.
SUPPORTED: dict[str, tuple] = {"index.kind": ("flat",), "train.device": ("cpu",),
                               "task.ranking_loss": ("keras_graph",),
                               "train.precision": ("fp32",), "train.compile": (False,),
                               "train.cuda_graphs": (False, None)}
# Further limits with nproc > 1 (MirroredStrategy): TFRS's Retrieval never gathers candidates
# across replicas (tfrs_impl/distributed.py).
DISTRIBUTED_SUPPORTED: dict[str, tuple] = {"distributed.cross_process_negatives": ("replica",)}


class TfrsBackend(BackendBase):
    """Retrieval (two towers) + ranking models of the seed, on TensorFlow Recommenders.

    Both models exist from construction (variables created, init seeded by ``config.seed``),
    each with its own Keras Adagrad (``optimizers``; compiled into the model at its first
    training step). ``fit_*`` train them, counting ``epochs_done`` per stage (where the shared
    batch order resumes; saved in checkpoints with the Adagrad accumulators); ``build_index`` +
    ``retrieve`` serve with BruteForce. ``strategy``: the MirroredStrategy of nproc > 1 (None
    for one replica); construct the backend before anything else in the process runs
    TensorFlow, since logical CPU devices can only be configured before that
    (``distributed.DeviceSetupError`` otherwise).
    """

    name = "tfrs"

    def __init__(self, config: Config, spec: FeatureSpec):
        self.check_config(config)
        check_spec_matches_config(spec, config)
        strategy = distributed.strategy_for(config)
        built, optimizers = build_stages(spec, config, strategy)
        self._setup(config, spec, built, optimizers, {stage: 0 for stage in STAGES}, strategy)

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Refuse, before any data is loaded, a config this backend cannot honour
        (UnsupportedOptionError, a ValueError, naming the option and the fix; see SUPPORTED,
        and DISTRIBUTED_SUPPORTED with nproc > 1; the recipes replicas cannot run:
        ``twostage.recipes.refuse_in_parallel``)."""
        limits = dict(SUPPORTED)
        if config.distributed.nproc > 1:
            limits.update(DISTRIBUTED_SUPPORTED)
            refuse_in_parallel(config)
        try:
            check_supported(cls.name, config, limits)
        except UnsupportedOptionError as e:
            if "negatives=" not in str(e):
                raise
            raise UnsupportedOptionError(f"{e} ({distributed.GLOBAL_NEGATIVES_REASON})") from None

    @classmethod
    def _from_parts(cls, config: Config, spec: FeatureSpec, stage_models: Mapping,
                    optimizers: Mapping[str, optim.Adagrad], epochs_done: Mapping[str, int],
                    strategy=None) -> "TfrsBackend":
        """A backend around models built elsewhere (:meth:`load`, which has checked ``config``
        with :meth:`check_config` as __init__ does, and built them in ``strategy``'s scope)."""
        backend = cls.__new__(cls)
        backend._setup(config, spec, stage_models, optimizers, epochs_done, strategy)
        return backend

    def _setup(self, config: Config, spec: FeatureSpec, stage_models: Mapping,
               optimizers: Mapping[str, optim.Adagrad], epochs_done: Mapping[str, int],
               strategy=None) -> None:
        BackendBase.__init__(self, config, spec)
        self.strategy = strategy
        self.retrieval_model = stage_models["retrieval"]
        self.ranking_model = stage_models["ranking"]
        self.optimizers: dict[str, optim.Adagrad] = dict(optimizers)
        self.epochs_done.update({stage: int(epochs_done.get(stage, 0)) for stage in STAGES})
        self.group = SingleProcess()  # MirroredStrategy replicas live in this one process
        self._corpus_attached = False

    # --- training ------------------------------------------------------------------------------
    def _trainable(self, stage: str):
        """The stage's model, compiled with its optimizer (once)."""
        model = self._model(stage)
        with distributed.scope(self.strategy):
            train.compile_model(model, self.config, self.optimizers[stage])
        return model

    def _fit(self, stage: str, dataset: Dataset, epochs: int,
             on_epoch: EpochCallback | None) -> History:
        """``tfrs_impl.train.fit_<stage>`` of the compiled model (retrieval: with the corpus
        metrics attached once, before Keras' first fit collects the metrics)."""
        if stage == "ranking":
            return train.fit_ranking(self._trainable(stage), dataset, self.config, epochs,
                                     epochs_done=self.epochs_done, on_epoch=on_epoch,
                                     parallel=self.strategy)
        if not self._corpus_attached:
            with distributed.scope(self.strategy):  # metric variables belong to the strategy
                tasks.attach_corpus_metrics(self.retrieval_model, dataset.corpus_titles)
            self._corpus_attached = True
        return train.fit_retrieval(self._trainable(stage), dataset, self.config, epochs,
                                   epochs_done=self.epochs_done, on_epoch=on_epoch,
                                   parallel=self.strategy, recipe=self.recipe)

    def train_steps(self, stage: str, batches: list[RawBatch]) -> list[float]:
        """One Keras fit step per raw batch -> per-step losses (``train.train_steps``; with
        nproc > 1 each batch is a global batch split over the replicas and the loss is the sum
        of the replicas' losses)."""
        losses = train.train_steps(self._trainable(stage), self.config, batches,
                                   strategy=self.strategy)
        self._towers_changed(stage)
        return losses

    # --- inference -----------------------------------------------------------------------------
    def query_embeddings(self, user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """[N] str, [N] int64 -> [N, D] float32."""
        arrays = query_arrays(self.config, self.recipe, user_ids, timestamps)
        bs = self.config.eval.eval_batch_size
        parts = [self.retrieval_model.query_model(to_tensors(
                     {k: v[i: i + bs] for k, v in arrays.items()})).numpy()
                 for i in range(0, len(user_ids), bs)]
        return (np.concatenate(parts) if parts else
                np.zeros((0, self.config.model.layer_sizes[-1]), np.float32)).astype(np.float32)

    def candidate_embeddings(self, titles: np.ndarray) -> np.ndarray:
        """[M] str -> [M, D] float32."""
        if len(titles) == 0:
            return np.zeros((0, self.config.model.layer_sizes[-1]), np.float32)
        return index_lib.candidate_embeddings(self.retrieval_model.candidate_model, titles,
                                              self.config.eval.eval_batch_size).numpy()

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
        arrays = query_arrays(self.config, self.recipe, user_ids, timestamps)
        extras = {key: v for key, v in arrays.items() if key not in ("user_id", "timestamp")}
        scores, rows = index_lib.query(self._index, user_ids, timestamps, k,
                                       self.config.eval.eval_batch_size, extras=extras)
        return scores, rows.astype(np.int64)

    def ranking_scores(self, user_ids: np.ndarray, timestamps: np.ndarray, titles: np.ndarray
                       ) -> np.ndarray:
        """[N] inputs -> [N] float32 sigmoid probabilities."""
        user_ids = np.asarray(user_ids, dtype=object)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        titles = np.asarray(titles, dtype=object)
        bs = self.config.eval.eval_batch_size
        parts = [self.ranking_model.ranking_model(to_tensors(
                     {"user_id": user_ids[i: i + bs], "timestamp": timestamps[i: i + bs],
                      "movie_title": titles[i: i + bs]})).numpy()[:, 0]
                 for i in range(0, len(user_ids), bs)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    # --- persistence ---------------------------------------------------------------------------
    def save(self, directory: Path | str) -> None:
        """Weights, Adagrad accumulators, epochs done, spec, config and the attached recipe
        lookups (genres, histories, ...), atomically (twostage.checkpoint)."""
        checkpoint.save(directory, config=self.config, spec=self.spec,
                        models=self.models, optimizers=self.optimizers,
                        epochs_done=self.epochs_done, recipe=self.recipe)

    @classmethod
    def load(cls, directory: Path | str, config: Config | None = None,
             spec: FeatureSpec | None = None) -> "TfrsBackend":
        """A backend from a checkpoint written by :meth:`save`. ``config``: must agree with the
        stored one on the architecture fields; its runtime options are used (and must be ones
        this backend supports). ``spec``: must be the stored one. The stored recipe lookups
        are attached (histories: the stored training ratings)."""
        stored = load_checkpoint(directory, backend=cls.name, config=config, spec=spec)
        cls.check_config(stored.config)  # before building anything
        strategy = distributed.strategy_for(stored.config)
        built, optimizers = build_stages(stored.spec, stored.config, strategy)
        checkpoint.restore(stored, built, optimizers)
        backend = cls._from_parts(stored.config, stored.spec, built, optimizers,
                                  stored.epochs_done, strategy)
        backend.attach_recipe_data(stored.recipe)
        return backend

    def export_saved_model(self, directory: Path | str, corpus_titles: np.ndarray,
                           k: int = index_lib.DEFAULT_K, force: bool = False) -> Path:
        """SavedModel of query model + BruteForce over ``corpus_titles`` (see checkpoint)."""
        return checkpoint.export_saved_model(directory, self.retrieval_model, corpus_titles, k,
                                             force=force)

    # --- weights and losses (export, parity) ---------------------------------------------------
    def get_weights(self, stage: str) -> dict[str, np.ndarray]:
        """All trainable weights of a stage by name (Keras layout: kernel [in, out])."""
        return models.get_weights(self._model(stage))

    def set_weights(self, stage: str, weights: Mapping[str, np.ndarray]) -> None:
        models.set_weights(self._model(stage), dict(weights))
        self._towers_changed(stage)

    def get_accumulators(self, stage: str) -> dict[str, np.ndarray]:
        """The stage's Adagrad accumulators by weight name (what a checkpoint stores)."""
        return optim.get_accumulators(self.optimizers[stage], self._model(stage))

    def batch_loss(self, stage: str, batch: RawBatch, training: bool = True) -> float:
        """The task loss of one raw batch (retrieval: SUM over the batch; ranking: mean BCE).
        Retrieval batches need ``candidate_sampling_probability`` when the config uses it."""
        return train.batch_loss(self._model(stage), batch, training, self.strategy)

    def loss_and_gradients(self, stage: str, batch: RawBatch
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, dense gradients by weight name) of one training step, via tf.GradientTape."""
        return train.loss_and_gradients(self._model(stage), batch, self.strategy)


def build_stages(spec: FeatureSpec, config: Config, strategy=None
                 ) -> tuple[dict, dict[str, optim.Adagrad]]:
    """Both stages' models (variables created, init seeded by ``config.seed``) and Adagrads,
    in ``strategy``'s scope when given (MirroredVariables, mirrored accumulators)."""
    with distributed.scope(strategy):
        built = {"retrieval": models.build_retrieval_model(spec, config),
                 "ranking": models.build_ranking_model(spec, config)}
        optimizers = {stage: optim.make_optimizer(config.train) for stage in STAGES}
    return built, optimizers
