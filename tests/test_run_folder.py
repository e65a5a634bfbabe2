"""The run folder is the contract: split.json written by train, read (never re-derived) by optimize and
benchmark; one variant registry; typed step options."""

import json
import shutil

import pytest

from leukedge.edge.card import card_path_for
from leukedge.options import ConfigError, load_options, to_toml
from leukedge.optimize import variants as registry
from leukedge.optimize.run import OptimizeError, OptimizeOptions, optimize
from leukedge.train.splits import DataDriftError, make_split, read_split, write_split


@pytest.fixture()
def run_folder(tiny_models, synth_dir, tmp_path):
    """A private copy of the synthetic dataset and a run folder (model.keras + card + split.json) trained 'on' it."""
    from helpers import make_card
    from leukedge.train.datasets import read_dataset

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_models["keras"], run / "model.keras")
    make_card(run / "model.keras", 64, "float", "keras")
    ds = read_dataset(data)
    write_split(make_split(ds), ds, run / "split.json")
    return data, run


def _spy_on_hashing(monkeypatch):
    """Record every file the project hashes."""
    import leukedge.edge.card as card_mod
    import leukedge.edge.files as files_mod
    import leukedge.train.datasets as ds_mod
    import leukedge.train.splits as splits_mod

    seen = []
    real = files_mod.sha256_file

    def spy(path, *a, **k):
        seen.append(str(path))
        return real(path, *a, **k)

    for mod in (files_mod, ds_mod, card_mod):
        monkeypatch.setattr(mod, "sha256_file", spy)
    monkeypatch.setattr(splits_mod, "_hash", lambda p: seen.append(str(p)) or real(p))
    return seen


def test_optimize_and_benchmark_hash_no_image(run_folder, tmp_path, monkeypatch):
    from leukedge.benchmarks.run import BenchmarkOptions, benchmark

    data, run = run_folder
    seen = _spy_on_hashing(monkeypatch)
    optimize(run / "model.keras", tmp_path / "opt", OptimizeOptions(variants=("float32",), calibration_size=12,
                                                                    max_f1_drop=1.0, max_recall_drop=1.0))
    benchmark([run / "model.keras", tmp_path / "opt"], tmp_path / "bench",
              BenchmarkOptions(repeats=3, warmup=0, cold_start=False))
    assert seen, "the spy saw nothing: model files are hashed for their cards, so it must see those"
    assert not [p for p in seen if str(data) in p], "an image of the dataset was hashed"
    assert (tmp_path / "opt" / "split.json").read_text() == (run / "split.json").read_text()


def test_changed_data_is_an_error_naming_what_changed(run_folder):
    data, run = run_folder
    from helpers import write_image

    write_image(data / "training_data" / "fold_0" / "all" / "UID_99_1_1_all.bmp", fmt="BMP")
    with pytest.raises(DataDriftError, match=r"1 new \(e\.g\. training_data/fold_0/all/UID_99_1_1_all\.bmp\)"):
        read_split(run)
    victim = next(iter((data / "training_data").rglob("*hem*.bmp")))
    victim.unlink()
    with pytest.raises(DataDriftError, match="1 missing") as exc:
        read_split(run)
    assert "--allow-data-drift" in str(exc.value)
    _, split, _ = read_split(run, allow_drift=True)
    assert str(victim) not in {s.path for ss in split.parts.values() for s in ss}


def test_missing_split_file_is_refused(run_folder, tmp_path):
    _, run = run_folder
    (run / "split.json").unlink()
    with pytest.raises(Exception, match="no split.json"):
        optimize(run / "model.keras", tmp_path / "o", OptimizeOptions(variants=("float32",), calibration_size=12))


def test_split_round_trips_parts_labels_and_subjects(run_folder):
    from leukedge.train.datasets import read_dataset

    data, run = run_folder
    ds = read_dataset(data)
    expected = make_split(ds)
    _, got, _ = read_split(run)
    for part in expected.parts:
        assert [(s.path, s.label, s.subject) for s in got.parts[part]] == \
               [(s.path, s.label, s.subject) for s in expected.parts[part]]
    record = json.loads((run / "split.json").read_text())
    assert record["rule"] == expected.rule and record["file_list_sha256"] == expected.file_list_sha256(ds)


