"""Golden set (workstation) and device self-test, on the tiny float32 and int8 TFLite models."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leukedge.edge.classifier import Classifier
from leukedge.edge.selftest import golden_path_for, load_golden, output_quantization, self_test
from leukedge.optimize.golden import GoldenError, make_golden


def _copy_model(src: Path, dest_dir: Path) -> Path:
    """The model and every card-like file beside it (`int8.json`, `int8.tflite.json`) into dest_dir."""
    for f in src.parent.glob(f"{src.stem}.*"):
        shutil.copy2(f, dest_dir / f.name)
    return dest_dir / src.name


@pytest.fixture(params=["float32", "int8"])
def golden_model(request, tiny_models, tmp_path):
    """(classifier, golden entry) for a private copy of a tiny model, its golden set made."""
    path = _copy_model(tiny_models[request.param], tmp_path)
    clf = Classifier.load(path)
    entry = make_golden(clf, n=12, seed=3)
    clf.card.golden = entry  # the card field (schema 2); plain attribute until then
    return clf, entry


def _rewrite(path: Path, **arrays) -> str:
    """Rewrite some arrays of a golden .npz; returns the new file's SHA-256."""
    with np.load(path, allow_pickle=False) as z:
        content = {k: z[k] for k in z.files}
    content.update(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **content)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_golden_set_spans_both_classes_with_margin_and_passes(golden_model):
    clf, entry = golden_model
    path = golden_path_for(clf.model_path)
    assert entry["file"] == path.name and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    meta, inputs, outputs, p = load_golden(path, entry["sha256"])
    assert entry["n"] == len(inputs) == 12
    assert inputs.dtype == np.dtype(clf.backend.input_dtype)
    assert entry["positives"] >= 1 and entry["negatives"] >= 1
    thr = entry["threshold"]
    assert np.all(np.abs(p - thr) >= entry["margin"] - 1e-6)
    assert entry["margin"] >= 3 * entry["tolerance"]["max_abs_delta"]
    assert np.array_equal(outputs[:, clf.card.positive_index], p)  # a probability-output model: output = P
    kind, scale = output_quantization(clf)
    assert entry["output_kind"] == kind and meta["output_kind"] == kind
    if kind == "integer":
        assert entry["tolerance"]["max_abs_delta"] == pytest.approx(2 * scale)
    else:
        assert entry["tolerance"]["max_abs_delta"] == pytest.approx(1e-4)
    assert all(not s.startswith("/") for s in meta["sources"])  # descriptions, never file paths
    rep = self_test(clf)
    assert rep.ok, rep.message
    assert rep.n == 12 and rep.agreement == 1.0 and rep.max_abs_delta_p <= rep.tolerance
    assert "12/12 decisions agree" in rep.message and "\n" not in rep.message


def test_golden_set_is_reproducible_from_the_seed(golden_model, tmp_path):
    clf, entry = golden_model
    again = make_golden(clf, tmp_path / "again.npz", n=12, seed=3)
    a = np.load(golden_path_for(clf.model_path))["inputs"]
    b = np.load(tmp_path / "again.npz")["inputs"]
    assert np.array_equal(a, b)
    other = make_golden(clf, tmp_path / "other.npz", n=12, seed=4)
    assert not np.array_equal(a, np.load(tmp_path / "other.npz")["inputs"])
    assert again["n"] == other["n"] == 12


