from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("LEUKEDGE_OFFLINE", "1")  # tests never probe the network for Keras weights

from helpers import CNMC, export_tflite, fit_briefly, make_card, tiny_model  # noqa: E402

SIZE = 64


def pytest_collection_modifyitems(config, items):
    if config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="heavy end-to-end test; run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cnmc_dir() -> Path:
    if not CNMC.is_dir():
        pytest.skip(f"real C-NMC sample data not found at {CNMC} (../shared/data is absent on this machine)")
    return CNMC


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from leukedge.train.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, n_train=48, n_val=12, size=96, seed=1, difficulty="easy")  # tiny models must be right


@pytest.fixture(scope="session")
def synth_arrays(synth_dir):
    from leukedge.edge.preprocess import Preprocessing, load_rgb, normalize
    from leukedge.train.datasets import read_dataset

    ds = read_dataset(synth_dir)
    prep = Preprocessing(size=SIZE)
    samples = ds.labelled
    x = normalize(np.stack([load_rgb(s.path, SIZE) for s in samples]), prep)
    y = np.array([s.label for s in samples])
    return x, y, [s.path for s in samples]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, synth_arrays):
    """A tiny trained Keras model plus float32 and full-int8 TFLite exports, each with its card."""
    x, y, _ = synth_arrays
    out = tmp_path_factory.mktemp("models")
    model = fit_briefly(tiny_model(SIZE), x, y)
    keras_path = out / "model.keras"
    from leukedge.train.fit import export_model

    export_model(model, keras_path)
    make_card(keras_path, SIZE, "float", "keras")
    return {
        "keras_model": model,
        "keras": keras_path,
        "float32": export_tflite(model, out, "float32"),
        "int8": export_tflite(model, out, "int8", calib=x[:24]),
        "dir": out,
    }
