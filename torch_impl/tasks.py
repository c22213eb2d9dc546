"""The TFRS tasks in torch: the losses of both stages and the metrics computed while training.

Sources followed (TFRS 0.7.7, tf_keras 2.21, under site-packages):

- tensorflow_recommenders/tasks/retrieval.py ``Retrieval.call`` (lines 172-210): scores = q @ c^T
  (or max over query heads for [Q, H, D] queries); labels = tf.eye(num_queries, num_candidates);
  then in this order: ``/ temperature``; ``SamplingProbablityCorrection`` (when probabilities are
  given); ``RemoveAccidentalHits`` (when enabled); ``score_mask`` (tf.where(mask, scores,
  MIN_FLOAT), when given); ``HardNegativeMining`` (when enabled); loss =
  ``CategoricalCrossentropy(from_logits=True, reduction=SUM)(labels, scores, sample_weight)``.
  Candidates beyond the first num_queries rows are extra negatives for every query (their label
  columns are all zero because ``eye`` is rectangular). Here each step is one small
  :class:`Correction` and :class:`Retrieval` applies its list in that order.
- tensorflow_recommenders/layers/loss.py: ``SamplingProbablityCorrection`` (lines 150-158):
  scores - log(clip(p, 1e-6, 1)) per candidate column; ``RemoveAccidentalHits`` (lines 114-147):
  scores + MIN_FLOAT where the candidate id equals the row's positive id, except the positive
  itself; ``HardNegativeMining`` (lines 61-111): top_k(scores + labels * MAX_FLOAT, min(n + 1, C))
  then gather scores and labels; MIN_FLOAT / MAX_FLOAT = float32 min / max divided by 100.
- tf_keras/src/losses.py + utils/losses_utils.py ``compute_weighted_loss``: per-row softmax
  cross-entropy times sample_weight, reduced with SUM (no division).
- Ranking: ``tfrs.tasks.Ranking(loss=BinaryCrossentropy(), metrics=[BinaryAccuracy()])``; the
  loss classes below say what Keras computes in the seed (``config.task.ranking_loss`` picks one).
- Metrics: tensorflow_recommenders/metrics/factorized_top_k.py (:func:`factorized_top_k`) and
  Keras ``BinaryAccuracy`` (:class:`BinaryAccuracy`, the ranking task's training metric).

The loss of one batch of a model (:func:`retrieval_loss`, :func:`ranking_loss`) is the seed's
``compute_loss``; ``torch_impl.train`` trains on it, ``torch_impl.backend`` evaluates it.

Global in-batch negatives (``torch_impl.distributed``,
``config.distributed.cross_process_negatives="global"``): a process holds rows
``offset .. offset + Q - 1`` of the global batch and scores them against the candidates of every
process, so row i's positive is column ``offset + i``: "labels None" stands for ``eye(Q, C)``
shifted right by ``positive_offset`` (``RetrievalInputs.positive_offset``), which every
correction and the fused cross-entropy honour. With offset 0 it is TFRS's eye.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twostage.config import RANKING_LOSSES, Config, TaskConfig, section_of
from twostage.group import Group, SingleProcess

from .features import NEGATIVE_PROBABILITY, SAMPLING_PROBABILITY, negative_inputs
from .models import RankingModel, RetrievalModel

MIN_FLOAT = float(np.finfo(np.float32).min / 100.0)
MAX_FLOAT = float(np.finfo(np.float32).max / 100.0)
SAMPLING_PROBABILITY_FLOOR = 1e-6  # SamplingProbablityCorrection's clip
KERAS_EPSILON = 1e-7  # tf_keras.backend.epsilon()
TOP_K_METRIC = "factorized_top_k/top_{}_categorical_accuracy"  # TFRS FactorizedTopK's names

# [Q, C] float one-hot, or None: eye(Q, C) shifted by RetrievalInputs.positive_offset (row i's
# positive is column offset + i), never materialised
Labels = Optional[torch.Tensor]


def _weighted_sum(losses: torch.Tensor, sample_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Keras Reduction.SUM of per-row losses [B] with optional weights [B] (or [B, 1])."""
    if sample_weight is None:
        return losses.sum()
    return (losses * sample_weight.reshape(-1).to(losses.dtype)).sum()


# --- retrieval: logits corrections, in TFRS's order -----------------------------------------------

@dataclass(frozen=True)
class RetrievalInputs:
    """The optional per-batch inputs of ``tfrs.tasks.Retrieval.call`` the corrections read:
    candidate_sampling_probability [C], candidate_ids [C], score_mask [Q, C] bool (False =
    excluded); ``positive_offset``: row i's positive is column ``positive_offset + i`` (0 in
    TFRS; a process's first global row under global negatives)."""

    candidate_sampling_probability: Optional[torch.Tensor] = None
    candidate_ids: Optional[torch.Tensor] = None
    score_mask: Optional[torch.Tensor] = None
    positive_offset: int = 0


