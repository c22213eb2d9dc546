"""The one configuration: defaults are the seed's protocol and Keras' defaults; bad values fail."""
import argparse
import dataclasses
import inspect

import pytest

from twostage import config as config_module
from twostage.config import SECTIONS, Config, flag_of
from twostage.report import table


def test_defaults_are_the_seed_protocol_and_keras_defaults():
    c = Config()
    t, e, m, d, task = c.train, c.eval, c.model, c.data, c.task
    assert (c.seed, d.train_fraction, t.batch_size, e.eval_batch_size) == (42, 0.8, 2048, 4096)
    assert (t.retrieval_epochs, t.ranking_epochs, t.validation_freq) == (100, 100, 10)
    assert m.layer_sizes == (64, 32) and m.ranking_layer_sizes == (256, 64)
    assert (t.learning_rate, t.initial_accumulator_value, t.adagrad_epsilon) == (0.1, 0.1, 1e-7)
    assert (d.num_buckets, d.max_tokens, m.embedding_dim) == (1000, 10_000, 32)
    assert e.top_ks == (1, 5, 10, 50, 100) and (e.num_candidates, e.ndcg_k) == (10, 10)
    assert task.temperature is None and task.num_hard_negatives is None
    assert not task.remove_accidental_hits and not task.use_sampling_probability


def test_round_trip_through_dict():
    c = Config.of(layer_sizes=(128, 64, 32), temperature=0.5)
    assert Config.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 0}, "batch_size=0"),
    ({"layer_sizes": ()}, "layer_sizes"),
    ({"temperature": 0.0}, "temperature"),
    ({"num_hard_negatives": 0}, "num_hard_negatives"),
    ({"index": "annoy"}, "flat, ivf, hnsw"),
    ({"ndcg_k": 20}, "exceeds num_candidates"),
    ({"retrieval_epochs": -1}, "retrieval_epochs"),
    ({"seed": 2 ** 64 + 1}, "seed=18446744073709551617 must be"),  # issue 21: failed late
    ({"seed": 2 ** 32 - 1}, r"seed=4294967295 must be from 0 to 4294967294"),
])
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        Config.of(**changes)


@pytest.mark.parametrize("section, changes, message", [
    ("DataConfig", {"num_buckets": 0}, "num_buckets=0 must be >= 1"),
    ("DataConfig", {"train_fraction": 1.0}, "train_fraction=1.0 must be strictly between"),
    ("ModelConfig", {"embedding_dim": 0}, "embedding_dim=0 must be >= 1"),
    ("TaskConfig", {"mixed_negatives": -1}, "mixed_negatives=-1 must be >= 0"),
    ("TrainConfig", {"learning_rate": float("inf")}, "learning_rate=inf is not a finite number"),
    ("TrainConfig", {"device": "tpu"}, "device='tpu' must be cpu, cuda or cuda:N"),
    ("TrainConfig", {"user_dropout": 1.0}, r"user_dropout=1.0 must be in \[0, 1\)"),
    ("EvalConfig", {"ndcg_k": 11}, "ndcg_k=11 exceeds num_candidates=10"),
    ("IndexConfig", {"kind": "annoy"}, r"unknown index kind 'annoy' \(config index.kind"),
    ("DistributedConfig", {"cross_process_negatives": "all"},
     "cross_process_negatives='all' must be one of"),
])
def test_each_section_validates_itself(section, changes, message):
    """Issue 23 item 8: a section built alone (as builders and tests do) checks its own fields.
    Break: drop a section's ``__post_init__`` and its case builds silently."""
    with pytest.raises(ValueError, match=f"invalid configuration: {message}"):
        getattr(config_module, section)(**changes)


def test_cross_section_checks_stay_with_the_whole_config():
    """The batch split over processes needs two sections: each alone is valid, together not.
    Break: drop ``_config_problems``' check and the odd split builds."""
    train = config_module.TrainConfig(batch_size=3)
    distributed = config_module.DistributedConfig(nproc=2)
    with pytest.raises(ValueError, match="batch_size=3 does not divide into nproc=2"):
        Config(train=train, distributed=distributed)


def test_a_stored_bad_section_names_its_source():
    with pytest.raises(ValueError, match=r"run/config.json: train: invalid configuration: "
                                         r"batch_size=0 must be >= 1"):
        Config.from_dict({"version": 2, "train": {"batch_size": 0}}, source="run/config.json")


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown configuration keys"):
        Config.from_dict({"batchsize": 12})


