"""The recipes beyond the seed that need data of their own (issue 15), framework-free (numpy).

Both backends read what is computed here, so they see the same numbers:

- Mixed negatives (``config.task.mixed_negatives`` = N > 0; Yang et al. 2020, "Mixed Negative
  Sampling for Learning Two-tower Neural Networks in Recommendations"): per training step, N
  titles drawn uniformly WITH replacement from the title vocabulary (the unique titles of the
  corpus, ids 1..V; :func:`sample_negatives`, seeded by (seed, epoch, step), so any step is
  reproducible and both backends get the same ids), appended as extra candidate columns shared
  by every row of the batch. Their logQ correction uses the per-draw probability 1/V
  (:func:`negative_sampling_probability`), the convention of TFRS's
  ``candidate_sampling_probability`` (the in-batch columns carry the per-draw training frequency
  of their title with ``--logq``, else 1: no correction, as the seed). A sampled title equal to
  a row's positive title is masked for that row (score_mask: it is the positive, not a negative),
  whether or not ``remove_accidental_hits`` is on for the in-batch columns.

Raw batch keys (what the parity suite and ``train_steps`` pass; the torch backend encodes them):
``negative_titles`` [N] str and ``negative_sampling_probability`` [N] float32.
"""
from __future__ import annotations

import numpy as np

from .backend import UnsupportedOptionError
from .config import Config

NEGATIVE_TITLES = "negative_titles"
NEGATIVE_PROBABILITY = "negative_sampling_probability"
# Mixes the step into the seed sequence so negatives never share a stream with the batch order.
_NEGATIVES_STREAM = 0x4E4547


def refuse_in_parallel(config: Config) -> None:
    """UnsupportedOptionError for the recipes that several processes / replicas cannot run
    (``config.distributed.nproc`` > 1): mixed negatives (a batch's sampled titles are not split
    over the processes), and on torch's global negatives a learned temperature (its gathered
    loss does not scale the queries)."""
    problems = []
    if config.task.mixed_negatives:
        problems.append(f"mixed_negatives={config.task.mixed_negatives} (the sampled titles "
                        "are not split over processes)")
    if config.task.learn_temperature and config.distributed.negatives == "global":
        problems.append("learn_temperature with negatives='global' (the gathered loss does not "
                        "apply the learned temperature)")
    if problems:
        raise UnsupportedOptionError(
            f"with nproc={config.distributed.nproc} this is not supported: "
            f"{'; '.join(problems)}; run with --nproc 1 or drop the option")


# --- mixed negatives ------------------------------------------------------------------------------
def sample_negatives(num_titles: int, n: int, seed: int, epoch: int, step: int) -> np.ndarray:
    """[n] int64 title ids in 1..num_titles (the title vocabulary; 0 is the OOV row), uniform
    with replacement, a function of (seed, epoch, step) alone (0-based absolute epoch and step)."""
    if num_titles < 1:
        raise ValueError("cannot sample negatives from an empty title vocabulary")
    if n < 1:
        raise ValueError(f"mixed_negatives={n} must be >= 1 to sample")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _NEGATIVES_STREAM, epoch, step]))
    return rng.integers(1, num_titles + 1, size=n, dtype=np.int64)


def epoch_negatives(num_titles: int, n: int, seed: int, epoch: int, steps: int) -> np.ndarray:
    """[steps, n] int64: :func:`sample_negatives` of every step of ``epoch``."""
    return np.stack([sample_negatives(num_titles, n, seed, epoch, s) for s in range(steps)]
                    ) if steps else np.zeros((0, n), np.int64)


def negative_sampling_probability(num_titles: int, n: int) -> np.ndarray:
    """[n] float32: the per-draw probability 1 / num_titles of every sampled title."""
    return np.full(n, 1.0 / num_titles, dtype=np.float32)


def raw_negatives(title_vocab, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The raw batch columns of sampled title ids [n] (1-based into ``title_vocab``)."""
    vocab = np.asarray(title_vocab, dtype=object)
    return {NEGATIVE_TITLES: vocab[np.asarray(ids) - 1],
            NEGATIVE_PROBABILITY: negative_sampling_probability(len(vocab), len(ids))}
