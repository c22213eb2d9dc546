"""The parsing every MovieLens reader shares: raw bytes, line and field checks, the ratings
parsers (a vectorised fast path and the per-line one that names the first bad line), duplicate
pairs, and the join of ratings with their movie and user tables.

:mod:`data.movielens` (the records and the 100k reader) and :mod:`data.readers` (the 1m and CSV
layouts) both build on it; neither imports the other's internals. Every malformed input fails
with :class:`DataFormatError` naming the file, the line and the cause.
"""
from __future__ import annotations

import csv
import io
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .download import file_problem
from .registry import ReleaseRules

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



DUPLICATE_PAIRS = "warn"
"""What a second rating of one movie by one user does: "reject" (DataFormatError naming both
lines) or "warn" (logged, both kept, as TFDS does). "warn" by default: TFDS keeps such pairs, and
the original synthetic generator makes them (docs/decisions.md); no MovieLens release has any."""

log = logging.getLogger(__name__)


def read_raw(path: Path, fix: str | None = None) -> bytes:
    """The bytes of a raw file; what it is instead (directory, link loop, ...) if it is no file."""
    problem = file_problem(path)
    if problem == "missing":
        raise DataFormatError(path, None, "file is missing", fix)
    if problem is not None:
        raise DataFormatError(path, None, f"{path.name} is {problem}", fix)
    try:
        return path.read_bytes()
    except PermissionError as exc:
        raise DataFormatError(
            path, None, f"file cannot be read: permission denied ({exc.strerror or exc})",
            fix="Make it readable for this user (e.g. chmod a+r), or re-download the archive or "
                "point --data-dir / TWOSTAGE_DATA_DIR at a readable copy.") from None
    except OSError as exc:
        raise DataFormatError(path, None,
                              f"file cannot be read: {exc.strerror or exc}", fix) from None


def check_whole_file(path: Path, raw: bytes, fix: str | None = None,
                      encoding: str = ENCODING) -> None:
    """Reject what is wrong with the file as a whole: empty, not text, cut off."""
    if not raw or raw.isspace():  # (no copy, unlike strip)
        raise DataFormatError(path, None, "file is empty", fix)
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise DataFormatError(path, line, f"NUL byte found: the file is not {encoding} text "
                                          "(UTF-16 or binary?)", fix)
    if not raw.endswith(b"\n"):
        # Every GroupLens file ends with a newline; without one the last line may be cut inside a
        # field (a timestamp of 8837) and would still parse.
        line = raw.count(b"\n") + 1
        raise DataFormatError(path, line, f"the file ends in the middle of line {line} (no final "
                                          "newline): it was truncated", fix)


def decode_lines(path: Path, raw: bytes, fix: str | None = None) -> list[str]:
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
                                               "ISO-8859-1 (was the file re-saved?)", fix)
        out.append(line.decode(ENCODING).strip())
    return out


def read_lines(path: Path, fix: str | None = None) -> list[str]:
    """The stripped lines of a raw file, after the whole-file checks."""
    raw = read_raw(path, fix)
    check_whole_file(path, raw, fix)
    return decode_lines(path, raw, fix)


def split_fields(path: Path, n: int, line: str, sep: str, min_fields: int, exact: bool,
           fix: str | None = None) -> list[str]:
    fields = line.split(sep)
    if len(fields) < min_fields or (exact and len(fields) != min_fields):
        want = f"{min_fields}" if exact else f"at least {min_fields}"
        raise DataFormatError(path, n, f"expected {want} {sep!r}-separated fields, got "
                                       f"{len(fields)}: {line[:80]!r}", fix)
    return fields


_INT64 = np.iinfo(np.int64)


def parse_int(path: Path, n: int, name: str, value: str, fix: str | None = None) -> int:
    """``int(value)`` as TFDS' feature encoding reads it, limited to int64 (the TFDS dtype)."""
    try:
        number = int(value)
    except ValueError:
        raise DataFormatError(path, n, f"{name} {value!r} is not an integer", fix) from None
    if not _INT64.min <= number <= _INT64.max:
        raise DataFormatError(path, n, f"{name} {value!r} does not fit in int64", fix)
    return number


