"""benchmarks.seeds: paired backends start equal, both modes run end to end on synthetic data,
the JSON keeps every finished seed and --resume continues it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import seeds, stats
from twostage.config import Config

TINY = Config.of(batch_size=256, eval_batch_size=512, retrieval_epochs=1, ranking_epochs=1,
                 quiet=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from twostage.data.synthetic import generate
    return generate(tmp_path_factory.mktemp("ml"), num_users=60, num_movies=50,
                    num_ratings=3000, seed=0)


def _read(out) -> dict:
    return json.loads((out / "seeds.json").read_text())


def _weights(backend) -> dict:
    return {f"{s}/{k}": v for s in ("retrieval", "ranking")
            for k, v in backend.get_weights(s).items()}


# --- initial weights ---------------------------------------------------------------------------
@pytest.mark.slow
def test_paired_backends_start_from_the_same_weights(synthetic_dataset):
    config = TINY.replace(seed=1042)
    paired = seeds.build_backends(synthetic_dataset, config, "paired", ["torch", "tfrs"])
    ref, copy = _weights(paired["torch"]), _weights(paired["tfrs"])
    assert set(ref) == set(copy) and len(ref) > 4
    for name, value in ref.items():
        np.testing.assert_array_equal(copy[name], value, err_msg=name)
    assert seeds.weights_digest(paired["torch"]) == seeds.weights_digest(paired["tfrs"])
    # The digest sees a changed weight (the independent-mode test sees TFRS's own draw).
    name, value = next(iter(paired["tfrs"].get_weights("ranking").items()))
    paired["tfrs"].set_weights("ranking", {**paired["tfrs"].get_weights("ranking"),
                                           name: value + 1e-6})
    assert seeds.weights_digest(paired["torch"]) != seeds.weights_digest(paired["tfrs"])


# --- end to end -------------------------------------------------------------------------------
def _check_report(report: dict, mode: str, n: int) -> None:
    tests = stats.PAIRED_TESTS if mode == "paired" else stats.INDEPENDENT_TESTS
    assert report["complete"] and report["settings"]["mode"] == mode
    assert [r["seed"] for r in report["per_seed"]] == [42 + 1000 * (i + 1) for i in range(n)]
    metrics = seeds.metric_names(Config())
    assert set(report["summary"]) == set(metrics)
    for metric, row in report["summary"].items():
        for name in ("torch", "tfrs"):
            assert row[name]["values"] == [r["metrics"][name][metric]
                                           for r in report["per_seed"]]
        assert set(row["tests"]) == set(row["p_holm"]) == set(tests)
        for test in tests:
            assert 0 <= row["tests"][test]["p"] <= row["p_holm"][test] <= 1
        smallest = min(row["p_holm"], key=row["p_holm"].get)
        assert row["verdict"] == stats.verdict(row["p_holm"][smallest], row["mde"],
                                               test=smallest)
        assert row["diff"] == pytest.approx(np.mean(row["torch"]["values"])
                                            - np.mean(row["tfrs"]["values"]))


@pytest.mark.slow
def test_paired_mode_end_to_end(data_dir, tmp_path, capsys):
    assert seeds.main(["--seeds", "2", "--data-dir", str(data_dir), "--retrieval-epochs", "1",
                       "--ranking-epochs", "1", "--out", str(tmp_path)]) == 0
    report = _read(tmp_path)
    _check_report(report, "paired", 2)
    digests = [r["initial_weights"] for r in report["per_seed"]]
    assert all(d["torch"] == d["tfrs"] for d in digests)
    assert digests[0]["torch"] != digests[1]["torch"]  # the seed changes the initialisation
    printed = capsys.readouterr().out
    assert "paired mode, 2 seeds" in printed
    assert report["summary"]["ranking.auc"]["verdict"] in printed
    assert (tmp_path / "seeds.md").read_text().startswith("| metric | torch (mean ± std, 2 seeds)")


@pytest.mark.slow
def test_independent_mode_end_to_end(synthetic_dataset, tmp_path):
    report = seeds.run(synthetic_dataset, TINY, 2, "independent", ["torch", "tfrs"], tmp_path)
    assert report == _read(tmp_path)
    _check_report(report, "independent", 2)
    assert all(r["initial_weights"]["torch"] != r["initial_weights"]["tfrs"]
               for r in report["per_seed"])
    assert report["summary"]["ranking.auc"]["effect_size_kind"] == "d"


# --- saving per seed and resuming (training replaced by a stand-in) -------------------------------
class Interrupted(Exception):
    pass


def _fake_seed(calls: list, stop_at: int | None = None):
    """A run_seed stand-in: torch is 0.1 above TFRS on top-1 (a real shift), equal elsewhere."""
    def run_seed(dataset, base, i, mode, names, metrics):
        if i == stop_at:
            raise Interrupted
        calls.append(i)
        noise = 0.001 * np.sin(i + 1)
        values = {m: 0.5 + 0.01 * i for m in metrics}
        shifted = dict(values, **{metrics[0]: values[metrics[0]] + 0.1 + noise})
        return {"seed": seeds.seed_of(base, i), "initial_weights": {"torch": "x", "tfrs": "x"},
                "fit_s": {"torch": 0.0, "tfrs": 0.0},
                "metrics": {"torch": shifted, "tfrs": values}}
    return run_seed


def test_each_seed_is_saved_and_resume_continues(tmp_path, monkeypatch, capsys):
    calls: list[int] = []
    monkeypatch.setattr(seeds, "run_seed", _fake_seed(calls, stop_at=2))
    with pytest.raises(Interrupted):
        seeds.run(None, TINY, 4, "paired", ["torch", "tfrs"], tmp_path)
    saved = _read(tmp_path)
    assert [r["seed"] for r in saved["per_seed"]] == [1042, 2042] and not saved["complete"]
    assert "p_holm" in saved["summary"][seeds.metric_names(TINY)[0]]

    monkeypatch.setattr(seeds, "run_seed", _fake_seed(calls))
    report = seeds.run(None, TINY, 4, "paired", ["torch", "tfrs"], tmp_path, resume=True)
    assert calls == [0, 1, 2, 3]  # seeds 0 and 1 were not trained again
    assert report == _read(tmp_path) and report["complete"]
    assert [r["seed"] for r in report["per_seed"]] == [1042, 2042, 3042, 4042]
    top1, other = (report["summary"][m] for m in seeds.metric_names(TINY)[:2])
    assert top1["different"] and top1["verdict"].startswith("DIFFERENT (Holm p = ")
    assert other["verdict"].startswith("no difference detected at Holm-corrected p >= 0.05")
    seeds.print_table(report["summary"], ["torch", "tfrs"], "paired", 4)
    assert top1["verdict"] in capsys.readouterr().out
    table = seeds.markdown(report["summary"], ["torch", "tfrs"], "paired", 4).splitlines()
    names = seeds.metric_names(TINY)
    assert len(table) == 2 + len(names) and "| paired_t p (Holm) |" in table[0]
    assert table[2].startswith(f"| {names[0]} |") and table[2].endswith("| DIFFERENT |")
    assert table[3].endswith("| none detected |") and "+0.1" in table[2]


def test_resume_refuses_other_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "run_seed", _fake_seed([]))
    seeds.run(None, TINY, 2, "paired", ["torch", "tfrs"], tmp_path)
    with pytest.raises(ValueError, match="mode"):
        seeds.run(None, TINY, 3, "independent", ["torch", "tfrs"], tmp_path, resume=True)
    with pytest.raises(ValueError, match="config"):
        seeds.run(None, TINY.replace(retrieval_epochs=2), 3, "paired", ["torch", "tfrs"],
                  tmp_path, resume=True)


def test_paired_mode_refuses_own_shuffles(tmp_path):
    with pytest.raises(ValueError, match="shared_batches"):
        seeds.run(None, TINY.replace(shared_batches=False), 2, "paired", ["torch", "tfrs"],
                  tmp_path)


def test_cli_refuses_what_it_cannot_compare():
    with pytest.raises(SystemExit):
        seeds.main(["--seeds", "1"])
    with pytest.raises(SystemExit):
        seeds.main(["--mode", "paired", "--backend", "torch"])


# --- the committed records -----------------------------------------------------------------------
RESULTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "results"
SEED_FILES = sorted(p.name for p in RESULTS.glob("seeds_*.json")
                    if "per_seed" in json.loads(p.read_text()))


def _same(a, b) -> bool:
    """Equal JSON values, floats to 1e-12 relative (the JSON's own round trip)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-15)
    return a == b


def test_every_committed_seeds_file_is_in_todays_format():
    """Issue 27: no seeds_*.json in docs/results/ may be in a format no current code writes.
    Break: commit an old-format file (``summary`` and ``runs`` only) and this fails."""
    names = sorted(p.name for p in RESULTS.glob("seeds_*.json"))
    assert names and names == SEED_FILES


@pytest.mark.parametrize("name", SEED_FILES)
def test_committed_summary_is_todays_statistics_of_its_per_seed_records(name):
    """The tables in docs/results.md quote each file's ``summary``: recompute it with today's
    ``seeds.summarise`` from the file's own per-seed metrics (means, spreads, every test's p,
    Holm, effect sizes, verdicts). Break: edit one per-seed value (or a summary figure) in the
    file, or change a test in ``benchmarks.stats``, and this fails."""
    record = json.loads((RESULTS / name).read_text())
    settings = record["settings"]
    metrics = tuple(record["summary"])
    again = seeds.summarise(record["per_seed"], settings["backends"], settings["mode"], metrics)
    assert _same(json.loads(json.dumps(again)), record["summary"])
