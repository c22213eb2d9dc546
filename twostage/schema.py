"""A user's own data, described: which files hold the interactions, items and users, which
columns are ids, time and label, what kind each feature is, and which tower reads it.

One :class:`Schema`, from a TOML file (:meth:`Schema.from_toml`) or built in Python
(:meth:`Schema.from_dict` of the same structure); :data:`EXAMPLE` is the own-data issue's
example, which the tests read as written.

Paths are relative to the schema file's folder. Reader options per table: ``separator``,
``header`` (true / false, or the column names of a header-less file), ``encoding``,
``quoting`` (true: CSV quoting; false: none). Validation is of the description only (no file
is read here); every problem is one :class:`SchemaError` line naming the file, the key and the
fix, with the closest valid name where one was misspelt.
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXAMPLE = """
[interactions]
path = "events.parquet"           # .csv, .tsv, .parquet, .jsonl; a file or a folder of parts
user = "customer"                 # string or integer ids
item = "sku"
time = "event_time"               # unix seconds; optional
label = { column = "stars", positive_at_least = 4.0 }   # optional: without it the data is implicit

[items]                           # optional
path = "catalog.csv"
id = "sku"
features.name = "text"
features.tags = { kind = "multi_category", separator = "|" }

[users]                           # optional
path = "customers.jsonl"
id = "customer"
features.segment = "category"

