"""Group 3: losses (default and every retrieval option) within 1e-5, gradients within 1e-4."""
import numpy as np
import pytest

from . import checks

RETRIEVAL_OPTIONS = {
    "default": {},
    "temperature": {"temperature": 0.2},
    "logq": {"use_sampling_probability": True},
    "accidental_hits": {"remove_accidental_hits": True},
    "hard_negatives": {"num_hard_negatives": 10},
    "all_options": {"temperature": 0.5, "use_sampling_probability": True,
                    "remove_accidental_hits": True, "num_hard_negatives": 20},
}


def _batch(dataset, config):
    rows = checks.training_batches(dataset, config, 1)[0]
    return checks.raw_batch(dataset, rows, config)


@pytest.mark.parametrize("option", sorted(RETRIEVAL_OPTIONS))
def test_retrieval_loss_and_gradients(dataset, config, option):
    cfg = config.replace(**RETRIEVAL_OPTIONS[option])
    pair = checks.make_pair(dataset, cfg)
    checks.check_loss_and_gradients(pair, "retrieval", _batch(dataset, cfg))


def test_retrieval_sample_weights(dataset, config):
    pair = checks.make_pair(dataset, config)
    batch = _batch(dataset, config)
    batch["sample_weight"] = np.random.default_rng(0).uniform(0.1, 2.0, len(batch["user_id"]))
    checks.check_loss_and_gradients(pair, "retrieval", batch)


def test_ranking_loss_and_gradients(dataset, config):
    pair = checks.make_pair(dataset, config)
    checks.check_loss_and_gradients(pair, "ranking", _batch(dataset, config))


def test_losses_on_trained_weights(trained_pair, dataset, config):
    batch = _batch(dataset, config)
    for stage in checks.STAGES:
        checks.check_loss_and_gradients(trained_pair, stage, batch)
