"""Throughput of edge-classify's layouts, side by side with the bare-invoke rate of the same layout.

    python -m leukedge.benchmarks.throughput MODEL.tflite [IMAGES_DIR] [--images 400] [--seconds 8] [--out FILE.json]

Layouts (C = usable cores):
  latency     1 worker, one interpreter with C threads (edge-classify on a single image)
  throughput  C workers, each its own interpreter with 1 thread (edge-classify on a folder / watch backlog)

For each layout, in one run:
  bare_invoke_per_s  `interpreter.invoke()` alone on a prepared tensor, every worker looping at once
                     (the most that layout can do on this machine)
  images_per_s       the whole per-image path edge-classify runs (edge.app.handling.classify_file through
                     edge.throughput.ClassifierPool: decode, image checks, input tensor, invoke,
                     decision, row rendering and an append-only write with flush), IMAGES_DIR's
                     images in input order
  cost_ratio         bare_invoke_per_s / images_per_s: end-to-end per-image cost over the bare
                     invoke cost of the same layout (1.0 = nothing but invoke)
  decode_invoke_per_s  the floor under images_per_s: each image decoded and resized by the same
                     decoder (edge.preprocess.load_rgb: Pillow, the bilinear resize the model was
                     trained with) and one invoke, on the same workers, nothing else (no checks,
                     tensor, rows); decode_cost_ratio = bare_invoke_per_s / decode_invoke_per_s
and the speed-up of the throughput layout over the latency layout. The gap between
decode_cost_ratio and cost_ratio is edge-classify's own work (image checks, input tensor, rows,
hand-off between threads); the gap between 1.0 and decode_cost_ratio is the decoder's. Images: IMAGES_DIR (e.g.
../shared/data/pbc-granulocytes/ig), repeated or cut to --images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def _images(folder: Path | None, n: int) -> list[str]:
    from leukedge.edge.app.listing import wanted

    if folder is None:
        import numpy as np
        from PIL import Image

        folder = Path(tempfile.mkdtemp(prefix="leukedge-tp-"))
        rng = np.random.default_rng(0)
        for i in range(64):
            Image.fromarray(rng.integers(0, 255, (363, 360, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    found = sorted(str(p) for p in folder.rglob("*") if wanted(p.name) and p.is_file())
    if not found:
        raise SystemExit(f"{folder}: no images")
    return [found[i % len(found)] for i in range(n)]


def bare_invoke_rate(clfs: list, seconds: float) -> float:
    """Invokes per second with every classifier's interpreter looping at once on its own thread."""
    import numpy as np

    counts = [0] * len(clfs)
    stop = threading.Event()
    barrier = threading.Barrier(len(clfs) + 1)

    def loop(i, clf):
        size = clf.card.preprocessing.size
        x = clf.input_tensor(np.full((size, size, 3), 128, np.uint8))
        clf.probabilities(x)  # warm-up
        barrier.wait()
        n = 0
        while not stop.is_set():
            clf.probabilities(x)
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=loop, args=(i, c)) for i, c in enumerate(clfs)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def _rate(first, workers: int, threads: int | None, files: list[str], fn, consume=None) -> float:
    """Items per second of fn(classifier, file) over `files` on the layout's workers (results in input
    order, each passed to `consume`), after a warm-up on the first 4 (page cache, first-call costs)."""
    from leukedge.edge.throughput import ClassifierPool

    for f in files[:4]:
        fn(first, f)
    pool = ClassifierPool(first, workers, threads=threads) if workers > 1 else None
    t0 = time.perf_counter()
    for result in (pool.map(fn, files) if pool is not None else (fn(first, f) for f in files)):
        if consume is not None:
            consume(result)
    dt = time.perf_counter() - t0
    if pool is not None:
        pool.close()
    return len(files) / dt


