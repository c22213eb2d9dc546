"""benchmarks.quality on tiny synthetic data: every recipe run and baseline reported, targets."""
from __future__ import annotations

import json

import pytest

from benchmarks import quality
from twostage.data.synthetic import generate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml"), num_users=80, num_movies=60,
                    num_ratings=2000, seed=5)


@pytest.mark.slow
def test_quality_runs_recipes_and_baselines_and_resumes(data_dir, tmp_path, capsys):
    argv = ["--data-dir", str(data_dir), "--seeds", "2", "--recipes", "seed,best",
            "--epochs", "1", "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    report = json.loads((tmp_path / "quality.json").read_text())
    assert {r: len(v) for r, v in report["runs"].items()} == {"seed": 2, "best": 2}
    columns = [c for c, _, _ in quality.FIGURES]
    for runs in report["runs"].values():
        for figures in runs:
            assert all(0.0 <= figures[c] <= 1.0 for c in columns) and figures["train_s"] > 0
    assert set(report["baselines"]) == set(quality.BASELINES)
    assert report["baselines"]["popular"]["top-100"] >= report["baselines"]["popular"]["top-10"]
    assert [t["target"] for t in report["targets"]][-1].startswith("best's re-ranked nDCG@10")
    for recipe, cells in report["summary"].items():                 # mean of the seeds' runs
        mean = sum(r["top-10"] for r in report["runs"][recipe]) / 2
        assert cells["top-10"][0] == pytest.approx(mean)
    md = (tmp_path / "quality.md").read_text()
    assert "baseline: ease" in md and "| best (" in md
    ease = report["baselines"]["ease"]              # issue 27: the lambda and its provenance
    assert f"{ease['lambda']:g}" in ease["validation"]["scores"]
    assert ease["validation"]["scores"][f"{ease['lambda']:g}"] == max(
        ease["validation"]["scores"].values())
    assert f"ease: lambda {ease['lambda']:g}, chosen by" in md
    assert (tmp_path / "quality.png").stat().st_size > 1000
    # --resume with everything done trains nothing and keeps the figures
    before = report["runs"]
    capsys.readouterr()
    assert quality.main(argv + ["--resume"]) == 0
    assert json.loads((tmp_path / "quality.json").read_text())["runs"] == before
    assert "seed seed" not in capsys.readouterr().err


def test_quality_refuses_unknown_recipes():
    with pytest.raises(SystemExit):
        quality.main(["--recipes", "seed,magic"])


def test_recipe_config_keeps_the_split_seed_and_overrides_epochs():
    from twostage.config import Config
    c = quality.recipe_config(Config(), "logq", 2, epochs=1)
    assert c.seed == 42 + 2 * quality.SEED_STRIDE and c.task.use_sampling_probability
    assert (c.train.retrieval_epochs, c.train.ranking_epochs) == (1, 1)
    assert quality.recipe_config(Config(), "seed", 0) == Config()


@pytest.mark.slow
def test_quality_temporal_reports_audiences_prior_and_issue_26_targets(data_dir, tmp_path):
    """--split temporal: the split is recorded, every run and baseline has the audience
    columns (warm + cold = every test rating), the prior recipe records the beta it chose on
    validation, recent-popular its window, and issue 26's targets are checked (fails if the
    prior's choice or the audience table went missing, or the random split's targets were
    checked instead)."""
    argv = ["--data-dir", str(data_dir), "--split", "temporal", "--seeds", "1", "--recipes",
            "best-prior", "--epochs", "1", "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["settings"]["split"] == "temporal"
    run = report["runs"]["best-prior"][0]
    chosen = run["prior_validation"]
    assert run["prior_beta"] == chosen["beta"] and chosen["scores"][f"{chosen['beta']:g}"] == max(
        chosen["scores"].values())
    popular = report["baselines"]["popular"]
    assert popular["warm: n"] + popular["cold: n"] == run["warm: n"] + run["cold: n"] > 0
    assert "window_days" in report["baselines"]["recent"]
    assert any("recent" in t["target"] for t in report["targets"])
    md = (tmp_path / "quality.md").read_text()
    assert "| model (seen titles excluded) | warm: n |" in md and "recent: window_days" in md
    assert "best-prior seed 0: beta" in md


@pytest.mark.slow
def test_quality_temporal_scores_the_hybrid_recipe_with_its_validated_choice(data_dir,
                                                                            tmp_path):
    """best-recent (model + recent popularity, twostage.hybrid): its betas are the best of
    its validation grid per audience, its figures are in [0, 1] with the audience columns,
    issue 26's targets name it, and the table says what was chosen (fails if the hybrid path
    were not taken: the run would carry no window)."""
    argv = ["--data-dir", str(data_dir), "--split", "temporal", "--seeds", "1", "--recipes",
            "best-recent", "--epochs", "1", "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    report = json.loads((tmp_path / "quality.json").read_text())
    run = report["runs"]["best-recent"][0]
    chosen = run["prior_validation"]
    window = "all" if chosen["window_days"] is None else f"{chosen['window_days']:g}d"
    for audience in ("warm", "cold"):
        scores = chosen["scores"][audience]
        mine = {label: v for label, v in scores.items() if label.startswith(f"{window}/")}
        assert scores[f"{window}/{chosen[f'beta_{audience}']:g}"] == max(mine.values())
        assert run[f"prior_beta_{audience}"] == chosen[f"beta_{audience}"]
    assert all(0.0 <= run[c] <= 1.0 for c, _, _ in quality.FIGURES)
    assert run["warm: n"] + run["cold: n"] == report["baselines"]["popular"]["warm: n"] + \
        report["baselines"]["popular"]["cold: n"]
    assert any(t["target"].startswith("best-recent beats") for t in report["targets"])
    md = (tmp_path / "quality.md").read_text()
    assert (f"best-recent seed 0: window {window}, beta {chosen['beta_warm']:g} for warm users"
            in md)


@pytest.mark.slow
def test_quality_compares_live_history_recipes_with_ease_reading_them_too(data_dir, tmp_path):
    """best-live reads live histories (--live-history), so its targets include EASE on the
    same histories (ease-live) and best-recent's do not; a resumed file without that baseline
    gets it computed and keeps its runs (fails if ease-live were dropped, compared against the
    wrong recipes, or the runs retrained)."""
    argv = ["--data-dir", str(data_dir), "--split", "temporal", "--seeds", "1", "--recipes",
            "best-recent,best-live", "--epochs", "1", "--out", str(tmp_path)]
    assert quality.main(argv) == 0
    path = tmp_path / "quality.json"
    report = json.loads(path.read_text())
    assert report["runs"]["best-live"][0]["prior_validation"]["num_queries"]["cold"] >= 0
    live_targets = [t["target"] for t in report["targets"] if "ease-live" in t["target"]]
    assert live_targets and all(t.startswith("best-live beats ease-live") for t in live_targets)
    assert 0.0 <= report["baselines"]["ease-live"]["top-10"] <= 1.0
    del report["baselines"]["ease-live"]
    path.write_text(json.dumps(report))
    assert quality.main(argv + ["--resume"]) == 0
    again = json.loads(path.read_text())
    assert list(again["baselines"]) == list(quality.BASELINES)
    assert again["runs"] == report["runs"]


def test_live_targets_compare_every_figure_with_every_baseline_but_random():
    """Random split: a live recipe must beat each non-random baseline at every figure by 2
    standard errors (fails if a baseline or a figure were skipped, or the margin ignored)."""
    columns = [c for c, _, _ in quality.FIGURES]
    summary = {"live": {c: (0.30, 0.03) for c in columns}}
    baselines = {"random": {c: 0.0 for c in columns}, "popular": {c: 0.20 for c in columns},
                 "ease-live": {c: 0.27 for c in columns}, "ease": {"skipped": "too big"}}
    checks = quality.live_targets(summary, baselines, seeds=3)
    assert len(checks) == 2 * len(columns)
    assert all(ok for what, ok in checks if "popular" in what)
    assert not any(ok for what, ok in checks if "ease-live" in what)   # 0.30 - 0.035 < 0.27
    assert quality.live_targets({"best": summary["live"]}, baselines, 3) == []
