import json
import shutil
import subprocess
import sys

import pytest

from helpers import make_card, write_image
from leukedge.edge.card import card_path_for, load_card_for_model
from leukedge.edge.classifier import Classifier
from leukedge.optimize.run import OptimizeError, OptimizeOptions, optimize
from leukedge.optimize.variants import DEFAULT_VARIANTS as VARIANTS

FAST = dict(calibration_size=24, prune_steps=12, qat_steps=4, finetune_batch=8)


@pytest.fixture(scope="module")
def parent(tiny_models, synth_dir, tmp_path_factory):
    """The tiny trained model as a leukedge parent: a run folder with model.keras, its card and split.json."""
    from leukedge.train.datasets import read_dataset
    from leukedge.train.splits import make_split, write_split

    d = tmp_path_factory.mktemp("parent")
    keras = d / "model.keras"
    shutil.copy(tiny_models["keras"], keras)
    ds = read_dataset(synth_dir)
    split = make_split(ds)
    make_card(keras, 64, "float", "keras", provenance={
        "data": {"root": str(synth_dir)}, "split": split.describe(ds), "config": {"val_fraction": 0.2}})
    write_split(split, ds, d / "split.json")
    return keras


@pytest.fixture(scope="module")
def all_variants(parent, tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "opt"
    summary = optimize(parent, out, OptimizeOptions(variants=VARIANTS, max_f1_drop=1.0, max_recall_drop=1.0, **FAST))
    return out, summary


def test_every_variant_converts_loads_in_edge_and_classifies_real_images(all_variants, cnmc_dir):
    out, summary = all_variants
    assert [r["variant"] for r in summary["variants"]] == list(VARIANTS)
    images = sorted(cnmc_dir.glob("validation_data/*/*.bmp"))
    for variant in VARIANTS:
        clf = Classifier.load(out / f"{variant}.tflite")  # checks the card's SHA-256
        card = clf.card
        assert card.variant == variant and card.verdict["status"] == "pass"
        assert card.provenance["parent"]["sha256"] and "vs_parent" in card.metrics
        for img in images:
            pred = clf.predict_one(img)
            assert pred.ok and pred.label in ("all", "hem")
        if variant.endswith("int8"):
            assert card.quantization["io"]["input"]["dtype"] == "int8"
            assert card.quantization["calibration"]["images"] == 24
    assert json.loads((out / "summary.json").read_text())["variants"][0]["variant"] == "float32"
    assert "| int8 |" in (out / "summary.md").read_text()


def test_quantized_outputs_stay_close_to_the_float_parent(all_variants):
    _, summary = all_variants
    by = {r["variant"]: r for r in summary["variants"]}
    assert by["float32"]["max_abs_delta_p"] < 1e-5  # same arithmetic as Keras
    assert by["float16"]["max_abs_delta_p"] < 1e-2
    for v in ("dynamic", "int8"):
        assert by[v]["max_abs_delta_p"] < 0.1, v  # stated bound for post-training quantization
    # a tiny model is mostly graph, not weights, so the ratio is modest here (full size: ~26%)
    assert by["int8"]["size_bytes"] < 0.6 * by["float32"]["size_bytes"]


def test_pruning_reaches_the_requested_sparsity_in_every_kernel(all_variants):
    out, summary = all_variants
    card = load_card_for_model(out / "pruned-int8.tflite")
    pr = card.optimization["pruning"]
    assert pr["target"] == 0.5 and pr["kernels"] == 7
    assert pr["min_kernel"] >= 0.49 and pr["max_kernel"] <= 0.51
    by = {r["variant"]: r for r in summary["variants"]}
    assert by["pruned-int8"]["gzip_bytes"] < by["int8"]["gzip_bytes"]


def test_bad_calibration_set_trips_the_budget_gate(parent, tmp_path):
    calib = tmp_path / "calib"
    for cls in ("all", "hem"):
        for i in range(8):
            write_image(calib / cls / f"{i}.png", size=(64, 64), fmt="PNG", seed=i)
            # near-black images: the int8 input range learnt from them clips every real cell
            from PIL import Image

            Image.new("RGB", (64, 64), (i % 2, 0, 0)).save(calib / cls / f"{i}.png")
    out = tmp_path / "opt"
    summary = optimize(parent, out, OptimizeOptions(variants=("int8",), calibration=str(calib), calibration_size=16,
                                                    max_f1_drop=0.01, max_recall_drop=0.01))
    assert summary["failed"] == ["int8"]
    card = load_card_for_model(out / "int8.tflite")
    assert card.verdict["status"] == "fail" and card.verdict["reasons"]
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "optimize", str(parent), "--out", str(tmp_path / "cli"),
                        "--variants", "int8", "--calibration", str(calib), "--calibration-size", "16"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "over budget: int8" in r.stderr


@pytest.mark.parametrize("opts,match", [
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=0.0), "sparsity"),
    (dict(variants=("int4",)), "unknown variant"),
    (dict(calibration_size=3), "too small"),
])
def test_bad_options_are_refused_before_any_work(parent, tmp_path, opts, match):
    with pytest.raises(OptimizeError, match=match):
        optimize(parent, tmp_path / "out", OptimizeOptions(**opts))
    assert not (tmp_path / "out").exists()


