"""`leukedge import` and graph surgery on the reference notebook's architecture (issue 11).

The reference model: Sequential([InceptionV3-like backbone (pooling='max'), BatchNormalization(),
Dense(relu, kernel L2, activity L1, bias L1), Dropout, Dense(2, softmax)]) on raw 0..255 pixels,
nearest resize, outputs [all, hem]. The default suite uses a small functional stand-in backbone at 64 px
with random weights (the ImageNet weights are not needed to test the path) and fits the head on the real
C-NMC sample images until P(all) spreads; the slow test uses leukedge's own InceptionV3 backbone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

SIZE = 64


def _backbone(keras, size: int):
    """A small functional stand-in for InceptionV3(include_top=False, pooling='max'): Conv+BN+ReLU, a concat.
    keras: tf.keras (tf-keras) or the Keras 3 `keras` package; both build the same layers."""
    L = keras.layers
    inp = L.Input((size, size, 3))

    def cbr(x, f, k, s=1):
        x = L.Conv2D(f, k, strides=s, padding="same", use_bias=False)(x)
        x = L.BatchNormalization(scale=False)(x)
        return L.Activation("relu")(x)

    x = cbr(inp, 8, 3, 2)
    x = L.concatenate([cbr(x, 8, 1), cbr(x, 8, 3)])
    x = L.MaxPooling2D(3, 2)(x)
    x = cbr(x, 16, 3, 2)
    return keras.Model(inp, L.GlobalMaxPooling2D()(x), name="inception_v3")


def reference_model(size: int = SIZE, backbone=None, units: int = 32, seed: int = 0, head: str = "softmax"):
    """The notebook's architecture around `backbone` (default: the small stand-in); head: the last Dense's
    activation ('softmax', or None for a logits head as labs that train with from_logits=True bring it)."""
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf.keras.utils.set_random_seed(seed)
    L, reg = tf.keras.layers, tf.keras.regularizers
    return tf.keras.Sequential([
        backbone or _backbone(tf.keras, size), L.BatchNormalization(),
        L.Dense(units, activation="relu", kernel_regularizer=reg.l2(0.016), activity_regularizer=reg.l1(0.006),
                bias_regularizer=reg.l1(0.006)),
        L.Dropout(0.5), L.Dense(2, activation=head)])


def notebook_images(paths, size: int) -> np.ndarray:
    """Images loaded the notebook's way: Keras's image loader, nearest resize, raw 0..255 (uint8 here)."""
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    return np.stack([tf.keras.utils.img_to_array(tf.keras.utils.load_img(p, target_size=(size, size),
                                                                          interpolation="nearest"))
                     for p in paths]).astype(np.uint8)


def fit_reference(model, x_raw: np.ndarray, y: np.ndarray, steps: int = 60, from_logits: bool = False):
    """Fit the head (backbone frozen) on raw pixels; the head's BatchNorm starts from the feature statistics
    (a few CPU steps never move its moving averages far enough)."""
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    backbone, bn = model.layers[0], model.layers[1]
    feats = backbone.predict(x_raw.astype(np.float32), verbose=0)
    bn.set_weights([np.ones(feats.shape[1]), np.zeros(feats.shape[1]), feats.mean(0), feats.var(0) + 1e-3])
    backbone.trainable = False
    bn.trainable = False
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    ds = tf.data.Dataset.from_tensor_slices((x_raw.astype(np.float32), y)).shuffle(len(y), seed=0).batch(16).repeat()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    backbone.trainable = True
    bn.trainable = True
    return model


def _fitted_reference(cnmc_dir, d, head: str | None = "softmax") -> dict:
    """The reference model (`head` as in reference_model) fitted on the C-NMC sample, saved as .keras and
    .h5 in `d`; with the notebook-way inputs and the Keras model's P(all) (softmax of a logits head)."""
    from leukedge.train.datasets import read_dataset

    ds = read_dataset(cnmc_dir)
    samples = ds.labelled
    paths = [s.path for s in samples]
    y_all = np.array([ds.labels[s.label] == "all" for s in samples])
    x = notebook_images(paths, SIZE)
    model = fit_reference(reference_model(head=head), x, np.where(y_all, 0, 1),  # output 0 = all, 1 = hem
                          from_logits=head is None)
    model.save(d / "notebook.keras")
    model.save(d / "notebook.h5")
    out = model.predict(x.astype(np.float32), verbose=0).astype(np.float64)
    if head is None:
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    return {"model": model, "keras": d / "notebook.keras", "h5": d / "notebook.h5", "paths": paths, "x": x,
            "y_all": y_all, "p_all": out[:, 0], "data": cnmc_dir, "dir": d}


