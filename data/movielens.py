"""Parse MovieLens 100k (GroupLens raw layout) into the records TFDS yields.

The records match ``tensorflow_datasets``' ``movielens/100k-ratings`` and ``movielens/100k-movies``
field for field: every line is decoded as ISO-8859-1 and stripped, exactly as
``tensorflow_datasets/structured/movielens_parsing.py`` does, so titles such as
"Misérables, Les (1995)" come out identical. String fields are Python ``str`` (TFDS yields the UTF-8
bytes of the same text); ``user_rating``, ``raw_user_age`` and ``bucketized_user_age`` are float32
and ``timestamp`` int64 as in the TFDS feature dictionary.

Unlike TFDS, malformed input fails with :class:`DataFormatError` naming the file, the line and the
cause, so a damaged download never turns into silently wrong features. Beyond the layout, values
are checked against what the release can contain (:class:`ReleaseRules`): a rating off the star
scale or an impossible timestamp is damage, not data, and so is a second rating of one movie by one
user (rejected with ``duplicates="reject"``; only logged by default, see :data:`DUPLICATE_PAIRS`).
A file that does not end with a newline was cut off, so it is rejected too (every GroupLens file
ends with one).

u.data, the one large file, is parsed by a vectorised fast path that only accepts the plain layout
(digits, tabs, newlines) and values that pass every check; anything else goes to the per-line
parser, which finds and names the first bad line, so both give the same records and errors.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .download import file_problem

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


_FIX = ("The GroupLens ml-100k files are '|'/tab separated ISO-8859-1 text; re-download the "
        "archive or point --data-dir / TWOSTAGE_DATA_DIR at an intact copy.")


class DataFormatError(ValueError):
    """A raw MovieLens file is malformed or unreadable; the message names file, line, cause, fix.

    ``fix`` replaces the default advice (re-download / point at an intact copy) where a better one
    exists, e.g. for a file that exists but cannot be read.
    """

    def __init__(self, path: Path | str, line: int | None, cause: str, fix: str | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {cause}. {fix or _FIX}")
        self.path, self.line, self.cause, self.fix = str(path), line, cause, fix or _FIX


MOVIELENS_START = 788_918_400
"""1995-01-01T00:00:00Z, the earliest plausible rating time. GroupLens started MovieLens in 1995
(ml-20m and ml-25m, which span its whole history, start on 1995-01-09; ml-100k's first rating is
from 1997-09-20). An earlier u.data timestamp, 0 or negative, is a damaged value, not a rating."""

FUTURE_SLACK_SECONDS = 86_400
"""No rating is from the future: the latest plausible time is now plus one day, the day of slack
covering clocks and time zones of whoever wrote the file. Without an upper bound one absurd value
(2**63-1) would squeeze every real timestamp into the first of the 1,000 timestamp buckets."""


@dataclass(frozen=True)
class ReleaseRules:
    """The values a MovieLens release can contain; anything else in its files is damage.

    ``max_timestamp=None`` means now + FUTURE_SLACK_SECONDS (checked when the file is read).
    """

    name: str
    rating_values: tuple[float, ...]
    min_timestamp: int = MOVIELENS_START
    max_timestamp: int | None = None

    def timestamp_range(self) -> tuple[int, int]:
        """(earliest, latest) accepted timestamp, both inclusive, as of now."""
        latest = self.max_timestamp
        if latest is None:
            latest = int(time.time()) + FUTURE_SLACK_SECONDS
        return self.min_timestamp, latest

    def describe_ratings(self) -> str:
        return ", ".join(f"{v:g}" for v in self.rating_values)


_WHOLE_STARS = (1.0, 2.0, 3.0, 4.0, 5.0)
_HALF_STARS = tuple(k / 2 for k in range(1, 11))  # 0.5, 1.0, ..., 5.0
RELEASES = {
    "100k": ReleaseRules("100k", _WHOLE_STARS),
    # Not read yet; their rules, for when they are:
    "1m": ReleaseRules("1m", _WHOLE_STARS),
    "20m": ReleaseRules("20m", _HALF_STARS),
    "25m": ReleaseRules("25m", _HALF_STARS),
    "latest-small": ReleaseRules("latest-small", _HALF_STARS),
}
ML_100K = RELEASES["100k"]

DUPLICATE_PAIRS = "warn"
"""What a second rating of one movie by one user does: "reject" (DataFormatError naming both
lines) or "warn" (logged, both kept, as TFDS does). No MovieLens release has such pairs, so
"reject" is right for real data; the default stays "warn" only because data/synthetic.py repeats
pairs (3,558 of its 5,000 default ratings) and the test suites load its folders with the default."""

log = logging.getLogger(__name__)


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


def _read_raw(path: Path) -> bytes:
    """The bytes of a raw file; what it is instead (directory, link loop, ...) if it is no file."""
    problem = file_problem(path)
    if problem == "missing":
        raise DataFormatError(path, None, "file is missing")
    if problem is not None:
        raise DataFormatError(path, None, f"{path.name} is {problem}")
    try:
        return path.read_bytes()
    except PermissionError as exc:
        raise DataFormatError(
            path, None, f"file cannot be read: permission denied ({exc.strerror or exc})",
            fix="Make it readable for this user (e.g. chmod a+r), or re-download the archive or "
                "point --data-dir / TWOSTAGE_DATA_DIR at a readable copy.") from None
    except OSError as exc:
        raise DataFormatError(path, None,
                              f"file cannot be read: {exc.strerror or exc}") from None


def _check_whole_file(path: Path, raw: bytes) -> None:
    """Reject what is wrong with the file as a whole: empty, not Latin-1 text, cut off."""
    if not raw.strip():
        raise DataFormatError(path, None, "file is empty")
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise DataFormatError(path, line, "NUL byte found: the file is not ISO-8859-1 text "
                                          "(UTF-16 or binary?)")
    if not raw.endswith(b"\n"):
        # Every GroupLens file ends with a newline; without one the last line may be cut inside a
        # field (a timestamp of 8837) and would still parse.
        line = raw.count(b"\n") + 1
        raise DataFormatError(path, line, f"the file ends in the middle of line {line} (no final "
                                          "newline): it was truncated")


def _decode_lines(path: Path, raw: bytes) -> list[str]:
    """Decode as TFDS does (ISO-8859-1, stripped), rejecting UTF-8 re-saves line by line."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if raw.isascii():  # nothing to tell apart (fast for the all-ASCII u.data / u.user)
        return [line.decode(ENCODING).strip() for line in lines]
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.isascii():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                pass  # genuine Latin-1 bytes, as in the GroupLens files
            else:
                raise DataFormatError(path, n, "line is UTF-8 encoded; the GroupLens files are "
                                               "ISO-8859-1 (was the file re-saved?)")
        out.append(line.decode(ENCODING).strip())
    return out


