"""FeatureSpec against the tf_keras preprocessing layers the seed uses, output for output.

Each reference layer is built the way the seed builds it, from the raw data and not from the spec
(vocabularies from ``np.unique`` of the UTF-8 bytes, boundaries from ``np.linspace``, the
TextVectorization adapted on the corpus titles), once per data source and module. The spec's
numpy mappings must then reproduce the layers exactly; only ``Normalization.adapt`` is compared
within a tolerance, for the reason given at ``ADAPT_*``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twostage.data.features import SPEC_VERSION, FeatureSpec, standardize, tokenize
from twostage.data.movielens import MovieLens

NUM_BUCKETS, MAX_TOKENS = 1000, 10_000
# Normalization.adapt casts the timestamps to float32 before taking moments (float32 spacing is
# 64 s at 8.8e8) and merges per-batch moments in float32; the spec keeps the exact float64
# moments. On ml-100k the adapted mean is 38 s off and the variance 9e-6 relative, so outputs
# differ by 2e-5 standard deviations. The bounds below leave a few float32 ulps of headroom.
ADAPT_MEAN_ATOL = 4 * 64.0  # seconds: 4 float32 ulps at 8.8e8
ADAPT_VARIANCE_RTOL = 1e-4
ADAPT_OUTPUT_ATOL = 1e-4  # standard deviations
SPEC_NORMALIZATION_ATOL = 1e-6  # the spec reproduces the float32 formula; observed 0 difference
UNKNOWN_STRINGS = ["", "0", "no such title", "[UNK]", "Toy Story (1995) ", "misérables, les (1995)"]
# (not "unknown": ml-100k has a movie titled "unknown", id 267)


def utf8(values) -> np.ndarray:
    """What TF sees: the UTF-8 bytes of each string (TFDS yields bytes)."""
    return np.array([v.encode("utf-8") for v in values], dtype=object)


def as_str(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


@dataclass
class Keras:
    """The seed's preprocessing layers, fitted from the raw data, beside our spec."""

    ml: MovieLens
    spec: FeatureSpec
    timestamps: np.ndarray  # [N] int64, all ratings
    titles: list[str]  # the movie corpus, u.item order
    user_lookup: object
    title_lookup: object
    discretization: object
    vectorizer: object
    normalization_from_spec: object
    normalization_adapted: object


def build_keras(tf, tf_keras, ml: MovieLens, *, max_tokens: int = MAX_TOKENS,
                num_buckets: int = NUM_BUCKETS) -> Keras:
    layers = tf_keras.layers
    ts = ml.ratings["timestamp"].to_numpy(np.int64)
    titles = ml.movies["movie_title"].tolist()
    spec = FeatureSpec.fit(ml, num_buckets=num_buckets, max_tokens=max_tokens)
    vectorizer = layers.TextVectorization(max_tokens=max_tokens)
    vectorizer.adapt(utf8(titles))
    adapted = layers.Normalization()
    # tf_keras 2.21 no longer expands a 1-D input to [N, 1]: adapting on the flat array would learn
    # 32 per-position means (one per slot of a default 32-batch). [N, 1] gives the one scalar
    # mean/variance the seed's TF 2.x learned.
    adapted.adapt(ts.reshape(-1, 1))
    return Keras(
        ml=ml, spec=spec, timestamps=ts, titles=titles,
        user_lookup=layers.StringLookup(
            vocabulary=np.unique(utf8(ml.ratings["user_id"])), mask_token=None),
        title_lookup=layers.StringLookup(vocabulary=np.unique(utf8(titles)), mask_token=None),
        discretization=layers.Discretization(
            bin_boundaries=np.linspace(ts.min(), ts.max(), num=num_buckets).tolist()),
        vectorizer=vectorizer,
        normalization_from_spec=layers.Normalization(mean=spec.ts_mean,
                                                     variance=spec.ts_variance),
        normalization_adapted=adapted,
    )


@pytest.fixture(scope="module", params=["synthetic", pytest.param("real", marks=pytest.mark.real_data)])
def keras(request, tf, tf_keras) -> Keras:
    """The layers for the synthetic data, and (marked real_data) for ml-100k."""
    name = "synthetic_movielens" if request.param == "synthetic" else "real_movielens"
    return build_keras(tf, tf_keras, request.getfixturevalue(name))