def parse_id(path: Path, n: int, name: str, value: str, fix: str | None = None) -> int:
    """A user or movie id: an integer (:func:`parse_int`) that is not negative. MovieLens ids are
    positive; a negative one is damage, and ``twostage recommend --user -3`` would read it as a
    flag."""
    number = parse_int(path, n, name, value, fix)
    if number < 0:
        raise DataFormatError(path, n, f"{name} {value!r} is negative: MovieLens ids are "
                                       "positive integers", fix)
    return number


def parse_rating(path: Path, n: int, value: str, rules: ReleaseRules, fix: str | None = None
            ) -> float:
    """A rating of the release's scale: 'nan', 7 or 4.5 would poison the user_pref labels."""
    try:
        number = float(value)
    except ValueError:
        raise DataFormatError(path, n, f"rating {value!r} is not a number", fix) from None
    if not np.isfinite(number):
        raise DataFormatError(path, n, f"rating {value!r} is not a finite number", fix)
    if number not in rules.rating_values:
        raise DataFormatError(path, n, f"rating {value!r} is not a MovieLens {rules.name} rating "
                                       f"(one of {rules.describe_ratings()})", fix)
    return number


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_timestamp(path: Path, n: int, value: str, bounds: tuple[int, int],
               fix: str | None = None) -> int:
    """Unix seconds within ``bounds`` (see MOVIELENS_START and FUTURE_SLACK_SECONDS)."""
    number = parse_int(path, n, "timestamp", value, fix)
    lo, hi = bounds
    if not lo <= number <= hi:
        raise DataFormatError(path, n, f"timestamp {value!r} is outside the plausible range "
                                       f"{lo}..{hi} ({_utc(lo)} to {_utc(hi)}): MovieLens "
                                       "ratings start in 1995 and none is from the future", fix)
    return number


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""user codes (rows of the user table), movie rows (of the movies frame), ratings (float32),
timestamps (int64): one entry per rating, in file order."""


def parse_ratings_lines(path: Path, lines: list[str], known_movies: dict, known_users: dict,
                         rules: ReleaseRules, bounds: tuple[int, int], sep: str = "\t",
                         names: tuple[str, str] = ("u.item", "u.user"),
                         fix: str | None = None, first_line: int = 1) -> Columns:
    """The per-line ratings parser: exact about the first bad line and why it is bad.

    ``known_movies``/``known_users``: id text -> row; ``names``: the files they come from.
    """
    user_rows, movie_rows, ratings, stamps = [], [], [], []
    for n, line in enumerate(lines, start=first_line):
        user_id, movie_id, rating, stamp = split_fields(path, n, line, sep, 4, exact=True, fix=fix)
        parse_id(path, n, "user id", user_id, fix)
        parse_id(path, n, "movie id", movie_id, fix)
        if movie_id not in known_movies:
            raise DataFormatError(path, n, f"movie id {movie_id!r} is not in {names[0]}", fix)
        if user_id not in known_users:
            raise DataFormatError(path, n, f"user id {user_id!r} is not in {names[1]}", fix)
        ratings.append(parse_rating(path, n, rating, rules, fix))
        stamps.append(parse_timestamp(path, n, stamp, bounds, fix))
        user_rows.append(known_users[user_id])
        movie_rows.append(known_movies[movie_id])
    return (np.asarray(user_rows, dtype=np.int64), np.asarray(movie_rows, dtype=np.int64),
            np.asarray(ratings, dtype=np.float32), np.asarray(stamps, dtype=np.int64))


_PLAIN_BYTES = np.zeros(256, dtype=bool)
_PLAIN_BYTES[list(b"0123456789\t\n")] = True
_MAX_DIGITS = 18  # any 18-digit number fits in int64; longer ones go to the per-line parser


def _plain_layout(data: np.ndarray) -> bool:
    """Digits only, 4 non-empty tab-separated fields per line, each of at most _MAX_DIGITS, none
    with a leading zero (so the text of an id is the decimal of its value)."""
    if not _PLAIN_BYTES[data].all():
        return False
    is_tab, is_sep = data == 9, (data == 9) | (data == 10)
    ends = np.flatnonzero(data == 10)
    tabs_per_line = np.diff(np.cumsum(is_tab)[ends], prepend=0)
    if len(ends) == 0 or (tabs_per_line != 3).any():
        return False
    seps = np.flatnonzero(is_sep)
    widths = np.diff(seps, prepend=-1) - 1  # digits before each separator
    if not (widths.min() >= 1 and widths.max() <= _MAX_DIGITS):
        return False
    starts = seps - widths  # first digit of each field
    return not bool(((data[starts] == ord("0")) & (widths > 1)).any())


_CANONICAL_INT = r"(?:0|[1-9][0-9]{0,17})"


def canonical_ids(ids: pd.Index | pd.Series | np.ndarray) -> np.ndarray | None:
    """The int64 values of id texts that are each the decimal of their value ('7', not '007' or
    '+7'), or None if any is not: only then does parsing a file's ids as integers keep TFDS'
    string ids (and its exact-text joins) intact."""
    text = pd.Series(np.asarray(ids, dtype=object), dtype=object)
    if len(text) and not text.str.fullmatch(_CANONICAL_INT).all():
        return None
    return text.astype(np.int64).to_numpy() if len(text) else np.zeros(0, np.int64)


def lookup_codes(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each of ``values`` in the distinct int64 ``keys``, -1 where absent.

    A dense table when the keys are small non-negative integers (MovieLens ids: O(N), no
    hashing), else a hash lookup.
    """
    values = np.asarray(values, dtype=np.int64)
    if len(keys) and keys.min() >= 0 and keys.max() < max(4 * len(values), 1 << 22):
        table = np.full(int(keys.max()) + 2, -1, dtype=np.int64)
        table[keys] = np.arange(len(keys))
        inside = (values >= 0) & (values <= keys.max())
        out = np.full(len(values), -1, dtype=np.int64)
        out[inside] = table[values[inside]]
        return out
    return pd.Index(keys).get_indexer(values).astype(np.int64)


