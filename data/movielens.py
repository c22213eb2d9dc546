"""Parse MovieLens 100k (GroupLens raw layout) into the records TFDS yields.

The records match ``tensorflow_datasets``' ``movielens/100k-ratings`` and ``movielens/100k-movies``
field for field: every line is decoded as ISO-8859-1 and stripped, exactly as
``tensorflow_datasets/structured/movielens_parsing.py`` does, so titles such as
"Misérables, Les (1995)" come out identical. String fields are Python ``str`` (TFDS yields the UTF-8
bytes of the same text); ``user_rating``, ``raw_user_age`` and ``bucketized_user_age`` are float32
and ``timestamp`` int64 as in the TFDS feature dictionary.

Unlike TFDS, malformed input fails with :class:`DataFormatError` naming the file, the line and the
cause, so a damaged download never turns into silently wrong features.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GENRES = (
    "Unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
AGE_THRESHOLDS = (18, 25, 35, 45, 50, 56)
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
ENCODING = "ISO-8859-1"


class DataFormatError(ValueError):
    """A raw MovieLens file is malformed; the message names file, line and cause."""

    def __init__(self, path: Path | str, line: int | None, cause: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(
            f"{where}: {cause}. The GroupLens ml-100k files are '|'/tab separated ISO-8859-1 text; "
            "re-download the archive or point --data-dir / TWOSTAGE_DATA_DIR at an intact copy."
        )
        self.path, self.line, self.cause = str(path), line, cause


@dataclass(frozen=True)
class MovieLens:
    """Ratings joined with movie and user info (one row per rating) and the movie corpus.

    ratings columns: movie_id, movie_title, movie_genres (tuple of genre names), user_id,
        user_rating (float32), timestamp (int64), user_gender (bool: male), bucketized_user_age,
        raw_user_age (float32), user_occupation_label, user_occupation_text, user_zip_code.
    movies columns: movie_id, movie_title, movie_genres; in u.item order, duplicate titles kept.
    """

    ratings: pd.DataFrame
    movies: pd.DataFrame
    source: Path

    def __repr__(self) -> str:
        return (f"MovieLens({len(self.ratings)} ratings, {len(self.movies)} movies, "
                f"{self.ratings['user_id'].nunique()} users, from {self.source})")


def _read_lines(path: Path) -> list[str]:
    """Decode a raw file as TFDS does (ISO-8859-1, stripped), rejecting other encodings."""
    if not path.is_file():
        raise DataFormatError(path, None, "file is missing")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataFormatError(path, None, "file is empty")
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise DataFormatError(path, line, "NUL byte found: the file is not ISO-8859-1 text "
                                          "(UTF-16 or binary?)")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for n, line in enumerate(lines, start=1):
        if any(b > 127 for b in line):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                pass  # genuine Latin-1 bytes, as in the GroupLens files
            else:
                raise DataFormatError(path, n, "line is UTF-8 encoded; the GroupLens files are "
                                               "ISO-8859-1 (was the file re-saved?)")
        out.append(line.decode(ENCODING).strip())
    return out


def _split(path: Path, n: int, line: str, sep: str, min_fields: int, exact: bool) -> list[str]:
    fields = line.split(sep)
    if len(fields) < min_fields or (exact and len(fields) != min_fields):
        want = f"{min_fields}" if exact else f"at least {min_fields}"
        raise DataFormatError(path, n, f"expected {want} {sep!r}-separated fields, got "
                                       f"{len(fields)}: {line[:80]!r}")
    return fields


_INT64 = np.iinfo(np.int64)


def _int(path: Path, n: int, name: str, value: str) -> int:
    """``int(value)`` as TFDS' feature encoding reads it, limited to int64 (the TFDS dtype)."""
    try:
        number = int(value)
    except ValueError:
        raise DataFormatError(path, n, f"{name} {value!r} is not an integer") from None
    if not _INT64.min <= number <= _INT64.max:
        raise DataFormatError(path, n, f"{name} {value!r} does not fit in int64")
    return number


