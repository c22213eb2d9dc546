"""Issue 14 as a user or an attacker would try it: the CLI never deletes what it does not own,
checks its output folder before loading data, keeps a run folder one consistent unit, and turns
every bad input (hostile run folders included) into one line with exit 1 or 2, no traceback."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from twostage import io
from twostage.cli import main
from twostage.data.synthetic import generate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FAST = ["--retrieval-epochs", "1", "--ranking-epochs", "1", "--batch-size", "512", "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml"), num_users=80, num_movies=60,
                    num_ratings=2000, seed=5)


@pytest.fixture(scope="module")
def other_data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml2"), num_users=70, num_movies=40,
                    num_ratings=1500, seed=9)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["run", "--backend", "torch", "--data-dir", str(data_dir), "--out", str(out),
                 *FAST]) == 0
    return out


def one_line_error(capsys, code_expected, rc) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == code_expected, err
    lines = [line for line in err.splitlines() if not line.startswith("twostage: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                  for p in root.rglob("*"))


# --- 1, 2: data loss and the output folder ------------------------------------------------------
def test_run_refuses_a_folder_of_user_files_before_loading_data(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "torch").mkdir(parents=True)
    (out / "torch" / "notes.txt").write_text("my notes")
    (out / "thesis.tex").write_text("mine")
    before = snapshot(tmp_path)
    # the data folder does not exist: a refusal with exit 2 proves --out was checked first
    rc = main(["run", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), *FAST])
    line = one_line_error(capsys, 2, rc)
    assert str(out) in line and "--force" in line
    assert snapshot(tmp_path) == before


def test_run_refuses_to_replace_a_run_folder_holding_user_files(run_dir, tmp_path, capsys):
    """A run folder we wrote, with a user's notes and analysis added: never deleted without
    --force (issue 21: they were, silently)."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    (out / "NOTES.txt").write_text("mine")
    (out / "my_analysis").mkdir()
    (out / "my_analysis" / "plot.py").write_text("mine")
    before = snapshot(tmp_path)
    rc = main(["run", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), *FAST])
    line = one_line_error(capsys, 2, rc)
    assert "NOTES.txt" in line and "my_analysis" in line and "--force" in line
    assert snapshot(tmp_path) == before