@pytest.fixture(scope="module")
def reference(cnmc_dir, tmp_path_factory):
    """The reference model fitted on the C-NMC sample, saved as .keras and .h5; with the notebook-way inputs."""
    return _fitted_reference(cnmc_dir, tmp_path_factory.mktemp("reference"))


def _import(reference, out, **kw):
    from leukedge.train.importer import ImportOptions, import_model

    args = dict(labels=("all", "hem"), positive="all", size=SIZE, resize="nearest", scale="raw",
                data=str(reference["data"]), sample=200)
    args.update(kw)
    src = args.pop("source", reference["keras"])
    return import_model(src, out, ImportOptions(**args))


@pytest.fixture(scope="module")
def imported(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "run"
    return out, _import(reference, out)


def test_reference_head_spreads_so_agreement_is_not_vacuous(reference):
    from leukedge.edge.metrics import auroc

    p = reference["p_all"]
    assert np.percentile(p, 90) - np.percentile(p, 10) > 0.5, p
    assert auroc(reference["y_all"], p) > 0.85


def test_notebook_loader_and_leukedge_nearest_give_identical_pixels(reference):
    from leukedge.edge.preprocess import load_rgb

    for i in range(0, len(reference["paths"]), 13):
        assert np.array_equal(load_rgb(reference["paths"][i], SIZE, "nearest"), reference["x"][i])


def test_import_writes_flat_model_card_split_and_report(reference, imported):
    from leukedge.edge.card import load_card_for_model
    from leukedge.edge.files import sha256_file
    from leukedge.tfcompat import load_keras_model

    out, res = imported
    card = load_card_for_model(out / "model.keras")
    assert card.labels == ["all", "hem"] and card.positive_label == "all" and card.positive_index == 0
    assert card.threshold == 0.5 and card.preprocessing.resize == "nearest"
    assert card.preprocessing.mean == (0.0,) * 3 and card.preprocessing.std == (1.0,) * 3
    imp = card.provenance["imported"]
    assert imp["source"]["sha256"] == sha256_file(reference["keras"]) and imp["training_images"] == "unknown"
    assert imp["keras"]["flavour"] == "tf-keras" and imp["preprocessing_verified"] is True
    assert any("flattened" in s for s in imp["surgery"])
    assert (out / "split.json").exists() and (out / "import-report.md").exists()
    # how the training cells look, measured on --data (C-NMC: one cell masked on black, 450x450, scale unknown)
    assert card.cells["style"] == "masked" and card.cells["canvas_px"] == 450 and card.cells["um_per_px"] is None
    assert 150 < card.cells["diameter_px"] < 300
    assert "may have been trained on" in card.metrics["validation"]["note"]
    report = json.loads((out / "import-report.json").read_text())
    assert report["check"]["declared"]["auroc"] > 0.85 and len(report["check"]["candidates"]) >= 8
    flat = load_keras_model(out / "model.keras")
    assert not any(hasattr(layer, "layers") for layer in flat.layers)  # no nested model left
    p = flat.predict(reference["x"].astype(np.float32), verbose=0)[:, 0]
    assert np.max(np.abs(p - reference["p_all"])) < 1e-6


def test_h5_imports_the_same(reference, tmp_path):
    res = _import(reference, tmp_path / "h5", source=reference["h5"])
    assert res["check"]["verified"] and res["card"]["provenance"]["imported"]["keras"]["flavour"] == "h5"


def _keras3_reference(reference, extra_layer=None):
    """The reference architecture built in Keras 3 (the `keras` package), with the fitted tf-keras weights."""
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3"):
        pytest.skip("Keras 3 not installed")
    L, reg = keras.layers, keras.regularizers
    backbone = _backbone(keras, SIZE)
    head = [L.BatchNormalization(), L.Dense(32, activation="relu", kernel_regularizer=reg.l2(0.016),
                                            activity_regularizer=reg.l1(0.006), bias_regularizer=reg.l1(0.006)),
            L.Dropout(0.5), L.Dense(2, activation="softmax")]
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), backbone, *([extra_layer] if extra_layer else []), *head])
    weights = reference["model"].get_weights()
    n = len(backbone.get_weights())
    model.set_weights(weights[:n] + (extra_layer.get_weights() if extra_layer else []) + weights[n:])
    return keras, model


