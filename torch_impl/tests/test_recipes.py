"""The recipes of issue 15 on the torch backend: cosine towers, the learned temperature, mixed
negatives (against a numpy restatement), and the refusals of what they cannot run with."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torch_impl.backend import TorchBackend
from torch_impl.features import encode_raw_batch, to_tensors
from torch_impl.models import build_retrieval_model, get_keras_weights, l2_normalize
from torch_impl.optim import get_accumulators, make_optimizer
from torch_impl.tasks import MIN_FLOAT, make_retrieval_task, retrieval_loss, sampled_hit_mask
from torch_impl.train import fit_retrieval, negative_sampler
from twostage.backend import UnsupportedOptionError
from twostage.recipes import (NEGATIVE_PROBABILITY, epoch_negatives, raw_negatives,
                              sample_negatives)

TEMPERATURE = "temperature/log_temperature"


def _batch(dataset, rows, **extra):
    return encode_raw_batch(dataset.spec, {**dataset.raw(rows), **extra})


# --- cosine ---------------------------------------------------------------------------------------
def test_l2_normalize_is_tf_formula():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]])
    out = l2_normalize(x)
    # tf.math.l2_normalize: x * rsqrt(max(sum x^2, 1e-12)): a zero row stays 0, a tiny row is
    # scaled by 1e6 (its squared norm 1e-14 is below the epsilon), not made a unit vector
    assert out.tolist()[0] == pytest.approx([0.6, 0.8])
    assert out.tolist()[1] == [0.0, 0.0]
    assert out[2, 0].item() == pytest.approx(0.1, rel=1e-5)


def test_cosine_towers_give_unit_vectors_and_the_default_does_not(synthetic_dataset,
                                                                   small_config):
    batch = _batch(synthetic_dataset, synthetic_dataset.split.test[:64])
    for normalize in (False, True):
        model = build_retrieval_model(synthetic_dataset.spec, small_config.replace(
            normalize=normalize))
        with torch.no_grad():
            norms = [m(batch).norm(dim=1) for m in (model.query_model, model.candidate_model)]
        unit = all(torch.allclose(n, torch.ones_like(n), atol=1e-6) for n in norms)
        assert unit == normalize


# --- learned temperature --------------------------------------------------------------------------
def test_learned_temperature_is_a_weight_started_at_the_temperature(synthetic_dataset,
                                                                    small_config):
    spec = synthetic_dataset.spec
    assert TEMPERATURE not in get_keras_weights(build_retrieval_model(spec, small_config))
    config = small_config.replace(learn_temperature=True, temperature=0.2)
    weights = get_keras_weights(build_retrieval_model(spec, config))
    assert weights[TEMPERATURE].shape == () and weights[TEMPERATURE] == pytest.approx(
        math.log(0.2))
    assert make_retrieval_task(config).temperature is None  # the model scales, not the task
    one = get_keras_weights(build_retrieval_model(spec, small_config.replace(
        learn_temperature=True)))
    assert one[TEMPERATURE] == 0.0  # started at 1 without --temperature


def test_learned_temperature_at_start_equals_the_fixed_one(synthetic_dataset, small_config):
    batch = _batch(synthetic_dataset, synthetic_dataset.split.train[:128])
    spec = synthetic_dataset.spec
    fixed = small_config.replace(normalize=True, temperature=0.05)
    learned = fixed.replace(learn_temperature=True)
    losses = []
    for config in (fixed, learned):
        model = build_retrieval_model(spec, config)
        with torch.no_grad():
            losses.append(float(retrieval_loss(model, make_retrieval_task(config), batch)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # (q / T) @ c vs (q @ c) / T
    untempered = small_config.replace(normalize=True)
    with torch.no_grad():
        plain = float(retrieval_loss(build_retrieval_model(spec, untempered),
                                     make_retrieval_task(untempered), batch))
    assert plain != pytest.approx(losses[0], rel=1e-3)  # so the temperature did act


def test_learned_temperature_trains_with_its_own_accumulator(synthetic_dataset, small_config):
    config = small_config.replace(normalize=True, learn_temperature=True, temperature=0.5)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    optimizer = make_optimizer(model, config)
    fit_retrieval(model, synthetic_dataset, config, optimizer=optimizer, epochs=1,
                  validate=False)
    after = get_keras_weights(model)[TEMPERATURE]
    assert after != pytest.approx(math.log(0.5), abs=1e-6)
    assert get_accumulators(optimizer, model)[TEMPERATURE] > config.train.initial_accumulator_value


# --- mixed negatives ------------------------------------------------------------------------------
def test_sampled_negatives_are_seeded_per_step_and_in_the_vocabulary():
    a = sample_negatives(50, 200, seed=1, epoch=2, step=3)
    assert a.dtype == np.int64 and a.min() >= 1 and a.max() <= 50
    assert np.array_equal(a, sample_negatives(50, 200, seed=1, epoch=2, step=3))
    assert not np.array_equal(a, sample_negatives(50, 200, seed=1, epoch=2, step=4))
    assert not np.array_equal(a, sample_negatives(50, 200, seed=2, epoch=2, step=3))
    assert np.array_equal(epoch_negatives(50, 200, 1, 2, 5)[3], a)


def test_fit_trains_on_the_shared_negative_stream(synthetic_dataset, small_config):
    config = small_config.replace(mixed_negatives=16)
    sampler = negative_sampler(synthetic_dataset, config, torch.device("cpu"))
    vocab = synthetic_dataset.spec.title_vocab
    extras = sampler(3, 4)
    ids = epoch_negatives(len(vocab), 16, config.seed, 3, 4)
    for extra, step_ids in zip(extras, ids):
        assert extra["negative_title_index"].tolist() == step_ids.tolist()
        tokens = synthetic_dataset.spec.title_tokens(np.asarray(vocab, dtype=object)[step_ids - 1])
        width = tokens.shape[1]
        assert extra["negative_title_tokens"][:, :width].tolist() == tokens.tolist()
        assert extra[NEGATIVE_PROBABILITY].tolist() == pytest.approx([1 / len(vocab)] * 16)
    assert negative_sampler(synthetic_dataset, small_config, torch.device("cpu")) is None


def test_sampled_hit_mask_hides_a_rows_own_positive_only():
    mask = sampled_hit_mask(torch.tensor([5, 7, 5]), torch.tensor([7, 9, 5]))
    assert mask.tolist() == [[True, True, True, True, True, False],
                             [True, True, True, False, True, True],
                             [True, True, True, True, True, False]]


def _numpy_mixed_loss(q, c, e, p_in, p_neg, pos_ids, neg_ids):
    """TFRS Retrieval on [c; e] restated in float64: scores, logQ, sampled-hit mask, CE."""
    s = q @ np.concatenate([c, e]).T
    s = s - np.log(np.clip(np.concatenate([p_in, p_neg]), 1e-6, 1.0))
    b = len(q)
    s[:, b:] = np.where(pos_ids[:, None] == neg_ids[None, :], MIN_FLOAT, s[:, b:])
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float((lse - s[np.arange(b), np.arange(b)]).sum())


@pytest.mark.parametrize("logq", [False, True])
def test_mixed_negatives_loss_is_tfrs_retrieval_over_the_extra_columns(synthetic_dataset,
                                                                       small_config, logq):
    from twostage.sampling import candidate_sampling_probability
    ds = synthetic_dataset
    config = small_config.replace(mixed_negatives=12, use_sampling_probability=logq)
    rows = ds.split.train[:64]
    ids = sample_negatives(len(ds.spec.title_vocab), 12, config.seed, 0, 0)
    ids[:2] = ds.features["title_index"][rows[:2]]  # two accidental hits with rows 0 and 1
    extra = raw_negatives(ds.spec.title_vocab, ids)
    if logq:
        extra["candidate_sampling_probability"] = candidate_sampling_probability(ds)[rows]
    batch = _batch(ds, rows, **extra)
    model = build_retrieval_model(ds.spec, config)
    with torch.no_grad():
        got = float(retrieval_loss(model, make_retrieval_task(config), batch, logq))
        q = model.query_model(batch).double().numpy()
        c = model.candidate_model(batch).double().numpy()
        e = model.candidate_model(to_tensors(ds.spec.encode_titles(extra["negative_titles"])))
    p_in = extra["candidate_sampling_probability"] if logq else np.ones(len(rows))
    want = _numpy_mixed_loss(q, c, e.double().numpy(), p_in, extra[NEGATIVE_PROBABILITY],
                             ds.features["title_index"][rows], ids)
    assert got == pytest.approx(want, rel=1e-5)


def test_mixed_negatives_train(synthetic_dataset, small_config):
    config = small_config.replace(mixed_negatives=32, use_sampling_probability=True)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    history = fit_retrieval(model, synthetic_dataset, config, epochs=3)
    assert np.isfinite(history.loss).all() and history.loss[-1] < history.loss[0]
    plain = fit_retrieval(build_retrieval_model(synthetic_dataset.spec, small_config),
                          synthetic_dataset, small_config, epochs=1, validate=False)
    assert history.loss[0] != pytest.approx(plain.loss[0])  # the extra columns are scored


def test_recipes_that_cannot_run_are_refused(small_config):
    with pytest.raises(UnsupportedOptionError, match="mixed_negatives"):
        TorchBackend.check_config(small_config.replace(mixed_negatives=8, nproc=2))
    for change in ({"recent_beta": 0.1}, {"cold_as_oov": True}):
        with pytest.raises(UnsupportedOptionError, match="RecentBackend"):
            TorchBackend.check_config(small_config.replace(nproc=2, **change))
    with pytest.raises(UnsupportedOptionError, match="learn_temperature"):
        TorchBackend.check_config(small_config.replace(learn_temperature=True, nproc=2,
                                                       cross_process_negatives="global"))
    for name in ("genres", "history"):
        with pytest.raises(UnsupportedOptionError, match=name):
            TorchBackend.check_config(small_config.replace(nproc=2, **{name: True}))
    TorchBackend.check_config(small_config.replace(learn_temperature=True, nproc=2))  # replica
    TorchBackend.check_config(small_config.replace(mixed_negatives=8, normalize=True,
                                                   learn_temperature=True))


# --- genres ---------------------------------------------------------------------------------------
def test_genre_table_holds_each_titles_genres(synthetic_dataset):
    from twostage.data.registry import TFDS_GENRES
    from twostage.recipes import NUM_GENRES, genre_table
    ds = synthetic_dataset
    movies = ds.movielens.movies
    table = genre_table(movies["movie_title"], movies["movie_genres"], ds.spec)
    assert table.shape == (ds.spec.num_title_rows, NUM_GENRES) and not table[0].any()
    for title, names in zip(movies["movie_title"][:20], movies["movie_genres"][:20]):
        row = table[ds.spec.title_index([title])[0]]
        got = {TFDS_GENRES[i - 1] for i in row if i}
        assert set(names) <= got  # duplicates of a title add their genres (a union)
    with pytest.raises(ValueError, match="unknown genre 'Space-Opera'"):
        genre_table(["x"], [("Space-Opera",)], ds.spec)


def test_genre_part_is_the_mean_of_the_titles_genre_embeddings(synthetic_dataset, small_config):
    from twostage.recipes import RecipeData, attach_recipe_data
    ds, config = synthetic_dataset, small_config.replace(genres=True)
    model = build_retrieval_model(ds.spec, config)
    movie = model.candidate_model.embedding_model
    assert movie.out_features == 3 * config.model.embedding_dim
    inputs = to_tensors(ds.spec.encode_titles(ds.corpus_titles))
    with pytest.raises(RuntimeError, match="genre table"):
        movie(inputs)  # never silently without genres
    recipe = RecipeData.from_dataset(ds, config)
    attach_recipe_data(model, recipe)
    with torch.no_grad():
        out = movie(inputs)[:, 2 * config.model.embedding_dim:].numpy()
    weight = movie.genre_embedding.weight.detach().numpy()
    for i, row in enumerate(recipe.genres[inputs["title_index"].numpy()]):
        ids = row[row > 0]
        want = weight[ids].mean(axis=0) if len(ids) else np.zeros(weight.shape[1])
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-7)


# --- release dates --------------------------------------------------------------------------------
def test_release_part_is_the_row_of_the_titles_release_bucket(synthetic_dataset, small_config):
    from twostage.recipes import RecipeData, attach_recipe_data
    ds = synthetic_dataset
    config = small_config.replace(release_date=True, genres=True)
    model = build_retrieval_model(ds.spec, config)
    movie, dim = model.candidate_model.embedding_model, config.model.embedding_dim
    assert movie.out_features == 4 * dim
    inputs = to_tensors(ds.spec.encode_titles(ds.corpus_titles))
    recipe = RecipeData.from_dataset(ds, config)
    movie.attach_genres(recipe.genres)
    with pytest.raises(RuntimeError, match="release table"):
        movie(inputs)  # never silently without release dates
    with pytest.raises(ValueError, match="release table"):
        attach_recipe_data(model, RecipeData(genres=recipe.genres))  # asked, none given
    with pytest.raises(ValueError, match=r"release table \(3,\) does not fit"):
        movie.attach_releases(np.zeros(3, np.int64))  # another spec's table
    table = np.arange(ds.spec.num_title_rows) % 7  # distinct rows per title, not the data's
    attach_recipe_data(model, RecipeData(genres=recipe.genres, releases=table))
    with torch.no_grad():
        out = movie(inputs)[:, 3 * dim:].numpy()
    weight = movie.release_embedding.weight.detach().numpy()
    np.testing.assert_array_equal(out, weight[table[inputs["title_index"].numpy()]])


# --- user history ---------------------------------------------------------------------------------
def test_history_is_strictly_before_the_query_and_capped():
    from twostage.recipes import HistoryIndex
    index = HistoryIndex.from_ratings(["a"] * 5 + ["b"], [10, 20, 20, 30, 40, 5],
                                      [1, 2, 3, 4, 5, 9])
    got = index.lookup(["a", "a", "a", "a", "b", "c"], [20, 21, 40, 41, 5, 100], length=3)
    assert got.tolist() == [[0, 0, 1],   # strictly before 20: the ratings at 20 are excluded
                            [1, 2, 3],   # oldest first, right-aligned
                            [2, 3, 4],   # capped at the 3 most recent before 40
                            [3, 4, 5],
                            [0, 0, 0],   # b's only rating is at the query's second
                            [0, 0, 0]]   # unknown user
    more = index.with_ratings(["c", "c"], [50, 60], [7, 8])
    assert more.lookup(["c", "a"], [61, 41], length=3).tolist() == [[0, 7, 8], [3, 4, 5]]


def test_no_future_rating_leaks_into_a_dataset_history(synthetic_dataset, small_config):
    """Every title of every row's history was rated by that user in TRAINING strictly before
    the row's timestamp (so a test rating, or a rating at or after the query, never is)."""
    from twostage.recipes import RecipeData, history_column
    ds, config = synthetic_dataset, small_config.replace(history=True)
    history = history_column(RecipeData.from_dataset(ds, config), ds, config)
    train = ds.split.train
    rated: dict = {}
    for u, t, title in zip(ds.user_id[train], ds.timestamp[train],
                           ds.features["title_index"][train]):
        rated.setdefault(u, []).append((int(t), int(title)))
    checked = 0
    for row in range(len(ds.user_id)):
        before = sorted(p for p in rated.get(ds.user_id[row], []) if p[0] < ds.timestamp[row])
        titles = [title for _, title in before]
        got = [int(x) for x in history[row] if x]
        assert sorted(got) == sorted(titles[len(titles) - len(got):]) and len(got) == min(
            len(titles), history.shape[1]), row
        checked += len(got) > 0
    assert checked > len(ds.user_id) // 2  # most rows have a history to check