class Correction(Protocol):
    """One step of ``Retrieval.call`` between the scores and the loss:
    (scores [Q, C], labels, inputs) -> (scores, labels); labels None stands for eye(Q, C)."""

    def __call__(self, scores: torch.Tensor, labels: Labels, inputs: RetrievalInputs
                 ) -> tuple[torch.Tensor, Labels]: ...


class Temperature:
    """``scores / temperature`` (retrieval.py line 188)."""

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        self.temperature = temperature

    def __repr__(self) -> str:
        return f"Temperature({self.temperature})"

    def __call__(self, scores, labels, inputs):
        return scores / self.temperature, labels


class SamplingProbabilityCorrection:
    """logQ: ``scores - log(clip(p, 1e-6, 1))`` per candidate column (layers/loss.py
    SamplingProbablityCorrection); nothing when the batch has no probabilities (retrieval.py
    line 190 applies it only when they are given)."""

    def __repr__(self) -> str:
        return "SamplingProbabilityCorrection()"

    def __call__(self, scores, labels, inputs):
        p = inputs.candidate_sampling_probability
        if p is None:
            return scores, labels
        p = p.reshape(-1).to(scores.dtype)
        return scores - torch.log(p.clamp(SAMPLING_PROBABILITY_FLOOR, 1.0)), labels


class RemoveAccidentalHits:
    """Negatives with the positive's candidate id get ``+ MIN_FLOAT`` (layers/loss.py
    RemoveAccidentalHits: ``logits + (equal(ids[argmax(labels)], ids^T) - labels) *
    MIN_FLOAT``); needs ``candidate_ids``."""

    def __repr__(self) -> str:
        return "RemoveAccidentalHits()"

    def __call__(self, scores, labels, inputs):
        ids = inputs.candidate_ids
        if ids is None:
            raise ValueError("When accidental hit removal is enabled, candidate ids must be "
                             "supplied (pass candidate_ids=[C] ids, e.g. title_index).")
        if labels is None:
            # scores + 1 * MIN_FLOAT on hits, scores + 0 elsewhere: the same floats as TFRS.
            hits = accidental_hits(ids, *scores.shape, offset=inputs.positive_offset)
            return torch.where(hits, scores + MIN_FLOAT, scores), labels
        ids = ids.reshape(-1)
        positive = ids[labels.argmax(dim=1)]
        duplicate = (positive.unsqueeze(1) == ids.unsqueeze(0)).to(labels.dtype) - labels
        return scores + duplicate * MIN_FLOAT, labels


class ScoreMask:
    """``tf.where(score_mask, scores, MIN_FLOAT)`` (retrieval.py line 203); nothing without a
    mask."""

    def __repr__(self) -> str:
        return "ScoreMask()"

    def __call__(self, scores, labels, inputs):
        if inputs.score_mask is None:
            return scores, labels
        return scores.masked_fill(~inputs.score_mask, MIN_FLOAT), labels


class HardNegativeMining:
    """Keep per row the positive and the ``num_hard_negatives`` largest other scores (layers/
    loss.py HardNegativeMining) -> scores and labels [Q, k], k = min(n + 1, C)."""

    def __init__(self, num_hard_negatives: int) -> None:
        if int(num_hard_negatives) < 1:
            raise ValueError(f"num_hard_negatives={num_hard_negatives} must be >= 1")
        self.num_hard_negatives = int(num_hard_negatives)

    def __repr__(self) -> str:
        return f"HardNegativeMining({self.num_hard_negatives})"

    def __call__(self, scores, labels, inputs):
        if labels is None:
            labels = shifted_eye(*scores.shape, inputs.positive_offset, scores)
        return hard_negative_mining(scores, labels, self.num_hard_negatives)


def retrieval_corrections(temperature: float | None = None,
                          num_hard_negatives: int | None = None,
                          remove_accidental_hits: bool = False) -> list[Correction]:
    """The corrections ``tfrs.tasks.Retrieval(temperature, num_hard_negatives,
    remove_accidental_hits)`` applies, in its order. logQ and the score mask are always in the
    list: like TFRS, they act when the batch brings their input."""
    out: list[Correction] = []
    if temperature is not None:
        out.append(Temperature(temperature))
    out.append(SamplingProbabilityCorrection())
    if remove_accidental_hits:
        out.append(RemoveAccidentalHits())
    out.append(ScoreMask())
    if num_hard_negatives is not None:
        out.append(HardNegativeMining(num_hard_negatives))
    return out


