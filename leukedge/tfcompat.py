"""One place that imports TensorFlow the way the whole project needs it (Keras 2 via tf-keras).

It lives at the top of the package, not in train/, because the one evaluation (leukedge.evaluation) loads
Keras models too and must not import from a layer above it (issue 19).
"""

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


def keras_file_flavour(path) -> tuple[str, str]:
    """('tf-keras' | 'keras3' | 'h5' | 'savedmodel' | 'unknown', version) of a saved Keras model, read
    from the file itself (a .keras zip's metadata.json), without loading it."""
    import json
    import zipfile
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        return ("savedmodel", "") if (p / "saved_model.pb").exists() else ("unknown", "")
    if p.suffix in (".h5", ".hdf5"):
        return "h5", ""
    try:
        with zipfile.ZipFile(p) as z:
            meta = json.loads(z.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return "unknown", ""
    version = str(meta.get("keras_version", ""))
    return ("keras3" if version.startswith("3") else "tf-keras"), version


def load_keras_model(path, compile: bool = False):
    """Load a tf-keras (Keras 2) model file; raises a one-line LeukedgeError naming the file and cause.

    A Keras 3 `.keras` file cannot be opened by tf-keras: that is said first, with the fix.
    """
    from leukedge.edge.errors import LeukedgeError

    class KerasLoadError(LeukedgeError, ValueError):
        pass

    flavour, version = keras_file_flavour(path)
    if flavour == "keras3":
        raise KerasLoadError(f"{path}: a Keras 3 file (keras {version}); leukedge trains and prunes with tf-keras 2 — "
                             f"import it with `leukedge import {path} ...`, which rebuilds it in tf-keras")
    tf = tensorflow()
    try:
        return tf.keras.models.load_model(path, compile=compile)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise KerasLoadError(f"{path}: cannot load as a tf-keras model ({type(exc).__name__}: {first})") from None
