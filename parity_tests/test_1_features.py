"""Group 1: every preprocessing output identical (integers exactly, normalized ts to 1e-6)."""
from . import checks


def test_features_identical(dataset, dataset_and_kind):
    checks.check_features(dataset)


def test_features_equal_the_seeds_own_adapted_layers(dataset):
    checks.check_features_seed_way(dataset)


def test_every_schema_feature_kind_equals_its_keras_layer():
    """The own-data encoders (twostage.data.encoders) against the Keras preprocessing layers
    built from their fitted state, on values with unknowns, empties and long texts: lookups
    and buckets exact, normalisation within FEATURE_NORM_ATOL."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from twostage.data import encoders as enc
    from . import tolerances as tol
    from .compare import assert_close, assert_equal

    layers = keras.layers
    rng = np.random.default_rng(0)
    cats = np.array([f"c{i}" for i in rng.integers(0, 30, 500)], dtype=object)
    seen = enc.fit_encoder("category", cats[:400])
    assert_equal("category", seen.encode(cats),
                 layers.StringLookup(vocabulary=list(seen.vocabulary), mask_token=None)(
                     tf.constant(cats.astype(str))).numpy())
    cells = np.array(["|".join(f"t{j}" for j in rng.integers(0, 12, rng.integers(0, 5)))
                      for _ in range(300)], dtype=object)
    multi = enc.fit_encoder("multi_category", cells[:200], separator="|")
    lookup = layers.StringLookup(vocabulary=list(multi.vocabulary), mask_token="")
    split = tf.strings.split(tf.constant(cells.astype(str)), sep="|")
    theirs = lookup(split).to_tensor(default_value=0).numpy()
    assert_equal("multi_category", multi.encode(cells, length=theirs.shape[1]), theirs)
    texts = np.array(["The Red Shoe!", "red hat", "", "unseen words here", " ".join(["hat"] * 90)],
                     dtype=object)
    text = enc.fit_encoder("text", texts[:2], max_tokens=50)
    vectorizer = layers.TextVectorization(max_tokens=50,
                                          vocabulary=["", "[UNK]", *text.vocabulary])
    theirs = vectorizer(tf.constant(texts.astype(str))).numpy()[:, :enc.MAX_TITLE_TOKENS]
    assert_equal("text", text.encode(texts, length=theirs.shape[1]), theirs)
    values = rng.normal(1e3, 50.0, 400)
    numeric = enc.fit_encoder("numeric", values[:300], buckets=20)
    assert_equal("numeric buckets", numeric.bucket(values),
                 layers.Discretization(list(numeric.boundaries))(tf.constant(values)).numpy())
    stamps = rng.integers(8.7e8, 8.9e8, 400)          # integers: compared in float32
    stamp = enc.fit_encoder("timestamp", stamps[:300])
    assert_equal("timestamp buckets", stamp.bucket(stamps),
                 layers.Discretization(list(stamp.boundaries))(tf.constant(stamps)).numpy())
    assert_close("numeric normalised", numeric.normalized(values),
                 layers.Normalization(mean=numeric.mean, variance=numeric.variance, axis=None)(
                     tf.constant(values, tf.float32)).numpy(),
                 rtol=0.0, atol=tol.FEATURE_NORM_ATOL)
