"""A saved run of the genre / history recipes (issue 15) serves after loading: the recipe
lookups travel with the checkpoint (recipe.npz), an edited one is refused, and a config that
flips a recipe flag is refused naming the field. Both backends, tiny synthetic data."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from twostage import checkpoint as core, pipeline
from twostage.checkpoint import RECIPE_FILE, CheckpointError, stored_config
from twostage.cli import main
from twostage.config import Config, preset
from twostage.data.synthetic import generate
from twostage.dataset import load_dataset
from twostage.rundir import RunDir
from twostage.tests.test_safety import one_line_error

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BACKENDS = ("torch", "tfrs")
FAST = ["--retrieval-epochs", "2", "--ranking-epochs", "1", "--batch-size", "256", "--quiet"]
RECIPES = ["--genres", "--history", "--normalize", "--learn-temperature",
           "--use-sampling-probability", "--temperature", "0.1"]
CONFIG = Config.of(genres=True, history=True, normalize=True, learn_temperature=True,
                   use_sampling_probability=True, temperature=0.1, batch_size=256,
                   retrieval_epochs=1, ranking_epochs=1, quiet=True)
TEMPERATURE = "temperature/log_temperature"
USER = "7"
SYNTHETIC = {"num_users": 60, "num_movies": 50, "num_ratings": 1500, "seed": 11}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml"), **SYNTHETIC)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """(run folder of both backends with every recipe, {name: the in-process backend})."""
    out = tmp_path_factory.mktemp("runs") / "run"
    backends = {}

    def keep(name, *args, **kwargs):
        result = run_backend(name, *args, **kwargs)
        backends[name] = result[0]
        return result
    run_backend = pipeline.run_backend
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "run_backend", keep)
        assert main(["run", "--backend", "both", "--data-dir", str(data_dir), "--out", str(out),
                     *FAST, *RECIPES]) == 0
    assert set(backends) == set(BACKENDS)
    return out, backends


@pytest.fixture(scope="module")
def dataset(data_dir):
    return load_dataset(CONFIG, data_dir)


def recommendations(backend, run: RunDir, k: int = 10):
    """(titles re-ranked, retrieval scores, ranking scores) for USER, as `recommend` does."""
    titles = run.corpus_titles
    backend.build_index(titles)
    c = min(max(k, backend.config.eval.num_candidates), len(titles))
    recs = pipeline.recommend(backend, np.array([USER], dtype=object),
                              np.array([run.max_timestamp], np.int64), c, titles)
    order = recs.reranked()[0]
    return (list(titles[recs.rows[0, order]]), recs.retrieval_scores[0, order],
            recs.ranking_scores[0, order])


def printed_titles(out: str) -> list[str]:
    lines = out.strip().splitlines()[2:]  # after "user ..." and the column header
    return [line.split(None, 3)[3] for line in lines]


@pytest.mark.parametrize("name", BACKENDS)
def test_recommend_after_loading_matches_the_trained_backend(trained, name, capsys):
    out, backends = trained
    run = RunDir.open(out)
    folder = out / name
    loaded = pipeline.load_backend(name, folder, stored_config(folder).replace(nproc=1))
    recipe = loaded.recipe
    assert recipe is not None and recipe.genres is not None and recipe.history is not None
    # the user's training ratings before the query time are the history the model reads
    assert np.count_nonzero(recipe.histories([USER], [run.max_timestamp])) > 0
    want_titles, want_retrieval, want_ranking = recommendations(backends[name], run)
    titles, retrieval, ranking = recommendations(loaded, run)
    assert titles == want_titles
    np.testing.assert_allclose(retrieval, want_retrieval, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ranking, want_ranking, rtol=0, atol=1e-5)

    capsys.readouterr()
    assert main(["recommend", "--run", str(out), "--user", USER, "--backend", name]) == 0
    assert printed_titles(capsys.readouterr().out) == want_titles[:10]


def test_the_run_is_the_best_preset_recipe(trained):
    """The flags above are `--preset best`'s recipe (its epochs aside)."""
    best = preset("best")
    for name in BACKENDS:
        stored = stored_config(trained[0] / name)
        for section, fields in (("model", ("genres", "history")),
                                ("task", ("normalize", "learn_temperature", "temperature",
                                          "use_sampling_probability"))):
            for f in fields:
                assert getattr(getattr(stored, section), f) == \
                    getattr(getattr(best, section), f), (name, f)


def test_both_backends_store_the_same_lookups(trained):
    out, backends = trained
    expected = backends["torch"].recipe.to_arrays()
    assert set(expected) == {"genres", "history_users", "history_keys", "history_titles"}
    files = json.loads((out / "manifest.json").read_text())["files"]
    for name in BACKENDS:
        assert f"{name}/{RECIPE_FILE}" in files  # the run folder's checksums cover it
        with np.load(out / name / RECIPE_FILE, allow_pickle=False) as z:
            assert set(z.files) == set(expected)
            for key, value in expected.items():
                np.testing.assert_array_equal(z[key], value, err_msg=f"{name}: {key}")


def adagrad_state(name: str, backend, stage: str = "retrieval") -> core.StageState:
    if name == "torch":
        from torch_impl.checkpoint import stage_state
    else:
        from tfrs_impl.checkpoint import stage_state
    return stage_state(stage, backend.models[stage], backend.optimizers[stage])


