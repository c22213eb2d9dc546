"""Smoke runs of the benchmarks on small synthetic data: they finish and report what they say."""
from __future__ import annotations

import json

import pytest

from benchmarks import speed
from twostage.data.synthetic import generate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml"), num_users=80, num_movies=60,
                    num_ratings=2000, seed=5)


@pytest.fixture(scope="module")
def speed_run(data_dir, tmp_path_factory):
    """(speed.json, stdout) of ``benchmarks.speed --backend both`` at batch 512 (3 steps)."""
    out = tmp_path_factory.mktemp("speed")
    with pytest.MonkeyPatch.context() as mp:
        printed = []
        mp.setattr("builtins.print", lambda *a, **k: printed.append(
            " ".join(map(str, a))) if k.get("file") is None else None)
        assert speed.main(["--backend", "both", "--data-dir", str(data_dir), "--epochs", "2",
                           "--repeats", "1", "--batch-size", "512", "--out", str(out)]) == 0
    return json.loads((out / "speed.json").read_text()), "\n".join(printed)


def test_speed_reports_both_backends_and_ratios(speed_run):
    """The speed benchmark's report and table. Broken on purpose, it fails: a speed-up that divides
    the other way for rates, or a printed ratio that is not the report's."""
    report, out = speed_run
    figures = {"retrieval_epoch_s", "ranking_epoch_s", "evaluation_s", "index_build_s",
               "queries_per_s_k10", "queries_per_s_k100"}
    for name in ("torch", "tfrs"):
        assert set(report["results"][name]) == figures
        assert all(v > 0 for v in report["results"][name].values())
    assert set(report["speedup_tfrs_over_torch"]) == figures
    torch_r, tfrs_r = report["results"]["torch"], report["results"]["tfrs"]
    for key, ratio in report["speedup_tfrs_over_torch"].items():
        # how many times faster torch is: times divide tfrs by torch, rates torch by tfrs
        want = torch_r[key] / tfrs_r[key] if "per_s" in key else tfrs_r[key] / torch_r[key]
        assert ratio == pytest.approx(want, rel=1e-12), key
        line = next(line for line in out.splitlines() if line.startswith(key))
        assert line.rstrip().endswith(f"{ratio:.1f}x"), line       # the printed ratio
    assert report["machine"]["cpus"] >= 1
    assert "speed-up" in out


def test_speed_puts_each_step_beside_its_floor(speed_run, data_dir):
    """Each stage's step, its floor (matmul + softmax + gather/update) and the ratios, as
    printed. Fails if the softmax is timed at another shape than the [B, B] in-batch scores
    (or for the ranking stage), if the floor is not the sum of its parts, or if the TFRS step
    or the torch/TFRS ratio is not taken over the same steps per epoch."""
    report, out = speed_run
    train_rows = 1600                                     # 80% of the 2,000 ratings
    torch_r, tfrs_r = report["results"]["torch"], report["results"]["tfrs"]
    floors = report["step_floor"]
    assert set(floors) == {"retrieval", "ranking"}
    for stage, row in floors.items():
        parts = row["matmul"] + row["softmax"] + row["gather_update"]
        assert row["floor_s"] == pytest.approx(parts, rel=1e-12)
        assert row["matmul"] > 0 and row["gather_update"] > 0 and row["step_s"] > 0
        assert row["ratio"] == pytest.approx(row["step_s"] / row["floor_s"], rel=1e-12)
        assert row["steps_per_epoch"] == -(-train_rows // 512)
        assert row["epoch_step_s"] == pytest.approx(
            torch_r[f"{stage}_epoch_s"] / row["steps_per_epoch"], rel=1e-12)
        assert row["step_over_epoch"] == pytest.approx(row["step_s"] / row["epoch_step_s"],
                                                       rel=1e-12)
        assert row["tfrs_step_s"] == pytest.approx(
            tfrs_r[f"{stage}_epoch_s"] / row["steps_per_epoch"], rel=1e-12)
        assert row["torch_over_tfrs"] == pytest.approx(
            torch_r[f"{stage}_epoch_s"] / tfrs_r[f"{stage}_epoch_s"], rel=1e-12)
        line = next(line for line in out.splitlines() if line.startswith(f"{stage} "))
        assert f"{1e3 * row['floor_s']:.2f}" in line and f"{row['ratio']:.2f}x" in line
        assert line.rstrip().endswith(f"{row['torch_over_tfrs']:.2f}x")
    assert floors["retrieval"]["softmax_shape"] == [512, 512]
    assert floors["retrieval"]["softmax"] > 0
    assert floors["ranking"]["softmax"] == 0 and floors["ranking"]["softmax_shape"] is None


def test_speed_measures_the_torch_floors_before_tensorflow_runs(data_dir, monkeypatch, tmp_path):
    """The floors are measured right after the torch epochs, before the TFRS backend is built
    (its thread pools beside torch's slowed the clocked step to 1.8x the epoch's). Break: move
    ``step_floors`` after the loop over the backends and the order below changes."""
    calls = []

    def fake_measure(name, dataset, config, repeats):
        calls.append(f"measure {name}")
        return {f"{s}_epoch_s": 1.0 for s in ("retrieval", "ranking")}, object()

    def fake_floors(backend, dataset, torch_results, repeats):
        calls.append("floors")
        return {s: {"steps_per_epoch": 4, "step_s": 0.25, "epoch_step_s": 0.25, "floor_s": 0.1,
                    "matmul": 0.05, "softmax": 0.0, "gather_update": 0.05, "ratio": 2.5,
                    "step_over_epoch": 1.0} for s in ("retrieval", "ranking")}
    monkeypatch.setattr(speed, "measure", fake_measure)
    monkeypatch.setattr(speed, "step_floors", fake_floors)
    assert speed.main(["--backend", "both", "--data-dir", str(data_dir), "--epochs", "2",
                       "--out", str(tmp_path)]) == 0
    assert calls == ["measure torch", "floors", "measure tfrs"]
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["step_floor"]["ranking"]["torch_over_tfrs"] == 1.0


def test_speed_rejects_one_epoch(data_dir):
    with pytest.raises(SystemExit):
        speed.main(["--data-dir", str(data_dir), "--epochs", "1"])


def test_contention_compares_alone_and_busy_per_wait_policy(data_dir, tmp_path, capsys):
    assert speed.main(["--contention", "--backend", "torch", "--data-dir", str(data_dir),
                       "--epochs", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "contention.json").read_text())
    assert [r["policy"] for r in report["rows"]] == list(speed.POLICIES)
    for row in report["rows"]:
        assert set(row["alone"]) == set(row["contended"]) == {"retrieval_epoch_s",
                                                              "ranking_epoch_s"}
        assert all(v > 0 for v in row["slowdown"].values())
    assert "contended" in capsys.readouterr().out


def test_scaling_reports_throughput_and_communication(data_dir, tmp_path, capsys):
    from benchmarks import scaling
    assert scaling.main(["--nproc", "1", "2", "--backend", "torch", "--data-dir", str(data_dir),
                         "--epochs", "2", "--batch-size", "512", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "scaling.json").read_text())["rows"]
    assert [(r["backend"], r["nproc"]) for r in rows] == [("torch", 1), ("torch", 2)]
    for row in rows:
        for stage in ("retrieval", "ranking"):
            assert row[stage]["examples_per_s"] > 0
    assert rows[0]["retrieval"]["communication_s_per_step"] == 0
    assert rows[1]["retrieval"]["communication_s_per_step"] > 0
    assert "comm ms" in capsys.readouterr().out
