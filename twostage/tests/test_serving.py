"""`twostage export --to torch` and its loader (twostage.serving) on small synthetic runs: the
export answers exactly what `twostage recommend` answers, needs no training code, and refuses
bad input with the file or the limit named. (The TFRS SavedModel: parity_tests/
test_serving_export.py.)"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twostage import serving
from twostage.cli import main
from twostage.data.synthetic import generate
from twostage.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml"), num_users=120, num_movies=90,
                    num_ratings=3000, seed=3)


def _run(data_dir: Path, out: Path, *flags: str) -> Path:
    assert main(["run", "--backend", "torch", "--data-dir", str(data_dir), "--retrieval-epochs",
                 "2", "--ranking-epochs", "1", "--validation-freq", "2", "--batch-size", "256",
                 "--out", str(out), "--quiet", *flags]) == 0
    return out


def _export(run: Path, out: Path, *flags: str) -> Path:
    assert main(["export", "--run", str(run), "--to", "torch", "--out", str(out), *flags]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    return _run(data_dir, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def export_dir(run_dir, tmp_path_factory):
    return _export(run_dir, tmp_path_factory.mktemp("exports") / "torch")


def reference(run_dir: Path, users: np.ndarray, stamps: np.ndarray, k: int,
              num_candidates: int | None = None) -> dict:
    """What `twostage recommend` computes for these queries (its loading, index, C and
    re-ranking), as arrays [N, k]; ``num_candidates`` replaces the run's.

    All N queries are searched in one call, as the export searches them, and under the
    serving path's thread policy (``serving.owned_threads``: FAISS on one thread), so both
    sides run the same computation on the same shapes. Under the process's default FAISS
    threads the batched search is partitioned otherwise, and OpenBLAS' Haswell kernel then
    rounds two identical catalogue rows (a duplicated title) differently by their place in the
    partition: a tie the export keeps (ascending row) came out broken the other way."""
    from twostage.export import load_run_backend
    from twostage.pipeline import recommend

    run = RunDir.open(run_dir)
    backend = load_run_backend(run)
    backend.build_index(run.corpus_titles)
    n = backend.config.eval.num_candidates if num_candidates is None else num_candidates
    c = min(max(k, n), len(run.corpus_titles))
    with serving.owned_threads(serving.PROGRAM_THREADS):
        recs = recommend(backend, users, stamps, c, run.corpus_titles)
    order = recs.reranked()[:, :k]
    rows = np.take_along_axis(recs.rows, order, axis=1)
    return {"titles": run.corpus_titles[rows], "rows": rows,
            "retrieval_scores": np.take_along_axis(recs.retrieval_scores, order, axis=1),
            "ranking_scores": np.take_along_axis(recs.ranking_scores, order, axis=1)}


def assert_same(served: serving.Served, ref: dict) -> None:
    """Same titles in the same order, scores within 1e-5."""
    assert served.titles.tolist() == ref["titles"].tolist()
    np.testing.assert_array_equal(served.rows, ref["rows"])
    for key in ("retrieval_scores", "ranking_scores"):
        np.testing.assert_allclose(getattr(served, key), ref[key], rtol=0, atol=1e-5)


def all_users(run_dir: Path) -> np.ndarray:
    """Every training user plus one the models never saw (the OOV embedding)."""
    spec = json.loads((run_dir / "torch" / "feature_spec.json").read_text())
    return np.array([*spec["user_vocab"], "no-such-user"], dtype=object)


@pytest.mark.parametrize("k", [5, 10, 25])  # C = num_candidates (10), k, k
def test_torch_export_reproduces_recommend_for_every_user(run_dir, export_dir, k):
    users = all_users(run_dir)
    assert len(users) > 100
    max_ts = RunDir.open(run_dir).max_timestamp
    stamps = max_ts - np.arange(len(users), dtype=np.int64) * 86_400  # times across the data
    loaded = serving.load(export_dir)
    assert isinstance(loaded, serving.TorchExport)
    for ts in (stamps, np.full(len(users), max_ts)):
        served = loaded.recommend(users, ts, k)
        assert served.titles.shape == (len(users), k)
        assert_same(served, reference(run_dir, users, ts, k))
    # the default time is the run's latest, as `twostage recommend`'s
    np.testing.assert_array_equal(loaded.recommend(users[:3], None, k).rows,
                                  loaded.recommend(users[:3], max_ts, k).rows)


def test_num_candidates_of_the_export(run_dir, tmp_path):
    """--num-candidates 30: 30 candidates re-ranked for k=5, not the run's 10."""
    loaded = serving.load(_export(run_dir, tmp_path / "c30", "--num-candidates", "30"))
    assert loaded.num_candidates == 30
    users = all_users(run_dir)
    stamps = np.full(len(users), RunDir.open(run_dir).max_timestamp)
    served = loaded.recommend(users, stamps, 5)
    assert_same(served, reference(run_dir, users, stamps, 5, num_candidates=30))
    assert (served.rows != reference(run_dir, users, stamps, 5)["rows"]).any()


