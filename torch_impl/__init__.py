"""The PyTorch backend: the seed's TFRS/Keras models, loss, optimizer and training loop in torch.

Every module mirrors its ``tfrs_impl`` namesake and reproduces what the Keras/TFRS code computes
(the sources under ``tensorflow_recommenders/`` and ``tf_keras/src/`` are the specification; each
docstring names the lines it follows):

- :mod:`torch_impl.features`   encoded numpy arrays (``FeatureSpec``) -> tensors, batching
- :mod:`torch_impl.models`     UserModel, QueryModel, MovieModel, CandidateModel, RetrievalModel,
  RankingModel with the seed's attribute names and Keras initialisation
- :mod:`torch_impl.tasks`      ``Retrieval`` (tfrs.tasks.Retrieval) and ``Ranking``
  (tfrs.tasks.Ranking + Keras BinaryCrossentropy / BinaryAccuracy)
- :mod:`torch_impl.train`      ``KerasAdagrad``, the fit loops, FactorizedTopK validation
- :mod:`torch_impl.index`      FAISS index (flat / ivf / hnsw)
- :mod:`torch_impl.checkpoint` atomic save / load with spec and config checks
- :mod:`torch_impl.backend`    ``TorchBackend`` (implements ``twostage.backend.Backend``)

Importing this package never imports TensorFlow. The names below are the plain functions the
parity suite uses; import them from here.
"""
from __future__ import annotations

from .features import batch_iter, encode_queries, encode_titles, select_rows, to_tensors
from .models import (CandidateModel, MovieModel, QueryModel, RankingModel, RetrievalModel,
                     UserModel, bag_mean, build_ranking_model, build_retrieval_model,
                     get_keras_weights, keras_init_, masked_mean, set_keras_weights)
from .tasks import Ranking, Retrieval, make_ranking_task, make_retrieval_task
from .train import (KerasAdagrad, factorized_top_k, fit_ranking, fit_retrieval, make_optimizer,
                    ranking_loss, retrieval_loss, train_step, tune_malloc, validate_ranking,
                    validate_retrieval)

__all__ = [
    "batch_iter", "encode_queries", "encode_titles", "select_rows", "to_tensors",
    "UserModel", "QueryModel", "MovieModel", "CandidateModel", "RetrievalModel", "RankingModel",
    "build_retrieval_model", "build_ranking_model", "keras_init_", "masked_mean", "bag_mean",
    "get_keras_weights", "set_keras_weights",
    "Retrieval", "Ranking", "make_retrieval_task", "make_ranking_task",
    "KerasAdagrad", "make_optimizer", "retrieval_loss", "ranking_loss", "train_step",
    "fit_retrieval", "fit_ranking", "factorized_top_k", "validate_retrieval",
    "validate_ranking", "tune_malloc",
]
