"""The recipes beyond the seed that need data of their own (issue 15), framework-free (numpy).

Both backends read what is computed here, so they see the same numbers:

- Mixed negatives (``config.task.mixed_negatives`` = N > 0; Yang et al. 2020, "Mixed Negative
  Sampling for Learning Two-tower Neural Networks in Recommendations"): per training step, N
  titles drawn uniformly WITH replacement from the title vocabulary (the unique titles of the
  corpus, ids 1..V; :func:`sample_negatives`, seeded by (seed, epoch, step), so any step is
  reproducible and both backends get the same ids), appended as extra candidate columns shared
  by every row of the batch. Their logQ correction uses the per-draw probability 1/V
  (:func:`negative_sampling_probability`), the convention of TFRS's
  ``candidate_sampling_probability`` (the in-batch columns carry the per-draw training frequency
  of their title with ``--use-sampling-probability``, else 1: no correction, as the seed). A
  sampled title equal to a row's positive title is masked for that row (score_mask: it is the
  positive, not a negative), whether or not ``remove_accidental_hits`` is on for the in-batch
  columns.

- Genres (``config.model.genres``): the candidate tower adds the mean of the embeddings of its
  title's genres. :func:`genre_table` [title rows, G] holds per title id its genre ids (1-based
  into ``TFDS_GENRES``, the ClassLabel every MovieLens release of TFDS uses, so the embedding
  table has G + 1 rows whatever the release; 0 = padding), the union over u.item entries sharing
  the title (the candidate tower's identity is the title); the OOV row 0 has none.
- User history (``config.model.history``): the query tower adds the masked mean of the
  embeddings of the titles the user rated IN THE TRAINING SPLIT STRICTLY BEFORE the query's
  timestamp, the most recent ``config.model.history_length`` of them (default
  :data:`HISTORY_LENGTH`; :class:`HistoryIndex`), or with ``config.eval.live_history`` every
  rating before it at evaluation (:func:`live_recipe`). Ratings
  at the query's own second are excluded, the query's own rating with them: MovieLens users
  rate in bursts within one second, and nothing orders those, so "before" would otherwise leak
  ratings made together with the one predicted. A user without such ratings (new, or whose
  first rating this is) gets no history (a zero vector). A user unseen in training is served
  from history once their ratings are added (:meth:`HistoryIndex.with_ratings`): the user
  embedding is then the OOV row, the history is theirs.

- User side features (``config.model.user_features``; issue 26): the query tower adds
  embeddings of the user's gender, age group, occupation and zip prefix (fixed vocabularies,
  Keras StringLookup OOV rules: :mod:`twostage.user_features`). Training rows carry their
  rating's own demographics (:func:`query_columns`); queries by user id read
  :class:`~twostage.user_features.UserTable` (every user of the data; an unknown id gets the
  OOV row of every feature), so a cold user's tower output still depends on them.

- Release dates (``config.model.release_date``; issue 26): the candidate tower adds the
  embedding of its title's release quarter (:func:`release_buckets`; ml-100k's u.item date,
  else the title's year; :func:`release_table` [title rows]). The age of a title at query time
  is not an input of either tower (the index holds candidate vectors computed once); the dot
  product of this embedding with the query tower's time features is what can learn it.

:class:`RecipeData` bundles the tables; a backend holds it (``attach_recipe_data``; its fit
attaches the training dataset's).

Raw batch keys (what the parity suite and ``train_steps`` pass; the torch backend encodes them):
``negative_titles`` [N] str and ``negative_sampling_probability`` [N] float32; ``history``
[B, H] int64 title ids (0 = padding; the spec's ``title_index``); the user features
(``user_features.USER_FEATURE_KEYS``) [B] str each.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from .errors import UnsupportedOptionError
from .evaluation import _ranges
from .config import Config
from .data.features import FeatureSpec
from .data.registry import TFDS_GENRES
from .user_features import UserTable, rating_values

NEGATIVE_TITLES = "negative_titles"
NEGATIVE_PROBABILITY = "negative_sampling_probability"
HISTORY = "history"
HISTORY_LENGTH = 50  # titles of a history: the most recent 50 (YouTube's candidate model: 50)
NUM_GENRES = len(TFDS_GENRES)  # genre ids 1..NUM_GENRES, 0 = padding
RELEASE_FIRST_YEAR, RELEASE_LAST_YEAR = 1990, 2030  # release_buckets: a quarter each
NUM_RELEASE_BUCKETS = 2 + 4 * (RELEASE_LAST_YEAR - RELEASE_FIRST_YEAR + 1)  # + unknown, earlier
_TITLE_YEAR = r"\((\d{4})\)\s*$"  # MovieLens titles end with their year: "Heat (1995)"
_TS_BITS = 32  # HistoryIndex keys: slot << 32 | timestamp (MovieLens timestamps < 2**32)
# Mixes the step into the seed sequence so negatives never share a stream with the batch order.
_NEGATIVES_STREAM = 0x4E4547


def refuse_in_parallel(config: Config) -> None:
    """UnsupportedOptionError for the recipes that several processes / replicas cannot run
    (``config.distributed.nproc`` > 1): mixed negatives (a batch's sampled titles are not split
    over the processes), on torch's global negatives a learned temperature (its gathered loss
    does not scale the queries), genres / history / user features / release dates (their
    lookups are attached to one process's models; not tested across processes yet), and the
    recent-popularity prior and cold users' OOV route of the evaluation (not tested across
    processes yet)."""
    problems = [f"{name}=True (its lookups are not attached across processes yet)"
                for name in ("genres", "history", "user_features", "release_date")
                if getattr(config.model, name)]
    if config.task.mixed_negatives:
        problems.append(f"mixed_negatives={config.task.mixed_negatives} (the sampled titles "
                        "are not split over processes)")
    if any(config.eval.recent_betas) or config.eval.cold_as_oov:
        problems.append("recent_beta / cold_as_oov (the evaluation's prior.RecentBackend is "
                        "not tested across processes yet)")
    if config.task.learn_temperature and config.distributed.cross_process_negatives == "global":
        problems.append("learn_temperature with cross_process_negatives='global' (the gathered "
                        "loss does not apply the learned temperature)")
    if problems:
        raise UnsupportedOptionError(
            f"with nproc={config.distributed.nproc} this is not supported: "
            f"{'; '.join(problems)}; run with --nproc 1 or drop the option")


# --- mixed negatives ------------------------------------------------------------------------------
def sample_negatives(num_titles: int, n: int, seed: int, epoch: int, step: int) -> np.ndarray:
    """[n] int64 title ids in 1..num_titles (the title vocabulary; 0 is the OOV row), uniform
    with replacement, a function of (seed, epoch, step) alone (0-based absolute epoch and step)."""
    if num_titles < 1:
        raise ValueError("cannot sample negatives from an empty title vocabulary")
    if n < 1:
        raise ValueError(f"mixed_negatives={n} must be >= 1 to sample")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _NEGATIVES_STREAM, epoch, step]))
    return rng.integers(1, num_titles + 1, size=n, dtype=np.int64)


def epoch_negatives(num_titles: int, n: int, seed: int, epoch: int, steps: int) -> np.ndarray:
    """[steps, n] int64: :func:`sample_negatives` of every step of ``epoch``."""
    return np.stack([sample_negatives(num_titles, n, seed, epoch, s) for s in range(steps)]
                    ) if steps else np.zeros((0, n), np.int64)


def negative_sampling_probability(num_titles: int, n: int) -> np.ndarray:
    """[n] float32: the per-draw probability 1 / num_titles of every sampled title."""
    return np.full(n, 1.0 / num_titles, dtype=np.float32)


def raw_negatives(title_vocab, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The raw batch columns of sampled title ids [n] (1-based into ``title_vocab``)."""
    vocab = np.asarray(title_vocab, dtype=object)
    return {NEGATIVE_TITLES: vocab[np.asarray(ids) - 1],
            NEGATIVE_PROBABILITY: negative_sampling_probability(len(vocab), len(ids))}


