"""TorchBackend (the twostage Backend protocol) and checkpoints: round trip, mismatch errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from torch_impl.backend import TorchBackend
from torch_impl.checkpoint import CheckpointMismatchError, load_checkpoint
from twostage.backend import Backend


@pytest.fixture(scope="module")
def trained(synthetic_dataset, small_config):
    """A backend trained one epoch per stage (module-scoped: the tests only read it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_torch_thread
    try:
        backend = TorchBackend(small_config, synthetic_dataset.spec)
        backend.fit_retrieval(synthetic_dataset, epochs=1)
        backend.fit_ranking(synthetic_dataset, epochs=1)
    finally:
        torch.set_num_threads(previous)
    return backend


def test_implements_the_backend_protocol(trained):
    assert isinstance(trained, Backend)
    assert trained.name == "torch"


def test_embeddings_and_scores(trained, synthetic_dataset, small_config):
    ds = synthetic_dataset
    rows = ds.split.test[:10]
    q = trained.query_embeddings(ds.user_id[rows], ds.timestamp[rows])
    c = trained.candidate_embeddings(ds.movie_title[rows])
    assert q.shape == c.shape == (10, small_config.layer_sizes[-1])
    assert q.dtype == c.dtype == np.float32
    p = trained.ranking_scores(ds.user_id[rows], ds.timestamp[rows], ds.movie_title[rows])
    assert p.shape == (10,) and p.dtype == np.float32 and np.all((p > 0) & (p < 1))
    assert trained.query_embeddings(np.array([], dtype=object), np.array([], np.int64)).shape == (
        0, small_config.layer_sizes[-1])
    with pytest.raises(ValueError, match="timestamps"):
        trained.query_embeddings(ds.user_id[rows], ds.timestamp[rows][:3])


def test_unknown_strings_fall_back_to_oov(trained, synthetic_dataset):
    ts = np.array([synthetic_dataset.timestamp[0]] * 2)
    q = trained.query_embeddings(np.array(["ghost-1", "ghost-2"], dtype=object), ts)
    np.testing.assert_array_equal(q[0], q[1])
    c = trained.candidate_embeddings(np.array(["Not A Movie (1900)", "Also Not (1900)"]))
    assert np.all(np.isfinite(c))


def test_retrieve_matches_brute_force(trained, synthetic_dataset):
    pytest.importorskip("faiss")
    ds = synthetic_dataset
    backend = TorchBackend(trained.config, ds.spec)
    backend.set_weights("retrieval", trained.get_weights("retrieval"))
    with pytest.raises(RuntimeError, match="build_index"):
        backend.retrieve(ds.user_id[:2], ds.timestamp[:2], 5)
    backend.build_index(ds.corpus_titles)
    rows = ds.split.test[:20]
    scores, idx = backend.retrieve(ds.user_id[rows], ds.timestamp[rows], 5)
    assert scores.shape == idx.shape == (20, 5) and idx.dtype == np.int64
    exact = backend.query_embeddings(ds.user_id[rows], ds.timestamp[rows]) @ \
        backend.candidate_embeddings(ds.corpus_titles).T
    np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :5], rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(trained, synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    trained.save(tmp_path / "ckpt")
    loaded = TorchBackend.load(tmp_path / "ckpt")
    rows = ds.split.test[:16]
    for a, b in [(trained, loaded)]:
        np.testing.assert_array_equal(a.query_embeddings(ds.user_id[rows], ds.timestamp[rows]),
                                      b.query_embeddings(ds.user_id[rows], ds.timestamp[rows]))
        np.testing.assert_array_equal(
            a.ranking_scores(ds.user_id[rows], ds.timestamp[rows], ds.movie_title[rows]),
            b.ranking_scores(ds.user_id[rows], ds.timestamp[rows], ds.movie_title[rows]))
    assert loaded.config == trained.config and loaded.spec == trained.spec
    assert loaded.epochs_done == {"retrieval": 1, "ranking": 1}
    acc_a = trained.optimizers["ranking"].state_dict()["state"][0]["accumulator"]
    acc_b = loaded.optimizers["ranking"].state_dict()["state"][0]["accumulator"]
    assert torch.equal(acc_a, acc_b)


def test_save_overwrites_atomically_and_keeps_the_index(trained, synthetic_dataset, tmp_path):
    pytest.importorskip("faiss")
    ds = synthetic_dataset
    backend = TorchBackend(trained.config, ds.spec)
    backend.set_weights("retrieval", trained.get_weights("retrieval"))
    target = tmp_path / "ckpt"
    backend.save(target)
    backend.build_index(ds.corpus_titles)
    backend.save(target)  # replaces the first one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind
    loaded = TorchBackend.load(target)
    rows = ds.split.test[:8]
    a = backend.retrieve(ds.user_id[rows], ds.timestamp[rows], 3)
    b = loaded.retrieve(ds.user_id[rows], ds.timestamp[rows], 3)
    np.testing.assert_array_equal(a[1], b[1])


def test_load_rejects_mismatched_spec_and_config(trained, synthetic_dataset, tmp_path):
    trained.save(tmp_path / "ckpt")
    other_spec = type(synthetic_dataset.spec)(**{
        **synthetic_dataset.spec.__dict__, "ts_mean": synthetic_dataset.spec.ts_mean + 1.0})
    with pytest.raises(CheckpointMismatchError, match="feature spec"):
        TorchBackend.load(tmp_path / "ckpt", spec=other_spec)
    with pytest.raises(CheckpointMismatchError, match="embedding_dim"):
        TorchBackend.load(tmp_path / "ckpt", config=trained.config.replace(embedding_dim=16))
    # Runtime options may differ: the given config is used.
    loaded = TorchBackend.load(tmp_path / "ckpt", config=trained.config.replace(index="hnsw"))
    assert loaded.config.index == "hnsw"


def test_load_detects_a_tampered_or_missing_checkpoint(trained, tmp_path):
    trained.save(tmp_path / "ckpt")
    spec_file = tmp_path / "ckpt" / "feature_spec.json"
    spec = json.loads(spec_file.read_text())
    spec["user_vocab"] = spec["user_vocab"][:-1]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(CheckpointMismatchError, match="fingerprint"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError):
        TorchBackend.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a torch checkpoint"):
        TorchBackend.load(tmp_path / "empty")


def test_spec_config_and_dataset_consistency(synthetic_dataset, small_config):
    with pytest.raises(ValueError, match="num_buckets"):
        TorchBackend(small_config.replace(num_buckets=10), synthetic_dataset.spec)
    backend = TorchBackend(small_config, synthetic_dataset.spec)
    other = type(synthetic_dataset.spec)(**{**synthetic_dataset.spec.__dict__,
                                            "ts_variance": 1.0})
    with pytest.raises(ValueError, match="feature spec differs"):
        backend.fit_ranking(dataclasses.replace(synthetic_dataset, spec=other), epochs=1)


def test_repeated_fits_continue_the_schedule(synthetic_dataset, small_config):
    backend = TorchBackend(small_config, synthetic_dataset.spec)
    backend.fit_ranking(synthetic_dataset, epochs=1)
    backend.fit_ranking(synthetic_dataset, epochs=2)
    assert backend.epochs_done["ranking"] == 3


def test_parity_helpers(trained, synthetic_dataset):
    ds = synthetic_dataset
    rows = ds.split.train[:32]
    batch = {**ds.raw(rows)}
    loss = trained.batch_loss("retrieval", batch)
    value, grads = trained.loss_and_gradients("retrieval", batch)
    assert value == pytest.approx(loss, rel=1e-6)
    weights = trained.get_weights("retrieval")
    assert set(grads) == set(weights)
    assert all(grads[k].shape == weights[k].shape for k in weights)
    assert np.any(grads["query_model/dense_layers/0/kernel"] != 0)
    assert trained.ranking_loss(batch) > 0
    assert set(trained.get_weights("ranking")) >= {"ranking_model/ratings/0/kernel"}
    with pytest.raises(ValueError, match="stage"):
        trained.get_weights("bogus")
