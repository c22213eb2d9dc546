"""KerasAdagrad against hand-computed Keras updates (tf_keras/src/optimizers/adagrad.py), and its
accumulators by Keras weight name."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torch_impl.optim import KerasAdagrad, make_optimizer
from twostage.config import Config

F32 = np.float32


def keras_step(var, acc, grad, lr=0.1, eps=1e-7):
    """One Keras dense update_step in float32, in Keras' operation order."""
    acc = (acc + grad * grad).astype(F32)
    var = (var - (F32(lr) * grad) / np.sqrt(acc + F32(eps))).astype(F32)
    return var, acc


@pytest.mark.parametrize("foreach", [True, False])
def test_two_dense_steps_match_the_keras_formula(foreach):
    rng = np.random.default_rng(0)
    v0, g1, g2 = (rng.normal(size=(3, 4)).astype(F32) for _ in range(3))
    p = nn.Parameter(torch.from_numpy(v0.copy()))
    opt = KerasAdagrad([p], lr=0.1, foreach=foreach)
    var, acc = v0, np.full_like(v0, 0.1)
    for g in (g1, g2):
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        var, acc = keras_step(var, acc, g)
    np.testing.assert_allclose(p.detach().numpy(), var, rtol=1e-7, atol=0)
    np.testing.assert_allclose(opt.state[p]["accumulator"].numpy(), acc, rtol=1e-7, atol=0)


def test_epsilon_is_inside_the_square_root():
    """With a zero accumulator start, the first update of g is lr * g / sqrt(g^2 + eps)."""
    p = nn.Parameter(torch.tensor([0.0]))
    opt = KerasAdagrad([p], lr=1.0, initial_accumulator_value=0.0, epsilon=1.0)
    p.grad = torch.tensor([1.0])
    opt.step()
    # torch.optim.Adagrad would give -1 / (1 + 1)
    assert float(p.detach()) == pytest.approx(-1 / np.sqrt(2.0))