def test_loader_prints_what_twostage_recommend_prints(run_dir, export_dir, capsys):
    for user, k in (("7", "5"), ("42", "10"), ("no-such-user", "3"), ("1", "30")):
        capsys.readouterr()
        assert main(["recommend", "--run", str(run_dir), "--user", user, "-k", k]) == 0
        expected = capsys.readouterr().out.splitlines()
        assert serving.main([str(export_dir), "--user", user, "-k", k]) == 0
        got = capsys.readouterr()
        assert got.out.splitlines()[1:] == expected[1:]  # the table; line 0 names the source
        assert len(expected) == 2 + int(k)
        assert ("not in the training data" in got.err) == (user == "no-such-user")


def test_loader_runs_without_the_training_code(export_dir):
    code = ("import sys; from twostage.serving import load; "
            f"out = load({str(export_dir)!r}).recommend(['7', '8'], k=4); "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch_impl', 'tfrs_impl', 'tensorflow'}); "
            "print(out.titles.shape, bad)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 4) []"


def test_export_manifest_describes_the_programs(run_dir, export_dir):
    manifest = json.loads((export_dir / serving.MANIFEST).read_text())
    run = RunDir.open(run_dir)
    assert manifest["catalog_size"] == len(run.corpus_titles)
    assert manifest["default_timestamp"] == run.max_timestamp
    assert manifest["index"]["kind"] == "flat"
    assert manifest["source"] == {"run": str(run_dir), "backend": "torch"}
    assert json.loads((export_dir / "titles.json").read_text()) == run.corpus_titles.tolist()
    assert set(manifest["files"]) - set(serving.OPTIONAL_FILES) == set(serving.FILES.values())


@pytest.mark.slow
def test_bf16_ivf_run_is_reproduced(data_dir, tmp_path):
    """The run's index kind (IVF: trained cells, approximate) and bf16 inference travel with
    the export."""
    run = _run(data_dir, tmp_path / "run", "--precision", "bf16", "--index-kind", "ivf",
               "--index-nlist", "6", "--index-nprobe", "2")
    out = _export(run, tmp_path / "export")
    loaded = serving.load(out)
    assert loaded.precision == "bf16" and loaded.manifest["index"]["kind"] == "ivf"
    users = all_users(run)
    stamps = np.full(len(users), RunDir.open(run).max_timestamp)
    assert_same(loaded.recommend(users, stamps, 12), reference(run, users, stamps, 12))


# --- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1, 91, 1000])
def test_k_outside_the_catalog_is_refused(export_dir, k):
    with pytest.raises(ValueError, match=r"k=-?\d+ must be an integer in \[1, 90\]"):
        serving.load(export_dir).recommend(["7"], None, k)


def test_bad_queries_are_refused(export_dir):
    loaded = serving.load(export_dir)
    with pytest.raises(ValueError, match="2 user ids but 3 timestamps"):
        loaded.recommend(["1", "2"], [1, 2, 3])
    with pytest.raises(ValueError, match="no user ids"):
        loaded.recommend([])
    with pytest.raises(ValueError, match="integers"):
        loaded.recommend(["1"], [1.5])


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "index.faiss").unlink(), "index.faiss is missing"),
    (lambda d: (d / "ranking_model.pt").unlink(), "ranking_model.pt is missing"),
    (lambda d: (d / "titles.json").write_text('["x"]'), "titles.json changed after"),
    (lambda d: (d / serving.MANIFEST).unlink(), "export.json is missing"),
    (lambda d: (d / ".twostage").unlink(), "not a twostage export"),
])
def test_damaged_export_names_the_file(export_dir, tmp_path, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    damage(copy)
    with pytest.raises(serving.ExportError, match=message):
        serving.load(copy)
    assert serving.main([str(copy), "--user", "7"]) == 1


def test_a_program_linked_from_outside_the_export_is_refused(export_dir, tmp_path, capsys):
    """Issue 21, 3: a .pt symlinked outside the export (same bytes, so the checksum holds) is
    refused, as run folders refuse files outside them; the loader says which file."""
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    outside = tmp_path / "elsewhere.pt"
    (copy / "ranking_model.pt").rename(outside)
    (copy / "ranking_model.pt").symlink_to(outside)
    with pytest.raises(serving.ExportError, match="ranking_model.pt points outside the export"):
        serving.load(copy)
    capsys.readouterr()
    assert serving.main([str(copy), "--user", "7"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ranking_model.pt" in err, err


@pytest.mark.parametrize("precision", ["fp8", "BF16", None, 16])
def test_unknown_precision_is_refused(export_dir, tmp_path, precision):
    """Issue 21, 3: an unknown `precision` silently ran in fp32; refused as in a run's config,
    before any program is loaded."""
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / serving.MANIFEST).read_text())
    manifest["precision"] = precision
    (copy / serving.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(serving.ExportError, match=r"export.json: 'precision' must be one of "
                       r"fp32, bf16"):
        serving.load(copy)


def test_the_loader_says_an_export_is_a_program():
    """Issue 21, 3: loading an export runs its code; the loader's contract says so."""
    doc = " ".join(serving.load.__doc__.split())
    assert "Load only exports you trust" in doc and "program" in doc


def test_missing_export_folder(tmp_path, capsys):
    with pytest.raises(serving.ExportError, match="no export folder"):
        serving.load(tmp_path / "nope")
    assert serving.main([str(tmp_path / "nope"), "--user", "7"]) == 1
    assert "twostage export" in capsys.readouterr().err


def test_export_refuses_foreign_folders_and_replaces_its_own(run_dir, export_dir, tmp_path,
                                                             capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", "--run", str(run_dir), "--to", "torch", "--out", str(foreign)]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"
    assert main(["export", "--run", str(run_dir), "--to", "torch", "--out", str(foreign),
                 "--force"]) == 0
    assert serving.load(foreign).catalog_size == 90
    moved = list(tmp_path.glob("foreign.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "notes.txt").read_text() == "mine"
    again = _export(run_dir, tmp_path / "again")          # an export of ours: replaced
    _export(run_dir, again, "--num-candidates", "20")
    assert serving.load(again).num_candidates == 20
    assert not list(tmp_path.glob(".again*"))             # no temporaries left
    capsys.readouterr()                                   # a SavedModel never replaces it
    assert main(["export", "--run", str(run_dir), "--to", "tfrs", "--out", str(again)]) == 2
    assert "torch-export, not a savedmodel" in capsys.readouterr().err
    assert serving.load(again).num_candidates == 20


def test_export_usage_errors(run_dir, tmp_path, capsys):
    cases = [(["-k", "10"], "drop -k"),
             (["--num-candidates", "0"], "--num-candidates 0"),
             (["--backend", "tfrs"], "has no saved tfrs models")]
    for flags, message in cases:
        capsys.readouterr()
        rc = main(["export", "--run", str(run_dir), "--to", "torch", "--out",
                   str(tmp_path / "x"), *flags])
        assert rc in (1, 2) and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["export", "--run", str(tmp_path / "nope"), "--to", "torch", "--out",
                 str(tmp_path / "x")]) == 2


def test_run_without_a_ranking_stage_is_refused(run_dir, tmp_path, capsys):
    """A run folder whose checkpoint holds the retrieval stage only: refused by `export` and,
    by the same rule (RunDir.open), by `recommend`, which served an untrained ranker."""
    from torch_impl import checkpoint as ckpt
    from torch_impl.backend import TorchBackend
    from twostage import io, rundir

    run = RunDir.open(run_dir)
    backend = TorchBackend.load(run_dir / "torch")

    def save(name: str, path: Path) -> None:
        ckpt.save(path, config=backend.config, spec=backend.spec,
                  models={"retrieval": backend.retrieval_model},
                  optimizers={"retrieval": backend.optimizers["retrieval"]},
                  epochs_done=backend.epochs_done)
    partial = rundir.write(tmp_path / "partial", reports={"torch": {}},
                           corpus_titles=run.corpus_titles, max_timestamp=run.max_timestamp,
                           spec_fingerprint=run.spec_fingerprint, data={},
                           save_backend=save, write_results=lambda tmp: [
                               io.write_json(tmp / "results.json", {"torch": {}})])
    capsys.readouterr()
    assert main(["export", "--run", str(partial), "--to", "torch", "--out",
                 str(tmp_path / "x")]) == 1
    assert "no ranking stage" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["recommend", "--run", str(partial), "--user", "7"]) == 1
    assert "no ranking stage" in capsys.readouterr().err


def test_index_padding_is_never_served_as_a_title(export_dir, monkeypatch):
    """An approximate index pads with row -1: the loader must not score or name it as the last
    title (it stays last, title None, ranking score -inf)."""
    served = serving.load(export_dir)
    search = served.index.search

    def padded_search(queries, c):
        scores, rows = search(queries, c)
        rows, scores = rows.copy(), scores.copy()
        rows[:, 2:], scores[:, 2:] = -1, -np.inf            # only two candidates found
        return scores, rows

    monkeypatch.setattr(served.index, "search", padded_search)
    out = served.recommend(["1", "2", "3"], None, k=5)
    assert (out.rows[:, :2] >= 0).all() and (out.rows[:, 2:] == -1).all()
    assert all(t is None for t in out.titles[:, 2:].ravel())
    assert np.isneginf(out.ranking_scores[:, 2:]).all()
    assert np.isfinite(out.ranking_scores[:, :2]).all()


def test_python_m_serving_escapes_control_characters(monkeypatch, capsys):
    """``python -m twostage.serving`` prints titles and the user id from an export's files:
    their control characters come out escaped, never as terminal commands (issue 21)."""
    class Fake:
        path, default_timestamp, num_candidates, catalog_size = Path("exp"), 0, 2, 2

        def known_user(self, user):
            return False

        def recommend(self, users, ts, k):
            titles = np.array([["Clear\x1b[2J (1995)", "Bell\x07\x9b (1996)"]], dtype=object)
            return serving.Served(titles, np.array([[0, 1]]), np.ones((1, 2), np.float32),
                                  np.ones((1, 2), np.float32))
    monkeypatch.setattr(serving, "load", lambda path: Fake())
    assert serving.main(["exp", "--user", "u\x1b]0;pwned\x07", "-k", "2"]) == 0
    out, err = capsys.readouterr()
    for text in (out, err):
        assert not any(ch in text for ch in "\x1b\x07\x9b")
    assert "Clear\\x1b[2J (1995)" in out and "Bell\\x07\\x9b (1996)" in out
    assert "\\x1b]0;pwned\\x07" in out
