"""Each deliberately broken semantic must make the parity checks fail.

If one of these tests fails, the corresponding parity check has lost its teeth: it would accept
an implementation that does not compute what TFRS/Keras compute.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twostage.data.features import FeatureSpec
from twostage import evaluation

from . import checks
from .compare import ParityError
from .tolerances import TRAJECTORY_LEARNING_RATE, TRAJECTORY_STEPS


class Float64BucketSpec(FeatureSpec):
    """Break: bucket timestamps in float64 (Keras' Bucketize compares in float32)."""

    def timestamp_bucket(self, timestamps):
        return np.searchsorted(np.asarray(self.ts_boundaries), np.asarray(timestamps),
                               side="right").astype(np.int64)


class MeanReduction(torch.nn.Module):
    """Break: the retrieval loss averaged over the batch (TFRS sums it)."""

    def __init__(self, task):
        super().__init__()
        self.task = task
        self.remove_accidental_hits = task.remove_accidental_hits

    def forward(self, query, candidate, **kwargs):
        return self.task(query, candidate, **kwargs) / query.shape[0]


def ties_against_positive(query, truth, corpus, ks):
    """Break: ties count against the true candidate (TFRS' in_top_k counts them for it)."""
    pos = evaluation.positive_scores(query, truth)
    higher_or_equal = ((query @ corpus.T) >= pos[:, None]).sum(axis=1)
    return {k: float((higher_or_equal < k).mean()) for k in ks}


def test_float64_bucket_rule_fails_feature_parity(dataset):
    broken = Float64BucketSpec(**{f: getattr(dataset.spec, f)
                                  for f in FeatureSpec.__dataclass_fields__})
    differs = broken.timestamp_bucket(dataset.timestamp) != dataset.spec.timestamp_bucket(
        dataset.timestamp)
    assert differs.any(), "precondition: some timestamp must sit where float32 rounding decides"
    with pytest.raises(ParityError, match="ts_bucket"):
        checks.check_features(dataset, spec=broken)


def test_mean_reduction_fails_loss_parity(dataset, config):
    pair = checks.make_pair(dataset, config)
    pair.torch.retrieval_task = MeanReduction(pair.torch.retrieval_task)
    batch = checks.raw_batch(dataset, checks.training_batches(dataset, config, 1)[0], config)
    with pytest.raises(ParityError, match="retrieval loss"):
        checks.check_loss_and_gradients(pair, "retrieval", batch)


@pytest.mark.parametrize("stage", checks.STAGES)
def test_torch_default_adagrad_fails_trajectory_parity(dataset, config, stage):
    cfg = config.replace(learning_rate=TRAJECTORY_LEARNING_RATE)
    torch_defaults = cfg.replace(initial_accumulator_value=0.0, adagrad_epsilon=1e-10)
    pair = checks.make_pair(dataset, cfg, torch_config=torch_defaults)
    batches = [checks.raw_batch(dataset, rows, cfg)
               for rows in checks.training_batches(dataset, cfg, TRAJECTORY_STEPS)]
    with pytest.raises(ParityError, match="per-step losses|after"):
        checks.check_trajectory(pair, stage, batches)


def test_ties_against_positive_fail_metric_parity(trained_pair, dataset, eval_rows, config):
    u, ts = dataset.user_id[eval_rows], dataset.timestamp[eval_rows]
    t = trained_pair.torch
    with pytest.raises(ParityError, match="top-"):
        checks.check_metric_semantics(t.query_embeddings(u, ts),
                                      t.candidate_embeddings(dataset.movie_title[eval_rows]),
                                      t.candidate_embeddings(dataset.corpus_titles),
                                      config.eval.top_ks, metric=ties_against_positive)


def test_unmasked_token_mean_fails_forward_parity(dataset, config, eval_rows, monkeypatch):
    """Break: average the title tokens over the padding too (Keras masks padding out)."""
    import torch_impl.models as tm

    def unmasked(tokens, weight, empty="zero"):
        return weight[tokens].mean(dim=1)

    monkeypatch.setattr(tm, "bag_mean", unmasked)
    pair = checks.make_pair(dataset, config)
    with pytest.raises(ParityError, match="candidate embeddings|ranking"):
        checks.check_forward(pair, dataset, eval_rows)