@pytest.mark.parametrize("sparse", [False, True])
def test_duplicate_embedding_indices_are_summed_before_squaring(sparse):
    """Keras deduplicates IndexedSlices (sums duplicate rows) before the sparse update: rows
    [1, 1, 2] with per-lookup gradients G give row 1 the gradient G0 + G1 (squared once)."""
    table = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F32)
    weights = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F32)
    emb = nn.Embedding(3, 2, sparse=sparse, _weight=torch.from_numpy(table.copy()))
    opt = KerasAdagrad(emb.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        (emb(torch.tensor([1, 1, 2])) * torch.from_numpy(weights)).sum().backward()
        opt.step()
        if step == 0:  # tf_keras 2.21, measured (Adagrad(0.1), tf.gather(emb, [1, 1, 2]))
            np.testing.assert_allclose(
                emb.weight.detach().numpy(),
                [[1.0, 2.0], [2.900311, 3.9001386], [4.900199, 5.900138]], rtol=1e-6)
    grad = np.array([[0, 0], [4, 6], [5, 6]], dtype=F32)
    var, acc = table, np.full_like(table, 0.1)
    for _ in range(2):
        var, acc = keras_step(var, acc, grad)
    np.testing.assert_allclose(emb.weight.detach().numpy(), var, rtol=1e-7)
    assert np.array_equal(emb.weight.detach().numpy()[0], table[0])  # untouched row unchanged


def test_state_exists_before_first_step_and_round_trips():
    p = nn.Parameter(torch.ones(2, 2))
    opt = KerasAdagrad([p], lr=0.5, initial_accumulator_value=0.3)
    assert torch.equal(opt.state[p]["accumulator"], torch.full((2, 2), 0.3))
    p.grad = torch.ones(2, 2)
    opt.step()
    q = nn.Parameter(torch.ones(2, 2))
    other = KerasAdagrad([q], lr=0.5)
    other.load_state_dict(opt.state_dict())
    assert torch.equal(other.state[q]["accumulator"], opt.state[p]["accumulator"])


def test_parameters_without_gradient_are_left_alone():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = KerasAdagrad([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2))
    assert torch.equal(opt.state[b]["accumulator"], torch.full((2,), 0.1))


def test_make_optimizer_uses_the_config():
    model = nn.Linear(2, 2)
    opt = make_optimizer(model, Config.of(learning_rate=0.05, initial_accumulator_value=0.2,
                                          adagrad_epsilon=1e-6))
    group = opt.param_groups[0]
    assert (group["lr"], group["initial_accumulator_value"], group["epsilon"]) == (0.05, 0.2, 1e-6)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        KerasAdagrad([nn.Parameter(torch.ones(1))], lr=0.0)
    with pytest.raises(ValueError):
        KerasAdagrad([nn.Parameter(torch.ones(1))], initial_accumulator_value=-1.0)


@pytest.mark.bitwise
def test_row_sparse_path_equals_the_dense_update_bitwise():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1000, 8, generator=g)
    grads = [torch.zeros(1000, 8) for _ in range(3)]
    for i, grad in enumerate(grads):  # a few touched rows, one with a zero column
        rows = torch.randint(0, 1000, (40,), generator=g)
        grad[rows] = torch.randn(40, 8, generator=g)
        grad[rows[0], 3] = 0.0
    grads.append(torch.randn(1000, 8, generator=g))  # all rows touched: the dense fallback
    results = []
    for min_rows in (None, 512):
        p = nn.Parameter(table.clone())
        opt = KerasAdagrad([p], lr=0.1, row_sparse_min_rows=min_rows)
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        results.append((p.detach().clone(), opt.state[p]["accumulator"].clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_row_sparse_path_is_cpu_only():
    """Off the CPU the table takes the dense update: finding the touched rows (``nonzero``)
    would read the device on the host every step. Meta tensors raise on any such read."""
    p = nn.Parameter(torch.zeros(1000, 8, device="meta"))
    opt = KerasAdagrad([p], lr=0.1)
    p.grad = torch.zeros(1000, 8, device="meta")
    opt.step()  # nonzero() on a meta tensor would raise NotImplementedError
    assert opt.state[p]["accumulator"].device.type == "meta"


def test_accumulators_by_keras_name_round_trip_with_transposed_kernels():
    from torch_impl.optim import get_accumulators, set_accumulators

    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    opt = KerasAdagrad(model.parameters(), lr=0.1)
    (model(torch.tensor([1, 1, 4])) ** 2).sum().backward()
    opt.step()
    accs = get_accumulators(opt, model, "m/")
    assert set(accs) == {"m/0/embeddings", "m/1/kernel", "m/1/bias"}
    assert accs["m/1/kernel"].shape == (3, 2)  # Keras layout [in, out]
    np.testing.assert_array_equal(accs["m/1/kernel"],
                                  opt.state[model[1].weight]["accumulator"].numpy().T)
    assert accs["m/0/embeddings"][0].tolist() == [F32(0.1)] * 3  # untouched row
    other = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    other_opt = KerasAdagrad(other.parameters(), lr=0.1)
    set_accumulators(other_opt, other, accs, "m/")
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(opt.state[a]["accumulator"], other_opt.state[b]["accumulator"])
    with pytest.raises(KeyError, match="accumulator names"):
        set_accumulators(other_opt, other, {k: v for k, v in accs.items() if "bias" not in k},
                         "m/")
    bad = {**accs, "m/1/kernel": accs["m/1/kernel"].T}
    with pytest.raises(ValueError, match="accumulator shape"):
        set_accumulators(other_opt, other, bad, "m/")
    with pytest.raises(KeyError, match="make_optimizer"):
        get_accumulators(KerasAdagrad(model[1].parameters(), lr=0.1), model)


def test_make_optimizer_reads_the_train_section_alone():
    """The builder takes ``config.train`` (issue 23 item 8): the same hyperparameters as from
    the whole Config. Break: read a field of another section and the section call fails."""
    config = Config.of(learning_rate=0.05, initial_accumulator_value=0.2, adagrad_epsilon=1e-6)
    model = torch.nn.Linear(2, 1)
    whole, section = make_optimizer(model, config), make_optimizer(model, config.train)
    assert whole.defaults == section.defaults
    assert section.defaults["lr"] == 0.05
