"""Retrieval and Ranking losses against hand-computed numpy values (float64 references), the
logits corrections, and the training metrics (FactorizedTopK, BinaryAccuracy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl.tasks import (MIN_FLOAT, Ranking, Retrieval, binary_accuracy, factorized_top_k,
                              make_ranking_task, make_retrieval_task, scoring_higher)
from twostage.config import Config

Q = np.array([[1.0, 0.0], [0.5, 1.0], [-1.0, 2.0]])
C = np.array([[1.0, 1.0], [0.0, 1.0], [2.0, -1.0], [0.5, 0.5], [-1.0, 0.0]])  # 2 extra rows


def t(x, dtype=torch.float32):
    return torch.tensor(np.asarray(x), dtype=dtype)


def logsumexp(s: np.ndarray) -> np.ndarray:
    m = s.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]


def ce_rows(scores: np.ndarray) -> np.ndarray:
    """Softmax cross-entropy of row i against column i."""
    return logsumexp(scores) - scores[np.arange(len(scores)), np.arange(len(scores))]


def loss(task: Retrieval, q=Q, c=C[:3], **kw) -> float:
    return float(task(t(q), t(c), **kw))


def test_plain_in_batch_softmax_is_a_sum_of_row_losses():
    expected = ce_rows(Q @ C[:3].T).sum()
    assert loss(Retrieval()) == pytest.approx(expected, rel=1e-6)


def test_extra_candidates_are_negatives_for_every_row():
    expected = ce_rows(Q @ C.T).sum()  # labels eye(3, 5): columns 3, 4 are never positive
    assert loss(Retrieval(), c=C) == pytest.approx(expected, rel=1e-6)


def test_fewer_candidates_than_queries_gives_zero_loss_rows():
    s = Q @ C[:2].T
    expected = (logsumexp(s[:2]) - s[[0, 1], [0, 1]]).sum()  # row 2 has no label: loss 0
    assert loss(Retrieval(), c=C[:2]) == pytest.approx(expected, rel=1e-6)


def test_temperature_divides_the_scores():
    expected = ce_rows(Q @ C[:3].T / 0.2).sum()
    assert loss(Retrieval(temperature=0.2)) == pytest.approx(expected, rel=1e-6)


def test_sampling_probability_correction_subtracts_clipped_log_p():
    p = np.array([0.5, 1e-9, 3.0, 0.25, 0.1])  # 1e-9 -> 1e-6, 3.0 -> 1.0
    s = Q @ C.T - np.log(np.clip(p, 1e-6, 1.0))[None, :]
    expected = ce_rows(s).sum()
    got = loss(Retrieval(), c=C, candidate_sampling_probability=t(p))
    assert got == pytest.approx(expected, rel=1e-6)


def test_remove_accidental_hits_masks_same_id_negatives_only():
    ids = np.array([7, 8, 7, 8, 9])  # row 0 (id 7): column 2 is a hit; row 1 (id 8): column 3
    task = Retrieval(remove_accidental_hits=True)
    s = Q @ C.T
    logits = task.logits(t(Q), t(C), candidate_ids=torch.tensor(ids)).numpy()
    hit = np.zeros_like(s, dtype=bool)
    hit[0, 2] = hit[1, 3] = hit[2, 0] = True  # row 2's positive is column 2 (id 7): column 0 hit
    np.testing.assert_allclose(logits[~hit], s[~hit].astype(np.float32), rtol=1e-6)
    assert np.all(logits[hit] == np.float32(MIN_FLOAT))  # s + MIN_FLOAT rounds to MIN_FLOAT
    rows = [logsumexp(s[i: i + 1, ~hit[i]])[0] - s[i, i] for i in range(3)]
    assert loss(task, c=C, candidate_ids=torch.tensor(ids)) == pytest.approx(sum(rows), rel=1e-6)


def test_remove_accidental_hits_needs_ids():
    with pytest.raises(ValueError, match="candidate ids"):
        loss(Retrieval(remove_accidental_hits=True))


def test_hard_negative_mining_keeps_positive_and_top_negatives():
    s = Q @ C.T
    expected = 0.0
    for i in range(3):
        negatives = np.sort(np.delete(s[i], i))[::-1][:2]
        kept = np.concatenate([[s[i, i]], negatives])
        expected += logsumexp(kept[None])[0] - s[i, i]
    assert loss(Retrieval(num_hard_negatives=2), c=C) == pytest.approx(expected, rel=1e-6)
    # More hard negatives than candidates: everything is kept.
    assert loss(Retrieval(num_hard_negatives=50), c=C) == pytest.approx(ce_rows(s).sum(),
                                                                        rel=1e-6)


def test_sample_weight_weights_each_row_then_sums():
    w = np.array([1.0, 0.0, 2.5])
    expected = (ce_rows(Q @ C.T) * w).sum()
    assert loss(Retrieval(), c=C, sample_weight=t(w)) == pytest.approx(expected, rel=1e-6)


def test_all_options_together_follow_tfrs_order():
    """temperature -> logQ -> accidental hits -> hard negatives -> weighted SUM."""
    p = np.array([0.5, 0.2, 0.1, 0.4, 0.3])
    ids = np.array([1, 2, 1, 3, 4])
    w = np.array([0.5, 1.0, 2.0])
    s = Q @ C.T / 0.5 - np.log(p)[None, :]
    s[0, 2] = s[2, 0] = -np.inf  # accidental hits
    expected = 0.0
    for i in range(3):
        negatives = np.sort(np.delete(s[i], i))[::-1][:1]
        kept = np.concatenate([[s[i, i]], negatives])
        expected += w[i] * (logsumexp(kept[None])[0] - s[i, i])
    task = Retrieval(temperature=0.5, remove_accidental_hits=True, num_hard_negatives=1)
    got = loss(task, c=C, candidate_sampling_probability=t(p), candidate_ids=torch.tensor(ids),
               sample_weight=t(w))
    assert got == pytest.approx(expected, rel=1e-6)


def test_gradient_is_softmax_minus_labels():
    c = t(C).requires_grad_(True)
    Retrieval()(t(Q), c).backward()
    s = Q @ C.T
    probs = np.exp(s - logsumexp(s)[:, None])
    probs[np.arange(3), np.arange(3)] -= 1.0
    np.testing.assert_allclose(c.grad.numpy(), probs.T @ Q, rtol=1e-5, atol=1e-6)


def test_multi_head_queries_take_the_max_over_heads():
    q3 = np.stack([Q, Q[::-1]], axis=1)  # [3, 2 heads, 2]
    s = np.maximum(Q @ C[:3].T, Q[::-1] @ C[:3].T)
    assert float(Retrieval()(t(q3), t(C[:3]))) == pytest.approx(ce_rows(s).sum(), rel=1e-6)


def test_make_retrieval_task_passes_config_options():
    task = make_retrieval_task(Config.of(temperature=0.1, num_hard_negatives=5,
                                         remove_accidental_hits=True))
    assert (task.temperature, task.num_hard_negatives, task.remove_accidental_hits) == (0.1, 5,
                                                                                       True)



def test_corrections_are_applied_in_tfrs_order_and_compose():
    from torch_impl.tasks import (HardNegativeMining, RemoveAccidentalHits,
                                  SamplingProbabilityCorrection, ScoreMask, Temperature)
    task = Retrieval(temperature=0.5, remove_accidental_hits=True, num_hard_negatives=1)
    assert [type(c) for c in task.corrections] == [
        Temperature, SamplingProbabilityCorrection, RemoveAccidentalHits, ScoreMask,
        HardNegativeMining]
    assert [type(c) for c in Retrieval().corrections] == [SamplingProbabilityCorrection,
                                                          ScoreMask]
    explicit = Retrieval(corrections=[Temperature(0.5), SamplingProbabilityCorrection(),
                                      RemoveAccidentalHits(), ScoreMask(),
                                      HardNegativeMining(1)])
    assert (explicit.temperature, explicit.num_hard_negatives,
            explicit.remove_accidental_hits) == (0.5, 1, True)
    kw = dict(c=C, candidate_sampling_probability=t([0.5, 0.2, 0.1, 0.4, 0.3]),
              candidate_ids=torch.tensor([1, 2, 1, 3, 4]))
    assert loss(explicit, **kw) == loss(task, **kw)
    with pytest.raises(ValueError, match="either corrections"):
        Retrieval(temperature=0.5, corrections=[])
    with pytest.raises(ValueError, match="temperature"):
        Temperature(0.0)


def test_score_mask_excludes_candidates():
    mask = np.ones((3, 5), dtype=bool)
    mask[0, 1] = mask[2, 4] = False
    s = Q @ C.T
    rows = [logsumexp(s[i: i + 1, mask[i]])[0] - s[i, i] for i in range(3)]
    got = loss(Retrieval(), c=C, score_mask=torch.tensor(mask))
    assert got == pytest.approx(sum(rows), rel=1e-6)


def test_accidental_hits_with_explicit_labels_follow_the_tfrs_formula():
    """After a correction that made labels explicit, RemoveAccidentalHits uses TFRS's
    logits + (equal(ids[argmax(labels)], ids) - labels) * MIN_FLOAT; same floats as with eye."""
    from torch_impl.tasks import RemoveAccidentalHits, RetrievalInputs
    scores = t(Q @ C.T)
    inputs = RetrievalInputs(candidate_ids=torch.tensor([7, 8, 7, 8, 9]))
    implicit, none = RemoveAccidentalHits()(scores, None, inputs)
    explicit, labels = RemoveAccidentalHits()(scores, torch.eye(3, 5), inputs)
    assert none is None and torch.equal(labels, torch.eye(3, 5))
    assert torch.equal(implicit, explicit)


# --- ranking ------------------------------------------------------------------------------------

LOGITS = np.array([30.0, -30.0, 0.5, 20.0, -2.0, 1.0], dtype=np.float32)
LABELS = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=np.float32)


def clipped_bce(p: np.ndarray, y: np.ndarray, graph: bool) -> np.ndarray:
    """Keras' probability formula in float32, as tf_keras/src/backend.py binary_crossentropy."""
    eps = np.float32(1e-7)
    p = np.clip(p.astype(np.float32), eps, np.float32(1) - eps)
    negative = np.log((np.float32(1) + eps) - p) if graph else np.log((np.float32(1) - p) + eps)
    return -(y * np.log(p + eps) + (1 - y) * negative)


