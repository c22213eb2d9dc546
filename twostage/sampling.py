"""Candidate sampling probabilities for the logQ correction of the in-batch softmax (no torch/tf).

With in-batch negatives a movie is drawn as a negative as often as it occurs in the training data,
so popular movies are over-penalised. ``tfrs.tasks.Retrieval(candidate_sampling_probability=p)``
corrects each logit column j by ``-log(clip(p_j, 1e-6, 1))``
(``tensorflow_recommenders/layers/loss.py`` SamplingProbablityCorrection). Both backends feed the
same per-example ``p`` computed here, aligned with the rating rows of a :class:`Dataset`.
"""
from __future__ import annotations

import numpy as np

from .dataset import Dataset

# The batch column both backends read the per-example probabilities from.
SAMPLING_PROBABILITY = "candidate_sampling_probability"


def candidate_sampling_probability(dataset: Dataset) -> np.ndarray:
    """[N] float32: for every rating row, the frequency of its movie title in the training split.

    ``p[i] = count_train(title[i]) / len(train)``; titles are compared by title (the candidate
    tower's identity), so duplicate u.item entries of one title share one count. Test rows get
    the training frequency of their title (0 if it never occurs in training; TFRS clips to 1e-6).
    """
    titles = dataset.features["title_index"]
    train = dataset.split.train
    counts = np.bincount(titles[train], minlength=int(titles.max(initial=0)) + 1)
    return (counts[titles] / np.float64(len(train))).astype(np.float32)
