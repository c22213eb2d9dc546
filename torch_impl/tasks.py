"""The TFRS tasks in torch: ``Retrieval`` (tfrs.tasks.Retrieval) and ``Ranking``
(tfrs.tasks.Ranking with the seed's Keras BinaryCrossentropy and BinaryAccuracy).

Sources followed (TFRS 0.7.7, tf_keras 2.21, under site-packages):

- tensorflow_recommenders/tasks/retrieval.py ``Retrieval.call``: scores = q @ c^T (or max over
  query heads for [Q, H, D] queries); labels = tf.eye(num_queries, num_candidates); then in this
  order: ``/ temperature``; ``SamplingProbablityCorrection``; ``RemoveAccidentalHits``;
  ``score_mask`` (tf.where(mask, scores, MIN_FLOAT)); ``HardNegativeMining``; loss =
  ``CategoricalCrossentropy(from_logits=True, reduction=SUM)(labels, scores, sample_weight)``.
  Candidates beyond the first num_queries rows are extra negatives for every query (their label
  columns are all zero because ``eye`` is rectangular).
- tensorflow_recommenders/layers/loss.py: ``SamplingProbablityCorrection``: scores -
  log(clip(p, 1e-6, 1)) per candidate column; ``RemoveAccidentalHits``: scores + MIN_FLOAT where
  the candidate id equals the row's positive id, except the positive itself;
  ``HardNegativeMining``: top_k(scores + labels * MAX_FLOAT, min(n + 1, C)) then gather scores and
  labels; MIN_FLOAT / MAX_FLOAT = float32 min / max divided by 100.
- tf_keras/src/losses.py + utils/losses_utils.py ``compute_weighted_loss``: per-row softmax
  cross-entropy times sample_weight, reduced with SUM (no division).
- Ranking: see :class:`Ranking` for what Keras BinaryCrossentropy computes in the seed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twostage.config import Config

MIN_FLOAT = float(np.finfo(np.float32).min / 100.0)
MAX_FLOAT = float(np.finfo(np.float32).max / 100.0)
SAMPLING_PROBABILITY_FLOOR = 1e-6  # SamplingProbablityCorrection's clip
KERAS_EPSILON = 1e-7  # tf_keras.backend.epsilon()
RANKING_LOSS_MODES = ("keras_graph", "keras_eager", "logits")


def _weighted_sum(losses: torch.Tensor, sample_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Keras Reduction.SUM of per-row losses [B] with optional weights [B] (or [B, 1])."""
    if sample_weight is None:
        return losses.sum()
    return (losses * sample_weight.reshape(-1).to(losses.dtype)).sum()


