"""Device-side cost of edge-classify around the model: cold start and per-image overhead.

    python -m leukedge.benchmarks.edge_overhead MODEL.tflite IMAGE.bmp [--runs 7] [--images 50]
    python -m leukedge.benchmarks.edge_overhead --decode-memory [--side 4000] [--out FILE.json]

Cold start: a fresh `edge-classify` process on one image, from spawn until its result is
printed and it exits (median of --runs). Overhead: for the same 450x450 BMP classified
--images times in one process, total time per image minus the time inside
`interpreter.invoke()` (decode, resize, normalize, quantize, copy, decide).

Breakdown (same image, same process, medians): `decode_ms` is `load_rgb` (decode, integrity rules,
resize), `checks_ms` is the quality/OOD gate (`quality.image_statistics` + `quality.assess` against
the card's `input_statistics`, or, for a card without them, a stand-in reference built from flipped
and brightness-shifted copies of the image: the cost does not depend on the reference's values),
`input_tensor_ms` the lookup-table normalize+quantize. `overhead_with_checks_ms_median` is
decode + checks + input tensor: the per-image cost beyond invoke() once the gate runs on every image
(target < 3 ms at 224 px).

--decode-memory: peak resident memory of decoding one image at leukedge's pixel cap (16 Mpx:
--side 4000) to 224 px, each in a fresh process (16-bit grey PNG, 8-bit RGB BMP, float32 TIFF,
RGB JPEG, and the 9400x9400 16-bit PNG of ../shared/repro/bomb16.sh: refused from its header, and
decoded with the cap raised to 100 Mpx; it needed 2.2 GiB before strip conversion).
Reported as the process's peak RSS (VmHWM) and its growth over the peak after importing leukedge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("image", nargs="?")
    ap.add_argument("--decode-memory", action="store_true", help="measure peak RSS of one decode at the pixel cap")
    ap.add_argument("--side", type=int, default=4000)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.decode_memory:
        result = decode_memory(args.side)
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if not (args.model and args.image):
        ap.error("MODEL and IMAGE are required (or --decode-memory)")

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
    breakdown = _breakdown(clf, args.image, args.images)
    result = {
        "model": args.model, "image": args.image, "runtime": f"{clf.runtime.name} {clf.runtime.version}",
        "cold_start_s_median": statistics.median(walls), "cold_start_s_min": min(walls),
        "python_startup_s_median": statistics.median(bare),
        "invoke_ms_median": statistics.median(p.invoke_ms for p in preds),
        "overhead_ms_median": statistics.median(overhead), "overhead_ms_max": max(overhead),
        "preprocess_ms_median": statistics.median(p.preprocess_ms for p in preds),
        **breakdown,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


_MEASURE = """
import sys
from leukedge.edge.preprocess import DecodeOptions, ImageError, load_rgb
def hwm():  # this process's own peak RSS in KiB (ru_maxrss can carry the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
before = hwm()
try:
    load_rgb(sys.argv[1], 224, options=DecodeOptions(max_pixels=int(sys.argv[2])))
    outcome = "decoded"
except ImageError as exc:
    outcome = "refused: " + exc.problem
after = hwm()
print(before, after, outcome, sep="\\t")
"""


def decode_memory(side: int = 4000) -> dict:
    """Peak RSS (MiB) of decoding one side x side image of each kind to 224 px, each in a fresh process."""
    import tempfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {"side": side, "pixels": side * side, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        files = {}
        g16 = (rng.integers(0, 4096, (side, 1), dtype=np.uint16) * np.ones((1, side), np.uint16))
        files["png-16bit-grey"] = t / "g16.png"
        Image.fromarray(g16).save(files["png-16bit-grey"], compress_level=1)
        rgb = np.broadcast_to(rng.integers(0, 256, (side, 1, 3), dtype=np.uint8), (side, side, 3))
        files["bmp-8bit-rgb"] = t / "rgb.bmp"
        Image.fromarray(np.ascontiguousarray(rgb)).save(files["bmp-8bit-rgb"])
        files["jpeg-rgb"] = t / "rgb.jpg"
        Image.fromarray(np.ascontiguousarray(rgb)).save(files["jpeg-rgb"], quality=90)
        files["tiff-float32"] = t / "f.tif"
        Image.fromarray((g16 / 4096).astype(np.float32), "F").save(files["tiff-float32"])
        del g16, rgb
        files["png-16bit-9400x9400 (bomb16.sh)"] = t / "bomb.png"
        Image.fromarray(np.zeros((9400, 9400), np.uint16)).save(files["png-16bit-9400x9400 (bomb16.sh)"])
        runs = [(name, f, 16_000_000) for name, f in files.items()]
        runs.append(("png-16bit-9400x9400 with --max-pixels 100000000", files["png-16bit-9400x9400 (bomb16.sh)"],
                     100_000_000))
        for name, f, cap in runs:
            r = subprocess.run([sys.executable, "-c", _MEASURE, str(f), str(cap)], capture_output=True, text=True)
            if r.returncode != 0:
                out["files"][name] = {"error": r.stderr.strip().splitlines()[-1:]}
                continue
            before, after, outcome = r.stdout.strip().split("\t")
            out["files"][name] = {"file_mb": round(f.stat().st_size / 2**20, 2), "outcome": outcome,
                                  "peak_rss_mib": round(int(after) / 1024, 1),
                                  "decode_growth_mib": round((int(after) - int(before)) / 1024, 1)}
    return out


def _breakdown(clf, image, n: int) -> dict:
    """Median ms of decode, quality/OOD checks and input tensor for one image (see the module doc)."""
    import numpy as np

    from leukedge.edge.preprocess import load_rgb
    from leukedge.edge.quality import assess, image_statistics, reference_statistics

    prep = clf.card.preprocessing
    rgb = load_rgb(image, prep.size, prep.resize)
    ref = getattr(clf.card, "input_statistics", None)
    stand_in = not ref
    if stand_in:
        variants = [np.rot90(rgb, k) for k in range(4)] + [rgb[::-1], rgb[:, ::-1]]
        ref = reference_statistics([np.clip(v.astype(int) + d, 0, 255).astype(np.uint8)
                                    for v in variants for d in (-6, -3, 0, 3)])

    def med(fn):
        for _ in range(3):
            fn()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return statistics.median(out), min(out)

    out = {}
    for name, fn in (("decode", lambda: load_rgb(image, prep.size, prep.resize)),
                     ("statistics", lambda: image_statistics(rgb)), ("checks", lambda: assess(rgb, ref)),
                     ("input_tensor", lambda: clf.input_tensor(rgb))):
        out[f"{name}_ms_median"], out[f"{name}_ms_min"] = med(fn)
    for k in ("median", "min"):  # min: the cost without other jobs' interference on a shared machine
        out[f"overhead_with_checks_ms_{k}"] = out[f"decode_ms_{k}"] + out[f"checks_ms_{k}"] + out[f"input_tensor_ms_{k}"]
    out["checks_reference"] = "stand-in (card has no input_statistics)" if stand_in else "card input_statistics"
    return out


if __name__ == "__main__":
    sys.exit(main())