def ranking_loss(mode: str, **kw) -> float:
    z = t(LOGITS)[:, None]
    return float(Ranking(mode)(t(LABELS), torch.sigmoid(z), logits=z, **kw))


@pytest.mark.parametrize("mode,graph", [("keras_graph", True), ("keras_eager", False)])
def test_ranking_clipped_probability_modes(mode, graph):
    p = (1 / (1 + np.exp(-LOGITS.astype(np.float64)))).astype(np.float32)
    expected = clipped_bce(p, LABELS, graph).mean()
    assert ranking_loss(mode) == pytest.approx(float(expected), rel=1e-6)


def test_graph_mode_saturated_value_is_grapplers_constant_folding():
    """p = 1 - eps with label 0: eager -log(2**-23 + 1e-7) = 15.3332; graph -log(2**-22) =
    15.2492 (tf_keras 2.21 measured values)."""
    z = torch.tensor([[30.0]])
    graph = Ranking("keras_graph")(torch.zeros(1), torch.sigmoid(z))
    eager = Ranking("keras_eager")(torch.zeros(1), torch.sigmoid(z))
    assert float(graph) == pytest.approx(22 * np.log(2), rel=1e-6)
    assert float(eager) == pytest.approx(15.333239, rel=1e-6)


def test_ranking_logits_mode_is_sigmoid_cross_entropy_with_logits():
    z = LOGITS.astype(np.float64)
    expected = (np.maximum(z, 0) - z * LABELS + np.log1p(np.exp(-np.abs(z)))).mean()
    assert ranking_loss("logits") == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="logits"):
        Ranking("logits")(t(LABELS), torch.sigmoid(t(LOGITS)))