def run(layer, values) -> np.ndarray:
    return np.asarray(layer(values).numpy())


# --- StringLookup ------------------------------------------------------------------------------
def test_user_index_equals_string_lookup(keras):
    k = keras
    assert list(k.spec.user_vocab) == as_str(k.user_lookup.get_vocabulary()[1:])
    users = k.ml.ratings["user_id"].tolist() + UNKNOWN_STRINGS
    got = k.spec.user_index(users)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, run(k.user_lookup, utf8(users)))
    assert (got[-len(UNKNOWN_STRINGS):] == 0).all()
    assert k.spec.num_user_rows == k.user_lookup.vocabulary_size()


def test_title_index_equals_string_lookup(keras):
    k = keras
    assert list(k.spec.title_vocab) == as_str(k.title_lookup.get_vocabulary()[1:])
    titles = k.titles + k.ml.ratings["movie_title"].tolist() + UNKNOWN_STRINGS
    got = k.spec.title_index(titles)
    np.testing.assert_array_equal(got, run(k.title_lookup, utf8(titles)))
    assert (got[-len(UNKNOWN_STRINGS):] == 0).all()
    assert (got[: len(k.titles)] > 0).all()
    assert k.spec.num_title_rows == k.title_lookup.vocabulary_size()


def test_lookups_accept_utf8_bytes(keras):
    """TF pipelines hand over bytes; they map exactly as the decoded str."""
    k = keras
    np.testing.assert_array_equal(k.spec.title_index(utf8(k.titles)), k.spec.title_index(k.titles))


# --- Discretization ----------------------------------------------------------------------------
def boundary_neighbours(spec: FeatureSpec) -> np.ndarray:
    """Integers around every boundary and outside the range: where rounding decides."""
    b = np.asarray(spec.ts_boundaries)
    near = (np.floor(b)[:, None] + np.arange(-2, 3)[None, :]).ravel()
    outside = [b[0] - 10_000, b[0] - 1, b[-1] + 1, b[-1] + 10_000, 0]
    return np.concatenate([near, outside]).astype(np.int64)


def test_timestamp_bucket_equals_discretization(keras):
    k = keras
    assert k.spec.ts_boundaries == tuple(k.discretization.bin_boundaries)
    for ts in (k.timestamps, boundary_neighbours(k.spec)):
        got = k.spec.timestamp_bucket(ts)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, run(k.discretization, ts))  # int64 in, as in the seed
    assert k.spec.num_bucket_rows == len(k.discretization.bin_boundaries) + 1


def float64_buckets(spec: FeatureSpec, ts: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(spec.ts_boundaries), ts, side="right")


def test_float32_rounding_decides_buckets_near_boundaries(keras):
    """Teeth: exact float64 comparison would put some of these in a neighbouring bucket."""
    ts = boundary_neighbours(keras.spec)
    assert (float64_buckets(keras.spec, ts) != run(keras.discretization, ts)).any()


@pytest.mark.real_data
def test_float32_rounding_decides_real_rating_buckets(real_movielens, tf, tf_keras):
    """On ml-100k, 159 of the 100,000 rating timestamps land in another bucket under float64."""
    ts = real_movielens.ratings["timestamp"].to_numpy(np.int64)
    spec = FeatureSpec.fit(real_movielens)
    layer = tf_keras.layers.Discretization(
        bin_boundaries=np.linspace(ts.min(), ts.max(), num=NUM_BUCKETS).tolist())
    keras_buckets = run(layer, ts)
    np.testing.assert_array_equal(spec.timestamp_bucket(ts), keras_buckets)
    assert (float64_buckets(spec, ts) != keras_buckets).sum() > 0


def test_bucket_edges(tf_keras):
    """Minimum -> bucket 1, maximum -> the last, exactly on a boundary -> above it, below -> 0."""
    ts = np.array([100, 100 + 999 * 7, 100 + 5 * 7, 100 + 5 * 7 - 1, 99, 10**6], dtype=np.int64)
    spec = _spec_for(ts[:2], ["A (1995)"])
    layer = tf_keras.layers.Discretization(
        bin_boundaries=np.linspace(ts[:2].min(), ts[:2].max(), NUM_BUCKETS).tolist())
    want = [1, NUM_BUCKETS, 6, 5, 0, NUM_BUCKETS]
    np.testing.assert_array_equal(spec.timestamp_bucket(ts), want)
    np.testing.assert_array_equal(run(layer, ts), want)


