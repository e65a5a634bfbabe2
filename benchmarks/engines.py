"""Engine benchmark (issue 22): LiteRT int8 against ONNX Runtime and OpenVINO on the same network, side by side.

    python -m leukedge.benchmarks.engines build WORK [--calib-dir DIR] [--calib 64] [--size 224] [--types]
    python -m leukedge.benchmarks.engines time WORK [--rounds 40] [--threads 1 2] [--out FILE.json]
    python -m leukedge.benchmarks.engines path WORK IMAGES [--images-n 200] [--cold-runs 7] [--out FILE.json]

`build` (workstation, TensorFlow) makes an InceptionV3 at --size px with random weights (seed 0) and a
2-class logit head (latency does not depend on weight values), and from it, calibrated on the same
--calib real cell images (evenly spaced through --calib-dir's sorted files, normalized as the card says):
  litert-int8.tflite       what leukedge's `int8` variant is (optimize.convert.to_tflite, int8 I/O)
  onnx-float32.onnx        optimize.onnx_export.export_onnx
  onnx-cpu-int8.onnx       the `onnx-cpu-int8` variant (quantize_qdq_cpu with CPU_TYPES)
  with --types also the other activation/weight types, for choosing CPU_TYPES by measurement:
  qdq-u8s8.onnx (8-bit weights), qdq-s8s8.onnx (int8 activations too)
each with a card, so the device's own Classifier and chooser can open them.

`time` (no TensorFlow) opens every (engine, model, threads) configuration at once and times bare
inference in alternating rounds: every round runs each configuration once, in a new random order,
after a short pause (so an engine's spinning worker threads do not steal the next one's core), so a
passing load spike hits all alike. Medians (and quartiles) over --rounds rounds, in milliseconds.
Configurations:
  leukedge's backends (edge.engines.open_with_engine): LiteRT on the .tflite; ONNX Runtime on float32
  and on each QDQ file; OpenVINO on each QDQ file (and on float32);
  "by hand" on the same files, as a user would call the engine directly: onnxruntime.InferenceSession
  (intra-op threads set, nothing else) and openvino Core.compile_model with the LATENCY hint and the
  thread count, once with OpenVINO's default precision and once with f32 (leukedge's setting).
The report names the machine (edge.machine.machine_record: processor, ISA flags, ISA caps) and each
engine's version; the ratios are LiteRT int8 over each configuration, from the same rounds.

`path` measures, per engine (LiteRT on the .tflite, ONNX Runtime and OpenVINO on onnx-cpu-int8.onnx),
edge-classify's cost over a folder against the decode floor beside it (benchmarks.throughput's measurements,
in the throughput layout) and the cold start of a fresh process (import, load, first image), OpenVINO with
an empty and with a warm model cache (leukedge.benchmarks.engines_path).

Run `time` again under ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 to cap OpenVINO's oneDNN kernels at
AVX2 (what an AVX2-only machine would run); `--ov-exec` records which kernel types OpenVINO picked, which
shows whether the cap took effect. ONNX Runtime (MLAS) and LiteRT (XNNPACK) offer no such cap in their
release builds: their figures stay this processor's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .engines_path import versions

SEED = 0
DEFAULT_CALIB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc-granulocytes"
TYPE_VARIANTS = {  # file stem -> quantize_qdq_cpu keyword arguments
    "onnx-cpu-int8": {},
    "qdq-u8s8": {"activations": "uint8", "weights": "int8", "reduce_range": False},
    "qdq-s8s8": {"activations": "int8", "weights": "int8", "reduce_range": False},
}


# -- build (TensorFlow) ---------------------------------------------------------------------------------


def calibration_images(folder: Path, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    """n uint8 RGB images (n, size, size, 3), evenly spaced through folder's sorted image files, and their paths."""
    from leukedge.edge.app.listing import wanted
    from leukedge.edge.preprocess import load_rgb

    files = sorted(p for p in folder.rglob("*") if p.is_file() and wanted(p.name))
    if len(files) < n:
        raise SystemExit(f"{folder}: {len(files)} images, {n} wanted for calibration")
    chosen = [files[int(i * len(files) / n)] for i in range(n)]
    return np.stack([load_rgb(p, size) for p in chosen]), [str(p) for p in chosen]


