"""OpenVINO beside LiteRT and ONNX Runtime (issue 22), on a tiny real model.

The CPU int8 variant is one QDQ .onnx (optimize.onnx_export.quantize_qdq_cpu); OpenVINO and ONNX
Runtime both run it. Covered here: OpenVINO's decisions equal LiteRT int8's on the same cells
within the optimize gate's budgets, the backend interface and header facts, a bad model file is one
line (exit 2 at the command line), the model cache, the engine option, the lazy import (a LiteRT
run never imports openvino), the throughput layout keeping the engine, the chooser, the machine record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import make_card

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

from leukedge.edge.decision import decide  # noqa: E402
from leukedge.edge.engines import open_backend  # noqa: E402
from leukedge.edge.runtime import ModelError  # noqa: E402
from leukedge.edge.runtime_openvino import open_openvino  # noqa: E402
from leukedge.optimize.onnx_export import export_onnx, quantize_qdq_cpu  # noqa: E402
from leukedge.optimize.run import OptimizeOptions  # noqa: E402

SIZE = 64
BUDGETS = OptimizeOptions()  # the gate's default budgets: max_f1_drop, max_recall_drop


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test's OpenVINO cache lives in pytest's temp tree, never in the user's ~/.cache."""
    monkeypatch.setenv("LEUKEDGE_OPENVINO_CACHE", str(tmp_path_factory.getbasetemp() / "ov-cache"))


@pytest.fixture(scope="module")
def cpu_int8(tiny_models, synth_arrays, tmp_path_factory):
    """The tiny model as the CPU int8 variant: a QDQ .onnx with its card and golden set (made on ONNX Runtime)."""
    from leukedge.edge.classifier import Classifier
    from leukedge.optimize.golden import make_golden

    x, _, _ = synth_arrays
    d = tmp_path_factory.mktemp("cpu-int8")
    f32 = d / "float.onnx"
    export_onnx(tiny_models["keras_model"], f32)
    q8 = d / "onnx-cpu-int8.onnx"
    recipe = quantize_qdq_cpu(f32, q8, x[:24])
    f32.unlink()
    card = make_card(q8, SIZE, "onnx-cpu-int8", "onnx")
    card.onnx = {"quantization": recipe}
    card.verdict = {"status": "pass", "reasons": []}
    card.golden = make_golden(Classifier(q8, card, threads=1))
    from leukedge.edge.card import card_path_for

    card.save(card_path_for(q8))
    return {"path": q8, "recipe": recipe, "dir": d}


def _p_positive(backend, xs, positive=1, quantize=None):
    out = []
    for x in xs:
        t = x[None].astype(np.float32)
        if quantize is not None:
            t = quantize(t)
        y = np.asarray(backend.run(t), dtype=np.float32)
        if y.dtype != np.float32 or backend.output_dtype != np.float32:
            scale, zero = backend.output_quantization
            y = (y.astype(np.float32) - zero) * scale
        out.append(float(y[positive]))
    return np.array(out)


def _f1_and_recall(y, decisions):
    tp = int(np.sum(decisions & (y == 1)))
    fp = int(np.sum(decisions & (y == 0)))
    fn = int(np.sum(~decisions & (y == 1)))
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return f1, tp / max(1, tp + fn)


# -- the variant --------------------------------------------------------------------------------------


def test_cpu_recipe_is_uint8_activations_and_per_channel_int8_weights(cpu_int8):
    r = cpu_int8["recipe"]
    assert r["activations"]["type"] == "uint8" and r["weights"]["type"] == "int8" and r["reduce_range"] is True
    assert r["weights"]["granularity"] == "per-channel" and r["engines"] == ["onnxruntime", "openvino"]
    m = onnx.load(str(cpu_int8["path"]))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # activations: uint8 with a zero point from the calibrated range (not symmetric, unlike the TensorRT recipe)
    act_zps = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert act_zps and all(z.dtype == np.uint8 for z in act_zps) and any(int(z) != 0 for z in act_zps)
    # weights: stored as int8 with one scale per output channel, 7-bit range (reduce_range)
    wq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
          and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]
    assert wq, "no int8 convolution weights"
    for n in wq:
        w, scale = inits[n.input[0]], inits[n.input[1]]
        assert scale.shape == (w.shape[0],) and int(np.abs(w.astype(int)).max()) <= 64
    assert {"Conv", "MaxPool"} <= set(r["quantized_op_types"])


