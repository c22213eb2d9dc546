"""The realistic synthetic generator behind ``data.synthetic.generate(..., realistic=True)``.

Vectorised end to end (numpy; the only Python loops run once per movie or per user whose
activity exceeds what popularity sampling found, never per rating), so that a folder of ml-25m's
size (25 million ratings, 62,423 movies, 162,541 users) is written in about a minute:

- movie popularity: a power law over a random ranking of the movies (p ~ 1 / (rank + 10));
- user activity: log-normal (sigma 1.1), at least one rating each while there are enough
  ratings, at most one per movie: a few users rate thousands of movies, most a few dozen;
- pairs: each user's movies drawn by popularity without repeats (oversampled draws,
  de-duplicated, topped up per user from the movies not yet drawn);
- ratings: latent factors plus user and movie biases, on the release's scale;
- time: each user active over a window of the release's period (most short, a few long).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import io
from .movielens import GENRES, OCCUPATION_LABELS
from .readers import AGES_1M, OCCUPATIONS_1M
from .registry import TFDS_GENRES

# The period each layout's release covers (its first and last rating, UTC).
WINDOWS = {"100k": (874_724_710, 893_286_638),      # 1997-09-20 .. 1998-04-22
           "1m": (956_703_932, 1_046_454_590),      # 2000-04-25 .. 2003-02-28
           "csv": (789_652_009, 1_574_327_703)}     # 1995-01-09 .. 2019-11-21 (ml-25m)
GENRES_1M = tuple("Children's" if g == "Children" else g for g in GENRES if g != "Unknown")
GENRES_CSV = tuple(g for g in TFDS_GENRES if g not in ("Unknown", "(no genres listed)"))

_SYLLABLES = ("ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "de", "an", "or", "el", "ba", "qu",
              "zo", "th", "ly", "ce")
_LATIN1_WORDS = ("Misérables", "Café", "Nénette", "Garçon", "Mädchen", "Señor", "Amélie", "Øst",
                 "Noël", "Ça", "Éclair", "Brücke")
_UNICODE_WORDS = ("Tōkyō", "Ōkami", "東京物語", "Амели", "Łódź", "Ψυχή", "Ἰλιάς", "Çağ")
_ASCII_WORDS = ("Star", "Love", "Night", "City", "Dark", "War", "King", "River", "Ghost", "Dream",
                "L.A.", "Dr.", "Mr.", "Jones's", "Part II", "&", "Vol. 2", "Wars:", "U.S.",
                "Man", "Woman", "Return", "Story", "Life", "Blue", "Last", "Game", "House")


def generate_realistic(out: Path, *, num_users: int, num_movies: int, num_ratings: int,
                       seed: int, layout: str, progress: bool = False) -> Path:
    """Write a realistic folder of ``layout`` ('100k', '1m' or 'csv') into ``out``."""
    if num_ratings > num_users * num_movies:
        raise ValueError(f"num_ratings={num_ratings} exceeds num_users * num_movies = "
                         f"{num_users * num_movies}: the realistic generator rates each (user, "
                         "movie) pair at most once")
    bar = _bar(progress, f"synthetic {layout}")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    movie_ids = _movie_ids(rng, num_movies, sparse=layout != "100k")
    titles = movie_titles(rng, num_movies, unicode=layout == "csv")
    popularity = _popularity(rng, num_movies)
    counts = activity_counts(rng, num_users, num_movies, num_ratings)
    bar(1)
    users, movies = sample_pairs(rng, counts, popularity)
    bar(2)
    ratings = _ratings(rng, users, movies, num_users, popularity, half_stars=layout == "csv")
    stamps = _timestamps(rng, users, num_users, WINDOWS[layout])
    bar(3)
    if layout == "100k":  # u.data is in no particular order; ml-1m and the CSVs go by user
        order = rng.permutation(len(users))
        users, movies, ratings, stamps = users[order], movies[order], ratings[order], stamps[order]
    writers = {"100k": _write_100k, "1m": _write_1m, "csv": _write_csv}
    writers[layout](out, rng, users + 1, movie_ids, movies, ratings, stamps, titles, num_users)
    bar(4)
    return out


def _bar(progress: bool, desc: str) -> Callable[[int], None]:
    if not progress:
        return lambda step: None
    from tqdm import tqdm
    bar = tqdm(total=4, desc=desc, leave=False)

    def step(n: int) -> None:
        bar.update(n - bar.n)
        if n == 4:
            bar.close()
    return step


# --------------------------------------------------------------------------- who rates what


def _movie_ids(rng: np.random.Generator, num_movies: int, sparse: bool) -> np.ndarray:
    """1..M, or increasing ids with gaps as in ml-1m (1..3952) and ml-25m (1..209171)."""
    if not sparse:
        return np.arange(1, num_movies + 1, dtype=np.int64)
    return np.cumsum(rng.choice([1, 1, 1, 2, 3, 7], size=num_movies)).astype(np.int64)


def _popularity(rng: np.random.Generator, num_movies: int) -> np.ndarray:
    """Sampling probability of each movie: a power law over a random ranking."""
    rank = rng.permutation(num_movies)
    weight = 1.0 / (rank + 10.0)
    return weight / weight.sum()


def activity_counts(rng: np.random.Generator, num_users: int, num_movies: int,
                    num_ratings: int) -> np.ndarray:
    """Ratings per user: log-normal shares of ``num_ratings``, each in [1, num_movies] (0 only
    when there are fewer ratings than users), summing to ``num_ratings`` exactly."""
    share = rng.lognormal(0.0, 1.1, size=num_users)
    share /= share.sum()
    floor = 1 if num_ratings >= num_users else 0
    counts = np.clip(np.floor(share * num_ratings), floor, num_movies).astype(np.int64)
    order = np.argsort(-share, kind="stable")  # the most active first
    while counts.sum() != num_ratings:
        gap = int(num_ratings - counts.sum())
        if gap > 0:  # hand the rest to the most active users that still have room
            room = order[counts[order] < num_movies][:gap]
            counts[room] += 1
        else:  # clipping up to the floor overshot: take back from the most active
            over = order[counts[order] > max(floor, 1)][:-gap]
            counts[over] -= 1
    return counts


def sample_pairs(rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(user, movie) rows, ``counts[u]`` distinct movies for user u drawn by ``popularity``,
    sorted by user then movie.

    Round 0 draws each user's count and keeps the distinct pairs; later rounds draw (twice) the
    shortfall of the users that drew a movie twice, keeping new pairs in draw order up to the
    shortfall; the few users still short after that are topped up one by one.
    """
    num_movies = len(popularity)
    cdf = np.cumsum(popularity)

    def draw(users: np.ndarray, times: np.ndarray) -> np.ndarray:
        owners = np.repeat(users, times)
        movies = np.searchsorted(cdf, rng.random(len(owners)), side="right")
        return owners * num_movies + np.minimum(movies, num_movies - 1)

    chosen = np.sort(draw(np.arange(len(counts), dtype=np.int64), counts))
    if len(chosen):
        chosen = chosen[np.concatenate(([True], np.diff(chosen) != 0))]
    need = counts - np.bincount(chosen // num_movies, minlength=len(counts))
    for _ in range(8):
        short = np.flatnonzero(need > 0)
        if len(short) == 0:
            break
        candidates = draw(short, 2 * need[short] + 2)
        at = np.minimum(np.searchsorted(chosen, candidates), max(len(chosen) - 1, 0))
        candidates = candidates[chosen[at] != candidates] if len(chosen) else candidates
        _, first = np.unique(candidates, return_index=True)
        candidates = candidates[np.sort(first)]  # distinct, by user, in draw order
        owner = candidates // num_movies
        rank = np.arange(len(candidates)) - np.searchsorted(owner, owner)
        kept = candidates[rank < need[owner]]
        need -= np.bincount(kept // num_movies, minlength=len(counts))
        chosen = np.sort(np.concatenate([chosen, kept]), kind="stable")  # merges two runs
    extra = [_top_up(rng, u, int(need[u]), chosen, popularity) for u in np.flatnonzero(need)]
    if extra:
        chosen = np.sort(np.concatenate([chosen, *extra]))
    return chosen // num_movies, chosen % num_movies


def _top_up(rng: np.random.Generator, user: int, missing: int, key: np.ndarray,
            popularity: np.ndarray) -> np.ndarray:
    """``missing`` more movies for ``user``, by popularity among the movies it has not rated
    (``key``: the sorted pairs so far)."""
    num_movies = len(popularity)
    lo, hi = np.searchsorted(key, [user * num_movies, (user + 1) * num_movies])
    weight = popularity.copy()
    weight[key[lo:hi] % num_movies] = 0.0
    picked = rng.choice(num_movies, size=missing, replace=False, p=weight / weight.sum())
    return user * num_movies + picked.astype(np.int64)


def _ratings(rng: np.random.Generator, users: np.ndarray, movies: np.ndarray, num_users: int,
             popularity: np.ndarray, half_stars: bool, chunk: int = 1 << 22) -> np.ndarray:
    """Stars from latent factors plus biases (popular movies rate a little higher)."""
    dim = 8
    user_f = rng.normal(size=(num_users, dim)).astype(np.float32)
    movie_f = rng.normal(size=(len(popularity), dim)).astype(np.float32)
    log_pop = np.log(popularity)
    movie_bias = (0.3 * (log_pop - log_pop.mean()) / (log_pop.std() + 1e-9)).astype(np.float32)
    user_bias = rng.normal(scale=0.4, size=num_users).astype(np.float32)
    out = np.empty(len(users), dtype=np.float32)
    for lo in range(0, len(users), chunk):
        u, m = users[lo: lo + chunk], movies[lo: lo + chunk]
        score = np.einsum("ij,ij->i", user_f[u], movie_f[m]) / np.float32(np.sqrt(dim))
        noise = rng.normal(scale=0.7, size=len(u)).astype(np.float32)
        out[lo: lo + chunk] = 3.5 + user_bias[u] + movie_bias[m] + 0.8 * score + noise
    step = 0.5 if half_stars else 1.0
    return np.clip(np.round(out / step) * step, step if half_stars else 1.0, 5.0)


def _timestamps(rng: np.random.Generator, users: np.ndarray, num_users: int,
                window: tuple[int, int]) -> np.ndarray:
    """Each user active in a window of the release's period (beta-distributed lengths)."""
    first, last = window
    length = ((last - first) * rng.beta(0.5, 3.0, size=num_users)).astype(np.int64) + 1
    start = first + (rng.random(num_users) * (last - first - length + 1)).astype(np.int64)
    offset = (rng.random(len(users)) * length[users]).astype(np.int64)
    return start[users] + offset


# --------------------------------------------------------------------------- titles


def movie_titles(rng: np.random.Generator, num_movies: int, unicode: bool) -> list[str]:
    """Titles with what real ones have: 'X, The (1995)', '"Quoted" Y', alternative titles
    with commas in parentheses, subtitles after ':', accented letters (Latin-1 only unless
    ``unicode``), a duplicate under another id, and one ('!!!') that standardizes to no token."""
    special = _LATIN1_WORDS + (_UNICODE_WORDS if unicode else ())
    words = np.array(special + _ASCII_WORDS
                     + _pseudo_words(rng, int(np.clip(num_movies // 2, 2000, 30000))),
                     dtype=object)
    picks = rng.integers(0, len(words), size=(num_movies, 6))
    lengths = rng.integers(1, 6, size=num_movies)
    years = rng.integers(1915, 2020, size=num_movies)
    kinds = rng.random(num_movies)
    # Whatever the seed and size: a comma, quotes, Latin-1 and (csv) other Unicode letters.
    first = min(3, num_movies)
    kinds[:first] = (0.0, 0.15, 0.2)[:first]
    picks[:first, 0] = (0, 1, len(special) - 1)[:first]
    titles = []
    for i in range(num_movies):
        base = " ".join(words[picks[i, : lengths[i]]])
        titles.append(_dress(base, str(words[picks[i, 5]]), int(years[i]), float(kinds[i])))
    if num_movies >= 4:
        titles[-1] = titles[0]  # a duplicate title under another movie id, as in ml-100k
        titles[-2] = "!!!"  # standardizes to no token at all
    return titles


def _dress(base: str, other: str, year: int, kind: float) -> str:
    if kind < 0.12:
        return f"{base}, The ({year})"
    if kind < 0.17:
        return f"\"{base}\" {other} ({year})"
    if kind < 0.22:
        return f"{base} ({other}, La) ({year})"
    if kind < 0.26:
        return f"{base}: {other} ({year})"
    return f"{base} ({year})"


def _pseudo_words(rng: np.random.Generator, count: int) -> tuple[str, ...]:
    """Capitalised words of 2 to 4 syllables: a vocabulary as large as real titles have."""
    parts = rng.integers(0, len(_SYLLABLES), size=(count, 4))
    sizes = rng.integers(2, 5, size=count)
    return tuple("".join(_SYLLABLES[j] for j in row[:k]).capitalize()
                 for row, k in zip(parts, sizes))


def _genre_lists(rng: np.random.Generator, num_movies: int, names: tuple[str, ...]
                 ) -> list[list[str]]:
    """1 to 3 genres per movie, in the order of ``names`` (as GroupLens lists them)."""
    picks = rng.random((num_movies, len(names))).argsort(axis=1)[:, :3]
    sizes = rng.integers(1, 4, size=num_movies)
    return [[names[j] for j in sorted(picks[i, : sizes[i]])] for i in range(num_movies)]


# --------------------------------------------------------------------------- writers

_POW10 = 10 ** np.arange(19, dtype=np.int64)
_ROWS_PER_CHUNK = 1 << 21


def _render(columns: list[np.ndarray], seps: list[bytes]) -> bytes:
    """Lines of non-negative integer ``columns``, ``seps[i]`` written after column i (the last
    one ends the line), by numpy digit arithmetic: each column right-aligned in a fixed-width
    byte matrix with NUL fill, the fill then dropped (no per-row Python)."""
    rows = len(columns[0])
    widths = [int(np.searchsorted(_POW10, c.max(initial=0), side="right")) or 1 for c in columns]
    matrix = np.empty((rows, sum(widths) + sum(len(s) for s in seps)), dtype=np.uint8)
    at = 0
    for column, width, sep in zip(columns, widths, seps):
        # uint32 division is several times faster than int64 (MovieLens values fit it)
        kind = np.uint32 if column.max(initial=0) < 2 ** 32 else np.uint64
        rest, ten = column.astype(kind), kind(10)
        shortest = int(np.searchsorted(_POW10, column.min(initial=0), side="right")) or 1
        for k in reversed(range(width)):
            rest, digit = np.divmod(rest, ten)
            digit = digit.astype(np.uint8) + np.uint8(48)
            if k < width - shortest:  # some values have no digit here: NUL, dropped below
                digit[(rest == 0) & (digit == 48)] = 0
            matrix[:, at + k] = digit
        at += width
        for byte in sep:
            matrix[:, at] = byte
            at += 1
    flat = matrix.ravel()
    return flat[flat != 0].tobytes()


def _chunks(columns: list[np.ndarray], seps: list[bytes]) -> Iterator[bytes]:
    n = len(columns[0])
    for lo in range(0, n, _ROWS_PER_CHUNK):
        yield _render([c[lo: lo + _ROWS_PER_CHUNK] for c in columns], seps)


def _write_lines(path: Path, columns: list[np.ndarray], seps: list[bytes],
                 header: bytes = b"") -> None:
    """Write the rendered lines to ``path`` atomically, chunk by chunk (bounded memory)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            for chunk in _chunks(columns, seps):
                f.write(chunk)
    io.write_with(path, write)


def _write_text(path: Path, lines: list[str], encoding: str) -> None:
    io.write_bytes(path, ("\n".join(lines) + "\n").encode(encoding))


def _write_100k(out: Path, rng, users, movie_ids, movies, ratings, stamps, titles, num_users):
    occupations = sorted(OCCUPATION_LABELS)
    ages = rng.integers(7, 74, size=num_users)
    sex = rng.integers(0, 2, size=num_users)
    jobs = rng.integers(0, len(occupations), size=num_users)
    zips = rng.integers(10000, 99999, size=num_users)
    _write_text(out / "u.user", [f"{u + 1}|{ages[u]}|{'MF'[sex[u]]}|{occupations[jobs[u]]}|"
                                 f"{zips[u]}" for u in range(num_users)], "ISO-8859-1")
    genres = _genre_lists(rng, len(movie_ids), GENRES)
    _write_text(out / "u.item", [
        f"{m}|{t}|01-Jan-1995||http://example.invalid/{m}|"
        + "|".join("1" if g in gs else "0" for g in GENRES)
        for m, t, gs in zip(movie_ids.tolist(), titles, genres)], "ISO-8859-1")
    _write_text(out / "u.genre", [f"{g}|{i}" for i, g in enumerate(GENRES)], "ISO-8859-1")
    _write_lines(out / "u.data", [users, movie_ids[movies], ratings.astype(np.int64), stamps],
                 [b"\t", b"\t", b"\t", b"\n"])


def _write_1m(out: Path, rng, users, movie_ids, movies, ratings, stamps, titles, num_users):
    sex = rng.integers(0, 2, size=num_users)
    ages = rng.choice(AGES_1M, size=num_users)
    jobs = rng.integers(0, len(OCCUPATIONS_1M), size=num_users)
    zips = rng.integers(10000, 99999, size=num_users)
    _write_text(out / "users.dat", [f"{u + 1}::{'MF'[sex[u]]}::{ages[u]}::{jobs[u]}::{zips[u]}"
                                    for u in range(num_users)], "ISO-8859-1")
    genres = _genre_lists(rng, len(movie_ids), GENRES_1M)
    _write_text(out / "movies.dat", [f"{m}::{t}::{'|'.join(gs)}" for m, t, gs
                                     in zip(movie_ids.tolist(), titles, genres)], "ISO-8859-1")
    _write_lines(out / "ratings.dat", [users, movie_ids[movies], ratings.astype(np.int64),
                                       stamps], [b"::", b"::", b"::", b"\n"])


def _write_csv(out: Path, rng, users, movie_ids, movies, ratings, stamps, titles, num_users):
    import csv
    import io as text_io
    genres = _genre_lists(rng, len(movie_ids), GENRES_CSV)
    if len(genres) > 2:
        genres[1] = ["(no genres listed)"]
    buf = text_io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # quotes titles with commas or quotes
    writer.writerow(["movieId", "title", "genres"])
    for m, t, gs in zip(movie_ids.tolist(), titles, genres):
        writer.writerow([m, t, "|".join(gs)])
    io.write_bytes(out / "movies.csv", buf.getvalue().encode("utf-8"))
    tenths = np.round(ratings * 10).astype(np.int64)  # 4.5 -> '4' '.' '5', as GroupLens writes
    _write_lines(out / "ratings.csv", [users, movie_ids[movies], tenths // 10, tenths % 10,
                                       stamps], [b",", b",", b".", b",", b"\n"],
                 header=b"userId,movieId,rating,timestamp\n")