def _card(path: Path, size: int, variant: str, fmt: str, onnx: dict | None = None):
    from leukedge.edge.card import ModelCard, card_path_for
    from leukedge.edge.preprocess import Preprocessing

    card = ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=size),
                     model_file=path.name, model_format=fmt, threshold=0.5, variant=variant, output="logits",
                     onnx=onnx, provenance={"benchmark": "random-weight InceptionV3 (latency only)"})
    card.bind(path)
    card.save(card_path_for(path))


def build(work: Path, calib_dir: Path, n_calib: int, size: int, types: bool) -> dict:
    """Write the models described in the module docstring into `work`; returns {stem: seconds to build}."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from leukedge.edge.preprocess import Preprocessing, normalize
    from leukedge.optimize.convert import representative_from, to_tflite
    from leukedge.optimize.onnx_export import export_onnx, quantize_qdq_cpu
    from leukedge.train.model import build_inception_v3
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf.keras.utils.set_random_seed(SEED)
    work.mkdir(parents=True, exist_ok=True)
    model = build_inception_v3(size)
    last = model.layers[-1]
    cfg = last.get_config()
    cfg["activation"] = "linear"  # a logit head, as optimize exports (ctx.logits)
    logits = tf.keras.Model(model.input, last.__class__.from_config(cfg)(last.input))
    logits.layers[-1].set_weights(last.get_weights())
    rgb, files = calibration_images(calib_dir, n_calib, size)
    x = normalize(rgb, Preprocessing(size=size))
    seconds = {}
    t = time.perf_counter()
    tfl = work / "litert-int8.tflite"
    tfl.write_bytes(to_tflite(logits, "int8", representative_from(x), io="int8"))
    _card(tfl, size, "int8", "tflite")
    seconds["litert-int8"] = time.perf_counter() - t
    t = time.perf_counter()
    f32 = work / "onnx-float32.onnx"
    desc = export_onnx(logits, f32)
    _card(f32, size, "onnx-float32", "onnx", desc)
    seconds["onnx-float32"] = time.perf_counter() - t
    for stem, kw in TYPE_VARIANTS.items():
        if stem != "onnx-cpu-int8" and not types:
            continue
        t = time.perf_counter()
        out = work / f"{stem}.onnx"
        recipe = quantize_qdq_cpu(f32, out, x, **kw)
        _card(out, size, stem, "onnx", {**desc, "quantization": recipe})
        seconds[stem] = time.perf_counter() - t
        print(f"built {out.name} in {seconds[stem]:.0f} s", file=sys.stderr, flush=True)
    (work / "calibration.json").write_text(json.dumps({"images": files, "size": size}, indent=1) + "\n")
    return seconds


# -- time (no TensorFlow) -------------------------------------------------------------------------------


class _ByHandOrt:
    """onnxruntime used directly: one InferenceSession with the thread count, run() on a dict."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name = self.s.get_inputs()[0].name

    def run(self, x):
        return self.s.run(None, {self.name: x})[0]