def test_collapsed_float32_boundaries(tf_keras):
    """A span shorter than the float32 spacing: many boundaries share one float32 value."""
    lo = 874_724_710
    ts = np.arange(lo, lo + 500, dtype=np.int64)
    spec = _spec_for(ts, ["A (1995)"])
    layer = tf_keras.layers.Discretization(
        bin_boundaries=np.linspace(ts.min(), ts.max(), NUM_BUCKETS).tolist())
    np.testing.assert_array_equal(spec.timestamp_bucket(ts), run(layer, ts))


# --- Normalization -----------------------------------------------------------------------------
def test_timestamp_normalized_equals_normalization_from_spec(keras):
    k = keras
    got = k.spec.timestamp_normalized(k.timestamps)
    assert got.dtype == np.float32
    want = run(k.normalization_from_spec, k.timestamps.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(got, want, rtol=0, atol=SPEC_NORMALIZATION_ATOL)


def test_spec_moments_match_normalization_adapt(keras):
    k = keras
    mean = float(np.asarray(k.normalization_adapted.mean).item())
    variance = float(np.asarray(k.normalization_adapted.variance).item())
    assert abs(mean - k.spec.ts_mean) <= ADAPT_MEAN_ATOL
    assert abs(variance - k.spec.ts_variance) <= ADAPT_VARIANCE_RTOL * k.spec.ts_variance
    want = run(k.normalization_adapted, k.timestamps.reshape(-1, 1)).ravel()
    np.testing.assert_allclose(k.spec.timestamp_normalized(k.timestamps), want,
                               rtol=0, atol=ADAPT_OUTPUT_ATOL)


def test_spec_moments_are_exact_float64(keras):
    ts = keras.timestamps.astype(np.float64)
    assert keras.spec.ts_mean == ts.mean() and keras.spec.ts_variance == ts.var()


# --- TextVectorization -------------------------------------------------------------------------
def test_token_vocabulary_equals_text_vectorization(keras):
    k = keras
    assert as_str(k.vectorizer.get_vocabulary()) == k.spec.keras_token_vocabulary
    assert k.spec.max_tokens == MAX_TOKENS


def test_title_tokens_equal_text_vectorization(keras):
    k = keras
    got = k.spec.title_tokens(k.titles)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, run(k.vectorizer, utf8(k.titles)))
    extra = ["zzzunseen words here", "", "!!!", *k.titles[:3]]
    np.testing.assert_array_equal(k.spec.title_tokens(extra), run(k.vectorizer, utf8(extra)))


def test_encode_titles_and_queries(keras):
    k = keras
    r = k.ml.ratings.iloc[:50]
    enc = k.spec.encode(r["user_id"], r["timestamp"], r["movie_title"])
    assert set(enc) == {"user_index", "ts_bucket", "ts_norm", "title_index", "title_tokens"}
    np.testing.assert_array_equal(enc["user_index"], run(k.user_lookup, utf8(r["user_id"])))
    np.testing.assert_array_equal(enc["ts_bucket"], run(k.discretization, r["timestamp"].to_numpy()))
    np.testing.assert_array_equal(enc["title_index"], run(k.title_lookup, utf8(r["movie_title"])))
    np.testing.assert_array_equal(enc["title_tokens"], run(k.vectorizer, utf8(r["movie_title"])))
    assert enc["ts_norm"].shape == (50,) and enc["title_tokens"].shape[0] == 50


# Hand-made corpora for the Keras corner cases, each checked against an adapted layer.
EDGE_TITLES = [
    "!!!",  # standardizes to no token at all
    "(...) - & ... ''",  # only punctuation and whitespace
    "CAFÉ Élan ÉCOLE (1995)",  # tf.strings.lower is ASCII-only: 'cafÉ', 'Élan', 'École'
    "café élan misérables, les",
    "¿Qué? «Quoi» Nénette et Boni",  # non-ASCII punctuation is not stripped
    "a\xa0b c\x1cd",  # NBSP and \x1c are not ASCII whitespace: no split there
    "tab\tsep\x0bvt\x0cff",  # ASCII whitespace other than space does split
    "x_y-z Jones's Dr. L.A. 2",  # stripped punctuation joins the pieces
    "c b a", "a b c", "c b a cafe cafe cafe",  # cafe, c, b, a tie at 3: token descending
    "Ärger ärger ÄRGER",  # 'Ärger' twice (Ä is not lowered), 'ärger' once
    "  leading and trailing  ",
]