def test_keras3_file_is_rebuilt_in_tf_keras_with_outputs_checked(reference, tmp_path):
    keras, model = _keras3_reference(reference)
    model.save(tmp_path / "k3.keras")
    res = _import(reference, tmp_path / "k3run", source=tmp_path / "k3.keras")
    assert res["check"]["verified"]
    assert res["card"]["provenance"]["imported"]["keras"]["flavour"] == "keras3"
    from leukedge.tfcompat import load_keras_model

    flat = load_keras_model(tmp_path / "k3run" / "model.keras")
    x = reference["x"][:8].astype(np.float32)
    assert np.max(np.abs(flat.predict(x, verbose=0) - np.asarray(model(x, training=False)))) < 1e-5


def test_keras3_file_with_a_layer_tf_keras_lacks_is_refused_in_one_line(reference, tmp_path):
    keras = pytest.importorskip("keras")
    _, model = _keras3_reference(reference, keras.layers.RMSNormalization(name="rms") if hasattr(
        keras.layers, "RMSNormalization") else None)
    if not any(layer.name == "rms" for layer in model.layers):
        pytest.skip("this Keras 3 has no RMSNormalization")
    model.save(tmp_path / "k3.keras")
    from leukedge.train.importer import ModelImportError

    with pytest.raises(ModelImportError, match="Keras 3 file .*'rms' is a RMSNormalization, which tf-keras has not"
                       ) as exc:
        _import(reference, tmp_path / "k3bad", source=tmp_path / "k3.keras")
    assert "\n" not in str(exc.value) and "model.h5" in str(exc.value)


@pytest.mark.parametrize("kw, hint", [({"scale": "inception-2015"}, "--scale"),
                                      ({"labels": ("hem", "all")}, "--labels"),
                                      ({"scale": "unit"}, "--scale")])
def test_wrong_declaration_is_refused_in_one_line(reference, tmp_path, kw, hint):
    from leukedge.train.importer import PreprocessingMismatch

    with pytest.raises(PreprocessingMismatch) as exc:
        _import(reference, tmp_path / "bad", **kw)
    msg = str(exc.value)
    assert "\n" not in msg and hint in msg and "AUROC" in msg
    assert not (tmp_path / "bad").exists()  # nothing written


def test_without_data_the_card_is_unverified_and_optimize_refuses(reference, tmp_path):
    from leukedge.optimize.run import OptimizeError, OptimizeOptions, optimize

    _import(reference, tmp_path / "nodata", data="")
    card = json.loads((tmp_path / "nodata" / "model.keras.json").read_text())
    assert card["provenance"]["imported"]["preprocessing_verified"] is False
    assert card["cells"] is None  # nothing to measure the training cells' look on
    with pytest.raises(OptimizeError, match="unverified"):
        optimize(tmp_path / "nodata" / "model.keras", tmp_path / "o", OptimizeOptions(variants=("float32",)))


def test_card_copied_from_a_leukedge_model_is_refused(reference, imported, tmp_path):
    """Issue 11: a leukedge card ([hem, all], (x-128)/128) beside the notebook model, SHA updated, split.json
    copied too: refused before anything is measured."""
    from helpers import make_card
    from leukedge.optimize.run import OptimizeError, OptimizeOptions, optimize

    d = tmp_path / "copied"
    d.mkdir()
    shutil.copy(reference["keras"], d / "model.keras")
    shutil.copy(imported[0] / "split.json", d / "split.json")
    make_card(d / "model.keras", SIZE, "float", "keras", provenance={
        "leukedge_version": "0.x", "architecture": {"backbone": "InceptionV3"}, "split": {}, "data": {}})
    with pytest.raises(OptimizeError, match="copied") as exc:
        optimize(d / "model.keras", tmp_path / "o", OptimizeOptions(variants=("float32",)))
    assert "leukedge import" in str(exc.value)


def test_card_without_provenance_or_split_points_to_import(reference, tmp_path):
    from helpers import make_card
    from leukedge.optimize.run import OptimizeError, OptimizeOptions, optimize

    d = tmp_path / "bare"
    d.mkdir()
    shutil.copy(reference["keras"], d / "model.keras")
    make_card(d / "model.keras", SIZE, "float", "keras", labels=("all", "hem"))
    with pytest.raises(OptimizeError, match="leukedge import"):
        optimize(d / "model.keras", tmp_path / "o", OptimizeOptions(variants=("float32",)))


