"""The seed's models: names, shapes, init, determinism, and the TFRS task losses against a numpy
restatement of tensorflow_recommenders/tasks/retrieval.py."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfrs_impl import models
from tfrs_impl.features import to_tensors
from tfrs_impl.train import batch_loss, loss_and_gradients
from twostage.sampling import candidate_sampling_probability

MIN_FLOAT = np.finfo(np.float32).min / 100.0

RETRIEVAL_NAMES = {
    "query_model/embedding_model/user_embedding/embeddings": ("users", 32),
    "query_model/embedding_model/timestamp_embedding/embeddings": ("buckets", 32),
    "query_model/dense_layers/0/kernel": (65, 64), "query_model/dense_layers/0/bias": (64,),
    "query_model/dense_layers/1/kernel": (64, 32), "query_model/dense_layers/1/bias": (32,),
    "candidate_model/embedding_model/title_embedding/embeddings": ("titles", 32),
    "candidate_model/embedding_model/title_text_embedding/embeddings": ("tokens", 32),
    "candidate_model/dense_layers/0/kernel": (64, 64), "candidate_model/dense_layers/0/bias": (64,),
    "candidate_model/dense_layers/1/kernel": (64, 32), "candidate_model/dense_layers/1/bias": (32,),
}
RANKING_NAMES = {
    "ranking_model/user_embeddings/user_embedding/embeddings": ("users", 32),
    "ranking_model/user_embeddings/timestamp_embedding/embeddings": ("buckets", 32),
    "ranking_model/movie_embeddings/title_embedding/embeddings": ("titles", 32),
    "ranking_model/movie_embeddings/title_text_embedding/embeddings": ("tokens", 32),
    "ranking_model/ratings/0/kernel": (129, 256), "ranking_model/ratings/0/bias": (256,),
    "ranking_model/ratings/1/kernel": (256, 64), "ranking_model/ratings/1/bias": (64,),
    "ranking_model/ratings/2/kernel": (64, 1), "ranking_model/ratings/2/bias": (1,),
}


def _shapes(spec, names):
    rows = {"users": spec.num_user_rows, "buckets": spec.num_bucket_rows,
            "titles": spec.num_title_rows, "tokens": spec.max_tokens}
    return {k: tuple(rows.get(d, d) for d in v) for k, v in names.items()}


@pytest.fixture(scope="module")
def retrieval(synthetic_dataset, small_config):
    return models.build_retrieval_model(synthetic_dataset.spec, small_config)


@pytest.fixture(scope="module")
def ranking(synthetic_dataset, small_config):
    return models.build_ranking_model(synthetic_dataset.spec, small_config)


def test_weight_names_shapes_and_keras_init(retrieval, ranking, synthetic_dataset):
    spec = synthetic_dataset.spec
    for model, names in ((retrieval, RETRIEVAL_NAMES), (ranking, RANKING_NAMES)):
        weights = models.get_weights(model)
        assert {k: v.shape for k, v in weights.items()} == _shapes(spec, names)
        # Every trainable variable is named exactly once.
        assert len(weights) == len(model.trainable_variables)
        for name, value in weights.items():
            if name.endswith("embeddings"):
                assert np.abs(value).max() <= 0.05       # RandomUniform(-0.05, 0.05)
            elif name.endswith("bias"):
                assert not value.any()                    # zeros
            else:
                fan_in, fan_out = value.shape             # glorot_uniform
                assert np.abs(value).max() <= np.sqrt(6 / (fan_in + fan_out))


def test_output_dimensions(retrieval, ranking, synthetic_dataset):
    batch = to_tensors(synthetic_dataset.raw(np.arange(5)))
    assert retrieval.query_model.embedding_model(batch).shape == (5, 65)
    assert retrieval.candidate_model.embedding_model(batch["movie_title"]).shape == (5, 64)
    query, candidate = retrieval.embeddings(batch)
    assert query.shape == candidate.shape == (5, 32)
    probs = ranking.ranking_model(batch).numpy()
    assert probs.shape == (5, 1) and ((probs > 0) & (probs < 1)).all()


def test_init_is_seeded_and_weights_round_trip(synthetic_dataset, small_config, retrieval):
    spec = synthetic_dataset.spec
    again = models.build_retrieval_model(spec, small_config)
    other = models.build_retrieval_model(spec, small_config.replace(seed=7))
    a, b, c = (models.get_weights(m) for m in (retrieval, again, other))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["query_model/dense_layers/0/kernel"],
                              c["query_model/dense_layers/0/kernel"])
    models.set_weights(other, a)
    assert all(np.array_equal(a[k], v) for k, v in models.get_weights(other).items())
    with pytest.raises(KeyError, match="missing"):
        models.set_weights(other, {k: v for k, v in a.items() if "bias" not in k})
    bad = dict(a)
    bad["query_model/dense_layers/0/bias"] = np.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        models.set_weights(other, bad)


def test_empty_title_modes(synthetic_dataset, small_config, retrieval):
    """'!!!' has no token: Keras' masked mean is 0/0 = NaN; the default mode gives zeros."""
    nan_model = models.build_retrieval_model(synthetic_dataset.spec,
                                             small_config.replace(empty_title="nan"))
    titles = tf.constant(["!!!", str(synthetic_dataset.corpus_titles[0])])
    zero_text = retrieval.candidate_model.embedding_model.title_text_embedding(titles).numpy()
    nan_text = nan_model.candidate_model.embedding_model.title_text_embedding(titles).numpy()
    assert not zero_text[0].any() and np.isnan(nan_text[0]).all()
    np.testing.assert_array_equal(zero_text[1], nan_text[1])  # same init seed, same pooling
    with pytest.raises(ValueError, match="empty_title"):
        models.build_ranking_model(synthetic_dataset.spec, small_config.replace(empty_title="skip"))
    with pytest.raises(ValueError, match="empty_title"):
        models.text_pooling("skip")


