"""Training loops on synthetic data: loss goes down, history layout, determinism, errors,
and the FactorizedTopK validation metric."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from twostage.data.split import Split, epoch_batches
from torch_impl.models import build_ranking_model, build_retrieval_model
from torch_impl.train import epoch_order, factorized_top_k, fit_ranking, fit_retrieval

TOPK = "factorized_top_k/top_{}_categorical_accuracy"


def test_retrieval_training_lowers_the_loss(synthetic_dataset, small_config):
    config = small_config.replace(validation_freq=2)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    history = fit_retrieval(model, synthetic_dataset, config, epochs=5)
    assert len(history.loss) == len(history.epoch_seconds) == 5
    assert history.loss[-1] < history.loss[0]
    assert [e for e, _ in history.val[TOPK.format(100)]] == [2, 4, 5]  # every 2 and the last
    assert set(history.val) == {TOPK.format(k) for k in config.top_ks} | {"loss"}
    top = [history.val[TOPK.format(k)][-1][1] for k in config.top_ks]
    assert top == sorted(top) and 0 <= top[0] and top[-1] <= 1


def test_ranking_training_lowers_the_loss(synthetic_dataset, small_config):
    model = build_ranking_model(synthetic_dataset.spec, small_config)
    history = fit_ranking(model, synthetic_dataset, small_config, epochs=4)
    assert history.loss[-1] < history.loss[0]
    assert len(history.metrics["binary_accuracy"]) == 4
    assert set(history.val) == {"binary_accuracy", "loss"}
    assert [e for e, _ in history.val["loss"]] == [1, 2, 3, 4]
    assert 0.0 <= history.val["binary_accuracy"][-1][1] <= 1.0


@pytest.mark.parametrize("shared", [True, False])
def test_training_is_deterministic_on_cpu(synthetic_dataset, small_config, shared):
    config = small_config.replace(shared_batches=shared)
    runs = []
    for _ in range(2):
        model = build_retrieval_model(synthetic_dataset.spec, config)
        runs.append(fit_retrieval(model, synthetic_dataset, config, epochs=2,
                                  validate=False).loss)
    assert runs[0] == runs[1]


def test_shared_batches_are_data_split_epoch_batches(small_config):
    config = small_config.replace(batch_size=7)
    got = epoch_order(30, config, 3, torch.device("cpu"))
    want = epoch_batches(30, 7, seed=config.seed, epoch=3)
    assert [b.tolist() for b in got] == [b.tolist() for b in want]
    other = epoch_order(30, config.replace(shared_batches=False), 3, torch.device("cpu"))
    assert sorted(torch.cat(other).tolist()) == list(range(30))


def test_retrieval_options_train(synthetic_dataset, small_config):
    """logQ, accidental-hit removal, hard negatives and temperature run end to end."""
    config = small_config.replace(use_sampling_probability=True, remove_accidental_hits=True,
                                  num_hard_negatives=10, temperature=0.5)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    history = fit_retrieval(model, synthetic_dataset, config, epochs=1)
    assert np.isfinite(history.loss[0]) and np.isfinite(history.val["loss"][0][1])


def test_non_finite_loss_names_epoch_and_step(synthetic_dataset, small_config):
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    with torch.no_grad():
        model.query_model.dense_layers[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"epoch 1 step 1\b"):
        fit_retrieval(model, synthetic_dataset, small_config, epochs=1)
    ranking = build_ranking_model(synthetic_dataset.spec, small_config)
    with torch.no_grad():
        ranking.ratings[0].bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="ranking loss"):
        fit_ranking(ranking, synthetic_dataset, small_config, epochs=1)


def test_empty_training_split_is_a_clear_error(synthetic_dataset, small_config):
    empty = dataclasses.replace(synthetic_dataset, split=Split(
        train=np.zeros(0, np.int64), test=synthetic_dataset.split.test))
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    with pytest.raises(ValueError, match="training split is empty"):
        fit_retrieval(model, empty, small_config, epochs=1)
    with pytest.raises(ValueError, match="training split is empty"):
        fit_ranking(build_ranking_model(synthetic_dataset.spec, small_config), empty,
                    small_config, epochs=1)


def test_zero_epochs_train_nothing(synthetic_dataset, small_config):
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit_retrieval(model, synthetic_dataset, small_config, epochs=0)
    assert history.loss == [] and history.val == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


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
    evaluation = pytest.importorskip("twostage.evaluation")
    g = torch.Generator().manual_seed(0)
    q, truth = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    corpus = torch.cat([torch.randn(200, 8, generator=g), truth[:50]])
    ours = factorized_top_k(q, truth, corpus, ks=(1, 10, 100), chunk=64)
    theirs = evaluation.factorized_top_k_accuracy(q.numpy(), truth.numpy(), corpus.numpy(),
                                                  ks=(1, 10, 100))
    for k in (1, 10, 100):
        assert ours[TOPK.format(k)] == pytest.approx(float(theirs[k]))
