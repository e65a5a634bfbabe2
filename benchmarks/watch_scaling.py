"""What a watcher costs as the watched folder grows: idle CPU and per-image cost, inotify vs polling.

    python -m leukedge.benchmarks.watch_scaling [--sizes 10 1000 50000] [--idle 6] [--out FILE.json]

For each size N, N files lie in subfolders of 500 (slide folders), watched recursively with the
defaults of `edge-classify --watch` (poll interval 0.5 s; full sweep every 300 s with inotify,
30 s with --poll). The classifier is a stand-in that returns at once, so the figures are the
watcher's own cost: listing, stat, settle checks, content hash, journal and row writes.

Reported per mode and size:
  start_s        first start: listing and journaling what exists (not classified)
  idle_cpu_pct   CPU of one core while nothing happens (measured over --idle seconds)
  full_scan_ms   one full sweep (stat of every file); amortized into idle_cpu_amortized_pct
  per_image_ms   CPU per new image (50 written into one subfolder), from event/scan to row
The polling mode lists only folders whose mtime changed (new, renamed or deleted entries) and
folders holding files still settling; in-place rewrites in other folders are found by the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path


class _Pred:
    def __init__(self, path):
        self.path, self.label, self.p_all, self.error, self.warnings = path, "hem", 0.1, None, []
        self.preprocess_ms = self.invoke_ms = self.total_ms = 0.0

    ok = True


class _Instant:
    threshold = 0.5

    def predict_one(self, path):
        return _Pred(str(path))


def _populate(root: Path, n: int, per_dir: int = 500) -> None:
    payload = b"\x89PNG\r\n\x1a\n" + b"\0" * 200
    for i in range(n):
        d = root / f"slide{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"cell{i:06d}.png").write_bytes(payload)


def measure(n: int, mode: str, idle_s: float, work: Path) -> dict:
    from leukedge.edge.app.handling import Counts, Emitter
    from leukedge.edge.app.journal import Journal
    from leukedge.edge.app.rows import ModelInfo, RowWriter
    from leukedge.edge.app.sinks import AppendFileSink
    from leukedge.edge.app.watcher import Classifying, WatchOptions, Watcher

    folder = work / f"{mode}-{n}"
    _populate(folder, n)
    out = work / f"{mode}-{n}.jsonl"
    model = ModelInfo("bench.tflite", "000000000000", "int8", 0.5)
    sink = AppendFileSink(out)
    journal = Journal(str(out) + ".journal", folder, model, out, "json").open(sink)
    counts = Counts()
    opts = WatchOptions(recursive=True, settle=0.2, poll_interval=0.5, mode=mode)
    stop = threading.Event()
    w = Watcher(Classifying(_Instant()), folder, Emitter(RowWriter("json", sink, model), journal, counts), model, opts,
                lambda m: None, stop)
    c0, t0 = time.process_time(), time.perf_counter()
    w.start()
    start_s = time.perf_counter() - t0
    th = threading.Thread(target=w.run, kwargs={"started": True}, daemon=True)
    th.start()
    time.sleep(1.0)
    c1, t1 = time.process_time(), time.perf_counter()
    time.sleep(idle_s)
    idle_cpu = (time.process_time() - c1) / (time.perf_counter() - t1)
    t2 = time.perf_counter()
    w._full_scan()
    full_scan_ms = (time.perf_counter() - t2) * 1e3
    k = 50
    target = folder / "slide0000"
    c2, t3 = time.process_time(), time.perf_counter()
    for i in range(k):
        (target / f"new{i:03d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 300)
    deadline = time.time() + 60
    while counts.classified < k and time.time() < deadline:
        time.sleep(0.05)
    busy_cpu = time.process_time() - c2
    # the idle CPU that would have been spent anyway over that time is not per-image cost
    per_image_ms = max(0.0, busy_cpu - idle_cpu * (time.perf_counter() - t3)) / max(1, counts.classified) * 1e3
    stop.set()
    th.join(10)
    sink.close()
    journal.close()
    amortized = idle_cpu + full_scan_ms / 1e3 / opts.full_scan_interval
    shutil.rmtree(folder, ignore_errors=True)
    return {"mode": mode, "files": n, "start_s": round(start_s, 3), "idle_cpu_pct": round(100 * idle_cpu, 2),
            "full_scan_ms": round(full_scan_ms, 1), "full_scan_interval_s": opts.full_scan_interval,
            "idle_cpu_amortized_pct": round(100 * amortized, 2), "per_image_ms": round(per_image_ms, 3),
            "classified": counts.classified, "of": k}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 50000])
    ap.add_argument("--idle", type=float, default=6.0, help="seconds of idle measurement per case")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="leukedge-watch-bench-"))
    rows = []
    try:
        for n in args.sizes:
            for mode in ("inotify", "poll"):
                r = measure(n, mode, args.idle, work)
                rows.append(r)
                print(f"{mode:8s} {n:6d} files: start {r['start_s']:6.2f} s  idle CPU {r['idle_cpu_pct']:5.2f} %  "
                      f"full sweep {r['full_scan_ms']:7.1f} ms (every {r['full_scan_interval_s']:.0f} s -> "
                      f"{r['idle_cpu_amortized_pct']:5.2f} % amortized)  per image {r['per_image_ms']:6.3f} ms CPU "
                      f"({r['classified']}/{r['of']})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"benchmark": "watch_scaling", "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
