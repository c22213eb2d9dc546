"""Seeded synthetic MovieLens data in the GroupLens raw layouts, at any size.

Used by tests on machines without the real files, by the benchmarks, and by anyone who wants a
quick smoke run. ``generate(directory, layout=...)`` writes the files of one layout (see
:mod:`data.registry`): ``100k`` (u.data, u.item, u.user, u.genre), ``1m`` (ratings.dat,
movies.dat, users.dat) or ``csv`` (ratings.csv, movies.csv: the 20m, 25m and latest-small layout).

Two generators:

- the original one (``layout="100k"``, ``realistic=False``, the default): byte for byte what every
  existing test folder was generated with. Pairs (user, movie) repeat in it.
- the realistic one (any layout; the default for 1m and csv): power-law movie popularity, users of
  very different activity (log-normal, a few rate thousands), at most one rating per (user, movie)
  as in every real release, per-user activity windows in time, ratings from latent factors on the
  release's scale (half stars for csv), sparse movie ids (1m, csv), and titles with commas
  ("Misérables, Les"), quotes, and non-ASCII letters (Latin-1 for 100k/1m, any Unicode for csv).
  Vectorised: ml-25m size (25 million ratings) in about a minute.

Both exercise what the parsers and feature rules must handle: duplicate titles under different
movie ids, punctuation, a title that standardizes to no token, users and movies with few ratings,
and ratings that depend on (user, movie) latent factors so that the models have something to learn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io
from .movielens import GENRES, OCCUPATION_LABELS

_WORDS = ("star", "love", "night", "city", "dark", "war", "king", "river", "ghost", "dream",
          "blue", "last", "game", "house", "wild", "secret", "heart", "storm", "Misérables",
          "Café", "L.A.", "Dr.", "Mr.", "Jones's", "(The)", "Part II", "&", "Nénette")
BASE_TIMESTAMP = 874_724_710  # the real data's first timestamp
SPAN_SECONDS = 18_000_000  # about seven months, as in the real data


def _titles(rng: np.random.Generator, num_movies: int) -> list[str]:
    titles = []
    for i in range(num_movies):
        words = rng.choice(_WORDS, size=rng.integers(1, 4))
        titles.append(f"{' '.join(words).title()} {i % 17} ({1930 + int(rng.integers(0, 68))})")
    if num_movies >= 4:
        titles[-1] = titles[0]  # duplicate title under another movie id, as in ml-100k
        titles[-2] = "!!!"  # standardizes to no token at all
    return titles


LAYOUT_NAMES = ("100k", "1m", "csv")


def generate(directory: Path | str, *, num_users: int = 200, num_movies: int = 150,
             num_ratings: int = 5000, seed: int = 0, layout: str = "100k",
             realistic: bool | None = None, progress: bool = False) -> Path:
    """Write a synthetic folder of ``layout`` into ``directory`` (created) and return it.

    ``realistic``: None picks the original generator for 100k and the realistic one otherwise
    (see the module docstring); the realistic one needs ``num_ratings <= num_users *
    num_movies`` (one rating per pair). ``progress``: a progress bar over the steps.
    """
    if min(num_users, num_movies) < 1 or num_ratings < 2:
        raise ValueError("need at least 1 user, 1 movie and 2 ratings")
    if layout not in LAYOUT_NAMES:
        raise ValueError(f"layout must be one of {', '.join(LAYOUT_NAMES)}, not {layout!r}")
    if realistic is None:
        realistic = layout != "100k"
    if realistic:
        from .synthetic_realistic import generate_realistic
        return generate_realistic(Path(directory), num_users=num_users, num_movies=num_movies,
                                  num_ratings=num_ratings, seed=seed, layout=layout,
                                  progress=progress)
    if layout != "100k":
        raise ValueError(f"the original generator writes the 100k layout only; pass "
                         f"realistic=True for layout={layout!r}")
    rng = np.random.default_rng(seed)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    occupations = sorted(OCCUPATION_LABELS)

    users = [f"{u}|{int(rng.integers(7, 74))}|{'MF'[int(rng.integers(0, 2))]}|"
             f"{occupations[int(rng.integers(0, len(occupations)))]}|{int(rng.integers(10000, 99999))}"
             for u in range(1, num_users + 1)]
    items = []
    for m, title in enumerate(_titles(rng, num_movies), start=1):
        flags = (rng.random(len(GENRES)) < 0.15).astype(int)
        items.append(f"{m}|{title}|01-Jan-1995||http://example.invalid/{m}|"
                     + "|".join(map(str, flags)))

    # Ratings from latent factors: popular movies and matching tastes get more, higher ratings.
    u_f, m_f = rng.normal(size=(num_users, 4)), rng.normal(size=(num_movies, 4))
    popularity = rng.zipf(1.6, size=num_movies).astype(float)
    users_idx = rng.integers(0, num_users, size=num_ratings)
    affinity = u_f[users_idx] @ m_f.T + np.log(popularity)[None, :]
    probs = np.exp(affinity - affinity.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    movies_idx = (probs.cumsum(axis=1) > rng.random((num_ratings, 1))).argmax(axis=1)
    score = (u_f[users_idx] * m_f[movies_idx]).sum(axis=1)
    stars = np.clip(np.round(3 + 0.5 * score + rng.normal(scale=0.9, size=num_ratings)), 1, 5)
    stamps = BASE_TIMESTAMP + rng.integers(0, SPAN_SECONDS, size=num_ratings)
    ratings = [f"{u + 1}\t{m + 1}\t{int(s)}\t{t}"
               for u, m, s, t in zip(users_idx, movies_idx, stars, stamps)]

    files = {"u.user": users, "u.item": items, "u.data": ratings,
             "u.genre": [f"{g}|{i}" for i, g in enumerate(GENRES)]}
    for name, lines in files.items():
        io.write_bytes(out / name, ("\n".join(lines) + "\n").encode("ISO-8859-1"))
    return out