def test_registry_row_builds_the_cpu_variant():
    import leukedge.optimize.run  # noqa: F401 - registers the builders
    from leukedge.optimize import variants

    v = variants.resolve("onnx-cpu-int8")
    assert v.format == "onnx" and v.needs_calibration and v.integer and v.builder in variants.BUILDERS
    assert "OpenVINO" in v.runtime and "ONNX Runtime" in v.runtime


# -- OpenVINO against LiteRT and ONNX Runtime on the same cells --------------------------------------


def test_openvino_decisions_equal_litert_int8_within_the_gate_budget(tiny_models, synth_arrays, cpu_int8):
    """Both int8 variants are gated against the float parent; on the same cells OpenVINO must (a) pass that gate
    (F1 and sensitivity drops within the default budgets) and (b) decide exactly as LiteRT int8 on every cell
    that LiteRT does not put within 2 of its own output steps of the threshold (the self-test's integer rule:
    closer than that, two correct int8 implementations may round to either side)."""
    from leukedge.edge.preprocess import quantize
    from leukedge.edge.runtime_tflite import TFLiteBackend

    x, y, _ = synth_arrays
    ovb = open_openvino(cpu_int8["path"], threads=1)
    lite = TFLiteBackend(tiny_models["int8"], threads=1)
    q = lite.input_quantization
    p_ov = _p_positive(ovb, x)
    p_lite = _p_positive(lite, x, quantize=lambda t: quantize(t, q[0], q[1], lite.input_dtype))
    p_parent = tiny_models["keras_model"].predict(x, verbose=0)[:, 1]
    d_ov, d_lite, d_parent = (np.asarray(decide(p, 0.5)) for p in (p_ov, p_lite, p_parent))
    f1_ov, rec_ov = _f1_and_recall(y, d_ov)
    f1_parent, rec_parent = _f1_and_recall(y, d_parent)
    assert f1_parent - f1_ov <= BUDGETS.max_f1_drop + 1e-9, (f1_ov, f1_parent)
    assert rec_parent - rec_ov <= BUDGETS.max_recall_drop + 1e-9, (rec_ov, rec_parent)
    step = float(lite.output_quantization[0])
    assert 0 < step < 0.01  # an integer output: its steps define "close to the threshold"
    clear = np.abs(p_lite - 0.5) > 2 * step
    assert clear.mean() >= 0.9, "too many cells at the threshold for the comparison to mean anything"
    assert np.array_equal(d_ov[clear], d_lite[clear]), np.flatnonzero(d_ov != d_lite)
    assert np.abs(p_ov - p_lite).max() < 0.05


def test_openvino_and_onnxruntime_run_the_same_qdq_file_alike(synth_arrays, cpu_int8):
    from leukedge.edge.runtime_onnx import open_onnx

    x, _, _ = synth_arrays
    p_ov = _p_positive(open_openvino(cpu_int8["path"], threads=1), x)
    p_ort = _p_positive(open_onnx(cpu_int8["path"], threads=1, providers=["cpu"]), x)
    assert np.array_equal(np.asarray(decide(p_ov, 0.5)), np.asarray(decide(p_ort, 0.5)))
    assert np.abs(p_ov - p_ort).max() < 0.05


def test_backend_interface_and_header_facts(cpu_int8):
    b = open_openvino(cpu_int8["path"], threads=1)
    assert b.runtime_name == "openvino" and ov.__version__.startswith(b.runtime_version)
    assert b.detail.startswith("CPU") and b.threads == 1
    assert b.input_shape == (1, SIZE, SIZE, 3) and b.input_dtype == np.float32 and b.output_dtype == np.float32
    assert b.input_quantization == (0.0, 0) and b.output_quantization == (0.0, 0) and b.output_size == 2
    y = b.run(np.zeros(b.input_shape, np.float32))
    assert y.shape == (2,) and y.dtype == np.float32


