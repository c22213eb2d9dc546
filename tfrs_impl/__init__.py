"""The TFRS backend: the seed's TensorFlow Recommenders models, fed from the shared FeatureSpec.

TFRS 0.7 is written against Keras 2 (``tf_keras``). TensorFlow >= 2.16 binds ``tf.keras`` to
Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set before ``tf.keras`` is first touched, so this
package sets it on import and refuses to run if Keras 3 already won.
"""
from __future__ import annotations

import os

# Must precede the first access of tf.keras (tensorflow resolves it lazily, once).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def _check_legacy_keras() -> None:
    """Raise ImportError if tf.keras is Keras 3 (it was resolved before this package set the env)."""
    module = getattr(tf.keras, "__name__", "")
    version = str(getattr(tf.keras, "__version__", ""))
    if not module.startswith("tf_keras") or version.startswith("3"):
        raise ImportError(
            f"tfrs_impl needs Keras 2 (tf_keras) as tf.keras, but tf.keras is {module!r} "
            f"(Keras {version or '3'}), bound before tfrs_impl was imported. Import tfrs_impl "
            "before touching tensorflow.keras, or set TF_USE_LEGACY_KERAS=1 in the environment "
            "before starting Python (and `pip install tf-keras` matching your TensorFlow).")


_check_legacy_keras()
