"""A schema's checked tables, encoded once for either backend: the corpus, the users, the
interactions and the split, plus the :class:`Slot` list each tower is built from.

Both backends read the same integer / float arrays (``data.encoders``' rules, which equal the
Keras preprocessing layers) and build their towers from the same slots, so a schema run has the
seed's guarantee: the same inputs, the same layers, the same batches on both backends.

Array keys (one per slot input): an ``id`` / ``category`` feature ``f`` is ``f`` [N] int64
(0 unknown); ``multi_category`` / ``text`` is ``f`` [N, L] int64 (0 padding, 1 unknown);
``timestamp`` is ``f/bucket`` [N] int64 and ``f/norm`` [N] float32; ``numeric`` is ``f/norm``
(and ``f/bucket`` with buckets). The tower ids are the features ``user`` and ``item``; the
interactions' time column is the ``timestamp`` feature ``time``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..schema import Feature, Schema
from .encoders import MAX_TITLE_TOKENS, Lookup, MultiLookup, Numeric, Text, fit_encoder
from .features import NON_WHITESPACE, standardize
from .split import Split, make_split
from .tables import Frames, check_frames, load_frames

log = logging.getLogger(__name__)
TIME = "time"
PADDED_KINDS = ("multi_category", "text")


@dataclass(frozen=True)
class Slot:
    """One tower input: the feature ``name``, its ``kind`` and ``rows`` (embedding rows; 0:
    none, a numeric feature without buckets).

    Output width in a tower: ``dim`` per embedding plus 1 per normalised value
    (:attr:`width`); the tower concatenates its slots' outputs in order.
    """

    name: str
    kind: str
    rows: int

    @property
    def keys(self) -> tuple[str, ...]:
        """The array keys this slot reads (see the module docstring)."""
        if self.kind == "timestamp":
            return (f"{self.name}/bucket", f"{self.name}/norm")
        if self.kind == "numeric":
            return ((f"{self.name}/bucket",) if self.rows else ()) + (f"{self.name}/norm",)
        return (self.name,)

    def width(self, dim: int) -> int:
        """Output columns: ``dim`` for an embedding, +1 for a normalised value."""
        embedded = dim if self.rows else 0
        return embedded + (1 if self.kind in ("timestamp", "numeric") else 0)


@dataclass(frozen=True)
class Options:
    """What encoding takes from the configuration: timestamp ``num_buckets``, text
    ``max_tokens``, the ``split`` (random / temporal), its ``seed`` and ``train_fraction``."""

    num_buckets: int = 1000
    max_tokens: int = 10_000
    split: str = "random"
    seed: int = 42
    train_fraction: float = 0.8

    @classmethod
    def from_config(cls, config) -> "Options":
        d = config.data
        return cls(d.num_buckets, d.max_tokens, d.split, config.seed, d.train_fraction)


@dataclass(frozen=True)
class SchemaDataset:
    """A schema's data, encoded (see the module docstring for the array keys).

    ``item_ids`` [M] (the corpus: the items table in file order, else the interactions' sorted
    distinct items) and ``user_ids`` [U] (the interactions' sorted distinct users, then users
    only the users table lists), as str. ``user_row`` / ``item_row`` [N] int64: each
    interaction's rows in them; ``time`` [N] int64 or None; ``label`` [N] float32 (1 where the
    rating is >= the schema's threshold; every interaction of implicit data).
    ``users`` / ``items``: the encoded query / candidate side features per user / item row.
    ``encoders``: the fitted encoder of every feature by name. ``query_slots`` /
    ``candidate_slots``: the towers, in the schema's order.
    """

    schema: Schema
    options: Options
    item_ids: np.ndarray
    user_ids: np.ndarray
    user_row: np.ndarray
    item_row: np.ndarray
    time: np.ndarray | None
    label: np.ndarray
    encoders: dict
    users: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    query_slots: tuple[Slot, ...]
    candidate_slots: tuple[Slot, ...]
    split: Split

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, schema: Schema, options: Options = Options(),
             drop_unknown_items: bool = False) -> "SchemaDataset":
        """Read the schema's files (``tables.load_frames``), then :meth:`from_checked`.

        Raises:
            tables.TableError: a table that does not hold what the schema says (one line).
        """
        return cls.from_checked(schema, load_frames(schema, drop_unknown_items), options)

    @classmethod
    def from_frames(cls, interactions: pd.DataFrame, schema: Schema,
                    items: pd.DataFrame | None = None, users: pd.DataFrame | None = None,
                    config=None, drop_unknown_items: bool = False) -> "SchemaDataset":
        """The same from DataFrames in memory (the schema's paths are not read).

        Args:
            interactions, items, users: the tables the schema describes (items / users when
                the schema has them).
            schema: a :class:`Schema` (paths may be left out).
            config: a ``twostage.Config`` (split, buckets, tokens) or :class:`Options`.
            drop_unknown_items: as :func:`tables.load_frames`.
        Raises:
            tables.TableError: the frames break the schema (as files would, named by table).
        """
        options = config if isinstance(config, Options) else (
            Options() if config is None else Options.from_config(config))
        frames = check_frames(schema, Frames(interactions.copy(), _copy(items), _copy(users)),
                              drop_unknown_items)
        return cls.from_checked(schema, frames, options)

    @classmethod
    def from_checked(cls, schema: Schema, frames: Frames, options: Options) -> "SchemaDataset":
        """Fit every encoder on all the data (as the seed fits its layers) and encode."""
        inter = frames.interactions
        user_codes, users_seen = _distinct(inter[schema.user])
        item_codes, items_seen = _distinct(inter[schema.item])
        user_ids = _ids(users_seen, frames.users, schema.users)
        item_ids = (frames.items[schema.items.id].astype(str).to_numpy(object)
                    if frames.items is not None else np.unique(items_seen).astype(object))
        user_row = _rows_of(user_ids, pd.Series(users_seen))[user_codes]
        item_row = _rows_of(item_ids, pd.Series(items_seen))[item_codes]
        time = None if schema.time is None else inter[schema.time].to_numpy().astype(np.int64)
        label = (np.ones(len(inter), np.float32) if schema.label is None else
                 (inter[schema.label.column].to_numpy(np.float64)
                  >= schema.label.positive_at_least).astype(np.float32))
        encoders = {"user": Lookup.fit(users_seen), "item": Lookup.fit(item_ids)}
        users = {"user": encoders["user"].encode(user_ids)}
        items = {"item": encoders["item"].encode(item_ids)}
        if time is not None:
            encoders[TIME] = Numeric.fit(time, options.num_buckets)
        _encode_side(schema.users, frames.users, user_ids, options, encoders, users)
        _encode_side(schema.items, frames.items, item_ids, options, encoders, items)
        split = make_split(options.split, time if time is not None
                           else _no_time(options, len(inter)),
                           seed=options.seed, train_fraction=options.train_fraction)
        kinds = {name: f.kind for t in (schema.users, schema.items) if t is not None
                 for name, f in t.features.items()}
        kinds.update(user="id", item="id", time="timestamp")
        return cls(schema, options, item_ids, user_ids, user_row, item_row, time, label,
                   encoders, users, items, _slots(schema.query, encoders, kinds),
                   _slots(schema.candidate, encoders, kinds), split)

    # --- what the backends read ---------------------------------------------------------------
    @property
    def num_interactions(self) -> int:
        return int(len(self.user_row))

    @property
    def implicit(self) -> bool:
        return self.schema.label is None

    def query_inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The query-tower arrays of interaction ``rows``: user features and the time."""
        out = {k: v[self.user_row[rows]] for k, v in self.users.items()
               if _reads(self.query_slots, k)}
        if self.time is not None and any(s.name == TIME for s in self.query_slots):
            out.update(encode_time(self.encoders[TIME], self.time[rows]))
        return out

    def candidate_inputs(self, item_rows: np.ndarray) -> dict[str, np.ndarray]:
        """The candidate-tower arrays of corpus rows ``item_rows``."""
        return {k: v[item_rows] for k, v in self.items.items() if _reads(self.candidate_slots, k)}

    def examples(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Everything a training batch of interaction ``rows`` holds: both towers' arrays,
        ``item_index`` [N] (the positive's corpus row + 1: the accidental-hit id) and
        ``label`` [N] float32."""
        return {**self.query_inputs(rows), **self.candidate_inputs(self.item_row[rows]),
                "item_index": self.item_row[rows] + 1, "label": self.label[rows]}

    def ranking_examples(self, rows: np.ndarray, negatives: int, seed: int
                         ) -> dict[str, np.ndarray]:
        """:meth:`examples` of interaction ``rows`` (label 1), then ``negatives`` items per row
        drawn uniformly from the corpus with ``np.random.default_rng(seed)`` (label 0; a draw
        may hit the row's own item), for the ranker of implicit data: both backends get the
        same draws."""
        drawn = np.random.default_rng(seed).integers(0, len(self.item_ids),
                                                     size=len(rows) * negatives)
        repeated = np.repeat(np.asarray(rows, np.int64), negatives)
        sampled = {**self.query_inputs(repeated), **self.candidate_inputs(drawn),
                   "item_index": drawn + 1, "label": np.zeros(len(drawn), np.float32)}
        positive = self.examples(rows)
        positive["label"] = np.ones(len(rows), np.float32)
        return {k: np.concatenate([positive[k], sampled[k]]) for k in positive}

    def user_inputs(self, user_ids, times=None) -> dict[str, np.ndarray]:
        """Query-tower arrays of arbitrary users (unknown ones: the unknown row and empty
        features) at ``times`` (default: the last interaction time of the data)."""
        ids = np.asarray([str(u) for u in user_ids], dtype=object)
        rows = _rows_of(self.user_ids, pd.Series(ids), missing=-1)
        out = {}
        for key, table in self.users.items():
            if _reads(self.query_slots, key):
                blank = np.zeros((1, *table.shape[1:]), table.dtype)
                out[key] = np.concatenate([table, blank])[rows]  # row -1: the blank one
        if "user" in out:
            out["user"] = self.encoders["user"].encode(ids)
        if self.time is not None and any(s.name == TIME for s in self.query_slots):
            at = np.full(len(ids), self.time.max(), np.int64) if times is None else times
            out.update(encode_time(self.encoders[TIME], np.asarray(at, np.int64)))
        return out

    def seen_items(self, rows: np.ndarray) -> dict[int, np.ndarray]:
        """Per user row, the sorted corpus rows of its interactions among ``rows``."""
        frame = pd.DataFrame({"u": self.user_row[rows], "i": self.item_row[rows]})
        return {int(u): np.unique(g.to_numpy()) for u, g in frame.groupby("u")["i"]}

    def facts(self) -> dict:
        """Dataset facts recorded in reports."""
        return {"source": self.schema.source, "num_interactions": self.num_interactions,
                "num_users": int(len(self.user_ids)), "num_items": int(len(self.item_ids)),
                "num_train": int(len(self.split.train)), "num_test": int(len(self.split.test)),
                "implicit": self.implicit, "positive_rate": float(self.label.mean()),
                "query": list(self.schema.query), "candidate": list(self.schema.candidate)}


# --- pieces ---------------------------------------------------------------------------------------
def encode_time(encoder: Numeric, times: np.ndarray) -> dict[str, np.ndarray]:
    """The ``time`` slot's arrays of [N] unix seconds."""
    return {f"{TIME}/bucket": encoder.bucket(times), f"{TIME}/norm": encoder.normalized(times)}


def _copy(frame):
    return None if frame is None else frame.copy()


def _no_time(options: Options, n: int) -> np.ndarray:
    if options.split == "temporal":
        raise ValueError("split='temporal' needs the interactions' time column: add 'time' to "
                         "[interactions] in the schema, or use --split random")
    return np.zeros(n, np.int64)  # the random split reads only its length


def _distinct(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N], distinct values as str [D]): per-row work is one hash pass, the string
    conversions are per distinct value."""
    codes, uniques = pd.factorize(column)
    return codes, np.asarray(uniques).astype(str)


def _ids(users_seen: np.ndarray, users: pd.DataFrame | None, table) -> np.ndarray:
    """The interactions' sorted distinct users, then those only the users table lists."""
    known = np.unique(users_seen).astype(object)
    if users is None:
        return known
    extra = np.setdiff1d(users[table.id].astype(str).to_numpy(str), known.astype(str))
    return np.concatenate([known, extra.astype(object)])


def _rows_of(ids: np.ndarray, values: pd.Series, missing: int | None = None) -> np.ndarray:
    """Row of each value in ``ids`` (a str array); ``missing`` for absent ones, else refused."""
    index = pd.Index(ids.astype(str))
    rows = index.get_indexer(values.astype(str).to_numpy(str))
    if missing is None and (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} ids are not in the table they should be in")
    return np.where(rows < 0, -1 if missing is None else missing, rows).astype(np.int64)


def _encode_side(table, frame, ids: np.ndarray, options: Options, encoders: dict,
                 out: dict) -> None:
    """Fit the features of an items / users ``table`` and encode them per row of ``ids``
    (ids the table lacks: unknown / empty / the mean)."""
    if table is None:
        return
    rows = _rows_of(frame[table.id].astype(str).to_numpy(object), pd.Series(ids), missing=-1)
    for name, feature in table.features.items():
        column = frame[feature.source]
        encoder = _fit(feature, column, options)
        encoders[name] = encoder
        encoded = _encode(feature, encoder, column.to_numpy(object))
        for key, values in encoded.items():
            blank = np.zeros((1, *values.shape[1:]), values.dtype)
            out[key] = np.concatenate([values, blank])[rows]


def _fit(feature: Feature, column: pd.Series, options: Options):
    """A missing string (null, NaN) is read as "" (pyarrow and pandas disagree on which they
    give); a missing number is left out of the moments."""
    if feature.kind in ("numeric", "timestamp"):
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    else:
        values = _text(column.to_numpy(object))
    return fit_encoder(feature.kind, values, separator=feature.separator,
                       buckets=(options.num_buckets if feature.kind == "timestamp"
                                else feature.buckets), max_tokens=options.max_tokens)


def _encode(feature: Feature, encoder, values: np.ndarray) -> dict[str, np.ndarray]:
    name = feature.name
    if isinstance(encoder, Text):
        _say_capped(feature, values)
    if isinstance(encoder, (Lookup, MultiLookup, Text)):
        return {name: encoder.encode(_text(values))}
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
    numbers = np.where(np.isfinite(numbers), numbers, encoder.mean)  # missing: the mean
    out = {f"{name}/norm": encoder.normalized(numbers)}
    if encoder.boundaries:
        out[f"{name}/bucket"] = encoder.bucket(numbers)
    return out


def tokenize_all(text: str) -> list[str]:
    """Every token of ``text`` (no cap), by TextVectorization's rule."""
    return NON_WHITESPACE.findall(standardize(text))


def _say_capped(feature: Feature, values: np.ndarray) -> None:
    """Warn once when texts of ``feature`` have more tokens than are kept. A text of fewer
    than 2 * MAX_TITLE_TOKENS characters cannot have more tokens, so only longer ones are
    tokenised here."""
    long = [v for v in values if isinstance(v, str) and len(v) >= 2 * MAX_TITLE_TOKENS - 1]
    over = sum(1 for v in long if len(tokenize_all(v)) > MAX_TITLE_TOKENS)
    if over:
        log.warning("feature %r: %d text(s) have more than %d tokens; the first %d of each are "
                    "kept (the title treatment's cap)", feature.name, over, MAX_TITLE_TOKENS,
                    MAX_TITLE_TOKENS)


def _text(values: np.ndarray) -> list:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]


def _slots(names: tuple[str, ...], encoders: dict, kinds: dict) -> tuple[Slot, ...]:
    """A timestamp side feature is read as a numeric one with buckets (the same arrays)."""
    return tuple(Slot(n, "numeric" if kinds[n] == "timestamp" and n != TIME else kinds[n],
                      encoders[n].rows) for n in names)


def _reads(slots: tuple[Slot, ...], key: str) -> bool:
    return any(key in s.keys for s in slots)


__all__ = ["SchemaDataset", "Slot", "Options", "TIME", "encode_time"]