# --- genres ---------------------------------------------------------------------------------------
def genre_table(titles: Iterable, genres: Iterable, spec: FeatureSpec) -> np.ndarray:
    """[spec.num_title_rows, NUM_GENRES] int64: row ``spec.title_index(title)`` holds the
    1-based ``TFDS_GENRES`` ids of the title's genres, ascending, 0-padded (the union over every
    u.item entry with that title). ``titles`` [M] and ``genres`` [M] (tuples of genre names)
    are the corpus' (``MovieLens.movies``). An unknown genre name is a ValueError."""
    ids = {name: i + 1 for i, name in enumerate(TFDS_GENRES)}
    rows: dict[int, set[int]] = {}
    for row, names in zip(spec.title_index(list(titles)), genres):
        unknown = [g for g in names if g not in ids]
        if unknown:
            raise ValueError(f"unknown genre {unknown[0]!r}: MovieLens genres are "
                             f"{', '.join(TFDS_GENRES)}")
        rows.setdefault(int(row), set()).update(ids[g] for g in names)
    table = np.zeros((spec.num_title_rows, NUM_GENRES), dtype=np.int64)
    for row, found in rows.items():
        if row:  # titles outside the vocabulary (none in a fitted spec) keep the OOV row empty
            table[row, : len(found)] = sorted(found)
    return table