def test_the_classifier_runs_the_card_with_the_openvino_engine_and_its_golden_decisions_hold(cpu_int8):
    from leukedge.edge.load_engine import load_classifier
    from leukedge.edge.selftest import self_test

    clf = load_classifier(cpu_int8["path"], engine="openvino", threads=1)
    assert clf.runtime.name == "openvino"
    rep = self_test(clf)
    # the golden set was measured on ONNX Runtime: same decisions; outputs within int8 rounding, not 1e-4
    assert rep.agreement == 1.0 and rep.max_abs_delta_p < 0.05, rep.message
    default = load_classifier(cpu_int8["path"], threads=1)
    assert default.runtime.name == "onnxruntime"  # no engine named: the format's default, as before


# -- failures: one line ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", b"\x08\x07\x12\x03abc"])
def test_a_bad_model_file_is_one_line_naming_it(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(ModelError) as e:
        open_openvino(bad, threads=1)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "openvino" in msg


def test_a_missing_file_and_a_missing_openvino_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="no such model file"):
        open_openvino(tmp_path / "absent.onnx")
    import importlib

    real = importlib.import_module

    def no_openvino(name, *a, **k):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_openvino)
    with pytest.raises(ModelError, match=r"pip install 'leukedge\[openvino\]'"):
        open_openvino(tmp_path / "absent.onnx")


def test_engine_option_refuses_what_it_cannot_run(tiny_models, cpu_int8):
    assert open_backend(cpu_int8["path"], "onnx", 1, engine="openvino").runtime_name == "openvino"
    assert open_backend(cpu_int8["path"], "onnx", 1, engine="onnxruntime").runtime_name == "onnxruntime"
    with pytest.raises(ModelError, match="does not run tflite"):
        open_backend(tiny_models["int8"], "tflite", 1, engine="openvino")
    with pytest.raises(ModelError, match="unknown engine"):
        open_backend(cpu_int8["path"], "onnx", 1, engine="tensorflow")


