"""Engine benchmark (issue 22), its `path` command: edge-classify's whole path and cold start per engine, on the
models `python -m leukedge.benchmarks.engines build WORK` wrote (no TensorFlow).

    python -m leukedge.benchmarks.engines path WORK IMAGES [--images-n 200] [--cold-runs 7] [--out FILE.json]

Per engine (LiteRT on the .tflite, ONNX Runtime and OpenVINO on onnx-cpu-int8.onnx): edge-classify's cost over
a folder against the decode floor beside it (benchmarks.throughput's measurements, in the throughput layout)
and the cold start of a fresh process (import, load, first image), OpenVINO with an empty and with a warm model
cache.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

PATH_CONFIGS = (("litert", "litert-int8.tflite"), ("onnxruntime", "onnx-cpu-int8.onnx"),
                ("openvino", "onnx-cpu-int8.onnx"))


def whole_path(work: Path, images: Path, n_images: int, seconds: float, repeats: int) -> list[dict]:
    """edge-classify's folder cost against the decode floor, per engine, in the throughput layout (one
    single-threaded engine instance per usable core, edge.throughput.ClassifierPool: what edge-classify
    runs for a folder and what edge-choose's folder figure times).

    Uses benchmarks.throughput's own measurements (bare_invoke_rate, decode_invoke_rate, end_to_end_rate),
    the floor and the full path alternating `repeats` times. Returns one dict per engine: images_per_s,
    decode_invoke_per_s, bare_invoke_per_s, cost_vs_floor = decode_invoke_per_s / images_per_s (issue 22's
    target: <= 1.1).
    """
    from leukedge.edge.engines import installed
    from leukedge.edge.load_engine import load_classifier
    from leukedge.edge.throughput import default_workers

    from .throughput import _images, bare_invoke_rate, decode_invoke_rate, end_to_end_rate

    files = _images(images, n_images)
    workers = default_workers()
    out = []
    for engine, name in PATH_CONFIGS:
        if not installed(engine):
            continue
        clfs = [load_classifier(work / name, engine=engine, threads=1) for _ in range(workers)]
        bare = bare_invoke_rate(clfs, seconds)
        first = clfs[0]
        del clfs[1:]
        e2e, floor = [], []
        for _ in range(repeats):
            floor.append(decode_invoke_rate(first, workers, 1, files))
            e2e.append(end_to_end_rate(first, workers, 1, files))
        e, f = statistics.median(e2e), statistics.median(floor)
        out.append({"engine": engine, "model": name, "workers": workers, "threads_per_worker": 1,
                    "images": len(files), "bare_invoke_per_s": round(bare, 1), "decode_invoke_per_s": round(f, 1),
                    "images_per_s": round(e, 1), "ms_per_image": round(1000 / e, 2),
                    "cost_vs_floor": round(f / e, 3), "cost_vs_bare": round(bare / e, 3)})
        print(f"{engine:12s} {name:22s} bare {bare:6.1f}/s  decode floor {f:6.1f}/s  edge-classify path {e:6.1f}/s  "
              f"cost vs floor {f / e:.3f}", flush=True)
    return out


COLD = """
import sys, time
t0 = time.perf_counter()
from leukedge.edge.load_engine import load_classifier
clf = load_classifier(sys.argv[1], engine=sys.argv[2])
t1 = time.perf_counter()
p = clf.predict_one(sys.argv[3])
assert p.ok, p.error
print(f"{t1 - t0:.4f} {time.perf_counter() - t0:.4f} {int('openvino' in sys.modules)} {int('onnxruntime' in sys.modules)}")
"""


def cold_start(work: Path, image: Path, runs: int) -> list[dict]:
    """Fresh-process cold start per engine, alternating, `runs` each: import + load (+ compile) and one image.

    OpenVINO twice: with an empty model cache every run ("openvino, no cache": a first start) and with a warm
    cache (every later start). Returns one dict per configuration: load_s and first_image_s medians, and
    which engines the process imported (a LiteRT run must import neither openvino nor onnxruntime).
    """
    import shutil
    import subprocess
    import tempfile

    from leukedge.edge.engines import installed

    cache = Path(tempfile.mkdtemp(prefix="leukedge-ov-cache-"))
    configs = [(e, n, "warm") for e, n in PATH_CONFIGS if installed(e)]
    if installed("openvino"):
        configs.append(("openvino", "onnx-cpu-int8.onnx", "cold"))
    samples: dict = {c: [] for c in configs}
    try:
        for _ in range(runs):
            for c in configs:
                engine, name, state = c
                env = dict(os.environ, LEUKEDGE_OPENVINO_CACHE=str(cache))
                if state == "cold":
                    env["LEUKEDGE_OPENVINO_CACHE"] = tempfile.mkdtemp(prefix="leukedge-ov-cold-")
                out = subprocess.run([sys.executable, "-c", COLD, str(work / name), engine, str(image)], env=env,
                                     capture_output=True, text=True, timeout=300)
                if out.returncode != 0:
                    raise SystemExit(f"cold start of {engine} failed: {out.stderr.strip().splitlines()[-1:]}")
                if state == "cold":
                    shutil.rmtree(env["LEUKEDGE_OPENVINO_CACHE"], ignore_errors=True)
                load, first, ov_imported, ort_imported = out.stdout.split()
                samples[c].append((float(load), float(first), ov_imported == "1", ort_imported == "1"))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result = []
    for (engine, name, state), s in samples.items():
        label = engine + (", model cache empty (first start)" if state == "cold" else
                          ", model cache warm" if engine == "openvino" else "")
        result.append({"engine": label, "model": name, "runs": len(s),
                       "load_s": round(statistics.median(v[0] for v in s[1:] or s), 3),
                       "first_image_s": round(statistics.median(v[1] for v in s[1:] or s), 3),
                       "imported_openvino": any(v[2] for v in s), "imported_onnxruntime": any(v[3] for v in s)})
        r = result[-1]
        print(f"{label:45s} load {r['load_s']:.3f} s  first image {r['first_image_s']:.3f} s  "
              f"(openvino imported: {r['imported_openvino']}, onnxruntime imported: {r['imported_onnxruntime']})",
              flush=True)
    return result


def versions() -> dict[str, str]:
    """Installed engine versions (package metadata; nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("ai-edge-litert", "onnxruntime", "openvino"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def path_report(work: Path, images: Path, n_images: int, seconds: float, repeats: int, cold_runs: int) -> dict:
    """The `path` command: prints the machine, then measures whole_path (n_images of `images`, bare invoke rate
    over `seconds` s, `repeats` alternations) and cold_start (`cold_runs` runs on the first image under `images`).
    Returns the report: machine, engine versions, load averages before and after, whole_path, cold_start."""
    from leukedge.edge.machine import machine_line, machine_record

    print(machine_line())
    first_image = next(p for p in sorted(images.rglob("*")) if p.is_file())
    return {"benchmark": "engines-path", "machine": machine_record(), "versions": versions(),
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
            "whole_path": whole_path(work, images, n_images, seconds, repeats),
            "cold_start": cold_start(work, first_image, cold_runs),
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}