def test_ranking_sample_weight_is_weighted_sum_over_batch_size():
    w = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 3.0], dtype=np.float32)
    p = (1 / (1 + np.exp(-LOGITS.astype(np.float64)))).astype(np.float32)
    expected = (clipped_bce(p, LABELS, True) * w).sum() / len(w)
    assert ranking_loss("keras_graph", sample_weight=t(w)) == pytest.approx(float(expected),
                                                                            rel=1e-6)


def test_ranking_accepts_column_labels_and_rejects_unknown_modes():
    z = t(LOGITS)[:, None]
    a = Ranking()(t(LABELS)[:, None], torch.sigmoid(z))
    b = Ranking()(t(LABELS), torch.sigmoid(z))
    assert float(a) == float(b)
    with pytest.raises(ValueError, match="loss_mode"):
        Ranking("bogus")
    assert make_ranking_task().loss_mode == "keras_graph"



def test_ranking_loss_classes_are_chosen_from_the_config():
    from torch_impl.tasks import KerasEagerBCE, KerasGraphBCE, LogitsBCE
    for mode, cls in (("keras_graph", KerasGraphBCE), ("keras_eager", KerasEagerBCE),
                      ("logits", LogitsBCE)):
        task = make_ranking_task(Config.of(ranking_loss=mode))
        assert isinstance(task.loss, cls) and task.loss_mode == mode
    assert Ranking(LogitsBCE()).loss_mode == "logits"


