"""data.readers (1m '::' and CSV layouts) against TFDS' own parsers, record by record, on
generated folders with the quirks of real files; and their errors on bad input (file, line,
cause, fix), vectorised and per-line parsing giving the same records."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from twostage.data import readers
from twostage.data.movielens import DataFormatError, load_movielens
from twostage.data.synthetic import generate

from . import tfds_reference as reference

CSV_RELEASES = ("20m", "25m", "latest-small")


# --------------------------------------------------------------------------- helpers


def lines_of(path: Path, encoding: str) -> list[str]:
    return path.read_bytes().decode(encoding).split("\n")


def set_line(path: Path, lineno: int, text: str, encoding: str = "utf-8") -> None:
    """Replace 1-based line ``lineno`` of ``path`` (final newline kept)."""
    lines = lines_of(path, encoding)
    lines[lineno - 1] = text
    path.write_bytes("\n".join(lines).encode(encoding))


def expect(folder: Path, dataset: str, name: str, line: int | None, match: str,
           **kwargs) -> DataFormatError:
    """load_movielens fails naming the file and line, with the cause and a fix."""
    with pytest.raises(DataFormatError, match=match) as info:
        load_movielens(folder, dataset=dataset, **kwargs)
    err, msg = info.value, str(info.value)
    assert err.path == str(folder / name) and err.line == line
    assert msg.startswith(f"{folder / name}:{line}: " if line is not None else f"{folder / name}: ")
    assert "re-download" in msg
    return err


@pytest.fixture
def dir_1m(tmp_path) -> Path:
    return generate(tmp_path / "ml-1m", layout="1m", num_users=25, num_movies=30,
                    num_ratings=300, seed=4)


@pytest.fixture
def dir_csv(tmp_path) -> Path:
    return generate(tmp_path / "ml-csv", layout="csv", num_users=25, num_movies=30,
                    num_ratings=300, seed=4)


# --------------------------------------------------------------------------- TFDS equality


@pytest.fixture(scope="module")
def features_1m(tf, tmp_path_factory):
    return reference.tfds_features(tmp_path_factory.mktemp("tfds"), "1m")


@pytest.fixture(scope="module")
def features_csv(tf, tmp_path_factory):
    return {name: reference.tfds_features(tmp_path_factory.mktemp("tfds"), name)
            for name in CSV_RELEASES}


def test_1m_records_equal_tfds(dir_1m, features_1m):
    """Children's renamed, Latin-1 titles with commas and quotes, CRLF, spaces around lines."""
    movies = dir_1m / "movies.dat"
    set_line(movies, 3, f"{lines_of(movies, 'latin-1')[2].split('::')[0]}::Enfants du "
                        "paradis, Les (\"Misérables\") (1945)::Children's|Comedy", "latin-1")
    users = dir_1m / "users.dat"
    set_line(users, 2, "  " + lines_of(users, "latin-1")[1] + " \t", "latin-1")
    for path in (movies, users, dir_1m / "ratings.dat"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    ml = load_movielens(dir_1m, dataset="1m", duplicates="reject")
    assert ("Children", "Comedy") in set(ml.movies["movie_genres"])
    assert "raw_user_age" not in ml.ratings
    reference.check_against_tfds(ml, features_1m, "1m")


@pytest.mark.parametrize("dataset", CSV_RELEASES)
def test_csv_records_equal_tfds(dir_csv, features_csv, dataset):
    """Quoted titles with commas and doubled quotes, non-Latin-1 letters, '(no genres listed)'."""
    ml = load_movielens(dir_csv, dataset=dataset, duplicates="reject")
    titles = list(ml.movies["movie_title"])
    assert any("," in t for t in titles) and any('"' in t for t in titles)
    assert any(any(ord(c) > 255 for c in t) for t in titles)
    assert ("(no genres listed)",) in set(ml.movies["movie_genres"])
    assert list(ml.ratings.columns) == ["movie_id", "movie_title", "movie_genres", "user_id",
                                        "user_rating", "timestamp"]
    assert ml.dataset == dataset
    reference.check_against_tfds(ml, features_csv[dataset], "csv")


def test_csv_odd_but_valid_records_equal_tfds(dir_csv, features_csv):
    """What csv.DictReader accepts and the vectorised path declines: '+7', '007' and quoted
    numbers in ratings.csv, CRLF line ends, quotes after a field's start."""
    ratings, movies = dir_csv / "ratings.csv", dir_csv / "movies.csv"
    first = lines_of(ratings, "utf-8")[1].split(",")
    set_line(ratings, 2, ",".join(["+" + first[0], *first[1:]]))
    set_line(ratings, 3, '"007",' + ",".join(lines_of(ratings, "utf-8")[2].split(",")[1:]))
    movie = lines_of(movies, "utf-8")[4].split(",")[0]
    set_line(movies, 5, f'{movie},Title "quoted" after its start (1999),Drama')
    for path in (ratings, movies):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    ml = load_movielens(dir_csv, dataset="25m")
    assert "+" + first[0] in set(ml.ratings["user_id"]) and "007" in set(ml.ratings["user_id"])
    reference.check_against_tfds(ml, features_csv["25m"], "csv")


# --------------------------------------------------------------------------- vectorised = per line


def test_1m_fast_path_equals_per_line_parser(dir_1m, monkeypatch):
    fast = load_movielens(dir_1m, dataset="1m").ratings
    monkeypatch.setattr(readers, "parse_ratings_fast", lambda *a, **k: None)
    slow = load_movielens(dir_1m, dataset="1m").ratings
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)


