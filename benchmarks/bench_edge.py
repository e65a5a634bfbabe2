"""Microbenchmarks (pytest-benchmark): preprocessing one 450x450 BMP, and invoke() per variant.

    pytest benchmarks/bench_edge.py --benchmark-json=runs/micro.json

Models: every *.tflite (with its card) in $LEUKEDGE_BENCH_MODELS (default runs/flow/opt).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukedge.edge.classifier import Classifier
from leukedge.edge.preprocess import Preprocessing, load_rgb, normalize

MODELS = Path(os.environ.get("LEUKEDGE_BENCH_MODELS", "runs/flow/opt"))
VARIANTS = sorted(MODELS.glob("*.tflite")) if MODELS.is_dir() else []


@pytest.fixture(scope="module")
def bmp(tmp_path_factory) -> Path:
    """A 450x450 24-bit BMP like the C-NMC release's: a cell on black."""
    yy, xx = np.mgrid[0:450, 0:450]
    cell = np.hypot(yy - 225, xx - 225) < 150
    arr = np.zeros((450, 450, 3), np.uint8)
    arr[cell] = (120, 70, 160)
    path = tmp_path_factory.mktemp("bmp") / "cell.bmp"
    Image.fromarray(arr).save(path)
    return path


def test_preprocess_450px_bmp_to_224_tensor(benchmark, bmp):
    prep = Preprocessing(size=224)
    x = benchmark(lambda: normalize(load_rgb(bmp, prep.size, prep.resize), prep))
    assert x.shape == (224, 224, 3)


@pytest.mark.skipif(not VARIANTS, reason=f"no *.tflite models in {MODELS} (run `leukedge flow` or set LEUKEDGE_BENCH_MODELS)")
@pytest.mark.parametrize("model", VARIANTS, ids=[p.stem for p in VARIANTS])
def test_invoke(benchmark, model, bmp):
    clf = Classifier.load(model)
    x = clf.input_tensor(load_rgb(bmp, clf.card.preprocessing.size, clf.card.preprocessing.resize))
    probs = benchmark(clf.probabilities, x)
    assert probs.shape == (2,)