class _ByHandOv:
    """openvino used directly: compile_model with the LATENCY hint and the thread count (precision as given)."""

    def __init__(self, path: Path, threads: int, precision: str | None):
        import openvino as ov

        cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)}
        if precision:
            cfg["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = ov.Core().compile_model(str(path), "CPU", cfg)
        self.req = self.compiled.create_infer_request()

    def run(self, x):
        self.req.infer({0: x})
        return self.req.get_output_tensor(0).data


def _configs(work: Path, threads_list: list[int], with_float_ov: bool) -> list[tuple[str, object]]:
    """[(label, object with run(x))] for every configuration the docstring lists that can be opened here."""
    from leukedge.edge.engines import installed, open_with_engine

    qdq = [p for p in (work / f"{s}.onnx" for s in TYPE_VARIANTS) if p.is_file()]
    out = []
    for t in threads_list:
        out.append((f"litert int8 | litert-int8.tflite | t{t}", open_with_engine(work / "litert-int8.tflite", "tflite",
                                                                                  "litert", t)))
        if installed("onnxruntime"):
            out.append((f"onnxruntime | onnx-float32.onnx | t{t}", open_with_engine(work / "onnx-float32.onnx", "onnx",
                                                                                   "onnxruntime", t)))
            for p in qdq:
                out.append((f"onnxruntime | {p.name} | t{t}", open_with_engine(p, "onnx", "onnxruntime", t)))
            out.append((f"onnxruntime by hand | onnx-cpu-int8.onnx | t{t}", _ByHandOrt(work / "onnx-cpu-int8.onnx", t)))
        if installed("openvino"):
            if with_float_ov:
                out.append((f"openvino | onnx-float32.onnx | t{t}", open_with_engine(work / "onnx-float32.onnx", "onnx",
                                                                                    "openvino", t)))
            for p in qdq:
                out.append((f"openvino | {p.name} | t{t}", open_with_engine(p, "onnx", "openvino", t)))
            out.append((f"openvino by hand (default precision) | onnx-cpu-int8.onnx | t{t}",
                        _ByHandOv(work / "onnx-cpu-int8.onnx", t, None)))
            out.append((f"openvino by hand (f32) | onnx-cpu-int8.onnx | t{t}",
                        _ByHandOv(work / "onnx-cpu-int8.onnx", t, "f32")))
    return out


def ov_exec_types(path: Path, threads: int = 1) -> dict[str, int]:
    """How many layers of each OpenVINO kernel type ("brgconv_avx512_amx_I8", "jit_avx2_I8", ...) the compiled
    model runs, from its runtime graph: shows which ISA OpenVINO dispatched to (and whether a cap took effect)."""
    import collections

    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": str(threads),
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    counts: collections.Counter = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        text = {k: info[k].astype(str) for k in ("layerType", "runtimePrecision", "primitiveType") if k in info}
        if text.get("layerType") in ("Convolution", "FullyConnected", "MatMul"):
            counts[f"{text['layerType']} {text.get('runtimePrecision')} {text.get('primitiveType')}"] += 1
    return dict(counts)


def time_configs(configs: list[tuple[str, object]], x: np.ndarray, rounds: int, pause_s: float = 0.02) -> dict:
    """{label: {"median_ms", "q1_ms", "q3_ms", "min_ms", "runs"}} over `rounds` alternating rounds (see docstring)."""
    rng = random.Random(SEED)
    for _, c in configs:  # warm-up: first-call allocations, JIT, caches
        for _ in range(3):
            c.run(x)
    samples: dict[str, list[float]] = {label: [] for label, _ in configs}
    order = list(configs)
    for _ in range(rounds):
        rng.shuffle(order)
        for label, c in order:
            time.sleep(pause_s)
            t = time.perf_counter()
            c.run(x)
            samples[label].append((time.perf_counter() - t) * 1e3)
    out = {}
    for label, s in samples.items():
        q = statistics.quantiles(s, n=4)
        out[label] = {"median_ms": round(statistics.median(s), 2), "q1_ms": round(q[0], 2), "q3_ms": round(q[2], 2),
                      "min_ms": round(min(s), 2), "runs": len(s)}
    return out


def _parser() -> argparse.ArgumentParser:
    """The command line of the module docstring: build, time and path, each with its options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("work", type=Path)
    b.add_argument("--calib-dir", type=Path, default=DEFAULT_CALIB_DIR)
    b.add_argument("--calib", type=int, default=64)
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--types", action="store_true", help="also build the other activation/weight types")
    t = sub.add_parser("time")
    t.add_argument("work", type=Path)
    t.add_argument("--rounds", type=int, default=40)
    t.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    t.add_argument("--float-ov", action="store_true", help="also OpenVINO on the float32 file")
    t.add_argument("--ov-exec", action="store_true", help="record OpenVINO's kernel types per QDQ file")
    t.add_argument("--only", nargs="+", help="keep the configurations whose label contains one of these words")
    t.add_argument("--out", type=Path)
    t.add_argument("--withhold-amx", action="store_true",
                   help="refuse this process AMX (benchmarks.machine.withhold_amx): the AVX-512 VNNI class's figures")
    w = sub.add_parser("path", help="edge-classify's folder cost vs the decode floor, and cold start, per engine")
    w.add_argument("work", type=Path)
    w.add_argument("images", type=Path)
    w.add_argument("--images-n", type=int, default=200)
    w.add_argument("--seconds", type=float, default=6.0)
    w.add_argument("--repeats", type=int, default=3)
    w.add_argument("--cold-runs", type=int, default=7)
    w.add_argument("--out", type=Path)
    return ap


class _Fed:
    """A configuration that always runs on its own input (whatever run() is given): the timing loop passes one
    float32 x to every configuration, while LiteRT with int8 I/O takes the quantized tensor."""

    def __init__(self, c, xx):
        self.c, self.xx = c, xx

    def run(self, _x):
        return self.c.run(self.xx)


def _fed(configs: list[tuple[str, object]], x: np.ndarray) -> list[tuple[str, _Fed]]:
    """Each configuration with the input it takes: x (float32 (1, S, S, 3)) itself, or x quantized with the
    configuration's input_quantization (scale, zero point) to its input_dtype."""
    out = []
    for label, c in configs:
        dt = np.dtype(getattr(c, "input_dtype", np.float32))
        if dt != np.float32:
            scale, zero = c.input_quantization
            out.append((label, _Fed(c, np.clip(np.round(x / scale + zero), np.iinfo(dt).min,
                                               np.iinfo(dt).max).astype(dt))))
        else:
            out.append((label, _Fed(c, x)))
    return out


def _add_ratios(report: dict, results: dict, threads: list[int]) -> None:
    """Per thread count: each configuration's speed-up over LiteRT int8 (into its results entry) and leukedge's
    backend over the same engine called by hand (report["leukedge_vs_by_hand"]), both as ratios of medians."""
    for th in threads:
        base = results.get(f"litert int8 | litert-int8.tflite | t{th}")
        if base:
            for label, r in results.items():
                if label.endswith(f"| t{th}"):
                    r["speedup_vs_litert_int8"] = round(base["median_ms"] / r["median_ms"], 3)
        for engine, hand in (("onnxruntime", "onnxruntime by hand"), ("openvino", "openvino by hand (f32)"),
                             ("openvino", "openvino by hand (default precision)")):
            a = results.get(f"{engine} | onnx-cpu-int8.onnx | t{th}")
            h = results.get(f"{hand} | onnx-cpu-int8.onnx | t{th}")
            if a and h:
                report.setdefault("leukedge_vs_by_hand", {})[f"{hand} t{th}"] = round(a["median_ms"] / h["median_ms"], 3)


def _write_report(report: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")


def _time_command(args) -> dict:
    """`time`: every configuration timed in alternating rounds (module docstring); prints each median and
    returns the report (machine, versions, load averages, results per label, ratios)."""
    from leukedge.edge.machine import machine_line, machine_record

    if getattr(args, "withhold_amx", False):  # before any engine loads: each asks for AMX once
        from .machine import AmxError, withhold_amx

        try:
            withhold_amx()
        except AmxError as exc:
            raise SystemExit(f"engines time: --withhold-amx: {exc}") from None
    if args.rounds < 30:
        print(f"note: {args.rounds} rounds; issue 22's figures need at least 30", file=sys.stderr)
    size = json.loads((args.work / "calibration.json").read_text())["size"]
    x = np.random.default_rng(SEED).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    configs = _configs(args.work, args.threads, args.float_ov)
    if args.only:
        configs = [(label, c) for label, c in configs if any(o in label for o in args.only)]
    configs = _fed(configs, x)  # int8 I/O for LiteRT: its backend takes the quantized tensor
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    results = time_configs(configs, x, args.rounds)
    record = machine_record()
    report = {"benchmark": "engines", "machine": record, "machine_line": machine_line(record),
              "versions": versions(), "size": size, "rounds": args.rounds, "threads": args.threads,
              "load_average_before": [round(v, 2) for v in load0],
              "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "seconds": round(time.perf_counter() - t0, 1), "results": results,
              "amx_withheld": bool(getattr(args, "withhold_amx", False))}
    _add_ratios(report, results, args.threads)
    if args.ov_exec:
        report["openvino_kernels"] = {p.name: ov_exec_types(p) for p in
                                      (args.work / f"{s}.onnx" for s in TYPE_VARIANTS) if p.is_file()}
    print(machine_line(record) + ("; AMX withheld" if report["amx_withheld"] else ""))
    for label, r in sorted(results.items(), key=lambda kv: (kv[0].split("|")[-1], kv[1]["median_ms"])):
        print(f"{label:70s} {r['median_ms']:8.2f} ms  [{r['q1_ms']:.2f}, {r['q3_ms']:.2f}]  "
              f"x{r.get('speedup_vs_litert_int8', float('nan')):.2f} vs LiteRT int8")
    return report


def main(argv=None) -> int:
    """The command line (module docstring); returns the exit status 0 (SystemExit on a bad argument or a
    failed measurement)."""
    args = _parser().parse_args(argv)
    if args.cmd == "path":
        from .engines_path import path_report

        _write_report(path_report(args.work, args.images, args.images_n, args.seconds, args.repeats,
                                  args.cold_runs), args.out)
    elif args.cmd == "build":
        secs = build(args.work, args.calib_dir, args.calib, args.size, args.types)
        print(json.dumps({k: round(v, 1) for k, v in secs.items()}))
    else:
        _write_report(_time_command(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
