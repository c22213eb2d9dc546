"""TorchBackend (the twostage Backend protocol) and checkpoints: round trip, mismatch errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from torch_impl.backend import TorchBackend
from twostage.backend import Backend
from twostage.checkpoint import CheckpointError, load_checkpoint


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
    assert q.shape == c.shape == (10, small_config.model.layer_sizes[-1])
    assert q.dtype == c.dtype == np.float32
    p = trained.ranking_scores(ds.user_id[rows], ds.timestamp[rows], ds.movie_title[rows])
    assert p.shape == (10,) and p.dtype == np.float32 and np.all((p > 0) & (p < 1))
    assert trained.query_embeddings(np.array([], dtype=object), np.array([], np.int64)).shape == (
        0, small_config.model.layer_sizes[-1])
    with pytest.raises(ValueError, match="timestamps"):
        trained.query_embeddings(ds.user_id[rows], ds.timestamp[rows][:3])


def test_unknown_strings_fall_back_to_oov(trained, synthetic_dataset):
    """Two unknown users get the one OOV row. Broken on purpose, it fails: a lookup that hashes
    unknown strings to rows (they would differ), or one that maps them to a known user's row."""
    ts = np.array([synthetic_dataset.timestamp[0]])
    # one query per call: the same code on the same shape (in one batch of two, a kernel may
    # round its two rows differently: torch's avx2 GEMM does)
    q = [trained.query_embeddings(np.array([ghost], dtype=object), ts)
         for ghost in ("ghost-1", "ghost-2")]
    np.testing.assert_array_equal(q[0], q[1])
    known = trained.query_embeddings(synthetic_dataset.user_id[:1], ts)
    assert not np.array_equal(known, q[0])        # a known user is not the OOV row
    c = trained.candidate_embeddings(np.array(["Not A Movie (1900)", "Also Not (1900)"]))
    assert np.all(np.isfinite(c))


def test_retrieve_matches_brute_force(trained, synthetic_dataset):
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


@pytest.mark.bitwise
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


def test_save_overwrites_atomically_and_a_loaded_backend_rebuilds_the_index(
        trained, synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    backend = TorchBackend(trained.config, ds.spec)
    backend.set_weights("retrieval", trained.get_weights("retrieval"))
    target = tmp_path / "ckpt"
    backend.save(target)
    backend.build_index(ds.corpus_titles)
    backend.save(target)  # replaces the first one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind
    assert not [p.name for p in target.iterdir() if "index" in p.name]  # the index is not stored
    loaded = TorchBackend.load(target)
    rows = ds.split.test[:8]
    with pytest.raises(RuntimeError, match="build_index"):
        loaded.retrieve(ds.user_id[rows], ds.timestamp[rows], 3)
    loaded.build_index(ds.corpus_titles)
    a = backend.retrieve(ds.user_id[rows], ds.timestamp[rows], 3)
    b = loaded.retrieve(ds.user_id[rows], ds.timestamp[rows], 3)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_load_rejects_mismatched_spec_and_config(trained, synthetic_dataset, tmp_path):
    trained.save(tmp_path / "ckpt")
    other_spec = type(synthetic_dataset.spec)(**{
        **synthetic_dataset.spec.__dict__, "ts_mean": synthetic_dataset.spec.ts_mean + 1.0})
    with pytest.raises(CheckpointError, match="feature spec"):
        TorchBackend.load(tmp_path / "ckpt", spec=other_spec)
    with pytest.raises(CheckpointError, match="embedding_dim"):
        TorchBackend.load(tmp_path / "ckpt", config=trained.config.replace(embedding_dim=16))
    # Runtime options may differ: the given config is used.
    loaded = TorchBackend.load(tmp_path / "ckpt", config=trained.config.replace(kind="hnsw"))
    assert loaded.config.index.kind == "hnsw"


def test_load_detects_a_tampered_or_missing_checkpoint(trained, tmp_path):
    trained.save(tmp_path / "ckpt")
    spec_file = tmp_path / "ckpt" / "feature_spec.json"
    spec = json.loads(spec_file.read_text())
    spec["user_vocab"] = spec["user_vocab"][:-1]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="fingerprint"):
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
    """epochs_done advances after every epoch, before on_epoch sees it (as the TFRS backend's:
    a checkpoint written from on_epoch resumes after that epoch).
    Broken on purpose, it fails: epochs_done advanced once per fit (the old torch rule)."""
    backend = TorchBackend(small_config, synthetic_dataset.spec)
    seen = []
    backend.fit_ranking(synthetic_dataset, epochs=1)
    backend.fit_ranking(synthetic_dataset, epochs=2,
                        on_epoch=lambda stage, epoch, h: seen.append(backend.epochs_done[stage]))
    assert backend.epochs_done["ranking"] == 3 and seen == [2, 3]


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


