"""Group 4: same initial weights and batch order, 20 optimizer steps of each stage."""
import pytest

from . import checks
from .tolerances import TRAJECTORY_STEPS


@pytest.mark.parametrize("stage", checks.STAGES)
def test_trajectory(dataset, config, stage):
    pair = checks.make_pair(dataset, config)
    batches = [checks.raw_batch(dataset, rows, config)
               for rows in checks.training_batches(dataset, config, TRAJECTORY_STEPS)]
    checks.check_trajectory(pair, stage, batches)