def _rating(path: Path, n: int, value: str) -> float:
    """A finite number: 'nan'/'inf' parse as floats but would poison the user_pref labels."""
    try:
        number = float(value)
    except ValueError:
        raise DataFormatError(path, n, f"rating {value!r} is not a number") from None
    if not np.isfinite(number):
        raise DataFormatError(path, n, f"rating {value!r} is not a finite number")
    return number


def read_movies(directory: Path | str) -> pd.DataFrame:
    """u.item -> movie_id, movie_title, movie_genres (TFDS parse_100k_movies_data)."""
    path = Path(directory) / "u.item"
    ids, titles, genres, seen = [], [], [], set()
    for n, line in enumerate(_read_lines(path), start=1):
        f = _split(path, n, line, "|", 5 + len(GENRES), exact=True)
        _int(path, n, "movie id", f[0])
        if f[0] in seen:
            raise DataFormatError(path, n, f"movie id {f[0]} appears twice")
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise DataFormatError(path, n, "genre flags must be 0 or 1")
        seen.add(f[0])
        ids.append(f[0])
        titles.append(f[1])
        genres.append(tuple(g for g, x in zip(GENRES, flags) if x == "1"))
    return pd.DataFrame({"movie_id": ids, "movie_title": titles, "movie_genres": genres})


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
    for n, line in enumerate(_read_lines(path), start=1):
        user_id, age, gender, occupation, zip_code = _split(path, n, line, "|", 5, exact=True)
        _int(path, n, "user id", user_id)
        if user_id in rows:  # TFDS would silently keep the last row for this id
            raise DataFormatError(path, n, f"user id {user_id} appears twice")
        raw_age = _int(path, n, "age", age)
        if occupation not in OCCUPATION_LABELS:
            raise DataFormatError(path, n, f"unknown occupation {occupation!r}")
        rows[user_id] = (gender == "M", float(_bucketize_age(raw_age)), float(raw_age),
                         OCCUPATION_LABELS[occupation], occupation, zip_code)
    cols = ["user_gender", "bucketized_user_age", "raw_user_age", "user_occupation_label",
            "user_occupation_text", "user_zip_code"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols)


def read_ratings(directory: Path | str, movies: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """u.data joined with movie and user info (TFDS parse_100k_ratings_data), in file order."""
    path = Path(directory) / "u.data"
    known_movies, known_users = set(movies["movie_id"]), set(users.index)
    user_ids, movie_ids, ratings, stamps = [], [], [], []
    for n, line in enumerate(_read_lines(path), start=1):
        user_id, movie_id, rating, stamp = _split(path, n, line, "\t", 4, exact=True)
        _int(path, n, "user id", user_id)
        _int(path, n, "movie id", movie_id)
        if movie_id not in known_movies:
            raise DataFormatError(path, n, f"movie id {movie_id!r} is not in u.item")
        if user_id not in known_users:
            raise DataFormatError(path, n, f"user id {user_id!r} is not in u.user")
        ratings.append(_rating(path, n, rating))
        stamps.append(_int(path, n, "timestamp", stamp))
        user_ids.append(user_id)
        movie_ids.append(movie_id)
    movie_info = movies.set_index("movie_id")
    frame = pd.DataFrame({"movie_id": movie_ids})
    frame["movie_title"] = movie_info["movie_title"].reindex(movie_ids).to_numpy()
    frame["movie_genres"] = movie_info["movie_genres"].reindex(movie_ids).to_numpy()
    frame["user_id"] = user_ids
    frame["user_rating"] = np.asarray(ratings, dtype=np.float32)
    frame["timestamp"] = np.asarray(stamps, dtype=np.int64)
    user_info = users.reindex(user_ids).reset_index(drop=True)
    for col in user_info.columns:
        frame[col] = user_info[col].to_numpy()
    frame["user_gender"] = frame["user_gender"].astype(bool)
    for col in ("bucketized_user_age", "raw_user_age"):
        frame[col] = frame[col].astype(np.float32)
    return frame


def load_movielens(directory: Path | str | os.PathLike) -> MovieLens:
    """Read u.item, u.user and u.data from ``directory`` (already located, see data.download)."""
    directory = Path(directory)
    movies = read_movies(directory)
    users = read_users(directory)
    ratings = read_ratings(directory, movies, users)
    return MovieLens(ratings=ratings, movies=movies, source=directory)
