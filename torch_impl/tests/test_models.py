"""Models: masked mean (Keras GlobalAveragePooling1D with mask), Keras init, shapes, weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from parity_tests import tolerances as tol

from torch_impl.features import to_tensors
from torch_impl.models import (bag_mean, build_ranking_model, build_retrieval_model,
                               get_keras_weights, keras_init_, masked_mean, set_keras_weights)


def test_masked_mean_averages_unmasked_steps():
    emb = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(emb, mask).tolist() == [[2.0, 4.0]]


def test_all_padding_row_is_zero_by_default_and_nan_as_keras():
    """tf_keras 2.21: Embedding(mask_zero=True) + GlobalAveragePooling1D on [[0, 0, 0]] = NaN."""
    emb = torch.ones(2, 3, 2)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    assert masked_mean(emb, mask).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    out = masked_mean(emb, mask, empty="nan")
    assert out[0].tolist() == [1.0, 1.0] and torch.isnan(out[1]).all()
    with pytest.raises(ValueError):
        masked_mean(emb, mask, empty="skip")


@pytest.mark.parametrize("empty", ["zero", "nan"])
def test_fused_bag_mean_equals_masked_mean_with_gradients(empty):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 4, generator=g)
    tokens = torch.randint(1, 50, (16, 7), generator=g)
    tokens[:, 4:] = 0
    tokens[3] = 0  # a token-less title
    tokens[5, 1] = 0  # padding inside a row is masked too
    w1, w2 = weight.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    a = masked_mean(nn.functional.embedding(tokens, w1), tokens != 0, empty)
    b = bag_mean(tokens, w2, empty)
    torch.testing.assert_close(a, b, equal_nan=True)
    keep = ~torch.isnan(a).any(dim=1)
    a[keep].sum().backward()
    b[keep].sum().backward()
    # Row 0 (padding): 0 in both for "zero"; in "nan" mode the masked product passes the empty
    # row's 0/0 on as NaN (as Keras would), the bag skips it. Other rows must agree.
    torch.testing.assert_close(w1.grad[1:], w2.grad[1:])
    assert torch.all(w2.grad[0] == 0)
    if empty == "zero":
        assert torch.all(w1.grad[0] == 0)



@pytest.mark.parametrize("empty", ["zero", "nan"])
def test_bag_mean_padded_input_equals_the_flat_one_bitwise(empty):
    """The accelerator form (padded [B, L] with padding_idx=0: no host-sized selection) gives
    the CPU form's numbers and gradients, up to the two kernels' summation order (a mean of
    at most 9 rows; a gradient of at most 32 * 9 same-signed terms). A wrong mask or divisor
    is off by whole terms.
    Broken on purpose, it fails: padding tokens counted in the mean's divisor."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(60, 8, generator=g)
    tokens = torch.randint(1, 60, (32, 9), generator=g)
    tokens[:, 5:] = 0
    tokens[7] = 0
    tokens[3, 2] = 0
    w1, w2 = weight.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    a, b = bag_mean(tokens, w1, empty, flat=True), bag_mean(tokens, w2, empty, flat=False)
    torch.testing.assert_close(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0),
                               rtol=0, atol=tol.cross_kernel_atol(9, weight.abs().max()))
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    keep = ~torch.isnan(a).any(dim=1)
    (a[keep] * torch.arange(8.0)).sum().backward()
    (b[keep] * torch.arange(8.0)).sum().backward()
    same_sign = 2 * tol.reduction_gamma(32 * 9) + 4 * tol.FLOAT32_UNIT_ROUNDOFF
    torch.testing.assert_close(w1.grad, w2.grad, rtol=same_sign, atol=0)


def test_empty_title_comes_from_the_config(synthetic_dataset, small_config):
    nan = small_config.replace(empty_title="nan")
    for build in (build_retrieval_model, build_ranking_model):
        for config, mode in ((small_config, "zero"), (nan, "nan")):
            movies = [m for m in build(synthetic_dataset.spec, config).modules()
                      if type(m).__name__ == "MovieModel"]
            assert [m.empty_title for m in movies] == [mode]


