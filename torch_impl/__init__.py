"""The PyTorch backend: the seed's TFRS/Keras models, losses, optimizer and training loop in torch.

Every module mirrors its ``tfrs_impl`` namesake and reproduces what the Keras/TFRS code computes
(the sources under ``tensorflow_recommenders/`` and ``tf_keras/src/`` are the specification; each
docstring names the lines it follows):

- :mod:`torch_impl.features`   encoded numpy arrays (``FeatureSpec``) -> tensors, batching,
  the device of ``config.train.device``
- :mod:`torch_impl.models`     UserModel, QueryModel, MovieModel, CandidateModel, RetrievalModel,
  RankingModel with the seed's attribute names, Keras initialisation, Keras-named weights
- :mod:`torch_impl.tasks`      ``Retrieval`` (tfrs.tasks.Retrieval: a list of logits corrections)
  and ``Ranking`` (the Keras BinaryCrossentropy variants), the loss of a batch, and the metrics
  computed while training (FactorizedTopK, BinaryAccuracy)
- :mod:`torch_impl.optim`      ``KerasAdagrad``, ``make_optimizer``, accumulators by Keras name
- :mod:`torch_impl.train`      the one fit loop of both stages and their validation
- :mod:`torch_impl.index`      a ``twostage.index`` Index over torch candidate embeddings
- :mod:`torch_impl.checkpoint` the torch side of ``twostage.checkpoint``
- :mod:`torch_impl.backend`    ``TorchBackend`` (implements ``twostage.backend.Backend``)

Importing this package never imports TensorFlow. The names below are the plain functions the
tests and the parity suite use; import them from here.
"""
from __future__ import annotations

from .features import batch_iter, encode_queries, encode_titles, select_rows, to_tensors
from .models import (CandidateModel, MovieModel, QueryModel, RankingModel, RetrievalModel,
                     UserModel, bag_mean, build_ranking_model, build_retrieval_model,
                     get_keras_weights, keras_init_, masked_mean, set_keras_weights)
from .optim import KerasAdagrad, get_accumulators, make_optimizer, set_accumulators
from .tasks import (BinaryAccuracy, HardNegativeMining, KerasEagerBCE, KerasGraphBCE, LogitsBCE,
                    Ranking, RemoveAccidentalHits, Retrieval, SamplingProbabilityCorrection,
                    ScoreMask, Temperature, factorized_top_k, make_ranking_task,
                    make_retrieval_task, ranking_loss, retrieval_loss)
from .train import (StageParts, fit, fit_ranking, fit_retrieval, train_step, validate_ranking,
                    validate_retrieval)

__all__ = [
    "batch_iter", "encode_queries", "encode_titles", "select_rows", "to_tensors",
    "UserModel", "QueryModel", "MovieModel", "CandidateModel", "RetrievalModel", "RankingModel",
    "build_retrieval_model", "build_ranking_model", "keras_init_", "masked_mean", "bag_mean",
    "get_keras_weights", "set_keras_weights",
    "KerasAdagrad", "make_optimizer", "get_accumulators", "set_accumulators",
    "Retrieval", "Temperature", "SamplingProbabilityCorrection", "RemoveAccidentalHits",
    "ScoreMask", "HardNegativeMining", "Ranking", "KerasGraphBCE", "KerasEagerBCE", "LogitsBCE",
    "make_retrieval_task", "make_ranking_task", "retrieval_loss", "ranking_loss",
    "factorized_top_k", "BinaryAccuracy",
    "StageParts", "fit", "fit_retrieval", "fit_ranking", "train_step", "validate_retrieval",
    "validate_ranking",
]
