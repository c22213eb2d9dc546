"""Checkpoints (weights + spec + config, written atomically) and a SavedModel for serving.

Checkpoint layout (a directory):
  meta.json       {"backend": "tfrs", "format": 1, "spec_fingerprint": ...}
  config.json     Config.to_dict()
  spec.json       FeatureSpec.save()
  retrieval.npz   weights by name (models.get_weights), ranking.npz likewise
The directory is written under a temporary name beside the target and renamed into place, so a
crash never leaves a half-written checkpoint under the target name.

SavedModel export: the query model + a BruteForce index over the corpus with title identifiers,
callable after ``tf.saved_model.load`` as ``m({"user_id": [B] string, "timestamp": [B] int64})``
-> (scores [B, k] float32, titles [B, k] string); also a ``serving_default`` signature returning
{"scores", "titles"}.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from twostage.data.features import FeatureSpec
from twostage.config import Config

from . import index as index_lib
from . import models

FORMAT = 1
BACKEND = "tfrs"


def write_directory_atomic(directory: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temp dir beside ``directory``, then swap it into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    old = None
    try:
        write(tmp)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "x")
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not directory.exists():
            os.replace(old / "x", directory)  # put the previous checkpoint back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def _save_npz(path: Path, weights: dict[str, np.ndarray]) -> None:
    # Names contain '/', which npz keeps as zip member paths; np.load returns them unchanged.
    np.savez(path, **weights)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save(directory: Path | str, retrieval_model, ranking_model, spec: FeatureSpec,
         config: Config) -> Path:
    """Write both models' weights, the spec and the config atomically under ``directory``."""
    def write(tmp: Path) -> None:
        (tmp / "meta.json").write_text(json.dumps(
            {"backend": BACKEND, "format": FORMAT, "spec_fingerprint": spec.fingerprint()},
            indent=1), encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=1),
                                         encoding="utf-8")
        spec.save(tmp / "spec.json")
        _save_npz(tmp / "retrieval.npz", models.get_weights(retrieval_model))
        _save_npz(tmp / "ranking.npz", models.get_weights(ranking_model))
    return write_directory_atomic(directory, write)


def read_meta(directory: Path) -> dict:
    path = directory / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{directory}: not a tfrs checkpoint ({e}); save one with "
                         "TfrsBackend.save") from e
    if meta.get("backend") != BACKEND:
        raise ValueError(f"{directory} holds a {meta.get('backend')!r} checkpoint, not tfrs; "
                         "load it with its own backend")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory}: checkpoint format {meta.get('format')!r} unsupported "
                         f"(expected {FORMAT}); retrain to rebuild it")
    return meta


def load(directory: Path | str):
    """-> (config, spec, retrieval_model, ranking_model) rebuilt and filled from ``directory``."""
    directory = Path(directory)
    meta = read_meta(directory)
    config = Config.from_dict(json.loads((directory / "config.json").read_text("utf-8")))
    spec = FeatureSpec.load(directory / "spec.json")
    if spec.fingerprint() != meta.get("spec_fingerprint"):
        raise ValueError(f"{directory}: spec.json does not match the fingerprint the weights "
                         "were saved with; the checkpoint is corrupt or was edited")
    retrieval = models.build_retrieval_model(spec, config)
    ranking = models.build_ranking_model(spec, config)
    models.set_weights(retrieval, _load_npz(directory / "retrieval.npz"))
    models.set_weights(ranking, _load_npz(directory / "ranking.npz"))
    return config, spec, retrieval, ranking


# --- SavedModel for serving --------------------------------------------------------------------
QUERY_SIGNATURE = {"user_id": tf.TensorSpec([None], tf.string, name="user_id"),
                   "timestamp": tf.TensorSpec([None], tf.int64, name="timestamp")}


class ServingModule(tf.Module):
    """Raw queries -> (scores [B, k], titles [B, k]) through a title-identified BruteForce."""

    def __init__(self, index):
        super().__init__()
        self.index = index

    @tf.function(input_signature=[QUERY_SIGNATURE])
    def __call__(self, queries):
        return self.index(queries)

    @tf.function(input_signature=[QUERY_SIGNATURE])
    def serve(self, queries):
        scores, titles = self.index(queries)
        return {"scores": scores, "titles": titles}


def export_saved_model(directory: Path | str, retrieval_model, corpus_titles: np.ndarray,
                       k: int = index_lib.DEFAULT_K) -> Path:
    """Export query model + BruteForce(k) over ``corpus_titles`` (titles as ids), atomically."""
    index = index_lib.build_index(retrieval_model.query_model, retrieval_model.candidate_model,
                                  corpus_titles, k=k, identifiers="titles")
    module = ServingModule(index)

    def write(tmp: Path) -> None:
        # Keras warns once per subclassed model that it has no get_config(); irrelevant here
        # (the SavedModel is loaded with tf.saved_model.load, not rebuilt from configs).
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        finally:
            logger.setLevel(level)
    return write_directory_atomic(directory, write)


def load_saved_model(directory: Path | str):
    """``tf.saved_model.load``; call the result with raw queries (see the module docstring)."""
    return tf.saved_model.load(str(directory))