def test_keras_init_statistics(synthetic_dataset, small_config):
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    table = model.candidate_model.embedding_model.title_text_embedding.weight.detach()
    assert table.abs().max() <= 0.05
    assert table.mean().abs() < 0.002
    assert table.std().item() == pytest.approx(0.1 / math.sqrt(12), rel=0.03)  # U(-0.05, 0.05)
    for layer in model.query_model.dense_layers:
        fan_out, fan_in = layer.weight.shape
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= limit
        assert layer.weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
        assert torch.all(layer.bias == 0)


@pytest.mark.bitwise
def test_init_depends_only_on_config_seed(synthetic_dataset, small_config):
    spec = synthetic_dataset.spec
    torch.manual_seed(123)
    a = build_retrieval_model(spec, small_config).state_dict()
    torch.manual_seed(456)  # the global RNG plays no part
    b = build_retrieval_model(spec, small_config).state_dict()
    c = build_retrieval_model(spec, small_config.replace(seed=7)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["query_model.dense_layers.0.weight"],
                           c["query_model.dense_layers.0.weight"])


def test_keras_init_covers_embeddings_and_linears():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Embedding(10, 3), nn.Linear(3, 5))
    nn.init.constant_(m[0].weight, 9.0)
    nn.init.constant_(m[1].bias, 9.0)
    keras_init_(m, g)
    assert m[0].weight.abs().max() <= 0.05 and torch.all(m[1].bias == 0)


def test_shapes_and_attribute_names(synthetic_dataset, small_config):
    ds = synthetic_dataset
    batch = to_tensors(ds.encoded(ds.split.train[:8]))
    model = build_retrieval_model(ds.spec, small_config)
    user = model.query_model.embedding_model
    assert user(batch).shape == (8, 65)
    assert model.candidate_model.embedding_model(batch).shape == (8, 64)
    q, c = model(batch)
    assert q.shape == c.shape == (8, small_config.model.layer_sizes[-1])
    assert user.user_embedding.num_embeddings == ds.spec.num_user_rows
    assert user.timestamp_embedding.num_embeddings == ds.spec.num_bucket_rows
    movie = model.candidate_model.embedding_model
    assert movie.title_embedding.num_embeddings == ds.spec.num_title_rows
    assert movie.title_text_embedding.num_embeddings == ds.spec.max_tokens
    ranking = build_ranking_model(ds.spec, small_config)
    probs = ranking(batch)
    assert probs.shape == (8, 1) and torch.all((probs > 0) & (probs < 1))
    torch.testing.assert_close(torch.sigmoid(ranking.logits(batch)), probs)
    assert [layer.out_features for layer in ranking.ratings] == [256, 64, 1]
    assert ranking.ratings[0].in_features == 65 + 64


def test_tower_is_linear_after_the_last_layer(synthetic_dataset, small_config):
    """ReLU on all tower layers but the last: outputs take negative values."""
    ds = synthetic_dataset
    model = build_retrieval_model(ds.spec, small_config)
    q = model.query_model(to_tensors(ds.encoded(ds.split.train[:64])))
    assert (q < 0).any()


def test_keras_weight_names_and_round_trip(synthetic_dataset, small_config):
    ds = synthetic_dataset
    a = build_retrieval_model(ds.spec, small_config)
    b = build_retrieval_model(ds.spec, small_config.replace(seed=1))
    weights = get_keras_weights(a)
    assert weights["query_model/dense_layers/0/kernel"].shape == (65, 64)  # Keras [in, out]
    assert "candidate_model/embedding_model/title_text_embedding/embeddings" in weights
    set_keras_weights(b, weights)
    batch = to_tensors(ds.encoded(ds.split.test[:16]))
    torch.testing.assert_close(a(batch)[0], b(batch)[0], rtol=0, atol=0)
    ranking = build_ranking_model(ds.spec, small_config)
    names = get_keras_weights(ranking, "ranking_model/")
    assert "ranking_model/ratings/2/kernel" in names
    with pytest.raises(KeyError):
        set_keras_weights(b, {k: v for k, v in weights.items() if "bias" not in k})
    bad = dict(weights)
    bad["query_model/dense_layers/0/kernel"] = np.zeros((64, 65), np.float32)
    with pytest.raises(ValueError, match="shape"):
        set_keras_weights(b, bad)