def test_csv_fast_path_equals_per_line_parser(dir_csv, monkeypatch):
    fast = load_movielens(dir_csv, dataset="25m").ratings
    monkeypatch.setattr(readers, "_parse_csv_block", lambda *a, **k: None)
    slow = load_movielens(dir_csv, dataset="25m").ratings
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)


def test_generated_larger_folder_loads_vectorised(tmp_path, monkeypatch):
    """The vectorised path is what reads a plain file (the per-line parser is never called)."""
    folder = generate(tmp_path, layout="csv", num_users=300, num_movies=200,
                      num_ratings=20_000, seed=1)

    def forbidden(*args, **kwargs):
        raise AssertionError("the per-line parser ran on a plain file")

    monkeypatch.setattr(readers, "_parse_csv_lines", forbidden)
    ml = load_movielens(folder, dataset="25m", duplicates="reject")
    assert len(ml.ratings) == 20_000 and ml.ratings["user_id"].nunique() == 300


# --------------------------------------------------------------------------- 1m: bad input


@pytest.mark.parametrize("name, lineno, text, cause", [
    ("ratings.dat", 4, "1::2::3", r"expected 4 '::'-separated fields, got 3: '1::2::3'"),
    ("ratings.dat", 6, "1::2::3::978300760::9", "expected 4 '::'-separated fields, got 5"),
    ("ratings.dat", 5, "1:2::3::978300760", "expected 4 '::'-separated fields, got 3"),
    ("movies.dat", 2, "2::No genres (1995)", "expected 3 '::'-separated fields, got 2"),
    ("users.dat", 3, "3::F::25::7", "expected 5 '::'-separated fields, got 4"),
])
def test_1m_missing_field(dir_1m, name, lineno, text, cause):
    set_line(dir_1m / name, lineno, text, "latin-1")
    expect(dir_1m, "1m", name, lineno, cause)


def _field_1m(path: Path, lineno: int, index: int, value: str) -> None:
    fields = lines_of(path, "latin-1")[lineno - 1].split("::")
    fields[index] = value
    set_line(path, lineno, "::".join(fields), "latin-1")


@pytest.mark.parametrize("name, lineno, index, value, cause", [
    ("ratings.dat", 7, 2, "five", "rating 'five' is not a number"),
    ("ratings.dat", 7, 2, "4.5", r"rating '4.5' is not a MovieLens 1m rating \(one of 1, 2, 3, "
                                 r"4, 5\)"),
    ("ratings.dat", 8, 1, "99999", "movie id '99999' is not in movies.dat"),
    ("ratings.dat", 8, 0, "99999", "user id '99999' is not in users.dat"),
    ("ratings.dat", 9, 3, "12", "timestamp '12' is outside the plausible range"),
    ("movies.dat", 4, 2, "Comedy|Sitcom", "unknown genre 'Sitcom'"),
    ("movies.dat", 4, 0, "four", "movie id 'four' is not an integer"),
    ("users.dat", 5, 1, "X", "gender 'X' is not M or F"),
    ("users.dat", 5, 2, "30", "age '30' is not one of the ml-1m age groups 1, 18, 25"),
    ("users.dat", 5, 3, "21", r"occupation '21' is not an ml-1m occupation index \(0\.\.20\)"),
    ("users.dat", 5, 3, "x", "occupation 'x' is not an integer"),
    ("users.dat", 5, 0, "-5", "user id '-5' is negative: MovieLens ids are positive"),
    ("movies.dat", 4, 0, "-4", "movie id '-4' is negative: MovieLens ids are positive"),
])
def test_1m_bad_values(dir_1m, name, lineno, index, value, cause):
    _field_1m(dir_1m / name, lineno, index, value)
    expect(dir_1m, "1m", name, lineno, cause)


