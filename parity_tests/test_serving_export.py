"""`twostage export --to tfrs`: the SavedModel's `recommend` signature answers what `twostage
recommend` answers (both frameworks in one process: exports from either backend's weights).

From the same backend's weights the order is the same for every user and the scores agree
within 1e-5. Across frameworks (torch weights in a SavedModel, TFRS weights in TorchScript) the
scores agree within 1e-5 too, but the other framework's float rounding may swap two candidates
whose ranking scores differ by less than that (a briefly trained ranking model scores many
candidates alike): those comparisons allow exactly such swaps and nothing else.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twostage import serving
from twostage.cli import main
from twostage.data.synthetic import generate
from twostage.rundir import RunDir

TOL = 1e-5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    data = generate(tmp_path_factory.mktemp("ml"), num_users=120, num_movies=90,
                    num_ratings=3000, seed=3)
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--backend", "both", "--data-dir", str(data), "--retrieval-epochs", "2",
                 "--ranking-epochs", "1", "--validation-freq", "2", "--batch-size", "256",
                 "--out", str(out), "--quiet"]) == 0
    return out


def _export(run_dir: Path, out: Path, to: str, backend: str, *flags: str) -> Path:
    assert main(["export", "--run", str(run_dir), "--to", to, "--backend", backend, "--out",
                 str(out), *flags]) == 0
    return out


@pytest.fixture(scope="module")
def savedmodel(run_dir, tmp_path_factory) -> Path:
    return _export(run_dir, tmp_path_factory.mktemp("exports") / "tfrs", "tfrs", "tfrs",
                   "-k", "20")


def reference(run_dir: Path, backend: str, users: np.ndarray, stamps: np.ndarray, k: int):
    """`twostage recommend --backend NAME`'s computation for these queries -> (the C
    candidates per query as pipeline.Recommendations, the top-k re-ranked order [N, k])."""
    from twostage.export import load_run_backend
    from twostage.pipeline import recommend

    run = RunDir.open(run_dir)
    loaded = load_run_backend(run, backend)
    loaded.build_index(run.corpus_titles)
    c = min(max(k, loaded.config.eval.num_candidates), len(run.corpus_titles))
    recs = recommend(loaded, users, stamps, c, run.corpus_titles)
    return recs, recs.reranked()[:, :k]


def queries(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every training user and one unknown user, at times spread over the data."""
    import json
    spec = json.loads((run_dir / "tfrs" / "feature_spec.json").read_text())
    users = np.array([*spec["user_vocab"], "no-such-user"], dtype=object)
    stamps = RunDir.open(run_dir).max_timestamp - np.arange(len(users), dtype=np.int64) * 86_400
    return users, stamps


def assert_same_up_to_near_ties(served, recs, order) -> int:
    """Every served item is one of the reference's candidates with the same scores (within
    TOL), and the ranking scores position by position agree within TOL: the orders differ at
    most by swaps of items whose scores are that close. Returns how many queries differ."""
    for u in range(len(recs.rows)):
        by_row = {int(r): (a, b) for r, a, b in zip(recs.rows[u], recs.retrieval_scores[u],
                                                    recs.ranking_scores[u])}
        for r, a, b in zip(served.rows[u], served.retrieval_scores[u], served.ranking_scores[u]):
            assert int(r) in by_row, f"query {u}: row {r} is not among the reference candidates"
            assert abs(by_row[int(r)][0] - a) <= TOL and abs(by_row[int(r)][1] - b) <= TOL
    np.testing.assert_allclose(served.ranking_scores,
                               np.take_along_axis(recs.ranking_scores, order, axis=1),
                               rtol=0, atol=TOL)
    return int((served.rows != np.take_along_axis(recs.rows, order, axis=1)).any(axis=1).sum())


@pytest.mark.slow
@pytest.mark.parametrize("k", [5, 25])  # C = num_candidates (10), then k
def test_savedmodel_reproduces_recommend_for_every_user(run_dir, savedmodel, k):
    users, stamps = queries(run_dir)
    assert len(users) > 100
    loaded = serving.load(savedmodel)
    for ts in (stamps, np.full(len(users), RunDir.open(run_dir).max_timestamp)):
        served = loaded.recommend(users, ts, k)
        assert served.titles.shape == (len(users), k)
        recs, order = reference(run_dir, "tfrs", users, ts, k)
        # graph and eager TF may round a score differently by its batch: near-ties may swap
        assert_same_up_to_near_ties(served, recs, order)
        corpus = RunDir.open(run_dir).corpus_titles
        assert served.titles.tolist() == corpus[served.rows].tolist()


@pytest.mark.slow
def test_savedmodel_prints_what_twostage_recommend_prints(run_dir, savedmodel, capsys):
    for user, k in (("7", "5"), ("no-such-user", "3"), ("1", "30")):
        capsys.readouterr()
        assert main(["recommend", "--run", str(run_dir), "--user", user, "-k", k,
                     "--backend", "tfrs"]) == 0
        expected = capsys.readouterr().out.splitlines()
        assert serving.main([str(savedmodel), "--user", user, "-k", k]) == 0
        got = capsys.readouterr()
        assert got.out.splitlines()[1:] == expected[1:] and len(expected) == 2 + int(k)
        assert ("not in the training data" in got.err) == (user == "no-such-user")