def _history_backend(ds, config):
    from twostage.recipes import RecipeData
    backend = TorchBackend(config, ds.spec)
    recipe = RecipeData.from_dataset(ds, config)
    backend.attach_recipe_data(recipe)
    return backend, recipe


def test_a_later_rating_never_changes_a_query_embedding(synthetic_dataset, small_config):
    """A test that fails if the future leaks: ratings at or after the query's second do not
    move its embedding; one a second before does."""
    from twostage.recipes import RecipeData
    ds, config = synthetic_dataset, small_config.replace(history=True)
    backend, recipe = _history_backend(ds, config)
    user, t = ds.user_id[ds.split.test[0]], int(ds.timestamp[ds.split.test[0]])
    title = ds.features["title_index"][ds.split.train[0]]
    before = backend.query_embeddings(np.array([user]), np.array([t]))
    for when, moves in ((t, False), (t + 1000, False), (t - 1, True)):
        later = RecipeData(recipe.genres, recipe.history.with_ratings([user] * 3, [when] * 3,
                                                                      [title] * 3))
        backend.attach_recipe_data(later)
        after = backend.query_embeddings(np.array([user]), np.array([t]))
        assert (not np.array_equal(before, after)) == moves, when


def test_an_unseen_user_is_served_from_their_history(synthetic_dataset, small_config):
    from twostage.recipes import RecipeData
    ds, config = synthetic_dataset, small_config.replace(history=True)
    backend, recipe = _history_backend(ds, config)
    backend.fit_retrieval(ds, epochs=1)
    assert "newcomer" not in set(ds.spec.user_vocab)
    t = int(ds.timestamp.max()) + 10
    cold = backend.query_embeddings(np.array(["newcomer"]), np.array([t]))
    titles = ds.spec.title_index(ds.corpus_titles[:5])
    backend.attach_recipe_data(RecipeData(None, backend.recipe.history.with_ratings(
        ["newcomer"] * 5, [t - 100] * 5, titles)))
    assert sorted(backend.recipe.histories(["newcomer"], [t])[0][-5:]) == sorted(titles)
    warm = backend.query_embeddings(np.array(["newcomer"]), np.array([t]))
    assert not np.allclose(cold, warm)  # the OOV user embedding alone, then with a history
    backend.build_index(ds.corpus_titles)
    scores, rows = backend.retrieve(np.array(["newcomer"]), np.array([t]), 10)
    assert rows.shape == (1, 10)