def _read_lines(path: Path) -> list[str]:
    """The stripped lines of a raw file, after the whole-file checks."""
    raw = _read_raw(path)
    _check_whole_file(path, raw)
    return _decode_lines(path, raw)


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


def _rating(path: Path, n: int, value: str, rules: ReleaseRules) -> float:
    """A rating of the release's scale: 'nan', 7 or 4.5 would poison the user_pref labels."""
    try:
        number = float(value)
    except ValueError:
        raise DataFormatError(path, n, f"rating {value!r} is not a number") from None
    if not np.isfinite(number):
        raise DataFormatError(path, n, f"rating {value!r} is not a finite number")
    if number not in rules.rating_values:
        raise DataFormatError(path, n, f"rating {value!r} is not a MovieLens {rules.name} rating "
                                       f"(one of {rules.describe_ratings()})")
    return number


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _timestamp(path: Path, n: int, value: str, bounds: tuple[int, int]) -> int:
    """Unix seconds within ``bounds`` (see MOVIELENS_START and FUTURE_SLACK_SECONDS)."""
    number = _int(path, n, "timestamp", value)
    lo, hi = bounds
    if not lo <= number <= hi:
        raise DataFormatError(path, n, f"timestamp {value!r} is outside the plausible range "
                                       f"{lo}..{hi} ({_utc(lo)} to {_utc(hi)}): MovieLens "
                                       "ratings start in 1995 and none is from the future")
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


