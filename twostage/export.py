"""Move weights between the torch and TFRS backends; export a torch run as a TF SavedModel.

This is the one module of the core that imports both frameworks (lazily, through the backends).
Both backends name every weight with the Keras attribute path of the seed's models and hold
Dense kernels as [in, out], so a transfer is a dictionary copy checked name by name and shape by
shape (``set_weights`` refuses anything partial).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

STAGES = ("retrieval", "ranking")


def copy_weights(source, target, stages: tuple[str, ...] = STAGES) -> None:
    """Assign every weight of ``source``'s stages to ``target`` (either direction)."""
    if source.spec.fingerprint() != target.spec.fingerprint():
        raise ValueError("the two backends were built from different feature specs; build both "
                         "from the same dataset.spec before moving weights")
    for stage in stages:
        target.set_weights(stage, source.get_weights(stage))


def torch_to_tfrs(torch_backend):
    """A TfrsBackend with the same config, spec and weights as ``torch_backend``."""
    from tfrs_impl.backend import TfrsBackend

    # What TFRS supports (BruteForce, CPU, the fit loss, one replica); no weight depends on it.
    config = torch_backend.config.replace(index="flat", device="cpu", ranking_loss="keras_graph",
                                          nproc=1)
    tfrs_backend = TfrsBackend(config, torch_backend.spec)
    copy_weights(torch_backend, tfrs_backend)
    return tfrs_backend


def tfrs_to_torch(tfrs_backend):
    """A TorchBackend with the same config, spec and weights as ``tfrs_backend``."""
    from torch_impl.backend import TorchBackend

    torch_backend = TorchBackend(tfrs_backend.config, tfrs_backend.spec)
    copy_weights(tfrs_backend, torch_backend)
    return torch_backend


def export_run_to_tfrs(torch_dir: Path, corpus_titles: np.ndarray, out: Path, k: int = 100,
                       force: bool = False) -> Path:
    """Load the torch checkpoint ``torch_dir`` (a run folder's ``torch/``, validated by
    ``twostage.rundir.RunDir``), move its weights into the TFRS models and write a SavedModel of
    query model + BruteForce(k) over ``corpus_titles``. ``out`` is replaced only if it is a
    SavedModel export of ours (``force``: anything, moved aside). Call it as
    ``m = tf.saved_model.load(out); scores, titles = m({"user_id": tf.constant(["42"]),
    "timestamp": tf.constant([879000000], tf.int64)})``."""
    from tfrs_impl.checkpoint import export_saved_model
    from torch_impl.backend import TorchBackend

    if k > len(corpus_titles):
        raise ValueError(f"k={k} exceeds the corpus size {len(corpus_titles)}")
    torch_backend = TorchBackend.load(Path(torch_dir))
    tfrs_backend = torch_to_tfrs(torch_backend)
    return export_saved_model(out, tfrs_backend.retrieval_model, corpus_titles, k=k, force=force)