def _reference_retrieval_loss(q, c, config, titles, probability=None) -> float:
    """numpy float64 restatement of tfrs.tasks.Retrieval.call + CategoricalCrossentropy(SUM)."""
    scores = q.astype(np.float64) @ c.astype(np.float64).T
    n = len(scores)
    labels = np.eye(n)
    if config.task.temperature is not None:
        scores = scores / config.task.temperature
    if probability is not None:
        scores = scores - np.log(np.clip(probability, 1e-6, 1.0))[None, :]
    if config.task.remove_accidental_hits:
        duplicate = (titles[:, None] == titles[None, :]).astype(np.float64) - labels
        scores = scores + duplicate * MIN_FLOAT
    if config.task.num_hard_negatives is not None:
        k = min(config.task.num_hard_negatives + 1, n)
        keep = np.argsort(-(scores + labels * 1e30), axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, keep, 1)
        labels = np.take_along_axis(labels, keep, 1)
    m = scores.max(axis=1, keepdims=True)
    log_softmax = scores - m - np.log(np.exp(scores - m).sum(axis=1, keepdims=True))
    return float(-(labels * log_softmax).sum())


@pytest.mark.parametrize("options", [
    {}, {"temperature": 0.5}, {"use_sampling_probability": True},
    {"remove_accidental_hits": True}, {"num_hard_negatives": 3},
    {"temperature": 0.2, "use_sampling_probability": True, "remove_accidental_hits": True,
     "num_hard_negatives": 5},
], ids=["default", "temperature", "logq", "accidental_hits", "hard_negatives", "all"])
def test_retrieval_loss_matches_tfrs_restated(synthetic_dataset, small_config, retrieval, options):
    config = small_config.replace(**options)
    model = models.build_retrieval_model(synthetic_dataset.spec, config)
    models.set_weights(model, models.get_weights(retrieval))
    rows = synthetic_dataset.split.train[:96]
    batch = synthetic_dataset.raw(rows)
    probability = None
    if config.task.use_sampling_probability:
        probability = candidate_sampling_probability(synthetic_dataset)[rows]
        batch["candidate_sampling_probability"] = probability
    titles = batch["movie_title"]
    assert len(set(titles)) < len(titles)  # the batch has accidental hits to remove
    q, c = (t.numpy() for t in model.embeddings(to_tensors(batch)))
    expected = _reference_retrieval_loss(q, c, config, titles, probability)
    assert batch_loss(model, batch) == pytest.approx(expected, rel=1e-5)


def test_missing_sampling_probability_is_a_clear_error(synthetic_dataset, small_config):
    config = small_config.replace(use_sampling_probability=True)
    model = models.build_retrieval_model(synthetic_dataset.spec, config)
    with pytest.raises(KeyError, match="candidate_sampling_probability"):
        batch_loss(model, synthetic_dataset.raw(np.arange(8)))


def test_gradients_by_name(synthetic_dataset, retrieval):
    batch = synthetic_dataset.raw(synthetic_dataset.split.train[:64])
    loss, grads = loss_and_gradients(retrieval, batch)
    assert loss == pytest.approx(batch_loss(retrieval, batch), rel=1e-6)
    assert set(grads) == set(RETRIEVAL_NAMES)
    # A bias on the candidate tower's output adds q.b to a whole score row: softmax ignores it.
    assert np.abs(grads["candidate_model/dense_layers/1/bias"]).max() < 1e-3
    users = synthetic_dataset.spec.user_index(batch["user_id"])
    untouched = np.setdiff1d(np.arange(synthetic_dataset.spec.num_user_rows), users)
    user_grad = grads["query_model/embedding_model/user_embedding/embeddings"]
    assert not user_grad[untouched].any() and user_grad[users].any()