# --- release dates --------------------------------------------------------------------------------
def release_buckets(dates) -> np.ndarray:
    """[M] int64 bucket ids of release dates [M] (datetime-like; NaT = unknown): 0 unknown,
    1 before RELEASE_FIRST_YEAR, then one bucket per calendar quarter up to the last quarter of
    RELEASE_LAST_YEAR, which also holds every later date. Fixed boundaries (no fitting), so any
    release and both backends bucket alike; quarters, because the months of the years that
    matter (ml-100k's test period is 1998) separate new releases from last year's."""
    stamps = pd.DatetimeIndex(pd.to_datetime(pd.Series(dates), errors="raise"))
    quarters = (stamps.year.to_numpy(np.float64) - RELEASE_FIRST_YEAR) * 4 + (
        stamps.month.to_numpy(np.float64) - 1) // 3
    last = NUM_RELEASE_BUCKETS - 1
    buckets = np.where(quarters < 0, 1, np.minimum(quarters + 2, last))
    return np.where(np.isnan(quarters), 0, buckets).astype(np.int64)


def release_dates(movies) -> "pd.Series":
    """[M] datetime64 release date of every entry of a movies frame (``MovieLens.movies``):
    ``movie_release_date`` where the release has one (100k's u.item); for a title none of whose
    entries has one, 1 January of the year in the title's trailing "(YYYY)" (a guessed date
    never beats a title's given one); NaT when neither exists."""
    titles = movies["movie_title"].astype(str)
    from_title = pd.to_datetime(titles.str.extract(_TITLE_YEAR, expand=False), format="%Y",
                                errors="coerce")
    if "movie_release_date" not in movies:
        return from_title
    given = pd.to_datetime(movies["movie_release_date"])
    dated = given.notna().groupby(titles).transform("any")
    return given.where(dated | given.notna(), from_title)


def release_table(titles: Iterable, dates, spec: FeatureSpec) -> np.ndarray:
    """[spec.num_title_rows] int64: row ``spec.title_index(title)`` holds the
    :func:`release_buckets` id of the title's earliest known release date (over the u.item
    entries sharing the title); 0 for the OOV row and titles without a date. ``titles`` [M] and
    ``dates`` [M] are the corpus' (:func:`release_dates`)."""
    rows = np.asarray(spec.title_index(list(titles)), dtype=np.int64)
    buckets = release_buckets(dates)
    known = buckets > 0
    table = np.full(spec.num_title_rows, NUM_RELEASE_BUCKETS, dtype=np.int64)
    np.minimum.at(table, rows[known], buckets[known])  # the earliest entry of a title wins
    table[table == NUM_RELEASE_BUCKETS] = 0
    table[0] = 0
    return table


