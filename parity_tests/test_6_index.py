"""Group 6: FAISS exact (IndexFlatIP) and TFRS BruteForce return the same top-100 (ties aside)."""
from . import checks


def test_index_top_100(trained_pair, dataset, eval_rows):
    checks.check_index(trained_pair, dataset, eval_rows, k=100)
