"""When each backend trains on what: the shared batch plan and the validation schedule.

Both backends (and the parity suite) take their training batches from :class:`BatchPlan`, so the
torch and TFRS paths can be fed exactly the same examples in exactly the same order; the
permutation of an epoch depends only on (seed, epoch), so any epoch is reproducible on its own
(``twostage.data.split.epoch_batches``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from twostage.data.split import epoch_batches
from twostage.evaluation import sample_rows


@dataclass(frozen=True)
class BatchPlan:
    """The shared batch order over a training split.

    ``train`` [N] int64: rating rows of the training split; ``batch_size``; ``seed``.
    Positions are indices into ``train``; rows are rating rows (``train[positions]``).
    """

    train: np.ndarray
    batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_size)

    def positions(self, epoch: int) -> list[np.ndarray]:
        """Batches of positions into ``train`` for ``epoch`` (0-based, absolute)."""
        return epoch_batches(len(self.train), self.batch_size, seed=self.seed, epoch=epoch)

    def rows(self, first_epoch: int = 0, epochs: int = 1) -> Iterator[np.ndarray]:
        """Rating rows of every batch of epochs ``first_epoch .. first_epoch + epochs - 1``."""
        for epoch in range(first_epoch, first_epoch + epochs):
            for positions in self.positions(epoch):
                yield self.train[positions]

    def first_steps(self, steps: int) -> list[np.ndarray]:
        """Rating rows of the first ``steps`` batches (running into later epochs as needed)."""
        out: list[np.ndarray] = []
        for batch in self.rows(0, -(-steps // self.steps_per_epoch)):
            out.append(batch)
            if len(out) == steps:
                break
        return out


def validation_epochs(epochs: int, every: int) -> list[int]:
    """1-based epochs to validate after: every ``every`` epochs, and the last."""
    return sorted(set(range(every, epochs + 1, every)) | ({epochs} if epochs else set()))


def should_validate(epoch: int, epochs: int, every: int) -> bool:
    """Whether to validate after 1-based ``epoch`` of ``epochs`` (see validation_epochs)."""
    return epoch % every == 0 or epoch == epochs


def validation_rows(test: np.ndarray, config) -> np.ndarray:
    """The test rows both backends validate on during fit, and every evaluation metric is
    computed on (``twostage.pipeline.evaluation_rows``): all of ``test``, or the seeded sample
    of ``config.eval.eval_queries`` in test-split order. At 25M ratings a validation over all
    5M test rows against 62,000 titles would cost minutes and gigabytes each time."""
    return sample_rows(test, config.eval.eval_queries, config.seed)
