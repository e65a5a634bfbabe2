"""The throughput benchmark runs end to end on a tiny model and reports each layout's figures side by side.

No speed is asserted (speed claims live in the benchmark's output, not in timed tests); what is
checked is that every figure is measured, consistent with the others, and written.
"""

import json

import pytest


def test_throughput_benchmark_reports_floor_and_full_path(tiny_models, synth_arrays, tmp_path, capsys):
    from leukedge.benchmarks import throughput

    from pathlib import Path

    files = [Path(p) for p in synth_arrays[2][:6]]
    images = tmp_path / "imgs"
    images.mkdir()
    for f in files:
        (images / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "tp.json"
    assert throughput.main([str(tiny_models["int8"]), str(images), "--images", "10", "--seconds", "0.2",
                            "--repeats", "1", "--workers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "decode+invoke alone" in printed and "throughput layout / latency layout" in printed
    res = json.loads(out.read_text())
    assert res["images"] == 10 and [r["layout"] for r in res["layouts"]] == ["latency", "throughput"]
    for r in res["layouts"]:
        for key in ("bare_invoke_per_s", "images_per_s", "decode_invoke_per_s"):
            assert r[key] > 0, (r["layout"], key)
        # ratios come from the unrounded rates; the stored rates are rounded to 0.1/s
        assert r["cost_ratio"] == pytest.approx(r["bare_invoke_per_s"] / r["images_per_s"], rel=1e-2)
        assert r["decode_cost_ratio"] == pytest.approx(r["bare_invoke_per_s"] / r["decode_invoke_per_s"], rel=1e-2)
    assert res["layouts"][1]["workers"] == 2 and res["layouts"][1]["threads_per_worker"] == 1
