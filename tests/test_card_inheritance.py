"""Issue 18: what a model outputs travels from its card to every variant.

A parent whose head ends in a Dense layer without activation (logits) used to get variant cards that said
`probabilities`, so raw logits reached rows as P(ALL). Here every registry row is built from a logits parent
whose card carries a distinctive value in every inherited field, and each variant's card must repeat them;
a card that claims `probabilities` for a logits model is refused at load (exit 2 on the device).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from leukedge.edge.card import INHERITED_FIELDS, VARIANT_FIELDS, CardError, ModelCard, card_path_for, inherit_card, load_card_for_model
from leukedge.edge.preprocess import Preprocessing
from leukedge.optimize.variants import VARIANTS, resolve

FAST = dict(calibration_size=24, prune_steps=12, qat_steps=4, resize_steps=2, finetune_batch=8)
SIZE = 64
OTHER_SIZE = 80
CELLS = {"style": "crop", "canvas_px": 363, "diameter_px": 182.5, "um_per_px": None}


def _parent_card(**kw) -> ModelCard:
    base = dict(labels=["hem", "all"], positive_label="all", model_file="model.keras", model_format="keras",
                preprocessing=Preprocessing(size=SIZE, mean=(127.0, 128.0, 129.0), std=(60.0, 61.0, 62.0)),
                name="lab-twin", output="logits", cells=dict(CELLS), threshold=0.37)
    base.update(kw)
    return ModelCard(**base)


def test_every_card_field_is_either_inherited_or_set_by_the_variant():
    """A field added to the card later must be sorted into one of the two lists before this passes."""
    names = {f.name for f in dataclasses.fields(ModelCard)}
    assert set(INHERITED_FIELDS) | set(VARIANT_FIELDS) == names
    assert not set(INHERITED_FIELDS) & set(VARIANT_FIELDS)


def test_inherit_card_copies_declarations_and_refuses_impossible_changes():
    parent = _parent_card()
    card = inherit_card(parent, model_file="int8.tflite", model_format="tflite", variant="int8")
    for name in INHERITED_FIELDS:
        assert getattr(card, name) == getattr(parent, name), name
    assert card.threshold == parent.threshold and card.calibration is None and card.golden is None
    card.cells["diameter_px"] = 1.0  # a deep copy: the variant cannot change its parent's card
    assert parent.cells["diameter_px"] == 182.5
    smaller = inherit_card(parent, model_file="a.tflite", model_format="tflite", variant="int8@80", size=OTHER_SIZE)
    assert smaller.preprocessing == dataclasses.replace(parent.preprocessing, size=OTHER_SIZE)
    with pytest.raises(CardError, match="may only remove a final softmax"):
        inherit_card(parent, model_file="a.tflite", model_format="tflite", variant="x", output="probabilities")
    with pytest.raises(CardError, match="not a field a variant sets itself"):
        inherit_card(parent, model_file="a.tflite", model_format="tflite", variant="x", labels=["a", "b"])
    softmax_parent = _parent_card(output="probabilities")
    assert inherit_card(softmax_parent, model_file="a.tflite", model_format="tflite", variant="x",
                        output="logits").output == "logits"


def test_cells_field_is_validated_and_round_trips(tmp_path):
    card = _parent_card()
    assert ModelCard.from_dict(card.to_dict()).cells == CELLS
    bad = card.to_dict()
    bad["cells"] = {"style": "smear", "canvas_px": 363, "diameter_px": 10}
    with pytest.raises(CardError, match="cells.style"):
        ModelCard.from_dict(bad)
    bad["cells"] = {"style": "masked", "canvas_px": 450, "diameter_px": float("nan")}
    with pytest.raises(CardError, match="cells.diameter_px"):
        ModelCard.from_dict(bad)


def _strip_softmax(model):
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    last = model.layers[-1]

    def clone(layer):
        cfg = layer.get_config()
        if layer is last:
            cfg["activation"] = "linear"
        return layer.__class__.from_config(cfg)

    copy = tf.keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


@pytest.fixture(scope="module")
def logits_parent(tiny_models, synth_dir, tmp_path_factory):
    """The tiny trained model with its softmax removed (a logits head), as a leukedge run folder whose card
    has a distinctive value in every inherited field."""
    from leukedge.edge.quality import reference_statistics
    from leukedge.train.datasets import read_dataset
    from leukedge.train.fit import export_model
    from leukedge.train.splits import make_split, write_split
    from leukedge.edge.preprocess import load_rgb

    d = tmp_path_factory.mktemp("logits-parent")
    keras = d / "model.keras"
    export_model(_strip_softmax(tiny_models["keras_model"]), keras)
    ds = read_dataset(synth_dir)
    split = make_split(ds)
    write_split(split, ds, d / "split.json")
    stats = reference_statistics(np.stack([load_rgb(s.path, SIZE) for s in ds.labelled[:24]]))
    card = _parent_card(input_statistics=stats, provenance={
        "data": {"root": str(synth_dir)}, "split": split.describe(ds), "config": {"val_fraction": 0.2}})
    card.bind(keras)
    card.save(card_path_for(keras))
    return keras


# every row, one member of each input-size family, and one channel-pruned (slim) member of the int8 family
ROWS = (tuple(VARIANTS) + tuple(f"{v.name}@{OTHER_SIZE}" for v in VARIANTS.values() if v.sizes)
        + ("slim60-int8", f"slim60-int8@{OTHER_SIZE}"))


@pytest.fixture(scope="module")
def every_row(logits_parent, tmp_path_factory):
    from leukedge.optimize.run import OptimizeOptions, optimize

    out = tmp_path_factory.mktemp("every-row") / "opt"
    optimize(logits_parent, out, OptimizeOptions(variants=ROWS, max_f1_drop=1.0, max_recall_drop=1.0, **FAST))
    return out


def test_every_registry_row_inherits_the_parents_declarations(logits_parent, every_row, synth_dir):
    """Walks the whole registry (and one member of each input-size family): each variant's card repeats
    every field its parent declares, says `logits`, and gives P(all) in [0, 1] through the device."""
    from leukedge.edge.classifier import Classifier

    parent = load_card_for_model(logits_parent)
    images = sorted(synth_dir.rglob("*.bmp"))[:6]
    assert images
    for name in ROWS:
        v = resolve(name)
        path = every_row / f"{v.name}{v.extension}"
        card = load_card_for_model(path)
        for field in INHERITED_FIELDS:
            want = getattr(parent, field)
            if v.input_size and field == "preprocessing":
                want = dataclasses.replace(want, size=v.input_size)
            if v.input_size and field == "input_statistics":
                want = None  # measured at the parent's size
            assert getattr(card, field) == want, (name, field)
        assert card.output == "logits", name
        # the synthetic split's 12 validation images are too few to judge a temperature (issue 21)
        assert card.calibration["status"] == "not fitted" and card.calibration["temperature"] == 1.0, name
        assert "validation images" in card.calibration["reason"], name
        clf = Classifier(path, card)
        for img in images:
            pred = clf.predict_one(img)
            assert pred.ok and 0.0 <= pred.p_all <= 1.0, (name, pred)


def test_a_logits_model_whose_card_says_probabilities_is_refused_in_one_line(every_row, synth_dir):
    """The device checks a `probabilities` card on probe inputs at load: one line, exit 2, no row."""
    d = every_row.parent / "mislabelled"
    d.mkdir()
    model = d / "int8.tflite"
    shutil.copy(every_row / "int8.tflite", model)
    card = json.loads((every_row / "int8.tflite.json").read_text())
    card["output"] = "probabilities"
    card["requires"] = [r for r in card["requires"] if r != "logits"]
    card["calibration"] = None
    card["requires"] = [r for r in card["requires"] if r != "temperature"]
    card_path_for(model).write_text(json.dumps(card))
    img = sorted(synth_dir.rglob("*.bmp"))[0]
    r = subprocess.run([sys.executable, "-m", "leukedge.edge.cli", "-m", str(model), "--format", "csv", str(img)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "outputs probabilities" in lines[0] and str(model) in lines[0], r.stderr


def test_check_probabilities_accepts_quantized_softmax_and_refuses_logits():
    from leukedge.edge.calibration import NotProbabilitiesError, check_probabilities, probability_tolerance

    tol = probability_tolerance(1 / 256, 2)
    q = np.array([[0.0, 255 / 256], [0.5, 0.5], [1.0, 0.0]])  # what an int8 softmax dequantizes to
    assert np.array_equal(check_probabilities(q, "m", tol), q)
    assert check_probabilities(np.array([1.001, -0.001]), "m").tolist() == [1.0, 0.0]  # clipped
    for bad in ([-2.07, 2.08], [0.7, 0.7], [np.nan, 1.0], [42.7, 45.9]):
        with pytest.raises(NotProbabilitiesError, match="m: its card says"):
            check_probabilities(np.array(bad), "m", tol)


def test_gate_compares_a_logits_parent_on_the_probability_scale(every_row):
    """The parent's P comes from softmax of its logits (not raw logits), so the float32 variant — the same
    arithmetic — has the parent's P to float rounding (|dP| of raw logits against P would be ~1)."""
    summary = json.loads((every_row / "summary.json").read_text())
    f32 = next(r for r in summary["variants"] if r["variant"] == "float32")
    assert 0.0 <= summary["parent"]["f1"] <= 1.0
    assert f32["max_abs_delta_p"] < 1e-5