def _optimize_and_compare(reference, imported, out, variants):
    """Optimize the imported model, then classify every sample file through the device path; returns
    {variant: (max |dP(all)| vs the Keras model, decision agreement with it)}."""
    from leukedge.edge.classifier import Classifier
    from leukedge.optimize.run import OptimizeOptions, optimize

    # keep_threshold: the model's own argmax rule; calibrate off: P(all) must equal the Keras model's
    optimize(imported[0] / "model.keras", out, OptimizeOptions(
        variants=variants, calibration_size=40, prune_steps=12, qat_steps=4, finetune_batch=8, keep_threshold=True,
        calibrate=False, max_f1_drop=1.0, max_recall_drop=1.0))
    keras_all = reference["p_all"] >= 0.5
    found = {}
    for v in variants:
        clf = Classifier.load(out / f"{v}.tflite")
        assert clf.card.labels == ["all", "hem"] and clf.card.positive_label == "all" and clf.threshold == 0.5
        p_all = np.array([clf.predict_one(p).p_all for p in reference["paths"]])  # the device path, from the files
        found[v] = (float(np.max(np.abs(p_all - reference["p_all"]))), float(np.mean((p_all >= 0.5) == keras_all)))
    return found


def test_imported_model_optimizes_classifies_and_benchmarks_by_label_name(reference, imported, tmp_path):
    """float32 within 1e-5 of the Keras model applied the notebook's way; int8 >= 97 % decisions in agreement;
    pruned-int8 builds (activity regularizer dropped, BatchNorm folded, kernels counted) and reaches its
    sparsity; the [all, hem] output order benchmarks correctly.

    pruned-int8's agreement is not asserted here: the stand-in's random backbone features are fragile
    (magnitude-pruning 10 % of its kernels without fine-tune already flips ~4 % of decisions), so its
    agreement measures the stand-in, not the code; it is reported in the failure message of the slow test.
    """
    from leukedge.benchmarks.run import BenchmarkOptions, benchmark

    out = tmp_path / "opt"
    found = _optimize_and_compare(reference, imported, out, ("float32", "int8", "pruned-int8"))
    assert found["float32"][0] <= 1e-5, found
    assert found["int8"][1] >= 0.97, found
    card = json.loads((out / "pruned-int8.tflite.json").read_text())
    pruning = card["optimization"]["pruning"]
    steps = json.dumps(pruning["surgery"])
    assert "folded BatchNormalization" in steps and "activity regularizer" in steps and "flattened" not in steps
    assert pruning["kernels"] == 6 and pruning["overall"] == pytest.approx(0.5, abs=0.02)
    res = benchmark([out / "float32.tflite"], tmp_path / "bench", BenchmarkOptions(repeats=2, cold_start=False))
    val = json.loads((imported[0] / "import-report.json").read_text())["validation"]
    f32 = next(r for r in res["variants"] if r["variant"] == "float32")
    assert res["positive_label"] == "all"
    assert f32["metrics"]["sensitivity"] == pytest.approx(val["sensitivity"])
    assert f32["metrics"]["auroc"] == pytest.approx(val["auroc"], abs=1e-6)