# --- user history ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryIndex:
    """Ratings by user, sorted by time: what :meth:`lookup` takes histories from.

    ``users``: user id -> slot; per slot its ratings are ``keys[offsets[s]: offsets[s + 1]]``
    (``slot << 32 | timestamp``, ascending) and ``titles`` (title ids) in the same order.
    """

    users: dict
    keys: np.ndarray
    titles: np.ndarray

    @classmethod
    def from_ratings(cls, user_ids: Iterable, timestamps: Iterable, title_index: Iterable
                     ) -> "HistoryIndex":
        """From rating rows (the TRAINING split's): [R] user ids, timestamps, title ids."""
        users = np.asarray(list(user_ids) if not isinstance(user_ids, np.ndarray) else user_ids,
                           dtype=object).astype(str)
        ts = _timestamps(timestamps)
        titles = np.asarray(title_index, dtype=np.int64)
        if not len(users) == len(ts) == len(titles):
            raise ValueError(f"{len(users)} users, {len(ts)} timestamps, {len(titles)} titles")
        if len(ts) and (ts.min() < 0 or ts.max() >= 1 << _TS_BITS):
            raise ValueError(f"rating timestamps must lie in [0, 2**{_TS_BITS}); got "
                             f"{ts.min()}..{ts.max()}")
        names, slots = np.unique(users, return_inverse=True)
        keys = (slots.astype(np.int64) << _TS_BITS) | ts
        order = np.argsort(keys, kind="stable")
        return cls({str(u): i for i, u in enumerate(names)}, keys[order], titles[order])

    def with_ratings(self, user_ids: Iterable, timestamps: Iterable, title_index: Iterable
                     ) -> "HistoryIndex":
        """This index plus more ratings (e.g. of a user unseen in training, to serve them)."""
        slots = self.keys >> _TS_BITS
        names = np.empty(len(self.users), dtype=object)
        for name, slot in self.users.items():
            names[slot] = name
        return HistoryIndex.from_ratings(
            np.concatenate([names[slots], np.asarray(list(user_ids), dtype=object)]),
            np.concatenate([self.keys & ((1 << _TS_BITS) - 1), _timestamps(timestamps)]),
            np.concatenate([self.titles, np.asarray(list(title_index), dtype=np.int64)]))

    def lookup(self, user_ids: Iterable, timestamps: Iterable, length: int = HISTORY_LENGTH
               ) -> np.ndarray:
        """[N, length] int64 title ids: per query, the user's ratings strictly before its
        timestamp, the most recent ``length``, oldest first, right-aligned (0-padded on the
        left); an unknown user has none."""
        start, end = self._bounds(user_ids, timestamps)
        count = np.minimum(end - start, length)
        cols = np.arange(length, dtype=np.int64)
        idx = end[:, None] - length + cols[None, :]
        valid = cols[None, :] >= (length - count)[:, None]
        taken = self.titles[np.clip(idx, 0, max(len(self.titles) - 1, 0))] if len(
            self.titles) else np.zeros(idx.shape, np.int64)
        return np.where(valid, taken, 0).astype(np.int64)

    def before(self, user_ids: Iterable, timestamps: Iterable) -> tuple[np.ndarray, np.ndarray]:
        """Every rating of each query's user strictly before its second, uncapped: (query [K] in
        [0, N), title id [K]) pairs, each query's oldest first; an unknown user has none."""
        start, end = self._bounds(user_ids, timestamps)
        query = np.repeat(np.arange(start.size, dtype=np.int64), end - start)
        return query, self.titles[_ranges(start, end - start)]

    def _bounds(self, user_ids: Iterable, timestamps: Iterable) -> tuple[np.ndarray, np.ndarray]:
        """[N] start, end into ``keys`` of each query's user's ratings strictly before its
        timestamp (start == end for an unknown user)."""
        users = np.asarray(list(user_ids) if not isinstance(user_ids, np.ndarray) else user_ids,
                           dtype=object)
        ts = np.clip(_timestamps(timestamps), 0, (1 << _TS_BITS) - 1)
        if len(users) != len(ts):
            raise ValueError(f"{len(users)} user ids but {len(ts)} timestamps")
        slots = np.array([self.users.get(str(u), -1) for u in users], dtype=np.int64)
        known = slots >= 0
        base = np.where(known, slots, 0) << _TS_BITS
        start = np.searchsorted(self.keys, base, side="left")
        end = np.searchsorted(self.keys, base | ts, side="left")  # strictly before ts
        return start, np.where(known, end, start)


