"""The release-date recipe's shared pieces (issue 26): u.item's dates, the fixed quarter
buckets, the title-year fallback, the per-title table and its stored form. The towers that
read the table are tested per backend (torch_impl / tfrs_impl test_recipes.py) and against
each other (parity_tests group 8)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twostage.config import Config
from twostage.data.movielens import DataFormatError, load_movielens, read_movies
from twostage.data.synthetic import generate
from twostage.dataset import load_dataset
from twostage.recipes import (NUM_RELEASE_BUCKETS, RecipeData, refuse_in_parallel,
                              release_buckets, release_dates, release_table)
from twostage.errors import UnsupportedOptionError


def test_buckets_are_unknown_earlier_then_one_per_quarter_capped():
    dates = pd.to_datetime(["1922-01-01", "1989-12-31", "1990-01-01", "1990-03-31",
                            "1990-04-01", "1998-02-15", "2030-12-31", "2099-06-01", None])
    got = release_buckets(dates).tolist()
    last = NUM_RELEASE_BUCKETS - 1
    assert got == [1, 1, 2, 2, 3, 2 + 8 * 4 + 0, last, last, 0]
    assert last == 2 + 4 * 41 - 1  # 1990..2030: 41 years of 4 quarters after 0 and 1


def test_dates_fall_back_to_the_year_in_the_title():
    movies = pd.DataFrame({"movie_title": ["Heat (1995)", "Untitled", "Jaws (1975) ", "X (1998)",
                                           "Heat (1995)"],
                           "movie_release_date": pd.to_datetime(["1995-12-15", None, None,
                                                                 None, None])})
    got = release_dates(movies)
    assert got.tolist()[0] == pd.Timestamp("1995-12-15")  # u.item's date wins
    assert pd.isna(got.tolist()[1])                       # neither: unknown
    assert got.tolist()[2:4] == [pd.Timestamp("1975-01-01"), pd.Timestamp("1998-01-01")]
    # a second entry of Heat without a date is not guessed: the title has a given one
    assert pd.isna(got.tolist()[4])
    # a release without the column (1m, csv): every date from the title
    assert release_dates(movies.drop(columns="movie_release_date")).tolist()[0] == \
        pd.Timestamp("1995-01-01")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("ml"), num_users=20, num_movies=12,
                      num_ratings=200, seed=3)
    return load_dataset(Config.of(release_date=True), folder)


def test_table_holds_each_titles_earliest_bucket(dataset):
    spec = dataset.spec
    titles = list(spec.title_vocab[:3])
    # two entries of the first title: the earlier date wins whichever comes first
    table = release_table([titles[0], titles[1], titles[0], titles[2]],
                          pd.to_datetime(["1998-05-01", "1991-01-01", "1996-01-01", None]), spec)
    rows = spec.title_index(titles)
    assert table[rows].tolist() == [2 + 6 * 4, 2 + 4, 0]
    assert table.shape == (spec.num_title_rows,) and table[0] == 0


def test_recipe_data_carries_the_table_and_refuses_a_bad_one(dataset):
    recipe = RecipeData.from_dataset(dataset, Config.of(release_date=True))
    assert recipe.genres is None and recipe.history is None
    assert recipe.releases.shape == (dataset.spec.num_title_rows,)
    assert set(recipe.releases[1:].tolist()) == {2 + 5 * 4}  # the generator's 01-Jan-1995
    again = RecipeData.from_arrays(recipe.to_arrays())
    np.testing.assert_array_equal(again.releases, recipe.releases)
    with pytest.raises(ValueError, match="releases must be"):
        RecipeData.from_arrays({"releases": recipe.releases + NUM_RELEASE_BUCKETS})
    with pytest.raises(UnsupportedOptionError, match="release_date=True"):
        refuse_in_parallel(Config.of(release_date=True, nproc=2))


def test_u_item_dates_are_read_and_a_bad_one_names_its_line(tmp_path):
    folder = generate(tmp_path / "ml", num_users=6, num_movies=8, num_ratings=30, seed=1)
    movies = read_movies(folder)
    assert (movies["movie_release_date"] == pd.Timestamp("1995-01-01")).all()
    path = folder / "u.item"
    lines = path.read_bytes().decode("ISO-8859-1").split("\n")
    fields = lines[2].split("|")
    fields[2] = ""
    lines[2] = "|".join(fields)
    path.write_bytes("\n".join(lines).encode("ISO-8859-1"))
    assert pd.isna(read_movies(folder)["movie_release_date"][2])  # empty: unknown, no error
    fields[2] = "1995-01-01"
    lines[2] = "|".join(fields)
    path.write_bytes("\n".join(lines).encode("ISO-8859-1"))
    with pytest.raises(DataFormatError, match=r"u\.item:3: release date '1995-01-01' is not "
                       r"DD-Mon-YYYY .* Correct the date or leave the field empty"):
        load_movielens(folder)


@pytest.mark.parametrize("dataset_name, layout", [("1m", "1m"), ("25m", "csv")])
def test_releases_without_a_date_field_take_the_year_in_the_title(tmp_path, dataset_name,
                                                                  layout):
    """ml-1m's movies.dat and the CSV releases' movies.csv hold no release date: a title's
    bucket is its title year's first quarter (1 before 1990), 0 for a title without a year."""
    folder = generate(tmp_path / "ml", num_users=20, num_movies=12, num_ratings=200, seed=3,
                      layout=layout)
    config = Config.of(release_date=True, dataset=dataset_name)
    ds = load_dataset(config, folder)
    assert "movie_release_date" not in ds.movielens.movies
    recipe = RecipeData.from_dataset(ds, config)
    for title in ds.movielens.movies["movie_title"].astype(str):
        year = title.rstrip()[-5:-1] if title.rstrip().endswith(")") else ""
        want = (0 if not year.isdigit() else 1 if int(year) < 1990 else
                2 + (int(year) - 1990) * 4)
        assert recipe.releases[ds.spec.title_index([title])[0]] == want, title
    assert recipe.releases.max() > 0