def test_history_model_needs_its_histories(synthetic_dataset, small_config):
    backend = TorchBackend(small_config.replace(history=True), synthetic_dataset.spec)
    with pytest.raises(RuntimeError, match="user histories"):
        backend.query_embeddings(synthetic_dataset.user_id[:3], synthetic_dataset.timestamp[:3])


@pytest.mark.parametrize("recipe", [{"genres": True}, {"history": True},
                                    {"genres": True, "history": True, "mixed_negatives": 16}])
def test_recipes_train_and_evaluate(synthetic_dataset, small_config, recipe):
    from twostage.pipeline import evaluate
    config = small_config.replace(**recipe)
    backend = TorchBackend(config, synthetic_dataset.spec)
    history = backend.fit_retrieval(synthetic_dataset, epochs=3)
    assert history.loss[-1] < history.loss[0]
    backend.fit_ranking(synthetic_dataset, epochs=1)
    report = evaluate(backend, synthetic_dataset, config)
    assert 0 < report["retrieval"]["top_k_accuracy"]["100"] <= 1


def test_recipe_data_round_trips_through_plain_arrays(synthetic_dataset, small_config, tmp_path):
    from twostage.recipes import RecipeData
    ds = synthetic_dataset
    recipe = RecipeData.from_dataset(ds, small_config.replace(genres=True, history=True))
    path = tmp_path / "recipe.npz"
    np.savez(path, **recipe.to_arrays())
    with np.load(path) as stored:
        back = RecipeData.from_arrays(dict(stored))
    assert np.array_equal(back.genres, recipe.genres)
    rows = np.arange(len(ds.user_id))
    assert np.array_equal(back.histories(ds.user_id[rows], ds.timestamp[rows]),
                          recipe.histories(ds.user_id[rows], ds.timestamp[rows]))
    broken = dict(recipe.to_arrays(), history_keys=recipe.history.keys[::-1])
    with pytest.raises(ValueError, match="inconsistent"):
        RecipeData.from_arrays(broken)