def _timestamps(values: Iterable) -> np.ndarray:
    return np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                      dtype=np.int64)


DROPPED_USER = "\x00dropped-user-"   # + the rating row: no vocabulary holds it
_USER_DROPOUT_STREAM = 0x0D50


def user_dropout_view(dataset, rate: float, seed: int, keep_history: bool = False):
    """``dataset`` with ``round(rate * len(train))`` training ratings, drawn by (seed,
    ``_USER_DROPOUT_STREAM``), made anonymous: ``user_index`` 0 (the OOV row, what the torch
    towers read) and ``user_id`` ``DROPPED_USER + row`` (no vocabulary holds it: the OOV row of
    TFRS's StringLookup; one id per row, so such a row has no history, like a cold user's, and
    leaves the histories of its user's other ratings). The same rows for both backends, every
    epoch; only the training split changes. ``rate`` 0: ``dataset`` itself. ``keep_history``
    (``train.dropout_keeps_history``): the view's ``history_user_id`` keeps the real ids, so a
    dropped rating keeps its history and stays in its user's (the OOV row then learns beside
    histories, as a cold user with live histories asks). Why: cold users are served from the
    OOV row, which no training rating reaches otherwise."""
    if not rate:
        return dataset
    if not 0.0 < rate < 1.0:
        raise ValueError(f"user_dropout={rate} must be in [0, 1) (--user-dropout)")
    train = np.asarray(dataset.split.train)
    count = int(round(rate * train.size))
    picked = np.random.default_rng([seed, _USER_DROPOUT_STREAM]).choice(
        train.size, size=count, replace=False)
    rows = np.sort(train[picked])
    user_id = dataset.user_id.copy()
    user_id[rows] = [f"{DROPPED_USER}{r}" for r in rows.tolist()]
    user_index = dataset.features["user_index"].copy()
    user_index[rows] = 0
    return dataclasses.replace(dataset, user_id=user_id,
                               features={**dataset.features, "user_index": user_index},
                               history_user_id=dataset.history_ids if keep_history else None)