_Columns = tuple[list, list, np.ndarray, np.ndarray]  # user ids, movie ids, ratings, timestamps


def _parse_ratings_lines(path: Path, lines: list[str], known_movies: set, known_users: set,
                         rules: ReleaseRules, bounds: tuple[int, int]) -> _Columns:
    """The per-line u.data parser: exact about the first bad line and why it is bad."""
    user_ids, movie_ids, ratings, stamps = [], [], [], []
    for n, line in enumerate(lines, start=1):
        user_id, movie_id, rating, stamp = _split(path, n, line, "\t", 4, exact=True)
        _int(path, n, "user id", user_id)
        _int(path, n, "movie id", movie_id)
        if movie_id not in known_movies:
            raise DataFormatError(path, n, f"movie id {movie_id!r} is not in u.item")
        if user_id not in known_users:
            raise DataFormatError(path, n, f"user id {user_id!r} is not in u.user")
        ratings.append(_rating(path, n, rating, rules))
        stamps.append(_timestamp(path, n, stamp, bounds))
        user_ids.append(user_id)
        movie_ids.append(movie_id)
    return (user_ids, movie_ids, np.asarray(ratings, dtype=np.float32),
            np.asarray(stamps, dtype=np.int64))


_PLAIN_BYTES = np.zeros(256, dtype=bool)
_PLAIN_BYTES[list(b"0123456789\t\n")] = True
_MAX_DIGITS = 18  # any 18-digit number fits in int64; longer ones go to the per-line parser


def _plain_layout(data: np.ndarray) -> bool:
    """Digits only, 4 non-empty tab-separated fields per line, each of at most _MAX_DIGITS."""
    if not _PLAIN_BYTES[data].all():
        return False
    is_tab, is_sep = data == 9, (data == 9) | (data == 10)
    ends = np.flatnonzero(data == 10)
    tabs_per_line = np.diff(np.cumsum(is_tab)[ends], prepend=0)
    if len(ends) == 0 or (tabs_per_line != 3).any():
        return False
    seps = np.flatnonzero(is_sep)
    widths = np.diff(seps, prepend=-1) - 1  # digits before each separator
    return bool(widths.min() >= 1 and widths.max() <= _MAX_DIGITS)


def _parse_ratings_fast(raw: bytes, known_movies: set, known_users: set, rules: ReleaseRules,
                        bounds: tuple[int, int]) -> _Columns | None:
    """u.data parsed with numpy/pandas, or None when any line or value is not plainly valid.

    None sends the file to :func:`_parse_ratings_lines`, which raises for the first bad line (or
    accepts oddities this path declines, such as spaces around a line), so the result is the same.
    Repeated (user, movie) pairs are left to :func:`_check_duplicate_pairs`, as for that parser.
    """
    if b"\r" in raw:  # CRLF line ends are fine (they are stripped); a lone CR is not
        if raw.count(b"\r") != raw.count(b"\r\n"):
            return None
        raw = raw.replace(b"\r\n", b"\n")
    if not _plain_layout(np.frombuffer(raw, dtype=np.uint8)):
        return None
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, engine="c", na_filter=False,
                        quoting=csv.QUOTE_NONE, dtype={0: str, 1: str, 2: np.int64, 3: np.int64})
    rating = frame[2].to_numpy().astype(np.float64)
    stamp = frame[3].to_numpy()
    ok = (len(frame) == raw.count(b"\n") and frame.shape[1] == 4
          and frame[1].isin(list(known_movies)).all() and frame[0].isin(list(known_users)).all()
          and np.isin(rating, rules.rating_values).all()
          and bool(((stamp >= bounds[0]) & (stamp <= bounds[1])).all()))
    if not ok:
        return None
    return frame[0].tolist(), frame[1].tolist(), rating.astype(np.float32), stamp.astype(np.int64)


