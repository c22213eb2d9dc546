"""data.synthetic: seeded, parseable, in the GroupLens layout, with the corner cases the tests need."""
from __future__ import annotations

import numpy as np
import pytest

from twostage.data.features import FeatureSpec, tokenize
from twostage.data.movielens import GENRES, load_movielens
from twostage.data.synthetic import BASE_TIMESTAMP, SPAN_SECONDS, generate

FILES = ("u.data", "u.item", "u.user", "u.genre")


def read_all(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def test_generated_folder_parses(synthetic_dir, synthetic_movielens):
    ml = synthetic_movielens
    assert sorted(p.name for p in synthetic_dir.iterdir()) == sorted(FILES)
    assert len(ml.ratings) == 5000 and len(ml.movies) == 150
    assert ml.ratings["user_id"].nunique() <= 200
    assert set(ml.ratings["user_rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    ts = ml.ratings["timestamp"]
    assert ts.min() >= BASE_TIMESTAMP and ts.max() < BASE_TIMESTAMP + SPAN_SECONDS
    genres = (synthetic_dir / "u.genre").read_text(encoding="ISO-8859-1").split("\n")
    assert genres[: len(GENRES)] == [f"{g}|{i}" for i, g in enumerate(GENRES)]


def test_same_seed_same_bytes(tmp_path):
    a = read_all(generate(tmp_path / "a", num_users=30, num_movies=40, num_ratings=500, seed=5))
    b = read_all(generate(tmp_path / "b", num_users=30, num_movies=40, num_ratings=500, seed=5))
    assert a == b
    c = read_all(generate(tmp_path / "c", num_users=30, num_movies=40, num_ratings=500, seed=6))
    assert a["u.data"] != c["u.data"] and a["u.item"] != c["u.item"]


def test_regenerating_overwrites_in_place(tmp_path):
    first = read_all(generate(tmp_path, num_users=10, num_movies=10, num_ratings=50, seed=1))
    generate(tmp_path, num_users=10, num_movies=10, num_ratings=50, seed=2)
    again = read_all(generate(tmp_path, num_users=10, num_movies=10, num_ratings=50, seed=1))
    assert again == first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temp files left


def test_corner_cases_present(synthetic_movielens):
    titles = synthetic_movielens.movies["movie_title"]
    assert titles.duplicated().any(), "duplicate titles under different movie ids, as in ml-100k"
    assert titles[titles.duplicated(keep=False)].index.size >= 2
    assert any(any(ord(ch) > 127 for ch in t) for t in titles), "non-ASCII (Latin-1) letters"
    assert any(tokenize(t) == [] for t in titles), "a title that standardizes to no token"
    # rated duplicate-title movies keep their own ids in the ratings
    assert synthetic_movielens.ratings["movie_id"].nunique() > 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_size_has_non_ascii_for_any_seed(tmp_path, seed):
    ml = load_movielens(generate(tmp_path, seed=seed))
    assert any(any(ord(ch) > 127 for ch in t) for t in ml.movies["movie_title"])


def test_files_are_iso_8859_1(synthetic_dir):
    item = (synthetic_dir / "u.item").read_bytes()
    assert b"\x00" not in item
    assert any(b > 127 for b in item), "the Latin-1 bytes are there"
    with pytest.raises(UnicodeDecodeError):
        item.decode("utf-8")  # raw Latin-1 bytes (e.g. 0xe9), not UTF-8 sequences
    text = item.decode("ISO-8859-1")
    assert "é" in text
    for name in FILES:
        raw = (synthetic_dir / name).read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw


@pytest.mark.parametrize("num_users, num_movies, num_ratings", [(1, 1, 2), (2, 4, 3), (3, 5, 40)])
def test_tiny_sizes_parse_and_fit(tmp_path, num_users, num_movies, num_ratings):
    ml = load_movielens(generate(tmp_path, num_users=num_users, num_movies=num_movies,
                                 num_ratings=num_ratings, seed=0))
    assert len(ml.ratings) == num_ratings and len(ml.movies) == num_movies
    spec = FeatureSpec.fit(ml)
    assert spec.num_bucket_rows == 1001
    assert np.all(spec.user_index(ml.ratings["user_id"]) > 0)


@pytest.mark.parametrize("kwargs", [dict(num_users=0), dict(num_movies=0), dict(num_ratings=1)])
def test_bad_sizes(tmp_path, kwargs):
    with pytest.raises(ValueError, match="at least 1 user, 1 movie and 2 ratings"):
        generate(tmp_path, **kwargs)
