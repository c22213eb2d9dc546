"""Issue 14 as a user or an attacker would try it: the CLI never deletes what it does not own,
checks its output folder before loading data, keeps a run folder one consistent unit, and turns
every bad input (hostile run folders included) into one line with exit 1 or 2, no traceback."""
from __future__ import annotations

import hashlib
import io as io_module
import json
import shutil
import zipfile
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
    """An attacker who also fixes the checksums: manifest.json lists every file now in the
    folder with its new sha256 (a removed file unlisted, an added one listed), so only the
    content checks can still refuse the folder. Raises if the manifest is not JSON."""
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"] = {
        p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*")) if p.is_file()
        and p.relative_to(run).as_posix() not in (io.MARKER, "manifest.json")}
    (run / "manifest.json").write_text(json.dumps(manifest))


def npz_arrays(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_npz(path: Path, arrays: dict, compressed: bool = False) -> None:
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


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
    # issue 21, 3: sane checksums of insane contents
    "corpus cut to 5 titles": edit_json("corpus.json",
                                        lambda d: {**d, "titles": d["titles"][:5]}),
    "max_timestamp 2**63-1": edit_json("corpus.json",
                                       lambda d: {**d, "max_timestamp": 2 ** 63 - 1}),
    "results not json": write("results.json", "{not json"),
    "results of another backend": edit_json("results.json", lambda d: {"tfrs": d["torch"]}),
    "stages retrieval only": edit_json("torch/meta.json",
                                       lambda d: {**d, "stages": ["retrieval"]}),
    # issue 21, 2b: a damaged weight file is one line naming it, not "internal error"
    "weights truncated": lambda run: (run / "torch" / "retrieval.npz").write_bytes(
        (run / "torch" / "retrieval.npz").read_bytes()[:5000]),
    "weights compressed": lambda run: write_npz(
        run / "torch" / "ranking.npz", npz_arrays(run / "torch" / "ranking.npz"), True),
}
# Edits of the manifest's file list or syntax: recomputing the checksums would undo them or
# cannot be done, so only the "edited" variant applies.
MANIFEST_EDITS = {"manifest not json", "model file path escape"}


def unexpected_keys_in_weights(run: Path) -> None:
    path = run / "torch" / "ranking.npz"
    arrays = npz_arrays(path)
    arrays["pickle/evil"] = np.zeros(1, np.float32)
    write_npz(path, arrays)


def wrong_weight_shape(run: Path) -> None:
    path = run / "torch" / "ranking.npz"
    arrays = npz_arrays(path)
    key = next(k for k in arrays if k.endswith("ratings/0/kernel"))
    arrays[key] = np.zeros((3, 3), np.float32)
    write_npz(path, arrays)


HOSTILE["unexpected keys in weights"] = unexpected_keys_in_weights
HOSTILE["wrong weight shapes"] = wrong_weight_shape


@pytest.mark.parametrize("name, fix_checksums", [
    *[pytest.param(name, False, id=f"{name}-edited") for name in sorted(HOSTILE)],
    *[pytest.param(name, True, id=f"{name}-edited+checksums") for name in sorted(HOSTILE)
      if name not in MANIFEST_EDITS]])
def test_hostile_run_folders_fail_with_one_line(run_dir, tmp_path, capsys, name, fix_checksums):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    HOSTILE[name](run)
    if fix_checksums:
        rewrite_manifest(run)  # really recomputed: a failure here is a broken test
    capsys.readouterr()
    rc = main(["recommend", "--run", str(run), "--user", "1"])
    line = one_line_error(capsys, 1, rc)
    assert str(run) in line or "run folder" in line


def replace_member(path: Path, key: str, payload: bytes, compress: int = zipfile.ZIP_STORED
                   ) -> None:
    """Rewrite the .npz ``path`` with member ``key``.npy holding the raw ``payload``."""
    arrays = npz_arrays(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            if name != key:
                with z.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, array)
        z.writestr(zipfile.ZipInfo(f"{key}.npy"), payload, compress_type=compress)


