"""The serving index of the torch backend: a ``twostage.index`` Index over candidate embeddings.

``twostage.index.make_index(config)`` picks the kind and its settings from ``config.index``
("flat": exact ``IndexFlatIP``, the counterpart of TFRS's ``BruteForce``; "ivf", "hnsw":
approximate, inner-product metric). This module only turns the torch towers' outputs into the
float32 numpy rows FAISS takes. The twin of tfrs_impl/index.py (BruteForce).
"""
from __future__ import annotations

import numpy as np
import torch

from twostage.config import Config, IndexConfig
from twostage.index import Index, make_index


def as_rows(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """[M, D] tensor or array -> C-contiguous float32 numpy rows (copied off the device)."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def build_index(config: Config | IndexConfig, candidate_embeddings: np.ndarray | torch.Tensor
                ) -> Index:
    """``make_index(config)`` (the index section, or a whole Config) filled with
    ``candidate_embeddings`` [M, D] (M >= 1); its rows are positions 0..M-1 in insertion
    order."""
    rows = as_rows(candidate_embeddings)
    if rows.shape[0] == 0:
        raise ValueError("build_index needs at least one candidate (pass dataset.corpus_titles)")
    return make_index(config).add(rows)
