"""Group 2: embeddings and ranking probabilities within 1e-5 on shared weights."""
from . import checks


def test_forward_initial_weights(dataset, config, eval_rows):
    pair = checks.make_pair(dataset, config)
    checks.check_forward(pair, dataset, eval_rows)


def test_forward_trained_weights(trained_pair, dataset, eval_rows):
    checks.check_forward(trained_pair, dataset, eval_rows)