@dataclass(frozen=True)
class RecipeData:
    """The lookups of the genre, history, user-feature and release-date recipes (None where
    the config does not use it): ``genres`` [title rows, NUM_GENRES] (:func:`genre_table`),
    ``history`` (training ratings), ``users`` (every user's features, :class:`UserTable`),
    ``releases`` [title rows] (:func:`release_table`)."""

    genres: np.ndarray | None = None
    history: HistoryIndex | None = None
    users: UserTable | None = None
    releases: np.ndarray | None = None

    @classmethod
    def from_dataset(cls, dataset, config: Config) -> "RecipeData | None":
        """The tables ``config.model`` asks for, from ``dataset`` (its corpus; its TRAINING
        split only, for the histories; all its ratings' users, for the user table), or None
        when it asks for none. ValueError: user features of data without demographics."""
        m = config.model
        if not (m.genres or m.history or m.user_features or m.release_date):
            return None
        genres = history = users = releases = None
        if m.genres:
            movies = dataset.movielens.movies
            genres = genre_table(movies["movie_title"].to_numpy(dtype=object),
                                 movies["movie_genres"], dataset.spec)
        if m.history:
            train = dataset.split.train
            history = HistoryIndex.from_ratings(dataset.history_ids[train],
                                                dataset.timestamp[train],
                                                dataset.features["title_index"][train])
        if m.user_features:
            users = UserTable.from_ratings(dataset.movielens.ratings)
        if m.release_date:
            movies = dataset.movielens.movies
            releases = release_table(movies["movie_title"].to_numpy(dtype=object),
                                     release_dates(movies), dataset.spec)
        return cls(genres, history, users, releases)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for an ``np.savez`` beside a checkpoint's weights):
        ``genres``, ``history_users`` (str, by slot), ``history_keys``, ``history_titles``,
        ``user_table_ids``, ``user_table_values`` (:meth:`UserTable.to_arrays`), ``releases``."""
        out: dict[str, np.ndarray] = {}
        if self.genres is not None:
            out["genres"] = np.asarray(self.genres, dtype=np.int64)
        if self.releases is not None:
            out["releases"] = np.asarray(self.releases, dtype=np.int64)
        if self.history is not None:
            names = sorted(self.history.users, key=self.history.users.get)
            out["history_users"] = np.asarray(names, dtype=str)
            out["history_keys"] = self.history.keys
            out["history_titles"] = self.history.titles
        if self.users is not None:
            out.update(self.users.to_arrays())
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "RecipeData":
        """The inverse of :meth:`to_arrays` (ValueError naming what is inconsistent)."""
        genres = np.asarray(arrays["genres"], dtype=np.int64) if "genres" in arrays else None
        if genres is not None and (genres.ndim != 2 or genres.shape[1] != NUM_GENRES):
            raise ValueError(f"genres must be [title rows, {NUM_GENRES}], got {genres.shape}")
        history = None
        if "history_keys" in arrays:
            keys = np.asarray(arrays["history_keys"], dtype=np.int64)
            titles = np.asarray(arrays["history_titles"], dtype=np.int64)
            users = [str(u) for u in arrays["history_users"]]
            if len(keys) != len(titles) or (len(keys) and (
                    np.any(np.diff(keys) < 0) or int(keys[-1] >> _TS_BITS) >= len(users))):
                raise ValueError("history arrays are inconsistent (keys unsorted, or a slot "
                                 "without a user, or keys and titles of different lengths)")
            history = HistoryIndex({u: i for i, u in enumerate(users)}, keys, titles)
        table = UserTable.from_arrays(arrays) if "user_table_ids" in arrays else None
        releases = np.asarray(arrays["releases"], dtype=np.int64) if "releases" in arrays else None
        if releases is not None and (releases.ndim != 1 or (releases.size and (
                releases.min() < 0 or releases.max() >= NUM_RELEASE_BUCKETS))):
            raise ValueError(f"releases must be [title rows] ids in 0..{NUM_RELEASE_BUCKETS - 1}")
        return cls(genres, history, table, releases)

    def histories(self, user_ids: Iterable, timestamps: Iterable,
                  length: int = HISTORY_LENGTH) -> np.ndarray:
        """[N, length] title ids (:meth:`HistoryIndex.lookup`)."""
        if self.history is None:
            raise ValueError("these recipe data have no history index (config.model.history "
                             "was off when they were made)")
        return self.history.lookup(user_ids, timestamps, length)

    def user_values(self, user_ids: Iterable) -> dict[str, np.ndarray]:
        """{user feature key: [N] str} of [N] user ids (:meth:`UserTable.lookup`: an id the
        table lacks gets the OOV value of every feature)."""
        if self.users is None:
            raise ValueError("these recipe data have no user table (config.model."
                             "user_features was off when they were made)")
        return self.users.lookup(user_ids)


def attach_recipe_data(model, recipe: RecipeData | None) -> None:
    """Give a retrieval model of either backend the lookups its towers hold: the genre table
    of ``config.model.genres`` (``candidate_model.embedding_model.attach_genres``) and the
    release table of ``config.model.release_date`` (``attach_releases``); the histories are
    inputs of the query tower, passed with each batch.

    Raises:
        ValueError: a table the towers read is missing from ``recipe``.
    """
    movie = model.candidate_model.embedding_model
    if movie.genre_embedding is not None:
        if recipe is None or recipe.genres is None:
            raise ValueError(not_attached("genre table"))
        movie.attach_genres(recipe.genres)
    if movie.release_embedding is not None:
        if recipe is None or recipe.releases is None:
            raise ValueError(not_attached("release table"))
        movie.attach_releases(recipe.releases)


def query_input(inputs, key: str, field: str, source: str):
    """``inputs[key]``, the column a query tower of ``config.model.<field>`` reads.

    Raises:
        KeyError: naming the field and ``source``, where the column comes from.
    """
    if key not in inputs:
        raise KeyError(f"the query tower of config.model.{field} needs a '{key}' input "
                       f"({source})")
    return inputs[key]


def not_attached(what: str) -> str:
    """The error of a model whose recipe lookups are missing (what to do about it)."""
    return (f"the {what} of this configuration's recipes are not attached: fit on the dataset, "
            "or backend.attach_recipe_data(RecipeData.from_dataset(dataset, config)) "
            "(a backend loaded from a checkpoint has the stored ones)")


def live_recipe(recipe: RecipeData | None, user_ids: Iterable, timestamps: Iterable,
                title_index: Iterable) -> RecipeData:
    """``recipe`` whose histories read the given ratings instead of the training split's.

    Args:
        recipe: the attached lookups (its genre and user tables are kept).
        user_ids, timestamps, title_index: [R] the ratings histories may read (the whole log,
            for ``config.eval.live_history``); :meth:`HistoryIndex.lookup` still takes only
            those strictly before each query's second.
    Returns:
        The same lookups with a :class:`HistoryIndex` of those ratings.
    Raises:
        ValueError: ``recipe`` has no history index (the history recipe is off).
    Why: a live service knows what a user rated a minute ago, test period or not; the causal
    cut of ``lookup`` keeps the query's own rating and everything after it out.
    """
    if recipe is None or recipe.history is None:
        raise ValueError(not_attached("user histories"))
    return dataclasses.replace(recipe, history=HistoryIndex.from_ratings(user_ids, timestamps,
                                                                        title_index))


def history_column(recipe: RecipeData | None, dataset, config: Config) -> np.ndarray | None:
    """[N, ``config.model.history_length``] rating rows' histories (every row of ``dataset``,
    each read under ``dataset.history_ids``) when ``config.model.history``."""
    if not config.model.history:
        return None
    if recipe is None or recipe.history is None:
        raise ValueError(not_attached("user histories"))
    return recipe.histories(dataset.history_ids, dataset.timestamp, config.model.history_length)


def query_columns(recipe: RecipeData | None, dataset, config: Config) -> dict[str, np.ndarray]:
    """The extra query-tower inputs of every rating row of ``dataset``.

    Args:
        recipe: the attached lookups (the histories come from it).
        dataset: N rating rows (``twostage.dataset.Dataset``, or its user-dropout view).
        config: which recipes are on.
    Returns:
        {``HISTORY``: [N, H] int64} when ``config.model.history``, plus {user feature key: [N]
        str} (each rating's own demographics, :func:`user_features.rating_values`) when
        ``config.model.user_features``; {} when neither.
    Raises:
        ValueError: a needed lookup is not attached, or the data lack demographics.
    Why: one place decides what both backends' training batches carry beside the seed's columns.
    """
    out: dict[str, np.ndarray] = {}
    history = history_column(recipe, dataset, config)
    if history is not None:
        out[HISTORY] = history
    if config.model.user_features:
        out.update(rating_values(dataset.movielens.ratings))
    return out


def query_extras(recipe: RecipeData | None, config: Config, user_ids: Iterable,
                 timestamps: Iterable) -> dict[str, np.ndarray]:
    """The extra query-tower inputs of [N] queries given by user id and timestamp.

    Args:
        recipe: the attached lookups.
        config: which recipes are on.
        user_ids: [N] str; timestamps: [N] int64.
    Returns:
        {``HISTORY``: [N, H] int64} and / or {user feature key: [N] str} (:meth:`RecipeData.
        user_values`), as :func:`query_columns` for rating rows; {} when neither recipe is on.
    Raises:
        RuntimeError: a needed lookup is not attached (the message says how to attach it).
    """
    out: dict[str, np.ndarray] = {}
    if config.model.history:
        if recipe is None or recipe.history is None:
            raise RuntimeError(not_attached("user histories"))
        out[HISTORY] = recipe.histories(user_ids, timestamps, config.model.history_length)
    if config.model.user_features:
        if recipe is None or recipe.users is None:
            raise RuntimeError(not_attached("user table"))
        out.update(recipe.user_values(user_ids))
    return out