def test_chooser_command_line_on_a_bad_model_is_one_line_and_exit_2(tmp_path, synth_arrays):
    _, _, paths = synth_arrays
    bad = tmp_path / "models" / "broken.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"garbage")
    make_card(bad, SIZE, "onnx-cpu-int8", "onnx")
    images = tmp_path / "images"
    images.mkdir()
    for p in paths[:2]:
        shutil.copyfile(p, images / os.path.basename(p))
    r = subprocess.run([sys.executable, "-m", "leukedge.edge.choose", str(bad), str(images), "--engines", "openvino",
                        "-q"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LEUKEDGE_OPENVINO_CACHE": "off"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-choose: error:") and "broken.onnx" in lines[0], r.stderr
    assert "GraphDef" not in r.stderr  # OpenVINO's other frontends' parse errors stay hidden


# -- the model cache ------------------------------------------------------------------------------


def test_model_cache_is_written_once_and_can_be_turned_off(cpu_int8, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LEUKEDGE_OPENVINO_CACHE", str(cache))
    b = open_openvino(cpu_int8["path"], threads=1)
    assert b.cache == cache
    blobs = sorted(p.name for p in cache.iterdir())
    assert blobs, "OpenVINO wrote no cache blob"
    open_openvino(cpu_int8["path"], threads=1)
    assert sorted(p.name for p in cache.iterdir()) == blobs  # the second start reused the blob
    monkeypatch.setenv("LEUKEDGE_OPENVINO_CACHE", "off")
    assert open_openvino(cpu_int8["path"], threads=1).cache is None


def test_an_unwritable_cache_runs_without_it_and_says_so(cpu_int8, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LEUKEDGE_OPENVINO_CACHE", str(blocker / "sub"))
    b = open_openvino(cpu_int8["path"], threads=1)
    assert b.cache is None and any("cache off" in n for n in b.notes)


# -- lazy import -----------------------------------------------------------------------------------


def test_a_litert_run_never_imports_openvino(tiny_models, synth_arrays, cpu_int8):
    _, _, paths = synth_arrays
    probe = textwrap.dedent("""
        import sys, runpy
        model, image, onnx_model = sys.argv[1:4]
        sys.argv = ['edge-classify', '--model', model, '--format', 'json', '-q', image]
        try:
            runpy.run_module('leukedge.edge.cli', run_name='__main__')
        except SystemExit as e:
            code = e.code
        print('EXIT=' + str(code))
        print('OV_AFTER_LITERT=' + str('openvino' in sys.modules))
        from leukedge.edge.load_engine import load_classifier
        load_classifier(onnx_model, engine='openvino', threads=1)
        print('OV_AFTER_OPENVINO=' + str('openvino' in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", probe, str(tiny_models["int8"]), str(paths[0]), str(cpu_int8["path"])],
                         capture_output=True, text=True, timeout=180)
    assert "EXIT=0" in out.stdout, out.stdout + out.stderr
    assert "OV_AFTER_LITERT=False" in out.stdout, out.stdout
    assert "OV_AFTER_OPENVINO=True" in out.stdout, out.stdout + out.stderr  # the probe can see an import


# -- throughput layout -----------------------------------------------------------------------------


def test_throughput_workers_run_the_engine_the_first_one_runs(cpu_int8, synth_arrays):
    from leukedge.edge.load_engine import load_classifier
    from leukedge.edge.throughput import ClassifierPool

    _, _, paths = synth_arrays
    pool = ClassifierPool(load_classifier(cpu_int8["path"], engine="openvino", threads=1), 3, threads=1)
    try:
        runtimes = list(pool.map(lambda clf, f: (clf.runtime.name, clf.predict_one(f).ok), paths[:9]))
    finally:
        pool.close()
    assert {r for r, _ in runtimes} == {"openvino"} and all(ok for _, ok in runtimes)


# -- the chooser -----------------------------------------------------------------------------------


@pytest.fixture()
def choice_folder(tmp_path, tiny_models, cpu_int8, synth_arrays):
    """An optimize-like folder: the CPU int8 .onnx (verdict pass) and the LiteRT int8 (verdict fail), plus images."""
    import shutil

    from leukedge.edge.card import card_path_for, load_card_for_model

    d = tmp_path / "opt"
    d.mkdir()
    for src in (cpu_int8["path"], tiny_models["int8"]):
        shutil.copy(src, d / src.name)
        shutil.copy(card_path_for(src), card_path_for(d / src.name))
        g = src.with_name(src.name + ".golden.npz")
        if g.exists():
            shutil.copy(g, d / g.name)
    lite = load_card_for_model(d / "int8.tflite")
    lite.verdict = {"status": "fail", "reasons": ["F1 drop"]}
    lite.save(card_path_for(d / "int8.tflite"))
    images = tmp_path / "images"
    images.mkdir()
    for p in synth_arrays[2][:6]:
        shutil.copy(p, images / os.path.basename(p))
    return d, images


def test_chooser_times_every_engine_and_picks_only_gated_models(choice_folder):
    from leukedge.edge.choose import CHOICE_FILE, choose, engine_for, pick_from

    d, images = choice_folder
    doc = choose(d, images, rounds=2, threads=1)
    rows = {(r["model"], r["engine"]): r for r in doc["measurements"]}
    assert set(rows) == {("onnx-cpu-int8.onnx", "onnxruntime"), ("onnx-cpu-int8.onnx", "openvino"),
                         ("int8.tflite", "litert")}
    for r in rows.values():
        assert r["bare_ms"] > 0 and r["single_ms"] >= r["bare_ms"] * 0.5 and r["folder_ms"] > 0
    assert doc["machine"]["isa"] and doc["machine"]["threads"] == 1
    written = json.loads((d / CHOICE_FILE).read_text())
    assert written["pick"] == doc["pick"]
    for layout in ("single", "folder"):
        assert doc["pick"][layout]["model"] == "onnx-cpu-int8.onnx"  # int8.tflite failed its gate: never picked
        assert doc["engines"]["int8.tflite"][layout] == "litert"
        fastest = min(("onnxruntime", "openvino"), key=lambda e: rows[("onnx-cpu-int8.onnx", e)][f"{layout}_ms"])
        assert doc["engines"]["onnx-cpu-int8.onnx"][layout] == fastest
        assert engine_for(d / "onnx-cpu-int8.onnx", layout) == (fastest, None)
        pick = pick_from(d, layout)
        assert pick.model == d / "onnx-cpu-int8.onnx" and pick.engine == doc["pick"][layout]["engine"]


def test_a_choice_is_ignored_or_refused_once_the_model_changes(choice_folder):
    from leukedge.edge.card import card_path_for, load_card_for_model
    from leukedge.edge.choose import ChoiceError, choose, engine_for, pick_from

    d, images = choice_folder
    choose(d, images, rounds=1, threads=1, self_test=False)
    m = d / "onnx-cpu-int8.onnx"
    assert engine_for(m, "single")[0] in ("onnxruntime", "openvino")
    model = onnx.load(str(m))
    model.doc_string = "re-optimized"  # another model file under the same name, with a valid card of its own
    onnx.save(model, str(m))
    card = load_card_for_model(m, verify=False)
    card.bind(m)
    card.save(card_path_for(m))
    engine, note = engine_for(m, "single")
    assert engine is None and "changed since it was measured" in note
    with pytest.raises(ChoiceError, match="changed since it was measured"):
        pick_from(d, "single")


def test_openvino_runs_the_qdq_convolutions_as_int8(cpu_int8):
    """What makes the variant fast: OpenVINO's runtime graph runs every convolution in u8/i8, not f32."""
    from leukedge.benchmarks.engines import ov_exec_types

    kinds = ov_exec_types(cpu_int8["path"])
    convs = {k: n for k, n in kinds.items() if k.startswith("Convolution")}
    assert convs and all(k.split()[1] in ("u8", "i8") and k.endswith(("_I8", "_i8")) for k in convs), kinds


def test_under_require_signature_only_signed_models_are_measured_or_picked(choice_folder, tmp_path):
    from leukedge.edge.choose import ChoiceError, choose, pick_from
    from leukedge.edge.signature import generate_keypair, sign_model

    d, images = choice_folder
    priv, pub = tmp_path / "key.pem", tmp_path / "key.pub"
    generate_keypair(priv, pub)
    with pytest.raises(ChoiceError, match="no model could be opened"):
        choose(d, images, rounds=1, threads=1, require_signature=str(pub), self_test=False)
    sign_model(d / "int8.tflite", None, priv)  # signed, but its gate failed
    doc = choose(d, images, rounds=1, threads=1, require_signature=str(pub), self_test=False)
    assert {r["model"] for r in doc["measurements"]} == {"int8.tflite"}
    assert doc["pick"] == {"single": None, "folder": None}
    with pytest.raises(ChoiceError, match="no model passed its gate"):
        pick_from(d, "single", require_signature=str(pub))


# -- the machine record ----------------------------------------------------------------------------

X86_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
"""
PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_machine_record_names_the_instruction_sets_that_decide_int8_speed(monkeypatch):
    from leukedge.edge import machine

    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("OV_CPU_MAX_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    r = machine.machine_record(engine="openvino", engine_version="2026.4.1", threads=2, cpuinfo_text=X86_AVX2)
    assert r["cpu"].startswith("Intel(R) Core(TM) i5-8500") and r["isa"]["avx2"] and not r["isa"]["avx512f"]
    assert not r["isa"]["avx512_vnni"] and not r["isa"]["amx_int8"] and r["isa_summary"] == "AVX2, no VNNI"
    assert r["engine"] == "openvino" and r["threads"] == 2
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "capped: ONEDNN_MAX_CPU_ISA=AVX2" in machine.machine_record(cpuinfo_text=X86_AVX2)["isa_summary"]
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64")
    pi = machine.machine_record(cpuinfo_text=PI4)
    assert pi["cpu"] == "Cortex-A72" and pi["board"].startswith("Raspberry Pi 4")
    assert pi["isa"] == {"neon": True, "dotprod": False, "i8mm": False, "fp16": False, "sve": False, "bf16": False}
    assert pi["isa_summary"] == "NEON, no dotprod, no i8mm"
