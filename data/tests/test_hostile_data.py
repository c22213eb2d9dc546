"""data.movielens on hostile input: truncated files, impossible values, repeated pairs, things that
are not files, unreadable files; and the vectorised u.data parser against the per-line one.

Each test reproduces one finding of a user report (a cut-off u.data that parsed, ratings of 7 or
timestamps of 2**63-1 that were accepted, tracebacks or "file is missing" where the file was a
directory or unreadable) and checks the DataFormatError names file, line, cause and fix.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from twostage.data import movielens as ml
from twostage.data.movielens import (MOVIELENS_START, RELEASES, DataFormatError, ReleaseRules,
                                     load_movielens, read_movies, read_ratings, read_users)
from twostage.data.synthetic import generate


@pytest.fixture
def clean_dir(tmp_path) -> Path:
    """A small valid synthetic folder whose u.data has one rating per (user, movie) pair.

    (data.synthetic repeats pairs; the first occurrence of each is kept here.)
    """
    folder = generate(tmp_path / "ml", num_users=20, num_movies=30, num_ratings=80, seed=2)
    seen, kept = set(), []
    for line in (folder / "u.data").read_text(encoding="ISO-8859-1").splitlines():
        pair = tuple(line.split("\t")[:2])
        if pair not in seen:
            seen.add(pair)
            kept.append(line)
    assert len(kept) >= 20
    (folder / "u.data").write_text("\n".join(kept) + "\n", encoding="ISO-8859-1")
    return folder


def lines_of(path: Path) -> list[str]:
    return path.read_bytes().decode("ISO-8859-1").split("\n")


def set_field(path: Path, lineno: int, index: int, value: str) -> None:
    """Set field ``index`` of 1-based line ``lineno`` (final newline kept)."""
    sep = "\t" if path.name == "u.data" else "|"
    lines = lines_of(path)
    fields = lines[lineno - 1].split(sep)
    fields[index] = value
    lines[lineno - 1] = sep.join(fields)
    path.write_bytes("\n".join(lines).encode("ISO-8859-1"))


def expect(directory: Path, name: str, line: int | None, match: str,
           **kwargs) -> DataFormatError:
    """load_movielens fails with a DataFormatError naming the file and line and matching."""
    with pytest.raises(DataFormatError, match=match) as info:
        load_movielens(directory, **kwargs)
    err, msg = info.value, str(info.value)
    assert err.path == str(directory / name)
    assert err.line == line
    assert msg.startswith(f"{directory / name}:{line}: " if line is not None
                          else f"{directory / name}: ")
    assert "re-download" in msg
    return err


# --- 1. a file cut off without a final newline --------------------------------------------------
def test_truncated_timestamp_is_rejected(clean_dir):
    """The report: u.data cut inside its last timestamp (8837...) used to parse."""
    path = clean_dir / "u.data"
    raw = path.read_bytes()
    last = raw.rstrip(b"\n").rsplit(b"\n", 1)[1]
    assert last.split(b"\t")[3].startswith(b"8")
    cut = raw[: len(raw) - len(last) - 1 + len(last.rsplit(b"\t", 1)[0]) + 1 + 4]
    assert cut.rsplit(b"\t", 1)[1] == last.split(b"\t")[3][:4]  # e.g. b"8837"
    path.write_bytes(cut)
    n = cut.count(b"\n") + 1
    expect(clean_dir, "u.data", n,
           rf"the file ends in the middle of line {n} \(no final newline\): it was truncated")


@pytest.mark.parametrize("name", ["u.data", "u.item", "u.user"])
@pytest.mark.parametrize("cut", [1, 3])
def test_no_final_newline_is_truncation(clean_dir, name, cut):
    """Any of the three files without its final newline (cut 1: only the newline is gone)."""
    path = clean_dir / name
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut])
    n = raw.count(b"\n")
    expect(clean_dir, name, n, rf"ends in the middle of line {n} \(no final newline\)")


def test_crlf_with_final_crlf_is_fine(clean_dir):
    for name in ("u.data", "u.item", "u.user"):
        path = clean_dir / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert len(load_movielens(clean_dir).ratings) == len(lines_of(clean_dir / "u.data")) - 1


@pytest.mark.real_data
def test_real_files_end_with_a_newline(real_data_dir):
    """What makes the rule safe: every GroupLens file we read ends with '\\n'."""
    for name in ("u.data", "u.item", "u.user"):
        assert (real_data_dir / name).read_bytes().endswith(b"\n"), name


# --- 3. values outside what MovieLens 100k can contain ------------------------------------------
@pytest.mark.parametrize("value", ["7", "-3", "0", "4.5", "6", "0.5"])
def test_rating_off_the_100k_scale(clean_dir, value):
    set_field(clean_dir / "u.data", 5, 2, value)
    expect(clean_dir, "u.data", 5,
           rf"rating '{value}' is not a MovieLens 100k rating \(one of 1, 2, 3, 4, 5\)")


@pytest.mark.parametrize("value", [str(2**63 - 1), "-1", "0", str(MOVIELENS_START - 1),
                                   str(int(time.time()) + 2 * 86_400)])
def test_implausible_timestamp(clean_dir, value):
    set_field(clean_dir / "u.data", 7, 3, value)
    expect(clean_dir, "u.data", 7,
           rf"timestamp '{value}' is outside the plausible range {MOVIELENS_START}\.\.\d+ "
           r"\(1995-01-01 00:00:00 UTC to .*\): MovieLens ratings start in 1995")


@pytest.mark.parametrize("value", [str(MOVIELENS_START), str(int(time.time()))])
def test_timestamp_range_is_inclusive(clean_dir, value):
    set_field(clean_dir / "u.data", 7, 3, value)
    assert load_movielens(clean_dir).ratings["timestamp"][6] == int(value)


@pytest.mark.parametrize("name, index, what", [("u.user", 0, "user id"),
                                               ("u.item", 0, "movie id")])
def test_negative_id(clean_dir, name, index, what):
    """Issue 21: userId -3 was accepted (MovieLens ids are positive; a negative one also reads
    as a flag on the command line: `twostage recommend --user -3`)."""
    set_field(clean_dir / name, 4, index, "-3")
    expect(clean_dir, name, 4, rf"{what} '-3' is negative: MovieLens ids are positive")


def test_repeated_pair_rejected_naming_both_lines(clean_dir):
    path = clean_dir / "u.data"
    user, movie = lines_of(path)[2].split("\t")[:2]
    set_field(path, 9, 0, user)
    set_field(path, 9, 1, movie)
    expect(clean_dir, "u.data", 9,
           rf"user {user} rated movie {movie} twice \(lines 3 and 9\); MovieLens has one rating "
           "per user and movie", duplicates="reject")


def test_repeated_pair_warns_by_default(clean_dir, caplog):
    """The default stays lenient while data/synthetic.py repeats pairs (see DUPLICATE_PAIRS)."""
    assert ml.DUPLICATE_PAIRS == "warn"
    path = clean_dir / "u.data"
    user, movie = lines_of(path)[2].split("\t")[:2]
    set_field(path, 9, 0, user)
    set_field(path, 9, 1, movie)
    with caplog.at_level(logging.WARNING, logger=ml.__name__):
        ratings = load_movielens(clean_dir).ratings
    assert len(ratings) == len(lines_of(path)) - 1  # both kept, as TFDS does
    assert f"{path}:9: user {user} rated movie {movie} twice (lines 3 and 9)" in caplog.text
    assert "1 repeated pairs in all" in caplog.text


def test_bad_value_before_a_repeat_is_reported(clean_dir):
    """The pair check runs after every line parsed: a bad value anywhere wins over a repeat."""
    path = clean_dir / "u.data"
    user, movie = lines_of(path)[1].split("\t")[:2]
    set_field(path, 4, 0, user)
    set_field(path, 4, 1, movie)
    set_field(path, 12, 2, "9")
    expect(clean_dir, "u.data", 12, "rating '9'", duplicates="reject")


def test_unknown_duplicates_policy(clean_dir):
    with pytest.raises(ValueError, match="duplicates must be 'reject' or 'warn', not 'drop'"):
        load_movielens(clean_dir, duplicates="drop")


def test_release_table():
    assert RELEASES["100k"].rating_values == (1, 2, 3, 4, 5)
    assert RELEASES["1m"].rating_values == (1, 2, 3, 4, 5)
    for name in ("20m", "25m", "latest-small"):
        assert RELEASES[name].rating_values == (0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)
    lo, hi = RELEASES["100k"].timestamp_range()
    assert lo == MOVIELENS_START == 788_918_400  # 1995-01-01T00:00:00Z
    assert abs(hi - (time.time() + 86_400)) < 60


def test_rules_are_applied_per_release(clean_dir):
    """A half-star release accepts 4.5; a fixed max_timestamp is honoured."""
    set_field(clean_dir / "u.data", 5, 2, "4.5")
    movies, users = read_movies(clean_dir), read_users(clean_dir)
    ratings = read_ratings(clean_dir, movies, users, RELEASES["20m"])
    assert ratings["user_rating"][4] == 4.5
    stamp = int(lines_of(clean_dir / "u.data")[0].split("\t")[3])
    early = ReleaseRules("test", (1.0, 2.0, 3.0, 4.0, 4.5, 5.0), max_timestamp=stamp - 1)
    with pytest.raises(DataFormatError, match=rf"timestamp '{stamp}' is outside .*\.\.{stamp - 1} "):
        read_ratings(clean_dir, movies, users, early)


# --- 4. not a file, or not readable ------------------------------------------------------------
@pytest.mark.parametrize("name", ["u.data", "u.item", "u.user"])
def test_directory_instead_of_file(clean_dir, name):
    (clean_dir / name).unlink()
    (clean_dir / name).mkdir()
    expect(clean_dir, name, None, f"{name} is a directory, not a file")


@pytest.mark.parametrize("name", ["u.data", "u.item", "u.user"])
def test_symlink_loop(clean_dir, name):
    (clean_dir / name).unlink()
    os.symlink(name, clean_dir / name)
    expect(clean_dir, name, None, f"{name} is a symbolic link loop")


def test_dangling_symlink(clean_dir, tmp_path):
    (clean_dir / "u.data").unlink()
    os.symlink(tmp_path / "gone" / "u.data", clean_dir / "u.data")
    expect(clean_dir, "u.data", None, "u.data is a dangling symbolic link .*gone/u.data.* "
                                      "which does not exist")


def test_fifo_is_not_read(clean_dir):
    """A FIFO would block read_bytes() forever; it is named instead."""
    (clean_dir / "u.data").unlink()
    os.mkfifo(clean_dir / "u.data")
    expect(clean_dir, "u.data", None, r"u.data is not a regular file \(a device, FIFO or socket\)")


def _failing_read(monkeypatch, name: str, exc: OSError) -> None:
    """Path.read_bytes raises ``exc`` for ``name`` (chmod 000 does not stop root, who runs CI)."""
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == name:
            raise exc
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


@pytest.mark.parametrize("name", ["u.data", "u.item", "u.user"])
def test_unreadable_file(clean_dir, monkeypatch, name):
    _failing_read(monkeypatch, name, PermissionError(13, "Permission denied"))
    err = expect(clean_dir, name, None,
                 r"file cannot be read: permission denied \(Permission denied\)\. Make it "
                 r"readable for this user \(e\.g\. chmod a\+r\)")
    assert err.cause.startswith("file cannot be read")


def test_io_error_while_reading(clean_dir, monkeypatch):
    _failing_read(monkeypatch, "u.data", OSError(5, "Input/output error"))
    expect(clean_dir, "u.data", None, r"file cannot be read: Input/output error\. The GroupLens")


def test_missing_file_is_still_missing(clean_dir):
    (clean_dir / "u.data").unlink()
    expect(clean_dir, "u.data", None, "file is missing")


# --- 5. the vectorised u.data parser gives exactly what the per-line parser gives -----------------
def _per_line_only(monkeypatch) -> None:
    monkeypatch.setattr(ml, "parse_ratings_fast", lambda *args: None)


def _both_ways(folder: Path, monkeypatch) -> tuple[pd.DataFrame, pd.DataFrame]:
    fast = load_movielens(folder).ratings
    with monkeypatch.context() as m:
        _per_line_only(m)
        slow = load_movielens(folder).ratings
    return fast, slow


def _fast_result(folder: Path):
    movies, users = read_movies(folder), read_users(folder)
    raw = (folder / "u.data").read_bytes()
    return ml.parse_ratings_fast(raw, pd.Index(movies["movie_id"]), pd.Index(users.index),
                                  ml.ML_100K, ml.ML_100K.timestamp_range())


def test_fast_path_equals_per_line_parser(synthetic_dir, monkeypatch):
    assert _fast_result(synthetic_dir) is not None  # the plain file takes the fast path
    fast, slow = _both_ways(synthetic_dir, monkeypatch)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)


def test_fast_path_with_crlf(clean_dir, monkeypatch):
    path = clean_dir / "u.data"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert _fast_result(clean_dir) is not None
    fast, slow = _both_ways(clean_dir, monkeypatch)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)


@pytest.mark.parametrize("line, index, value", [
    (3, 2, "+4"), (3, 2, "5.0"), (4, 3, "0" * 12 + "881250949"), (5, 3, " 881250949"),
])
def test_odd_but_valid_lines_parse_the_same(clean_dir, monkeypatch, line, index, value):
    """Lines the fast path declines are parsed by the per-line parser, with the same result."""
    set_field(clean_dir / "u.data", line, index, value)
    assert _fast_result(clean_dir) is None
    fast, slow = _both_ways(clean_dir, monkeypatch)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)


def test_spaces_around_a_line_parse_the_same(clean_dir, monkeypatch):
    path = clean_dir / "u.data"
    lines = lines_of(path)
    lines[5] = f"  {lines[5]} \t"
    path.write_bytes("\n".join(lines).encode())
    assert _fast_result(clean_dir) is None
    fast, slow = _both_ways(clean_dir, monkeypatch)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)


@pytest.mark.parametrize("raw_line, cause", [
    (b"1\t2\t3", r"expected 4 '\\t'-separated fields, got 3"),
    (b"", r"expected 4 '\\t'-separated fields, got 1"),
    (b"1\t\t3\t881250949", r"movie id '' is not an integer"),
    (b"1\t2\t3\t4\r5", r"timestamp '4\\r5' is not an integer"),  # a lone CR is no line end
])
def test_fast_path_declines_bad_layout(clean_dir, raw_line, cause):
    path = clean_dir / "u.data"
    lines = path.read_bytes().split(b"\n")
    lines[3] = raw_line
    path.write_bytes(b"\n".join(lines))
    assert _fast_result(clean_dir) is None
    with pytest.raises(DataFormatError, match=rf"u\.data:4: {cause}"):
        load_movielens(clean_dir)


@pytest.mark.real_data
def test_real_data_fast_path_equals_per_line_parser(real_data_dir, monkeypatch):
    assert _fast_result(real_data_dir) is not None
    fast = load_movielens(real_data_dir, duplicates="reject").ratings  # no repeated pair either
    with monkeypatch.context() as m:
        _per_line_only(m)
        slow = load_movielens(real_data_dir, duplicates="reject").ratings
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)
