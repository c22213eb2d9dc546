"""Vectorised readers of the 1m ('::') and CSV (20m, 25m, latest-small) layouts.

Each gives the records TFDS' own parsers give (``tensorflow_datasets/structured/
movielens_parsing.py``: ``parse_1m_*`` and ``parse_current_*``, values typed by the
``movielens/<name>-ratings`` FeaturesDict), checked record by record in
data/tests/test_readers.py:

- 1m: every line decoded as ISO-8859-1 and stripped, split on '::'; genres split on '|' with
  "Children's" renamed "Children"; ``bucketized_user_age`` is the file's age (already bucketed);
  the occupation is an index into TFDS' list of 21 labels (K-12 and college students labelled
  "student"). No ``raw_user_age``.
- CSV: ``csv.DictReader`` semantics (quoted titles with commas and doubled quotes, nothing
  stripped), UTF-8; genres split on '|'. No demographic fields.

Files are validated as the 100k reader validates its own (:mod:`data.movielens`): a bad line fails
with :class:`~data.movielens.DataFormatError` naming file, line, cause and fix. The large ratings
file is checked vectorised; only to name the first bad line is that one line parsed on its own.
A CSV line must hold a whole record with its quotes closed (no GroupLens file has a title spanning
lines), so an unclosed quote is reported on its line instead of swallowing the rest of the file.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .parsing import (Columns, DataFormatError, canonical_ids, check_duplicate_pairs,
                      check_whole_file, decode_lines, duplicates_policy, join_ratings,
                      lookup_codes, parse_id, parse_int, parse_rating, parse_ratings_fast,
                      parse_ratings_lines, parse_timestamp, read_lines, read_raw)
from .registry import TFDS_GENRES, ReleaseRules, Variant

FIX_1M = ("The GroupLens ml-1m files are '::'-separated ISO-8859-1 text; re-download the "
          "archive or point --data-dir / TWOSTAGE_DATA_DIR at an intact copy.")
FIX_CSV = ("The GroupLens ml-20m, ml-25m and ml-latest-small files are UTF-8 CSV with a header "
           "line; re-download the archive or point --data-dir / TWOSTAGE_DATA_DIR at an intact "
           "copy.")

# TFDS parse_1m_ratings_data: occupation index -> label; the two student labels are merged.
OCCUPATIONS_1M = (
    "other/not specified", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care", "executive/managerial",
    "farmer", "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed",
    "writer",
)
STUDENTS_1M = ("K-12 student", "college/grad student")
AGES_1M = (1, 18, 25, 35, 45, 50, 56)  # the lowest age of each range (README of ml-1m)
_KNOWN_GENRES = frozenset(TFDS_GENRES)


def read_release(directory: Path, v: Variant, rules: ReleaseRules, duplicates: str | None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(movies, ratings) of a 1m or CSV folder (see :func:`data.movielens.load_movielens`)."""
    policy = duplicates_policy(duplicates)
    if v.layout.name == "1m":
        return _read_1m(Path(directory), rules, policy)
    if v.layout.name == "csv":
        return _read_csv(Path(directory), rules, policy)
    raise ValueError(f"no reader for the {v.layout.name!r} layout")


# --------------------------------------------------------------------------- shared checks

_PLAIN_INT = r"[+-]?[0-9]{1,18}"  # surely an int64; anything else is looked at by parse_int


def _check_ints(path: Path, values: pd.Series, name: str, first_line: int, fix: str) -> None:
    """Every value an integer that fits int64, as ``parse_int`` (Python's ``int``) reads one; else
    name the first bad line. Vectorised: a regex over the column, ``parse_int`` on the rest only."""
    suspect = ~values.str.fullmatch(_PLAIN_INT).to_numpy(dtype=bool)
    for row in np.flatnonzero(suspect):
        parse_int(path, int(row) + first_line, name, values.iat[row], fix)  # raises if it is bad


def _check_ids(path: Path, values: pd.Series, name: str, first_line: int, fix: str) -> None:
    """:func:`_check_ints`, and no id negative (MovieLens ids are positive; see ``parse_id``)."""
    _check_ints(path, values, name, first_line, fix)
    for row in np.flatnonzero(values.str.contains("-", regex=False).to_numpy(dtype=bool)):
        parse_id(path, int(row) + first_line, name, values.iat[row], fix)  # raises if negative


def _check_unique(path: Path, values: pd.Series, name: str, first_line: int, fix: str) -> None:
    twice = values.duplicated().to_numpy()
    if twice.any():
        row = int(np.argmax(twice))
        raise DataFormatError(path, row + first_line, f"{name} {values.iat[row]} appears twice",
                              fix)