@pytest.fixture(scope="module")
def edge_cases(tf, tf_keras):
    """(spec, vectorizer) on EDGE_TITLES, full and truncated to max_tokens=6 (4 learned)."""
    out = {}
    for max_tokens in (MAX_TOKENS, 6):
        ml = _movielens([1, 2, 3], EDGE_TITLES)
        layer = tf_keras.layers.TextVectorization(max_tokens=max_tokens)
        layer.adapt(utf8(EDGE_TITLES))
        out[max_tokens] = (FeatureSpec.fit(ml, max_tokens=max_tokens), layer)
    return out


@pytest.mark.parametrize("max_tokens", [MAX_TOKENS, 6])
def test_edge_case_vocabulary_and_tokens(edge_cases, max_tokens):
    spec, layer = edge_cases[max_tokens]
    assert as_str(layer.get_vocabulary()) == spec.keras_token_vocabulary
    probe = EDGE_TITLES + ["unseen ÉCOLE", "a"]
    np.testing.assert_array_equal(spec.title_tokens(probe), run(layer, utf8(probe)))


def test_edge_case_expectations(edge_cases):
    """The rules spelled out, so a failure says which one broke."""
    spec, _ = edge_cases[MAX_TOKENS]
    assert tokenize("!!!") == [] and tokenize("(...) - & ... ''") == []
    assert tokenize("CAFÉ Élan ÉCOLE") == ["cafÉ", "Élan", "École"]
    assert tokenize("a\xa0b c\x1cd") == ["a\xa0b", "c\x1cd"]
    assert tokenize("tab\tsep\x0bvt\x0cff") == ["tab", "sep", "vt", "ff"]
    assert standardize("x_y-z Jones's Dr. L.A.") == "xyz joness dr la"
    vocab = list(spec.token_vocab)
    assert vocab[:4] == ["cafe", "c", "b", "a"]  # count 3 each, then by token descending
    assert vocab.index("Ärger") < vocab.index("ärger")  # count 2 before count 1
    row = spec.title_tokens(["!!!", "a"])
    np.testing.assert_array_equal(row, [[0], [vocab.index("a") + 2]])


def test_truncated_vocabulary_maps_the_rest_to_oov(edge_cases):
    spec, _ = edge_cases[6]
    assert spec.token_vocab == ("cafe", "c", "b", "a")
    np.testing.assert_array_equal(spec.title_tokens(["a cafe zebra élan"]), [[5, 2, 1, 1]])


def test_title_tokens_length_pads_and_truncates():
    spec = _spec_for(np.array([1, 2]), ["one two three (1995)", "one"])
    ids = spec.title_tokens(["one two three (1995)", "one"])
    assert ids.shape == (2, 4)
    np.testing.assert_array_equal(spec.title_tokens(["one two three (1995)"], length=2), ids[:1, :2])
    np.testing.assert_array_equal(spec.title_tokens(["one"], length=3), [[ids[1, 0], 0, 0]])
    assert spec.title_tokens([]).shape == (0, 0)


def test_fit_rejects_too_small_max_tokens():
    with pytest.raises(ValueError, match="max_tokens=2 must be >= 3"):
        FeatureSpec.fit(_movielens([1, 2], ["a"]), max_tokens=2)


# --- persistence -------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(synthetic_movielens, tmp_path):
    spec = FeatureSpec.fit(synthetic_movielens)
    path = tmp_path / "sub" / "spec.json"
    spec.save(path)
    back = FeatureSpec.load(path)
    assert back == spec and back.fingerprint() == spec.fingerprint()
    assert [b.hex() for b in back.ts_boundaries] == [b.hex() for b in spec.ts_boundaries]
    assert back.ts_mean.hex() == spec.ts_mean.hex()
    assert back.ts_variance.hex() == spec.ts_variance.hex()
    assert json.loads(path.read_text(encoding="utf-8")) == spec.to_dict()
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind


