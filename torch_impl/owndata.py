"""A schema's two towers and ranking model in PyTorch, trained on a
:class:`twostage.data.schema_data.SchemaDataset` (the twin of ``tfrs_impl/owndata.py``).

The towers are the seed's, built from the schema's slots: each tower concatenates its slots
(``features.SlotConcat``) and applies the seed's tower MLP; the ranking model concatenates both
towers' slots and applies the seed's ranking MLP with a sigmoid. Losses are the seed's tasks
(``tasks.Retrieval`` in-batch softmax, ``tasks.Ranking`` BCE), the optimizer Keras' Adagrad,
the batches ``twostage.schedule.BatchPlan``'s (the order the TFRS twin is fed).

Weight names (both twins; Keras layout, kernels [in, out]): ``{tower}/{feature}/embeddings``,
``{tower}/dense/{i}/kernel`` and ``/bias`` for tower in (query, candidate);
``ranking/{tower}/{feature}/embeddings`` and ``ranking/dense/{i}/kernel`` / ``/bias``.
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
import torch
from torch import nn

from twostage.backend import EpochCallback, History, check_stage
from twostage.config import Config
from twostage.data.schema_data import SchemaDataset, Slot
from twostage.owndata import TrainerBase
from twostage.schedule import BatchPlan

from . import train as fitting
from .features import SlotConcat, batch_iter, resolve_device, to_tensors
from .models import DenseStack, keras_init_, tower_stack
from .optim import make_optimizer
from .tasks import make_ranking_task, make_retrieval_task

Batch = Mapping[str, torch.Tensor]


class Tower(nn.Module):
    """slots -> SlotConcat -> the seed's tower MLP -> [B, layer_sizes[-1]]."""

    def __init__(self, slots: tuple[Slot, ...], dim: int, layer_sizes) -> None:
        super().__init__()
        self.features = SlotConcat(slots, dim)
        self.dense = tower_stack(self.features.out_features, layer_sizes)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.dense(self.features(batch))


class RetrievalModel(nn.Module):
    """The two towers; ``temperature`` is None (a learned one is not offered for schemas)."""

    temperature = None

    def __init__(self, data: SchemaDataset, config: Config) -> None:
        super().__init__()
        m = config.model
        self.query = Tower(data.query_slots, m.embedding_dim, m.layer_sizes)
        self.candidate = Tower(data.candidate_slots, m.embedding_dim, m.layer_sizes)


class RankingModel(nn.Module):
    """concat[query slots, candidate slots] -> Dense(ranking sizes, relu) -> Dense(1);
    ``logits`` [B, 1], ``forward`` the sigmoid."""

    def __init__(self, data: SchemaDataset, config: Config) -> None:
        super().__init__()
        dim, sizes = config.model.embedding_dim, tuple(config.model.ranking_layer_sizes)
        self.query = SlotConcat(data.query_slots, dim)
        self.candidate = SlotConcat(data.candidate_slots, dim)
        width = self.query.out_features + self.candidate.out_features
        self.dense = DenseStack(width, [*sizes, 1], ["relu"] * len(sizes) + [None])

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.dense(torch.cat([self.query(batch), self.candidate(batch)], dim=1))

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.sigmoid(self.logits(batch))


def weight_names(model: nn.Module, prefix: str) -> dict[str, tuple[str, bool]]:
    """{canonical name: (torch parameter name, transposed)} of a schema model (module doc)."""
    out = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[-2] == "embedding":           # <tower>[.features].inputs.<i>.embedding.weight
            tower = parts[0]
            slots = model.get_submodule(".".join(parts[:-4])).slots
            out[f"{prefix}{tower}/{slots[int(parts[-3])].name}/embeddings"] = (name, False)
        else:                                  # <tower>.dense.<i>.weight|bias or dense.<i>.
            head = "/".join(parts[:-2])
            kind = "kernel" if parts[-1] == "weight" else "bias"
            out[f"{prefix}{head}/{parts[-2]}/{kind}"] = (name, kind == "kernel")
    return out