def npy_header(shape: tuple) -> bytes:
    buf = io_module.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def huge_header(run: Path) -> None:
    """A member whose header claims 2**40 floats (4 TiB) in a few bytes."""
    path = run / "torch" / "retrieval.npz"
    key = next(iter(npz_arrays(path)))
    replace_member(path, key, npy_header((2 ** 40,)) + b"\0" * 64)


def zip_bomb(run: Path) -> None:
    """A 256 MiB array of zeros deflated to a few hundred kB: more than the config's models."""
    path = run / "torch" / "retrieval.npz"
    key = next(iter(npz_arrays(path)))
    n = 2 ** 26
    replace_member(path, key, npy_header((n,)) + bytes(4 * n), zipfile.ZIP_DEFLATED)


def oversized(run: Path) -> None:
    """A genuine (stored) array of 4M floats: 16 MB, more than the config's models have."""
    path = run / "torch" / "ranking.npz"
    arrays = npz_arrays(path)
    arrays["weights/extra"] = np.zeros(4_000_000, np.float32)
    write_npz(path, arrays)


@pytest.mark.parametrize("damage, message", [
    (huge_header, "declares shape (1099511627776,)"),
    (zip_bomb, "unpack to"),
    (oversized, "unpack to"),
])
def test_npz_sizes_are_checked_before_reading(run_dir, tmp_path, capsys, damage, message):
    """Issue 21, 2b: the declared shape and uncompressed size of a weight file are checked
    against the config before any array is read (no allocation of what a header claims; not
    "internal error (MemoryError)")."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run)
    rewrite_manifest(run)
    capsys.readouterr()
    rc = main(["recommend", "--run", str(run), "--user", "1"])
    line = one_line_error(capsys, 1, rc)
    assert str(run / "torch") in line and ".npz" in line and message in line, line


def test_every_file_a_loader_reads_is_listed(run_dir, tmp_path, capsys):
    """Issue 21, 3: a file missing from manifest.json's list was never checked: swapped
    weights were served by `recommend` and re-signed by `export`."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"]["torch/retrieval.npz"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    path = run / "torch" / "retrieval.npz"
    write_npz(path, {k: v * 2 for k, v in npz_arrays(path).items()})
    for argv in (["recommend", "--run", str(run), "--user", "1"],
                 ["export", "--run", str(run), "--to", "torch", "--out", str(tmp_path / "x")]):
        capsys.readouterr()
        line = one_line_error(capsys, 1, main(argv))
        assert str(path) in line and "not listed in manifest.json" in line, line
    assert not (tmp_path / "x").exists()
    # an empty list and an edited corpus
    manifest["files"] = {}
    (run / "manifest.json").write_text(json.dumps(manifest))
    edit_json("corpus.json", lambda d: {**d, "titles": d["titles"][::-1]})(run)
    capsys.readouterr()
    line = one_line_error(capsys, 1, main(["recommend", "--run", str(run), "--user", "1"]))
    assert str(run / "corpus.json") in line and "not listed" in line, line


def test_recommend_and_export_refuse_a_checkpoint_without_ranking_alike(run_dir, tmp_path,
                                                                        capsys):
    """Issue 21, 3: `"stages": ["retrieval"]` made `recommend` serve an untrained ranker while
    `export` refused: one rule (RunDir.open) for both."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    edit_json("torch/meta.json", lambda d: {**d, "stages": ["retrieval"]})(run)
    rewrite_manifest(run)
    lines = []
    for argv in (["recommend", "--run", str(run), "--user", "1"],
                 ["export", "--run", str(run), "--to", "torch", "--out", str(tmp_path / "x")]):
        capsys.readouterr()
        lines.append(one_line_error(capsys, 1, main(argv)).split(": error: ", 1)[1])
    assert lines[0] == lines[1] and "no ranking stage" in lines[0], lines


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
