"""Smoke runs of benchmarks.scale on tiny generated folders: every measurement is reported, the
synthetic folder is written once into the cache and labelled, the plot is drawn."""
from __future__ import annotations

import json

import pytest

from benchmarks import scale
from twostage.data.synthetic import generate


def _report(out):
    (path,) = out.glob("scale-*.json")
    return json.loads(path.read_text())


def test_both_backends_on_a_synthetic_csv_folder(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert scale.main(["--dataset", "latest-small", "--backend", "both", "--synthetic-ratings",
                       "3000", "--cache-dir", str(cache), "--steps", "2", "--batch-size", "128",
                       "--eval-queries", "200", "--out", str(out)]) == 0
    report = _report(out)
    assert report["synthetic"] and report["num_ratings"] == 3000
    assert report["folder"] == str(cache / "synthetic" / "ml-latest-small-3000")
    results = report["results"]
    assert set(results) == {"tfds", "data", "torch", "tfrs"}
    assert results["tfds"]["records"] == 3000 and results["tfds"]["ratings_s"] > 0
    for name in ("torch", "tfrs"):
        r = results[name]
        for stage in ("retrieval", "ranking"):
            assert r[stage]["examples_per_epoch"] == 2 * 128  # --steps 2 of --batch-size 128
            assert len(r[stage]["epoch_seconds"]) == 2 and r[stage]["examples_per_s"] > 0
        assert r["eval_queries"] == 200 and r["evaluation_s"] > 0 and r["index_build_s"] > 0
        assert set(r["peak_rss_mb"]) == {"after_load", "after_features", "after_training",
                                         "after_evaluation"}
        assert r["load_s"] > 0 and r["features_s"] > 0
    summary = report["summary"]
    assert {"loading_speedup_over_tfds", "retrieval_torch_over_tfrs", "ranking_torch_over_tfrs",
            "torch_peak_rss_gib", "tfrs_peak_rss_gib"} <= set(summary)
    assert (out / "scale.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "MovieLens latest-small (synthetic), 3000 ratings" in printed
    assert "loading_speedup_over_tfds" in printed


@pytest.mark.parametrize("layout, dataset", [("100k", "100k"), ("1m", "1m"), ("csv", "25m")])
def test_data_measurements_of_each_layout(tmp_path, layout, dataset):
    folder = generate(tmp_path / "ml", layout=layout, realistic=True, num_users=40,
                      num_movies=30, num_ratings=500, seed=1)
    out = tmp_path / "out"
    assert scale.main(["--dataset", dataset, "--backend", "none", "--data-dir", str(folder),
                       "--out", str(out)]) == 0
    report = _report(out)
    assert not report["synthetic"] and report["num_ratings"] == 500
    assert set(report["results"]) == {"tfds", "data"}
    assert report["results"]["tfds"]["records"] == 500
    assert report["results"]["data"]["num_movies"] == 30


def test_synthetic_folder_is_written_once(tmp_path, monkeypatch):
    first = scale.synthetic_folder("1m", 400, tmp_path)
    assert sorted(p.name for p in first.iterdir() if not p.name.startswith(".")) == [
        "movies.dat", "ratings.dat", "users.dat"]
    monkeypatch.setattr("twostage.data.synthetic.generate",
                        lambda *a, **k: pytest.fail("generated again"))
    assert scale.synthetic_folder("1m", 400, tmp_path) == first


def test_synthetic_shape_follows_the_release():
    assert scale.synthetic_shape("25m", 25_000_095) == (162_541, 62_423)
    users, movies = scale.synthetic_shape("25m", 250_001)
    assert users == 1625 and movies == 6242
    users, movies = scale.synthetic_shape("100k", 3)
    assert users * movies >= 6


@pytest.mark.parametrize("flag", ["--steps", "--epochs", "--batch-size", "--synthetic-ratings"])
def test_rejects_non_positive_counts(flag):
    with pytest.raises(SystemExit):
        scale.main(["--dataset", "100k", flag, "0"])