def test_train_steps_are_fit_steps_on_raw_batches(synthetic_dataset, small_config):
    """train_steps on the shared order's first batches = the first epoch of fit_ranking, step
    for step (same losses, same weights); epochs_done is left alone."""
    from twostage.schedule import BatchPlan

    ds = synthetic_dataset
    plan = BatchPlan(ds.split.train, small_config.train.batch_size, small_config.seed)
    a, b = TorchBackend(small_config, ds.spec), TorchBackend(small_config, ds.spec)
    batches = [ds.raw(rows) for rows in plan.rows(0, 1)]
    first = a.batch_loss("ranking", batches[0])
    losses = a.train_steps("ranking", batches)
    assert len(losses) == plan.steps_per_epoch and losses[0] == pytest.approx(first, rel=1e-6)
    assert a.epochs_done == {"retrieval": 0, "ranking": 0}
    history = b.fit_ranking(ds, epochs=1)
    assert history.loss[0] == pytest.approx(float(np.mean(losses)), rel=1e-6)
    for name, value in a.get_weights("ranking").items():
        np.testing.assert_array_equal(value, b.get_weights("ranking")[name], err_msg=name)
    assert a.train_steps("retrieval", []) == []
    with pytest.raises(ValueError, match="stage"):
        a.train_steps("bogus", batches)


def test_options_come_from_the_config(synthetic_dataset, small_config):
    config = small_config.replace(empty_title="nan", ranking_loss="logits", temperature=0.5,
                                  num_hard_negatives=3)
    backend = TorchBackend(config, synthetic_dataset.spec)
    assert backend.ranking_task.loss_mode == "logits"
    assert backend.retrieval_model.candidate_model.embedding_model.empty_title == "nan"
    assert backend.ranking_model.movie_embeddings.empty_title == "nan"
    assert (backend.retrieval_task.temperature, backend.retrieval_task.num_hard_negatives) == (
        0.5, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_a_cuda_device_without_cuda_is_a_clear_error(synthetic_dataset, small_config):
    with pytest.raises(RuntimeError, match="CUDA is not available.*device='cpu'"):
        TorchBackend.check_config(small_config.replace(device="cuda"))
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        TorchBackend(small_config.replace(device="cuda:0"), synthetic_dataset.spec)
    from torch_impl.features import resolve_device
    with pytest.raises(ValueError, match="not a torch device name"):
        resolve_device("gpu")  # Config refuses it too; the function is also used directly


@pytest.mark.bitwise
def test_a_resumed_run_continues_exactly(synthetic_dataset, small_config, tmp_path):
    """1 epoch, save, load, 1 more epoch = 2 epochs in one go, bitwise on the CPU: the weights,
    the Adagrad accumulators (retrieval and ranking) and the batch order's epoch all resume."""
    ds = synthetic_dataset
    config = small_config.replace(validation_freq=100)
    whole, part = TorchBackend(config, ds.spec), TorchBackend(config, ds.spec)
    for stage in ("retrieval", "ranking"):
        getattr(whole, f"fit_{stage}")(ds, epochs=2)
        getattr(part, f"fit_{stage}")(ds, epochs=1)
    part.save(tmp_path / "ckpt")
    resumed = TorchBackend.load(tmp_path / "ckpt")
    assert resumed.epochs_done == {"retrieval": 1, "ranking": 1}
    for stage in ("retrieval", "ranking"):
        getattr(resumed, f"fit_{stage}")(ds, epochs=1)
        for name, value in whole.get_weights(stage).items():
            np.testing.assert_array_equal(resumed.get_weights(stage)[name], value,
                                          err_msg=f"{stage} {name}")


def test_load_rejects_weights_of_the_wrong_shape(trained, tmp_path):
    trained.save(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "ranking.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    name = "accumulators/ranking_model/ratings/0/kernel"
    arrays[name] = arrays[name].T.copy()
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match="ratings/0/kernel has shape"):
        TorchBackend.load(tmp_path / "ckpt")