def test_round_trip_of_awkward_floats(tmp_path):
    spec = replace(_spec_for(np.array([1, 2]), ["a"]),
                   ts_boundaries=(0.1, 1 / 3, 874724710.0000001, 2.0 ** 60 + 2048, 5e-324),
                   ts_mean=883528851.48862, ts_variance=28556513406097.676)
    spec.save(tmp_path / "s.json")
    assert FeatureSpec.load(tmp_path / "s.json") == spec


def test_fingerprint_changes_with_content():
    spec = _spec_for(np.array([1, 2]), ["a"])
    assert spec.fingerprint() != replace(spec, ts_mean=spec.ts_mean + 1e-9).fingerprint()


def test_unsupported_version(tmp_path):
    d = _spec_for(np.array([1, 2]), ["a"]).to_dict()
    for version in (SPEC_VERSION + 1, None, "1"):
        d["version"] = version
        (tmp_path / "s.json").write_text(json.dumps(d))
        with pytest.raises(ValueError, match=re.escape(f"version {version!r} is not supported")
                           ) as info:
            FeatureSpec.load(tmp_path / "s.json")
        assert str(tmp_path / "s.json") in str(info.value)
    with pytest.raises(ValueError, match="is not supported"):
        FeatureSpec.from_dict(d)


@pytest.mark.parametrize("content, match", [
    (None, "not a readable feature spec"),  # missing file
    ("{not json", "not a readable feature spec"),
    ('{"version": 1}', "missing key 'user_vocab'"),
    ("[1, 2]", "a feature spec is a JSON object, got list"),
    (b"\xff\xfe{", "not a readable feature spec"),  # not UTF-8
])
def test_load_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "spec.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        FeatureSpec.load(path)
    assert str(path) in str(info.value) and "not a readable feature spec" in str(info.value)


# --- helpers -----------------------------------------------------------------------------------
def _movielens(timestamps, titles) -> MovieLens:
    """A minimal MovieLens: the columns FeatureSpec.fit reads."""
    ts = np.asarray(timestamps, dtype=np.int64)
    ratings = pd.DataFrame({"user_id": [str(i % 3 + 1) for i in range(len(ts))],
                            "timestamp": ts, "movie_title": [titles[0]] * len(ts)})
    movies = pd.DataFrame({"movie_id": [str(i + 1) for i in range(len(titles))],
                           "movie_title": list(titles)})
    return MovieLens(ratings=ratings, movies=movies, source=Path("."))


def _spec_for(timestamps, titles, **kw) -> FeatureSpec:
    return FeatureSpec.fit(_movielens(timestamps, titles), **kw)


# --- fitted once per distinct value -------------------------------------------------------------
def _per_rating(spec: FeatureSpec, ratings: pd.DataFrame) -> dict[str, np.ndarray]:
    """What encoding every rating on its own gives (the reference for encode_ratings)."""
    user_id = ratings["user_id"].to_numpy(dtype=object)
    titles = ratings["movie_title"].to_numpy(dtype=object)
    return {**spec.encode_queries(user_id, ratings["timestamp"].to_numpy(np.int64)),
            "title_index": spec.title_index(titles)}