def test_bad_models_and_calibration_sets(parent, tmp_path, tiny_models):
    lonely = tmp_path / "model.keras"
    shutil.copy(tiny_models["keras"], lonely)
    with pytest.raises(OptimizeError, match="model card not found"):
        optimize(lonely, tmp_path / "o1", OptimizeOptions(variants=("float32",)))
    shutil.copy(parent.parent / "split.json", tmp_path / "split.json")
    card_path_for(lonely).write_text(card_path_for(parent).read_text())
    with open(lonely, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(OptimizeError, match="does not match its card"):
        optimize(lonely, tmp_path / "o2", OptimizeOptions(variants=("float32",)))
    with pytest.raises(OptimizeError, match="expected a trained leukedge model"):
        optimize(tiny_models["float32"], tmp_path / "o3", OptimizeOptions(variants=("float32",)))
    one_class = tmp_path / "one"
    for i in range(12):
        write_image(one_class / "all" / f"{i}.png", fmt="PNG", seed=i)
    (one_class / "hem").mkdir()
    with pytest.raises(Exception, match="one class|two class folders|single class"):
        optimize(parent, tmp_path / "o4", OptimizeOptions(variants=("int8",), calibration=str(one_class)))
    for p in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / p).exists()


def test_qat_keeps_the_order_of_mixed_concat_inputs(synth_arrays):
    """tfmot's Concat transform permutes [conv, conv, max-pool] inputs (model-optimization#1061); ours must not."""
    import numpy as np

    from leukedge.optimize.qat import quantization_aware
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf.keras.utils.set_random_seed(1)
    L = tf.keras.layers
    inp = L.Input((64, 64, 3))

    def cbr(x, f, k, s=1, pad="same"):
        x = L.Conv2D(f, k, strides=s, padding=pad, use_bias=False)(x)
        return L.Activation("relu")(L.BatchNormalization(scale=False)(x))

    x = cbr(inp, 8, 3)
    x = L.concatenate([cbr(x, 8, 3, 2, "valid"), cbr(cbr(x, 4, 1), 6, 3, 2, "valid"), L.MaxPooling2D(3, 2)(x)])
    x = L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(cbr(x, 8, 3)))
    model = tf.keras.Model(inp, x)
    xs, _, _ = synth_arrays
    qat = quantization_aware(model, None, steps=0, calibration=xs[:32])
    concat = lambda m: tf.keras.Model(m.input, [l for l in m.layers if "concatenate" in l.name][0].output)  # noqa: E731
    ref, got = concat(model).predict(xs[:8], verbose=0), concat(qat).predict(xs[:8], verbose=0)
    rel = np.abs(ref - got).mean() / np.abs(ref).mean()
    assert rel < 0.05, f"fake-quantized concat differs by {rel:.2f} of its magnitude (inputs permuted?)"


def test_int8_pools_depthwise_is_asked_for_and_recorded(parent, all_variants, tmp_path):
    """--int8-pools depthwise (optimize.pooling): the int8 file has no AVERAGE_POOL_2D and its card names the
    rewrite; the default keeps TFLite's pool (bit-identical on x86 and aarch64) and names none."""
    from ai_edge_litert.interpreter import Interpreter

    from leukedge.optimize.convert import INT8_REWRITES

    def ops(path):
        return [op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()]

    default_out, _ = all_variants
    out = tmp_path / "opt"
    optimize(parent, out, OptimizeOptions(variants=("int8",), int8_pools="depthwise", max_f1_drop=1.0,
                                          max_recall_drop=1.0, **FAST))
    assert "AVERAGE_POOL_2D" in ops(default_out / "int8.tflite")
    assert "AVERAGE_POOL_2D" not in ops(out / "int8.tflite") and "DEPTHWISE_CONV_2D" in ops(out / "int8.tflite")
    card = Classifier.load(out / "int8.tflite").card
    assert card.provenance["variant"]["graph_rewrites"] == list(INT8_REWRITES)
    assert Classifier.load(default_out / "int8.tflite").card.provenance["variant"]["graph_rewrites"] == []