def test_1m_duplicate_ids_and_pairs(dir_1m):
    movies = dir_1m / "movies.dat"
    first_id = lines_of(movies, "latin-1")[0].split("::")[0]
    _field_1m(movies, 6, 0, first_id)
    expect(dir_1m, "1m", "movies.dat", 6, f"movie id {first_id} appears twice")


@pytest.mark.parametrize("dataset, name, sep, encoding, first", [
    ("1m", "ratings.dat", "::", "latin-1", 2), ("25m", "ratings.csv", ",", "utf-8", 3)])
def test_repeated_pair_rejected_naming_both_lines(tmp_path, dataset, name, sep, encoding, first):
    """Line numbers count from the file's first line (the CSV header is line 1)."""
    folder = generate(tmp_path, layout="csv" if sep == "," else "1m", num_users=25,
                      num_movies=30, num_ratings=300, seed=4)
    path = folder / name
    user, movie = lines_of(path, encoding)[first - 1].split(sep)[:2]
    fields = lines_of(path, encoding)[19].split(sep)
    set_line(path, 20, sep.join([user, movie, *fields[2:]]), encoding)
    expect(folder, dataset, name, 20, rf"user {user} rated movie {movie} twice \(lines {first} "
                                      r"and 20\)", duplicates="reject")


def test_1m_encoding_and_truncation(dir_1m):
    movies = dir_1m / "movies.dat"
    latin1 = movies.read_bytes()
    movies.write_bytes(latin1.decode("latin-1").encode("utf-8"))
    line = next(i for i, t in enumerate(lines_of(movies, "utf-8"), 1) if not t.isascii())
    expect(dir_1m, "1m", "movies.dat", line, "line is UTF-8 encoded; the GroupLens files are "
                                             "ISO-8859-1")
    movies.write_bytes(latin1)
    ratings = dir_1m / "ratings.dat"
    raw = ratings.read_bytes()
    ratings.write_bytes(raw[:-3])
    expect(dir_1m, "1m", "ratings.dat", raw.count(b"\n"), r"no final newline\): it was truncated")


def test_1m_missing_file(dir_1m):
    (dir_1m / "users.dat").unlink()
    expect(dir_1m, "1m", "users.dat", None, "file is missing")


# --------------------------------------------------------------------------- CSV: bad input


def _field_csv(path: Path, lineno: int, index: int, value: str) -> None:
    fields = lines_of(path, "utf-8")[lineno - 1].split(",")
    fields[index] = value
    set_line(path, lineno, ",".join(fields))


def test_csv_unclosed_quote(dir_csv):
    movies = dir_csv / "movies.csv"
    movie = lines_of(movies, "utf-8")[5].split(",")[0]
    set_line(movies, 6, f'{movie},"Unclosed, title (1999),Drama')
    expect(dir_csv, "25m", "movies.csv", 6, "unclosed quote: the line has an odd number of '\"'")


@pytest.mark.parametrize("name, lineno, text, cause", [
    ("movies.csv", 4, "3,Comma, unquoted (1995),Drama",
     "expected 3 comma-separated fields, got 4: '3,Comma, unquoted"),
    ("ratings.csv", 5, "1,2,3.5", "expected 4 comma-separated fields, got 3: '1,2,3.5'"),
    ("ratings.csv", 7, "1,2,3.5,1147880044,x", "expected 4 comma-separated fields, got 5"),
    ("ratings.csv", 6, "", "blank line"),
    ("ratings.csv", 1, "user,movie,rating,timestamp",
     "header is 'user,movie,rating,timestamp', expected 'userId,movieId,rating,timestamp'"),
    ("movies.csv", 1, "\ufeffmovieId,title,genres", r"\(a UTF-8 byte order mark before it\)"),
])
def test_csv_bad_layout(dir_csv, name, lineno, text, cause):
    set_line(dir_csv / name, lineno, text)
    expect(dir_csv, "25m", name, lineno, cause)


@pytest.mark.parametrize("lineno, index, value, cause", [
    (4, 2, "five", "rating 'five' is not a number"),
    (4, 2, "", "rating '' is not a number"),
    (9, 2, "5.5", r"rating '5.5' is not a MovieLens 25m rating \(one of 0.5, 1, 1.5, 2, 2.5, 3, "
                  r"3.5, 4, 4.5, 5\)"),
    (9, 2, "0", "rating '0' is not a MovieLens 25m rating"),
    (9, 2, "nan", "rating 'nan' is not a finite number"),
    (6, 1, "999999", "movie id '999999' is not in movies.csv"),
    (6, 1, "1.5", "movie id '1.5' is not an integer"),
    (8, 0, "u1", "user id 'u1' is not an integer"),
    (8, 0, "-3", "user id '-3' is negative: MovieLens ids are positive"),  # issue 21
    (8, 3, str(2 ** 63 - 1), "is outside the plausible range"),
    (8, 3, "1147880044.5", "timestamp '1147880044.5' is not an integer"),
])
def test_csv_bad_rating_values(dir_csv, lineno, index, value, cause):
    _field_csv(dir_csv / "ratings.csv", lineno, index, value)
    expect(dir_csv, "25m", "ratings.csv", lineno, cause)


