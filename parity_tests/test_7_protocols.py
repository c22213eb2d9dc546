"""Group 7: the exclude_seen protocol. The backends agree on it (top-k accuracy from each one's
embeddings, the torch pipeline's exclusion against TFRS's own ``query_with_exclusions``, the
two-stage metrics after exclusion; the tolerances of groups 5 and 6), and the chunked exclusion
equals a dense brute-force reference built from the raw strings. Each check is also shown to
fail on a broken exclusion."""
from __future__ import annotations

import numpy as np
import pytest

from twostage import evaluation

from . import checks
from .compare import ParityError


def test_exclude_seen_agrees_between_backends(trained_pair, dataset, eval_rows):
    checks.check_exclude_seen(trained_pair, dataset, eval_rows)


def test_exclusion_equals_brute_force(trained_pair, dataset, eval_rows):
    checks.check_exclusion_brute_force(trained_pair.torch, dataset, eval_rows)
    checks.check_exclusion_brute_force(trained_pair.tfrs, dataset, eval_rows[:1024])


def leaky_exclusions(dataset, rows):
    """Break: the seen titles taken from train AND test (the test split leaks into the
    ranking: a user's other test titles are removed too)."""
    every = np.arange(len(dataset.user_id))
    seen = evaluation.SeenTitles(dataset.features["user_index"][every],
                                 dataset.features["title_index"][every],
                                 dataset.corpus_features["title_index"])
    return seen.for_queries(dataset.features["user_index"][rows],
                            dataset.features["title_index"][rows])


def one_user_off(dataset, rows):
    """Break: every query excludes the training titles of ANOTHER user."""
    from twostage.pipeline import seen_titles
    users = dataset.features["user_index"][rows]
    return seen_titles(dataset).for_queries(users + 1, dataset.features["title_index"][rows])


@pytest.mark.parametrize("broken", [leaky_exclusions, one_user_off])
def test_brute_force_catches_a_wrong_exclusion(trained_pair, dataset, eval_rows, broken):
    with pytest.raises(ParityError, match="exclude_seen"):
        checks.check_exclusion_brute_force(trained_pair.torch, dataset, eval_rows[:512],
                                           exclusions=broken)


def test_agreement_catches_a_backend_that_does_not_exclude(trained_pair, dataset, eval_rows):
    """Break: TFRS queried with nothing to exclude while the torch side excludes."""
    real = checks.tfrs_query_with_exclusions

    def ignores(backend, dataset_, rows, excluded, k, batch=128):
        return real(backend, dataset_, rows, [np.zeros(0, np.int64)] * len(rows), k, batch)
    try:
        checks.tfrs_query_with_exclusions = ignores
        with pytest.raises(ParityError, match="exclude_seen index"):
            checks.check_exclude_seen(trained_pair, dataset, eval_rows[:512])
    finally:
        checks.tfrs_query_with_exclusions = real
