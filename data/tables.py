"""A schema's tables read into pandas frames, checked before anything is encoded.

:func:`load_frames` reads the interactions, items and users tables a :class:`Schema`
describes (CSV, TSV, Parquet or JSON lines; a file or a folder of parts) with pyarrow
(multi-threaded, columns typed once) and refuses, in one line naming the file, the column, the
first rows and the fix, what would otherwise train on wrong data: a column the file lacks (with
the closest name), null or empty ids, a non-numeric label, interactions whose item the items
table lacks (unless ``drop_unknown_items``, which says how many it dropped), an id listed twice
with different features, an empty table, a file that is not of its suffix's format. Ids mixing
integers and strings are read as strings, said once.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pa_parquet

from ..schema import SUFFIXES, Schema, Table

log = logging.getLogger(__name__)
FIRST_ROWS = 5  # how many offending rows an error quotes


class TableError(ValueError):
    """A table that does not hold what its schema says; one line naming where and the fix."""


@dataclass(frozen=True)
class Frames:
    """The tables of a schema, checked: ``interactions`` (its user, item, time and label
    columns), ``items`` and ``users`` (their id and feature columns) or None."""

    interactions: pd.DataFrame
    items: pd.DataFrame | None
    users: pd.DataFrame | None


def load_frames(schema: Schema, drop_unknown_items: bool = False) -> Frames:
    """Read and check every table of ``schema``.

    Args:
        schema: a validated :class:`Schema`.
        drop_unknown_items: drop (and count, on stderr) interactions whose item is not in the
            items table, instead of refusing them.
    Returns:
        The :class:`Frames`; ids as strings where a column mixed integers and strings.
    Raises:
        TableError: one line naming the file, the column, the first offending rows, the fix.
    """
    for name, table in (("interactions", schema.interactions), ("items", schema.items),
                        ("users", schema.users)):
        if table is not None and table.path is None:
            raise TableError(f"schema {schema.source}: [{name}] has no 'path'; give one, or "
                             "pass the tables as DataFrames (twostage.Dataset.from_frames)")
    interactions = read_table(schema.interactions, _interaction_columns(schema), "interactions")
    items, users = (None if t is None else read_table(t, t.columns, what)
                    for t, what in ((schema.items, "items"), (schema.users, "users")))
    return _checked(schema, Frames(interactions, items, users), drop_unknown_items)


def check_frames(schema: Schema, frames: Frames, drop_unknown_items: bool = False) -> Frames:
    """:func:`load_frames`' checks of tables given as DataFrames (errors name the table).

    Raises:
        TableError: a missing column (naming the closest), an empty table, or what
            :func:`load_frames` refuses.
    """
    for frame, table, columns, what in (
            (frames.interactions, schema.interactions, _interaction_columns(schema),
             "interactions"),
            (frames.items, schema.items, None, "items"), (frames.users, schema.users, None,
                                                          "users")):
        if table is None and frame is not None:
            raise TableError(f"a {what} DataFrame was given but the schema has no [{what}] "
                             "table; describe it in the schema or leave it out")
        if table is None:
            continue
        if frame is None:
            raise TableError(f"the schema's [{what}] table needs its DataFrame ({what}=...)")
        columns = columns or table.columns
        _has_columns(list(frame.columns), columns, f"the {what} DataFrame")
        if frame.empty:
            raise TableError(f"the {what} DataFrame has no rows")
    labelled = Frames(*(None if f is None else f.reset_index(drop=True)[
        list(f.columns)] for f in (frames.interactions, frames.items, frames.users)))
    return _checked(schema, labelled, drop_unknown_items, label="DataFrame")


def _interaction_columns(schema: Schema) -> list[str]:
    return [c for c in (schema.user, schema.item, schema.time,
                        schema.label.column if schema.label else None) if c]


def _checked(schema: Schema, frames: Frames, drop_unknown_items: bool, label: str = ""
             ) -> Frames:
    """Ids, time and label columns checked and typed; items and users deduplicated."""
    where = _place(schema.interactions, "interactions", label)
    interactions = frames.interactions
    for column in (schema.user, schema.item):
        interactions[column] = _ids(interactions[column], where, column)
    if schema.time:
        interactions[schema.time] = _numbers(interactions[schema.time], where, schema.time,
                                             "time")
    if schema.label:
        interactions[schema.label.column] = _numbers(
            interactions[schema.label.column], where, schema.label.column, "label")
    items = _side(schema.items, frames.items, "items", label)
    users = _side(schema.users, frames.users, "users", label)
    if items is not None:
        interactions = _known_items(interactions, items, schema, drop_unknown_items, where)
    return Frames(interactions, items, users)


def _place(table: Table, what: str, label: str) -> str:
    """What errors call a table: its file, or "the <what> DataFrame"."""
    return f"the {what} {label}" if label else str(table.path)


def read_table(table: Table, columns: list[str], what: str) -> pd.DataFrame:
    """The ``columns`` of ``table``'s file or folder of parts, as one frame (parts in name
    order). Raises TableError for a missing file, a file its reader cannot parse, a missing
    column (naming the closest one) or no rows."""
    parts = _parts(table, what)
    frames = [_read_part(path, table, columns) for path in parts]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if frame.empty:
        raise TableError(f"{table.path}: the {what} table has no rows; point the schema at "
                         "the file that holds them")
    return frame


def _parts(table: Table, what: str) -> list[Path]:
    path = table.path
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and (p.suffix.lower() in SUFFIXES or table.reader.format))
        if not parts:
            raise TableError(f"{path}: the {what} folder holds no {', '.join(SUFFIXES)} file")
        if len({p.suffix.lower() for p in parts}) > 1:
            raise TableError(f"{path}: the {what} folder mixes file types; keep one per table")
        return parts
    if not path.is_file():
        raise TableError(f"{path}: the {what} file does not exist; fix 'path' in the schema "
                         "(relative to the schema's folder)")
    return [path]


def _read_part(path: Path, table: Table, columns: list[str]) -> pd.DataFrame:
    reader = table.reader
    suffix = f".{reader.format}" if reader.format else path.suffix.lower()
    try:
        if suffix == ".parquet":
            data = pa_parquet.read_table(path)
        elif suffix == ".jsonl":
            data = pa_json.read_json(path)
        else:
            data = _read_delimited(path, reader, reader.separator or (
                "\t" if suffix == ".tsv" else ","))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
        kind = {".parquet": "Parquet", ".jsonl": "JSON lines"}.get(suffix, "CSV")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TableError(f"{path}: not a readable {kind} file ({first}); check the file, or "
                         "the schema's separator / header / encoding / quoting") from None
    _has_columns(data.column_names, columns, str(path))
    return data.select(columns).to_pandas()


# pyarrow's CSV reader takes a one-character delimiter; a longer separator (MovieLens 1M's
# "::") is replaced by this control character, which such files never hold (checked).
UNIT_SEPARATOR = "\x1f"


def _read_delimited(path: Path, reader, separator: str) -> pa.Table:
    """A delimited text file as an Arrow table (pyarrow's multi-threaded reader). A separator
    of several characters is rewritten to :data:`UNIT_SEPARATOR` in memory first (one pass
    over the text: about twice the file's size in memory)."""
    header = reader.header
    read = pa_csv.ReadOptions(encoding=reader.encoding,
                              column_names=list(header) if isinstance(header, tuple) else None,
                              autogenerate_column_names=header is False)
    parse = pa_csv.ParseOptions(delimiter=separator if len(separator) == 1 else UNIT_SEPARATOR,
                                quote_char='"' if reader.quoting else False)
    if len(separator) == 1:
        return pa_csv.read_csv(path, read_options=read, parse_options=parse)
    text = path.read_bytes().decode(reader.encoding)
    if UNIT_SEPARATOR in text:
        raise TableError(f"{path}: holds the control character U+001F, which a separator of "
                         f"several characters ({separator!r}) is read through; use a "
                         "one-character separator")
    data = text.replace(separator, UNIT_SEPARATOR).encode("utf-8")
    read = pa_csv.ReadOptions(encoding="utf-8", column_names=read.column_names,
                              autogenerate_column_names=read.autogenerate_column_names)
    return pa_csv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse)


def _has_columns(present: list[str], columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in present]
    if missing:
        close = difflib.get_close_matches(missing[0], [str(c) for c in present], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TableError(f"{where}: no column {missing[0]!r}{hint}; its columns: "
                         f"{', '.join(str(c) for c in present[:20])}; fix the schema or the "
                         "data")


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)[:FIRST_ROWS] + 1
    more = f" and {int(mask.sum()) - len(rows)} more" if mask.sum() > len(rows) else ""
    return ", ".join(str(r) for r in rows) + more


def _ids(values: pd.Series, path: Path | str, column: str) -> pd.Series:
    """Ids as they are (integers) or as strings; null or empty ids refused. Text is checked
    per distinct value (25M ids are a few hundred thousand distinct ones)."""
    empty = values.isna().to_numpy()
    if _is_text(values):
        codes, distinct = pd.factorize(values)          # nulls: code -1, not in distinct
        blank = np.append(np.char.strip(np.asarray(distinct, dtype=str)) == "", False)
        empty = empty | blank[codes]
    if empty.any():
        raise TableError(f"{path}: column {column!r} has null or empty ids at data rows "
                         f"{_rows(empty)}; every row needs an id: fill or drop them")
    if _is_text(values):
        text = values.astype(str)
        distinct = pd.Series(pd.unique(text))
        integer = distinct.str.fullmatch(r"[+-]?\d+").to_numpy()
        if integer.any() and not integer.all():
            log.warning("%s: column %r mixes integer and other ids (e.g. %r and %r); reading "
                        "them all as strings", path, column, distinct[integer].iloc[0],
                        distinct[~integer].iloc[0])
        return text
    return values


def _numbers(values: pd.Series, path: Path | str, column: str, what: str) -> pd.Series:
    """A numeric column as it is (a text one converted); missing or non-numbers refused."""
    is_number = pd.api.types.is_numeric_dtype(values.dtype) and not \
        pd.api.types.is_bool_dtype(values.dtype)
    numeric = values if is_number else pd.to_numeric(values, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        raise TableError(f"{path}: the {what} column {column!r} is not numeric at data rows "
                         f"{_rows(bad)} (e.g. {values.iloc[int(np.argmax(bad))]!r}); a "
                         f"{what} must be a number")
    return numeric


def _side(table: Table | None, frame: pd.DataFrame | None, what: str, label: str
          ) -> pd.DataFrame | None:
    """An items or users table: its id and features; an id listed twice must agree."""
    if table is None:
        return None
    where = _place(table, what, label)
    frame = frame[table.columns].copy()
    frame[table.id] = _ids(frame[table.id], where, table.id)
    repeated = frame[table.id].duplicated(keep=False).to_numpy()
    if repeated.any():
        distinct = frame[repeated].drop_duplicates()
        conflicting = distinct[table.id].duplicated(keep=False).to_numpy()
        if conflicting.any():
            first = distinct[table.id].iloc[int(np.argmax(conflicting))]
            raise TableError(f"{where}: {what} id {first!r} is listed more than once with "
                             "different features; keep one row per id")
        frame = frame.drop_duplicates(subset=[table.id], ignore_index=True)
    return frame


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values.dtype)


def _known_items(interactions: pd.DataFrame, items: pd.DataFrame, schema: Schema,
                 drop: bool, where: str) -> pd.DataFrame:
    item, key = schema.item, schema.items.id
    if _is_text(items[key]) != _is_text(interactions[item]):
        log.warning("%s: item ids are strings in one table and integers in the other; "
                    "comparing them as strings", where)
        interactions[item], items[key] = (interactions[item].astype(str),
                                          items[key].astype(str))
    unknown = ~interactions[item].isin(pd.unique(items[key])).to_numpy()
    if not unknown.any():
        return interactions
    examples = ", ".join(repr(str(v)) for v in interactions[item][unknown].unique()[:FIRST_ROWS])
    if not drop:
        raise TableError(f"{where}: {int(unknown.sum())} interactions name "
                         f"items the items table lacks (e.g. {examples}); add them to "
                         f"{'the items table' if schema.items.path is None else schema.items.path.name}, "
                         "or pass --drop-unknown-items")
    log.warning("%s: dropped %d interactions whose item the items table lacks (e.g. %s)",
                where, int(unknown.sum()), examples)
    kept = interactions[~unknown].reset_index(drop=True)
    if kept.empty:
        raise TableError(f"{where}: no interaction is left after dropping "
                         "the unknown items; the items table and the interactions do not "
                         "match")
    return kept