# --- user side features ---------------------------------------------------------------------------
def _user_features_backend(ds, config):
    from twostage.recipes import RecipeData
    backend = TorchBackend(config, ds.spec)
    backend.attach_recipe_data(RecipeData.from_dataset(ds, config))
    return backend


def test_user_feature_parts_are_their_embedding_rows(synthetic_dataset, small_config):
    """After the seed's parts (user, timestamp bucket, normalized timestamp), one embedding row
    per feature, in USER_FEATURES order, of its StringLookup id."""
    from twostage.recipes import RecipeData, query_extras
    from twostage.user_features import USER_FEATURES, encode
    ds, config = synthetic_dataset, small_config.replace(user_features=True)
    d = config.model.embedding_dim
    model = build_retrieval_model(ds.spec, config)
    user = model.query_model.embedding_model
    assert user.out_features == (2 + len(USER_FEATURES)) * d + 1
    rows = ds.split.test[:64]
    values = query_extras(RecipeData.from_dataset(ds, config), config, ds.user_id[rows],
                          ds.timestamp[rows])
    inputs = to_tensors({**ds.spec.encode_queries(ds.user_id[rows], ds.timestamp[rows]),
                         **encode(values)})
    with torch.no_grad():
        out = user(inputs).numpy()
    ids = encode(values)
    for j, feature in enumerate(USER_FEATURES):
        weight = getattr(user, feature.attribute).weight.detach().numpy()
        assert weight.shape == (feature.rows, d)
        np.testing.assert_array_equal(out[:, (2 + j) * d + 1: (3 + j) * d + 1],
                                      weight[ids[feature.key]])
    with pytest.raises(KeyError, match="user_gender"):
        user(to_tensors(ds.spec.encode_queries(ds.user_id[rows], ds.timestamp[rows])))


