"""BruteForce index, checkpoints (twostage.checkpoint format: weights, Adagrad accumulators,
epochs done; atomic save/load) and the SavedModel serving export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tfrs_impl import checkpoint, index
from tfrs_impl.backend import TfrsBackend
from twostage import io
from twostage.backend import UnsupportedOptionError
from twostage.checkpoint import CheckpointError, CheckpointNotFoundError


@pytest.fixture(scope="module")
def trained(synthetic_dataset, small_config):
    """A backend after one short epoch of each stage (so the weights are not the init)."""
    backend = TfrsBackend(small_config, synthetic_dataset.spec)
    backend.fit_retrieval(synthetic_dataset, epochs=1)
    backend.fit_ranking(synthetic_dataset, epochs=1)
    return backend


def test_brute_force_is_exact_top_k(trained, synthetic_dataset):
    ds = synthetic_dataset
    users, ts = ds.user_id[:40], ds.timestamp[:40]
    model = trained.retrieval_model
    built = index.build_index(model.query_model, model.candidate_model, ds.corpus_titles, k=10)
    scores, rows = index.query(built, users, ts, k=10)
    assert scores.shape == rows.shape == (40, 10) and rows.dtype == np.int64
    q = trained.query_embeddings(users, ts)
    all_scores = q @ trained.candidate_embeddings(ds.corpus_titles).T
    np.testing.assert_allclose(scores, np.take_along_axis(all_scores, rows, 1), rtol=1e-5,
                               atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    kth = scores[:, -1:]
    outside = np.ones_like(all_scores, bool)
    np.put_along_axis(outside, rows, False, 1)
    assert (all_scores[outside].reshape(40, -1) <= kth + 1e-5).all()
    # title identifiers: the same ranking, as titles
    by_title = index.build_index(model.query_model, model.candidate_model, ds.corpus_titles,
                                 k=10, identifiers="titles")
    _, titles = index.query(by_title, users, ts, k=10)
    assert (titles == ds.corpus_titles[rows]).all()
    # k is clamped to the corpus
    s, r = index.query(built, users[:2], ts[:2], k=10_000)
    assert r.shape == (2, len(ds.corpus_titles))


def test_checkpoint_round_trip(trained, synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    trained.save(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        ".twostage", "config.json", "feature_spec.json", "meta.json", "ranking.npz",
        "retrieval.npz"]
    loaded = TfrsBackend.load(tmp_path / "ck")
    assert loaded.config == trained.config and loaded.spec == trained.spec
    for stage in ("retrieval", "ranking"):
        a, b = trained.get_weights(stage), loaded.get_weights(stage)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for backend in (trained, loaded):
        backend.build_index(ds.corpus_titles)
    got = [b.retrieve(ds.user_id[:20], ds.timestamp[:20], 7) for b in (trained, loaded)]
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    rows = ds.split.test[:50]
    np.testing.assert_array_equal(
        trained.ranking_scores(ds.user_id[rows], ds.timestamp[rows], ds.movie_title[rows]),
        loaded.ranking_scores(ds.user_id[rows], ds.timestamp[rows], ds.movie_title[rows]))


def test_checkpoint_errors_are_clear(trained, tmp_path):
    trained.save(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    (tmp_path / "ck" / "meta.json").write_text(json.dumps({**meta, "backend": "torch"}))
    with pytest.raises(ValueError, match="torch"):
        TfrsBackend.load(tmp_path / "ck")
    (tmp_path / "ck" / "meta.json").write_text(json.dumps({**meta, "spec_fingerprint": "x"}))
    with pytest.raises(ValueError, match="fingerprint"):
        TfrsBackend.load(tmp_path / "ck")
    # twostage.checkpoint: a missing folder is CheckpointNotFoundError, a FileNotFoundError
    with pytest.raises(CheckpointNotFoundError, match="not a tfrs checkpoint"):
        TfrsBackend.load(tmp_path / "missing")


@pytest.mark.parametrize("where", ["collecting weights", "writing files"])
def test_failed_save_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch, where):
    trained.save(tmp_path / "ck")
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "ck").iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")
    if where == "collecting weights":
        monkeypatch.setattr(checkpoint, "get_weights", broken)
    else:  # inside the temporary folder, after the weight files were written
        monkeypatch.setattr(io, "write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        trained.save(tmp_path / "ck")
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "ck").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp directories left


def test_saved_model_round_trip(trained, synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    trained.export_saved_model(tmp_path / "serving", ds.corpus_titles, k=10)
    served = tf.saved_model.load(str(tmp_path / "serving"))
    users, ts = ds.user_id[:6].astype(str), ds.timestamp[:6]
    scores, titles = served({"user_id": tf.constant(users), "timestamp": tf.constant(ts, tf.int64)})
    assert scores.shape == titles.shape == (6, 10) and titles.dtype == tf.string
    trained.build_index(ds.corpus_titles)
    expected_scores, rows = trained.retrieve(users, ts, 10)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-6, atol=1e-6)
    assert [[t.decode() for t in row] for row in titles.numpy()] == ds.corpus_titles[rows].tolist()
    # the documented call form, and the serving signature
    one = served({"user_id": tf.constant([str(ds.user_id[0])]),
                  "timestamp": tf.constant([879000000], tf.int64)})
    assert one[0].shape == (1, 10)
    sig = served.signatures["serving_default"](user_id=tf.constant(users),
                                               timestamp=tf.constant(ts, tf.int64))
    np.testing.assert_array_equal(sig["titles"].numpy(), titles.numpy())


def test_checkpoint_errors_are_value_errors(trained, tmp_path):
    """CheckpointError (a ValueError) for what does not fit; CheckpointNotFoundError (a
    FileNotFoundError) for no checkpoint."""
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    trained.save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="layer_sizes"):
        TfrsBackend.load(tmp_path / "ck", config=trained.config.replace(layer_sizes=(16, 8)))
    weights = dict(np.load(tmp_path / "ck" / "ranking.npz"))
    weights.pop("accumulators/ranking_model/ratings/2/bias")
    weights.pop("weights/ranking_model/ratings/2/bias")
    np.savez(tmp_path / "ck" / "ranking.npz", **weights)
    with pytest.raises(CheckpointError, match="ranking.npz: weight names"):
        TfrsBackend.load(tmp_path / "ck")


def test_load_with_a_config_uses_its_runtime_options(trained, synthetic_dataset, tmp_path):
    trained.save(tmp_path / "ck")
    runtime = trained.config.replace(eval_batch_size=64, ranking_epochs=7)
    loaded = TfrsBackend.load(tmp_path / "ck", config=runtime, spec=synthetic_dataset.spec)
    assert loaded.config == runtime
    with pytest.raises(UnsupportedOptionError, match="kind='ivf'"):
        TfrsBackend.load(tmp_path / "ck", config=trained.config.replace(kind="ivf"))
    with pytest.raises(CheckpointError, match="spec"):
        other = synthetic_dataset.spec.__class__(**{**synthetic_dataset.spec.__dict__,
                                                    "ts_mean": synthetic_dataset.spec.ts_mean + 1})
        TfrsBackend.load(tmp_path / "ck", spec=other)


def test_accumulators_and_epochs_survive_save_load(trained, tmp_path):
    trained.save(tmp_path / "ck")
    loaded = TfrsBackend.load(tmp_path / "ck")
    assert loaded.epochs_done == trained.epochs_done == {"retrieval": 1, "ranking": 1}
    for stage in ("retrieval", "ranking"):
        a, b = trained.get_accumulators(stage), loaded.get_accumulators(stage)
        assert a.keys() == b.keys() == trained.get_weights(stage).keys()
        assert all(np.array_equal(a[k], b[k]) for k in a)
        # trained: the accumulators moved away from their initial value
        assert any((v > trained.config.train.initial_accumulator_value + 1e-6).any()
                   for v in a.values())


@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_resumed_fit_continues_adagrad_and_the_batch_order(synthetic_dataset, small_config,
                                                           tmp_path, stage):
    """Two epochs in one go == one epoch, save, load, one more epoch: same losses and weights
    (the second epoch sees epoch 1 of the shared order and the saved accumulators)."""
    ds, config = synthetic_dataset, small_config.replace(validation_freq=100)
    fit = "fit_retrieval" if stage == "retrieval" else "fit_ranking"
    straight = TfrsBackend(config, ds.spec)
    h2 = getattr(straight, fit)(ds, epochs=2)
    first = TfrsBackend(config, ds.spec)
    getattr(first, fit)(ds, epochs=1)
    first.save(tmp_path / "ck")
    resumed = TfrsBackend.load(tmp_path / "ck")
    assert resumed.epochs_done[stage] == 1
    h1b = getattr(resumed, fit)(ds, epochs=1)
    assert resumed.epochs_done[stage] == 2
    assert h1b.loss[0] == pytest.approx(h2.loss[1], rel=1e-5)
    a, b = straight.get_weights(stage), resumed.get_weights(stage)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
    a, b = straight.get_accumulators(stage), resumed.get_accumulators(stage)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_resume_without_accumulators_would_differ(synthetic_dataset, small_config, tmp_path):
    """The saved accumulators matter: restarting Adagrad (fresh accumulators) changes the
    second epoch, so the resume test above really checks the optimizer state."""
    ds, config = synthetic_dataset, small_config.replace(validation_freq=100)
    first = TfrsBackend(config, ds.spec)
    first.fit_ranking(ds, epochs=1)
    first.save(tmp_path / "ck")
    resumed, restarted = TfrsBackend.load(tmp_path / "ck"), TfrsBackend.load(tmp_path / "ck")
    fresh = TfrsBackend(config, ds.spec).get_accumulators("ranking")
    from tfrs_impl import optim
    optim.set_accumulators(restarted.optimizers["ranking"], restarted.ranking_model, fresh)
    h_resumed = resumed.fit_ranking(ds, epochs=1)
    h_restarted = restarted.fit_ranking(ds, epochs=1)
    assert h_resumed.loss[0] != pytest.approx(h_restarted.loss[0], rel=1e-4)


def test_saved_model_export_replaces_only_its_own_folders(trained, synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    out = trained.export_saved_model(tmp_path / "serving", ds.corpus_titles, k=5)
    assert io.marker_kind(out) == checkpoint.SAVEDMODEL_KIND
    trained.export_saved_model(tmp_path / "serving", ds.corpus_titles, k=5)  # ours: replaced
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(io.OwnershipError):
        trained.export_saved_model(foreign, ds.corpus_titles, k=5)
    assert (foreign / "keep.txt").read_text() == "mine"
    checkpoint.export_saved_model(foreign, trained.retrieval_model, ds.corpus_titles, k=5,
                                  force=True)  # moved aside, not deleted
    assert io.marker_kind(foreign) == checkpoint.SAVEDMODEL_KIND
    [aside] = tmp_path.glob("notes.replaced-*")
    assert (aside / "keep.txt").read_text() == "mine"
    with pytest.raises(io.OwnershipError):  # a checkpoint is not a SavedModel
        trained.save(tmp_path / "ck")
        trained.export_saved_model(tmp_path / "ck", ds.corpus_titles, k=5)