def test_tampered_golden_file_is_refused(golden_model):
    clf, _ = golden_model
    path = golden_path_for(clf.model_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    rep = self_test(clf)
    assert not rep.ok and "SHA-256" in rep.message and path.name in rep.message


def test_outputs_beyond_tolerance_fail_and_within_pass(golden_model):
    clf, entry = golden_model
    path = golden_path_for(clf.model_path)
    pos = clf.card.positive_index
    with np.load(path) as z:
        out, p = z["outputs"].copy(), z["p_positive"].copy()
    tol = entry["tolerance"]["max_abs_delta"]
    # every output moved just inside the tolerance, away from the threshold: still a pass
    shift = (np.where(p >= entry["threshold"], 1.0, -1.0) * 0.9 * tol).astype(np.float32)
    signs = np.where(np.arange(out.shape[1]) == pos, 1.0, -1.0).astype(np.float32)
    entry["sha256"] = _rewrite(path, outputs=out + shift[:, None] * signs, p_positive=p + shift)
    rep = self_test(clf)
    assert rep.ok, rep.message
    assert rep.max_abs_delta_output == pytest.approx(0.9 * tol, rel=1e-3)
    # one output moved by 1.5x the tolerance: fails although every decision still agrees
    o2, p2 = out.copy(), p.copy()
    d = np.float32(1.5 * tol) * (1 if p2[0] >= entry["threshold"] else -1)
    o2[0, pos] += d
    p2[0] += d
    entry["sha256"] = _rewrite(path, outputs=o2, p_positive=p2)
    rep = self_test(clf)
    assert not rep.ok and rep.agreement == 1.0 and rep.max_abs_delta_output > rep.tolerance
    assert "max output delta" in rep.message
    if entry["output_kind"] == "integer":
        assert rep.max_delta_steps == pytest.approx(3.0, abs=0.01)


def test_flipped_decision_fails(golden_model):
    clf, entry = golden_model
    path = golden_path_for(clf.model_path)
    with np.load(path) as z:
        p = z["p_positive"].copy()
    thr = entry["threshold"]
    p[1] = thr - 0.2 if p[1] >= thr else min(1.0, thr + 0.2)
    entry["sha256"] = _rewrite(path, p_positive=p.astype(np.float32))
    rep = self_test(clf)
    assert not rep.ok and rep.agreement == pytest.approx(1 - 1 / 12)
    assert rep.max_abs_delta_output <= rep.tolerance  # the outputs agree; the decision does not


def test_missing_golden_set_is_reported(golden_model):
    clf, _ = golden_model
    golden_path_for(clf.model_path).unlink()
    rep = self_test(clf)
    assert not rep.ok and "not found" in rep.message
    clf.card.golden = None
    rep = self_test(clf)
    assert not rep.ok and "no golden set" in rep.message


def test_golden_set_of_another_model_is_refused(tiny_models, tmp_path):
    f32 = Classifier.load(_copy_model(tiny_models["float32"], tmp_path))
    i8 = Classifier.load(_copy_model(tiny_models["int8"], tmp_path))
    entry = make_golden(f32, n=4)
    rep = self_test(i8, golden=dict(entry, file=Path(entry["file"]).name))
    assert not rep.ok and "different model" in rep.message


def test_golden_survives_a_card_round_trip(tiny_models, tmp_path):
    from leukedge.edge.card import ModelCard

    if "golden" not in ModelCard.__dataclass_fields__:
        pytest.skip("ModelCard has no 'golden' field yet (card schema 2)")
    from leukedge.edge.card import card_path_for

    path = _copy_model(tiny_models["int8"], tmp_path)
    clf = Classifier.load(path)
    clf.card.golden = make_golden(clf, n=6)
    clf.card.save(card_path_for(path))
    rep = self_test(Classifier.load(path))
    assert rep.ok, rep.message


def test_too_small_golden_set_is_an_error(golden_model, tmp_path):
    clf, _ = golden_model
    with pytest.raises(GoldenError, match="n >= 2"):
        make_golden(clf, tmp_path / "g.npz", n=1)


def test_golden_meta_is_json_without_pickles(golden_model):
    clf, _ = golden_model
    with np.load(golden_path_for(clf.model_path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][()]))
    assert meta["schema"] == "leukedge.golden" and meta["model_sha256"] == clf.card.model_sha256


def test_renamed_model_finds_its_renamed_golden_set(golden_model, tmp_path):
    """A model copied as good.tflite with good.tflite.json and good.tflite.golden.npz: the card still names
    the original golden file, the self-test finds the renamed one beside the model and checks its hash."""
    clf, entry = golden_model
    other = tmp_path / "renamed"
    other.mkdir()
    model = other / ("good" + clf.model_path.suffix)
    shutil.copy2(clf.model_path, model)
    shutil.copy2(golden_path_for(clf.model_path), golden_path_for(model))
    moved = Classifier(model, clf.card)
    rep = self_test(moved, golden=entry)
    assert rep.ok, rep.message
    golden_path_for(model).write_bytes(b"not the golden set")
    rep = self_test(moved, golden=entry)
    assert not rep.ok and "good" in rep.message