[towers]
query = ["user", "time", "segment"]      # "user"/"item": the id embeddings
candidate = ["item", "name", "tags"]
"""

FEATURE_KINDS = ("id", "category", "multi_category", "text", "numeric", "timestamp")
SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl")
TABLES = ("interactions", "items", "users", "towers")
READER_KEYS = ("format", "separator", "header", "encoding", "quoting")
FORMATS = ("csv", "tsv", "parquet", "jsonl")
TABLE_KEYS = {
    "interactions": ("path", "user", "item", "time", "label", *READER_KEYS),
    "items": ("path", "id", "identity", "features", *READER_KEYS),
    "users": ("path", "id", "features", *READER_KEYS),
}
FEATURE_KEYS = ("kind", "column", "separator", "buckets")
TOWER_IDS = {"query": "user", "candidate": "item"}


class SchemaError(ValueError):
    """A schema that cannot describe a dataset; one line naming where and the fix."""


@dataclass(frozen=True)
class Feature:
    """A side feature: ``name``, ``kind`` (one of FEATURE_KINDS), ``separator``
    (multi_category: between values), ``buckets`` (numeric: optional bucket count),
    ``column`` (the column it reads; default its name: two features may read one column, as
    the seed reads a title as an id and as text)."""

    name: str
    kind: str
    separator: str | None = None
    buckets: int | None = None
    column: str | None = None

    @property
    def source(self) -> str:
        """The column this feature reads."""
        return self.column or self.name


@dataclass(frozen=True)
class Reader:
    """How a table's files are read: ``format`` (None: by the suffix), ``separator`` (None:
    by the format), ``header`` (True, False, or the column names), ``encoding``, ``quoting``
    (CSV quoting on)."""

    format: str | None = None
    separator: str | None = None
    header: bool | tuple[str, ...] = True
    encoding: str = "utf-8"
    quoting: bool = True


@dataclass(frozen=True)
class Label:
    """Explicit feedback: a rating ``column``; positives are values >= ``positive_at_least``."""

    column: str
    positive_at_least: float


@dataclass(frozen=True)
class Table:
    """One table: ``path`` (absolute; None: the table comes as a DataFrame), ``id`` (its key
    column; interactions: None), its features by name, its :class:`Reader`, and (items)
    ``identity``: the feature whose equal values are one item for the metrics (None: the id;
    the seed's titles: movies of one title are one item)."""

    path: Path | None
    id: str | None
    features: dict[str, Feature] = field(default_factory=dict)
    reader: Reader = Reader()
    identity: str | None = None

    @property
    def columns(self) -> list[str]:
        """The id column, then every column a feature reads (each once, in order)."""
        return list(dict.fromkeys([self.id, *(f.source for f in self.features.values())]))


@dataclass(frozen=True)
class Schema:
    """A validated description of a user's data (see the module docstring).

    ``interactions`` (with ``user``, ``item``, ``time`` or None, ``label`` or None), ``items``
    and ``users`` (or None), ``query`` and ``candidate``: the feature names each tower reads,
    in order ("user" / "item": the id embeddings; "time": the interactions' time column).
    """

    interactions: Table
    user: str
    item: str
    time: str | None
    label: Label | None
    items: Table | None
    users: Table | None
    query: tuple[str, ...]
    candidate: tuple[str, ...]
    source: str = "<schema>"

    @property
    def implicit(self) -> bool:
        """No label: every interaction is a positive."""
        return self.label is None

    @classmethod
    def from_toml(cls, path: Path | str, folder: Path | str | None = None,
                  source: str | None = None) -> "Schema":
        """Read and validate a schema file.

        Args:
            path: a TOML file; the paths inside are relative to its folder.
            folder: what the paths are relative to instead (a shipped schema's data folder).
            source: the name errors and run folders give it (default: ``path``).
        Returns:
            The validated Schema.
        Raises:
            SchemaError: the file is missing, not TOML, or describes no dataset (one line).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SchemaError(f"schema {path}: cannot be read ({e.strerror or e}); pass the "
                              "path of a .toml file") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SchemaError(f"schema {path}: not TOML ({e}); fix the line it names") from None
        return cls.from_dict(data, folder=path.parent if folder is None else folder,
                             source=str(path) if source is None else source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], folder: Path | str = ".",
                  source: str = "<schema>") -> "Schema":
        """The same structure as the TOML file, built in Python.

        Args:
            data: {"interactions": {...}, "items": {...}, "users": {...}, "towers": {...}}.
            folder: what relative paths are relative to.
            source: the name errors give for the schema.
        Returns:
            The validated Schema.
        Raises:
            SchemaError: one line naming the key and the fix.
        """
        where = _Where(source)
        _known(data, TABLES, where, "a top-level table")
        for required in ("interactions", "towers"):
            if required not in data:
                raise where.error(f"[{required}] is missing; every schema has [interactions] "
                                  "and [towers]")
        folder = Path(folder)
        inter = _table(data["interactions"], "interactions", folder, where)
        spec = data["interactions"]
        user, item = (_column(spec, key, where.at("interactions")) for key in ("user", "item"))
        time = _column(spec, "time", where.at("interactions"), required=False)
        label = _label(spec.get("label"), where.at("interactions.label"))
        items = _table(data["items"], "items", folder, where) if "items" in data else None
        users = _table(data["users"], "users", folder, where) if "users" in data else None
        query, candidate = _towers(data["towers"], where.at("towers"), time, items, users)
        return cls(inter, user, item, time, label, items, users, query, candidate, source)


# --- validation pieces ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Where:
    source: str
    key: str = ""

    def at(self, key: str) -> "_Where":
        return _Where(self.source, key)

    def error(self, message: str) -> SchemaError:
        place = f"{self.source}" + (f", {self.key}" if self.key else "")
        return SchemaError(f"schema {place}: {message}")


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known(mapping, valid, where: _Where, what: str) -> None:
    if not isinstance(mapping, Mapping):
        raise where.error(f"must be a table of keys, got {type(mapping).__name__}")
    for key in mapping:
        if key not in valid:
            raise where.error(f"unknown {what} {key!r}{_suggest(key, valid)}; known: "
                              f"{', '.join(valid)}")


def _column(spec: Mapping, key: str, where: _Where, required: bool = True) -> str | None:
    value = spec.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise where.error(f"{key!r} must name a column (a non-empty string), got {value!r}")
    return value


def _table(spec, name: str, folder: Path, where: _Where) -> Table:
    here = where.at(name)
    _known(spec, TABLE_KEYS[name], here, "key")
    raw = spec.get("path")
    if raw is not None and (not isinstance(raw, str) or not raw):
        raise here.error("'path' must name a file or a folder of parts, relative to the "
                         "schema's folder (or leave it out and pass DataFrames)")
    path = None if raw is None else (folder / raw).resolve() if not Path(raw).is_absolute() \
        else Path(raw)
    if path is not None and path.suffix and path.suffix.lower() not in SUFFIXES \
            and "format" not in spec:
        raise here.error(f"path {raw!r}: {path.suffix!r} files cannot be read; use one of "
                         f"{', '.join(SUFFIXES)} (or a folder of such parts)")
    key = None if name == "interactions" else _column(spec, "id", here)
    features = _features(spec.get("features", {}), here.at(f"{name}.features"))
    if key is not None and key in features:
        raise here.error(f"{key!r} is the table's id; it cannot also be a feature")
    identity = spec.get("identity")
    if identity is not None and (identity not in features
                                 or features[identity].kind not in ("id", "category")):
        raise here.error(f"'identity' {identity!r} must name an id or category feature of "
                         f"this table{_suggest(identity, features)}")
    return Table(path, key, features, _reader(spec, here), identity)


def _features(spec, where: _Where) -> dict[str, Feature]:
    if not isinstance(spec, Mapping):
        raise where.error("must map feature names to a kind or {kind = ...}")
    out = {}
    for name, value in spec.items():
        options = {"kind": value} if isinstance(value, str) else value
        _known(options, FEATURE_KEYS, where.at(f"{where.key}.{name}"), "feature key")
        kind = options.get("kind")
        if kind not in FEATURE_KINDS:
            raise where.error(f"feature {name!r}: kind {kind!r} is not one of "
                              f"{', '.join(FEATURE_KINDS)}{_suggest(kind, FEATURE_KINDS)}")
        separator = options.get("separator")
        if kind == "multi_category" and (not isinstance(separator, str) or not separator):
            raise where.error(f"feature {name!r}: a multi_category needs the separator of its "
                              "values, e.g. { kind = \"multi_category\", separator = \"|\" }")
        if kind != "multi_category" and separator is not None:
            raise where.error(f"feature {name!r}: 'separator' is for multi_category features")
        buckets = options.get("buckets")
        if buckets is not None and (kind != "numeric" or not isinstance(buckets, int)
                                    or isinstance(buckets, bool) or buckets < 2):
            raise where.error(f"feature {name!r}: 'buckets' is a whole number >= 2 of a "
                              "numeric feature")
        column = options.get("column")
        if column is not None and (not isinstance(column, str) or not column):
            raise where.error(f"feature {name!r}: 'column' must name a column, got {column!r}")
        out[name] = Feature(name, kind, separator, buckets, column)
    return out


def _reader(spec: Mapping, where: _Where) -> Reader:
    header = spec.get("header", True)
    if isinstance(header, list):
        if not header or not all(isinstance(h, str) and h for h in header):
            raise where.error("'header' as a list gives the column names of a header-less "
                              "file: non-empty strings")
        header = tuple(header)
    elif not isinstance(header, bool):
        raise where.error(f"'header' must be true, false or a list of column names, got "
                          f"{header!r}")
    separator = spec.get("separator")
    if separator is not None and (not isinstance(separator, str) or not separator):
        raise where.error(f"'separator' must be a non-empty string, got {separator!r}")
    encoding = spec.get("encoding", "utf-8")
    try:
        "".encode(encoding)
    except (LookupError, TypeError):
        raise where.error(f"'encoding' {encoding!r} is not a text encoding Python knows, "
                          "e.g. \"utf-8\" or \"latin-1\"") from None
    quoting = spec.get("quoting", True)
    if not isinstance(quoting, bool):
        raise where.error(f"'quoting' must be true or false, got {quoting!r}")
    fmt = spec.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise where.error(f"'format' {fmt!r} is not one of {', '.join(FORMATS)}"
                          f"{_suggest(fmt, FORMATS)}")
    return Reader(fmt, separator, header, encoding, quoting)


def _label(spec, where: _Where) -> Label | None:
    if spec is None:
        return None
    _known(spec, ("column", "positive_at_least"), where, "label key")
    column = _column(spec, "column", where)
    threshold = spec.get("positive_at_least")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise where.error(f"'positive_at_least' must be a number (ratings at or above it are "
                          f"positives), got {threshold!r}")
    return Label(column, float(threshold))


def _towers(spec, where: _Where, time: str | None, items: Table | None, users: Table | None
            ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    _known(spec, tuple(TOWER_IDS), where, "tower")
    sides = {"query": (users, "users"), "candidate": (items, "items")}
    out = {}
    for tower, id_name in TOWER_IDS.items():
        names = spec.get(tower)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise where.error(f"'{tower}' must list the features its tower reads, e.g. "
                              f"[\"{id_name}\", ...]")
        if len(set(names)) != len(names):
            raise where.error(f"'{tower}' names a feature twice: {names}")
        table, table_name = sides[tower]
        valid = [id_name] + (["time"] if tower == "query" and time else []) + (
            list(table.features) if table is not None else [])
        for name in names:
            if name not in valid:
                where_else = _declared_elsewhere(name, tower, items, users, time)
                raise where.error(f"'{tower}' names {name!r}, which {where_else}; the {tower} "
                                  f"tower can read: {', '.join(valid)}{_suggest(name, valid)}")
        out[tower] = tuple(names)
    return out["query"], out["candidate"]


def _declared_elsewhere(name: str, tower: str, items, users, time) -> str:
    other = {"query": (items, "[items]"), "candidate": (users, "[users]")}[tower]
    if other[0] is not None and name in other[0].features:
        return f"is a feature of {other[1]}, not of this tower's table"
    if name == "time" and time is None:
        return "needs 'time' in [interactions]"
    if name in ("user", "item"):
        return "is the other tower's id"
    return "no table declares"
