"""Exports and `twostage serve` of a run trained with the genre, history and release-date
recipes (``model.genres``, ``model.history`` of 7 titles, ``model.release_date``): both
exports answer what `twostage recommend` answers on the run folder, their stored histories and
genres are verified like seen.npz, and a request's own ``history`` is what the query tower
reads, as offline. A tiny synthetic run (2 + 1 epochs,
torch weights; the TFRS export holds them moved into the TFRS models) keeps it fast."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import httpx

from twostage import serving, service
from twostage.cli import main
from twostage.data.synthetic import generate
from twostage.engine import open_engine
from twostage.rundir import RunDir
from twostage.tests.test_service import as_arrays, assert_same, post, serving_app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    data = generate(tmp_path_factory.mktemp("ml"), num_users=120, num_movies=90,
                    num_ratings=3000, seed=3)
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--backend", "torch", "--data-dir", str(data), "--retrieval-epochs",
                 "2", "--ranking-epochs", "1", "--validation-freq", "2", "--batch-size", "256",
                 "--genres", "--history", "--release-date", "--history-length", "7",
                 "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    for to in ("torch", "tfrs"):
        assert main(["export", "--run", str(run_dir), "--to", to, "--out", str(root / to)]) == 0
    return {to: root / to for to in ("torch", "tfrs")}


def reference(run_dir: Path, users, stamps, k: int, history: dict | None = None
              ) -> serving.Served:
    """`twostage recommend`'s computation on the run folder (its backend with the checkpoint's
    recipe lookups, C, re-ranking), under the serving thread policy. ``history``: {user:
    titles (oldest first)} added to the training ratings just before the query time (what the
    query tower then reads: recipes.HistoryIndex.with_ratings)."""
    import dataclasses

    from twostage.export import load_run_backend
    from twostage.pipeline import recommend

    run = RunDir.open(run_dir)
    backend = load_run_backend(run)
    users = np.asarray(users, dtype=object)
    stamps = np.broadcast_to(np.asarray(stamps, np.int64), users.shape).copy()
    if history:
        (user, titles), = history.items()
        first = int(stamps[users == user].min()) - len(titles)
        backend.recipe = dataclasses.replace(backend.recipe, history=(
            backend.recipe.history.with_ratings(
                [user] * len(titles), first + np.arange(len(titles)),
                backend.spec.title_index(list(titles)))))
    backend.build_index(run.corpus_titles)
    c = min(max(k, backend.config.eval.num_candidates), len(run.corpus_titles))
    with serving.owned_threads(serving.PROGRAM_THREADS):
        recs = recommend(backend, users, stamps, c, run.corpus_titles)
    return serving.top_k(recs, run.corpus_titles, k)


def assert_equal(got: serving.Served, expected: serving.Served) -> None:
    assert got.titles.tolist() == expected.titles.tolist()
    np.testing.assert_array_equal(got.rows, expected.rows)
    for key in ("retrieval_scores", "ranking_scores"):
        np.testing.assert_allclose(getattr(got, key), getattr(expected, key), rtol=0,
                                   atol=1e-5)


def users_of(run_dir: Path) -> np.ndarray:
    spec = json.loads((run_dir / "torch" / "feature_spec.json").read_text())
    return np.array([*spec["user_vocab"], "no-such-user"], dtype=object)


@pytest.mark.parametrize("to", ["torch", "tfrs"])
def test_recipe_exports_reproduce_recommend_for_every_user(run_dir, exports, to):
    """Every user (and an unknown one), at the latest time and at times across the data (the
    stored training ratings give each its history then). Break: export the histories as of the
    latest time only, or drop the genre table, and the answers differ."""
    users = users_of(run_dir)
    max_ts = RunDir.open(run_dir).max_timestamp
    loaded = serving.load(exports[to])
    assert loaded.history is not None and loaded.categories is not None
    manifest = json.loads((exports[to] / serving.MANIFEST).read_text())
    assert manifest["recipes"] == {"genres": True, "history": True, "release_date": True}
    assert {serving.HISTORY_FILE, serving.CATEGORIES_FILE} <= set(manifest["files"])
    for stamps in (np.full(len(users), max_ts), max_ts - np.arange(len(users)) * 86_400):
        assert_equal(loaded.recommend(users, stamps, 7), reference(run_dir, users, stamps, 7))


@pytest.mark.parametrize("to", ["torch", "tfrs"])
def test_a_given_history_is_what_the_query_tower_reads(run_dir, exports, to):
    """``histories`` of a new user equals adding those ratings offline (and changes the
    scores: the tower reads it); None keeps a user's stored history; an unknown item is named."""
    titles = RunDir.open(run_dir).corpus_titles
    given = [str(t) for t in titles[[3, 40, 11, 3, 70]]]
    loaded = serving.load(exports[to])
    ts = RunDir.open(run_dir).max_timestamp
    got = loaded.recommend(["new-user", "7"], ts, 6, histories=[given, None])
    expected = reference(run_dir, ["new-user", "7"], ts, 6, {"new-user": given})
    assert_equal(got, expected)
    assert not np.allclose(got.retrieval_scores[0],
                           loaded.recommend(["new-user"], ts, 6).retrieval_scores[0])
    with pytest.raises(KeyError, match="No Such Movie"):
        loaded.recommend(["new-user"], ts, 6, histories=[["No Such Movie (1999)"]])


