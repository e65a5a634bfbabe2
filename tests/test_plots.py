"""The charts: what each one promises a reader (families, Pareto front, nothing hidden, every line labelled)."""

import itertools
import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from leukedge.reports.benchmark import _fan_out, f1_vs_latency, pareto_front, variant_engine, variant_family  # noqa: E402


def test_families_group_input_sizes_and_channel_widths():
    fam = {n: variant_family({"variant": n}) for n in
           ("int8", "int8@160", "float32", "slim60-int8", "slim80-int8@160", "onnx-int8@128", "pruned-qat-int8")}
    assert fam == {"int8": "int8", "int8@160": "int8", "float32": "float32", "slim60-int8": "slim-int8",
                   "slim80-int8@160": "slim-int8", "onnx-int8@128": "onnx-int8", "pruned-qat-int8": "pruned-qat-int8"}
    assert variant_family({"variant": "x", "family": "mine"}) == "mine"


def test_engines_from_the_runtime_and_format():
    assert variant_engine({"runtime": "ai-edge-litert 2.3.0", "format": "tflite"}) == "litert"
    assert variant_engine({"runtime": "onnxruntime 1.22 TensorrtExecutionProvider", "format": "onnx"}) == "tensorrt"
    assert variant_engine({"runtime": "onnxruntime 1.22 CPUExecutionProvider", "format": "onnx"}) == "onnxruntime"
    assert variant_engine({"runtime": "tensorflow", "format": "keras"}) == "keras"
    assert variant_engine({"runtime": "openvino 2025.1", "format": "openvino"}) == "openvino"


def test_pareto_front_keeps_what_nothing_beats_on_both_axes():
    pts = [(10, 0.90), (5, 0.85), (20, 0.95), (12, 0.88), (5, 0.80), (30, 0.95)]
    assert pareto_front(pts) == [1, 0, 2]


def test_fanned_out_markers_never_cover_each_other():
    pts = [(100.0, 100.0), (101.0, 100.5), (100.5, 99.0), (300.0, 50.0), (102.0, 101.0), (300.0, 51.0)]
    shown = _fan_out(pts, min_px=20.0)
    for a, b in itertools.combinations(shown, 2):
        assert math.dist(a, b) >= 20.0 - 1e-6
    assert shown[3] != pts[3]  # the pair at 300 moved too
    far = _fan_out([(0.0, 0.0), (100.0, 0.0)], min_px=20.0)
    assert far == [(0.0, 0.0), (100.0, 0.0)]  # nothing to move


def _row(name, ms, f1, runtime="ai-edge-litert 2.3.0", fmt="tflite", interval=True):
    row = {"variant": name, "runtime": runtime, "format": fmt, "size_bytes": 23e6,
           "latency": {"all_cores": {"p50": ms, "threads": 2}}, "metrics": {"f1_positive": f1}}
    if interval:
        row["intervals"] = {"f1_positive": {"low": f1 - 0.02, "high": min(1.0, f1 + 0.02)}}
    return row


def test_f1_vs_latency_draws_many_families_and_a_perfect_set(tmp_path):
    rows = [_row("float32", 42, 0.96), _row("float16", 41.5, 0.96), _row("int8", 9, 0.958),
            _row("int8@160", 5, 0.965), _row("int8@128", 3.4, 0.95), _row("slim60-int8", 6.2, 0.95),
            _row("slim60-int8@160", 3.4, 0.94, interval=False),
            _row("onnx-int8", 12, 0.958, "onnxruntime 1.22 TensorrtExecutionProvider", "onnx")]
    results = {"variants": rows, "positive_label": "all", "data": {"images": 40, "part": "test"},
               "machine": {"cpu": "Test CPU"}, "settings": {"all_cores_threads": 2}}
    out = f1_vs_latency(results, tmp_path / "f1.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    for r in rows:
        r["metrics"]["f1_positive"] = 1.0
    assert f1_vs_latency(results, tmp_path / "perfect.png").stat().st_size > 0


def test_reliability_small_multiples_one_panel_per_model(tmp_path):
    from matplotlib import pyplot as plt

    from leukedge import reports

    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.6).astype(int)
    p = np.clip(y * 0.6 + rng.random(200) * 0.4, 0, 1)
    curves = {}
    for v in ("float32", "int8", "int8@160", "pruned-int8", "qat-int8"):
        curves[f"{v} T=1"] = (y, p)
        curves[f"{v} T=1.20"] = (y, p ** 1.2)
    seen = []
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        seen.append([ax.get_title() for ax in fig.axes if ax.get_title()])
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        reports.plot_reliability(tmp_path / "r.png", curves)
    finally:
        plt.Figure.savefig = real_savefig
    assert seen == [["float32", "int8", "int8@160", "pruned-int8", "qat-int8"]]


def test_training_curves_label_every_line_and_the_confusion_matrix_is_legible(tmp_path):
    from matplotlib import pyplot as plt

    from leukedge.reports.train import train_plots

    history = [{"epoch": 1, "stage": "head", "loss": 0.9, "val_loss": 0.8, "val_f1_pos": 0.7, "val_recall_pos": 0.8},
               {"epoch": 2, "stage": "finetune", "loss": 0.5, "val_loss": 0.6, "val_f1_pos": 0.8, "val_recall_pos": 0.9}]
    figures = []
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        figures.append(fig)
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        written = train_plots(tmp_path, history, {"confusion_matrix": [[9, 1], [2, 30]], "threshold": 0.5},
                              ["hem", "all"])
    finally:
        plt.Figure.savefig = real_savefig
    assert written == ["training_curves.png", "confusion_matrix.png"]
    for ax in figures[0].axes:
        lines = [ln for ln in ax.get_lines()]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(legend) == len(lines) and "fine-tuning starts" in legend
    cells = {t.get_text(): t.get_color() for t in figures[1].axes[0].texts}
    assert cells["30\n94 %"] == "white" and cells["1\n10 %"] == "black"  # dark cell: white digits, light: black
