"""End to end: `twostage run/recommend/export` on synthetic data, for both backends."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from twostage.data.synthetic import generate
from twostage.cli import main



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml"), num_users=120, num_movies=90,
                    num_ratings=3000, seed=3)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["run", "--backend", "both", "--data-dir", str(data_dir), "--retrieval-epochs", "3",
               "--ranking-epochs", "2", "--validation-freq", "2", "--batch-size", "512",
               "--out", str(out), "--quiet", "--tensorboard", str(out.parent / "tb")])
    assert rc == 0
    return out


def test_run_writes_results_for_both_backends(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) == {"torch", "tfrs"}
    for report in results.values():
        acc = report["retrieval"]["top_k_accuracy"]
        # 90 movies: top-100 (1.0 by construction) is dropped, with a warning (issue 21)
        assert set(acc) == {"1", "5", "10", "50"}
        assert all(0.0 <= v <= 1.0 for v in acc.values())
        assert acc["1"] <= acc["5"] <= acc["10"] <= acc["50"]
        for key in ("binary_accuracy", "auc"):
            assert 0.0 <= report["ranking"][key] <= 1.0
        two = report["two_stage"]
        assert 0.0 <= two["ndcg@10_retrieval"] <= two["hit@10_retrieval"] <= 1.0
        assert two["hit@10_retrieval"] == pytest.approx(two["hit@10_reranked"])  # same 10 items
        for key in ("retrieval_fit", "ranking_fit", "evaluation", "total"):
            assert report["timings_s"][key] > 0
        assert len(report["history"]["retrieval"]["loss"]) == 3
        assert len(report["history"]["ranking"]["loss"]) == 2
        assert report["config"]["train"]["batch_size"] == 512
        assert report["dataset"]["num_ratings"] == 3000
    table = (run_dir / "results.md").read_text()
    assert "torch - tfrs" in table and "retrieval.top_k_accuracy.50" in table
    for name in ("torch", "tfrs"):
        png = (run_dir / f"{name}_curves.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        assert (run_dir / name).is_dir()


def test_recommend_from_saved_run(run_dir, capsys):
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--user", "7", "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 5
    scores = [float(line.split()[2]) for line in lines[2:]]
    assert scores == sorted(scores, reverse=True)  # re-ranked by the ranking score
    assert main(["recommend", "--run", str(run_dir), "--user", "7", "--backend", "tfrs"]) == 0
    # more than the catalog holds: a usage error naming -k and the limit, nothing printed
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--user", "7", "-k", "100000"]) == 2
    err = capsys.readouterr().err
    assert "-k=100000 exceeds the catalog's" in err and "lower -k to at most" in err


def test_export_matches_faiss_top_k(run_dir, tmp_path):
    import tensorflow as tf

    from torch_impl.backend import TorchBackend
    from twostage.rundir import RunDir

    out = tmp_path / "saved"
    assert main(["export", "--run", str(run_dir), "--to", "tfrs", "--out", str(out), "-k", "10"]) == 0
    model = tf.saved_model.load(str(out))
    users, stamps = ["1", "42", "7"], [879000000, 880000000, 881000000]
    scores, titles = model({"user_id": tf.constant(users),
                            "timestamp": tf.constant(stamps, tf.int64)})
    assert tuple(scores.shape) == (3, 10) and tuple(titles.shape) == (3, 10)
    backend = TorchBackend.load(run_dir / "torch")
    corpus = RunDir.open(run_dir).corpus_titles
    backend.build_index(corpus)
    f_scores, rows = backend.retrieve(np.array(users, dtype=object), np.array(stamps), 10)
    np.testing.assert_allclose(scores.numpy(), f_scores, rtol=1e-5, atol=1e-6)
    got = np.array([[t.decode() for t in row] for row in titles.numpy()], dtype=object)
    # TF's BruteForce and FAISS round each score their own way: titles agree except where
    # two neighbouring scores are within the comparison's tolerance (their order is rounding)
    near = np.zeros(rows.shape, dtype=bool)
    gap = np.abs(np.diff(f_scores, axis=1)) <= 2 * (1e-5 * np.abs(f_scores[:, 1:]) + 1e-6)
    near[:, 1:] |= gap
    near[:, :-1] |= gap
    assert ((got == corpus[rows]) | near).all()


@pytest.mark.parametrize("argv, message", [
    (["run", "--layer-sizes", "64,x"], "comma-separated"),
    (["run", "--backend", "jax"], "invalid choice"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_values_exit_2(data_dir, tmp_path, capsys):
    assert main(["run", "--data-dir", str(data_dir), "--batch-size", "0",
                 "--out", str(tmp_path)]) == 2
    assert "batch_size=0 must be >= 1" in capsys.readouterr().err


def test_missing_run_dir_exit_2(tmp_path, capsys):
    assert main(["recommend", "--run", str(tmp_path / "nope"), "--user", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_data_exit_1(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["run", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "u.data" in err and "TWOSTAGE_DATA_DIR" in err


def test_tensorboard_events_share_tags_across_backends(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for name in ("torch", "tfrs"):
        events = EventAccumulator(str(run_dir.parent / "tb" / name))
        events.Reload()
        tags[name] = set(events.Tags()["scalars"])
        steps = [e.step for e in events.Scalars("retrieval/loss_per_example")]
        assert steps == [1, 2, 3]
        assert [e.step for e in events.Scalars("retrieval/val/loss_per_example")] == [2, 3]
    assert tags["torch"] == tags["tfrs"]
    assert {"retrieval/loss", "ranking/loss_per_example", "ranking/train/binary_accuracy",
            "ranking/val/binary_accuracy",
            "retrieval/val/factorized_top_k/top_50_categorical_accuracy"} <= tags["torch"]


# --- issue 21 item 4: errors that came late or unclear; control characters ------------------
FAST = ["--retrieval-epochs", "1", "--ranking-epochs", "1", "--batch-size", "512", "--quiet"]


def one_line_error(capsys, code_expected, rc) -> str:
    """The one error line on stderr (log lines, "twostage: ...", aside), with the exit code."""
    err = capsys.readouterr().err.strip()
    assert rc == code_expected, err
    lines = [line for line in err.splitlines()
             if not line.startswith("twostage: ") or line.startswith("twostage: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                  for p in root.rglob("*"))


@pytest.mark.parametrize("argv, message", [
    (["run", "--backend", "jax"], "invalid choice: 'jax'"),
    (["run", "--retrieval-epochs", "x"], "--retrieval-epochs"),
    (["recommend", "--user", "1"], "--run"),
    (["run", "--no-such-flag"], "--no-such-flag"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_argparse_rejections_are_one_line(argv, message, capsys):
    """Issue 21: argparse printed its 30-line usage before the error; now one line that names
    the problem and points at --help, exit 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    line = one_line_error(capsys, 2, e.value.code)
    assert message in line and "--help" in line and line.startswith("twostage")


