import json
import shutil
import subprocess
import sys

import pytest

from leukedge.benchmarks.run import SCHEMA_VERSION, BenchmarkError, BenchmarkOptions, benchmark
from leukedge.optimize.run import OptimizeOptions, optimize

from test_optimize import parent  # noqa: F401 - the tiny leukedge parent model fixture

QUICK = BenchmarkOptions(repeats=5, warmup=1, cold_start_runs=1)


@pytest.fixture(scope="module")
def optimized(parent, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("bopt") / "opt"
    optimize(parent, out, OptimizeOptions(variants=("float32", "int8"), calibration_size=24,
                                          max_f1_drop=1.0, max_recall_drop=1.0))
    return out


@pytest.fixture(scope="module")
def results(parent, optimized, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("bench") / "b"
    return out, benchmark([parent, optimized], out, QUICK)


def test_results_report_and_plot(results):
    out, res = results
    assert res["schema_version"] == SCHEMA_VERSION
    assert [r["variant"] for r in res["variants"]] == ["keras-float", "float32", "int8"]
    for r in res["variants"]:
        m = r["metrics"]
        for key in ("f1_positive", "f1_negative", "macro_f1", "weighted_f1", "sensitivity", "specificity", "accuracy", "auroc"):
            assert m[key] is not None and 0.0 <= m[key] <= 1.0, key
        assert r["latency"]["all_cores"]["p50"] > 0 and r["size_bytes"] > 0 and r["gzip_bytes"] > 0
        assert 0.0 <= r["agreement_with_float"] <= 1.0
    f32 = res["variants"][1]
    assert f32["max_abs_delta_p_vs_float"] < 1e-5 and f32["latency"]["1_thread"]["threads"] == 1
    assert f32["cold_start_s"] > 0 and 10 < f32["peak_rss_mib"] < 1000  # the device process alone, not its parent
    assert res["machine"]["cores"] and "ai-edge-litert" in res["machine"]["tflite_runtime"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["variants"][2]["variant"] == "int8"
    assert "| int8 |" in (out / "report.md").read_text()
    assert (out / "f1_vs_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_baseline_regressions_and_schema(results, parent, optimized, tmp_path):  # noqa: F811
    out, res = results
    worse = json.loads((out / "results.json").read_text())
    # a baseline where int8 scored 0.1 higher: today's int8 is a regression
    worse["variants"][2]["metrics"]["f1_positive"] = res["variants"][2]["metrics"]["f1_positive"] + 0.1
    base = tmp_path / "base.json"
    base.write_text(json.dumps(worse))
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "benchmark", str(optimized), "--out", str(tmp_path / "b2"),
                        "--baseline", str(base), "--fail-on-regression", "--repeats", "3", "--no-cold-start"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-1500:]
    assert "REGRESSION int8: F1" in (tmp_path / "b2" / "report.md").read_text()
    worse["schema_version"] = SCHEMA_VERSION + 1
    base.write_text(json.dumps(worse))
    with pytest.raises(BenchmarkError, match="schema version"):
        benchmark([optimized], tmp_path / "b3", QUICK, baseline=str(base))
    assert not (tmp_path / "b3").exists()


def test_bad_inputs(parent, optimized, tmp_path, tiny_models):  # noqa: F811
    with pytest.raises(BenchmarkError, match="no models"):
        benchmark([], tmp_path / "o", QUICK)
    lonely = tmp_path / "lonely.tflite"
    shutil.copy(optimized / "int8.tflite", lonely)
    with pytest.raises(BenchmarkError, match="model card not found"):
        benchmark([lonely], tmp_path / "o", QUICK)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(optimized / "int8.tflite", other / "int8.tflite")
    card = json.loads((optimized / "int8.tflite.json").read_text())
    card["labels"], card["positive_label"] = ["neutrophil", "ig"], "ig"
    (other / "int8.tflite.json").write_text(json.dumps(card))
    with pytest.raises(BenchmarkError, match="different labels"):
        benchmark([optimized / "float32.tflite", other / "int8.tflite"], tmp_path / "o", QUICK)
    assert not (tmp_path / "o").exists()


def test_report_says_which_part_and_where_thresholds_were_chosen(results):
    out, res = results
    text = (out / "report.md").read_text()
    assert res["data"]["part"] == "validation" and res["data"]["threshold_chosen_on"] == "validation"
    assert "**validation** images" in text and "optimistic" in text
