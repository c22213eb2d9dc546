"""Your own data end to end on the torch backend: the own-data issue's example schema, as
written, on generated files -> report with baselines, recommend, save / load_run, the CLI; and
every feature kind through ``Dataset.from_frames``. (The TFRS twin and the parity between the
two: parity_tests/test_9_schema.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import twostage as ts
from twostage.backend import UnsupportedOptionError
from twostage.cli import main
from twostage.data.synthetic_schema import generate
from twostage.data.tables import TableError
from twostage.schema import EXAMPLE, tomllib

KS = (1, 5, 10, 50)


def config(**changes) -> ts.Config:
    return ts.Config().replace(retrieval_epochs=3, ranking_epochs=2, batch_size=256,
                               top_ks=KS, quiet=True, **changes)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("example"), num_users=80, num_items=60,
                    num_events=2000)


@pytest.fixture(scope="module")
def run(example):
    return ts.train(ts.load(example, config()), config(), backend="torch")


def test_the_example_schema_runs_and_reports_against_baselines(run):
    report = run.report
    assert report.dataset["num_items"] == 60 and report.dataset["implicit"] is False
    table = report.table()
    assert set(table) == {"torch model", "random", "popular", "ease", "recent"}
    for k in KS:
        for tag in ("", " excl. seen"):
            for figures in table.values():
                assert 0 <= figures[f"top-{k}{tag}"] <= 1
        assert table["random"][f"top-{k}"] == pytest.approx(k / 60)
    for figures in table.values():
        assert {"ndcg@10", "ndcg@10 excl. seen"} <= set(figures)
    assert {"two_stage", "two_stage_exclude_seen", "ranking"} <= set(report.metrics)
    assert len(report.stages["retrieval"]) == 3 and len(report.stages["ranking"]) == 2
    assert np.isfinite(report.stages["retrieval"] + report.stages["ranking"]).all()
    assert "| torch model |" in report.markdown() and "| popular |" in report.markdown()


def test_model_figures_equal_a_brute_force_count_under_both_protocols(run):
    """Items strictly above the positive, counted in numpy. The metric's positive is TFRS's
    reduce_sum (not this GEMM's entry), so the item's own row may or may not count above it:
    the figure lies between "never" and "always", and only near ties of other items may flip."""
    data, trainer = run.data, run.trainer
    rows = data.split.test
    corpus = trainer.candidate_embeddings(data.candidate_inputs(np.arange(len(data.item_ids))))
    scores = trainer.query_embeddings(data.query_inputs(rows)) @ corpus.T
    truth = data.item_row[rows]
    positive = scores[np.arange(len(rows)), truth][:, None]
    above = scores > positive                       # never the own row
    seen = data.seen_items(data.split.train)
    unseen_above = above.copy()
    for i, row in enumerate(rows):
        dropped = [j for j in seen.get(int(data.user_row[row]), []) if j != truth[i]]
        unseen_above[i, dropped] = False
    near = np.abs(scores - positive) <= 1e-5 * np.maximum(1.0, np.abs(positive))
    slack = (near.sum(1) > 1).mean() + 1e-9        # other items within rounding
    assert slack < 0.2
    for k in KS:
        for suffix, counted in (("", above), ("_exclude_seen", unseen_above)):
            got = run.report.metrics["retrieval"][f"top_k_accuracy{suffix}"][str(k)]
            others = counted.sum(1)
            assert np.mean(others + 1 < k) - slack <= got <= np.mean(others < k) + slack
    assert (unseen_above.sum(1) < above.sum(1)).any()   # the protocols differ on this data


def test_most_popular_is_the_training_counts_with_ties_by_corpus_row(run):
    data = run.data
    popularity = np.bincount(data.item_row[data.split.train], minlength=len(data.item_ids))
    order = np.lexsort((np.arange(len(popularity)), -popularity))   # by count, then row
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    truth_rank = rank[data.item_row[data.split.test]]
    for k in KS:
        assert run.report.table()["popular"][f"top-{k}"] == pytest.approx(
            float(np.mean(truth_rank < k)))


def test_recommend_excludes_what_each_user_saw_in_training(run):
    users = list(run.data.user_ids[:5]) + ["someone new"]
    recs = run.recommend(users, k=7)
    assert recs.shape == (6, 7) and len(set(recs[0])) == 7
    seen = run.data.seen_items(run.data.split.train)
    for i, user in enumerate(users[:5]):
        seen_ids = set(run.data.item_ids[seen.get(i, [])])
        assert not seen_ids & set(recs[i])
    kept = run.recommend(users[:1], k=60, exclude_seen=False)[0]
    assert set(kept) == set(run.data.item_ids)     # nothing dropped without exclude_seen
    with pytest.raises(ValueError, match="between 1 and the corpus size"):
        run.recommend(users, k=61)


def test_save_and_load_run_give_the_same_recommendations(run, tmp_path):
    folder = run.save(tmp_path / "mine")
    again = ts.load_run(folder)
    users = list(run.data.user_ids[:10])
    assert (again.recommend(users, k=5) == run.recommend(users, k=5)).all()
    assert again.report.to_dict() == run.report.to_dict()
    with pytest.raises(ValueError, match="not a schema run folder"):
        ts.load_run(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(Exception, match="refusing to replace"):
        run.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def test_from_frames_equals_reading_the_files(example, run):
    folder = example.parent
    frames = dict(interactions=pd.read_parquet(folder / "events.parquet"),
                  items=pd.read_csv(folder / "catalog.csv"),
                  users=pd.read_json(folder / "customers.jsonl", lines=True))
    data = ts.Dataset.from_frames(schema=run.data.schema, config=config(), **frames)
    rows = np.arange(data.num_interactions)
    for key, value in run.data.examples(rows).items():
        np.testing.assert_array_equal(data.examples(rows)[key], value, err_msg=key)
    assert data.split.train.tolist() == run.data.split.train.tolist()


def every_kind() -> ts.Dataset:
    """A small dataset whose towers use every feature kind, numeric with and without buckets."""
    rng = np.random.default_rng(0)
    n, m, u = 400, 30, 25
    interactions = pd.DataFrame({"user": rng.integers(0, u, n), "item": rng.integers(0, m, n),
                                 "t": rng.integers(10**9, 10**9 + 10**6, n)})
    items = pd.DataFrame({"item": np.arange(m), "title": [f"thing {i % 7} x" for i in range(m)],
                          "tags": ["a|b", "", "c"] * (m // 3), "color": ["red", "blue"] * (m // 2),
                          "price": rng.random(m) * 100, "weight": rng.random(m)})
    users = pd.DataFrame({"user": np.arange(u), "age": rng.integers(18, 80, u).astype(float),
                          "joined": rng.integers(10**9, 2 * 10**9, u)})
    schema = ts.Schema.from_dict({
        "interactions": {"user": "user", "item": "item", "time": "t"},
        "items": {"id": "item", "features": {
            "title": "text", "tags": {"kind": "multi_category", "separator": "|"},
            "color": "category", "price": {"kind": "numeric", "buckets": 4},
            "weight": "numeric"}},
        "users": {"id": "user", "features": {"age": "numeric", "joined": "timestamp"}},
        "towers": {"query": ["user", "time", "age", "joined"],
                   "candidate": ["item", "title", "tags", "color", "price", "weight"]}})
    return ts.Dataset.from_frames(interactions, schema, items=items, users=users,
                                  config=config())


def test_every_feature_kind_trains_and_implicit_data_skips_the_ranker(capsys):
    data = every_kind()
    kinds = {s.name: (s.kind, s.rows) for s in data.query_slots + data.candidate_slots}
    assert kinds["price"] == ("numeric", 5) and kinds["weight"] == ("numeric", 0)
    assert kinds["joined"][0] == "numeric" and kinds["tags"] == ("multi_category", 5)
    run = ts.train(data, config(), backend="torch")
    assert "ranking" not in run.report.stages
    assert "ranking stage is skipped" in run.report.notes[0]
    assert "--ranking-negatives" in capsys.readouterr().err
    assert set(run.report.metrics) == {"retrieval", "eval_sample"}
    assert "ndcg@10" not in run.report.table()["torch model"]
    assert run.recommend([0, 1], k=3).shape == (2, 3)


def test_implicit_data_with_ranking_negatives_trains_the_ranker_on_seeded_draws():
    data = every_kind()
    rows = data.split.train[:50]
    examples = data.ranking_examples(rows, 3, seed=7)
    assert len(examples["label"]) == 200 and examples["label"].sum() == 50
    assert (examples["label"][:50] == 1).all() and (examples["label"][50:] == 0).all()
    again = data.ranking_examples(rows, 3, seed=7)
    for key in examples:                                 # the same draws for both backends
        np.testing.assert_array_equal(examples[key], again[key])
    drawn = examples["item_index"][50:] - 1
    np.testing.assert_array_equal(examples["item"][50:], data.items["item"][drawn])
    np.testing.assert_array_equal(examples["user"][50:], np.repeat(examples["user"][:50], 3))
    run = ts.train(data, config(), backend="torch", ranking_negatives=3)
    assert len(run.report.stages["ranking"]) == 2
    assert "ndcg@10" in run.report.table()["torch model"]
    assert "3 items drawn uniformly" in run.report.notes[0]


def test_options_schema_runs_do_not_offer_are_refused_before_training():
    with pytest.raises(UnsupportedOptionError, match="--mixed-negatives"):
        ts.train(every_kind(), config(mixed_negatives=2))
    # evaluation settings the schema evaluation would otherwise ignore (issue 26's priors)
    for flag, change in (("--recent-beta", {"recent_beta": 0.1}),
                         ("--cold-as-oov", {"cold_as_oov": True}),
                         ("--prior-beta", {"prior_beta": 0.5}),
                         ("--user-dropout", {"user_dropout": 0.2}),
                         ("--release-date", {"release_date": True})):
        with pytest.raises(UnsupportedOptionError, match=flag):
            ts.train(every_kind(), config(**change))
    with pytest.raises(ValueError, match="backend='jax' is not one of"):
        ts.train(every_kind(), config(), backend="jax")


def test_frames_that_break_the_schema_name_the_table_and_the_closest_column(example):
    schema = ts.Schema.from_dict(tomllib.loads(EXAMPLE), folder=example.parent)
    events = pd.read_parquet(example.parent / "events.parquet").rename(
        columns={"customer": "custmer"})
    with pytest.raises(TableError, match="interactions DataFrame: no column 'customer' "
                       r"\(did you mean 'custmer'\?\)"):
        ts.Dataset.from_frames(events, schema, items=pd.read_csv(example.parent / "catalog.csv"),
                               users=pd.read_json(example.parent / "customers.jsonl",
                                                  lines=True))
    with pytest.raises(TableError, match=r"\[items\] table needs its DataFrame"):
        ts.Dataset.from_frames(pd.read_parquet(example.parent / "events.parquet"), schema)


def test_a_10_mb_text_keeps_its_first_tokens_and_says_so(caplog):
    items = pd.DataFrame({"i": ["x", "y"], "blurb": ["word " * 2_000_000, "short text"]})
    interactions = pd.DataFrame({"u": ["a", "b", "a"], "i": ["x", "y", "y"]})
    schema = ts.Schema.from_dict({"interactions": {"user": "u", "item": "i"},
                                  "items": {"id": "i", "features": {"blurb": "text"}},
                                  "towers": {"query": ["user"], "candidate": ["item", "blurb"]}})
    data = ts.Dataset.from_frames(interactions, schema, items=items, config=config())
    assert data.items["blurb"].shape == (2, 64) and (data.items["blurb"][0] > 1).all()
    assert "1 text(s) have more than 64 tokens; the first 64 of each are kept" in caplog.text


def test_a_temporal_split_needs_the_time_column():
    interactions = pd.DataFrame({"u": ["a", "b"], "i": ["x", "y"]})
    schema = ts.Schema.from_dict({"interactions": {"user": "u", "item": "i"},
                                  "towers": {"query": ["user"], "candidate": ["item"]}})
    with pytest.raises(ValueError, match="split='temporal' needs the interactions' time"):
        ts.Dataset.from_frames(interactions, schema, config=config(split="temporal"))


def test_cli_runs_a_schema_and_recommends_from_its_folder(example, tmp_path, capsys):
    out, board = tmp_path / "run", tmp_path / "tb"
    assert main(["run", "--schema", str(example), "--out", str(out), "--retrieval-epochs",
                 "1", "--ranking-epochs", "1", "--batch-size", "256", "--quiet",
                 "--top-ks", "1,10,100", "--tensorboard", str(board)]) == 0
    printed = capsys.readouterr().out
    assert "| torch model |" in printed and "| popular |" in printed
    assert "top-10 |" in printed and "top-100" not in printed     # k above the 60 items
    assert len(list((board / "torch").glob("events.out.tfevents.*"))) == 1
    assert main(["recommend", "--run", str(out), "--user", "c00001", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("user c00001 (torch): top 3") and len(lines) == 4
    assert main(["run", "--schema", str(example), "--out", str(tmp_path / "x"),
                 "--mixed-negatives", "2", "--quiet"]) == 2
    assert "not offered for --schema runs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch):
    """The README's Python quick start, executed (so it cannot rot); its schema file is the
    one the README's CLI line names."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.splitlines()) <= 15
    cli = section.split("```bash\n", 1)[1].split("```", 1)[0].split()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ts.Config, "replace", _quiet(ts.Config.replace))
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "mine-py" / "weights.npz").is_file()
    assert (tmp_path / cli[cli.index("--schema") + 1]).is_file()
    again = ts.load_run(tmp_path / "runs" / "mine-py")
    assert again.recommend(["c00001"], k=5).shape == (1, 5)


def _quiet(replace):
    def quiet(self, **changes):
        return replace(self, quiet=True, **changes)
    return quiet


def test_the_example_schema_runs_end_to_end_on_tfrs(example, tmp_path):
    c = config().replace(retrieval_epochs=1, ranking_epochs=1)
    run = ts.train(ts.load(example, c), c, backend="tfrs")
    table = run.report.table()
    assert "tfrs model" in table and 0 <= table["tfrs model"]["top-10"] <= 1
    assert "ndcg@10 excl. seen" in table["tfrs model"]
    users = list(run.data.user_ids[:4])
    again = ts.load_run(run.save(tmp_path / "tfrs-run"))
    assert again.trainer.name == "tfrs"
    assert (again.recommend(users, k=5) == run.recommend(users, k=5)).all()