def _assert_same_arrays(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("layout, dataset", [("100k", "100k"), ("1m", "1m"), ("csv", "25m")])
def test_encode_ratings_equals_per_rating_encoding(tmp_path, layout, dataset):
    from twostage.data.movielens import load_movielens
    from twostage.data.synthetic import generate
    ml = load_movielens(generate(tmp_path, layout=layout, realistic=layout != "100k",
                                 num_users=70, num_movies=60, num_ratings=900, seed=1),
                        dataset=dataset)
    spec = FeatureSpec.fit(ml, max_tokens=40)  # few tokens: out-of-vocabulary ones too
    corpus = ml.movies["movie_title"].to_numpy(dtype=object)
    corpus_features = spec.encode_titles(corpus)
    got = spec.encode_ratings(ml.ratings, corpus, corpus_features)
    _assert_same_arrays(got, _per_rating(spec, ml.ratings))
    # every rating's tokens: its row of the token table, as tokenising the rating's title
    width = corpus_features["title_tokens"].shape[1]
    table = spec.title_token_table()
    assert table.shape == (len(spec.title_vocab) + 1, width) and not table[0].any()
    np.testing.assert_array_equal(table[got["title_index"]], spec.title_tokens(
        ml.ratings["movie_title"].to_numpy(dtype=object), length=width))


def test_encode_ratings_of_titles_outside_the_corpus():
    """A hand-built frame (plain columns, a title the corpus lacks) is encoded the same way."""
    ml = _movielens([10, 20, 30, 40], ["a b c", "d"])
    ratings = ml.ratings.assign(movie_title=["a b c", "zz yy", "d", "a b c"])
    spec = FeatureSpec.fit(ml)
    corpus = ml.movies["movie_title"].to_numpy(dtype=object)
    corpus_features = spec.encode_titles(corpus)
    got = spec.encode_ratings(ratings, corpus, corpus_features)
    _assert_same_arrays(got, _per_rating(spec, ratings))
    assert got["title_index"].tolist() == [1, 0, 2, 1]


def test_titles_tokenised_once_per_movie_and_users_looked_up_once(tmp_path, monkeypatch):
    """Fit plus encoding of every rating: one tokenisation per distinct title, one vocabulary
    lookup per distinct user, whatever the number of ratings."""
    from twostage.config import Config
    from twostage.data import features
    from twostage.dataset import from_movielens
    from twostage.data.movielens import load_movielens
    from twostage.data.synthetic import generate
    ml = load_movielens(generate(tmp_path, num_users=50, num_movies=40, num_ratings=4000))
    standardized, looked_up = [], []
    real_standardize, real_lookup = features.standardize, features._lookup
    monkeypatch.setattr(features, "standardize", lambda t: standardized.append(t)
                        or real_standardize(t))
    monkeypatch.setattr(features, "_lookup", lambda vocab, values: looked_up.append(
        len(list(values))) or real_lookup(vocab, values))
    features._tokens.cache_clear()
    dataset = from_movielens(ml, Config.of())
    assert sorted(standardized) == sorted(set(ml.movies["movie_title"]))
    assert max(looked_up) < 4000  # lookups of the distinct users and titles, never per rating
    assert ml.ratings["user_id"].nunique() in looked_up
    assert len(dataset.features["user_index"]) == 4000


def test_encode_titles_of_repeated_titles_equals_the_keras_layers(keras):
    """encode_titles looks each distinct title up once and gathers: every row, repeated
    titles, bytes and unknown titles included, equals StringLookup / TextVectorization of that
    row (re-ranking encodes 10 candidates a query, mostly the same titles)."""
    k = keras
    titles = list(k.titles[:5]) * 7 + ["zzzunseen words here", "!!!", k.titles[2]]
    mixed = [t.encode("utf-8") if i % 3 == 0 else t for i, t in enumerate(titles)]
    enc = k.spec.encode_titles(mixed)
    np.testing.assert_array_equal(enc["title_index"], run(k.title_lookup, utf8(titles)))
    np.testing.assert_array_equal(enc["title_tokens"], run(k.vectorizer, utf8(titles)))
    empty = k.spec.encode_titles([])
    assert empty["title_index"].shape == (0,) and empty["title_tokens"].shape[0] == 0


def test_a_huge_title_is_cut_to_max_title_tokens(synthetic_dir, tmp_path):
    """A 2 MB title in u.item: every padded token row stays MAX_TITLE_TOKENS wide (issue 21:
    one 10 MB title took 23.5 GB), the kept tokens are the title's first ones."""
    from twostage.data.features import MAX_TITLE_TOKENS
    from twostage.data.movielens import load_movielens
    import shutil
    data = tmp_path / "ml"
    shutil.copytree(synthetic_dir, data)
    lines = (data / "u.item").read_text(encoding="latin-1").splitlines()
    fields = lines[0].split("|")
    words = [f"w{i}" for i in range(300_000)]
    fields[1] = " ".join(words)
    (data / "u.item").write_text("\n".join(["|".join(fields), *lines[1:]]) + "\n",
                                 encoding="latin-1")
    spec = FeatureSpec.fit(load_movielens(data))
    assert spec.title_token_table().shape[1] == MAX_TITLE_TOKENS
    tokens = spec.title_tokens([fields[1], " ".join(words[:MAX_TITLE_TOKENS])])
    assert tokens.shape == (2, MAX_TITLE_TOKENS)
    np.testing.assert_array_equal(tokens[0], tokens[1])
    assert tokenize(fields[1]) == words[:MAX_TITLE_TOKENS]
