"""The own-data issue's loading targets: a schema's tables read and encoded, against TFDS' own
parser on the same file, and Parquet against CSV.

    python -m benchmarks.load_schema --ratings 25000000     # the ML-25M layout, generated

On one generated folder of the ML-25M layout (``benchmarks.scale.synthetic_folder``, in the
cache, labelled synthetic; the real archive cannot be downloaded here), in one process, one
after the other, each timed once after a warm-up read of the files:

- ``tfds``: TFDS' ``parse_current_ratings_data`` yielding every record (the reference);
- ``csv``: ``twostage.load("ml-25m")``: ratings.csv and movies.csv read with pyarrow, checked,
  encoded (ids, timestamps, titles, split): records and features, ready to train;
- ``parquet``: the same with the two tables as Parquet files (written once beside the CSVs'
  copy in the cache, not timed) and a schema naming them.

Writes ``load_schema-<ratings>-synthetic.json`` into ``--out`` (default docs/results) with the
seconds, the ratios ``csv_speedup_over_tfds`` and ``parquet_speedup_over_csv``, the machine,
and prints them. Run it alone: a second heavy process on 2 cores halves every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pa_parquet

from twostage import io
from twostage.config import Config
from twostage.data.schema_data import Options, SchemaDataset
from twostage.data.tables import load_frames
from twostage.owndata import read_schema, shipped_schema
from twostage.schema import Schema

from .scale import machine, measure_tfds, synthetic_folder


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def load_seconds(schema: Schema) -> dict:
    """Seconds to read + check the tables and to encode them (records and features)."""
    frames, read_s = timed(lambda: load_frames(schema))
    data, encode_s = timed(lambda: SchemaDataset.from_checked(
        schema, frames, Options.from_config(Config())))
    return {"read_s": read_s, "encode_s": encode_s, "total_s": read_s + encode_s,
            "interactions": data.num_interactions, "items": len(data.item_ids)}


def parquet_copy(folder: Path) -> Path:
    """ratings.parquet / movies.parquet of ``folder``'s CSVs in a sibling folder, once."""
    target = folder.with_name(folder.name + "-parquet")
    if io.marker_kind(target) == "parquet copy":
        return target

    def write(tmp: Path) -> None:
        for name in ("ratings", "movies"):
            pa_parquet.write_table(pa_csv.read_csv(folder / f"{name}.csv"),
                                   tmp / f"{name}.parquet")
    io.replace_directory(target, write, kind="parquet copy")
    return target


def parquet_schema(folder: Path) -> Schema:
    """The shipped ml-25m schema, its two paths renamed to the Parquet files."""
    text = shipped_schema("ml-25m").read_text(encoding="utf-8")
    text = text.replace('"ratings.csv"', '"ratings.parquet"').replace(
        '"movies.csv"', '"movies.parquet"')
    (folder / "schema.toml").write_text(text, encoding="utf-8")
    return Schema.from_toml(folder / "schema.toml")


def measure(ratings: int, cache: Path | None) -> dict:
    folder = synthetic_folder("25m", ratings, cache)
    parquet = parquet_copy(folder)
    csv_schema = read_schema("ml-25m", folder)
    load_seconds(csv_schema)                      # warm-up: the files in the page cache
    out = {"ratings": ratings, "synthetic": True, "folder": str(folder), "machine": machine()}
    out["tfds"] = measure_tfds(folder, "25m")
    out["csv"] = load_seconds(csv_schema)
    out["parquet"] = load_seconds(parquet_schema(parquet))
    out["csv_speedup_over_tfds"] = out["tfds"]["ratings_s"] / out["csv"]["total_s"]
    out["parquet_speedup_over_csv"] = out["csv"]["total_s"] / out["parquet"]["total_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratings", type=int, default=25_000_000,
                   help="ratings of the generated ML-25M-layout folder (default 25,000,000)")
    p.add_argument("--cache-dir", default=None, help="where the generated folder lives "
                   "(default: the twostage cache)")
    p.add_argument("--out", default="docs/results", help="folder of the JSON (default "
                   "docs/results)")
    args = p.parse_args(argv)
    if args.ratings < 1:
        p.error(f"--ratings {args.ratings}: must be >= 1")
    report = measure(args.ratings, Path(args.cache_dir) if args.cache_dir else None)
    path = io.write_json(Path(args.out) / f"load_schema-{args.ratings}-synthetic.json", report)
    print(f"{args.ratings:,} ratings (generated, ML-25M layout), {os.cpu_count()} cores:")
    print(f"  TFDS parser          {report['tfds']['ratings_s']:8.2f} s")
    for kind in ("csv", "parquet"):
        r = report[kind]
        print(f"  ours, {kind:<8}       {r['total_s']:8.2f} s (read {r['read_s']:.2f} + "
              f"encode {r['encode_s']:.2f})")
    print(f"  CSV vs TFDS: {report['csv_speedup_over_tfds']:.1f}x; Parquet vs CSV: "
          f"{report['parquet_speedup_over_csv']:.1f}x -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