def test_ranking_loss_is_the_clipped_probability_bce(synthetic_dataset, ranking, small_config):
    """Keras squeezes [B, 1] predictions to the [B] labels, so the loss sees a Squeeze op, not
    the Sigmoid, and clips p to [1e-7, 1 - 1e-7] instead of using the logits."""
    model = models.build_ranking_model(synthetic_dataset.spec, small_config)
    weights = models.get_weights(ranking)
    kernel = "ranking_model/ratings/2/kernel"
    weights[kernel] = np.zeros_like(weights[kernel])
    weights["ranking_model/ratings/2/bias"] = np.array([30.0], np.float32)  # p = sigmoid(30)
    models.set_weights(model, weights)
    batch = synthetic_dataset.raw(np.arange(4))
    batch["label"] = np.zeros(4, np.float32)
    p = np.float32(1) - np.float32(1e-7)           # clip(p, eps, 1 - eps) in float32
    clipped = -np.log(np.float32(1) - p + np.float32(1e-7))
    assert batch_loss(model, batch) == pytest.approx(float(clipped), rel=1e-5)
    assert abs(batch_loss(model, batch) - 30.0) > 10   # not the from-logits value


def test_factorized_metrics_stay_score_based_with_accidental_hits(synthetic_dataset, small_config,
                                                                  retrieval):
    batch = to_tensors(synthetic_dataset.raw(synthetic_dataset.split.test[:200]))
    results = []
    for config in (small_config, small_config.replace(remove_accidental_hits=True)):
        model = models.build_retrieval_model(synthetic_dataset.spec, config,
                                             synthetic_dataset.corpus_titles)
        models.set_weights(model, models.get_weights(retrieval))
        model.compute_loss(batch, training=False)
        results.append([float(m.result()) for m in model.task.factorized_metrics[0].metrics])
    assert results[0] == results[1]
    assert 0 < results[0][0] <= results[0][-1] <= 1


def test_names_follow_attribute_paths_generically(retrieval, ranking):
    """named_variables derives the names by walking attributes: the same variables as the
    models' own Keras listing, each under its attribute path, in attribute order."""
    for model, names in ((retrieval, RETRIEVAL_NAMES), (ranking, RANKING_NAMES)):
        variables = models.named_variables(model)
        assert list(variables) == list(names)  # names AND their order unchanged
        assert {id(v) for v in variables.values()} == {id(v) for v in model.trainable_variables}
    assert (models.named_variables(retrieval)["query_model/dense_layers/1/kernel"]
            is retrieval.query_model.dense_layers.layers[1].kernel)
    assert (models.named_variables(ranking)["ranking_model/movie_embeddings/title_text_embedding/"
                                            "embeddings"]
            is ranking.ranking_model.movie_embeddings.title_text_embedding.layers[2].embeddings)


def test_name_rules_on_a_toy_model():
    """Sequential: index among the layers owning weights, omitted for a single owner; layers
    without weights are skipped; a variable behind a private attribute is refused."""
    keras = tf.keras

    class Toy(keras.Model):
        def __init__(self):
            super().__init__()
            self.single = keras.Sequential([keras.layers.Dropout(0.1), keras.layers.Dense(2)])
            self.stack = keras.Sequential([keras.layers.Dense(3), keras.layers.Dropout(0.1),
                                           keras.layers.Dense(4, use_bias=False)])
            self.pooling = keras.layers.GlobalAveragePooling1D()  # no weights: no name

        def call(self, x):
            return self.stack(self.single(x))

    toy = Toy()
    toy(tf.zeros((1, 5)))
    assert {k: tuple(v.shape) for k, v in models.named_variables(toy).items()} == {
        "single/kernel": (5, 2), "single/bias": (2,),
        "stack/0/kernel": (2, 3), "stack/0/bias": (3,), "stack/1/kernel": (3, 4)}

    class Hidden(Toy):
        def __init__(self):
            super().__init__()
            self._secret = keras.layers.Dense(1)

        def call(self, x):
            return self._secret(super().call(x))

    hidden = Hidden()
    hidden(tf.zeros((1, 5)))
    with pytest.raises(RuntimeError, match="public attributes"):
        models.named_variables(hidden)


def test_a_title_keeps_its_first_max_title_tokens(retrieval, synthetic_dataset):
    """A 10,000-word title is pooled over its first MAX_TITLE_TOKENS tokens, as FeatureSpec
    encodes it for torch (issue 21: one huge title sized every padded token row)."""
    from twostage.data.features import MAX_TITLE_TOKENS
    vocab = synthetic_dataset.spec.token_vocab
    words = [vocab[i % len(vocab)] for i in range(10_000)]
    text = retrieval.candidate_model.embedding_model.title_text_embedding
    long, head = " ".join(words), " ".join(words[:MAX_TITLE_TOKENS])
    out = text(tf.constant([long, head])).numpy()
    np.testing.assert_array_equal(out[0], out[1])
    tokens = retrieval.candidate_model.embedding_model.title_text_embedding.layers[1](
        retrieval.candidate_model.embedding_model.title_vectorizer(tf.constant([long])))
    assert tuple(tokens.shape) == (1, MAX_TITLE_TOKENS)
