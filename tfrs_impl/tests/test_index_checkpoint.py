"""BruteForce index, checkpoints (atomic save/load) and the SavedModel serving export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tfrs_impl import checkpoint, index, models, tasks
from tfrs_impl.backend import TfrsBackend


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
        "config.json", "meta.json", "ranking.npz", "retrieval.npz", "spec.json"]
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
    with pytest.raises(ValueError, match="not a tfrs checkpoint"):
        TfrsBackend.load(tmp_path / "missing")


def test_failed_save_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    trained.save(tmp_path / "ck")
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "ck").iterdir())

    def broken(model):
        raise OSError("disk full")
    monkeypatch.setattr(models, "get_weights", broken)
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
