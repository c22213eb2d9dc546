"""data.movielens against tensorflow_datasets' own 100k parsers, and its errors on bad input.

The reference (data/tests/tfds_reference.py) is ``tensorflow_datasets.structured.
movielens_parsing`` run on the same folder, typed by the ``movielens/100k-*`` FeaturesDicts; our
columns must be equal field by field, row by row, with the same numpy dtypes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twostage.data.movielens import DataFormatError, load_movielens, read_movies
from twostage.data.synthetic import generate

from . import tfds_reference as reference

RATING_FIELDS = ("movie_id", "movie_title", "movie_genres", "user_id", "user_rating", "timestamp",
                 "user_gender", "bucketized_user_age", "raw_user_age", "user_occupation_label",
                 "user_occupation_text", "user_zip_code")
MOVIE_FIELDS = ("movie_id", "movie_title", "movie_genres", "movie_release_date")


# --- the TFDS reference (data/tests/tfds_reference.py) ------------------------------------------
@pytest.fixture(scope="module")
def tfds_features(tf, tmp_path_factory):
    """FeaturesDicts of movielens/100k-ratings and -movies (built offline, nothing downloaded)."""
    return reference.tfds_features(tmp_path_factory.mktemp("tfds"), "100k")


def check_against_tfds(directory: Path, tfds_features) -> None:
    reference.check_against_tfds(load_movielens(directory), tfds_features)


def test_synthetic_records_equal_tfds(synthetic_dir, tfds_features):
    check_against_tfds(synthetic_dir, tfds_features)


def test_quirky_layout_records_equal_tfds(tmp_path, tfds_features):
    """CRLF line ends, spaces and Latin-1 bytes in titles parse as in TFDS.

    (A missing final newline, which TFDS accepts, is now rejected as a truncated file: see
    test_hostile_data.py::test_no_final_newline_is_truncation.)
    """
    folder = generate(tmp_path, num_users=12, num_movies=20, num_ratings=60, seed=3)
    item = folder / "u.item"
    set_line(item, 2, with_field(item, 2, 1, " Misérables, Les \xa0(1995)  "))
    for name in ("u.item", "u.user", "u.data"):
        raw = (folder / name).read_bytes().replace(b"\n", b"\r\n")
        (folder / name).write_bytes(raw)
    assert load_movielens(folder).movies["movie_title"][1] == " Misérables, Les \xa0(1995)  "
    check_against_tfds(folder, tfds_features)


@pytest.mark.real_data
def test_real_records_equal_tfds(real_data_dir, tfds_features):
    check_against_tfds(real_data_dir, tfds_features)


@pytest.mark.real_data
def test_real_data_shape(real_movielens):
    """The published ml-100k sizes, and TFDS' quirks we must keep (duplicate titles)."""
    ml = real_movielens
    assert len(ml.ratings) == 100_000 and len(ml.movies) == 1682
    assert ml.ratings["user_id"].nunique() == 943
    assert ml.movies["movie_title"].nunique() < 1682  # duplicate titles under other ids
    assert "Misérables, Les (1995)" in set(ml.movies["movie_title"])


def test_repr_and_types(synthetic_movielens):
    ml = synthetic_movielens
    assert "ratings" in repr(ml) and str(ml.source) in repr(ml)
    assert list(ml.ratings.columns) == list(RATING_FIELDS)
    assert list(ml.movies.columns) == list(MOVIE_FIELDS)
    assert ml.ratings["timestamp"].dtype == np.int64
    assert ml.ratings["user_rating"].dtype == np.float32


# --- bad input ----------------------------------------------------------------------------------
@pytest.fixture
def small_dir(tmp_path) -> Path:
    """A small, valid synthetic folder to damage."""
    return generate(tmp_path / "ml", num_users=6, num_movies=8, num_ratings=30, seed=1)


def set_line(path: Path, lineno: int, text: str | bytes) -> None:
    """Replace 1-based line ``lineno`` of ``path`` (ISO-8859-1 text unless bytes are given)."""
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = text if isinstance(text, bytes) else text.encode("ISO-8859-1")
    path.write_bytes(b"\n".join(lines))


def field(path: Path, lineno: int, index: int) -> str:
    sep = "\t" if path.name == "u.data" else "|"
    return path.read_bytes().decode("ISO-8859-1").split("\n")[lineno - 1].split(sep)[index]


def with_field(path: Path, lineno: int, index: int, value: str) -> str:
    sep = "\t" if path.name == "u.data" else "|"
    fields = path.read_bytes().decode("ISO-8859-1").split("\n")[lineno - 1].split(sep)
    fields[index] = value
    return sep.join(fields)


def expect_error(directory: Path, name: str, line: int | None, *causes: str) -> DataFormatError:
    """load_movielens fails naming the file, the line (when there is one) and the cause."""
    with pytest.raises(DataFormatError) as info:
        load_movielens(directory)
    err, msg = info.value, str(info.value)
    assert err.path == str(directory / name) and str(directory / name) in msg
    assert err.line == line
    if line is not None:
        assert f"{directory / name}:{line}:" in msg
    for cause in causes:
        assert cause in msg, f"{cause!r} not in {msg!r}"
    assert "re-download" in msg  # the message says how to fix it
    return err


