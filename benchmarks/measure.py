"""What `leukedge benchmark` measures, apart from the runner (leukedge.benchmarks.run): each measurement
returns a plain dict, so results.json is just those dicts plus the machine.

Latency: warm-up invokes, then `repeats` timed invokes over real preprocessed images, reported as p50/p90/p99
and mean in ms, and images per second. Cold start: a fresh `edge-classify` process, spawn to exit. Peak memory:
that process's max RSS (VmHWM), in MiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from leukedge.edge.classifier import Classifier
from leukedge.edge.errors import LeukedgeError


class BenchmarkError(LeukedgeError, ValueError):
    """A benchmark that cannot run: bad models, split, baseline, or a failing edge-classify (also
    leukedge.benchmarks.run.BenchmarkError)."""


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "images_per_second": float(1000.0 / a.mean())}


def measure_device_latency(model: Path, inputs: np.ndarray, threads: int, repeats: int, warmup: int) -> dict:
    """Single-image inference latency through the device's runtime (LiteRT or ONNX Runtime) at `threads`.

    inputs: float32 model inputs (N, S, S, 3). Returns {"threads", "p50", "p90", "p99", "mean" (ms),
    "images_per_second"} after `warmup` untimed runs."""
    clf = Classifier.load(model, threads=threads, verify=False)
    tensors = [clf.input_tensor_from_float(x) for x in inputs[: max(1, min(len(inputs), repeats))]]
    for i in range(warmup):
        clf.probabilities(tensors[i % len(tensors)])
    ms = []
    for i in range(repeats):
        t = time.perf_counter()
        clf.probabilities(tensors[i % len(tensors)])
        ms.append((time.perf_counter() - t) * 1e3)
    return {"threads": threads, **_percentiles(ms)}


def measure_keras_latency(model, inputs: np.ndarray, repeats: int, warmup: int) -> dict:
    """Single-image latency of a Keras model in TensorFlow (graph mode, TensorFlow's default threads).

    inputs: float32 model inputs (N, S, S, 3). Returns {"threads": "tensorflow default", "p50", "p90", "p99",
    "mean" (ms), "images_per_second"} after max(1, warmup) untimed runs."""
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    call = tf.function(lambda x: model(x, training=False))  # graph mode: what a Keras deployment would run
    for i in range(max(1, warmup)):
        call(inputs[i % len(inputs)][None])
    ms = []
    for i in range(repeats):
        t = time.perf_counter()
        call(inputs[i % len(inputs)][None]).numpy()
        ms.append((time.perf_counter() - t) * 1e3)
    return {"threads": "tensorflow default", **_percentiles(ms)}


# Peak RSS is read from the child's own /proc/self/status (VmHWM) just before it exits.
# ru_maxrss is no use here: on Linux it keeps the high-water mark of the forked parent,
# which in a benchmark process holding TensorFlow is gigabytes.
_HWM_PROBE = (
    "import atexit, runpy, sys\n"
    "def _hwm():\n"
    "    try:\n"
    "        for line in open('/proc/self/status'):\n"
    "            if line.startswith('VmHWM'):\n"
    "                sys.stderr.write('LEUKEDGE_VMHWM_KB=' + line.split()[1] + '\\n')\n"
    "    except OSError:\n"
    "        pass\n"
    "atexit.register(_hwm)\n"
)


def _peak_rss_mib(stderr: str) -> float | None:
    for line in stderr.splitlines():
        if line.startswith("LEUKEDGE_VMHWM_KB="):
            return int(line.split("=", 1)[1]) / 1024.0
    return None


def measure_cold_start(model: Path, image: str, runs: int) -> dict:
    """A fresh `edge-classify` process on one image, `runs` times: wall time spawn->exit (median), and the peak
    RSS of one more such process. Returns {"cold_start_s" (s), "cold_start_runs", "peak_rss_mib" (MiB, None
    when the probe gave none)}. Raises BenchmarkError when edge-classify fails."""
    args = ["--model", str(model), "--quiet", "--format", "json", image]
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "leukedge.edge.cli", *args], capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise BenchmarkError(f"edge-classify failed on {model}: {r.stderr.strip()[-300:]}")
        json.loads(r.stdout.splitlines()[0])
    probe = _HWM_PROBE + f"sys.argv = ['edge-classify', *{args!r}]\nrunpy.run_module('leukedge.edge.cli', run_name='__main__')\n"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return {"cold_start_s": float(np.median(walls)), "cold_start_runs": runs, "peak_rss_mib": _peak_rss_mib(r.stderr)}


def measure_keras_memory(model: Path, image: str) -> float | None:
    """Peak RSS (MiB) of a fresh process that loads the Keras model and classifies one image; None when that
    process fails."""
    code = _HWM_PROBE + (
        "import os; os.environ.setdefault('TF_USE_LEGACY_KERAS','1'); os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','3')\n"
        "from leukedge.tfcompat import tensorflow; tf = tensorflow()\n"
        "from leukedge.edge.card import load_card_for_model; from leukedge.edge.preprocess import preprocess_file\n"
        f"card = load_card_for_model({str(model)!r}); m = tf.keras.models.load_model({str(model)!r}, compile=False)\n"
        f"print(float(m.predict(preprocess_file({image!r}, card.preprocessing)[None], verbose=0)[0, 1]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return _peak_rss_mib(r.stderr) if r.returncode == 0 else None
