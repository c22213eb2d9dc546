"""twostage.data.tables: a schema's tables read from every file kind, and every bad table
refused in one line naming the file, the column, the first rows and the fix."""
from __future__ import annotations

import logging

import pandas as pd
import pytest

from twostage.data.tables import TableError, load_frames
from twostage.schema import EXAMPLE, Schema, tomllib


def write(tmp_path, interactions=None, items=None, users=None) -> None:
    (interactions if interactions is not None else pd.DataFrame({
        "customer": ["a", "b", "a", "c"], "sku": [10, 11, 12, 10],
        "event_time": [100, 200, 300, 400], "stars": [5.0, 3.0, 4.0, 1.0]})
     ).to_parquet(tmp_path / "events.parquet")
    (items if items is not None else pd.DataFrame({
        "sku": [10, 11, 12], "name": ["Red shoe", "Blue hat", "Green coat"],
        "tags": ["shoe|red", "hat", "coat|green|warm"]})).to_csv(tmp_path / "catalog.csv",
                                                                 index=False)
    (users if users is not None else pd.DataFrame({
        "customer": ["a", "b", "c"], "segment": ["x", "y", "x"]})
     ).to_json(tmp_path / "customers.jsonl", orient="records", lines=True)


def schema(tmp_path, **changes) -> Schema:
    data = tomllib.loads(EXAMPLE)
    for table, update in changes.items():
        data[table].update(update)
    return Schema.from_dict(data, folder=tmp_path, source="s.toml")


def test_parquet_csv_and_jsonl_tables_load(tmp_path):
    write(tmp_path)
    frames = load_frames(schema(tmp_path))
    assert list(frames.interactions.columns) == ["customer", "sku", "event_time", "stars"]
    assert frames.interactions["customer"].tolist() == ["a", "b", "a", "c"]
    assert frames.items["name"].tolist() == ["Red shoe", "Blue hat", "Green coat"]
    assert frames.users.set_index("customer")["segment"].to_dict() == {"a": "x", "b": "y",
                                                                        "c": "x"}


def test_a_folder_of_parts_and_reader_options(tmp_path):
    write(tmp_path)
    parts = tmp_path / "items"
    parts.mkdir()
    (parts / "part-0.tsv").write_bytes("10;Caf\xe9 cup;cup\n".encode("latin-1"))
    (parts / "part-1.tsv").write_bytes("11;Blue hat;hat\n12;Green coat;coat\n".encode("latin-1"))
    frames = load_frames(schema(tmp_path, items={
        "path": "items", "separator": ";", "header": ["sku", "name", "tags"],
        "encoding": "latin-1"}))
    assert frames.items["name"].tolist() == ["Caf\xe9 cup", "Blue hat", "Green coat"]


def test_a_separator_of_several_characters(tmp_path):
    """MovieLens 1M's "::" files: pyarrow takes one-character delimiters, so the text goes
    through U+001F (a file holding it is refused). Break: pass "::" to pyarrow as it is and
    the read fails; drop the U+001F check and the second file splits a title."""
    write(tmp_path)
    (tmp_path / "items.dat").write_bytes("10::Caf\xe9, \"the\" cup::cup\n11::Hat: blue::hat\n"
                                         "12::Coat::coat|warm\n".encode("latin-1"))
    items = {"path": "items.dat", "format": "csv", "separator": "::", "quoting": False,
             "header": ["sku", "name", "tags"], "encoding": "latin-1"}
    frames = load_frames(schema(tmp_path, items=items))
    assert frames.items["name"].tolist() == ["Caf\xe9, \"the\" cup", "Hat: blue", "Coat"]
    (tmp_path / "items.dat").write_bytes(b"10::A\x1fB::cup\n")
    with pytest.raises(TableError, match="items.dat: holds the control character U\\+001F"):
        load_frames(schema(tmp_path, items=items))


BAD = {
    "a column the file lacks, the closest named": (
        dict(interactions=pd.DataFrame({"custmer": ["a"], "sku": [10], "event_time": [1],
                                        "stars": [4.0]})),
        ["events.parquet", "no column 'customer'", "did you mean 'custmer'"]),
    "null ids with their rows": (
        dict(interactions=pd.DataFrame({"customer": ["a", None, "b", ""], "sku": [10] * 4,
                                        "event_time": [1] * 4, "stars": [4.0] * 4})),
        ["'customer' has null or empty ids at data rows 2, 4"]),
    "a label that is no number": (
        dict(interactions=pd.DataFrame({"customer": ["a", "b"], "sku": [10, 11],
                                        "event_time": [1, 2], "stars": ["4", "great"]})),
        ["label column 'stars' is not numeric at data rows 2", "'great'"]),
    "interactions of items the catalog lacks": (
        dict(interactions=pd.DataFrame({"customer": ["a", "b"], "sku": [10, 99],
                                        "event_time": [1, 2], "stars": [4.0, 5.0]})),
        ["1 interactions name items the items table lacks", "99", "--drop-unknown-items"]),
    "an id listed twice with different features": (
        dict(users=pd.DataFrame({"customer": ["a", "b", "c", "a"],
                                 "segment": ["x", "y", "x", "z"]})),
        ["customers.jsonl", "users id 'a' is listed more than once with different features"]),
    "an empty table": (
        dict(items=pd.DataFrame({"sku": [], "name": [], "tags": []})),
        ["catalog.csv", "the items table has no rows"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tables_are_one_line_naming_the_fix(case, tmp_path):
    files, messages = BAD[case]
    write(tmp_path, **files)
    with pytest.raises(TableError) as raised:
        load_frames(schema(tmp_path))
    text = str(raised.value)
    assert "\n" not in text and all(m in text for m in messages), text


def test_a_parquet_file_that_is_not_parquet(tmp_path):
    write(tmp_path)
    (tmp_path / "events.parquet").write_text("customer,sku\na,10\n")
    with pytest.raises(TableError, match="events.parquet: not a readable Parquet file"):
        load_frames(schema(tmp_path))


def test_unknown_items_dropped_on_request_and_said(tmp_path, caplog):
    write(tmp_path, interactions=pd.DataFrame({
        "customer": ["a", "b", "c"], "sku": [10, 99, 98], "event_time": [1, 2, 3],
        "stars": [4.0, 5.0, 1.0]}))
    with caplog.at_level(logging.WARNING):
        frames = load_frames(schema(tmp_path), drop_unknown_items=True)
    assert frames.interactions["sku"].tolist() == [10]
    assert "dropped 2 interactions" in caplog.text


def test_identical_repeated_rows_collapse_and_mixed_ids_are_said_once(tmp_path, caplog):
    write(tmp_path, users=pd.DataFrame({"customer": ["a", "b", "c", "a"],
                                        "segment": ["x", "y", "x", "x"]}))
    (tmp_path / "catalog.csv").write_text("sku,name,tags\n10,Red shoe,shoe\nab,Blue hat,hat\n"
                                          "12,Green coat,coat\n")
    with caplog.at_level(logging.WARNING):
        frames = load_frames(schema(tmp_path), drop_unknown_items=True)
    assert frames.users["customer"].tolist() == ["a", "b", "c"]
    assert frames.items["sku"].tolist() == ["10", "ab", "12"]
    assert caplog.text.count("mixes integer and other ids") == 1