class SchemaTrainer(TrainerBase):
    """Both stages of a schema run on one device: build, fit, embed, score, save.

    ``fit(stage, epochs)`` continues training (``epochs_done`` carries the batch order on).
    """

    name = "torch"

    def __init__(self, data: SchemaDataset, config: Config) -> None:
        super().__init__(data, config)
        self.device = resolve_device(config.train.device)
        self.models = {
            "retrieval": self._init(RetrievalModel(data, config), config.seed),
            "ranking": self._init(RankingModel(data, config), config.seed + 1)}
        self.tasks = {"retrieval": make_retrieval_task(config.task),
                      "ranking": make_ranking_task(config.task)}
        self.optimizers = {s: make_optimizer(m, config.train) for s, m in self.models.items()}

    def _init(self, model: nn.Module, seed: int) -> nn.Module:
        return keras_init_(model, torch.Generator().manual_seed(seed)).to(self.device)

    # --- losses -------------------------------------------------------------------------------
    def loss(self, stage: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, outputs) of an encoded batch (``SchemaDataset.examples`` as tensors):
        retrieval the in-batch softmax SUM, ranking the mean BCE."""
        model, task = self.models[stage], self.tasks[stage]
        if stage == "retrieval":
            ids = batch["item_index"] if task.remove_accidental_hits else None
            return task(model.query(batch), model.candidate(batch), candidate_ids=ids), None
        logits = model.logits(batch).float()
        predictions = torch.sigmoid(logits)
        return task(batch["label"], predictions, logits=logits), predictions

    def examples(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The tensors of interaction ``rows`` (``SchemaDataset.examples``)."""
        return to_tensors(self.data.examples(np.asarray(rows, np.int64)), self.device)

    # --- training -----------------------------------------------------------------------------
    def fit(self, stage: str, epochs: int, examples: Mapping[str, np.ndarray] | None = None,
            on_epoch: EpochCallback | None = None) -> History:
        """:meth:`twostage.owndata.TrainerBase.fit` by torch_impl.train.fit, the seed's loop."""
        stage = check_stage(stage)
        if examples is None:
            examples = self.data.examples(self.data.split.train)
        tensors = to_tensors(examples, self.device)
        parts = fitting.StageParts(stage, self.models[stage], self.optimizers[stage],
                                   loss=functools.partial(self.loss, stage))
        plan = BatchPlan(np.arange(len(examples["label"])), self.config.train.batch_size,
                         self.config.seed)
        return fitting.fit(parts, tensors, plan, self.config, epochs=epochs,
                           epochs_done=self.epochs_done, on_epoch=on_epoch)  # counts epochs

    def batch_loss(self, stage: str, rows: np.ndarray) -> float:
        """The loss of one batch of interaction ``rows``, no update."""
        with torch.no_grad():
            return float(self.loss(check_stage(stage), self.examples(rows))[0])

    def loss_and_gradients(self, stage: str, rows: np.ndarray
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, {weight name: dense gradient, Keras layout}) of one batch, no update."""
        model = self.models[check_stage(stage)]
        model.zero_grad(set_to_none=True)
        value = self.loss(stage, self.examples(rows))[0]
        value.backward()
        params = dict(model.named_parameters())
        grads = {}
        for key, (name, transposed) in weight_names(model, _prefix(stage)).items():
            g = params[name].grad
            g = torch.zeros_like(params[name]) if g is None else g
            grads[key] = (g.T if transposed else g).detach().cpu().numpy().copy()
        model.zero_grad(set_to_none=True)
        return float(value.detach()), grads

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, module: nn.Module, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        module.eval()
        tensors = to_tensors(arrays, self.device)
        parts = [module(b).float().cpu().numpy()
                 for b in batch_iter(tensors, self.config.eval.eval_batch_size)]
        module.train()
        return np.concatenate(parts)

    # --- weights ------------------------------------------------------------------------------
    def get_weights(self, stage: str) -> dict[str, np.ndarray]:
        """Every weight of ``stage`` by canonical name, Keras layout (module docstring)."""
        params = dict(self.models[check_stage(stage)].named_parameters())
        return {k: (params[n].T if t else params[n]).detach().cpu().numpy().copy()
                for k, (n, t) in weight_names(self.models[stage], _prefix(stage)).items()}

    def set_weights(self, stage: str, weights: Mapping[str, np.ndarray]) -> None:
        """Set every weight of ``stage`` (KeyError naming a missing one)."""
        params = dict(self.models[check_stage(stage)].named_parameters())
        with torch.no_grad():
            for key, (name, transposed) in weight_names(self.models[stage],
                                                        _prefix(stage)).items():
                value = torch.as_tensor(np.asarray(weights[key], np.float32))
                params[name].copy_(value.T if transposed else value)


def _prefix(stage: str) -> str:
    return "ranking/" if stage == "ranking" else ""
