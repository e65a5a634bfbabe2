"""How well and how fast leukedge.edge.fields finds white cells in microscope frames: the BCCD benchmark.

    nice -n 10 python -m leukedge.benchmarks.locate [--bccd ../shared/data/bccd] [--out benchmarks/results/locate-bccd.json]
    python -m leukedge.benchmarks.locate --audit-overlays runs/bccd-audit     # overlays of the audit list (not committed)

Accuracy (BCCD: 364 frames of 640x480, hand-drawn VOC boxes, the dataset's own train/val/test split):
- a found cell matches a white-cell box when its centroid lies inside it (each box takes at most one cell,
  the nearest to its centre); IoU >= 0.5 between the found cell's box and the published box is reported too;
- recall = matched boxes / boxes, precision = matched cells / cells, false cells per frame = unmatched cells
  / frames; on the test split (72 frames) and on all frames;
- raw: against the boxes as published; audited: after benchmarks/results/bccd-audit.json (committed before
  the locator was first measured on BCCD), which drops a box that holds a platelet, adds white cells left
  unboxed, and marks regions where a found cell counts neither way.
Speed (one core: OpenCV and the BLAS pools limited to one thread): the median time to locate one frame
(decoded already), the decode time, and the whole frame-to-rows time (decode, locate, crop, classify every
cell, overlay) with a tiny TFLite classifier, beside that classifier's own time per cell.
Every figure is printed with the processor's model name and its avx2/avx512/vnni flags.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BCCD = ROOT.parent / "shared" / "data" / "bccd"
DEFAULT_AUDIT = ROOT / "benchmarks" / "results" / "bccd-audit.json"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "locate-bccd.json"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


def cpu_description() -> dict:
    """The processor's model name and which of ISA_FLAGS /proc/cpuinfo lists (Linux); platform's guess elsewhere."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name, "flags": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count()}


def cpu_line(cpu: dict) -> str:
    return f"{cpu['cpu']} ({', '.join(cpu['flags']) or 'no avx2/avx512/vnni'}), one core"


# -- the dataset ---------------------------------------------------------------------------------------------