def test_a_cold_user_is_served_from_their_features(synthetic_dataset, small_config):
    """Two ids no vocabulary holds share the OOV user row; with other demographics their query
    embeddings differ, with the same ones they are equal; an id the user table lacks gets the
    OOV row of every feature."""
    from twostage.recipes import RecipeData
    from twostage.user_features import UserTable
    ds, config = synthetic_dataset, small_config.replace(user_features=True)
    backend = _user_features_backend(ds, config)  # untrained: no ReLU is dead yet
    table = backend.recipe.users
    values = np.concatenate([table.values, [["F", "18", "student", "0"],
                                            ["M", "56", "retired", "9"],
                                            ["F", "18", "student", "0"]]]).astype(object)
    users = {**table.users, "new-a": len(table.values), "new-b": len(table.values) + 1,
             "new-c": len(table.values) + 2}
    backend.attach_recipe_data(RecipeData(users=UserTable(users, values)))
    t = np.full(4, int(np.median(ds.timestamp)))
    q = backend.query_embeddings(np.array(["new-a", "new-b", "new-c", "unknown"]), t)
    assert not np.allclose(q[0], q[1]) and np.array_equal(q[0], q[2])
    assert not np.allclose(q[0], q[3])
    backend.build_index(ds.corpus_titles)
    _, rows = backend.retrieve(np.array(["new-a", "new-b"]), t[:2], 10)
    assert rows.shape == (2, 10)