def _genres(path: Path, field: pd.Series, first_line: int, fix: str,
            rename: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """'A|B' -> ('A', 'B') per movie (TFDS ``split('|')``), every name one TFDS can encode."""
    lists = field.str.split("|", regex=False)
    flat = lists.explode()
    if rename:
        flat = flat.replace(rename)
    unknown = ~flat.isin(_KNOWN_GENRES).to_numpy()
    if unknown.any():
        at = int(np.argmax(unknown))
        raise DataFormatError(path, int(flat.index[at]) + first_line,
                              f"unknown genre {flat.iat[at]!r} (TFDS knows "
                              f"{', '.join(TFDS_GENRES)})", fix)
    if rename:
        return [tuple(rename.get(g, g) for g in names) for names in lists.tolist()]
    return [tuple(names) for names in lists.tolist()]


# --------------------------------------------------------------------------- 1m


def _dat_fields(path: Path, n_fields: int, fix: str) -> pd.DataFrame:
    """The '::'-separated fields of every line (decoded and stripped as TFDS does)."""
    lines = pd.Series(read_lines(path, fix), dtype=object)
    parts = lines.str.split("::", regex=False)
    counts = parts.str.len().to_numpy()
    bad = np.flatnonzero(counts != n_fields)
    if bad.size:
        row = int(bad[0])
        raise DataFormatError(path, row + 1, f"expected {n_fields} '::'-separated fields, got "
                                             f"{counts[row]}: {lines.iat[row][:80]!r}", fix)
    return pd.DataFrame(parts.tolist(), columns=range(n_fields), dtype=object)


def read_movies_1m(directory: Path | str) -> pd.DataFrame:
    """movies.dat -> movie_id, movie_title, movie_genres (TFDS parse_1m_movies_data)."""
    path = Path(directory) / "movies.dat"
    f = _dat_fields(path, 3, FIX_1M)
    _check_ids(path, f[0], "movie id", 1, FIX_1M)
    _check_unique(path, f[0], "movie id", 1, FIX_1M)
    genres = _genres(path, f[2], 1, FIX_1M, rename={"Children's": "Children"})
    return pd.DataFrame({"movie_id": f[0].to_numpy(dtype=object),
                         "movie_title": f[1].to_numpy(dtype=object), "movie_genres": genres})


def read_users_1m(directory: Path | str) -> pd.DataFrame:
    """users.dat -> the TFDS 1m user fields, indexed by user_id."""
    path = Path(directory) / "users.dat"
    f = _dat_fields(path, 5, FIX_1M)
    _check_ids(path, f[0], "user id", 1, FIX_1M)
    _check_unique(path, f[0], "user id", 1, FIX_1M)
    _check_ints(path, f[2], "age", 1, FIX_1M)
    _check_ints(path, f[3], "occupation", 1, FIX_1M)
    age, occupation = f[2].astype(np.int64).to_numpy(), f[3].astype(np.int64).to_numpy()
    checks = (
        (~f[1].isin(("M", "F")).to_numpy(), lambda r: f"gender {f[1].iat[r]!r} is not M or F"),
        (~np.isin(age, AGES_1M), lambda r: f"age {f[2].iat[r]!r} is not one of the ml-1m age "
                                           f"groups {', '.join(map(str, AGES_1M))}"),
        ((occupation < 0) | (occupation >= len(OCCUPATIONS_1M)),
         lambda r: f"occupation {f[3].iat[r]!r} is not an ml-1m occupation index "
                   f"(0..{len(OCCUPATIONS_1M) - 1})"),
    )
    _raise_first(path, checks, 1, FIX_1M)
    text = np.asarray(OCCUPATIONS_1M, dtype=object)[occupation]
    label = np.where(np.isin(text, STUDENTS_1M), "student", text).astype(object)
    return pd.DataFrame({
        "user_gender": (f[1] == "M").to_numpy(),
        "bucketized_user_age": age.astype(np.float32),
        "user_occupation_label": label,
        "user_occupation_text": text,
        "user_zip_code": f[4].to_numpy(dtype=object),
    }, index=pd.Index(f[0].to_numpy(dtype=object), dtype=object, name="user_id"))


def _raise_first(path: Path, checks, first_line: int, fix: str) -> None:
    """``checks``: (bad mask, cause of row) pairs; raise for the earliest bad row of any."""
    rows = [(int(np.argmax(bad)), cause) for bad, cause in checks if bad.any()]
    if rows:
        row, cause = min(rows, key=lambda rc: rc[0])
        raise DataFormatError(path, row + first_line, cause(row), fix)


def _read_1m(directory: Path, rules: ReleaseRules, policy: str
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    movies = read_movies_1m(directory)
    users = read_users_1m(directory)
    path = directory / "ratings.dat"
    raw = read_raw(path, FIX_1M)
    check_whole_file(path, raw, FIX_1M)
    movie_ids, user_ids = pd.Index(movies["movie_id"]), users.index
    bounds = rules.timestamp_range()
    columns = parse_ratings_fast(raw, movie_ids, user_ids, rules, bounds, sep=b"::")
    if columns is None:  # not plainly valid: the per-line parser names the first bad line
        columns = parse_ratings_lines(
            path, decode_lines(path, raw, FIX_1M), {m: i for i, m in enumerate(movie_ids)},
            {u: i for i, u in enumerate(user_ids)}, rules, bounds, sep="::",
            names=("movies.dat", "users.dat"), fix=FIX_1M)
    check_duplicate_pairs(path, columns, user_ids, movie_ids, policy, fix=FIX_1M)
    return movies, join_ratings(columns, movies, users)


# --------------------------------------------------------------------------- CSV


def _decode_utf8(path: Path, raw: bytes, first_line: int = 1) -> str:
    """The text of ``raw`` (lines from ``first_line`` on); the first line that is not UTF-8 is
    named (a Latin-1 re-save, say)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + first_line
        raise DataFormatError(path, line, f"byte 0x{raw[exc.start]:02x} is not UTF-8: the "
                                          "file is not UTF-8 text (re-saved as Latin-1?)",
                              FIX_CSV) from None


def _normalise_line_ends(path: Path, raw: bytes) -> bytes:
    """CRLF -> LF (TFDS reads in text mode); a lone CR, which would split a line there, is damage."""
    if b"\r" not in raw:
        return raw
    lone = raw.replace(b"\r\n", b"").find(b"\r")
    if lone >= 0:
        text = raw.replace(b"\r\n", b"\n")
        at = text.find(b"\r")
        raise DataFormatError(path, text[:at].count(b"\n") + 1,
                              "carriage return (\\r) inside a line", FIX_CSV)
    return raw.replace(b"\r\n", b"\n")


def _check_header(path: Path, raw: bytes, expected: str, records: str) -> int:
    """The header line must be the GroupLens one, and ``records`` ('ratings', 'movies') follow
    it; returns the offset of the first record."""
    end = raw.find(b"\n")
    head = raw[:end].decode("utf-8", errors="replace")
    if head != expected:
        hint = " (a UTF-8 byte order mark before it)" if head.startswith("\ufeff") else ""
        raise DataFormatError(path, 1, f"header is {head[:80]!r}{hint}, expected {expected!r}",
                              FIX_CSV)
    if end + 1 == len(raw):  # (the file ends with a newline: check_whole_file)
        raise DataFormatError(path, None, f"the file holds only its header line: no "
                                          f"{records} follow it", FIX_CSV)
    return end + 1


def _csv_line_structure(path: Path, raw: bytes, n_fields: int, first_line: int = 1) -> None:
    """Every line one record: quotes closed on the line, ``n_fields`` fields, not blank.

    Vectorised over the bytes: a comma separates fields where the quotes before it on its line
    are even in number (closed).
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    quotes = np.cumsum(data == 34)
    per_line_quotes = np.diff(quotes[ends], prepend=0)
    separators = np.cumsum((data == 44) & (quotes % 2 == 0))
    fields = np.diff(separators[ends], prepend=0) + 1
    lengths = np.diff(ends, prepend=-1) - 1
    checks = (
        (per_line_quotes % 2 == 1,
         lambda r: "unclosed quote: the line has an odd number of '\"', so a quoted field "
                   "is not closed on it (was a title cut, or its quotes not doubled?)"),
        (lengths == 0, lambda r: "blank line"),
        ((fields != n_fields) & (lengths > 0),
         lambda r: f"expected {n_fields} comma-separated fields, got {fields[r]}: "
                   f"{_line(raw, ends, r)[:80]!r}"),
    )
    _raise_first(path, checks, first_line, FIX_CSV)


def _line(raw: bytes, ends: np.ndarray, row: int) -> str:
    start = 0 if row == 0 else int(ends[row - 1]) + 1
    return raw[start: int(ends[row])].decode("utf-8", errors="replace")


def read_movies_csv(directory: Path | str) -> pd.DataFrame:
    """movies.csv -> movie_id, movie_title, movie_genres (TFDS parse_current_movies_data)."""
    path = Path(directory) / "movies.csv"
    raw = read_raw(path, FIX_CSV)
    check_whole_file(path, raw, FIX_CSV, "UTF-8")
    raw = _normalise_line_ends(path, raw)
    _decode_utf8(path, raw)
    _check_header(path, raw, "movieId,title,genres", "movies")
    _csv_line_structure(path, raw, 3)
    f = pd.read_csv(io.BytesIO(raw), dtype=str, na_filter=False, keep_default_na=False,
                    engine="c", encoding="utf-8", quoting=csv.QUOTE_MINIMAL,
                    skip_blank_lines=False)
    ids = f["movieId"].astype(object)
    _check_ids(path, ids, "movie id", 2, FIX_CSV)
    _check_unique(path, ids, "movie id", 2, FIX_CSV)
    genres = _genres(path, f["genres"].astype(object), 2, FIX_CSV)
    return pd.DataFrame({"movie_id": ids.to_numpy(dtype=object),
                         "movie_title": f["title"].to_numpy(dtype=object),
                         "movie_genres": genres})


_ALLOWED_RATINGS_BYTES = b"0123456789,.\n"
# A field such as '007': a '0' after a separator, then a digit. Regexes with a literal prefix
# scan at memchr speed; any hit sends the file to the per-line parser, which keeps the text.
_LEADING_ZERO = (re.compile(rb",0[0-9]"), re.compile(rb"\n0[0-9]"))


def _plain_ratings(raw: bytes, body: int) -> bool:
    """Only digits, ',', '.' and newlines from offset ``body`` on, and no leading zeros: the ids'
    text is then the decimal of their value (what the int64 columns keep)."""
    others = raw.translate(None, _ALLOWED_RATINGS_BYTES)  # no copy of the body: usually tiny
    if others != raw[:body].translate(None, _ALLOWED_RATINGS_BYTES):
        return False
    if raw[body: body + 1] == b"0" and raw[body + 1: body + 2].isdigit():
        return False
    return not any(pattern.search(raw, body) for pattern in _LEADING_ZERO)


_RATING_COLUMNS = {"userId": np.int64, "movieId": np.int64, "rating": np.float64,
                   "timestamp": np.int64}


def _parse_csv_block(path: Path, raw: bytes, movie_keys: np.ndarray, rules: ReleaseRules,
                     bounds: tuple[int, int]) -> Columns | None:
    """The columns of plain ``raw`` (a header line, then records) parsed vectorised, with user
    id values in place of user codes; None if pandas rejects its layout or a value is bad."""
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=_RATING_COLUMNS, engine="c",
                            na_filter=False, skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError):
        return None  # a missing or extra field, an empty value
    if len(frame) != raw.count(b"\n") - 1 or list(frame.columns) != list(_RATING_COLUMNS):
        return None
    users = frame["userId"].to_numpy()
    movie_rows = lookup_codes(frame["movieId"].to_numpy(), movie_keys)
    rating = frame["rating"].to_numpy()
    stamp = frame["timestamp"].to_numpy()
    del frame
    bad = ((users < 0) | (movie_rows < 0) | ~np.isin(rating, rules.rating_values)
           | (stamp < bounds[0]) | (stamp > bounds[1]))
    if bad.any():
        return None
    return users, movie_rows, rating.astype(np.float32), stamp


def _int_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, code of each value): O(N) with a table for MovieLens-sized ids."""
    if len(values) and values.min() >= 0 and values.max() < max(4 * len(values), 1 << 22):
        present = np.zeros(int(values.max()) + 1, dtype=bool)
        present[values] = True
        code_of = np.cumsum(present, dtype=np.int64) - 1
        return np.flatnonzero(present), code_of[values]
    uniques, codes = np.unique(values, return_inverse=True)
    return uniques, codes.astype(np.int64).ravel()


def _parse_csv_lines(path: Path, body: bytes, known_movies: dict, rules: ReleaseRules,
                     bounds: tuple[int, int], first_line: int = 2
                     ) -> tuple[list[str], Columns]:
    """TFDS' csv.DictReader reading of the records ``body`` (no header), row by row, exact about
    the first bad line (numbered from ``first_line``).

    Returns the user id texts (as written, in order of their value) and the columns with user
    codes into them.
    """
    _csv_line_structure(path, body, 4, first_line)
    text = _decode_utf8(path, body, first_line)
    user_text, user_rows, movie_rows, ratings, stamps = {}, [], [], [], []
    for n, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=first_line):
        user_id, movie_id, rating, stamp = row
        parse_id(path, n, "user id", user_id, FIX_CSV)
        parse_id(path, n, "movie id", movie_id, FIX_CSV)
        if movie_id not in known_movies:
            raise DataFormatError(path, n, f"movie id {movie_id!r} is not in movies.csv",
                                  FIX_CSV)
        ratings.append(parse_rating(path, n, rating, rules, FIX_CSV))
        stamps.append(parse_timestamp(path, n, stamp, bounds, FIX_CSV))
        user_rows.append(user_text.setdefault(user_id, len(user_text)))
        movie_rows.append(known_movies[movie_id])
    texts = sorted(user_text, key=lambda t: (int(t), t))  # as the vectorised path orders them
    remap = np.empty(len(texts), dtype=np.int64)
    remap[[user_text[t] for t in texts]] = np.arange(len(texts))
    return texts, (remap[np.asarray(user_rows, dtype=np.int64)],
                   np.asarray(movie_rows, dtype=np.int64),
                   np.asarray(ratings, dtype=np.float32), np.asarray(stamps, dtype=np.int64))


_LOCATE_BLOCK_BYTES = 16 << 20


def _line_blocks(raw: bytes, body: int):
    """(first line number, bytes) of line-aligned blocks of about _LOCATE_BLOCK_BYTES records."""
    line, start = 2, body
    while start < len(raw):
        end = raw.find(b"\n", min(start + _LOCATE_BLOCK_BYTES, len(raw) - 1)) + 1 or len(raw)
        yield line, raw[start:end]
        line += raw.count(b"\n", start, end)
        start = end


def _locate_bad_line(path: Path, raw: bytes, body: int, movie_ids: pd.Index,
                     rules: ReleaseRules, bounds: tuple[int, int]) -> None:
    """Raise for the first bad line of ratings.csv, if it has one, block by block: a block that
    the vectorised parser accepts is skipped, any other is read line by line (which raises)."""
    keys = canonical_ids(movie_ids)
    known = {m: i for i, m in enumerate(movie_ids)}
    header = raw[:body]
    for first_line, block in _line_blocks(raw, body):
        if (keys is not None and _plain_ratings(block, 0)
                and _parse_csv_block(path, header + block, keys, rules, bounds) is not None):
            continue
        _parse_csv_lines(path, block, known, rules, bounds, first_line)


def read_ratings_csv(directory: Path | str, movies: pd.DataFrame, rules: ReleaseRules,
                     policy: str) -> pd.DataFrame:
    """ratings.csv joined with movies.csv (TFDS parse_current_ratings_data), in file order.

    Vectorised when the file is plain (digits, ',', '.', no leading zeros) and every value
    valid; otherwise the first bad line is found block by block and named, and a file with odd
    but valid lines ('+5', quoted numbers) is read line by line.
    """
    path = Path(directory) / "ratings.csv"
    raw = read_raw(path, FIX_CSV)
    check_whole_file(path, raw, FIX_CSV, "UTF-8")
    raw = _normalise_line_ends(path, raw)
    body = _check_header(path, raw, "userId,movieId,rating,timestamp", "ratings")
    bounds = rules.timestamp_range()
    movie_ids = pd.Index(movies["movie_id"], dtype=object)
    keys = canonical_ids(movie_ids)
    parsed = None
    if keys is not None and _plain_ratings(raw, body):
        parsed = _parse_csv_block(path, raw, keys, rules, bounds)
    if parsed is not None:
        user_values, user_rows = _int_codes(parsed[0])
        columns = (user_rows, *parsed[1:])
        user_ids = user_values.astype(str).astype(object)
    else:
        _locate_bad_line(path, raw, body, movie_ids, rules, bounds)
        user_ids, columns = _parse_csv_lines(path, raw[body:], dict(
            (m, i) for i, m in enumerate(movie_ids)), rules, bounds)
    del raw, parsed
    user_index = pd.Index(np.asarray(user_ids, dtype=object), dtype=object, name="user_id")
    check_duplicate_pairs(path, columns, user_index, movie_ids, policy, first_line=2,
                          fix=FIX_CSV)
    return join_ratings(columns, movies, pd.DataFrame(index=user_index))


def _read_csv(directory: Path, rules: ReleaseRules, policy: str
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    movies = read_movies_csv(directory)
    return movies, read_ratings_csv(directory, movies, rules, policy)