def read_bccd(root: Path) -> list[dict]:
    """Every annotated frame: {"name", "path", "split" (train/val/test), "boxes": [[x0, y0, x1, y1], ...]} (WBC only)."""
    split = {}
    for part in ("train", "val", "test"):
        for name in (root / "ImageSets" / "Main" / f"{part}.txt").read_text().split():
            split[name] = part
    frames = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        boxes = []
        for obj in ET.parse(xml).getroot().iter("object"):
            if obj.findtext("name", "").strip() != "WBC":
                continue
            b = obj.find("bndbox")
            boxes.append([int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")])
        name = xml.stem
        frames.append({"name": name, "path": root / "JPEGImages" / f"{name}.jpg", "split": split.get(name, "?"),
                       "boxes": boxes, "ignore": []})
    return frames


def audited(frames: list[dict], audit: dict) -> list[dict]:
    """A copy of `frames` with the audit's drop/add/ignore entries applied ('note' entries change nothing)."""
    out = {f["name"]: {**f, "boxes": [list(b) for b in f["boxes"]], "ignore": list(f["ignore"])} for f in frames}
    for e in audit["entries"]:
        f = out[e["frame"]]
        if e["action"] == "drop":
            f["boxes"].remove(list(e["box"]))
        elif e["action"] == "add":
            f["boxes"].append(list(e["box"]))
        elif e["action"] == "ignore":
            f["ignore"].append(list(e["box"]))
    return [out[f["name"]] for f in frames]


# -- matching ------------------------------------------------------------------------------------------------

def _inside(pt, box) -> bool:
    return box[0] <= pt[0] < box[2] and box[1] <= pt[1] < box[3]


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_frame(cells: list[dict], boxes: list, ignore: list) -> dict:
    """Counts for one frame. cells: [{"centroid": (x, y), "box": (x0, y0, x1, y1)}]; boxes/ignore: truth.

    Centroid rule: each box takes the unmatched cell whose centroid is inside it and nearest its centre.
    IoU rule: greedy by IoU, pairs with IoU >= 0.5. A cell matched by neither and with its centroid in an
    ignore region is not counted as a false cell (nor as a cell) under that rule.
    """
    def count(pairs_for):
        used, hits = set(), 0
        for bi, box in enumerate(boxes):
            j = pairs_for(bi, box, used)
            if j is not None:
                used.add(j)
                hits += 1
        ignored = sum(1 for j, c in enumerate(cells) if j not in used and any(_inside(c["centroid"], r) for r in ignore))
        counted = len(cells) - ignored
        return {"boxes": len(boxes), "hits": hits, "cells": counted, "false": counted - hits}

    def by_centroid(bi, box, used):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        cand = [(np.hypot(c["centroid"][0] - cx, c["centroid"][1] - cy), j) for j, c in enumerate(cells)
                if j not in used and _inside(c["centroid"], box)]
        return min(cand)[1] if cand else None

    # greedy IoU: best pairs first
    pairs = sorted(((iou(c["box"], b), j, bi) for j, c in enumerate(cells) for bi, b in enumerate(boxes)), reverse=True)
    chosen, used_b, used_c = {}, set(), set()
    for v, j, bi in pairs:
        if v < 0.5:
            break
        if j not in used_c and bi not in used_b:
            chosen[bi] = j
            used_b.add(bi)
            used_c.add(j)
    return {"centroid": count(by_centroid), "iou50": count(lambda bi, box, used: chosen.get(bi))}


def summarise(per_frame: list[dict], rule: str) -> dict:
    boxes = sum(f[rule]["boxes"] for f in per_frame)
    hits = sum(f[rule]["hits"] for f in per_frame)
    cells = sum(f[rule]["cells"] for f in per_frame)
    false = sum(f[rule]["false"] for f in per_frame)
    return {"frames": len(per_frame), "boxes": boxes, "cells": cells, "hits": hits,
            "recall": round(hits / boxes, 4) if boxes else None,
            "precision": round(hits / cells, 4) if cells else None,
            "false_cells_per_frame": round(false / len(per_frame), 4) if per_frame else None}


# -- speed ---------------------------------------------------------------------------------------------------

def one_core() -> None:
    """Limit OpenCV and the BLAS/OpenMP pools to one thread (set before numpy's pools start)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2

    cv2.setNumThreads(1)


def tiny_classifier(workdir: Path, size: int = 224):
    """A small untrained float32 TFLite model (tests/helpers.py's layer kinds) plus a card with `cells`.

    Only for timing: its P is meaningless. Built with TensorFlow (the train extra), never fitted.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from leukedge.edge.card import ModelCard
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.preprocess import Preprocessing
    from leukedge.optimize.convert import to_tflite
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf.keras.utils.set_random_seed(0)
    L = tf.keras.layers
    inp = L.Input((size, size, 3))
    x = L.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = L.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = L.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(2, activation="softmax")(x)
    path = workdir / "tiny-float32.tflite"
    path.write_bytes(to_tflite(tf.keras.Model(inp, out), "float32", None))
    card = ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=size),
                     model_file=path.name, model_format="tflite", variant="float32")
    card.bind(path)
    # PBC-like crops: the shape of the real training cells' description (values for timing only)
    card.cells = {"style": "crop", "canvas_px": 360, "diameter_px": 160.0, "um_per_px": 0.1}
    return Classifier(path, card, threads=1)


def time_it(fn, repeat: int) -> float:
    """Median milliseconds of `repeat` calls of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# -- main ----------------------------------------------------------------------------------------------------

def run(bccd: Path, audit_path: Path, timing_frames: int = 40, with_classifier: bool = True) -> dict:
    one_core()
    from leukedge.edge.fields.frames import load_frame
    from leukedge.edge.fields.locate import NotASmearError, locate_cells

    frames = read_bccd(bccd)
    audit = json.loads(audit_path.read_text())
    fixed = audited(frames, audit)
    per = {"raw": [], "audited": []}
    errors, located = [], {}
    t_locate = []
    for f, g in zip(frames, fixed):
        rgb, _ = load_frame(f["path"])
        t0 = time.perf_counter()
        try:
            loc = locate_cells(rgb)
        except NotASmearError as exc:
            errors.append({"frame": f["name"], "error": str(exc)})
            loc = None
        t_locate.append((time.perf_counter() - t0) * 1e3)
        cells = [] if loc is None else [{"centroid": c.centroid, "box": c.box, "flags": c.flags,
                                         "edge_spread_um": c.edge_spread_um} for c in loc.cells]
        located[f["name"]] = {"cells": cells, "red_cell_px": None if loc is None else loc.red_cell_px}
        for kind, truth in (("raw", f), ("audited", g)):
            m = match_frame(cells, truth["boxes"], truth["ignore"])
            m.update(name=f["name"], split=f["split"])
            per[kind].append(m)
    figures = {}
    for kind in ("raw", "audited"):
        for subset, sel in (("test", lambda m: m["split"] == "test"), ("all", lambda m: True)):
            rows = [m for m in per[kind] if sel(m)]
            figures[f"{kind}/{subset}"] = {rule: summarise(rows, rule) for rule in ("centroid", "iou50")}
    misses = [{"frame": m["name"], "split": m["split"], "boxes": m["centroid"]["boxes"], "hits": m["centroid"]["hits"],
               "false": m["centroid"]["false"], "cells": located[m["name"]]["cells"]}
              for m in per["audited"] if m["centroid"]["hits"] < m["centroid"]["boxes"] or m["centroid"]["false"]]

    # speed on one core: locate (decoded frames), decode, whole frame-to-rows
    sample = [f["path"] for f in frames if f["split"] == "test"][:timing_frames]
    decoded = [load_frame(p)[0] for p in sample]
    locate_ms = statistics.median(time_it(lambda r=rgb: locate_cells(r), 5) for rgb in decoded)
    decode_ms = statistics.median(time_it(lambda p=p: load_frame(p), 5) for p in sample)
    speed = {"frames_timed": len(sample), "locate_ms_median": round(locate_ms, 2), "decode_ms_median": round(decode_ms, 2),
             "locate_ms_all_frames_median": round(statistics.median(t_locate), 2),
             "locate_ms_all_frames_max": round(max(t_locate), 2)}
    if with_classifier:
        import tempfile

        from leukedge.edge.fields.frames import classify_frame

        with tempfile.TemporaryDirectory() as tmp:
            clf = tiny_classifier(Path(tmp))
            rgb224 = np.zeros((224, 224, 3), np.uint8)
            per_cell = time_it(lambda: clf.predict_one(rgb224), 50)
            rows_ms = statistics.median(
                time_it(lambda p=p: classify_frame(clf, p, overlay=Path(tmp) / "o.png"), 3) for p in sample[:20])
            rows_no_overlay = statistics.median(
                time_it(lambda p=p: classify_frame(clf, p), 3) for p in sample[:20])
            speed.update(classifier=f"tiny float32 TFLite 224x224 ({clf.runtime.name} {clf.runtime.version}), 1 thread",
                         classifier_ms_per_cell=round(per_cell, 2), frame_to_rows_ms_median=round(rows_ms, 2),
                         frame_to_rows_without_overlay_ms_median=round(rows_no_overlay, 2))
    import cv2

    return {"cpu": cpu_description(), "opencv": cv2.__version__, "numpy": np.__version__,
            "dataset": str(bccd), "audit": str(audit_path.relative_to(ROOT)) if audit_path.is_relative_to(ROOT) else str(audit_path),
            "figures": figures, "speed": speed, "not_a_smear": errors,
            "audited_misses_and_false_cells": misses}


def print_report(res: dict) -> None:
    cpu = cpu_line(res["cpu"])
    print(f"leukedge.edge.fields on BCCD, OpenCV {res['opencv']}, {cpu}")
    print(f"{'truth/frames':16} {'rule':9} {'boxes':>5} {'cells':>5} {'recall':>7} {'precision':>9} {'false/frame':>11}")
    for key, rules in res["figures"].items():
        for rule, s in rules.items():
            print(f"{key:16} {rule:9} {s['boxes']:5d} {s['cells']:5d} {s['recall']:7.4f} {s['precision']:9.4f} "
                  f"{s['false_cells_per_frame']:11.4f}")
    sp = res["speed"]
    print(f"locate one 640x480 frame: {sp['locate_ms_median']} ms median over {sp['frames_timed']} test frames "
          f"(decode {sp['decode_ms_median']} ms) [{cpu}]")
    if "frame_to_rows_ms_median" in sp:
        print(f"frame to rows (decode, locate, crop, classify, overlay PNG): {sp['frame_to_rows_ms_median']} ms; "
              f"without the overlay {sp['frame_to_rows_without_overlay_ms_median']} ms; classifier alone "
              f"{sp['classifier_ms_per_cell']} ms per cell ({sp['classifier']}) [{cpu}]")
    if res["not_a_smear"]:
        print(f"frames refused as not a smear: {len(res['not_a_smear'])}")


def audit_overlays(bccd: Path, audit_path: Path, out: Path) -> list[Path]:
    """One overlay PNG per audited frame into `out`: published WBC boxes green, audit boxes by action
    (add blue, drop red, ignore grey, note orange). Returns the paths written."""
    from PIL import Image, ImageDraw

    audit = json.loads(audit_path.read_text())
    frames = {f["name"]: f for f in read_bccd(bccd)}
    colours = {"add": (40, 90, 255), "drop": (230, 30, 30), "ignore": (128, 128, 128), "note": (255, 150, 0)}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted({e["frame"] for e in audit["entries"]}):
        with Image.open(frames[name]["path"]) as im:
            im = im.convert("RGB")
        d = ImageDraw.Draw(im)
        for b in frames[name]["boxes"]:
            d.rectangle(b, outline=(0, 200, 0), width=3)
        for e in audit["entries"]:
            if e["frame"] == name:
                d.rectangle(e["box"], outline=colours[e["action"]], width=3)
                d.text((e["box"][0] + 4, max(0, e["box"][1]) + 4), e["action"], fill=colours[e["action"]])
        path = out / f"{name}.png"
        im.save(path)
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bccd", type=Path, default=DEFAULT_BCCD)
    ap.add_argument("--audit", type=Path, default=DEFAULT_AUDIT)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    ap.add_argument("--timing-frames", type=int, default=40)
    ap.add_argument("--no-classifier", action="store_true", help="skip the frame-to-rows timing (needs TensorFlow)")
    ap.add_argument("--audit-overlays", type=Path, metavar="DIR", help="only write the audit overlays into DIR")
    a = ap.parse_args(argv)
    if not (a.bccd / "Annotations").is_dir():
        print(f"BCCD not found at {a.bccd}", file=sys.stderr)
        return 2
    if a.audit_overlays:
        paths = audit_overlays(a.bccd, a.audit, a.audit_overlays)
        print(f"{len(paths)} audit overlays in {a.audit_overlays}")
        return 0
    res = run(a.bccd, a.audit, a.timing_frames, with_classifier=not a.no_classifier)
    print_report(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
