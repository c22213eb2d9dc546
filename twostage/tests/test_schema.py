"""twostage.schema: the own-data issue's example schema as written, the same structure built in
Python, and every bad description refused in one line naming the key and the fix."""
from __future__ import annotations

import pytest

from twostage.schema import EXAMPLE, Feature, Label, Reader, Schema, SchemaError, tomllib

def example_dict() -> dict:
    """The example as the Python structure from_dict takes."""
    return tomllib.loads(EXAMPLE)


def test_the_issues_example_reads_as_written(tmp_path):
    (tmp_path / "schema.toml").write_text(EXAMPLE)
    schema = Schema.from_toml(tmp_path / "schema.toml")
    assert schema.interactions.path == (tmp_path / "events.parquet").resolve()
    assert (schema.user, schema.item, schema.time) == ("customer", "sku", "event_time")
    assert schema.label == Label("stars", 4.0) and not schema.implicit
    assert schema.items.id == "sku" and schema.items.path.name == "catalog.csv"
    assert schema.items.features == {"name": Feature("name", "text"),
                                     "tags": Feature("tags", "multi_category", "|")}
    assert schema.users.features == {"segment": Feature("segment", "category")}
    assert schema.query == ("user", "time", "segment")
    assert schema.candidate == ("item", "name", "tags")
    assert schema.interactions.reader == Reader()
    built = Schema.from_dict(example_dict(), folder=tmp_path,
                             source=str(tmp_path / "schema.toml"))
    assert built == schema


def test_minimal_implicit_schema_and_reader_options(tmp_path):
    schema = Schema.from_dict({
        "interactions": {"path": "parts", "user": "u", "item": "i", "separator": ";",
                         "header": ["u", "i"], "encoding": "latin-1", "quoting": False},
        "towers": {"query": ["user"], "candidate": ["item"]}}, folder=tmp_path)
    assert schema.implicit and schema.time is None and schema.items is None
    assert schema.interactions.reader == Reader(None, ";", ("u", "i"), "latin-1", False)
    assert schema.interactions.path == (tmp_path / "parts").resolve()


def _broken(change) -> dict:
    data = example_dict()
    change(data)
    return data


BAD = {
    "unknown table, suggested": (lambda d: d.update(interaction=d.pop("interactions")),
                                 "did you mean 'interactions'"),
    "no towers": (lambda d: d.pop("towers"), "[towers] is missing"),
    "unknown kind, suggested": (lambda d: d["items"]["features"].update(name="txt"),
                                "did you mean 'text'"),
    "multi_category without separator": (
        lambda d: d["items"]["features"].update(tags="multi_category"), "needs the separator"),
    "unknown table key": (lambda d: d["items"].update(idd="x"), "did you mean 'id'"),
    "unknown format, suggested": (lambda d: d["items"].update(format="cvs"),
                                  "did you mean 'csv'"),
    "identity not a category feature": (lambda d: d["items"].update(identity="name"),
                                        "'identity' 'name' must name an id or category"),
    "feature column not a string": (
        lambda d: d["items"]["features"].update(name={"kind": "text", "column": 3}),
        "'column' must name a column"),
    "tower names an undeclared feature": (
        lambda d: d["towers"]["query"].append("segmnt"), "did you mean 'segment'"),
    "tower names the other table's feature": (
        lambda d: d["towers"]["query"].append("tags"), "is a feature of [items]"),
    "time without a time column": (lambda d: d["interactions"].pop("time"),
                                   "needs 'time' in [interactions]"),
    "a file type that cannot be read": (lambda d: d["items"].update(path="catalog.xlsx"),
                                        "'.xlsx' files cannot be read"),
    "a label threshold that is no number": (
        lambda d: d["interactions"]["label"].update(positive_at_least="4"), "must be a number"),
    "an id that is also a feature": (
        lambda d: d["items"]["features"].update(sku="category"), "cannot also be a feature"),
    "a feature named twice in a tower": (lambda d: d["towers"]["candidate"].append("name"),
                                         "names a feature twice"),
    "an unknown encoding": (lambda d: d["users"].update(encoding="klingon"),
                            "not a text encoding"),
    "a column that is no string": (lambda d: d["interactions"].update(user=3),
                                   "'user' must name a column"),
    "buckets on a category": (lambda d: d["users"]["features"].update(
        segment={"kind": "category", "buckets": 4}), "'buckets' is a whole number"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_schemas_are_one_line_naming_the_fix(case, tmp_path):
    change, message = BAD[case]
    with pytest.raises(SchemaError) as raised:
        Schema.from_dict(_broken(change), folder=tmp_path, source="s.toml")
    text = str(raised.value)
    assert message in text and text.startswith("schema s.toml") and "\n" not in text, text


def test_unreadable_and_non_toml_files_name_the_file(tmp_path):
    with pytest.raises(SchemaError, match="cannot be read"):
        Schema.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[interactions\npath = 1\n")
    with pytest.raises(SchemaError, match=f"schema {bad}: not TOML"):
        Schema.from_toml(bad)