def test_force_moves_a_run_folder_with_user_files_aside(run_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    (out / "NOTES.txt").write_text("mine")
    assert main(["run", "--data-dir", str(data_dir), "--out", str(out), "--force", *FAST]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "NOTES.txt").read_text() == "mine"
    assert not (out / "NOTES.txt").exists() and (out / "manifest.json").is_file()
    assert io.foreign_entries(out) == []            # the new folder lists all it wrote


def test_a_second_writer_of_one_out_fails_at_once(tmp_path, capsys):
    """Two runs into one --out: the second is refused before loading data, naming the other
    process's lock (issue 21: one deleted the other's live temporary folder); the lock file
    goes with its holder."""
    import subprocess
    import sys
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from twostage import io\n"
         "with io.target_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["run", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), *FAST])
        assert "another twostage process is writing" in one_line_error(capsys, 2, rc)
        with pytest.raises(io.TargetBusyError):
            io.replace_directory(out, lambda tmp: None, "run")
    finally:
        holder.kill()
        holder.wait()
    with io.target_lock(out):          # free once the holder is gone (killed: its file stays)
        assert (tmp_path / f".run{io.LOCK_TAG}").exists()
    assert list(tmp_path.iterdir()) == []          # released: the lock file goes


@pytest.mark.parametrize("make", ["file", "under_a_file"])
def test_run_refuses_an_unusable_out_before_loading_data(tmp_path, capsys, make):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if make == "file" else tmp_path / "f" / "sub"
    rc = main(["run", "--data-dir", str(tmp_path / "no-data"), "--out", str(out), *FAST])
    assert "f" in one_line_error(capsys, 2, rc)
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_export_never_replaces_user_files(run_dir, tmp_path, capsys, kind):
    out = tmp_path / "serving"
    if kind == "folder":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        out.write_text("mine")
    before = snapshot(tmp_path)
    rc = main(["export", "--run", str(run_dir), "--out", str(out), "-k", "10"])
    assert "--force" in one_line_error(capsys, 2, rc)
    assert snapshot(tmp_path) == before


def test_force_moves_user_files_aside(data_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["run", "--data-dir", str(data_dir), "--out", str(out), "--force", *FAST]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("mine.replaced-")]
    assert len(aside) == 1 and (aside[0] / "keep.txt").read_text() == "mine"
    assert (out / "manifest.json").is_file()


# --- 3, 4: one consistent unit ------------------------------------------------------------------
def test_a_second_run_replaces_the_whole_folder(data_dir, other_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--backend", "torch", "--data-dir", str(data_dir), "--out", str(out),
                 *FAST]) == 0
    assert main(["run", "--backend", "tfrs", "--data-dir", str(other_data_dir), "--out",
                 str(out), *FAST]) == 0
    assert not (out / "torch").exists()
    assert set(json.loads((out / "results.json").read_text())) == {"tfrs"}
    corpus = json.loads((out / "corpus.json").read_text())["titles"]
    assert len(corpus) == 40
    capsys.readouterr()
    assert main(["recommend", "--run", str(out), "--user", "3"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_an_interrupted_run_leaves_the_previous_folder(run_dir, data_dir, tmp_path, capsys,
                                                       monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = snapshot(out)
    import twostage.pipeline as pipeline
    real = pipeline.run_backend

    def interrupted(name, *args, **kwargs):
        if name == "tfrs":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)
    monkeypatch.setattr(pipeline, "run_backend", interrupted)
    rc = main(["run", "--backend", "both", "--data-dir", str(data_dir), "--out", str(out), *FAST])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


# --- 7-10: hostile run folders and bad values: one line each ------------------------------------
def rewrite_manifest(run: Path) -> None:
    """An attacker who also fixes the checksums: the content checks must still hold."""
    manifest = json.loads((run / "manifest.json").read_text())
    for rel in manifest["files"]:
        path = run / rel
        if path.is_file():
            manifest["files"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(manifest))


def edit_json(rel: str, change):
    def apply(run: Path) -> None:
        path = run / rel
        data = json.loads(path.read_text())
        path.write_text(json.dumps(change(data)))
    return apply


def drop(rel: str):
    def apply(run: Path) -> None:
        target = run / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return apply


def write(rel: str, text: str):
    return lambda run: (run / rel).write_text(text)


HOSTILE = {
    "meta as a list": edit_json("torch/meta.json", lambda d: [d]),
    "model file path escape": edit_json("manifest.json",
                                        lambda d: {**d, "files": {"../../x": "0" * 64}}),
    "unknown config key": edit_json("torch/config.json", lambda d: {**d, "bogus": 1}),
    "batch_size not a number": edit_json(
        "torch/config.json", lambda d: {**d, "train": {**d["train"], "batch_size": "abc"}}),
    "huge embedding_dim": edit_json(
        "torch/config.json", lambda d: {**d, "model": {**d["model"], "embedding_dim": 10 ** 9}}),
    "corpus without titles": edit_json("corpus.json", lambda d: {"max_timestamp": 1}),
    "max_timestamp not a number": edit_json("corpus.json", lambda d: {**d, "max_timestamp": "soon"}),
    "spec missing a key": edit_json("torch/feature_spec.json",
                                    lambda d: {k: v for k, v in d.items() if k != "ts_mean"}),
    "spec of other data": edit_json("torch/feature_spec.json",
                                    lambda d: {**d, "ts_mean": d["ts_mean"] + 1}),
    "manifest not json": write("manifest.json", "{oops"),
    "manifest backends bogus": edit_json("manifest.json", lambda d: {**d, "backends": ["jax"]}),
    "config not json": write("torch/config.json", "\x00\x01"),
    "corpus.json missing": drop("corpus.json"),
    "torch folder missing": drop("torch"),
    "weights file missing": drop("torch/retrieval.npz"),
    "weights not npz": write("torch/retrieval.npz", "not a zip"),
    "marker missing": drop(io.MARKER),
}


def unexpected_keys_in_weights(run: Path) -> None:
    path = run / "torch" / "ranking.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["pickle/evil"] = np.zeros(1, np.float32)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def wrong_weight_shape(run: Path) -> None:
    path = run / "torch" / "ranking.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.endswith("ratings/0/kernel"))
    arrays[key] = np.zeros((3, 3), np.float32)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


HOSTILE["unexpected keys in weights"] = unexpected_keys_in_weights
HOSTILE["wrong weight shapes"] = wrong_weight_shape


@pytest.mark.parametrize("fix_checksums", [False, True], ids=["edited", "edited+checksums"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_run_folders_fail_with_one_line(run_dir, tmp_path, capsys, name, fix_checksums):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    HOSTILE[name](run)
    if fix_checksums and (run / "manifest.json").is_file():
        try:
            rewrite_manifest(run)
        except (ValueError, KeyError, TypeError):
            pass  # the manifest itself is the broken part
    capsys.readouterr()
    rc = main(["recommend", "--run", str(run), "--user", "1"])
    line = one_line_error(capsys, 1, rc)
    assert str(run) in line or "run folder" in line


@pytest.mark.parametrize("argv, code, message", [
    (["run", "--temperature", "nan"], 2, "finite"),
    (["run", "--batch-size", "1"], 2, "batch_size=1"),
    (["run", "--device", "banana"], 2, "device"),
    (["recommend", "--run", "RUN", "--user", "1", "--timestamp", "99999999999999999999999"], 2,
     "64-bit"),
    (["export", "--run", "RUN", "--out", "OUT", "-k", "100"], 2, "corpus size"),
])
def test_bad_values_are_one_line(run_dir, tmp_path, capsys, argv, code, message):
    argv = [str(run_dir) if a == "RUN" else str(tmp_path / "o") if a == "OUT" else a
            for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code and message in err and "Traceback" not in err, err


def test_recommend_on_a_file_says_so(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc = main(["recommend", "--run", str(tmp_path / "f"), "--user", "1"])
    assert "is a file" in one_line_error(capsys, 2, rc)


def test_all_ratings_below_threshold_is_refused_before_training(tmp_path, capsys):
    d = generate(tmp_path / "ml", num_users=30, num_movies=20, num_ratings=400, seed=1)
    lines = (d / "u.data").read_text().splitlines()
    (d / "u.data").write_text("\n".join("\t".join([*l.split("\t")[:2], "2", l.split("\t")[3]])
                                        for l in lines) + "\n")
    rc = main(["run", "--data-dir", str(d), "--out", str(tmp_path / "o"), *FAST])
    assert "rating_threshold" in one_line_error(capsys, 2, rc)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_debug_shows_the_traceback(tmp_path, capsys):
    rc = main(["--debug", "recommend", "--run", str(tmp_path / "nope"), "--user", "1"])
    assert rc == 2 and "Traceback" in capsys.readouterr().err


def test_a_checkpoint_saved_on_cuda_is_served_on_cpu(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    edit_json("torch/config.json",
              lambda d: {**d, "train": {**d["train"], "device": "cuda"}})(run)
    rewrite_manifest(run)
    assert main(["recommend", "--run", str(run), "--user", "1", "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 3


def test_a_one_line_ratings_file_is_one_line_of_error(tmp_path, capsys):
    d = generate(tmp_path / "ml", num_users=10, num_movies=10, num_ratings=50, seed=2)
    first = (d / "u.data").read_text().splitlines()[0]
    (d / "u.data").write_text(first + "\n")
    rc = main(["run", "--data-dir", str(d), "--out", str(tmp_path / "o"), *FAST])
    assert "2 ratings" in one_line_error(capsys, 1, rc)