@pytest.mark.parametrize("name", ["u.item", "u.user", "u.data"])
def test_missing_file(small_dir, name):
    (small_dir / name).unlink()
    expect_error(small_dir, name, None, "file is missing")


@pytest.mark.parametrize("name", ["u.item", "u.user", "u.data"])
@pytest.mark.parametrize("content", [b"", b"\n \n"])
def test_empty_file(small_dir, name, content):
    (small_dir / name).write_bytes(content)
    expect_error(small_dir, name, None, "file is empty")


@pytest.mark.parametrize("name, lineno, text, count", [
    ("u.data", 3, "1\t2\t3", "got 3"),
    ("u.data", 5, "1\t2\t3\t874724710\t9", "got 5"),
    ("u.data", 2, "1 2 3 874724710", "got 1"),  # spaces instead of tabs
    ("u.item", 4, "4|Title (1995)|01-Jan-1995||http://x|" + "|".join("0" * 18), "got 23"),
    ("u.user", 2, "2|30|M|student|12345|extra", "got 6"),
    ("u.user", 6, "6|30|M|student", "got 4"),
])
def test_wrong_column_count(small_dir, name, lineno, text, count):
    set_line(small_dir / name, lineno, text)
    expect_error(small_dir, name, lineno, "separated fields", count)


def test_blank_line_in_the_middle(small_dir):
    set_line(small_dir / "u.data", 7, "")
    expect_error(small_dir, "u.data", 7, "got 1")


@pytest.mark.parametrize("name, lineno, index, value, cause", [
    ("u.data", 4, 2, "five", "rating 'five' is not a number"),
    ("u.data", 4, 2, "", "rating '' is not a number"),
    ("u.data", 9, 2, "nan", "rating 'nan' is not a finite number"),
    ("u.data", 9, 2, "inf", "rating 'inf' is not a finite number"),
    ("u.data", 6, 3, "88x1250949", "timestamp '88x1250949' is not an integer"),
    ("u.data", 6, 3, "881250949.5", "timestamp '881250949.5' is not an integer"),
    ("u.data", 6, 3, "9" * 25, "does not fit in int64"),
    ("u.data", 2, 0, "u1", "user id 'u1' is not an integer"),
    ("u.data", 2, 1, "m1", "movie id 'm1' is not an integer"),
    ("u.item", 3, 0, "three", "movie id 'three' is not an integer"),
    ("u.user", 5, 0, "five", "user id 'five' is not an integer"),
    ("u.user", 5, 1, "thirty", "age 'thirty' is not an integer"),
    ("u.data", 8, 1, "999", "movie id '999' is not in u.item"),
    ("u.data", 11, 0, "777", "user id '777' is not in u.user"),
    ("u.item", 5, 0, "2", "movie id 2 appears twice"),
    ("u.user", 4, 0, "1", "user id 1 appears twice"),
    ("u.item", 2, 7, "2", "genre flags must be 0 or 1"),
    ("u.user", 3, 3, "astronaut", "unknown occupation 'astronaut'"),
])
def test_bad_field_values(small_dir, name, lineno, index, value, cause):
    """Non-numeric fields, unknown or repeated ids, bad flags: one line naming file and line."""
    set_line(small_dir / name, lineno, with_field(small_dir / name, lineno, index, value))
    expect_error(small_dir, name, lineno, cause)


def test_utf8_encoded_file(small_dir):
    """A re-saved UTF-8 u.item would silently turn 'é' into 'Ã©' under TFDS' Latin-1 decoding."""
    path = small_dir / "u.item"
    set_line(path, 6, with_field(path, 6, 1, "Misérables, Les (1995)"))
    path.write_bytes(path.read_bytes().decode("ISO-8859-1").encode("utf-8"))
    expect_error(small_dir, "u.item", 6, "UTF-8", "ISO-8859-1")


def test_utf8_bom_file(small_dir):
    path = small_dir / "u.user"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    expect_error(small_dir, "u.user", 1, "UTF-8")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_encoded_file(small_dir, encoding):
    path = small_dir / "u.data"
    path.write_bytes(path.read_bytes().decode("ISO-8859-1").encode(encoding))
    expect_error(small_dir, "u.data", 1, "NUL byte", "UTF-16")


def test_nul_byte_later_in_file_names_its_line(small_dir):
    path = small_dir / "u.item"
    set_line(path, 4, with_field(path, 4, 1, "Bad\x00Title"))
    expect_error(small_dir, "u.item", 4, "NUL byte")


def test_latin1_bytes_that_are_not_utf8_are_accepted(small_dir):
    """The real files hold raw Latin-1 bytes such as 0xe9 ('é'): those must parse."""
    path = small_dir / "u.item"
    set_line(path, 2, with_field(path, 2, 1, "Café Noir à Paris (1995)"))
    assert read_movies(small_dir)["movie_title"][1] == "Café Noir à Paris (1995)"


def test_error_is_a_value_error():
    """Callers (the CLI) may catch ValueError; the attributes carry the parts of the message."""
    err = DataFormatError("/x/u.data", 12, "rating 'a' is not a number")
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.cause) == ("/x/u.data", 12, "rating 'a' is not a number")
    assert str(err).startswith("/x/u.data:12: rating 'a' is not a number.")
