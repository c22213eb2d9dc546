"""Group 1: every preprocessing output identical (integers exactly, normalized ts to 1e-6)."""
from . import checks


def test_features_identical(dataset, dataset_and_kind):
    checks.check_features(dataset)


def test_features_equal_the_seeds_own_adapted_layers(dataset):
    checks.check_features_seed_way(dataset)