@pytest.mark.parametrize("name", BACKENDS)
def test_resume_keeps_the_learned_temperature_and_its_accumulator(name, dataset, tmp_path):
    backend = pipeline.make_backend(name, CONFIG, dataset)
    backend.fit_retrieval(dataset, epochs=1)
    trained_state = adagrad_state(name, backend)
    log_t = float(trained_state.weights[TEMPERATURE])
    assert log_t != pytest.approx(math.log(0.1), abs=1e-6)  # it was learned

    backend.save(tmp_path / "ckpt")
    loaded = pipeline.backend_class(name).load(tmp_path / "ckpt")
    state = adagrad_state(name, loaded)
    assert float(state.weights[TEMPERATURE]) == log_t
    np.testing.assert_array_equal(state.accumulators[TEMPERATURE],
                                  trained_state.accumulators[TEMPERATURE])
    # one more epoch from the checkpoint is the epoch the trained backend takes next
    backend.fit_retrieval(dataset, epochs=1)
    loaded.fit_retrieval(dataset, epochs=1)
    went_on, resumed = adagrad_state(name, backend), adagrad_state(name, loaded)
    assert float(went_on.weights[TEMPERATURE]) != log_t
    np.testing.assert_allclose(resumed.weights[TEMPERATURE], went_on.weights[TEMPERATURE],
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(resumed.accumulators[TEMPERATURE],
                               went_on.accumulators[TEMPERATURE], rtol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
def test_release_dates_travel_with_the_checkpoint(name, dataset, tmp_path):
    """A ``release_date`` model loads with its release table (same candidate vectors); a
    recipe.npz whose table is out of range or missing is refused naming it."""
    from twostage.recipes import NUM_RELEASE_BUCKETS, RecipeData
    config = CONFIG.replace(release_date=True, genres=False, history=False)
    backend = pipeline.make_backend(name, config, dataset)
    backend.fit_retrieval(dataset, epochs=1)
    assert set(backend.recipe.releases[1:].tolist()) == {22}  # the generator's 01-Jan-1995
    # a table of distinct rows per title (the synthetic dates are all one bucket), so a
    # permuted or misindexed table after loading changes the candidate vectors
    varied = np.arange(dataset.spec.num_title_rows, dtype=np.int64) % 9
    backend.attach_recipe_data(RecipeData(releases=varied))
    backend.save(tmp_path / "ckpt")
    loaded = pipeline.backend_class(name).load(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded.recipe.releases, varied)
    titles = dataset.corpus_titles
    np.testing.assert_allclose(loaded.candidate_embeddings(titles),
                               backend.candidate_embeddings(titles), rtol=0, atol=1e-6)
    for change, message in ((lambda a: a.update(releases=a["releases"] + NUM_RELEASE_BUCKETS),
                             "releases must be"), (lambda a: a.pop("releases"), "releases")):
        folder = tmp_path / f"bad-{message[:5]}-{len(list((tmp_path).iterdir()))}"
        shutil.copytree(tmp_path / "ckpt", folder)
        edit_recipe(folder, change)
        fix_meta(folder)
        with pytest.raises(CheckpointError, match=message):
            pipeline.backend_class(name).load(folder)


def test_save_without_the_lookups_is_refused_before_writing(dataset, tmp_path):
    from torch_impl.backend import TorchBackend
    backend = TorchBackend(CONFIG, dataset.spec)  # never fit: nothing attached
    with pytest.raises(ValueError, match="model.genres=True .* not attached"):
        backend.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


# --- tampering --------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_recipe(folder: Path, change) -> None:
    with np.load(folder / RECIPE_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    with open(folder / RECIPE_FILE, "wb") as f:
        np.savez(f, **arrays)


def fix_meta(folder: Path) -> None:
    """An attacker who also fixes the checkpoint's own checksum of recipe.npz."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["recipe"]["sha256"] = sha256(folder / RECIPE_FILE)
    (folder / "meta.json").write_text(json.dumps(meta))


def fix_manifest(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"] = {rel: sha256(run / rel) for rel in manifest["files"]}
    (run / "manifest.json").write_text(json.dumps(manifest))


def other_history(arrays) -> None:
    arrays["history_titles"] = np.roll(arrays["history_titles"], 1)


def titles_out_of_range(arrays) -> None:
    arrays["history_titles"] = arrays["history_titles"] + 10 ** 6


def genres_dropped(arrays) -> None:
    del arrays["genres"]


# (edit, fix meta.json, fix manifest.json, what the one-line error names)
TAMPERING = {
    "edited": (other_history, False, False, "changed after the run wrote it"),
    "edited+manifest": (other_history, False, True, "changed after it was saved"),
    "out of range+checksums": (titles_out_of_range, True, True, "history_titles"),
    "genres dropped+checksums": (genres_dropped, True, True, "genres"),
}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_recipe_file_is_refused(trained, tmp_path, capsys, name, case):
    change, meta, manifest, message = TAMPERING[case]
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    edit_recipe(run / name, change)
    if meta:
        fix_meta(run / name)
    if manifest:
        fix_manifest(run)
    capsys.readouterr()
    rc = main(["recommend", "--run", str(run), "--user", USER, "--backend", name])
    line = one_line_error(capsys, 1, rc)
    assert RECIPE_FILE in line and message in line, line


@pytest.mark.parametrize("name", BACKENDS)
def test_a_checkpoint_without_its_recipe_file_is_refused(trained, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(trained[0] / name, folder)
    (folder / RECIPE_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{RECIPE_FILE} is missing"):
        pipeline.backend_class(name).load(folder)


# --- architecture fields ----------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("field, section", [("history", "model"), ("normalize", "task"),
                                            ("genres", "model"),
                                            ("learn_temperature", "task")])
def test_a_config_with_another_recipe_flag_is_refused_naming_it(trained, name, field, section):
    folder = trained[0] / name
    given = stored_config(folder).replace(**{field: False})
    with pytest.raises(CheckpointError,
                       match=rf"{section}\.{field}: checkpoint True vs given False"):
        pipeline.backend_class(name).load(folder, config=given)
