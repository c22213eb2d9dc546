"""TfrsBackend against the Backend protocol and the framework-agnostic pipeline; what it refuses;
the package's Keras guard; the shared logQ probabilities."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import inspect

import numpy as np
import pytest

from tfrs_impl import models
from tfrs_impl.backend import TfrsBackend
from twostage import evaluation as ev
from twostage import pipeline
from twostage.backend import Backend, UnsupportedOptionError
from twostage.sampling import candidate_sampling_probability
from twostage.schedule import BatchPlan

REPO = Path(__file__).resolve().parents[2]


def test_backend_protocol_and_pipeline(synthetic_dataset, small_config):
    """Broken on purpose, it fails: an evaluation on other rows or other embeddings than the
    backend's own."""
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
        values = [retrieval[name][str(k)] for k in config.eval.top_ks]
        assert values == sorted(values) and 0 <= values[0] and values[-1] <= 1
    # the report's figure is the metric of this backend's own embeddings of the test split
    rows = pipeline.evaluation_rows(ds, config)
    expected = ev.factorized_top_k_accuracy(
        backend.query_embeddings(ds.user_id[rows], ds.timestamp[rows]),
        backend.candidate_embeddings(ds.movie_title[rows]),
        backend.candidate_embeddings(ds.corpus_titles), config.eval.top_ks)
    assert retrieval["top_k_accuracy"] == {str(k): v for k, v in expected.items()}
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


def test_protocol_signatures_match_exactly():
    """Every member of twostage.backend.Backend exists with the same parameters."""
    for name, member in vars(Backend).items():
        if name.startswith("_") or not callable(member):
            continue
        ours = getattr(TfrsBackend, name)
        assert list(inspect.signature(ours).parameters) == list(
            inspect.signature(member).parameters), name
    assert list(inspect.signature(TfrsBackend.load).parameters) == ["directory", "config", "spec"]
    assert list(inspect.signature(TfrsBackend).parameters) == ["config", "spec"]


@pytest.mark.parametrize("option, value", [("kind", "ivf"), ("kind", "hnsw"),
                                           ("device", "cuda"), ("ranking_loss", "logits"),
                                           ("ranking_loss", "keras_eager")])
def test_unsupported_options_are_refused_at_construction(synthetic_dataset, small_config,
                                                         option, value):
    config = small_config.replace(**{option: value})
    message = rf"tfrs backend does not support {option}={value!r}"
    with pytest.raises(UnsupportedOptionError, match=message):
        TfrsBackend.check_config(config)  # what the CLI calls before loading any data
    with pytest.raises(UnsupportedOptionError, match=message):
        TfrsBackend(config, synthetic_dataset.spec)
    TfrsBackend.check_config(small_config)  # the defaults are supported


def test_train_steps_and_epochs_done(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config
    backend = TfrsBackend(config, ds.spec)
    assert backend.epochs_done == {"retrieval": 0, "ranking": 0}
    plan = BatchPlan(ds.split.train, config.train.batch_size, config.seed)
    batches = [ds.raw(rows) for rows in plan.first_steps(3)]
    before = backend.get_weights("ranking")
    losses = backend.train_steps("ranking", batches)
    assert len(losses) == 3 and all(np.isfinite(losses))
    after = backend.get_weights("ranking")
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert backend.epochs_done == {"retrieval": 0, "ranking": 0}  # raw steps are no epochs
    # the accumulators grew by the squared gradients: Adagrad state lives in backend.optimizers
    accumulators = backend.get_accumulators("ranking")
    assert accumulators.keys() == after.keys()
    assert all((a >= config.train.initial_accumulator_value - 1e-7).all()
               for a in accumulators.values())
    assert (accumulators["ranking_model/ratings/2/bias"]
            > config.train.initial_accumulator_value).all()
    backend.build_index(ds.corpus_titles)
    backend.train_steps("retrieval", batches[:1])
    with pytest.raises(RuntimeError, match="build_index"):  # the towers changed
        backend.retrieve(ds.user_id[:2], ds.timestamp[:2], 3)
    seen = []  # advanced after every epoch, before on_epoch (as torch's); a per-fit count fails
    backend.fit_ranking(ds, epochs=2,
                        on_epoch=lambda stage, epoch, h: seen.append(backend.epochs_done[stage]))
    backend.fit_retrieval(ds, epochs=1)
    assert backend.epochs_done == {"retrieval": 1, "ranking": 2} and seen == [1, 2]
    with pytest.raises(ValueError, match="stage"):
        backend.train_steps("both", batches)


def test_epoch_callback_is_passed_through(synthetic_dataset, small_config):
    backend = TfrsBackend(small_config, synthetic_dataset.spec)
    seen = []
    history = backend.fit_ranking(synthetic_dataset, epochs=2,
                                  on_epoch=lambda stage, epoch, h: seen.append((stage, epoch)))
    assert seen == [("ranking", 1), ("ranking", 2)] and len(history.loss_per_example) == 2


def test_empty_title_comes_from_the_config(synthetic_dataset, small_config):
    backend = TfrsBackend(small_config.replace(empty_title="nan"), synthetic_dataset.spec)
    pooling = backend.retrieval_model.candidate_model.embedding_model.title_text_embedding
    assert not isinstance(pooling.layers[-1], models.MaskedAveragePooling1D)
    assert np.isnan(backend.candidate_embeddings(np.array(["!!!"], object))).all()
