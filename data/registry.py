"""The MovieLens releases TFDS knows, in one place: where each comes from and how its files look.

Per variant (:data:`VARIANTS`, named as TFDS' ``movielens/<name>-ratings`` configs): the official
GroupLens archive with the size and SHA-256 that ``tensorflow_datasets/url_checksums/movielens.txt``
lists for it (data/tests/test_registry.py compares them with the installed file), the folder the
zip unpacks to (TFDS' ``'ml-%s' % format_version``), the file :class:`Layout` and the values the
release can contain (:class:`ReleaseRules`).

Layouts (the parsers of ``tensorflow_datasets/structured/movielens_parsing.py``):

- ``100k``: ``u.data`` (tab), ``u.item`` and ``u.user`` ('|'), ISO-8859-1, no header.
- ``1m``: ``ratings.dat``, ``movies.dat``, ``users.dat`` ('::'), ISO-8859-1, no header; TFDS
  renames the genre "Children's" to "Children".
- ``csv`` (20m, 25m, latest-small): ``ratings.csv`` and ``movies.csv``, UTF-8 CSV with a header
  line and quoted titles that may contain commas; no user file, so no demographic fields.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

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
    "1m": ReleaseRules("1m", _WHOLE_STARS),
    "20m": ReleaseRules("20m", _HALF_STARS),
    "25m": ReleaseRules("25m", _HALF_STARS),
    "latest-small": ReleaseRules("latest-small", _HALF_STARS),
}

# The genre names of TFDS' movie_genres ClassLabel (movielens.py _info): a genre outside this list
# cannot be encoded by TFDS, so a file that has one is damaged (or not MovieLens).
TFDS_GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "Unknown", "War", "Western", "(no genres listed)",
)


@dataclass(frozen=True)
class Layout:
    """How a release's files are named and written.

    ``ratings``/``movies``/``users``: file names (``users`` None: no demographic data);
    ``separator``: the field separator of every file except u.item/u.user's '|' (see ``item_sep``);
    ``header``: the files start with a header line (``ratings_header``/``movies_header``).
    """

    name: str
    ratings: str
    movies: str
    users: str | None
    encoding: str
    separator: str
    item_separator: str
    header: bool = False
    ratings_header: str | None = None
    movies_header: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """The files the reader needs, ratings first."""
        return tuple(f for f in (self.ratings, self.movies, self.users) if f is not None)

    @property
    def has_demographics(self) -> bool:
        return self.users is not None


LAYOUTS = {
    "100k": Layout("100k", ratings="u.data", movies="u.item", users="u.user",
                   encoding="ISO-8859-1", separator="\t", item_separator="|"),
    "1m": Layout("1m", ratings="ratings.dat", movies="movies.dat", users="users.dat",
                 encoding="ISO-8859-1", separator="::", item_separator="::"),
    "csv": Layout("csv", ratings="ratings.csv", movies="movies.csv", users=None,
                  encoding="UTF-8", separator=",", item_separator=",", header=True,
                  ratings_header="userId,movieId,rating,timestamp",
                  movies_header="movieId,title,genres"),
}


@dataclass(frozen=True)
class Variant:
    """One MovieLens release: archive, unpacked folder name, file layout and value rules."""

    name: str
    url: str
    size: int
    sha256: str
    folder: str
    layout: Layout
    rules: ReleaseRules

    @property
    def label(self) -> str:
        """How messages name it: 'MovieLens 100k'."""
        return f"MovieLens {self.name}"

    @property
    def files(self) -> tuple[str, ...]:
        return self.layout.files

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


_BASE_URL = "https://files.grouplens.org/datasets/movielens/"


def _variant(name: str, size: int, sha256: str, layout: str) -> Variant:
    return Variant(name=name, url=f"{_BASE_URL}ml-{name}.zip", size=size, sha256=sha256,
                   folder=f"ml-{name}", layout=LAYOUTS[layout], rules=RELEASES[name])


# Sizes and SHA-256 as in tensorflow_datasets/url_checksums/movielens.txt (tensorflow-datasets
# 4.9.x). latest-small is "changed and updated over time" by GroupLens (TFDS' own caveat): if
# GroupLens republishes it, its download fails the checksum until both lists are updated.
VARIANTS: dict[str, Variant] = {
    "100k": _variant("100k", 4_924_029,
                     "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", "100k"),
    "1m": _variant("1m", 5_917_549,
                   "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", "1m"),
    "20m": _variant("20m", 198_702_078,
                    "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", "csv"),
    "25m": _variant("25m", 261_978_986,
                    "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa", "csv"),
    "latest-small": _variant(
        "latest-small", 978_202,
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", "csv"),
}
DEFAULT_DATASET = "100k"


def variant(name: str | Variant | None = None) -> Variant:
    """The variant called ``name`` (None: 100k); a clear error listing the known ones."""
    if isinstance(name, Variant):
        return name
    if name is None:
        return VARIANTS[DEFAULT_DATASET]
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: "
                         f"{', '.join(VARIANTS)} (the names of TFDS' movielens/<name>-ratings "
                         "configs)") from None


def layout_of_files(names: set[str]) -> Layout | None:
    """The layout whose files are all among ``names`` (a folder listing), or None."""
    for layout in LAYOUTS.values():
        if set(layout.files) <= names:
            return layout
    return None
