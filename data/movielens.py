"""Parse MovieLens (GroupLens raw layouts) into the records TFDS yields.

:func:`load_movielens` reads any release TFDS knows (``dataset``: see :mod:`data.registry`); this
module holds the records and the 100k reader, :mod:`data.readers` the 1m and CSV ones, and
:mod:`data.parsing` what they share (the errors, the checks, the ratings parsers).

The records match ``tensorflow_datasets``' ``movielens/100k-ratings`` and ``movielens/100k-movies``
field for field (the movies add u.item's release date, which TFDS drops): every line is decoded as ISO-8859-1 and stripped, exactly as
``tensorflow_datasets/structured/movielens_parsing.py`` does, so titles such as
"Misérables, Les (1995)" come out identical. String fields are Python ``str`` (TFDS yields the UTF-8
bytes of the same text); ``user_rating``, ``raw_user_age`` and ``bucketized_user_age`` are float32
and ``timestamp`` int64 as in the TFDS feature dictionary. The ratings frame keeps its string
columns as pandas categoricals (integer codes into the distinct values, shared with the movie and
user tables), so 25 million ratings cost a few integers each, not Python strings.

Unlike TFDS, malformed input fails with :class:`DataFormatError` naming the file, the line and the
cause, so a damaged download never turns into silently wrong features. Beyond the layout, values
are checked against what the release can contain (:class:`ReleaseRules`): a rating off the star
scale, an impossible timestamp or a negative user or movie id is damage, not data, and so is a
second rating of one movie by one user (rejected with ``duplicates="reject"``; only logged by
default, see :data:`DUPLICATE_PAIRS`). A file that does not end with a newline was cut off, so it
is rejected too (every GroupLens file ends with one).

u.data, the one large file, is parsed by a vectorised fast path that only accepts the plain layout
(digits, tabs, newlines, no leading zeros) and values that pass every check; anything else goes to
the per-line parser, which finds and names the first bad line, so both give the same records and
errors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .parsing import (DUPLICATE_PAIRS, DataFormatError, check_duplicate_pairs, check_whole_file,
                      column_codes, decode_lines, duplicates_policy, join_ratings, object_column,
                      parse_id, parse_int, parse_ratings_fast, parse_ratings_lines, read_lines,
                      read_raw, split_fields)
from .registry import (FUTURE_SLACK_SECONDS, MOVIELENS_START, RELEASES, ReleaseRules, Variant,
                       variant)

__all__ = [  # the release rules live in data.registry; importable from here as before
    "FUTURE_SLACK_SECONDS", "MOVIELENS_START", "RELEASES", "ReleaseRules", "ML_100K", "GENRES",
    "DataFormatError", "MovieLens", "DUPLICATE_PAIRS", "load_movielens", "read_movies",
    "read_users", "read_ratings", "join_ratings", "column_codes", "object_column",
]

GENRES = (
    "Unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
AGE_THRESHOLDS = (18, 25, 35, 45, 50, 56)
RELEASE_DATE_FORMAT = "%d-%b-%Y"  # u.item's release dates: 01-Jan-1995
OCCUPATION_LABELS = {
    "administrator": "clerical/admin", "artist": "artist", "doctor": "doctor/health care",
    "educator": "academic/educator", "engineer": "technician/engineer",
    "entertainment": "entertainment", "executive": "executive/managerial",
    "healthcare": "doctor/health care", "homemaker": "homemaker", "lawyer": "lawyer",
    "librarian": "librarian", "marketing": "sales/marketing", "none": "other/not specified",
    "other": "other/not specified", "programmer": "programmer", "retired": "retired",
    "salesman": "sales/marketing", "scientist": "scientist", "student": "student",
    "technician": "technician/engineer", "writer": "writer",
}
ML_100K = RELEASES["100k"]


@dataclass(frozen=True)
class MovieLens:
    """Ratings joined with movie and user info (one row per rating) and the movie corpus.

    ratings columns (TFDS' ``movielens/<dataset>-ratings`` features, in its order): movie_id,
        movie_title, movie_genres (tuple of genre names), user_id, user_rating (float32),
        timestamp (int64); 100k and 1m add user_gender (bool: male), bucketized_user_age
        (float32), 100k raw_user_age (float32), and both user_occupation_label,
        user_occupation_text, user_zip_code. String columns are categoricals (see the module
        docstring; :func:`column_codes` gives their codes and distinct values).
    movies columns: movie_id, movie_title, movie_genres, and on 100k movie_release_date
        (datetime64, NaT when unknown); in file order, duplicate titles kept.
    ``dataset``: the release (a :data:`data.registry.VARIANTS` name).
    """

    ratings: pd.DataFrame
    movies: pd.DataFrame
    source: Path
    dataset: str = "100k"

    def __repr__(self) -> str:
        return (f"MovieLens({len(self.ratings)} ratings, {len(self.movies)} movies, "
                f"{self.ratings['user_id'].nunique()} users, from {self.source})")




def read_movies(directory: Path | str) -> pd.DataFrame:
    """u.item -> movie_id, movie_title, movie_genres (TFDS parse_100k_movies_data), and
    movie_release_date (datetime64, NaT where the field is empty; TFDS drops it).

    Raises:
        DataFormatError: naming the line of a bad id, duplicate id, genre flag or release date.
    """
    path = Path(directory) / "u.item"
    ids, titles, genres, dates, seen = [], [], [], [], set()
    for n, line in enumerate(read_lines(path), start=1):
        f = split_fields(path, n, line, "|", 5 + len(GENRES), exact=True)
        parse_id(path, n, "movie id", f[0])
        if f[0] in seen:
            raise DataFormatError(path, n, f"movie id {f[0]} appears twice")
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise DataFormatError(path, n, "genre flags must be 0 or 1")
        seen.add(f[0])
        ids.append(f[0])
        titles.append(f[1])
        genres.append(tuple(g for g, x in zip(GENRES, flags) if x == "1"))
        dates.append((n, f[2]))
    return pd.DataFrame({"movie_id": ids, "movie_title": titles, "movie_genres": genres,
                         "movie_release_date": _release_dates(path, dates)})


def _release_dates(path: Path, fields: list[tuple[int, str]]) -> pd.Series:
    """u.item's release date fields ((line, "01-Jan-1995") each) -> datetime64, NaT where
    empty; parsed at once (one call per line cost 16x the rest of the reader)."""
    texts = pd.Series([text for _, text in fields], dtype=object)
    dates = pd.to_datetime(texts, format=RELEASE_DATE_FORMAT, errors="coerce")
    bad = np.flatnonzero(dates.isna().to_numpy() & (texts != "").to_numpy())
    if bad.size:
        line, text = fields[bad[0]]
        raise DataFormatError(path, line, f"release date {text!r} is not DD-Mon-YYYY (e.g. "
                              "01-Jan-1995)", "Correct the date or leave the field empty, or "
                              "re-download the release.")
    return dates


def _bucketize_age(age: int) -> int:
    bucket = 1
    for threshold in AGE_THRESHOLDS:
        if age < threshold:
            break
        bucket = threshold
    return bucket


def read_users(directory: Path | str) -> pd.DataFrame:
    """u.user -> the TFDS user fields, indexed by user_id."""
    path = Path(directory) / "u.user"
    rows = {}
    for n, line in enumerate(read_lines(path), start=1):
        user_id, age, gender, occupation, zip_code = split_fields(path, n, line, "|", 5, exact=True)
        parse_id(path, n, "user id", user_id)
        if user_id in rows:  # TFDS would silently keep the last row for this id
            raise DataFormatError(path, n, f"user id {user_id} appears twice")
        raw_age = parse_int(path, n, "age", age)
        if occupation not in OCCUPATION_LABELS:
            raise DataFormatError(path, n, f"unknown occupation {occupation!r}")
        rows[user_id] = (gender == "M", float(_bucketize_age(raw_age)), float(raw_age),
                         OCCUPATION_LABELS[occupation], occupation, zip_code)
    cols = ["user_gender", "bucketized_user_age", "raw_user_age", "user_occupation_label",
            "user_occupation_text", "user_zip_code"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols)




def read_ratings(directory: Path | str, movies: pd.DataFrame, users: pd.DataFrame,
                 rules: ReleaseRules = ML_100K, duplicates: str | None = None) -> pd.DataFrame:
    """u.data joined with movie and user info (TFDS parse_100k_ratings_data), in file order.

    ``duplicates``: "reject" or "warn" for repeated (user, movie) pairs; None: DUPLICATE_PAIRS.
    """
    policy = duplicates_policy(duplicates)
    path = Path(directory) / "u.data"
    movie_ids, user_ids = pd.Index(movies["movie_id"]), pd.Index(users.index)
    bounds = rules.timestamp_range()
    raw = read_raw(path)
    check_whole_file(path, raw)
    columns = parse_ratings_fast(raw, movie_ids, user_ids, rules, bounds)
    if columns is None:
        columns = parse_ratings_lines(path, decode_lines(path, raw),
                                       {m: i for i, m in enumerate(movie_ids)},
                                       {u: i for i, u in enumerate(user_ids)}, rules, bounds)
    check_duplicate_pairs(path, columns, user_ids, movie_ids, policy)
    return join_ratings(columns, movies, users)




def load_movielens(directory: Path | str | os.PathLike, rules: ReleaseRules | None = None,
                   duplicates: str | None = None, *, dataset: str | Variant | None = None
                   ) -> MovieLens:
    """Read the files of ``dataset`` (default 100k) from ``directory`` (already located, see
    data.download).

    ``rules``: what the release can contain (default: the dataset's); ``duplicates``: see
    :data:`DUPLICATE_PAIRS`.
    """
    directory = Path(directory)
    v = variant(dataset)
    rules = v.rules if rules is None else rules
    if v.layout.name != "100k":
        from .readers import read_release
        movies, ratings = read_release(directory, v, rules, duplicates)
        return MovieLens(ratings=ratings, movies=movies, source=directory, dataset=v.name)
    movies = read_movies(directory)
    users = read_users(directory)
    ratings = read_ratings(directory, movies, users, rules, duplicates)
    return MovieLens(ratings=ratings, movies=movies, source=directory, dataset=v.name)