@pytest.mark.slow
def test_savedmodel_keeps_the_retrieval_call(run_dir, savedmodel):
    import tensorflow as tf

    from twostage.export import load_run_backend

    model = tf.saved_model.load(str(savedmodel))
    assert {"serving_default", "recommend"} <= set(model.signatures)
    users, stamps = queries(run_dir)
    scores, titles = model({"user_id": tf.constant(users.astype(str)),
                            "timestamp": tf.constant(stamps, tf.int64)})
    run = RunDir.open(run_dir)
    backend = load_run_backend(run, "tfrs")
    backend.build_index(run.corpus_titles)
    want_scores, rows = backend.retrieve(users, stamps, 20)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=0, atol=TOL)
    assert [[t.decode() for t in row] for row in titles.numpy()] == \
        run.corpus_titles[rows].tolist()
    out = model.signatures["recommend"](user_id=tf.constant(["7"]),
                                        timestamp=tf.constant([run.max_timestamp], tf.int64),
                                        k=tf.constant(4))
    assert set(out) == {"titles", "rows", "retrieval_scores", "ranking_scores"}
    assert tuple(out["titles"].shape) == (1, 4)


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 91])
def test_savedmodel_refuses_k_outside_the_catalog(savedmodel, k):
    import tensorflow as tf

    model = tf.saved_model.load(str(savedmodel))
    message = "k must be >= 1" if k < 1 else "k exceeds the catalog size"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.recommend({"user_id": tf.constant(["7"]), "timestamp": tf.constant([1], tf.int64),
                         "k": tf.constant(k)})
    with pytest.raises(ValueError, match=r"must be an integer in \[1, 90\]"):
        serving.load(savedmodel).recommend(["7"], None, k)


@pytest.mark.slow
def test_retrieval_only_savedmodel_is_refused_by_the_loader(run_dir, tmp_path):
    from tfrs_impl.serving import export_saved_model
    from twostage.export import load_run_backend

    run = RunDir.open(run_dir)
    backend = load_run_backend(run, "tfrs")
    out = export_saved_model(tmp_path / "retrieval", backend.retrieval_model, run.corpus_titles,
                             k=10)
    with pytest.raises(serving.ExportError, match="retrieval stage only"):
        serving.load(out)
    with pytest.raises(serving.ExportError, match="not a torch export"):
        serving.TorchExport.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("to, weights", [("tfrs", "torch"), ("torch", "tfrs")])
def test_exports_of_the_other_backends_weights(run_dir, tmp_path, to, weights):
    """torch weights in a SavedModel (`twostage recommend --backend torch` is the reference),
    TFRS weights as TorchScript + FAISS (`--backend tfrs` is)."""
    out = _export(run_dir, tmp_path / "export", to, weights)
    users, stamps = queries(run_dir)
    loaded = serving.load(out)
    recs, order = reference(run_dir, weights, users, stamps, 25)
    differing = assert_same_up_to_near_ties(loaded.recommend(users, stamps, 25), recs, order)
    assert differing <= len(users) // 10


# --- issue 21, 2c: a SavedModel export carries export.json and is verified before loading -----
def _variables_data(export: Path) -> Path:
    return next((export / "variables").glob("variables.data-*"))


def _truncate(export: Path) -> Path:
    data = _variables_data(export)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return data


def _add_unlisted(export: Path) -> Path:
    extra = export / "assets" / "extra.txt"
    extra.parent.mkdir(exist_ok=True)
    extra.write_text("not written by the export")
    return extra


def _drop_manifest(export: Path) -> Path:
    (export / serving.MANIFEST).unlink()
    return export / serving.MANIFEST


@pytest.mark.slow
def test_savedmodel_manifest_lists_every_file(savedmodel):
    import json
    manifest = json.loads((savedmodel / serving.MANIFEST).read_text())
    assert manifest["format"] == serving.SAVEDMODEL_FORMAT
    assert set(manifest["files"]) == set(serving.exported_files(savedmodel))
    assert "saved_model.pb" in manifest["files"]
    assert any(f.startswith("variables/") for f in manifest["files"])


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (_truncate, "changed after the export wrote it"),
    (_add_unlisted, "is not listed in export.json"),
    (_drop_manifest, "is missing"),
])
def test_damaged_savedmodel_is_one_line_naming_the_file(savedmodel, tmp_path, capsys, damage,
                                                         message):
    """A truncated SavedModel ended in a 43-line TensorFlow traceback: its files are checked
    against export.json before TensorFlow reads any."""
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(savedmodel, copy)
    file = damage(copy)
    with pytest.raises(serving.ExportError, match=message) as caught:
        serving.load(copy)
    assert str(file) in str(caught.value)
    capsys.readouterr()
    assert serving.main([str(copy), "--user", "7"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(file) in err and "Traceback" not in err, err
