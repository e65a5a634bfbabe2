"""Device-side cost of edge-classify around the model: cold start and per-image overhead.

    python -m leukedge.benchmarks.edge_overhead MODEL.tflite IMAGE.bmp [--runs 7] [--images 50]

Cold start: a fresh `edge-classify` process on one image, from spawn until its result is
printed and it exits (median of --runs). Overhead: for the same 450x450 BMP classified
--images times in one process, total time per image minus the time inside
`interpreter.invoke()` (decode, resize, normalize, quantize, copy, decide).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    cmd = [sys.executable, "-m", "leukedge.edge.cli", "--model", args.model, "--quiet", "--format", "json", args.image]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    walls = []
    for _ in range(args.runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 2
    bare = []
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
        bare.append(time.perf_counter() - t)

    from leukedge.edge.classifier import Classifier

    clf = Classifier.load(args.model, threads=args.threads)
    for _ in range(3):
        clf.predict_one(args.image)
    preds = [clf.predict_one(args.image) for _ in range(args.images)]
    overhead = [p.total_ms - p.invoke_ms for p in preds]
    result = {
        "model": args.model, "image": args.image, "runtime": f"{clf.runtime.name} {clf.runtime.version}",
        "cold_start_s_median": statistics.median(walls), "cold_start_s_min": min(walls),
        "python_startup_s_median": statistics.median(bare),
        "invoke_ms_median": statistics.median(p.invoke_ms for p in preds),
        "overhead_ms_median": statistics.median(overhead), "overhead_ms_max": max(overhead),
        "preprocess_ms_median": statistics.median(p.preprocess_ms for p in preds),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
