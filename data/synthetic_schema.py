"""A generated dataset of the own-data issue's example schema (``twostage.schema.EXAMPLE``):
``events.parquet``, ``catalog.csv``, ``customers.jsonl`` and ``schema.toml`` in one folder.

Seeded and learnable: each customer's segment prefers some tags, so a model reading the tags
and segments beats most-popular. For tests, the README quick start and smoke runs; no real
data of this layout exists on the project's machines.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..schema import EXAMPLE

TAGS = ("red", "blue", "green", "warm", "light", "sale", "new", "classic")
WORDS = ("shoe", "hat", "coat", "scarf", "glove", "sock", "belt", "bag")
SEGMENTS = ("north", "south", "east", "west")


def generate(folder: Path | str, *, num_users: int = 200, num_items: int = 120,
             num_events: int = 6000, seed: int = 0) -> Path:
    """Write the example's three tables and its schema file into ``folder``.

    Args:
        folder: created when missing; files of the same names are replaced (atomically).
        num_users, num_items, num_events: table sizes (>= 1 each).
        seed: every draw comes from ``np.random.default_rng(seed)``.
    Returns:
        The schema file's path.
    """
    if min(num_users, num_items, num_events) < 1:
        raise ValueError("num_users, num_items and num_events must each be >= 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    segments = rng.integers(0, len(SEGMENTS), num_users)
    tags = rng.random((num_items, len(TAGS))) < 0.3
    likes = rng.random((len(SEGMENTS), len(TAGS))) < 0.35
    affinity = (tags[None, :, :] & likes[:, None, :]).sum(axis=2) + 0.2   # [S, M]
    user = rng.integers(0, num_users, num_events)
    prob = affinity[segments[user]]
    prob /= prob.sum(axis=1, keepdims=True)
    item = (prob.cumsum(axis=1) > rng.random((num_events, 1))).argmax(axis=1)
    stars = np.clip(np.round(2 + 3 * affinity[segments[user], item] / affinity.max()
                             + rng.normal(0, 0.7, num_events)), 1, 5)
    events = pd.DataFrame({"customer": [f"c{u:05d}" for u in user], "sku": 1000 + item,
                           "event_time": 1_600_000_000 + np.sort(rng.integers(0, 10**7,
                                                                              num_events)),
                           "stars": stars.astype(np.float64)})
    catalog = pd.DataFrame({
        "sku": 1000 + np.arange(num_items),
        "name": [f"{WORDS[i % len(WORDS)].title()} {TAGS[int(np.argmax(tags[i]))]} no. {i}"
                 for i in range(num_items)],
        "tags": ["|".join(t for t, on in zip(TAGS, row) if on) for row in tags]})
    customers = pd.DataFrame({"customer": [f"c{u:05d}" for u in range(num_users)],
                              "segment": [SEGMENTS[s] for s in segments]})
    io.write_with(folder / "events.parquet", lambda tmp: events.to_parquet(tmp, index=False))
    io.write_text(folder / "catalog.csv", catalog.to_csv(index=False))
    io.write_text(folder / "customers.jsonl",
                  customers.to_json(orient="records", lines=True))
    io.write_text(folder / "schema.toml", EXAMPLE.lstrip())
    return folder / "schema.toml"
