"""Group 4: same initial weights and batch order, 20 optimizer steps of each stage: per-step
losses and final weights within 1e-4 (see tolerances.TRAJECTORY_LEARNING_RATE for the rate)."""
import pytest

from . import checks
from .tolerances import SEED_LR_STEPS, TRAJECTORY_LEARNING_RATE, TRAJECTORY_STEPS


def _batches(dataset, config, steps):
    return [checks.raw_batch(dataset, rows, config)
            for rows in checks.training_batches(dataset, config, steps)]


@pytest.mark.parametrize("stage", checks.STAGES)
def test_trajectory(dataset, config, stage):
    cfg = config.replace(learning_rate=TRAJECTORY_LEARNING_RATE)
    pair = checks.make_pair(dataset, cfg)
    checks.check_trajectory(pair, stage, _batches(dataset, cfg, TRAJECTORY_STEPS))


@pytest.mark.parametrize("stage", checks.STAGES)
def test_trajectory_at_seed_learning_rate(dataset, config, stage):
    assert config.train.learning_rate == 0.1
    pair = checks.make_pair(dataset, config)
    batches = _batches(dataset, config, SEED_LR_STEPS)
    # Only the steps TF itself reproduces under float32-sized perturbations (on ml-100k all 10;
    # the small synthetic set turns chaotic sooner), and losses only: by step 10 single weights
    # (a bias element near a ReLU kink) already differ by ~2e-4 relative at this rate.
    steps = checks.stable_steps(pair.tfrs, stage, batches)
    assert steps >= 3, f"TF's own trajectory is chaotic from step {steps}: nothing to compare"
    checks.check_trajectory(pair, stage, batches[:steps], weights=False)