class Retrieval(nn.Module):
    """In-batch softmax retrieval loss, exactly ``tfrs.tasks.Retrieval.call`` (its metrics are
    :func:`factorized_top_k`, computed at validation).

    Built from TFRS's arguments (``temperature`` divides the scores; ``num_hard_negatives`` keeps,
    per row, the positive and the n highest-scoring other candidates; ``remove_accidental_hits``
    pushes negatives sharing the positive's candidate id to MIN_FLOAT, then ``candidate_ids`` is
    needed), or from an explicit ``corrections`` list applied in order.
    """

    def __init__(self, temperature: float | None = None, num_hard_negatives: int | None = None,
                 remove_accidental_hits: bool = False,
                 corrections: Sequence[Correction] | None = None) -> None:
        super().__init__()
        if corrections is None:
            corrections = retrieval_corrections(temperature, num_hard_negatives,
                                                remove_accidental_hits)
        elif temperature is not None or num_hard_negatives is not None or \
                remove_accidental_hits:
            raise ValueError("pass either corrections=[...] or the TFRS options (temperature, "
                             "num_hard_negatives, remove_accidental_hits), not both")
        self.corrections = list(corrections)

    def _find(self, kind: type):
        return next((c for c in self.corrections if isinstance(c, kind)), None)

    @property
    def temperature(self) -> float | None:
        found = self._find(Temperature)
        return None if found is None else found.temperature

    @property
    def num_hard_negatives(self) -> int | None:
        found = self._find(HardNegativeMining)
        return None if found is None else found.num_hard_negatives

    @property
    def remove_accidental_hits(self) -> bool:
        return self._find(RemoveAccidentalHits) is not None

    def extra_repr(self) -> str:
        return f"corrections={self.corrections}"

    def corrected(self, query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor,
                  candidate_sampling_probability: Optional[torch.Tensor] = None,
                  candidate_ids: Optional[torch.Tensor] = None,
                  score_mask: Optional[torch.Tensor] = None,
                  positive_offset: int = 0) -> tuple[torch.Tensor, Labels]:
        """(scores, labels) after every correction: [Q, C] and None (= eye(Q, C) shifted by
        ``positive_offset``), or [Q, k] and their one-hot labels after hard-negative mining.

        query_embeddings [Q, D] (or [Q, H, D]: max over heads), candidate_embeddings [C, D]
        with C >= Q normally (rows Q.. are extra negatives); the other inputs as
        :class:`RetrievalInputs` (``positive_offset`` > 0: global negatives, see the module
        docstring).
        """
        # the corrections, the log-sum-exp and the loss in fp32 (float64 models: rounded here)
        scores = fp32_scores(query_embeddings, candidate_embeddings).float()
        inputs = RetrievalInputs(candidate_sampling_probability, candidate_ids, score_mask,
                                 int(positive_offset))
        labels: Labels = None
        for correction in self.corrections:
            scores, labels = correction(scores, labels, inputs)
        return scores, labels

    def logits(self, query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor,
               candidate_sampling_probability: Optional[torch.Tensor] = None,
               candidate_ids: Optional[torch.Tensor] = None,
               score_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The scores of :meth:`corrected` alone."""
        return self.corrected(query_embeddings, candidate_embeddings,
                              candidate_sampling_probability, candidate_ids, score_mask)[0]

    def forward(self, query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor,
                sample_weight: Optional[torch.Tensor] = None,
                candidate_sampling_probability: Optional[torch.Tensor] = None,
                candidate_ids: Optional[torch.Tensor] = None,
                score_mask: Optional[torch.Tensor] = None,
                positive_offset: int = 0) -> torch.Tensor:
        """Scalar loss: SUM over query rows of sample_weight * softmax cross-entropy (row i's
        positive: column ``positive_offset + i``)."""
        scores, labels = self.corrected(query_embeddings, candidate_embeddings,
                                        candidate_sampling_probability, candidate_ids,
                                        score_mask, positive_offset)
        return _weighted_sum(row_losses(scores, labels, positive_offset), sample_weight)


def shifted_eye(num_queries: int, num_candidates: int, offset: int, like: torch.Tensor
                ) -> torch.Tensor:
    """[Q, C] one-hot labels of row i at column ``offset + i`` (rows past the last column: all
    zero, as TFRS's rectangular eye), dtype and device of ``like``."""
    cols = torch.arange(num_candidates, device=like.device)
    rows = torch.arange(num_queries, device=like.device) + int(offset)
    return (rows.unsqueeze(1) == cols.unsqueeze(0)).to(like.dtype)


def row_losses(scores: torch.Tensor, labels: Labels = None, offset: int = 0) -> torch.Tensor:
    """[Q, C] final scores -> [Q] softmax cross-entropy against ``labels`` (None: row i's
    positive is column ``offset + i``)."""
    q, c = scores.shape
    if labels is None and c >= q + offset:  # the usual case, fused
        return diagonal_softmax_cross_entropy(scores, offset)
    if labels is None:  # fewer candidates than queries: rows past C have all-zero labels, loss 0
        labels = shifted_eye(q, c, offset, scores)
    return -(labels * torch.log_softmax(scores, dim=1)).sum(dim=1)


class _DiagonalSoftmaxCrossEntropy(torch.autograd.Function):
    """Row losses of softmax cross-entropy against eye(Q, C) shifted by ``offset`` (row i's
    positive is column offset + i), fused: one exp pass forward, one pass backward, no label
    matrix (F.cross_entropy's log_softmax + nll backward make three more passes and a
    zero-filled [Q, C] buffer: about 5x slower on the [2048, 2048] in-batch scores).

    Forward as TF's kernel: m = max_j s_ij, loss_i = log(sum_j exp(s_ij - m)) + m - s_i,o+i.
    Backward as TF's ``_SoftmaxCrossEntropyWithLogitsGrad``: (softmax - labels) * upstream.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, offset: int = 0) -> torch.Tensor:
        m = scores.amax(dim=1, keepdim=True)
        e = torch.sub(scores, m).exp_()
        z = e.sum(dim=1, keepdim=True)
        ctx.save_for_backward(e, z)
        ctx.consumed = False
        ctx.offset = offset
        return (torch.log(z) + m).squeeze(1) - scores.diagonal(offset)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.consumed:  # the saved exponentials are overwritten below
            raise RuntimeError("backward through the retrieval loss twice is not supported")
        ctx.consumed = True
        e, z = ctx.saved_tensors
        softmax = e.div_(z)
        softmax.diagonal(ctx.offset).sub_(1.0)
        return softmax.mul_(grad.unsqueeze(1)), None


def diagonal_softmax_cross_entropy(scores: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """[Q, C] scores (C >= Q + offset) -> [Q] cross-entropy of row i against column
    offset + i."""
    if scores.shape[1] < scores.shape[0] + offset or offset < 0:
        raise ValueError(f"need at least {offset} + as many candidates as queries, got "
                         f"{tuple(scores.shape)}")
    return _DiagonalSoftmaxCrossEntropy.apply(scores, int(offset))


def accidental_hits(candidate_ids: torch.Tensor, num_queries: int, num_candidates: int,
                    offset: int = 0) -> torch.Tensor:
    """[Q, C] bool: candidate j has the id of row i's positive (column offset + i) and is not
    that positive (RemoveAccidentalHits with labels eye(Q, C) shifted by ``offset``; the argmax
    of an all-zero label row, rows whose positive would lie past the last column, is 0)."""
    ids = candidate_ids.reshape(-1)
    rows = torch.arange(num_queries, device=ids.device) + int(offset)
    positive = torch.where(rows < num_candidates, rows, torch.zeros_like(rows))
    hits = ids[positive].unsqueeze(1) == ids.unsqueeze(0)
    diagonal = rows.unsqueeze(1) == torch.arange(num_candidates, device=ids.device).unsqueeze(0)
    return hits & ~diagonal


def hard_negative_mining(scores: torch.Tensor, labels: torch.Tensor, num_hard_negatives: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """HardNegativeMining: keep per row the positive and the ``num_hard_negatives`` largest
    other scores -> ([Q, k], [Q, k]), k = min(n + 1, C). Column order is irrelevant to the loss."""
    k = min(int(num_hard_negatives) + 1, scores.shape[1])
    _, cols = torch.topk(scores + labels * MAX_FLOAT, k=k, dim=1, sorted=False)
    return scores.gather(1, cols), labels.gather(1, cols)


# --- ranking: the binary cross-entropy Keras computes in the seed ---------------------------------
#
# What Keras computes (tf_keras/src/losses.py ``LossFunctionWrapper.call`` and
# ``binary_crossentropy``; backend.py ``binary_crossentropy`` and ``_get_logits``):
#
# 1. The seed's labels are [B] and predictions [B, 1]: ``squeeze_or_expand_dimensions`` squeezes
#    the predictions to [B], so their op is ``Squeeze``, not ``Sigmoid``, and ``_get_logits``
#    does NOT recover the logits, in graph mode (fit/evaluate) as well as eagerly. The loss is
#    the clipped-probability formula: ``p = clip(p, eps, 1 - eps)``,
#    ``-(y log(p + eps) + (1 - y) log(1 - p + eps))``, eps = 1e-7.
# 2. In a tf.function (fit / evaluate) Grappler's arithmetic optimiser folds the constants of
#    ``1 - p + eps`` into ``(1 + eps) - p`` with 1 + eps rounded to float32 (1 + 2**-23). For a
#    saturated p = 1 - eps this gives -log(2**-22) = 15.2492 instead of the eager 15.3332
#    (measured: tf_keras 2.21 evaluate vs eager on p = sigmoid(30), label 0).
# 3. ``mean`` over the last axis, then SUM_OVER_BATCH_SIZE: the batch mean.
#
# The float32 constants are Python floats holding float32 values exactly, so the arithmetic is
# the float32 arithmetic of Keras without a tensor made (and copied to the device) per step.
_EPS = float(np.float32(KERAS_EPSILON))
_ONE_MINUS_EPS = float(np.float32(1.0) - np.float32(KERAS_EPSILON))
_ONE_PLUS_EPS = float(np.float32(1.0) + np.float32(KERAS_EPSILON))


class RankingLoss(Protocol):
    """Per-example binary cross-entropy: labels [B] (or [B, 1]), probabilities [B, 1],
    logits [B, 1] (or None) -> [B]."""

    name: str

    def __call__(self, labels: torch.Tensor, predictions: torch.Tensor,
                 logits: Optional[torch.Tensor]) -> torch.Tensor: ...


class KerasGraphBCE:
    """What ``model.fit`` / ``evaluate`` report and differentiate (points 1 + 2 + 3 above):
    clipped probabilities, and Grappler's ``log((1 + eps) - p)`` for the negative term."""

    name = "keras_graph"

    def negative_term(self, p: torch.Tensor) -> torch.Tensor:
        return torch.log(_ONE_PLUS_EPS - p)

    def __call__(self, labels, predictions, logits=None):
        y = labels.reshape(-1).to(predictions.dtype)
        p = predictions.reshape(-1).clamp(_EPS, _ONE_MINUS_EPS)  # 1 - eps in float32, as Keras
        return -(y * torch.log(p + _EPS) + (1.0 - y) * self.negative_term(p))


class KerasEagerBCE(KerasGraphBCE):
    """Keras run eagerly (points 1 + 3): ``log((1 - p) + eps)`` for the negative term."""

    name = "keras_eager"

    def negative_term(self, p: torch.Tensor) -> torch.Tensor:
        return torch.log((1.0 - p) + _EPS)


class LogitsBCE:
    """``sigmoid_cross_entropy_with_logits`` on the pre-sigmoid logits: what Keras does in graph
    mode when the labels are [B, 1] (``_get_logits`` then finds the Sigmoid). Needs logits."""

    name = "logits"

    def __call__(self, labels, predictions, logits=None):
        if logits is None:
            raise ValueError("loss_mode='logits' needs the pre-sigmoid logits "
                             "(RankingModel.logits(batch))")
        y = labels.reshape(-1).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), y, reduction="none")