def parse_ratings_fast(raw: bytes, movie_ids: pd.Index, user_ids: pd.Index,
                        rules: ReleaseRules, bounds: tuple[int, int],
                        sep: bytes = b"\t") -> Columns | None:
    """u.data (or ratings.dat, ``sep=b'::'``) parsed with numpy/pandas, or None when any line or
    value is not plainly valid.

    ``movie_ids``/``user_ids``: the id texts of the movie and user tables, in row order.
    None sends the file to :func:`parse_ratings_lines`, which raises for the first bad line (or
    accepts oddities this path declines, such as spaces around a line), so the result is the same.
    Repeated (user, movie) pairs are left to :func:`_check_duplicate_pairs`, as for that parser.
    """
    if b"\r" in raw:  # CRLF line ends are fine (they are stripped); a lone CR is not
        if raw.count(b"\r") != raw.count(b"\r\n"):
            return None
        raw = raw.replace(b"\r\n", b"\n")
    if sep != b"\t":
        if b"\t" in raw:
            return None
        raw = raw.replace(sep, b"\t")
    if not _plain_layout(np.frombuffer(raw, dtype=np.uint8)):
        return None
    movie_keys, user_keys = canonical_ids(movie_ids), canonical_ids(user_ids)
    if movie_keys is None or user_keys is None:
        return None
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, engine="c", na_filter=False,
                        quoting=csv.QUOTE_NONE, dtype=np.int64)
    if len(frame) != raw.count(b"\n") or frame.shape[1] != 4:
        return None
    user_rows = lookup_codes(frame[0].to_numpy(), user_keys)
    movie_rows = lookup_codes(frame[1].to_numpy(), movie_keys)
    rating = frame[2].to_numpy().astype(np.float64)
    stamp = frame[3].to_numpy()
    ok = ((movie_rows >= 0).all() and (user_rows >= 0).all()
          and np.isin(rating, rules.rating_values).all()
          and bool(((stamp >= bounds[0]) & (stamp <= bounds[1])).all()))
    if not ok:
        return None
    return user_rows, movie_rows, rating.astype(np.float32), stamp.astype(np.int64)


