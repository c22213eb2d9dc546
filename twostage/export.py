"""Move weights between the torch and TFRS backends; export a torch run as a TF SavedModel.

This is the one module of the core that imports both frameworks (lazily, through the backends).
Both backends name every weight with the Keras attribute path of the seed's models and hold
Dense kernels as [in, out], so a transfer is a dictionary copy checked name by name and shape by
shape (``set_weights`` refuses anything partial).
"""
from __future__ import annotations

import json
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

    tfrs_backend = TfrsBackend(torch_backend.config, torch_backend.spec)
    copy_weights(torch_backend, tfrs_backend)
    return tfrs_backend


def tfrs_to_torch(tfrs_backend):
    """A TorchBackend with the same config, spec and weights as ``tfrs_backend``."""
    from torch_impl.backend import TorchBackend

    torch_backend = TorchBackend(tfrs_backend.config, tfrs_backend.spec)
    copy_weights(tfrs_backend, torch_backend)
    return torch_backend


def corpus_titles(run_dir: Path) -> np.ndarray:
    """The corpus a run was evaluated on (``corpus.json`` written by ``twostage run``)."""
    path = Path(run_dir) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; it is written by `twostage run`")
    return np.asarray(json.loads(path.read_text(encoding="utf-8"))["titles"], dtype=object)


def export_run_to_tfrs(run_dir: Path, out: Path, k: int = 100) -> Path:
    """Load ``run_dir/torch``, move its weights into the TFRS models and write a SavedModel of
    query model + BruteForce(k) over the run's corpus. Call it as
    ``m = tf.saved_model.load(out); scores, titles = m({"user_id": tf.constant(["42"]),
    "timestamp": tf.constant([879000000], tf.int64)})``."""
    from tfrs_impl.checkpoint import export_saved_model
    from torch_impl.backend import TorchBackend

    titles = corpus_titles(run_dir)
    if k > len(titles):
        raise ValueError(f"k={k} exceeds the corpus size {len(titles)}")
    tfrs_backend = torch_to_tfrs(TorchBackend.load(Path(run_dir) / "torch"))
    return export_saved_model(out, tfrs_backend.retrieval_model, titles, k=k)