RANKING_LOSS_CLASSES: dict[str, type] = {c.name: c for c in (KerasGraphBCE, KerasEagerBCE,
                                                              LogitsBCE)}
assert tuple(RANKING_LOSS_CLASSES) == RANKING_LOSSES, "twostage.config.RANKING_LOSSES changed"


def make_ranking_loss(mode: str) -> RankingLoss:
    """The loss class named ``mode`` (one of twostage.config.RANKING_LOSSES)."""
    if mode not in RANKING_LOSS_CLASSES:
        raise ValueError(f"loss_mode={mode!r} must be one of {RANKING_LOSSES}")
    return RANKING_LOSS_CLASSES[mode]()


class Ranking(nn.Module):
    """``tfrs.tasks.Ranking(loss=BinaryCrossentropy())`` as the seed runs it inside ``fit``.

    ``loss``: a mode name of ``twostage.config.RANKING_LOSSES`` ("keras_graph", the default:
    what model.fit reports and differentiates; "keras_eager"; "logits") or a :class:`RankingLoss`.
    ``sample_weight`` [B]: Keras raises for [B] labels + weights (it tries to squeeze the weights
    to the scalar loss); here it is the [B, 1]-label meaning: sum(w * loss_i) / B.
    """

    def __init__(self, loss: str | RankingLoss = "keras_graph") -> None:
        super().__init__()
        self.loss = make_ranking_loss(loss) if isinstance(loss, str) else loss

    @property
    def loss_mode(self) -> str:
        return self.loss.name

    def extra_repr(self) -> str:
        return f"loss_mode={self.loss_mode!r}"

    def row_losses(self, labels: torch.Tensor, predictions: torch.Tensor,
                   logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-example binary cross-entropy [B] (labels [B] or [B, 1] in {0, 1})."""
        return self.loss(labels, predictions, logits)

    def forward(self, labels: torch.Tensor, predictions: torch.Tensor,
                logits: Optional[torch.Tensor] = None,
                sample_weight: Optional[torch.Tensor] = None,
                num_examples: Optional[int] = None) -> torch.Tensor:
        """Scalar loss: the batch mean of :meth:`row_losses` (weighted: sum(w * l) / B).
        ``num_examples``: divide the sum by this instead of B (a process's share of the mean
        over the global batch of ``num_examples`` rows, see ``torch_impl.distributed``)."""
        losses = self.row_losses(labels, predictions, logits)
        if num_examples is not None:
            return _weighted_sum(losses, sample_weight) / num_examples
        if sample_weight is None:
            return losses.mean()
        return _weighted_sum(losses, sample_weight) / losses.shape[0]


def make_retrieval_task(config: Config | TaskConfig) -> Retrieval:
    """The Retrieval task of the task section (temperature, num_hard_negatives, accidental
    hits; a whole Config is accepted). With ``learn_temperature`` the task has no fixed
    temperature: the model's ``LearnedTemperature`` scales the queries instead
    (:func:`retrieval_loss`). TypeError for anything else."""
    task = section_of(config, TaskConfig, "make_retrieval_task")
    fixed = None if task.learn_temperature else task.temperature
    return Retrieval(temperature=fixed, num_hard_negatives=task.num_hard_negatives,
                     remove_accidental_hits=task.remove_accidental_hits)


def make_ranking_task(config: Config | TaskConfig | None = None) -> Ranking:
    """The seed's Ranking task with the loss of the task section's ``ranking_loss`` (default
    keras_graph; a whole Config is accepted). TypeError for anything else."""
    if config is None:
        return Ranking("keras_graph")
    return Ranking(section_of(config, TaskConfig, "make_ranking_task").ranking_loss)


# --- the loss of one batch (the seed's compute_loss) ----------------------------------------------

def scaled_queries(model: RetrievalModel, query_embeddings: torch.Tensor) -> torch.Tensor:
    """``query_embeddings / T`` with the model's learned temperature (scores ``(q / T) @ c^T``,
    the twin of tfrs_impl.tasks.scaled_queries), else ``query_embeddings`` themselves."""
    if model.temperature is None:
        return query_embeddings
    return query_embeddings / model.temperature.value()


def retrieval_loss(model: RetrievalModel, task: Retrieval, batch: Mapping[str, torch.Tensor],
                   use_sampling_probability: bool = False) -> torch.Tensor:
    """The seed's ``MovielensRetrievalModel.compute_loss``: task(query_model(batch),
    candidate_model(batch)) -> scalar; candidate ids = ``title_index`` when the task removes
    accidental hits; ``candidate_sampling_probability`` [B] and ``sample_weight`` [B] are taken
    from the batch when used / present."""
    query = scaled_queries(model, model.query_model(batch))
    candidate = model.candidate_model(batch)
    probability = None
    if use_sampling_probability:
        if SAMPLING_PROBABILITY not in batch:
            raise KeyError(f"use_sampling_probability needs a '{SAMPLING_PROBABILITY}' column "
                           "(twostage.sampling.candidate_sampling_probability(dataset))")
        probability = batch[SAMPLING_PROBABILITY]
    inputs = RetrievalInputs(probability, batch["title_index"] if task.remove_accidental_hits
                             else None)
    if NEGATIVE_PROBABILITY in batch:
        candidate, inputs = mixed_negatives(model, batch, candidate, inputs)
    return task(query, candidate, sample_weight=batch.get("sample_weight"),
                candidate_sampling_probability=inputs.candidate_sampling_probability,
                candidate_ids=inputs.candidate_ids, score_mask=inputs.score_mask)


def mixed_negatives(model: RetrievalModel, batch: Mapping[str, torch.Tensor],
                    candidates: torch.Tensor, inputs: RetrievalInputs
                    ) -> tuple[torch.Tensor, RetrievalInputs]:
    """Append the batch's sampled negatives (``twostage.recipes``; Yang et al. 2020) to the B
    in-batch candidates -> candidates [B + N, D] and the task inputs over those B + N columns:
    sampling probabilities (the in-batch ones, or 1 = no correction without logQ, then the
    sampled titles' 1 / V), candidate ids (when the task removes accidental hits) and the score
    mask hiding, per row, a sampled title equal to the row's positive title."""
    negatives = negative_inputs(batch)
    extra = model.candidate_model(negatives)
    b = candidates.shape[0]
    in_batch = inputs.candidate_sampling_probability
    if in_batch is None:
        in_batch = torch.ones(b, dtype=torch.float32, device=candidates.device)
    probability = torch.cat([in_batch.reshape(-1), batch[NEGATIVE_PROBABILITY].reshape(-1)])
    ids = inputs.candidate_ids
    if ids is not None:
        ids = torch.cat([ids.reshape(-1), negatives["title_index"].reshape(-1)])
    mask = sampled_hit_mask(batch["title_index"], negatives["title_index"])
    return torch.cat([candidates, extra]), RetrievalInputs(probability, ids, mask)


def sampled_hit_mask(positive_ids: torch.Tensor, sampled_ids: torch.Tensor) -> torch.Tensor:
    """[B, B + N] bool score mask: False where sampled column j (after the B in-batch ones)
    holds row i's positive title, True elsewhere (in-batch hits are the task's business)."""
    hits = positive_ids.reshape(-1, 1) == sampled_ids.reshape(1, -1)
    keep = torch.ones(hits.shape[0], hits.shape[0], dtype=torch.bool, device=hits.device)
    return torch.cat([keep, ~hits], dim=1)


def ranking_loss(model: RankingModel, task: Ranking, batch: Mapping[str, torch.Tensor],
                 num_examples: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's ``MovielensRankingModel.compute_loss`` -> (loss, probabilities [B, 1]);
    ``num_examples`` as :meth:`Ranking.forward`."""
    logits = model.logits(batch).float()  # fp32 under bf16 autocast; a no-op otherwise
    predictions = torch.sigmoid(logits)
    loss = task(batch["label"], predictions, logits=logits,
                sample_weight=batch.get("sample_weight"), num_examples=num_examples)
    return loss, predictions


# --- metrics -------------------------------------------------------------------------------------

def binary_accuracy(labels: torch.Tensor, predictions: torch.Tensor,
                    threshold: float = 0.5) -> torch.Tensor:
    """Keras ``binary_accuracy`` per example [B] float: (prediction > threshold) == label."""
    hit = (predictions.reshape(-1) > threshold).to(predictions.dtype)
    return (hit == labels.reshape(-1).to(predictions.dtype)).to(predictions.dtype)


class BinaryAccuracy:
    """The ranking task's running training metric (Keras ``BinaryAccuracy``, reset at every
    epoch start by ``fit``), kept on the device: :meth:`update` only queues additions,
    :meth:`result` reads the count once."""

    name = "binary_accuracy"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._correct: Optional[torch.Tensor] = None
        self._count = 0

    def update(self, batch: Mapping[str, torch.Tensor], predictions: torch.Tensor) -> None:
        """Add a batch: labels ``batch["label"]`` [B], probabilities [B, 1]."""
        hits = binary_accuracy(batch["label"], predictions.detach(), self.threshold)
        hits = hits.sum(dtype=torch.float64)
        self._correct = hits if self._correct is None else self._correct.add_(hits)
        self._count += int(predictions.shape[0])

    def result(self, group: Group = SingleProcess()) -> float:
        """Accuracy over every update since the reset, of all processes of ``group`` (their
        counts summed exactly: integers in float64)."""
        correct = 0.0 if self._correct is None else float(self._correct)
        correct, count = group.all_sum(np.array([correct, self._count], dtype=np.float64))
        if count == 0:
            raise ValueError("BinaryAccuracy.result before any update")
        return float(correct) / float(count)


def fp32_scores(query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor
                ) -> torch.Tensor:
    """The score matrix, in float32 or wider even under bf16 autocast.

    Args:
        query_embeddings: [Q, D], or [Q, H, D] (H heads: the max over them), any float dtype.
        candidate_embeddings: [C, D].
    Returns:
        [Q, C] ``q @ c^T``: float32 for bf16/fp16/fp32 inputs, float64 for float64 ones.

    Why: the in-batch softmax and the top-k counts need score differences to float32
    precision; a bf16 score matrix made training diverge (docs/decisions.md)."""
    q, c = _at_least_fp32(query_embeddings), _at_least_fp32(candidate_embeddings)
    device = q.device.type
    if device in ("cpu", "cuda"):  # the devices autocast runs on
        with torch.autocast(device, enabled=False):
            return _scores(q, c)
    return _scores(q, c)  # e.g. meta (shape checks), where autocast does not exist


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 -> fp32; fp32 and fp64 (the parity tests' double models) as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _scores(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    if q.dim() == 3:
        return torch.einsum("qne,ce->qnc", q, c).amax(dim=1)
    return q @ c.T


def factorized_top_k(query_embeddings: torch.Tensor, true_candidate_embeddings: torch.Tensor,
                     corpus_embeddings: torch.Tensor, ks: Sequence[int] = (1, 5, 10, 50, 100),
                     chunk: int = 4096) -> dict[str, float]:
    """TFRS FactorizedTopK, score-based (metrics/factorized_top_k.py ``update_state`` without
    candidate ids): positive score = rowwise ``sum(q * c_true)``; a query is a hit at k iff
    ``tf.math.in_top_k([positive, top-K corpus scores], 0, k)``, i.e. fewer than k corpus scores
    (``q @ corpus^T``) are STRICTLY greater than the positive score (ties favour the positive);
    in_top_k is False when a score it looks at is not finite (here: any score of the row).

    query/true_candidate [N, D], corpus [M, D] -> {"factorized_top_k/top_{k}_categorical_accuracy":
    mean over the N queries}. The hit counts are read from the device once.
    """
    n = query_embeddings.shape[0]
    if n == 0:
        raise ValueError("factorized_top_k: no queries to evaluate")
    hits = factorized_top_k_hits(query_embeddings, true_candidate_embeddings, corpus_embeddings,
                                 ks, chunk)
    return {TOP_K_METRIC.format(k): count / n for k, count in zip(ks, hits.tolist())}


def factorized_top_k_hits(query_embeddings: torch.Tensor, true_candidate_embeddings: torch.Tensor,
                          corpus_embeddings: torch.Tensor, ks: Sequence[int],
                          chunk: int = 4096, budget_bytes: int = 128 << 20) -> torch.Tensor:
    """The hit counts of :func:`factorized_top_k`: [len(ks)] int64 on the embeddings' device
    (not read; integers, so shards of the queries sum to the count of all of them exactly).
    A hit at k is ``finite & (greater < k)`` of :func:`scoring_higher` (the one count)."""
    greater, finite = scoring_higher(query_embeddings, true_candidate_embeddings,
                                     corpus_embeddings, budget_bytes=budget_bytes, chunk=chunk)
    kt = torch.tensor(list(ks), device=greater.device)
    return ((greater[:, None] < kt) & finite[:, None]).sum(dim=0)


def scoring_higher(query_embeddings: torch.Tensor, true_candidate_embeddings: torch.Tensor,
                   corpus_embeddings: torch.Tensor, budget_bytes: int = 64 << 20,
                   chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``twostage.evaluation.num_scoring_higher`` on the embeddings' device: exact top-k as a
    matmul plus a count (the one count of torch_impl; :func:`factorized_top_k_hits` reads it).

    Args:
        query_embeddings, true_candidate_embeddings: [N, D] (bf16 / fp16 -> fp32; fp32 and
            fp64 as they are, as :func:`fp32_scores`).
        corpus_embeddings: [M, D], M >= 1.
        budget_bytes: the largest [rows, M] float32 score block alive at a time.
        chunk: at most this many queries per block (None: as many as ``budget_bytes`` allows).
    Returns:
        (``greater`` [N] int64: corpus scores STRICTLY above the row's positive
        ``sum(q * c_true)``; ``finite`` [N] bool: the positive and all M scores are finite), on
        the device, not read. A hit at k is ``finite & (greater < k)`` (ties favour the
        positive; a non-finite row is a miss), the numpy rule.
    Raises:
        ValueError: shapes that do not match, or an empty corpus.

    Why on the device: one matmul per block instead of a copy to the host; the matmul may sum
    in another order than numpy's, so a row within float rounding of a tie may move by one.
    """
    q = _at_least_fp32(query_embeddings)
    t = _at_least_fp32(true_candidate_embeddings)
    if q.dim() != 2 or t.shape != q.shape:
        raise ValueError(f"query {tuple(q.shape)} and true candidate {tuple(t.shape)} "
                         "embeddings must be [N, D] of the same shape")
    if corpus_embeddings.dim() != 2 or corpus_embeddings.shape[1] != q.shape[1]:
        raise ValueError(f"corpus {tuple(corpus_embeddings.shape)} must be [M, {q.shape[1]}]")
    n, m = q.shape[0], corpus_embeddings.shape[0]
    if m == 0:
        raise ValueError("corpus is empty: index at least one candidate")
    rows = max(1, int(budget_bytes) // (4 * m))
    rows = rows if chunk is None else max(1, min(int(chunk), rows))
    greater = torch.empty(n, dtype=torch.int64, device=q.device)
    finite = torch.empty(n, dtype=torch.bool, device=q.device)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        positive = (q[start:end] * t[start:end]).sum(dim=1, keepdim=True)
        scores = fp32_scores(q[start:end], corpus_embeddings)
        greater[start:end] = (scores > positive).sum(dim=1)
        finite[start:end] = (torch.isfinite(positive) & torch.isfinite(scores).all(
            dim=1, keepdim=True))[:, 0]
    return greater, finite
