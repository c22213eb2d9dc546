"""The one configuration: defaults are the seed's protocol and Keras' defaults; bad values fail."""
import pytest

from twostage.config import Config
from twostage.report import table


def test_defaults_are_the_seed_protocol_and_keras_defaults():
    c = Config()
    assert (c.seed, c.train_fraction, c.batch_size, c.eval_batch_size) == (42, 0.8, 2048, 4096)
    assert (c.retrieval_epochs, c.ranking_epochs, c.validation_freq) == (100, 100, 10)
    assert c.layer_sizes == (64, 32) and c.ranking_layer_sizes == (256, 64)
    assert (c.learning_rate, c.initial_accumulator_value, c.adagrad_epsilon) == (0.1, 0.1, 1e-7)
    assert (c.num_buckets, c.max_tokens, c.embedding_dim) == (1000, 10_000, 32)
    assert c.top_ks == (1, 5, 10, 50, 100) and (c.num_candidates, c.ndcg_k) == (10, 10)
    assert c.temperature is None and c.num_hard_negatives is None
    assert not c.remove_accidental_hits and not c.use_sampling_probability


def test_round_trip_through_dict():
    c = Config(layer_sizes=(128, 64, 32), temperature=0.5)
    assert Config.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 0}, "batch_size=0"),
    ({"layer_sizes": ()}, "layer_sizes"),
    ({"temperature": 0.0}, "temperature"),
    ({"num_hard_negatives": 0}, "num_hard_negatives"),
    ({"index": "annoy"}, "flat, ivf, hnsw"),
    ({"ndcg_k": 20}, "exceeds num_candidates"),
    ({"retrieval_epochs": -1}, "retrieval_epochs"),
])
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        Config(**changes)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown configuration keys"):
        Config.from_dict({"batchsize": 12})


def test_table_shows_both_backends_difference_and_seed():
    reports = {"torch": {"retrieval": {"top_k_accuracy": {"100": 0.30}}},
               "tfrs": {"retrieval": {"top_k_accuracy": {"100": 0.28}}}}
    text = table(reports)
    assert "| retrieval.top_k_accuracy.100 | 0.30000 | 0.28000 | +0.02000 | 0.28000 |" in text
