"""The recipes of issue 15 on the TFRS backend: cosine towers, the learned temperature, the mixed
negatives stream fit trains on (the shared ids), and the refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrs_impl import models, train
from tfrs_impl.backend import TfrsBackend
from tfrs_impl.features import feature_columns, to_tensors
from twostage.backend import UnsupportedOptionError
from twostage.recipes import NEGATIVE_PROBABILITY, NEGATIVE_TITLES, epoch_negatives

TEMPERATURE = "temperature/log_temperature"


def test_cosine_towers_give_unit_vectors_and_the_default_does_not(synthetic_dataset,
                                                                   small_config):
    ds = synthetic_dataset
    for normalize in (False, True):
        model = models.build_retrieval_model(ds.spec, small_config.replace(normalize=normalize))
        q, c = model.embeddings(to_tensors(ds.raw(ds.split.test[:64])))
        norms = np.concatenate([np.linalg.norm(q.numpy(), axis=1),
                                np.linalg.norm(c.numpy(), axis=1)])
        assert np.allclose(norms, 1.0, atol=1e-6) == normalize


def test_learned_temperature_is_a_weight_and_trains(synthetic_dataset, small_config):
    ds = synthetic_dataset
    assert TEMPERATURE not in models.get_weights(models.build_retrieval_model(ds.spec,
                                                                              small_config))
    config = small_config.replace(normalize=True, learn_temperature=True, temperature=0.5)
    model = models.build_retrieval_model(ds.spec, config, ds.corpus_titles)
    assert model.task._temperature is None  # the model scales the queries, not the task
    start = models.get_weights(model)[TEMPERATURE]
    assert start.shape == () and start == pytest.approx(math.log(0.5))
    train.fit_retrieval(model, ds, config, epochs=1)
    assert models.get_weights(model)[TEMPERATURE] != pytest.approx(math.log(0.5), abs=1e-6)


def test_learned_temperature_at_start_equals_the_fixed_one(synthetic_dataset, small_config):
    ds = synthetic_dataset
    batch = ds.raw(ds.split.train[:128])
    fixed = small_config.replace(normalize=True, temperature=0.05)
    losses = [train.batch_loss(models.build_retrieval_model(ds.spec, c), batch)
              for c in (fixed, fixed.replace(learn_temperature=True))]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_fit_is_fed_the_shared_negatives(synthetic_dataset, small_config):
    ds, config = synthetic_dataset, small_config.replace(mixed_negatives=16)
    stream = list(train.train_dataset(ds, config, 2, feature_columns(ds), first_epoch=1,
                                      negatives=16))
    steps = -(-len(ds.split.train) // config.train.batch_size)
    assert len(stream) == 2 * steps
    vocab = np.asarray(ds.spec.title_vocab, dtype=object)
    ids = np.concatenate([epoch_negatives(len(vocab), 16, config.seed, e, steps) for e in (1, 2)])
    for batch, step_ids in zip(stream, ids):
        assert [t.decode() for t in batch[NEGATIVE_TITLES].numpy()] == list(vocab[step_ids - 1])
        np.testing.assert_allclose(batch[NEGATIVE_PROBABILITY].numpy(), 1 / len(vocab))
    plain = next(iter(train.train_dataset(ds, config, 1, feature_columns(ds))))
    assert NEGATIVE_TITLES not in plain  # the ranking stage's stream has none


def test_mixed_negatives_train_in_both_batch_orders(synthetic_dataset, small_config):
    ds = synthetic_dataset
    for shared in (True, False):
        config = small_config.replace(mixed_negatives=16, use_sampling_probability=True,
                                      shared_batches=shared, validation_freq=100)
        model = models.build_retrieval_model(ds.spec, config, ds.corpus_titles)
        history = train.fit_retrieval(model, ds, config, epochs=2)
        assert np.isfinite(history.loss).all()


def test_recipes_that_cannot_run_are_refused(small_config):
    with pytest.raises(UnsupportedOptionError, match="mixed_negatives"):
        TfrsBackend.check_config(small_config.replace(mixed_negatives=8, nproc=2))
    for change in ({"recent_beta": 0.1}, {"cold_as_oov": True}):
        with pytest.raises(UnsupportedOptionError, match="RecentBackend"):
            TfrsBackend.check_config(small_config.replace(nproc=2, **change))
    with pytest.raises(UnsupportedOptionError, match="history"):
        TfrsBackend.check_config(small_config.replace(history=True, nproc=2))
    TfrsBackend.check_config(small_config.replace(mixed_negatives=8, normalize=True,
                                                  learn_temperature=True))


def test_l2_normalize_is_the_tf_op():
    x = tf.constant([[3.0, 4.0], [0.0, 0.0]])
    assert models.normalized(x, True).numpy().tolist() == [[0.6000000238418579,
                                                             0.800000011920929], [0.0, 0.0]]
    assert models.normalized(x, False) is x


def test_genre_part_is_the_mean_of_the_titles_genre_embeddings(synthetic_dataset, small_config):
    from twostage.recipes import RecipeData, attach_recipe_data
    ds, config = synthetic_dataset, small_config.replace(genres=True)
    model = models.build_retrieval_model(ds.spec, config)
    movie = model.candidate_model.embedding_model
    titles = tf.constant(ds.corpus_titles.astype(str))
    with pytest.raises(RuntimeError, match="genre table"):
        movie(titles)  # never silently without genres
    recipe = RecipeData.from_dataset(ds, config)
    attach_recipe_data(model, recipe)
    dim = config.model.embedding_dim
    out = movie(titles).numpy()[:, 2 * dim:]
    weight = models.get_weights(model)["candidate_model/embedding_model/genre_embedding/embeddings"]
    for i, row in enumerate(recipe.genres[ds.spec.title_index(ds.corpus_titles)]):
        ids = row[row > 0]
        want = weight[ids].mean(axis=0) if len(ids) else np.zeros(dim)
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-7)


def test_release_part_is_the_row_of_the_titles_release_bucket(synthetic_dataset, small_config):
    from twostage.recipes import RecipeData, attach_recipe_data
    ds, config = synthetic_dataset, small_config.replace(release_date=True)
    model = models.build_retrieval_model(ds.spec, config)
    movie, dim = model.candidate_model.embedding_model, config.model.embedding_dim
    titles = tf.constant(ds.corpus_titles.astype(str))
    with pytest.raises(RuntimeError, match="release table"):
        movie(titles)  # never silently without release dates
    with pytest.raises(ValueError, match=r"release table \(3,\) does not fit"):
        movie.attach_releases(np.zeros(3, np.int64))  # another spec's table
    table = np.arange(ds.spec.num_title_rows) % 7  # distinct rows per title, not the data's
    attach_recipe_data(model, RecipeData(releases=table))
    out = movie(titles).numpy()[:, 2 * dim:]
    weight = models.get_weights(model)["candidate_model/embedding_model/release_embedding/"
                                       "embeddings"]
    np.testing.assert_array_equal(out, weight[table[ds.spec.title_index(ds.corpus_titles)]])


def test_history_backend_trains_serves_and_refuses_without_histories(synthetic_dataset,
                                                                     small_config):
    from twostage.recipes import RecipeData
    ds = synthetic_dataset
    config = small_config.replace(history=True, genres=True, validation_freq=100)
    backend = TfrsBackend(config, ds.spec)
    with pytest.raises(RuntimeError, match="user histories"):
        backend.query_embeddings(ds.user_id[:3], ds.timestamp[:3])
    history = backend.fit_retrieval(ds, epochs=2)
    assert np.isfinite(history.loss).all()
    t = int(ds.timestamp.max()) + 10
    cold = backend.query_embeddings(np.array(["newcomer"]), np.array([t]))
    titles = ds.spec.title_index(ds.corpus_titles[:5])
    backend.attach_recipe_data(RecipeData(backend.recipe.genres, backend.recipe.history
                                          .with_ratings(["newcomer"] * 5, [t - 1] * 5, titles)))
    warm = backend.query_embeddings(np.array(["newcomer"]), np.array([t]))
    assert not np.allclose(cold, warm)
    backend.build_index(ds.corpus_titles)
    scores, rows = backend.retrieve(np.array(["newcomer", ds.user_id[0]]), np.array([t, t]), 10)
    # the index scores with the same query tower (histories included) as query_embeddings
    corpus = backend.candidate_embeddings(ds.corpus_titles)
    np.testing.assert_allclose(scores[0], np.sort(corpus @ warm[0])[::-1][:10], rtol=1e-5,
                               atol=1e-6)


def test_user_feature_lookups_are_the_shared_encoding(synthetic_dataset, small_config):
    """Each feature's Keras StringLookup (built from the fixed vocabulary) gives the ids of
    twostage.user_features.encode, OOV ("" and unseen values) 0, and the tower's part is that
    row of the feature's embedding."""
    from twostage.user_features import USER_FEATURES, encode
    ds, config = synthetic_dataset, small_config.replace(user_features=True)
    model = models.build_retrieval_model(ds.spec, config)
    user = model.query_model.embedding_model
    values = {f.key: np.array([*f.vocabulary, "", "unseen"], dtype=object)
              for f in USER_FEATURES}
    width = max(len(v) for v in values.values())
    values = {k: np.resize(v, width) for k, v in values.items()}
    want = encode(values)
    weights = models.get_weights(model)
    dim = config.model.embedding_dim
    out = user({"user_id": tf.constant(["x"] * width), "timestamp": tf.constant(
        [int(ds.timestamp[0])] * width, tf.int64),
        **{k: tf.constant(v.astype(str)) for k, v in values.items()}}).numpy()
    assert out.shape == (width, (2 + len(USER_FEATURES)) * dim + 1)
    for j, f in enumerate(USER_FEATURES):
        lookup = getattr(user, f.attribute).layers[0]
        assert lookup(tf.constant(values[f.key].astype(str))).numpy().tolist() == \
            want[f.key].tolist()
        table = weights[f"query_model/embedding_model/{f.attribute}/embeddings"]
        assert table.shape == (f.rows, dim)
        np.testing.assert_array_equal(out[:, (2 + j) * dim + 1: (3 + j) * dim + 1],
                                      table[want[f.key]])