def test_logits_head_twin_keeps_p_all_a_probability_through_import_optimize_and_edge_classify(cnmc_dir, tmp_path):
    """Issue 18: the same notebook model with a logits head (Dense without activation). Import says
    `logits`; every variant's card must say so too (it used to say `probabilities`, so P(all) ranged over
    raw logits and every pruned-int8 cell was labelled all). Through the device: P(all) in [0, 1], and
    decisions as the Keras model's (softmax, argmax) as the softmax twin's are."""
    from leukedge.edge.card import load_card_for_model

    ref = _fitted_reference(cnmc_dir, tmp_path, head=None)
    imported = (tmp_path / "imp", None)
    _import(ref, imported[0])
    assert load_card_for_model(imported[0] / "model.keras").output == "logits"
    variants = ("int8", "pruned-int8", "qat-int8")
    found = _optimize_and_compare(ref, imported, tmp_path / "opt", variants)
    for v in variants:
        card = load_card_for_model(tmp_path / "opt" / f"{v}.tflite")
        assert card.output == "logits" and "logits" in card.requires, v
    # |dP| against the Keras model's probabilities (raw logits would be off by ~1) and >= 97 % of its decisions;
    # pruned-int8 is not held to the parent here: the stand-in's random backbone is fragile under pruning (see
    # test_imported_model_optimizes_classifies_and_benchmarks_by_label_name), so its rows are checked below
    for v in ("int8", "qat-int8"):
        assert found[v][0] < 0.1 and found[v][1] >= 0.97, found
    # the device app: every row's P(all) is a probability and the decision follows it
    r = subprocess.run([sys.executable, "-m", "leukedge.edge.cli", "-m", str(tmp_path / "opt" / "pruned-int8.tflite"),
                        "--format", "json", *map(str, ref["paths"][:12])], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(rows) == 12 and all(0.0 <= row["p_all"] <= 1.0 for row in rows), rows
    assert all(row["label"] == ("all" if row["p_all"] >= 0.5 else "hem") for row in rows), rows


@pytest.mark.slow
def test_imported_model_qat_int8_agrees_with_the_keras_model(reference, imported, tmp_path):
    found = _optimize_and_compare(reference, imported, tmp_path / "opt", ("qat-int8", "pruned-qat-int8"))
    print(f"max |dP(all)|, decision agreement with the Keras model: {found}")
    assert found["qat-int8"][1] >= 0.97, found


# -- surgery ----------------------------------------------------------------------------------------------


def test_surgery_flattens_drops_activity_regularizer_and_folds_batchnorm():
    from leukedge.optimize.surgery import check, is_nested, prepare

    model = reference_model()
    bn = model.layers[1]
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 16), rng.normal(size=16), rng.normal(size=16), rng.uniform(0.1, 2, 16)])
    x = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    for purpose in ("prune", "qat"):
        flat, steps = prepare(model, purpose)
        assert not is_nested(flat) and is_nested(model)  # the input model is left as it was
        assert len(steps) == 4 and "folded" in steps[2]
        assert np.max(np.abs(flat(x).numpy() - model(x).numpy())) < 1e-5
        check(flat, purpose)


def test_surgery_refuses_what_tfmot_cannot_quantize_naming_the_layer():
    from leukedge.optimize.surgery import SurgeryError, check, prepare
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    L = tf.keras.layers
    inp = L.Input((SIZE, SIZE, 3))
    x = L.Conv2D(4, 3)(inp)
    x = L.GlobalAveragePooling2D()(x)
    x = L.BatchNormalization(name="lonely_bn")(x)  # no Dense after it: cannot be folded
    out = L.Activation("softmax")(x)
    with pytest.raises(SurgeryError, match="lonely_bn") as exc:
        prepare(tf.keras.Model(inp, out), "qat")
    assert "\n" not in str(exc.value)
    check(tf.keras.Model(inp, out), "prune")  # pruning has no such limit
    x = L.Rescaling(1 / 255.0, name="rescale")(inp)
    with pytest.raises(SurgeryError, match="rescale"):
        prepare(tf.keras.Model(inp, L.Dense(2)(L.Flatten()(L.Conv2D(2, 3)(x)))), "qat")


def test_check_variants_names_the_variant_and_layer():
    from leukedge.optimize.surgery import SurgeryError, check_variants
    from leukedge.optimize.variants import resolve
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    L = tf.keras.layers
    inp = L.Input((SIZE, SIZE, 3))
    out = L.Dense(2, activation="softmax")(L.Flatten()(L.Conv2D(2, 3)(L.Rescaling(1 / 255.0, name="rescale")(inp))))
    model = tf.keras.Model(inp, out)
    assert check_variants(model, [resolve("float32"), resolve("int8")]) == {}
    assert "prune" in check_variants(model, [resolve("pruned-int8")])
    with pytest.raises(SurgeryError, match="variant qat-int8: layer 'rescale'"):
        check_variants(model, [resolve("pruned-int8"), resolve("qat-int8")])


def test_cli_import_without_data_says_unverified_and_bad_labels_fail_in_one_line(reference, tmp_path):
    from click.testing import CliRunner

    from leukedge.cli import main

    args = ["import", str(reference["keras"]), "--out", str(tmp_path / "cli"), "--positive", "all", "--size",
            str(SIZE), "--resize", "nearest", "--scale", "raw"]
    res = CliRunner().invoke(main, args + ["--labels", "all,hem"])
    assert res.exit_code == 0, res.output
    assert "UNVERIFIED" in res.output and (tmp_path / "cli" / "model.keras.json").exists()
    res = CliRunner().invoke(main, args + ["--labels", "all"])
    assert res.exit_code == 2 and "--labels must name two distinct classes" in res.output
    res = CliRunner().invoke(main, args[:-2] + ["--labels", "all,hem"])  # no scaling declared
    assert res.exit_code == 2 and "--scale" in res.output


