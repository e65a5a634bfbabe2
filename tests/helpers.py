"""Small real models for tests: a tiny flat CNN in tf.keras, exported like the real thing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# ../shared/data beside the checkout; LEUKEDGE_SHARED_DATA=/nowhere shows how the suite runs without it.
SHARED_DATA = Path(os.environ.get("LEUKEDGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CNMC = SHARED_DATA / "C-NMC_Leukemia"
PBC = SHARED_DATA / "pbc-granulocytes"


def tiny_model(size: int = 64, seed: int = 0):
    """Conv+BN+ReLU blocks, a concat and the screening head: the layer kinds InceptionV3 uses."""
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf.keras.utils.set_random_seed(seed)
    L = tf.keras.layers
    inp = L.Input((size, size, 3), name="image")

    def cbr(x, f, k, s=1, name=None):
        x = L.Conv2D(f, k, strides=s, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(scale=False)(x)
        return L.Activation("relu")(x)

    x = cbr(inp, 8, 3, 2, name="conv_a")
    a = cbr(x, 8, 1, name="conv_b")
    b = cbr(x, 8, 3, name="conv_c")
    p = cbr(L.AveragePooling2D(3, 1, padding="same")(x), 8, 1, name="conv_d")
    x = L.concatenate([a, b, p])
    x = L.MaxPooling2D(3, 2)(x)
    x = cbr(x, 16, 3, 2, name="conv_e")
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(16, activation="relu", name="head_dense")(x)
    x = L.Dropout(0.2, name="head_dropout")(x)
    out = L.Dense(2, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(inp, out)


def fit_briefly(model, images: np.ndarray, labels: np.ndarray, epochs: int = 8):
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=epochs, batch_size=8, verbose=0)
    return model


def make_card(model_file: Path, size: int, variant: str, fmt: str, labels=("hem", "all"), positive="all",
              threshold=0.5, provenance=None):
    from leukedge.edge.card import ModelCard, card_path_for
    from leukedge.edge.preprocess import Preprocessing

    card = ModelCard(labels=list(labels), positive_label=positive,
                     preprocessing=Preprocessing(size=size, mean=(128.0,) * 3, std=(128.0,) * 3),
                     model_file=model_file.name, model_format=fmt, threshold=threshold, variant=variant,
                     provenance=provenance or {})
    card.bind(model_file)
    card.save(card_path_for(model_file))
    return card


def export_tflite(model, out_dir: Path, variant: str, calib: np.ndarray | None = None, io: str = "int8") -> Path:
    from leukedge.optimize.convert import representative_from, to_tflite

    mode = "int8" if variant == "int8" else variant
    blob = to_tflite(model, mode, representative_from(calib) if calib is not None else None, io=io)
    path = out_dir / f"{variant}.tflite"
    path.write_bytes(blob)
    make_card(path, int(model.input_shape[1]), variant, "tflite")
    return path


def write_image(path: Path, size=(48, 48), mode="RGB", fmt=None, seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path