def test_exports_of_version_1_load_and_later_versions_are_refused(exports, tmp_path):
    """Version 2 added the stored history length; a version-1 export (50 titles) still loads,
    a version the code does not know is refused with the fix."""
    for version, ok in ((1, True), (3, False)):
        folder = tmp_path / f"v{version}"
        shutil.copytree(exports["torch"], folder)
        manifest = json.loads((folder / serving.MANIFEST).read_text())
        assert manifest["version"] == serving.VERSION == 2
        manifest["version"] = version
        (folder / serving.MANIFEST).write_text(json.dumps(manifest))
        if ok:
            assert serving.TorchExport.load(folder).history is not None
            continue
        with pytest.raises(serving.ExportError, match="reads versions 1, 2"):
            serving.TorchExport.load(folder)


def test_stored_histories_and_genres_are_checked_before_use(exports, tmp_path):
    """history.npz and categories.npz are listed in export.json (an edited file is refused by
    its checksum), their arrays are checked once re-signed, and a history model's export
    without history.npz is refused."""
    from twostage import io as twostage_io

    folder = tmp_path / "torch"
    shutil.copytree(exports["torch"], folder)
    manifest = json.loads((folder / serving.MANIFEST).read_text())
    size = manifest["catalog_size"]
    stored = serving.StoredHistory.load(folder / serving.HISTORY_FILE, size)
    bad = serving.StoredHistory(stored.index, stored.row_titles[:-1])
    bad.save(folder / serving.HISTORY_FILE)
    with pytest.raises(serving.ExportError, match="history.npz changed after the export"):
        serving.TorchExport.load(folder)
    manifest["files"][serving.HISTORY_FILE] = twostage_io.sha256_file(
        folder / serving.HISTORY_FILE)
    (folder / serving.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(serving.ExportError, match="histories are inconsistent"):
        serving.TorchExport.load(folder)
    assert stored.length == 7  # the run's --history-length, stored with the histories
    serving.StoredHistory(stored.index, stored.row_titles, 0).save(folder / serving.HISTORY_FILE)
    manifest["files"][serving.HISTORY_FILE] = twostage_io.sha256_file(
        folder / serving.HISTORY_FILE)
    (folder / serving.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(serving.ExportError, match="history_length must be one integer >= 1"):
        serving.TorchExport.load(folder)
    stored.save(folder / serving.HISTORY_FILE)
    genres = serving.StoredCategories.load(folder / serving.CATEGORIES_FILE, size)
    values, indptr, ids = genres.features["genres"]
    serving.StoredCategories({"genres": (values, indptr, ids + len(values))}).save(
        folder / serving.CATEGORIES_FILE)
    for name in (serving.HISTORY_FILE, serving.CATEGORIES_FILE):
        manifest["files"][name] = twostage_io.sha256_file(folder / name)
    (folder / serving.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(serving.ExportError, match="categories 'genres' are inconsistent"):
        serving.TorchExport.load(folder)
    genres.save(folder / serving.CATEGORIES_FILE)
    (folder / serving.HISTORY_FILE).unlink()
    del manifest["files"][serving.HISTORY_FILE]
    manifest["files"][serving.CATEGORIES_FILE] = twostage_io.sha256_file(
        folder / serving.CATEGORIES_FILE)
    (folder / serving.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(serving.ExportError, match="lists no history.npz"):
        serving.TorchExport.load(folder)


def test_history_over_http_equals_offline(run_dir, exports):
    """POST /recommend with ``history`` for a user the model never saw: the answer of the run
    folder and of both exports is the offline ranking with that history; an unknown item is a
    422 naming ``history``; /metadata says the model reads histories."""
    titles = RunDir.open(run_dir).corpus_titles
    given = [str(t) for t in titles[[5, 6, 50, 22]]]
    ts = RunDir.open(run_dir).max_timestamp
    expected = reference(run_dir, ["visitor"], ts, 5, {"visitor": given})
    engines = {"run": open_engine(run_dir), **{to: open_engine(p) for to, p in exports.items()}}
    for kind, engine in engines.items():
        with serving_app(service.create_app(engine)) as url:
            assert httpx.get(url + "/metadata").json()["history"] is True
            got = post(url, {"user_id": "visitor", "k": 5, "history": given})
            assert got.status_code == 200, got.text
            result = got.json()["results"][0]
            assert result["known_user"] is False
            assert_same(as_arrays(got.json()), expected)
            # alone in its batch: another request's user keeps the stored history
            plain = post(url, {"user_id": "visitor", "k": 5}).json()
            assert not np.allclose(as_arrays(plain)["retrieval_scores"],
                                   expected.retrieval_scores)
            for body, field in (({"user_id": "visitor", "history": ["No Such Movie (1999)"]},
                                 "history"),
                                ({"user_ids": ["visitor"], "history": given}, "history")):
                bad = post(url, body)
                assert bad.status_code == 422 and bad.json()["field"] == field, (kind, bad.text)
            assert "No Such Movie" in post(url, {"user_id": "v", "history": [
                "No Such Movie (1999)"]}).json()["error"]


def test_a_model_without_history_refuses_it(tmp_path):
    """The seed's model has no history feature: ``history`` is a 422 saying so (the seed runs
    of test_service; here through an engine's query builder, no server needed)."""
    from twostage.engine import Engine

    class NoHistory(Engine):
        history_feature = False
        catalog_size = 10
        default_timestamp = 0
        num_candidates = 5
        seen = None
        categories = None
    with pytest.raises(service.FieldError, match="no history feature") as e:
        service.build_query(NoHistory(), service.RecommendRequest(user_id="1", history=[]))
    assert e.value.field == "history"