def test_user_features_model_needs_its_table(synthetic_dataset, small_config):
    backend = TorchBackend(small_config.replace(user_features=True), synthetic_dataset.spec)
    with pytest.raises(RuntimeError, match="user table"):
        backend.query_embeddings(synthetic_dataset.user_id[:3], synthetic_dataset.timestamp[:3])


def test_user_features_train_evaluate_and_survive_a_checkpoint(synthetic_dataset, small_config,
                                                               tmp_path):
    from twostage.pipeline import evaluate
    ds, config = synthetic_dataset, small_config.replace(user_features=True, history=True)
    backend = TorchBackend(config, ds.spec)
    history = backend.fit_retrieval(ds, epochs=3)
    assert history.loss[-1] < history.loss[0]
    trained = get_keras_weights(backend.retrieval_model)
    assert not np.allclose(trained["query_model/embedding_model/occupation_embedding/embeddings"],
                           get_keras_weights(build_retrieval_model(ds.spec, config))[
                               "query_model/embedding_model/occupation_embedding/embeddings"])
    backend.fit_ranking(ds, epochs=1)
    report = evaluate(backend, ds, config)
    assert 0 < report["retrieval"]["top_k_accuracy"]["100"] <= 1
    backend.save(tmp_path / "ckpt")
    loaded = TorchBackend.load(tmp_path / "ckpt")
    rows = ds.split.test[:32]
    np.testing.assert_array_equal(loaded.query_embeddings(ds.user_id[rows], ds.timestamp[rows]),
                                  backend.query_embeddings(ds.user_id[rows], ds.timestamp[rows]))


def test_user_features_are_refused_across_processes(small_config):
    with pytest.raises(UnsupportedOptionError, match="user_features"):
        TorchBackend.check_config(small_config.replace(user_features=True, nproc=2))


@pytest.mark.parametrize("changes", [{}, {"genres": True, "history": True},
                                     {"release_date": True, "user_features": True},
                                     {"release_date": True, "genres": True,
                                      "learn_temperature": True}])
def test_parameter_count_is_what_the_models_hold(synthetic_dataset, small_config, changes):
    """``checkpoint.parameter_count`` (the bound a checkpoint's values are read against)
    counts every trainable weight of both stages' models, the recipe tables included."""
    from torch_impl.models import build_ranking_model
    from twostage.checkpoint import parameter_count
    config = small_config.replace(**changes)
    spec = synthetic_dataset.spec
    held = sum(p.numel() for model in (build_retrieval_model(spec, config),
                                       build_ranking_model(spec, config))
               for p in model.parameters() if p.requires_grad)
    assert parameter_count(config, spec) == held
