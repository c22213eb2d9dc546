"""Seeded synthetic MovieLens data in the GroupLens raw layout (u.data, u.item, u.user, ...).

Used by tests on machines without the real files, and by anyone who wants a quick smoke run.
The files exercise what the parsers and feature rules must handle: ISO-8859-1 titles with accented
letters, duplicate titles under different movie ids, punctuation, a title that standardizes to no
token, users and movies with few ratings, and ratings that depend on (user, movie) latent factors
so that the models have something to learn.
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


def generate(directory: Path | str, *, num_users: int = 200, num_movies: int = 150,
             num_ratings: int = 5000, seed: int = 0) -> Path:
    """Write a synthetic ml-100k-layout folder into ``directory`` (created) and return it."""
    if min(num_users, num_movies) < 1 or num_ratings < 2:
        raise ValueError("need at least 1 user, 1 movie and 2 ratings")
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
