"""Reports split by audience (warm users, cold users, new titles): the masks by hand, and the
model's per-audience figures against the same evaluation run on that audience's rows alone."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twostage import evaluation as ev
from twostage import pipeline, report


def test_audiences_by_hand():
    """Users 0 and 1 rated in training, user 2 did not; title 3 was never rated in training
    (fails if warm and cold were swapped, or new_title tested the corpus instead of training)."""
    seen = ev.SeenTitles(users=[0, 0, 1], titles=[1, 2, 2], corpus_titles=[1, 2, 3, 2])
    masks = seen.audiences(users=[0, 2, 1, 2, 9], titles=[3, 1, 2, 3, 0])
    np.testing.assert_array_equal(masks["warm"], [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(masks["cold"], [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(masks["new_title"], [1, 0, 0, 1, 1])
    assert tuple(masks) == ev.AUDIENCES


def with_cold_users(ds):
    """``ds`` with 8 users and 2 titles rated only late, split by time."""
    from twostage.data.split import temporal_split
    late_user = np.isin(ds.features["user_index"], np.unique(ds.features["user_index"])[:8])
    new_title = np.isin(ds.features["title_index"], np.unique(ds.features["title_index"])[:2])
    stamps = ds.timestamp + (late_user + 2 * new_title) * (np.ptp(ds.timestamp) + 1)
    return dataclasses.replace(ds, timestamp=stamps,
                               split=temporal_split(stamps, train_fraction=0.8))


@pytest.fixture(scope="module")
def trained(synthetic_dataset, small_config):
    from torch_impl.backend import TorchBackend
    ds = with_cold_users(synthetic_dataset)
    backend = TorchBackend(small_config, ds.spec)
    backend.fit_retrieval(ds, epochs=1)
    return backend, ds


def test_model_audience_figures_equal_their_rows_alone(trained, small_config):
    """Each audience's retrieval and two-stage figures (both protocols) equal the evaluation
    of its rows alone, and the whole set's figures are unchanged by the split (fails if a
    mask were applied to the wrong queries, e.g. before the shard or in another order)."""
    backend, ds = trained
    cfg = small_config
    full = pipeline.evaluate(backend, ds, cfg)
    rows = ds.split.test
    masks = pipeline.seen_titles(ds).audiences(ds.features["user_index"][rows],
                                               ds.features["title_index"][rows])
    assert all(m.any() for m in masks.values())
    for name, mask in masks.items():
        part = pipeline.audience_view(full, name)
        alone = pipeline.evaluate_retrieval(backend, ds, cfg, rows[mask])
        alone.pop("by_audience")
        assert part["num_queries"] == int(mask.sum())
        assert part["retrieval"] == alone
        for block, exclude in (("two_stage", False), ("two_stage_exclude_seen", True)):
            alone = pipeline.evaluate_two_stage(backend, ds, cfg, rows[mask],
                                                exclude_seen=exclude)
            alone.pop("by_audience")
            assert part[block] == alone
    warm, cold = (pipeline.audience_view(full, a)["num_queries"] for a in ("warm", "cold"))
    assert warm + cold == full["retrieval"]["num_queries"]


def test_results_markdown_has_the_audience_table(trained, small_config):
    """results.md carries one row per audience, protocol and figure with the audience's count
    (fails if the table were dropped from results_markdown)."""
    backend, ds = trained
    model = pipeline.evaluate(backend, ds, small_config)
    text = report.results_markdown({"torch": model})
    counts = {a: pipeline.audience_view(model, a)["num_queries"] for a in ev.AUDIENCES}
    for audience, label in report.AUDIENCE_LABELS.items():
        assert f"| {label}: {counts[audience]} | exclude_seen | top-10 |" in text
