"""The TFRS backend: the seed's TensorFlow Recommenders models, fed from the shared FeatureSpec.

TFRS 0.7 is written against Keras 2 (``tf_keras``). TensorFlow >= 2.16 binds ``tf.keras`` to
Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set before ``tf.keras`` is first touched, so this
package calls :func:`twostage.env.setup_tensorflow` before importing TensorFlow and refuses to run
if Keras 3 already won.

Modules (each the twin of the torch_impl module of the same name): ``features`` (preprocessing
layers from the FeatureSpec, raw numpy -> tensors, tf.data input columns), ``models``, ``tasks``
(losses + metrics), ``optim`` (Keras Adagrad and its accumulators by weight name), ``train`` (one
fit for both stages), ``index`` (BruteForce), ``checkpoint``, ``backend`` (:class:`TfrsBackend`).
"""
from __future__ import annotations

from twostage.env import quiet_native_stderr, setup_tensorflow

setup_tensorflow()  # must precede the first access of tf.keras (TF resolves it lazily, once)

with quiet_native_stderr():  # TF's C++ start-up notices (oneDNN, no CUDA), not its errors
    import tensorflow as tf  # noqa: E402
    import tensorflow_recommenders  # noqa: E402,F401  (its import logs the same notices)
    tf.config.list_physical_devices()  # the CUDA probe, before any device is set up


def _check_legacy_keras() -> None:
    """Raise ImportError if tf.keras is Keras 3 (resolved before this package set the env)."""
    module = getattr(tf.keras, "__name__", "")
    version = str(getattr(tf.keras, "__version__", ""))
    if not module.startswith("tf_keras") or version.startswith("3"):
        raise ImportError(
            f"tfrs_impl needs Keras 2 (tf_keras) as tf.keras, but tf.keras is {module!r} "
            f"(Keras {version or '3'}), bound before tfrs_impl was imported. Import tfrs_impl "
            "before touching tensorflow.keras, or set TF_USE_LEGACY_KERAS=1 in the environment "
            "before starting Python (and `pip install tf-keras` matching your TensorFlow).")


_check_legacy_keras()
