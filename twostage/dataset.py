"""Everything both backends consume, prepared once: records, feature spec, split, encoded arrays."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twostage.data.download import resolve_data_dir
from twostage.data.features import FeatureSpec
from twostage.data.movielens import MovieLens, load_movielens, object_column
from twostage.data.split import Split, make_split

from .config import Config


@dataclass(frozen=True)
class Dataset:
    """All ratings as aligned numpy columns plus the movie corpus.

    Raw columns (what the TFRS models take): ``user_id`` [N] str, ``timestamp`` [N] int64,
    ``movie_title`` [N] str, ``label`` [N] float32 (rating >= threshold).
    ``features``: ``spec.encode`` of every rating (what the torch models take) except
    ``title_tokens``: a rating's tokens are row ``title_index`` of ``title_token_table``
    [V + 1, L] (``FeatureSpec.title_token_table``; L = ``token_width``, the longest title of the
    corpus), which the torch models hold and gather from, so no [N, L] copy per rating exists.
    ``corpus_titles`` [M]: every movie of u.item in file order, duplicate titles kept (as the
    seed's ``movies`` dataset); ``corpus_features``: their encoded candidate-tower inputs.
    """

    movielens: MovieLens
    spec: FeatureSpec
    split: Split
    user_id: np.ndarray
    timestamp: np.ndarray
    movie_title: np.ndarray
    label: np.ndarray
    features: dict[str, np.ndarray]
    corpus_titles: np.ndarray
    corpus_features: dict[str, np.ndarray]
    title_token_table: np.ndarray
    history_user_id: np.ndarray | None = None

    @property
    def history_ids(self) -> np.ndarray:
        """[N] the id each rating's history is read under: ``history_user_id`` (set by
        ``recipes.user_dropout_view`` with ``dropout_keeps_history``: the real ids of ratings
        whose ``user_id`` was made anonymous), else ``user_id``."""
        return self.user_id if self.history_user_id is None else self.history_user_id

    @property
    def token_width(self) -> int:
        return int(self.title_token_table.shape[1])

    def raw(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Raw inputs of the given rating rows: user_id, timestamp, movie_title, label."""
        return {"user_id": self.user_id[rows], "timestamp": self.timestamp[rows],
                "movie_title": self.movie_title[rows], "label": self.label[rows]}

    def encoded(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Encoded inputs of the given rating rows (no ``title_tokens``: :meth:`title_tokens`),
        plus ``label``."""
        out = {k: v[rows] for k, v in self.features.items()}
        out["label"] = self.label[rows]
        return out

    def title_tokens(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), token_width] int64: the title tokens of the given rating rows."""
        return self.title_token_table[self.features["title_index"][rows]]

    def facts(self) -> dict:
        """Dataset facts recorded in reports."""
        return {"source": str(self.movielens.source), "dataset": self.movielens.dataset,
                "num_ratings": int(len(self.user_id)),
                "num_users": len(self.spec.user_vocab), "num_movies": int(len(self.corpus_titles)),
                "num_unique_titles": len(self.spec.title_vocab),
                "num_tokens": len(self.spec.token_vocab), "num_train": int(len(self.split.train)),
                "num_test": int(len(self.split.test)),
                "positive_rate": float(self.label.mean()) if len(self.label) else 0.0}


def from_movielens(movielens: MovieLens, config: Config) -> Dataset:
    """Fit the spec on ``movielens`` and encode every rating and the corpus."""
    spec = FeatureSpec.fit(movielens, num_buckets=config.data.num_buckets, max_tokens=config.data.max_tokens)
    r = movielens.ratings
    # Object arrays of shared str objects (one per distinct user / title): what the TFRS backend
    # feeds its string lookups; the torch backend reads ``features`` only.
    user_id = object_column(r["user_id"])
    timestamp = r["timestamp"].to_numpy(dtype=np.int64)
    movie_title = object_column(r["movie_title"])
    corpus_titles = movielens.movies["movie_title"].to_numpy(dtype=object)
    corpus_features = spec.encode_titles(corpus_titles)
    features = spec.encode_ratings(r, corpus_titles, corpus_features)
    if not features["title_index"].all():  # the loader refuses ratings of unknown movies
        raise ValueError("a rating's title is not in the title vocabulary (fitted on the movies "
                         "file): check that every rated movie id is in the movies file")
    return Dataset(
        movielens=movielens, spec=spec,
        split=make_split(config.data.split, timestamp, seed=config.seed,
                         train_fraction=config.data.train_fraction),
        user_id=user_id, timestamp=timestamp, movie_title=movie_title,
        label=(r["user_rating"].to_numpy() >= config.data.rating_threshold).astype(np.float32),
        features=features, corpus_titles=corpus_titles, corpus_features=corpus_features,
        title_token_table=spec.title_token_table())


def load_dataset(config: Config, data_dir: str | Path | None = None,
                 progress: bool = True) -> Dataset:
    """Locate the raw files of ``config.data.dataset`` (flag, env, cache, download), parse, fit
    and encode."""
    name = config.data.dataset
    directory = resolve_data_dir(data_dir or config.data.data_dir, dataset=name,
                                 progress=progress)
    return from_movielens(load_movielens(directory, dataset=name), config)


def synthetic_dataset(directory: str | Path, config: Config, *, num_users: int = 60,
                      num_movies: int = 50, num_ratings: int = 3000, seed: int = 0) -> Dataset:
    """Generate a seeded synthetic ml-100k folder in ``directory`` and prepare it (for tests and
    smoke runs; see data.synthetic)."""
    from twostage.data.synthetic import generate
    return from_movielens(load_movielens(generate(directory, num_users=num_users,
                                                  num_movies=num_movies,
                                                  num_ratings=num_ratings, seed=seed)), config)


def check_same_spec(dataset: Dataset, spec: FeatureSpec) -> None:
    """A backend must be trained on the dataset whose spec it was built from."""
    if dataset.spec.fingerprint() != spec.fingerprint():
        raise ValueError("the dataset's feature spec differs from the one this backend was "
                         "built with; build the backend from dataset.spec")


def check_spec_matches_config(spec: FeatureSpec, config: Config) -> None:
    """The spec's table sizes must be the ones the config asks for."""
    problems = []
    if len(spec.ts_boundaries) != config.data.num_buckets:
        problems.append(f"spec has {len(spec.ts_boundaries)} timestamp boundaries but "
                        f"config.num_buckets={config.data.num_buckets}")
    if spec.max_tokens != config.data.max_tokens:
        problems.append(f"spec.max_tokens={spec.max_tokens} but config.max_tokens="
                        f"{config.data.max_tokens}")
    if problems:
        raise ValueError("feature spec and config disagree: " + "; ".join(problems)
                         + " (fit the spec with this config: twostage.dataset.from_movielens)")