@pytest.mark.parametrize("out", [".", "..", "CWD", "sub/.."])
def test_out_naming_the_current_folder_is_refused_before_loading(out, tmp_path, capsys,
                                                                 monkeypatch):
    """Issue 21: `--out .` passed the check, failed after training and left files behind. The
    data folder does not exist: exit 2 proves the refusal came before loading."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    rc = main(["run", "--data-dir", str(tmp_path / "no-data"),
               "--out", str(work) if out == "CWD" else out, *FAST])
    assert "--out" in one_line_error(capsys, 2, rc)
    assert snapshot(tmp_path) == before


def test_export_out_naming_the_current_folder_is_refused(run_dir, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["export", "--run", str(run_dir), "--to", "torch", "--out", "."])
    assert "--out" in one_line_error(capsys, 2, rc)
    assert list(tmp_path.iterdir()) == []


def test_seed_beyond_the_backends_range_is_refused_before_loading(tmp_path, capsys):
    """Issue 21: --seed 18446744073709551617 failed after the data was loaded."""
    rc = main(["run", "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "o"),
               "--seed", "18446744073709551617", *FAST])
    assert "seed=18446744073709551617" in one_line_error(capsys, 2, rc)


@pytest.mark.parametrize("where", ["under_a_file", "a_file"])
def test_unusable_tensorboard_folder_is_refused_before_loading(where, tmp_path, capsys):
    """Issue 21: an unwritable --tensorboard failed after loading, with exit 1."""
    (tmp_path / "f").write_text("x")
    tb = tmp_path / "f" / "tb" if where == "under_a_file" else tmp_path / "f"
    rc = main(["run", "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "o"),
               "--tensorboard", str(tb), *FAST])
    assert "--tensorboard" in one_line_error(capsys, 2, rc)
    assert (tmp_path / "f").read_text() == "x" and not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("target", ["out_inside", "out_is", "out_above", "tensorboard_inside"])
def test_outputs_inside_the_data_folder_are_refused(how, target, tmp_path, capsys,
                                                    monkeypatch):
    """Issue 21: --out inside the data folder was accepted; the data folder is read-only by
    promise (and --force would move a folder holding it aside)."""
    data = generate(tmp_path / "parent" / "ml", num_users=20, num_movies=15, num_ratings=200,
                    seed=1)
    before = snapshot(tmp_path)
    out = {"out_inside": data / "run", "out_is": data, "out_above": tmp_path / "parent"}.get(
        target, tmp_path / "o")
    argv = ["run", "--out", str(out), "--force", *FAST]
    if target == "tensorboard_inside":
        argv += ["--tensorboard", str(data / "tb")]
    if how == "flag":
        argv += ["--data-dir", str(data)]
    else:
        monkeypatch.setenv("TWOSTAGE_DATA_DIR", str(data))
    line = one_line_error(capsys, 2, main(argv))
    assert "data folder" in line and str(data) in line
    assert snapshot(tmp_path) == before


def test_top_ks_beyond_the_catalogue_are_dropped_with_a_warning(data_dir, tmp_path, capsys,
                                                                caplog):
    """Issue 21: top-100 accuracy on a 90-title catalogue was reported as 1.0. A k above the
    catalogue size is dropped, with one warning (logged: "twostage: ..." on stderr); nothing
    left is a usage error."""
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", "--backend", "torch", "--data-dir", str(data_dir), "--out", str(out),
                 *FAST]) == 0
    warnings = [r.getMessage() for r in caplog.records if "--top-ks" in r.getMessage()]
    assert len(warnings) == 1 and "100" in warnings[0] and "90" in warnings[0], warnings
    acc = json.loads((out / "results.json").read_text())["torch"]["retrieval"]["top_k_accuracy"]
    assert set(acc) == {"1", "5", "10", "50"}
    rc = main(["run", "--backend", "torch", "--data-dir", str(data_dir), "--out",
               str(tmp_path / "o2"), "--top-ks", "100,200", *FAST])
    assert "--top-ks" in one_line_error(capsys, 2, rc)
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


@pytest.mark.parametrize("stamp", ["-5", str(10 ** 18)])
def test_recommend_warns_of_a_timestamp_outside_the_data(run_dir, stamp, capsys):
    """Issue 21: --timestamp -5 or 1e18 were served without a word."""
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--user", "7", "-k", "3",
                 "--timestamp", stamp]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "--timestamp" in line]
    assert len(warnings) == 1 and stamp in warnings[0] and "warning" in warnings[0], err
    assert main(["recommend", "--run", str(run_dir), "--user", "7", "-k", "3"]) == 0
    assert "--timestamp" not in capsys.readouterr().err


def test_control_characters_in_titles_never_reach_the_terminal(tmp_path, capsys):
    """Titles of u.item with a screen clear, an OSC window-title change and a C1 CSI byte
    (0x9b: Latin-1 text) are printed escaped by `recommend`; so is an error line echoing a
    hostile path."""
    d = generate(tmp_path / "ml", num_users=30, num_movies=12, num_ratings=400, seed=4)
    lines = (d / "u.item").read_bytes().split(b"\n")
    for i, line in enumerate(lines[:-1]):
        fields = line.split(b"|")
        fields[1] = b"\x1b[2J\x1b]0;owned\x07" + fields[1] + b"\x9b"
        lines[i] = b"|".join(fields)
    (d / "u.item").write_bytes(b"\n".join(lines))
    run = tmp_path / "run"
    assert main(["run", "--backend", "torch", "--data-dir", str(d), "--out", str(run),
                 *FAST]) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", str(run), "--user", "7", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x9b"), out
    assert out.count("\\x1b[2J\\x1b]0;owned\\x07") == 3 and out.count("\\x9b") == 3, out
    rc = main(["recommend", "--run", str(tmp_path / "\x1b]0;owned\x07"), "--user", "7"])
    line = one_line_error(capsys, 2, rc)
    assert "\x1b" not in line and "\\x1b]0;owned\\x07" in line


def test_matplotlib_writes_nothing_under_home(tmp_path):
    """Issue 21: plotting the curves created $HOME/.cache/matplotlib and $HOME/.config/
    matplotlib; matplotlib's files go to the project's cache folder instead."""
    import os
    import subprocess
    import sys
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TWOSTAGE_CACHE=str(cache))
    script = ("import sys; from pathlib import Path; from twostage.report import plot_history\n"
              "h = {'loss_per_example': [1.0, 0.5], 'val': {'loss_per_example': [(2, 0.6)]}}\n"
              "plot_history('torch', {'history': {'retrieval': h, 'ranking': h}}, "
              "Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.png")], env=env, check=True,
                   timeout=300)
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
    assert not (home / ".config" / "matplotlib").exists()
    assert not (home / ".cache" / "matplotlib").exists()
    assert (cache / "matplotlib").is_dir()


def test_a_header_only_ratings_csv_is_one_line_naming_the_file(tmp_path, capsys):
    """Issue 21: "zero-size array to reduction operation" for a ratings.csv with no rating."""
    d = generate(tmp_path / "ml", layout="csv", num_users=10, num_movies=10, num_ratings=50,
                 seed=2)
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    rc = main(["run", "--dataset", "latest-small", "--data-dir", str(d), "--out",
               str(tmp_path / "o"), *FAST])
    line = one_line_error(capsys, 1, rc)
    assert str(d / "ratings.csv") in line and "no rating" in line


def test_a_quiet_tfrs_run_prints_nothing_on_stderr(tmp_path):
    """TensorFlow's C++ start-up notices (oneDNN, no CUDA driver, cuInit) are not a user's
    business: a --quiet run on clean data prints nothing on stderr (issue 23; they came
    before absl's logging starts, so TF_CPP_MIN_LOG_LEVEL did not silence them)."""
    import subprocess
    import sys
    from twostage.data.synthetic import generate
    data = generate(tmp_path / "ml", num_users=80, num_movies=60, num_ratings=2000, seed=5,
                    realistic=True)                  # no repeated pairs: nothing to warn of
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "twostage", "run", "--backend", "tfrs",
                           "--quiet", "--retrieval-epochs", "1", "--ranking-epochs", "1",
                           "--top-ks", "1,5,10", "--data-dir", str(data),
                           "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.slow
def test_run_preset_live_on_both_backends(data_dir, tmp_path):
    """`twostage run --preset live` trains and evaluates on both backends with live histories,
    the OOV route and recent popularity, said in each report (fails if a backend ignored the
    evaluation settings)."""
    out = tmp_path / "live"
    rc = main(["run", "--backend", "both", "--preset", "live", "--data-dir", str(data_dir),
               "--retrieval-epochs", "1", "--ranking-epochs", "1", "--split", "temporal",
               "--out", str(out), "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    for report in results.values():
        assert report["recent_prior"]["beta_warm"] == 0.1 and report["recent_prior"]["cold_as_oov"]
        assert "live_history" in report
        assert 0.0 <= report["retrieval"]["top_k_accuracy_exclude_seen"]["10"] <= 1.0
        assert set(report["retrieval"]["by_audience"]) >= {"warm", "cold"}