class Retrieval(nn.Module):
    """In-batch softmax retrieval loss, exactly ``tfrs.tasks.Retrieval.call`` (no metrics: the
    FactorizedTopK metric is ``torch_impl.train.factorized_top_k``).

    Args mirror TFRS: ``temperature`` divides the scores; ``num_hard_negatives`` keeps, per row,
    the positive and the n highest-scoring other candidates; ``remove_accidental_hits`` pushes
    negatives sharing the positive's candidate id to MIN_FLOAT (then ``candidate_ids`` is needed).
    """

    def __init__(self, temperature: float | None = None, num_hard_negatives: int | None = None,
                 remove_accidental_hits: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.num_hard_negatives = num_hard_negatives
        self.remove_accidental_hits = remove_accidental_hits

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, num_hard_negatives={self.num_hard_negatives}, "
                f"remove_accidental_hits={self.remove_accidental_hits}")

    def logits(self, query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor,
               candidate_sampling_probability: Optional[torch.Tensor] = None,
               candidate_ids: Optional[torch.Tensor] = None,
               score_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores after temperature, logQ, accidental-hit removal and score_mask: [Q, C].

        query_embeddings [Q, D] (or [Q, H, D]: max over heads), candidate_embeddings [C, D]
        with C >= Q normally (rows Q.. are extra negatives); candidate_sampling_probability [C];
        candidate_ids [C]; score_mask [Q, C] bool (False = excluded).
        """
        if query_embeddings.dim() == 3:
            scores = torch.einsum("qne,ce->qnc", query_embeddings, candidate_embeddings)
            scores = scores.amax(dim=1)
        else:
            scores = query_embeddings @ candidate_embeddings.T
        if self.temperature is not None:
            scores = scores / self.temperature
        if candidate_sampling_probability is not None:
            p = candidate_sampling_probability.reshape(-1).to(scores.dtype)
            scores = scores - torch.log(p.clamp(SAMPLING_PROBABILITY_FLOOR, 1.0))
        if self.remove_accidental_hits:
            if candidate_ids is None:
                raise ValueError("When accidental hit removal is enabled, candidate ids must be "
                                 "supplied (pass candidate_ids=[C] ids, e.g. title_index).")
            # scores + 1 * MIN_FLOAT on hits, scores + 0 elsewhere: the same floats as TFRS.
            scores = torch.where(accidental_hits(candidate_ids, *scores.shape),
                                 scores + MIN_FLOAT, scores)
        if score_mask is not None:
            scores = torch.where(score_mask, scores, torch.full_like(scores, MIN_FLOAT))
        return scores

    def forward(self, query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor,
                sample_weight: Optional[torch.Tensor] = None,
                candidate_sampling_probability: Optional[torch.Tensor] = None,
                candidate_ids: Optional[torch.Tensor] = None,
                score_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scalar loss: SUM over query rows of sample_weight * softmax cross-entropy."""
        scores = self.logits(query_embeddings, candidate_embeddings,
                             candidate_sampling_probability, candidate_ids, score_mask)
        return _weighted_sum(self.row_losses(scores), sample_weight)

    def row_losses(self, scores: torch.Tensor) -> torch.Tensor:
        """[Q, C] final scores -> [Q] cross-entropy against eye(Q, C) (after hard negatives)."""
        q, c = scores.shape
        if self.num_hard_negatives is not None:
            labels = torch.eye(q, c, dtype=scores.dtype, device=scores.device)
            scores, labels = hard_negative_mining(scores, labels, self.num_hard_negatives)
            return -(labels * torch.log_softmax(scores, dim=1)).sum(dim=1)
        if c >= q:  # the usual case: row i's positive is column i; no [Q, C] label matrix needed
            return diagonal_softmax_cross_entropy(scores)
        # Fewer candidates than queries: rows >= C have all-zero labels, hence zero loss in Keras.
        labels = torch.eye(q, c, dtype=scores.dtype, device=scores.device)
        return -(labels * torch.log_softmax(scores, dim=1)).sum(dim=1)


class _DiagonalSoftmaxCrossEntropy(torch.autograd.Function):
    """Row losses of softmax cross-entropy against eye(Q, C), fused: one exp pass forward, one
    pass backward, no label matrix (F.cross_entropy's log_softmax + nll backward make three more
    passes and a zero-filled [Q, C] buffer: about 5x slower on the [2048, 2048] in-batch scores).

    Forward as TF's kernel: m = max_j s_ij, loss_i = log(sum_j exp(s_ij - m)) + m - s_ii.
    Backward as TF's ``_SoftmaxCrossEntropyWithLogitsGrad``: (softmax - labels) * upstream.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        m = scores.amax(dim=1, keepdim=True)
        e = torch.sub(scores, m).exp_()
        z = e.sum(dim=1, keepdim=True)
        ctx.save_for_backward(e, z)
        ctx.consumed = False
        return (torch.log(z) + m).squeeze(1) - scores.diagonal()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.consumed:  # the saved exponentials are overwritten below
            raise RuntimeError("backward through the retrieval loss twice is not supported")
        ctx.consumed = True
        e, z = ctx.saved_tensors
        softmax = e.div_(z)
        softmax.diagonal().sub_(1.0)
        return softmax.mul_(grad.unsqueeze(1))


def diagonal_softmax_cross_entropy(scores: torch.Tensor) -> torch.Tensor:
    """[Q, C] scores (C >= Q) -> [Q] cross-entropy of row i against column i."""
    if scores.shape[1] < scores.shape[0]:
        raise ValueError(f"need at least as many candidates as queries, got {tuple(scores.shape)}")
    return _DiagonalSoftmaxCrossEntropy.apply(scores)


def accidental_hits(candidate_ids: torch.Tensor, num_queries: int, num_candidates: int
                    ) -> torch.Tensor:
    """[Q, C] bool: candidate j has the id of row i's positive and is not that positive
    (RemoveAccidentalHits: ``equal(ids[argmax(labels)], ids^T) - labels``; the argmax of an
    all-zero label row, rows i >= C, is 0)."""
    ids = candidate_ids.reshape(-1)
    rows = torch.arange(num_queries, device=ids.device)
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


class Ranking(nn.Module):
    """``tfrs.tasks.Ranking(loss=BinaryCrossentropy())`` as the seed runs it inside ``fit``.

    What Keras computes (tf_keras/src/losses.py ``LossFunctionWrapper.call`` and
    ``binary_crossentropy``; backend.py ``binary_crossentropy`` and ``_get_logits``):

    1. The seed's labels are [B] and predictions [B, 1]: ``squeeze_or_expand_dimensions`` squeezes
       the predictions to [B], so their op is ``Squeeze``, not ``Sigmoid``, and ``_get_logits``
       does NOT recover the logits, in graph mode (fit/evaluate) as well as eagerly. The loss is
       the clipped-probability formula: ``p = clip(p, eps, 1 - eps)``,
       ``-(y log(p + eps) + (1 - y) log(1 - p + eps))``, eps = 1e-7.
    2. In a tf.function (fit / evaluate) Grappler's arithmetic optimiser folds the constants of
       ``1 - p + eps`` into ``(1 + eps) - p`` with 1 + eps rounded to float32 (1 + 2**-23). For a
       saturated p = 1 - eps this gives -log(2**-22) = 15.2492 instead of the eager 15.3332
       (measured: tf_keras 2.21 evaluate vs eager on p = sigmoid(30), label 0).
    3. ``mean`` over the last axis, then SUM_OVER_BATCH_SIZE: the batch mean.

    ``loss_mode``: "keras_graph" (default; 1 + 2 + 3: what model.fit reports and differentiates),
    "keras_eager" (1 + 3), "logits" (``sigmoid_cross_entropy_with_logits`` on the pre-sigmoid
    logits: what Keras does in graph mode when the labels are [B, 1]; needs ``logits``).

    ``sample_weight`` [B]: Keras raises for [B] labels + weights (it tries to squeeze the weights
    to the scalar loss); here it is the [B, 1]-label meaning: sum(w * loss_i) / B.
    """

    def __init__(self, loss_mode: str = "keras_graph") -> None:
        super().__init__()
        if loss_mode not in RANKING_LOSS_MODES:
            raise ValueError(f"loss_mode={loss_mode!r} must be one of {RANKING_LOSS_MODES}")
        self.loss_mode = loss_mode

    def extra_repr(self) -> str:
        return f"loss_mode={self.loss_mode!r}"

    def row_losses(self, labels: torch.Tensor, predictions: torch.Tensor,
                   logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-example binary cross-entropy [B] (labels [B] or [B, 1] in {0, 1})."""
        y = labels.reshape(-1).to(predictions.dtype)
        if self.loss_mode == "logits":
            if logits is None:
                raise ValueError("loss_mode='logits' needs the pre-sigmoid logits "
                                 "(RankingModel.logits(batch))")
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), y, reduction="none")
        eps = torch.tensor(KERAS_EPSILON, dtype=predictions.dtype, device=predictions.device)
        p = predictions.reshape(-1).clamp(eps, 1.0 - eps)  # 1 - eps in float32, as Keras
        if self.loss_mode == "keras_graph":
            negative = torch.log((1.0 + eps) - p)     # Grappler's (1 + eps) - p
        else:
            negative = torch.log((1.0 - p) + eps)
        return -(y * torch.log(p + eps) + (1.0 - y) * negative)

    def forward(self, labels: torch.Tensor, predictions: torch.Tensor,
                logits: Optional[torch.Tensor] = None,
                sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scalar loss: the batch mean of :meth:`row_losses` (weighted: sum(w * l) / B)."""
        losses = self.row_losses(labels, predictions, logits)
        if sample_weight is None:
            return losses.mean()
        return _weighted_sum(losses, sample_weight) / losses.shape[0]


def binary_accuracy(labels: torch.Tensor, predictions: torch.Tensor,
                    threshold: float = 0.5) -> torch.Tensor:
    """Keras ``binary_accuracy`` per example [B] float: (prediction > threshold) == label."""
    hit = (predictions.reshape(-1) > threshold).to(predictions.dtype)
    return (hit == labels.reshape(-1).to(predictions.dtype)).to(predictions.dtype)


def make_retrieval_task(config: Config) -> Retrieval:
    """The Retrieval task of ``config`` (temperature, num_hard_negatives, accidental hits)."""
    return Retrieval(temperature=config.temperature,
                     num_hard_negatives=config.num_hard_negatives,
                     remove_accidental_hits=config.remove_accidental_hits)


def make_ranking_task(config: Config | None = None, loss_mode: str = "keras_graph") -> Ranking:
    """The seed's Ranking task (``config`` carries no ranking-loss option today)."""
    return Ranking(loss_mode=loss_mode)
