"""twostage.data.encoders: one encoder per schema feature kind, each following its Keras
layer's rule (the Keras layers themselves are compared in parity_tests/test_1_features.py)."""
from __future__ import annotations

import numpy as np
import pytest

from twostage.data import encoders as enc
from twostage.data.features import MAX_TITLE_TOKENS


def test_lookup_is_sorted_vocabulary_with_unknown_zero():
    e = enc.fit_encoder("category", ["b", "a", "b", "c"])
    assert e.vocabulary == ("a", "b", "c") and e.rows == 4
    np.testing.assert_array_equal(e.encode(["c", "a", "zz", b"b", None]), [3, 1, 0, 2, 0])


def test_multi_lookup_pads_zero_and_marks_unknown_one():
    e = enc.fit_encoder("multi_category", ["x|y", "y", "z|x|", ""], separator="|")
    assert e.vocabulary == ("x", "y", "z") and e.rows == 5
    np.testing.assert_array_equal(e.encode(["y|x", "q", "", "z|z|z"]),
                                  [[3, 2, 0], [1, 0, 0], [0, 0, 0], [4, 4, 4]])
    assert e.encode(["x|y|z"], length=2).tolist() == [[2, 3]]
    with pytest.raises(ValueError, match="separator"):
        enc.fit_encoder("multi_category", ["x"])


def test_text_is_the_seeds_title_treatment_capped():
    e = enc.fit_encoder("text", ["Red shoe", "red hat", "Blue hat!"], max_tokens=10)
    assert e.vocabulary[:2] == ("red", "hat")          # by count, ties by token descending
    assert e.encode(["RED unknown-word"]).tolist() == [[2, 1]]
    long = " ".join(["red"] * 500)
    assert e.encode([long]).shape == (1, MAX_TITLE_TOKENS)


def test_numeric_moments_buckets_and_timestamps_default_buckets():
    e = enc.fit_encoder("numeric", [1.0, 2.0, 3.0, np.nan], buckets=3)
    assert (e.mean, e.variance, e.boundaries) == (2.0, 2 / 3, (1.0, 2.0, 3.0))
    np.testing.assert_array_equal(e.bucket([0.5, 1.0, 2.5, 3.0, 9.0]), [0, 1, 2, 3, 3])
    np.testing.assert_allclose(e.normalized([2.0, 3.0]), [0.0, 1 / np.sqrt(2 / 3)], rtol=1e-6)
    assert enc.fit_encoder("numeric", [5.0]).rows == 0
    with pytest.raises(ValueError, match="no buckets"):
        enc.fit_encoder("numeric", [5.0]).bucket([1.0])
    t = enc.fit_encoder("timestamp", np.array([100, 200, 400]))
    assert len(t.boundaries) == enc.DEFAULT_TIMESTAMP_BUCKETS
    with pytest.raises(ValueError, match="finite"):
        enc.fit_encoder("numeric", [np.nan])
    with pytest.raises(ValueError, match="known: id, category"):
        enc.fit_encoder("colour", ["x"])