def test_running_binary_accuracy_metric():
    from torch_impl.tasks import BinaryAccuracy
    metric = BinaryAccuracy()
    with pytest.raises(ValueError, match="before any update"):
        metric.result()
    metric.update({"label": t([0.0, 1.0])}, t([[0.2], [0.9]]))
    metric.update({"label": t([1.0, 1.0])}, t([[0.5], [0.7]]))
    assert metric.result() == 3 / 4
    metric.reset()
    metric.update({"label": t([1.0])}, t([[0.1]]))
    assert metric.result() == 0.0


def test_binary_accuracy_threshold_is_strict():
    p = t([[0.5], [0.51], [0.2], [0.9]])
    y = t([0.0, 1.0, 1.0, 0.0])
    assert binary_accuracy(y, p).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_fused_diagonal_cross_entropy_matches_autograd_reference():
    from torch_impl.tasks import diagonal_softmax_cross_entropy
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(6, 9, generator=g) * 5).requires_grad_(True)
    ref_scores = scores.detach().clone().requires_grad_(True)
    weights = torch.rand(6, generator=g)
    (diagonal_softmax_cross_entropy(scores) * weights).sum().backward()
    ref = torch.nn.functional.cross_entropy(ref_scores, torch.arange(6), reduction="none")
    (ref * weights).sum().backward()
    torch.testing.assert_close(diagonal_softmax_cross_entropy(scores.detach()), ref.detach())
    torch.testing.assert_close(scores.grad, ref_scores.grad)
    with pytest.raises(ValueError, match="candidates"):
        diagonal_softmax_cross_entropy(torch.zeros(3, 2))


def test_fused_cross_entropy_refuses_a_second_backward():
    from torch_impl.tasks import diagonal_softmax_cross_entropy
    scores = torch.randn(3, 3, requires_grad=True)
    out = diagonal_softmax_cross_entropy(scores).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.backward()


# --- FactorizedTopK (the retrieval task's metric) -------------------------------------------

TOPK = "factorized_top_k/top_{}_categorical_accuracy"


def test_factorized_top_k_counts_strictly_greater_scores():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    truth = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    corpus = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0], [2.0, 0.0]])
    # positives: 2, 1, 0. Strictly greater corpus scores: row 0 -> {3} (the tie at 2 is no
    # penalty) = 1; row 1 -> {5} = 1; row 2 -> all five (2, 3, 1, 5, 2 > 0) = 5.
    got = factorized_top_k(q, truth, corpus, ks=(1, 2, 5, 6), chunk=2)
    assert got == {TOPK.format(1): 0.0, TOPK.format(2): 2 / 3, TOPK.format(5): 2 / 3,
                   TOPK.format(6): 1.0}


def test_factorized_top_k_non_finite_rows_miss():
    q = torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])
    corpus = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    got = factorized_top_k(q, corpus, corpus, ks=(2,))
    assert got[TOPK.format(2)] == 0.5


def test_factorized_top_k_agrees_with_the_numpy_evaluation():
    """Per query, torch's count of corpus scores above the positive equals numpy's except
    where a corpus score lies within the cross-kernel margin of the positive (50 queries tie
    with their own true item: torch's mm and sum round them their own way); the accuracies
    then differ by at most those queries.
    Broken on purpose, it fails: a torch count of `>=` instead of `>` (every tied query moves)."""
    from twostage import evaluation
    g = torch.Generator().manual_seed(0)
    q, truth = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    corpus = torch.cat([torch.randn(200, 8, generator=g), truth[:50]])
    ours = factorized_top_k(q, truth, corpus, ks=(1, 10, 100), chunk=64)
    theirs = evaluation.factorized_top_k_accuracy(q.numpy(), truth.numpy(), corpus.numpy(),
                                                  ks=(1, 10, 100))
    greater, _ = scoring_higher(q, truth, corpus)
    np_greater, _ = evaluation.num_scoring_higher(q.numpy(), truth.numpy(), corpus.numpy())
    pos = evaluation.positive_scores(q.numpy(), truth.numpy())[:, None]
    margin = evaluation.cross_kernel_margin(q.numpy(), corpus.numpy())
    near = (np.abs(q.numpy() @ corpus.numpy().T - pos) <= 3 * margin).sum(axis=1)
    moved = np.abs(greater.numpy() - np_greater)
    assert (moved <= near).all() and (near[:50] > 0).all()      # the ties are exercised
    for k in (1, 10, 100):
        assert abs(ours[TOPK.format(k)] - float(theirs[k])) <= (near > 0).sum() / 300