def end_to_end_rate(first, workers: int, threads: int | None, files: list[str]) -> float:
    """Images per second through the same per-image path and writer as edge-classify."""
    from leukedge.edge.app.handling import Counts, Emitter, classify_file
    from leukedge.edge.app.rows import ModelInfo, RowWriter
    from leukedge.edge.app.sinks import AppendFileSink

    model = ModelInfo.from_classifier(first)
    with tempfile.TemporaryDirectory() as tmp:
        sink = AppendFileSink(Path(tmp) / "rows.jsonl")
        counts = Counts()
        emitter = Emitter(RowWriter("json", sink, model), None, counts)
        rate = _rate(first, workers, threads, files, lambda c, f: classify_file(c, f, model), emitter.emit)
        sink.close()
    if counts.classified != len(files):
        raise SystemExit(f"only {counts.classified} of {len(files)} images classified")
    return rate


def decode_invoke_rate(first, workers: int, threads: int | None, files: list[str]) -> float:
    """Images per second for decode + resize (edge.preprocess.load_rgb) + one invoke, nothing else."""
    import numpy as np

    from leukedge.edge.preprocess import load_rgb

    prep = first.card.preprocessing
    x = first.input_tensor(np.full((prep.size, prep.size, 3), 128, np.uint8))

    def one(c, f):
        load_rgb(f, prep.size, prep.resize, c.decode)
        return c.probabilities(x)

    return _rate(first, workers, threads, files, one)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("images_dir", type=Path, nargs="?")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=8.0, help="bare-invoke measurement time per layout")
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end runs per layout (median)")
    ap.add_argument("--workers", type=int, help="throughput layout's workers [default: usable cores]")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from leukedge.edge.card import load_card_for_model
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.throughput import default_workers

    cores = default_workers()
    workers = args.workers or cores
    files = _images(args.images_dir, args.images)
    card = load_card_for_model(args.model)
    results = []
    for name, n_workers, n_threads in (("latency", 1, cores), ("throughput", workers, 1)):
        clfs = [Classifier(args.model, card, threads=n_threads) for _ in range(n_workers)]
        bare = bare_invoke_rate(clfs, args.seconds)
        first = clfs[0]
        del clfs[1:]
        # alternate the floor and the full path so a passing load spike hits both alike
        e2e_runs, floor_runs = [], []
        for _ in range(args.repeats):
            floor_runs.append(decode_invoke_rate(first, n_workers, n_threads, files))
            e2e_runs.append(end_to_end_rate(first, n_workers, n_threads, files))
        e2e, floor = statistics.median(e2e_runs), statistics.median(floor_runs)
        results.append({"layout": name, "workers": n_workers, "threads_per_worker": n_threads,
                        "bare_invoke_per_s": round(bare, 1), "images_per_s": round(e2e, 1),
                        "cost_ratio": round(bare / e2e, 3), "ms_per_image": round(1000 / e2e, 2),
                        "bare_ms_per_invoke": round(1000 / bare, 2),
                        "decode_invoke_per_s": round(floor, 1), "decode_cost_ratio": round(bare / floor, 3)})
        r = results[-1]
        print(f"{name:10s} {n_workers} worker(s) x {n_threads} thread(s): bare invoke {r['bare_invoke_per_s']:7.1f}/s "
              f"({r['bare_ms_per_invoke']:.2f} ms)  edge-classify path {r['images_per_s']:7.1f} images/s "
              f"({r['ms_per_image']:.2f} ms)  cost ratio {r['cost_ratio']:.3f}  "
              f"[decode+invoke alone {r['decode_invoke_per_s']:.1f}/s, ratio {r['decode_cost_ratio']:.3f}]", flush=True)
    speedup = results[1]["images_per_s"] / results[0]["images_per_s"]
    print(f"throughput layout / latency layout: {speedup:.2f}x images/s  ({len(files)} images, {cores} cores, "
          f"{os.path.basename(str(args.model))}; load average {os.getloadavg()[0]:.1f}: figures from a busy "
          "machine are not speed claims)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"benchmark": "throughput", "model": str(args.model), "cores": cores,
                                        "images": len(files), "images_dir": str(args.images_dir),
                                        "layouts": results, "speedup": round(speedup, 3),
                                        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