def test_a_variant_is_one_registry_row_plus_its_builder(run_folder, tmp_path):
    """A test-only variant: registered, offered by the CLI, built, carded and gated like any other."""
    from leukedge.edge.classifier import Classifier
    from leukedge.optimize.convert import to_tflite

    data, run = run_folder
    calls = []

    def build_copy(ctx, v, path):
        calls.append(v.name)
        path.write_bytes(to_tflite(ctx.model, "float32"))
        return {"note": "test-only"}

    registry.BUILDERS["test-copy"] = build_copy
    registry.register(registry.Variant("float32-copy", "test-copy", "float32", quantization="none (test copy)"))
    try:
        assert "float32-copy" in registry.choices()
        summary = optimize(run / "model.keras", tmp_path / "opt", OptimizeOptions(
            variants=("float32-copy",), calibration_size=12, max_f1_drop=1.0, max_recall_drop=1.0))
        assert calls == ["float32-copy"] and summary["variants"][0]["variant"] == "float32-copy"
        clf = Classifier.load(tmp_path / "opt" / "float32-copy.tflite")
        assert clf.card.quantization["mode"] == "none (test copy)" and clf.card.optimization == {"note": "test-only"}
    finally:
        registry.unregister("float32-copy")
        registry.BUILDERS.pop("test-copy")
    with pytest.raises(OptimizeError, match="unknown variant 'float32-copy'"):
        OptimizeOptions(variants=("float32-copy",)).validate()


@pytest.mark.parametrize("name", list(registry.VARIANTS))
def test_every_registry_row_is_complete(name):
    v = registry.VARIANTS[name]
    import leukedge.optimize.run  # noqa: F401 - registers the builders

    assert v.builder in registry.BUILDERS and v.extension in (".tflite", ".onnx")
    assert v.quantization and v.runtime and v.format in ("tflite", "onnx")
    assert v.integer == v.needs_calibration or v.quantization_aware
    assert registry.resolve(name) is v


def test_input_size_families():
    v = registry.resolve("int8@160")
    assert v.name == "int8@160" and v.input_size == 160 and v.conversion == "int8" and v.base == "int8"
    for bad, needle in (("float16@160", "only int8"), ("int8@12", "75..1024"), ("int9", "unknown variant")):
        with pytest.raises(registry.VariantError, match=needle):
            registry.resolve(bad)


def test_options_are_typed_from_the_dataclass_and_toml_escapes_paths(tmp_path):
    opts = load_options(OptimizeOptions, None, {"variants": "float32, int8@160", "keep_threshold": "yes",
                                                "sparsity": "0.25", "calibration": "C:\\data\\calib \"A\""})
    assert opts.variants == ("float32", "int8@160") and opts.keep_threshold is True and opts.sparsity == 0.25
    text = to_toml({"calibration": opts.calibration, "variants": opts.variants}, "optimize")
    (tmp_path / "o.toml").write_text(text)
    again = load_options(OptimizeOptions, tmp_path / "o.toml", table="optimize")
    assert again.calibration == "C:\\data\\calib \"A\"" and again.variants == ("float32", "int8@160")
    for bad, needle in (({"sparsity": "lots"}, "sparsity"), ({"keep_threshold": "maybe"}, "keep_threshold"),
                        ({"no_such_key": 1}, "unknown config key"), ({"io": "int4"}, "io")):
        with pytest.raises((ConfigError, OptimizeError), match=needle):
            load_options(OptimizeOptions, None, bad)


def test_card_of_a_trained_model_has_its_own_name(run_folder):
    _, run = run_folder
    assert card_path_for(run / "model.keras").name == "model.keras.json"


def test_logit_variants_are_calibrated_without_changing_a_decision(run_folder, tmp_path):
    """Exported variants output logits; the temperature is fitted on validation and the threshold
    re-expressed on the calibrated scale, so every validation decision is the same as at T = 1."""
    import numpy as np

    from leukedge.edge.calibration import p_positive_from_logits
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.decision import decide
    from leukedge.evaluation import load_part
    from leukedge.train.splits import read_split

    data, run = run_folder
    summary = optimize(run / "model.keras", tmp_path / "opt", OptimizeOptions(
        variants=("float32",), calibration_size=12, max_f1_drop=1.0, max_recall_drop=1.0, gate="ci"))
    clf = Classifier.load(tmp_path / "opt" / "float32.tflite")
    card = clf.card
    assert card.output == "logits" and "logits" in card.requires
    T = card.calibration["temperature"]
    assert T > 0 and card.calibration["split"] == "validation" and "ece_after" in card.calibration
    _, split, _ = read_split(run)
    val = load_part(split.parts["validation"], card.preprocessing, "validation")
    z = clf.logits_for_images(val.images)
    before = decide(p_positive_from_logits(z, card.positive_index, 1.0), card.calibration["threshold_uncalibrated"])
    after = decide(clf.p_positive_for_images(val.images), card.threshold)
    assert np.array_equal(before, after)
    iv = card.metrics["validation_intervals"]
    assert iv["sensitivity"]["low"] <= iv["sensitivity"]["value"] <= iv["sensitivity"]["high"]
    assert summary["variants"][0]["f1_drop_ci"] is not None and card.verdict["gate"] == "ci"
    assert (tmp_path / "opt" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # every optimized model ships its golden set, and the device's self-test passes on it
    from leukedge.edge.selftest import self_test

    assert card.golden and (tmp_path / "opt" / card.golden["file"]).exists()
    report = self_test(clf)
    assert report.ok, report.message
