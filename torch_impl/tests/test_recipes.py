"""The recipes of issue 15 on the torch backend: cosine towers, the learned temperature, mixed
negatives (against a numpy restatement), and the refusals of what they cannot run with."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torch_impl.backend import TorchBackend
from torch_impl.features import encode_raw_batch, to_tensors
from torch_impl.models import build_retrieval_model, get_keras_weights, l2_normalize
from torch_impl.optim import get_accumulators, make_optimizer
from torch_impl.tasks import MIN_FLOAT, make_retrieval_task, retrieval_loss, sampled_hit_mask
from torch_impl.train import fit_retrieval, negative_sampler
from twostage.backend import UnsupportedOptionError
from twostage.recipes import (NEGATIVE_PROBABILITY, epoch_negatives, raw_negatives,
                              sample_negatives)

TEMPERATURE = "temperature/log_temperature"


def _batch(dataset, rows, **extra):
    return encode_raw_batch(dataset.spec, {**dataset.raw(rows), **extra})


# --- cosine ---------------------------------------------------------------------------------------
def test_l2_normalize_is_tf_formula():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]])
    out = l2_normalize(x)
    # tf.math.l2_normalize: x * rsqrt(max(sum x^2, 1e-12)): a zero row stays 0, a tiny row is
    # scaled by 1e6 (its squared norm 1e-14 is below the epsilon), not made a unit vector
    assert out.tolist()[0] == pytest.approx([0.6, 0.8])
    assert out.tolist()[1] == [0.0, 0.0]
    assert out[2, 0].item() == pytest.approx(0.1, rel=1e-5)


def test_cosine_towers_give_unit_vectors_and_the_default_does_not(synthetic_dataset,
                                                                   small_config):
    batch = _batch(synthetic_dataset, synthetic_dataset.split.test[:64])
    for normalize in (False, True):
        model = build_retrieval_model(synthetic_dataset.spec, small_config.replace(
            normalize=normalize))
        with torch.no_grad():
            norms = [m(batch).norm(dim=1) for m in (model.query_model, model.candidate_model)]
        unit = all(torch.allclose(n, torch.ones_like(n), atol=1e-6) for n in norms)
        assert unit == normalize


# --- learned temperature --------------------------------------------------------------------------
def test_learned_temperature_is_a_weight_started_at_the_temperature(synthetic_dataset,
                                                                    small_config):
    spec = synthetic_dataset.spec
    assert TEMPERATURE not in get_keras_weights(build_retrieval_model(spec, small_config))
    config = small_config.replace(learn_temperature=True, temperature=0.2)
    weights = get_keras_weights(build_retrieval_model(spec, config))
    assert weights[TEMPERATURE].shape == () and weights[TEMPERATURE] == pytest.approx(
        math.log(0.2))
    assert make_retrieval_task(config).temperature is None  # the model scales, not the task
    one = get_keras_weights(build_retrieval_model(spec, small_config.replace(
        learn_temperature=True)))
    assert one[TEMPERATURE] == 0.0  # started at 1 without --temperature


def test_learned_temperature_at_start_equals_the_fixed_one(synthetic_dataset, small_config):
    batch = _batch(synthetic_dataset, synthetic_dataset.split.train[:128])
    spec = synthetic_dataset.spec
    fixed = small_config.replace(normalize=True, temperature=0.05)
    learned = fixed.replace(learn_temperature=True)
    losses = []
    for config in (fixed, learned):
        model = build_retrieval_model(spec, config)
        with torch.no_grad():
            losses.append(float(retrieval_loss(model, make_retrieval_task(config), batch)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # (q / T) @ c vs (q @ c) / T
    untempered = small_config.replace(normalize=True)
    with torch.no_grad():
        plain = float(retrieval_loss(build_retrieval_model(spec, untempered),
                                     make_retrieval_task(untempered), batch))
    assert plain != pytest.approx(losses[0], rel=1e-3)  # so the temperature did act


def test_learned_temperature_trains_with_its_own_accumulator(synthetic_dataset, small_config):
    config = small_config.replace(normalize=True, learn_temperature=True, temperature=0.5)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    optimizer = make_optimizer(model, config)
    fit_retrieval(model, synthetic_dataset, config, optimizer=optimizer, epochs=1,
                  validate=False)
    after = get_keras_weights(model)[TEMPERATURE]
    assert after != pytest.approx(math.log(0.5), abs=1e-6)
    assert get_accumulators(optimizer, model)[TEMPERATURE] > config.train.initial_accumulator_value


# --- mixed negatives ------------------------------------------------------------------------------
def test_sampled_negatives_are_seeded_per_step_and_in_the_vocabulary():
    a = sample_negatives(50, 200, seed=1, epoch=2, step=3)
    assert a.dtype == np.int64 and a.min() >= 1 and a.max() <= 50
    assert np.array_equal(a, sample_negatives(50, 200, seed=1, epoch=2, step=3))
    assert not np.array_equal(a, sample_negatives(50, 200, seed=1, epoch=2, step=4))
    assert not np.array_equal(a, sample_negatives(50, 200, seed=2, epoch=2, step=3))
    assert np.array_equal(epoch_negatives(50, 200, 1, 2, 5)[3], a)


def test_fit_trains_on_the_shared_negative_stream(synthetic_dataset, small_config):
    config = small_config.replace(mixed_negatives=16)
    sampler = negative_sampler(synthetic_dataset, config, torch.device("cpu"))
    vocab = synthetic_dataset.spec.title_vocab
    extras = sampler(3, 4)
    ids = epoch_negatives(len(vocab), 16, config.seed, 3, 4)
    for extra, step_ids in zip(extras, ids):
        assert extra["negative_title_index"].tolist() == step_ids.tolist()
        tokens = synthetic_dataset.spec.title_tokens(np.asarray(vocab, dtype=object)[step_ids - 1])
        width = tokens.shape[1]
        assert extra["negative_title_tokens"][:, :width].tolist() == tokens.tolist()
        assert extra[NEGATIVE_PROBABILITY].tolist() == pytest.approx([1 / len(vocab)] * 16)
    assert negative_sampler(synthetic_dataset, small_config, torch.device("cpu")) is None


def test_sampled_hit_mask_hides_a_rows_own_positive_only():
    mask = sampled_hit_mask(torch.tensor([5, 7, 5]), torch.tensor([7, 9, 5]))
    assert mask.tolist() == [[True, True, True, True, True, False],
                             [True, True, True, False, True, True],
                             [True, True, True, True, True, False]]


def _numpy_mixed_loss(q, c, e, p_in, p_neg, pos_ids, neg_ids):
    """TFRS Retrieval on [c; e] restated in float64: scores, logQ, sampled-hit mask, CE."""
    s = q @ np.concatenate([c, e]).T
    s = s - np.log(np.clip(np.concatenate([p_in, p_neg]), 1e-6, 1.0))
    b = len(q)
    s[:, b:] = np.where(pos_ids[:, None] == neg_ids[None, :], MIN_FLOAT, s[:, b:])
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float((lse - s[np.arange(b), np.arange(b)]).sum())


@pytest.mark.parametrize("logq", [False, True])
def test_mixed_negatives_loss_is_tfrs_retrieval_over_the_extra_columns(synthetic_dataset,
                                                                       small_config, logq):
    from twostage.sampling import candidate_sampling_probability
    ds = synthetic_dataset
    config = small_config.replace(mixed_negatives=12, use_sampling_probability=logq)
    rows = ds.split.train[:64]
    ids = sample_negatives(len(ds.spec.title_vocab), 12, config.seed, 0, 0)
    ids[:2] = ds.features["title_index"][rows[:2]]  # two accidental hits with rows 0 and 1
    extra = raw_negatives(ds.spec.title_vocab, ids)
    if logq:
        extra["candidate_sampling_probability"] = candidate_sampling_probability(ds)[rows]
    batch = _batch(ds, rows, **extra)
    model = build_retrieval_model(ds.spec, config)
    with torch.no_grad():
        got = float(retrieval_loss(model, make_retrieval_task(config), batch, logq))
        q = model.query_model(batch).double().numpy()
        c = model.candidate_model(batch).double().numpy()
        e = model.candidate_model(to_tensors(ds.spec.encode_titles(extra["negative_titles"])))
    p_in = extra["candidate_sampling_probability"] if logq else np.ones(len(rows))
    want = _numpy_mixed_loss(q, c, e.double().numpy(), p_in, extra[NEGATIVE_PROBABILITY],
                             ds.features["title_index"][rows], ids)
    assert got == pytest.approx(want, rel=1e-5)


def test_mixed_negatives_train(synthetic_dataset, small_config):
    config = small_config.replace(mixed_negatives=32, use_sampling_probability=True)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    history = fit_retrieval(model, synthetic_dataset, config, epochs=3)
    assert np.isfinite(history.loss).all() and history.loss[-1] < history.loss[0]
    plain = fit_retrieval(build_retrieval_model(synthetic_dataset.spec, small_config),
                          synthetic_dataset, small_config, epochs=1, validate=False)
    assert history.loss[0] != pytest.approx(plain.loss[0])  # the extra columns are scored


def test_recipes_that_cannot_run_are_refused(small_config):
    with pytest.raises(UnsupportedOptionError, match="mixed_negatives"):
        TorchBackend.check_config(small_config.replace(mixed_negatives=8, nproc=2))
    with pytest.raises(UnsupportedOptionError, match="learn_temperature"):
        TorchBackend.check_config(small_config.replace(learn_temperature=True, nproc=2,
                                                       negatives="global"))
    TorchBackend.check_config(small_config.replace(learn_temperature=True, nproc=2))  # replica
    TorchBackend.check_config(small_config.replace(mixed_negatives=8, normalize=True,
                                                   learn_temperature=True))
