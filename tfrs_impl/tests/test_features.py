"""The Keras preprocessing layers built from the FeatureSpec reproduce its numpy mappings, and the
seed's adapt-based layers agree with the spec (Normalization within float32 accumulation noise)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrs_impl import features

# Normalization.adapt accumulates mean/variance batch by batch in float32 (tf_keras
# normalization.py update_state); the spec holds the exact float64 moments. Measured on ml-100k:
# mean off by 44.5 s (rel 5e-8), variance rel 9e-6, normalized values off by <= 1.9e-5.
ADAPT_MEAN_RTOL = 1e-6       # float32 has 24 bits: rel 6e-8 per op, a few ulps after averaging
ADAPT_VARIANCE_RTOL = 1e-4   # variance: squares of ~1e6-second deviations summed in float32
ADAPT_NORMALIZED_ATOL = 1e-4  # in standard deviations: mean error / std + |z| * var error / 2
SPEC_NORMALIZED_ATOL = 1e-6   # spec-built layer vs spec numpy: same float32 ops


def _probe_timestamps(spec, timestamps: np.ndarray) -> np.ndarray:
    """Data timestamps plus every boundary (rounded both ways) and values outside the range."""
    bounds = np.asarray(spec.ts_boundaries)
    extra = np.concatenate([np.floor(bounds), np.ceil(bounds), np.floor(bounds) - 1,
                            [bounds[0] - 10_000, bounds[-1] + 10_000]]).astype(np.int64)
    return np.concatenate([timestamps, extra])


def _probe_titles(titles: np.ndarray) -> np.ndarray:
    return np.concatenate([titles, ["Zebra Unknown Words (2001)", "!!!", "", "THE  the"]])


def _check_spec_layers(ds) -> None:
    spec = ds.spec
    users = np.concatenate([ds.user_id, ["no-such-user"]])
    ts = _probe_timestamps(spec, ds.timestamp)
    titles = _probe_titles(ds.corpus_titles)
    np.testing.assert_array_equal(
        features.user_lookup(spec)(tf.constant(users.astype(str))).numpy(), spec.user_index(users))
    np.testing.assert_array_equal(
        features.timestamp_discretization(spec)(tf.constant(ts)).numpy(),
        spec.timestamp_bucket(ts))
    np.testing.assert_allclose(
        features.timestamp_normalization(spec)(tf.constant(ts)).numpy(),
        spec.timestamp_normalized(ts), rtol=0, atol=SPEC_NORMALIZED_ATOL)
    np.testing.assert_array_equal(
        features.title_lookup(spec)(tf.constant(titles.astype(str))).numpy(),
        spec.title_index(titles))
    np.testing.assert_array_equal(
        features.title_vectorizer(spec)(tf.constant(titles.astype(str))).numpy(),
        spec.title_tokens(titles))


def _check_seed_way(ds) -> dict:
    """Seed-adapted layers == spec; returns the Normalization deviations measured."""
    spec = ds.spec
    seed = features.adapt_seed_way(ds.user_id, ds.timestamp, ds.corpus_titles,
                                   num_buckets=len(spec.ts_boundaries), max_tokens=spec.max_tokens)
    assert [v.decode() if isinstance(v, bytes) else v
            for v in seed["title_vectorizer"].get_vocabulary()] == spec.keras_token_vocabulary
    assert seed["timestamp_discretization"].bin_boundaries == list(spec.ts_boundaries)
    users = np.concatenate([ds.user_id, ["no-such-user"]])
    titles = _probe_titles(ds.corpus_titles)
    ts = _probe_timestamps(spec, ds.timestamp)
    for name, inputs in (("user_lookup", users), ("title_lookup", titles),
                         ("title_vectorizer", titles), ("timestamp_discretization", ts)):
        tensor = tf.constant(inputs) if inputs.dtype != object else tf.constant(inputs.astype(str))
        np.testing.assert_array_equal(seed[name](tensor).numpy(),
                                      getattr(features, name)(spec)(tensor).numpy(), err_msg=name)
    norm = seed["timestamp_normalization"]
    mean, var = norm.mean.numpy().item(), norm.variance.numpy().item()
    assert mean == pytest.approx(spec.ts_mean, rel=ADAPT_MEAN_RTOL)
    assert var == pytest.approx(spec.ts_variance, rel=ADAPT_VARIANCE_RTOL)
    deviation = np.abs(norm(tf.constant(ds.timestamp)).numpy()
                       - spec.timestamp_normalized(ds.timestamp)).max()
    assert deviation <= ADAPT_NORMALIZED_ATOL
    return {"mean": mean - spec.ts_mean, "variance_rel": var / spec.ts_variance - 1,
            "normalized_max_abs": float(deviation)}


def test_spec_layers_match_spec_synthetic(synthetic_dataset):
    _check_spec_layers(synthetic_dataset)


def test_seed_adapted_layers_match_spec_synthetic(synthetic_dataset):
    _check_seed_way(synthetic_dataset)


@pytest.mark.real_data
def test_spec_layers_match_spec_real(real_dataset):
    _check_spec_layers(real_dataset)


@pytest.mark.real_data
def test_seed_adapted_layers_match_spec_real(real_dataset):
    measured = _check_seed_way(real_dataset)
    print("Normalization.adapt vs exact moments:", measured)


def test_normalization_output_is_rank_preserving(synthetic_dataset):
    """axis=None keeps [B] -> [B]; the models reshape to [B, 1] for the concat."""
    out = features.timestamp_normalization(synthetic_dataset.spec)(
        tf.constant(synthetic_dataset.timestamp[:7]))
    assert out.shape == (7,) and out.dtype == tf.float32


def test_to_tensors_dtypes():
    batch = {"user_id": np.array(["7", b"8"], object),
             "movie_title": np.array(["Été (1999)", "x"]),
             "timestamp": np.array([1, 2], np.int32), "label": np.array([1, 0]),
             "candidate_sampling_probability": np.array([0.5, 0.25], np.float64)}
    out = features.to_tensors(batch)
    assert [s.decode() for s in out["user_id"].numpy()] == ["7", "8"]
    assert out["movie_title"].numpy()[0].decode() == "Été (1999)"
    assert out["timestamp"].dtype == tf.int64 and out["label"].dtype == tf.float32
    assert out["candidate_sampling_probability"].dtype == tf.float32
    empty = features.to_tensors({"user_id": np.array([], object)})["user_id"]
    assert empty.shape == (0,) and empty.dtype == tf.string


def test_feature_columns_and_select_rows(synthetic_dataset):
    from twostage.sampling import SAMPLING_PROBABILITY, candidate_sampling_probability
    ds = synthetic_dataset
    columns = features.feature_columns(ds)
    assert set(columns) == {"user_id", "timestamp", "movie_title", "label"}
    columns = features.feature_columns(ds, with_sampling_probability=True)
    rows = np.array([5, 0, 17])
    got = features.select_rows(columns, tf.constant(rows))
    raw = ds.raw(rows)
    assert [t.decode() for t in got["movie_title"].numpy()] == list(raw["movie_title"])
    assert [u.decode() for u in got["user_id"].numpy()] == list(raw["user_id"])
    # strings are kept once per distinct value, as int32 codes per rating
    coded = columns["movie_title"]
    assert isinstance(coded, features.CodedStrings) and coded.codes.dtype == tf.int32
    assert coded.codes.shape == (len(ds.movie_title),)
    assert coded.values.shape == (len(set(ds.movie_title)),)
    every = features.select_rows(columns, tf.range(len(ds.movie_title), dtype=tf.int64))
    assert [t.decode() for t in every["movie_title"].numpy()] == list(ds.movie_title)
    np.testing.assert_array_equal(got["timestamp"].numpy(), raw["timestamp"])
    np.testing.assert_array_equal(got["label"].numpy(), ds.label[rows])
    np.testing.assert_array_equal(got[SAMPLING_PROBABILITY].numpy(),
                                  candidate_sampling_probability(ds)[rows])