def test_sparsity_counts_nested_kernels():
    from leukedge.optimize.prune import kernel_sparsity

    assert len(kernel_sparsity(reference_model())) == 6  # 4 backbone convs + 2 head Dense


@pytest.mark.slow
def test_reference_with_inception_v3_backbone_at_96_px(cnmc_dir, tmp_path):
    """The same path with leukedge's full InceptionV3 backbone (random weights) nested in the Sequential:
    import, then float32 / int8 / pruned-int8 / qat-int8 (flatten of 94 conv blocks, activity regularizer
    dropped, BatchNorm folded) and the device path on every sample file. About 10 minutes on 2 busy cores."""
    from leukedge.train.datasets import read_dataset
    from leukedge.train.importer import ImportOptions, import_model
    from leukedge.train.model import build_inception_v3

    size = 96
    ds = read_dataset(cnmc_dir)
    paths = [s.path for s in ds.labelled]
    y = np.array([0 if ds.labels[s.label] == "all" else 1 for s in ds.labelled])
    x = notebook_images(paths, size)
    backbone = build_inception_v3(size, backbone_only=True)
    model = fit_reference(reference_model(size, backbone=backbone, units=64), x, y, steps=80)
    model.save(tmp_path / "nb.keras")
    res = import_model(tmp_path / "nb.keras", tmp_path / "run", ImportOptions(
        labels=("all", "hem"), positive="all", size=size, resize="nearest", scale="raw", data=str(cnmc_dir)))
    assert res["check"]["verified"]
    from leukedge.optimize.run import OptimizeOptions, optimize

    from leukedge.edge.classifier import Classifier

    variants = ("float32", "int8", "pruned-int8", "qat-int8")
    optimize(tmp_path / "run" / "model.keras", tmp_path / "opt", OptimizeOptions(
        variants=variants, calibration_size=40, prune_steps=12, qat_steps=4, calibrate=False,
        finetune_batch=8, keep_threshold=True, max_f1_drop=1.0, max_recall_drop=1.0))
    p_keras = model.predict(x.astype(np.float32), verbose=0)[:, 0]
    assert np.percentile(p_keras, 90) - np.percentile(p_keras, 10) > 0.5
    found = {}
    for v in variants:
        clf = Classifier.load(tmp_path / "opt" / f"{v}.tflite")
        p = np.array([clf.predict_one(path).p_all for path in paths])
        found[v] = (float(np.max(np.abs(p - p_keras))), float(np.mean((p >= 0.5) == (p_keras >= 0.5))))
    print(f"InceptionV3 backbone, {size} px: max |dP(all)|, agreement with the Keras model: {found}")
    # pruned-int8 / qat-int8 build and run here; their agreement on a random-weight backbone measures how fragile
    # random features are (measured: 0.64 / 0.85 after 12 / 4 fine-tune steps), not the code, so it is not asserted
    assert found["float32"][0] <= 1e-5 and found["int8"][1] >= 0.97, found


def test_verify_card_behaviour_catches_a_wrong_card_on_split_samples(reference, imported):
    """What optimize can run on its validation part for cards not made by import (a copied card)."""
    from leukedge.edge.card import ModelCard
    from leukedge.edge.preprocess import Preprocessing
    from leukedge.train.datasets import read_dataset
    from leukedge.train.importer import PreprocessingMismatch, verify_card_behaviour

    ds = read_dataset(reference["data"])
    good = ModelCard(labels=["all", "hem"], positive_label="all", model_file="m.keras", model_format="keras",
                     preprocessing=Preprocessing(size=SIZE, resize="nearest", mean=(0.0,) * 3, std=(1.0,) * 3))
    assert verify_card_behaviour(reference["model"], good, ds.labelled, ds.labels)["verified"]
    copied = ModelCard(labels=["hem", "all"], positive_label="all", model_file="m.keras", model_format="keras",
                       preprocessing=Preprocessing(size=SIZE, resize="bilinear"))
    with pytest.raises(PreprocessingMismatch, match="disagrees with the model's behaviour"):
        verify_card_behaviour(reference["model"], copied, ds.labelled, ds.labels, "m.keras")
