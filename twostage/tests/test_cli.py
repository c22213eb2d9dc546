"""End to end: `twostage run/recommend/export` on synthetic data, for both backends."""
from __future__ import annotations

import json

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
        assert set(acc) == {"1", "5", "10", "50", "100"}
        assert all(0.0 <= v <= 1.0 for v in acc.values())
        assert acc["1"] <= acc["5"] <= acc["10"] <= acc["50"] <= acc["100"]
        # 90 movies: every true title is among the top 100 of the whole corpus
        assert acc["100"] == 1.0
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
    assert "torch - tfrs" in table and "retrieval.top_k_accuracy.100" in table
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
    assert main(["run", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
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
            "retrieval/val/factorized_top_k/top_100_categorical_accuracy"} <= tags["torch"]