def test_table_shows_both_backends_difference_and_seed():
    reports = {"torch": {"retrieval": {"top_k_accuracy": {"100": 0.30}}},
               "tfrs": {"retrieval": {"top_k_accuracy": {"100": 0.28}}}}
    text = table(reports)
    assert "| retrieval.top_k_accuracy.100 | 0.30000 | 0.28000 | +0.02000 | 0.28000 |" in text


def test_preset_tutorial_is_the_default_and_best_is_its_table_entry():
    from twostage.config import PRESETS, preset
    assert preset("tutorial") == Config()
    best = preset("best")
    assert best == Config.of(**PRESETS["best"]) and best != Config()
    with pytest.raises(ValueError, match="unknown preset 'fast'; known: tutorial, best, live"):
        preset("fast")


def test_preset_live_is_best_with_the_live_service_settings():
    """--preset live: best plus live histories of 200 titles, dropout that keeps histories,
    cold users through the OOV row, recent popularity and release dates (fails if a setting
    went missing)."""
    from twostage.config import preset
    live, best = preset("live"), preset("best")
    assert live.replace(history_length=50, live_history=False, user_dropout=0.0,
                        dropout_keeps_history=False, cold_as_oov=False, recent_beta=0.0,
                        recent_beta_cold=None, recent_window_days=90.0,
                        release_date=False) == best
    assert (live.eval.recent_beta, live.eval.recent_beta_cold, live.eval.recent_window_days) == \
        (0.1, 0.1, 365.0)


def test_renamed_preset_and_flag_keep_working_with_one_deprecation_line(capsys):
    """Issue 23 item 7: "seed" named both the article and the random seed; the preset is now
    "tutorial" and ``--negatives`` is ``--cross-process-negatives``. The old spellings give the
    same config and say what replaces them. Break: drop ``RENAMED_PRESETS`` or ``old_flags``
    and the old spelling is rejected; drop the print and the line is missing."""
    from twostage.cli import _parser, config_from_args
    from twostage.config import preset
    with pytest.warns(FutureWarning, match="preset 'seed' is now called 'tutorial'"):
        assert preset("seed") == Config()
    old = config_from_args(_parser().parse_args(["run", "--preset", "seed", "--negatives",
                                                 "global"]))
    new = config_from_args(_parser().parse_args(["run", "--cross-process-negatives", "global"]))
    assert old == new and new.distributed.cross_process_negatives == "global"
    err = capsys.readouterr().err
    assert "twostage: --negatives is deprecated; use --cross-process-negatives" in err
    assert "twostage: --preset seed is deprecated; use --preset tutorial" in err
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert " --negatives" not in commands.choices["run"].format_help()  # hidden, not offered


def test_cli_preset_flags_given_beside_it_win():
    from twostage.cli import _parser, config_from_args
    args = _parser().parse_args(["run", "--preset", "best", "--retrieval-epochs", "5"])
    config = config_from_args(args)
    assert config.train.retrieval_epochs == 5 and config.task.use_sampling_probability
    assert config_from_args(_parser().parse_args(["run"])) == Config()


def test_cli_optional_bool_has_both_flags_and_defaults_to_none():
    """cuda_graphs is decided at run time when unset (None: on for one-process CUDA runs), so
    its flag comes in two forms: --cuda-graphs and --no-cuda-graphs."""
    from twostage.cli import _parser, config_from_args
    parse = lambda *flags: config_from_args(_parser().parse_args(["run", *flags]))  # noqa: E731
    assert parse().train.cuda_graphs is None
    assert parse("--cuda-graphs").train.cuda_graphs is True
    assert parse("--no-cuda-graphs").train.cuda_graphs is False
    assert parse("--normalize").task.normalize is True  # a plain bool keeps its one flag
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--no-normalize"])