def test_user_features_backend_trains_serves_and_refuses_without_its_table(synthetic_dataset,
                                                                          small_config):
    from twostage.recipes import RecipeData
    from twostage.user_features import UserTable
    ds = synthetic_dataset
    config = small_config.replace(user_features=True, validation_freq=100)
    backend = TfrsBackend(config, ds.spec)
    with pytest.raises(RuntimeError, match="user table"):
        backend.query_embeddings(ds.user_id[:3], ds.timestamp[:3])
    table = RecipeData.from_dataset(ds, config).users
    backend.attach_recipe_data(RecipeData(users=UserTable(
        {**table.users, "new-a": len(table.values), "new-b": len(table.values) + 1},
        np.concatenate([table.values, [["F", "18", "student", "0"],
                                       ["M", "56", "retired", "9"]]]).astype(object))))
    t = np.full(2, int(np.median(ds.timestamp)))
    q = backend.query_embeddings(np.array(["new-a", "new-b"]), t)
    assert not np.allclose(q[0], q[1])  # both OOV ids: told apart by their features
    history = backend.fit_retrieval(ds, epochs=2)
    assert np.isfinite(history.loss).all() and history.loss[-1] < history.loss[0]
    assert sorted(backend.recipe.users.users) == sorted(table.users)  # fit attached its own
    q = backend.query_embeddings(ds.user_id[:2], t)
    backend.build_index(ds.corpus_titles)
    scores, _ = backend.retrieve(ds.user_id[:2], t, 10)
    corpus = backend.candidate_embeddings(ds.corpus_titles)
    np.testing.assert_allclose(scores[1], np.sort(corpus @ q[1])[::-1][:10], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(UnsupportedOptionError, match="user_features"):
        TfrsBackend.check_config(config.replace(nproc=2))
