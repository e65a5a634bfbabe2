import numpy as np
import pytest

from leukedge.edge.classifier import Classifier
from leukedge.edge.preprocess import Preprocessing, load_rgb, normalize, quantize
from leukedge.edge.runtime import ModelError


def test_tflite_float32_matches_keras_on_the_same_tensor(tiny_models, synth_arrays):
    x, _, _ = synth_arrays
    clf = Classifier.load(tiny_models["float32"])
    keras_p = tiny_models["keras_model"].predict(x[:8], verbose=0)
    tflite_p = clf.probabilities_for_inputs(x[:8])
    np.testing.assert_allclose(tflite_p, keras_p, atol=1e-5)


def test_classifies_real_cnmc_images_with_float_and_int8(tiny_models, cnmc_dir):
    paths = sorted(cnmc_dir.glob("training_data/fold_1/*/*.bmp"))[:6]
    f32 = Classifier.load(tiny_models["float32"])
    i8 = Classifier.load(tiny_models["int8"])
    assert i8.backend.input_dtype == np.int8 and i8.runtime.name == "ai-edge-litert"
    for p in paths:
        a, b = f32.predict_one(p), i8.predict_one(p)
        assert a.ok and b.ok, (a.error, b.error)
        assert a.label in ("all", "hem") and 0.0 <= a.p_all <= 1.0
        # int8 of a tiny model stays close to its float32 sibling on real images
        assert abs(a.p_all - b.p_all) < 0.15
        assert a.invoke_ms > 0 and a.total_ms >= a.invoke_ms


def test_predict_accepts_arrays_and_applies_threshold(tiny_models, synth_arrays):
    _, _, paths = synth_arrays
    clf = Classifier.load(tiny_models["float32"])
    rgb = load_rgb(paths[0], clf.card.preprocessing.size)
    by_path = clf.predict(paths[0])[0]
    by_array = clf.predict(rgb)[0]
    assert by_array.p_all == pytest.approx(by_path.p_all, abs=1e-7)
    clf.threshold = 0.0
    assert clf.predict_one(rgb).label == "all"
    clf.threshold = 1.0 + 1e-9
    assert clf.predict_one(rgb).label == "hem"
    bad = clf.predict_one(np.zeros((3, 3, 3), np.uint8))
    assert not bad.ok and "array input" in bad.error


def test_input_tensor_is_edge_preprocessing_exactly(tiny_models, synth_arrays):
    _, _, paths = synth_arrays
    clf = Classifier.load(tiny_models["float32"])
    prep: Preprocessing = clf.card.preprocessing
    rgb = load_rgb(paths[1], prep.size, prep.resize)
    assert np.array_equal(clf.input_tensor(rgb)[0], normalize(rgb, prep))
    i8 = Classifier.load(tiny_models["int8"])
    scale, zero = i8._in_q
    expected = quantize(normalize(rgb, prep), scale, zero, np.int8)
    got = i8.input_tensor(rgb)
    assert got.dtype == np.int8 and got.shape == (1,) + rgb.shape and np.array_equal(got[0], expected)
    # every uint8 level, and a non-contiguous view (the byte-table path copies it first)
    every = np.resize(np.arange(256, dtype=np.uint8), (2 * prep.size, prep.size, 3))[::2]
    assert not every.flags.c_contiguous
    assert np.array_equal(i8.input_tensor(every)[0], quantize(normalize(every, prep), scale, zero, np.int8))


def test_corrupt_model_file_is_a_model_error(tmp_path, tiny_models):
    from helpers import make_card

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 1000)
    make_card(bad, 64, "float32", "tflite")
    with pytest.raises(ModelError, match="bad.tflite"):
        Classifier.load(bad)


def test_threshold_in_constructor_and_logit_models_get_softmax_with_temperature(tiny_models, synth_arrays):
    """A logit card makes the device apply softmax(z / T); the threshold is the constructor's, not patched."""
    from leukedge.edge.card import load_card_for_model

    _, _, paths = synth_arrays
    clf = Classifier.load(tiny_models["float32"], threshold=0.0)
    assert clf.threshold == 0.0 and clf.predict_one(paths[0]).label == "all"
    card = load_card_for_model(tiny_models["float32"])
    card.output, card.calibration = "logits", {"temperature": 2.0}
    as_logits = Classifier(tiny_models["float32"], card)
    x = as_logits.input_tensor(load_rgb(paths[0], card.preprocessing.size))
    z = as_logits.raw_output(x).astype(np.float64) / 2.0  # this tiny model outputs probabilities; treat them as logits
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(as_logits.probabilities(x), expected, rtol=1e-12)