def check_duplicate_pairs(path: Path, columns: Columns, user_ids: pd.Index | np.ndarray,
                          movie_ids: pd.Index | np.ndarray, policy: str, first_line: int = 1,
                          fix: str | None = None) -> None:
    """A second rating of one movie by one user: DataFormatError naming both lines, or a warning.

    Checked once every line has parsed, so a bad value later in the file is reported first.
    ``first_line``: the line number of the first rating (2 below a header line).
    """
    user_rows, movie_rows = columns[0], columns[1]
    key = user_rows * max(len(movie_ids), 1) + movie_rows
    if len(key) < 2 or bool((key[1:] > key[:-1]).all()):
        return  # strictly increasing: no repeat (ml-20m/25m are sorted by user, then movie)
    repeated = pd.Series(key).duplicated(keep="first").to_numpy()
    if not repeated.any():
        return
    second = int(np.argmax(repeated))
    first = int(np.argmax(key == key[second]))
    user_id, movie_id = user_ids[user_rows[second]], movie_ids[movie_rows[second]]
    lines = (first + first_line, second + first_line)
    cause = (f"user {user_id} rated movie {movie_id} twice (lines {lines[0]} and {lines[1]}); "
             "MovieLens has one rating per user and movie")
    if policy == "reject":
        raise DataFormatError(path, lines[1], cause, fix)
    log.warning("%s:%d: %s (%d repeated pairs in all); keeping them all, as TFDS does. Real "
                "MovieLens files never repeat a pair: re-download if this is one.",
                path, lines[1], cause, int(repeated.sum()))


def duplicates_policy(duplicates: str | None) -> str:
    """``duplicates`` or, for None, :data:`DUPLICATE_PAIRS`; ValueError for anything else."""
    policy = DUPLICATE_PAIRS if duplicates is None else duplicates
    if policy not in ("reject", "warn"):
        raise ValueError(f"duplicates must be 'reject' or 'warn', not {policy!r}")
    return policy


def _categorical(codes: np.ndarray, values) -> pd.Categorical:
    """A categorical of ``values[codes]`` whose categories are ``values`` (distinct, as object)."""
    return pd.Categorical.from_codes(codes, categories=pd.Index(np.asarray(values, dtype=object),
                                                                dtype=object))


def _factorized(values) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values as an object array) of a short per-movie or per-user column."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def column_codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N] int64, distinct values [K] object): ``values[codes]`` is the column.

    Free for the categorical columns :func:`load_movielens` builds; other columns (a frame built
    by hand) are factorized. Per-distinct-value work (a vocabulary lookup, tokenising a title)
    then runs K times instead of N.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        cat = column.array
        return (np.asarray(cat.codes, dtype=np.int64),
                np.asarray(cat.categories.to_numpy(dtype=object), dtype=object))
    return _factorized(column.to_numpy(dtype=object))


def object_column(column: pd.Series) -> np.ndarray:
    """The column as an object array whose equal strings are one shared object (N pointers)."""
    codes, values = column_codes(column)
    return values[codes]


def join_ratings(columns: Columns, movies: pd.DataFrame, users: pd.DataFrame | None
                 ) -> pd.DataFrame:
    """One row per rating with its movie's and user's fields, in the TFDS column order.

    ``users``: the user table indexed by user id text (its columns are the demographic fields,
    absent when it has none: the CSV releases).
    """
    user_rows, movie_rows, ratings, stamps = columns
    title_codes, titles = _factorized(movies["movie_title"])
    genres = np.empty(len(movies), dtype=object)
    genres[:] = list(movies["movie_genres"])
    frame = pd.DataFrame({
        "movie_id": _categorical(movie_rows, movies["movie_id"]),
        "movie_title": _categorical(title_codes[movie_rows], titles),
        "movie_genres": genres[movie_rows],
        "user_id": _categorical(user_rows, users.index),
        "user_rating": np.asarray(ratings, dtype=np.float32),
        "timestamp": np.asarray(stamps, dtype=np.int64),
    }, copy=False)  # the columns are ours: no copy (seconds and gigabytes at 25M ratings)
    for col in users.columns:
        values = users[col].to_numpy()
        if values.dtype == object or pd.api.types.is_string_dtype(users[col].dtype):
            codes, uniques = _factorized(values)
            frame[col] = _categorical(codes[user_rows], uniques)
        else:
            frame[col] = values[user_rows]
    if "user_gender" in frame:
        frame["user_gender"] = frame["user_gender"].astype(bool)
    for col in ("bucketized_user_age", "raw_user_age"):
        if col in frame:
            frame[col] = frame[col].astype(np.float32)
    return frame