def test_csv_earliest_bad_line_wins(dir_csv):
    """Several bad values: the first line in the file is named, whatever the kind."""
    path = dir_csv / "ratings.csv"
    _field_csv(path, 12, 2, "9")
    _field_csv(path, 7, 1, "999999")
    _field_csv(path, 9, 3, "5")
    expect(dir_csv, "25m", "ratings.csv", 7, "movie id '999999' is not in movies.csv")


def test_csv_bad_line_found_in_a_later_block(tmp_path, monkeypatch):
    """The first bad line is located block by block: blocks before it are checked vectorised,
    and the line number counts the lines of those blocks."""
    folder = generate(tmp_path, layout="csv", num_users=50, num_movies=40, num_ratings=1500,
                      seed=2)
    monkeypatch.setattr(readers, "_LOCATE_BLOCK_BYTES", 500)
    calls = []
    real = readers._parse_csv_lines
    monkeypatch.setattr(readers, "_parse_csv_lines",
                        lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    _field_csv(folder / "ratings.csv", 1234, 2, "six")
    expect(folder, "25m", "ratings.csv", 1234, "rating 'six' is not a number")
    assert len(calls) == 1 and calls[0] <= 1234  # only the bad block was read line by line


@pytest.mark.parametrize("name", ["movies.csv", "ratings.csv"])
def test_csv_encoding_and_line_ends(dir_csv, name):
    path = dir_csv / name
    raw = path.read_bytes()
    lines = raw.split(b"\n")

    def with_line_3(line: bytes) -> None:
        path.write_bytes(b"\n".join([*lines[:2], line, *lines[3:]]))

    with_line_3(lines[2] + b"\xe9")  # a Latin-1 'é': not UTF-8
    expect(dir_csv, "25m", name, 3, r"byte 0xe9 is not UTF-8")
    with_line_3(lines[2].replace(b",", b"\r,", 1))  # TFDS would start a new line there
    expect(dir_csv, "25m", name, 3, r"carriage return \(\\r\) inside a line")
    path.write_bytes(raw[:-1])
    expect(dir_csv, "25m", name, raw.count(b"\n"), "no final newline")


def test_csv_movies_file_values(dir_csv):
    movies = dir_csv / "movies.csv"
    first_id = lines_of(movies, "utf-8")[1].split(",")[0]
    set_line(movies, 7, f"{first_id},Again (2001),Drama")
    expect(dir_csv, "25m", "movies.csv", 7, f"movie id {first_id} appears twice")
    set_line(movies, 7, "x7,Again (2001),Drama")
    expect(dir_csv, "25m", "movies.csv", 7, "movie id 'x7' is not an integer")
    set_line(movies, 7, "-7,Again (2001),Drama")
    expect(dir_csv, "25m", "movies.csv", 7, "movie id '-7' is negative")
    set_line(movies, 7, "123456789,Again (2001),")
    expect(dir_csv, "25m", "movies.csv", 7, "unknown genre ''")


@pytest.mark.parametrize("name", ["movies.csv", "ratings.csv"])
def test_csv_missing_or_empty_file(dir_csv, name):
    (dir_csv / name).write_bytes(b"")
    expect(dir_csv, "latest-small", name, None, "file is empty")
    (dir_csv / name).unlink()
    expect(dir_csv, "latest-small", name, None, "file is missing")


@pytest.mark.parametrize("name, header, what", [
    ("ratings.csv", "userId,movieId,rating,timestamp", "no rating"),
    ("movies.csv", "movieId,title,genres", "no movie")])
def test_csv_header_only_file(dir_csv, name, header, what):
    """Issue 21: a ratings.csv of its header alone failed later with "zero-size array to
    reduction operation"; a header-only file is named as such."""
    (dir_csv / name).write_text(header + "\n")
    expect(dir_csv, "latest-small", name, None, f"holds only its header line: {what}")


def test_folder_of_another_layout_is_named(dir_1m):
    """load_movielens itself (no resolve_data_dir) names the file it lacks."""
    expect(dir_1m, "25m", "movies.csv", None, "file is missing")


def test_timestamp_bounds_are_the_releases(dir_csv):
    _field_csv(dir_csv / "ratings.csv", 3, 3, str(int(time.time()) + 3 * 86_400))
    expect(dir_csv, "20m", "ratings.csv", 3, "none is from the future")