def test_every_flag_is_its_field_name():
    """Issue 23 item 7: a flag names the field it sets (``--`` + the section's FLAG_PREFIX +
    the field, ``--no-`` for a True-by-default bool), so no flag hides another word. Break: give
    a field a spelling of its own in ``option`` or ``flag_of`` and the offered flags differ."""
    from twostage.cli import _parser
    from twostage.config import IndexConfig, option
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    offered = {s for a in commands.choices["run"]._actions for s in a.option_strings
               if a.help != argparse.SUPPRESS}
    expected = set()
    for cls in SECTIONS.values():
        prefix = getattr(cls, "FLAG_PREFIX", "")
        for f in dataclasses.fields(cls):
            if f.metadata["cli"]:
                name = prefix + f.name.replace("_", "-")
                expected.add(f"--no-{name}" if f.metadata["invert"] else f"--{name}")
                assert flag_of(cls, f) in offered
    assert {"--use-sampling-probability", "--normalize", "--no-shared-batches", "--index-kind",
            "--index-nprobe", "--no-index-mips", "--cross-process-negatives"} <= expected
    assert "flag" not in inspect.signature(option).parameters
    assert IndexConfig.FLAG_PREFIX == "index-"
    run_flags = {"-h", "--help", "--backend", "--out", "--force", "--preset", "--seed",
                 "--schema", "--drop-unknown-items", "--ranking-negatives"}
    assert offered - run_flags == expected | {"--no-cuda-graphs"}  # cuda_graphs: --x / --no-x


OLD_FLAGS = [(["--logq"], ["--use-sampling-probability"]), (["--cosine"], ["--normalize"]),
             (["--framework-shuffle"], ["--no-shared-batches"]),
             (["--index", "ivf"], ["--index-kind", "ivf"]),
             (["--ivf-nlist", "7"], ["--index-nlist", "7"]),
             (["--ivf-nprobe", "3"], ["--index-nprobe", "3"]),
             (["--hnsw-m", "8"], ["--index-hnsw-m", "8"]),
             (["--hnsw-ef-search", "9"], ["--index-ef-search", "9"]),
             (["--hnsw-ef-construction", "11"], ["--index-ef-construction", "11"]),
             (["--hnsw-raw-ip"], ["--no-index-mips"]),
             (["--pq-bytes", "4"], ["--index-pq-bytes", "4"]),
             (["--negatives", "global"], ["--cross-process-negatives", "global"])]


@pytest.mark.parametrize("old,new", OLD_FLAGS, ids=[o[0] for o, _ in OLD_FLAGS])
def test_old_flag_spellings_give_the_same_config_with_a_deprecation_line(old, new, capsys):
    """Every renamed flag keeps working for one line on stderr naming its replacement. Break:
    drop an ``old_flags`` entry (argparse rejects it) or the bool ``const`` (the value flips)."""
    from twostage.cli import _parser, config_from_args
    parse = lambda flags: config_from_args(_parser().parse_args(["run", *flags]))  # noqa: E731
    assert parse(old) == parse(new) != Config()
    assert f"twostage: {old[0]} is deprecated; use {new[0]}" in capsys.readouterr().err


def test_a_stored_configuration_with_the_old_field_name_still_loads():
    """``distributed.negatives`` is now ``cross_process_negatives``: run folders written before
    keep loading, and the flat name stays an alias. Break: drop ``_FIELD_RENAMES``."""
    stored = Config().to_dict()
    stored["distributed"] = {"nproc": 1, "negatives": "global", "timeout_s": 300}
    assert Config.from_dict(stored).distributed.cross_process_negatives == "global"
    assert Config.of(cross_process_negatives="global") == Config.from_dict(stored)


def test_builders_take_the_section_they_use():
    """Issue 23 item 8: a builder takes the section whose values it uses (``config.train`` for
    the optimizer, ``config.task`` for a task, ``config.index`` for an index); a whole Config
    gives the same object and anything else is a TypeError naming the builder. Break: make
    ``section_of`` return ``config`` unchanged and the Config case reads a missing attribute."""
    from twostage.config import IndexConfig, TaskConfig, TrainConfig, section_of
    config = Config.of(learning_rate=0.3, temperature=0.5, kind="ivf")
    assert section_of(config, TrainConfig, "b") is config.train
    assert section_of(config.train, TrainConfig, "b") is config.train
    assert section_of(config, TaskConfig, "b").temperature == 0.5
    assert section_of(config, IndexConfig, "b").kind == "ivf"
    with pytest.raises(TypeError, match=r"make_optimizer takes a twostage.config.Config \(or "
                                        r"its TrainConfig\), got TaskConfig"):
        section_of(config.task, TrainConfig, "make_optimizer")
