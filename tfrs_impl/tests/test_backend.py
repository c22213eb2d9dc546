"""TfrsBackend against the Backend protocol and the framework-agnostic pipeline; the package's
Keras guard; the shared logQ probabilities."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfrs_impl.backend import TfrsBackend
from twostage import pipeline
from twostage.backend import Backend
from twostage.sampling import candidate_sampling_probability

REPO = Path(__file__).resolve().parents[2]


def test_backend_protocol_and_pipeline(synthetic_dataset, small_config):
    ds = synthetic_dataset
    config = small_config.replace(retrieval_epochs=1, ranking_epochs=1)
    backend = pipeline.make_backend("tfrs", config, ds)
    assert isinstance(backend, TfrsBackend) and isinstance(backend, Backend)
    with pytest.raises(RuntimeError, match="build_index"):
        backend.retrieve(ds.user_id[:2], ds.timestamp[:2], 3)
    backend.fit_retrieval(ds)
    backend.fit_ranking(ds)
    report = pipeline.evaluate(backend, ds, config)
    retrieval = report["retrieval"]
    for name in ("top_k_accuracy", "top_k_accuracy_index"):
        values = [retrieval[name][str(k)] for k in config.top_ks]
        assert values == sorted(values) and 0 <= values[0] and values[-1] <= 1
    assert report["two_stage"]["num_queries"] == int(ds.label[ds.split.test].sum())
    assert 0 < report["ranking"]["binary_accuracy"] <= 1


def test_inference_shapes_and_empty_inputs(synthetic_dataset, small_config):
    ds = synthetic_dataset
    backend = TfrsBackend(small_config, ds.spec)
    assert backend.query_embeddings(ds.user_id[:5], ds.timestamp[:5]).shape == (5, 32)
    assert backend.candidate_embeddings(ds.corpus_titles).shape == (len(ds.corpus_titles), 32)
    assert backend.query_embeddings(np.array([], object), np.array([], np.int64)).shape == (0, 32)
    assert backend.candidate_embeddings(np.array([], object)).shape == (0, 32)
    scores = backend.ranking_scores(ds.user_id[:5], ds.timestamp[:5], ds.movie_title[:5])
    assert scores.shape == (5,) and scores.dtype == np.float32
    backend.build_index(ds.corpus_titles)
    s, rows = backend.retrieve(ds.user_id[:5], ds.timestamp[:5], 4)
    assert s.shape == rows.shape == (5, 4) and rows.dtype == np.int64 and s.dtype == np.float32
    assert rows.max() < len(ds.corpus_titles)


def test_parity_helpers(synthetic_dataset, small_config):
    ds = synthetic_dataset
    backend = TfrsBackend(small_config, ds.spec)
    batch = ds.raw(ds.split.train[:32])
    for stage in ("retrieval", "ranking"):
        loss, grads = backend.loss_and_gradients(stage, batch)
        assert loss == pytest.approx(backend.batch_loss(stage, batch), rel=1e-6)
        weights = backend.get_weights(stage)
        assert grads.keys() == weights.keys()
        assert all(grads[k].shape == weights[k].shape for k in weights)
        # Setting shifted weights changes the loss; setting them back restores it.
        backend.set_weights(stage, {k: v + 0.01 for k, v in weights.items()})
        assert backend.batch_loss(stage, batch) != pytest.approx(loss, rel=1e-6)
        backend.set_weights(stage, weights)
        assert backend.batch_loss(stage, batch) == pytest.approx(loss, rel=1e-6)
    assert backend.retrieval_loss(batch) == backend.batch_loss("retrieval", batch)
    with pytest.raises(ValueError, match="stage"):
        backend.get_weights("both")


def test_foreign_spec_is_rejected(synthetic_dataset, small_config):
    ds = synthetic_dataset
    other = TfrsBackend(small_config, ds.spec.__class__(**{**ds.spec.__dict__,
                                                           "ts_mean": ds.spec.ts_mean + 1}))
    with pytest.raises(ValueError, match="feature spec"):
        other.fit_ranking(ds, epochs=1)


def test_candidate_sampling_probability(synthetic_dataset):
    ds = synthetic_dataset
    p = candidate_sampling_probability(ds)
    assert p.shape == (len(ds.movie_title),) and p.dtype == np.float32
    train_titles = ds.movie_title[ds.split.train]
    for row in [0, 1, 2, int(ds.split.test[0])]:
        expected = np.mean(train_titles == ds.movie_title[row])
        assert p[row] == pytest.approx(expected, rel=1e-6)
    # Over the training rows, each distinct title's probability is its share of the rows.
    _, first = np.unique(train_titles, return_index=True)
    assert p[ds.split.train][first].sum() == pytest.approx(1.0, rel=1e-5)


def test_import_after_keras3_is_refused():
    code = ("import os; os.environ.pop('TF_USE_LEGACY_KERAS', None); "
            "import tensorflow as tf; tf.keras.layers; import tfrs_impl")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "TF_USE_LEGACY_KERAS=1" in result.stderr
