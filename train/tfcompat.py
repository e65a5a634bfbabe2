"""One place that imports TensorFlow the way the whole project needs it (Keras 2 via tf-keras)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class MissingExtra(ImportError):
    pass


def tensorflow():
    try:
        import tensorflow as tf  # noqa: PLC0415
    except ImportError as exc:
        raise MissingExtra(
            "this step needs TensorFlow: install the workstation extra with  pip install 'leukedge[train]'"
        ) from exc
    if "tf_keras" not in getattr(tf.keras, "__name__", ""):
        raise MissingExtra(
            f"tf.keras is {getattr(tf.keras, '__name__', tf.keras)}; leukedge needs Keras 2 (tf-keras) with "
            "TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported"
        )
    return tf
