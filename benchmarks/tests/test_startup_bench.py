"""benchmarks.startup on small synthetic data: the figures it reports are the probed process's."""
from __future__ import annotations

import json

import pytest

from benchmarks import startup
from twostage.data.synthetic import generate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ml"), num_users=80, num_movies=60,
                    num_ratings=2000, seed=5, realistic=True)


def test_startup_times_the_first_step_and_its_phases(data_dir, tmp_path, capsys):
    """The first step comes after the import of torch, the data and the backend, and nothing
    of TensorFlow or dynamo was loaded by then. Fails if the probe's step hook does not fire
    (the run ends without a step: RuntimeError), if the marks are not the probed run's (out
    of order), or if a torch run loads torch._dynamo again (torch_impl/optim.py's
    ``_without_dynamo_import`` removed), or the baselines are computed before the first backend
    trains again (twostage/cli.py ``_train_and_write_locked``)."""
    assert startup.main(["--repeats", "1", "--data-dir", str(data_dir),
                         "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "startup.json").read_text())
    marks = report["marks_s"]
    order = ["interpreter", "import torch end", "load_dataset end", "make_backend end",
             "first_step"]
    assert [marks[m] for m in order] == sorted(marks[m] for m in order), marks
    assert report["first_step_s"] == marks["first_step"] == report["first_step_all_s"][0]
    assert 0 < report["python_s"] and 0 < report["help_s"]
    assert report["loaded_by_first_step"] == []
    assert "evaluate_baselines start" not in marks          # they come after the training
    out = capsys.readouterr().out
    assert f"{report['first_step_s']:6.2f} s" in out and f"{report['help_s']:6.2f} s" in out


def test_a_run_without_a_training_step_is_an_error(tmp_path):
    """A run that fails before training is reported, not timed (breaks if first_step returns
    marks of a run that never stepped)."""
    with pytest.raises(RuntimeError, match="without a training step"):
        startup.first_step(["run", "--backend", "torch", "--data-dir", str(tmp_path / "none")])