def _check_duplicate_pairs(path: Path, user_ids: list, movie_ids: list, policy: str) -> None:
    """A second rating of one movie by one user: DataFormatError naming both lines, or a warning.

    Checked once every line has parsed, so a bad value later in the file is reported first.
    """
    pairs = pd.DataFrame({"user": user_ids, "movie": movie_ids})
    repeated = pairs.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return
    second = int(np.argmax(repeated))
    user_id, movie_id = user_ids[second], movie_ids[second]
    same = (pairs["user"] == user_id).to_numpy() & (pairs["movie"] == movie_id).to_numpy()
    first = int(np.argmax(same))
    cause = (f"user {user_id} rated movie {movie_id} twice (lines {first + 1} and {second + 1}); "
             "MovieLens has one rating per user and movie")
    if policy == "reject":
        raise DataFormatError(path, second + 1, cause)
    log.warning("%s:%d: %s (%d repeated pairs in all); keeping them all, as TFDS does. Real "
                "MovieLens files never repeat a pair: re-download if this is one.",
                path, second + 1, cause, int(repeated.sum()))


def read_ratings(directory: Path | str, movies: pd.DataFrame, users: pd.DataFrame,
                 rules: ReleaseRules = ML_100K, duplicates: str | None = None) -> pd.DataFrame:
    """u.data joined with movie and user info (TFDS parse_100k_ratings_data), in file order.

    ``duplicates``: "reject" or "warn" for repeated (user, movie) pairs; None: DUPLICATE_PAIRS.
    """
    policy = DUPLICATE_PAIRS if duplicates is None else duplicates
    if policy not in ("reject", "warn"):
        raise ValueError(f"duplicates must be 'reject' or 'warn', not {policy!r}")
    path = Path(directory) / "u.data"
    known_movies, known_users = set(movies["movie_id"]), set(users.index)
    bounds = rules.timestamp_range()
    raw = _read_raw(path)
    _check_whole_file(path, raw)
    columns = _parse_ratings_fast(raw, known_movies, known_users, rules, bounds)
    if columns is None:
        columns = _parse_ratings_lines(path, _decode_lines(path, raw), known_movies, known_users,
                                       rules, bounds)
    _check_duplicate_pairs(path, columns[0], columns[1], policy)
    return _join(columns, movies, users)


def _join(columns: _Columns, movies: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """One row per rating with its movie's and user's fields, in the TFDS column order."""
    user_ids, movie_ids, ratings, stamps = columns
    movie_info = movies.set_index("movie_id")
    frame = pd.DataFrame({"movie_id": movie_ids})
    frame["movie_title"] = movie_info["movie_title"].reindex(movie_ids).to_numpy()
    frame["movie_genres"] = movie_info["movie_genres"].reindex(movie_ids).to_numpy()
    frame["user_id"] = user_ids
    frame["user_rating"] = ratings
    frame["timestamp"] = stamps
    user_info = users.reindex(user_ids).reset_index(drop=True)
    for col in user_info.columns:
        frame[col] = user_info[col].to_numpy()
    frame["user_gender"] = frame["user_gender"].astype(bool)
    for col in ("bucketized_user_age", "raw_user_age"):
        frame[col] = frame[col].astype(np.float32)
    return frame


def load_movielens(directory: Path | str | os.PathLike, rules: ReleaseRules = ML_100K,
                   duplicates: str | None = None) -> MovieLens:
    """Read u.item, u.user and u.data from ``directory`` (already located, see data.download).

    ``rules``: what the release can contain; ``duplicates``: see :data:`DUPLICATE_PAIRS`.
    """
    directory = Path(directory)
    movies = read_movies(directory)
    users = read_users(directory)
    ratings = read_ratings(directory, movies, users, rules, duplicates)
    return MovieLens(ratings=ratings, movies=movies, source=directory)