def test_unknown_ids_use_the_oov_row(synthetic_dataset, small_config):
    ds = synthetic_dataset
    model = build_retrieval_model(ds.spec, small_config)
    enc = ds.spec.encode_queries(["no-such-user", "nobody"], [ds.timestamp[0]] * 2)
    assert enc["user_index"].tolist() == [0, 0]
    q = model.query_model(to_tensors(enc))
    torch.testing.assert_close(q[0], q[1])


@pytest.mark.bitwise
def test_towers_gather_title_tokens_by_title_index_when_not_given(synthetic_dataset,
                                                                   small_config):
    """A batch of rating rows carries no title_tokens (no [N, L] copy per rating): both models
    gather them from their table by title_index, with the same outputs as the tokens given."""
    from torch_impl.models import build_ranking_model
    ds = synthetic_dataset
    rows = ds.split.train[:64]
    ids_only = to_tensors(ds.encoded(rows))
    assert "title_tokens" not in ids_only
    given = {**ids_only, "title_tokens": torch.from_numpy(ds.title_tokens(rows))}
    retrieval = build_retrieval_model(ds.spec, small_config)
    ranking = build_ranking_model(ds.spec, small_config)
    with torch.no_grad():
        assert torch.equal(retrieval.candidate_model(ids_only), retrieval.candidate_model(given))
        assert torch.equal(ranking(ids_only), ranking(given))
        shuffled = dict(given, title_tokens=given["title_tokens"].roll(1, dims=0))
        assert not torch.equal(retrieval.candidate_model(ids_only),
                               retrieval.candidate_model(shuffled))  # the tokens do matter
    assert "title_token_table" not in retrieval.state_dict()  # data, not a weight


def test_large_id_tables_train_with_sparse_gradients_as_dense(synthetic_dataset, small_config,
                                                              monkeypatch):
    """Tables of at least SPARSE_MIN_ROWS rows get sparse gradients on the CPU (Keras'
    IndexedSlices update of the batch's rows only). One step of each stage gives the dense
    step's loss and weights to float rounding (duplicate rows are summed in another order:
    measured 2e-8); over 2 epochs such differences grow (5e-5 after 10 steps on this tiny data)
    but the epoch losses stay within 1e-3. On an accelerator every table stays dense."""
    from torch_impl import models
    from torch_impl.optim import make_optimizer
    from torch_impl.train import eager_step, fit_ranking, fit_retrieval, ranking_parts, \
        retrieval_parts
    ds = synthetic_dataset
    assert models.sparse_min_rows("cuda") is None
    stages = ((build_retrieval_model, retrieval_parts, fit_retrieval),
              (build_ranking_model, ranking_parts, fit_ranking))
    runs = {}
    for min_rows in (None, 10):
        monkeypatch.setattr(models, "SPARSE_MIN_ROWS", min_rows or 10 ** 9)
        run = []
        for build, parts_of, fit in stages:
            model = build(ds.spec, small_config)
            sparse = [m.sparse for m in model.modules() if isinstance(m, nn.Embedding)]
            assert any(sparse) == (min_rows is not None)
            parts, train = parts_of(model, ds, small_config, validate=False)
            loss = float(eager_step(parts, train)(torch.arange(256))[0])
            one_step = [p.detach().clone() for p in model.parameters()]
            model = build(ds.spec, small_config)
            history = fit(model, ds, small_config, optimizer=make_optimizer(model, small_config),
                          epochs=2, validate=False)
            run.append((loss, one_step, history.loss))
        runs[min_rows] = run
    for (loss, weights, epochs), (d_loss, d_weights, d_epochs) in zip(runs[10], runs[None]):
        assert loss == pytest.approx(d_loss, rel=1e-6)
        for a, b in zip(weights, d_weights):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(epochs, d_epochs, rtol=1e-3)
