"""Composed fields: real C-NMC cells on real smear backgrounds. Does the frame path find each cell, cut it out
as it was, and give it the per-cell path's P(ALL)? (issue 25 item 3)

    nice -n 10 python -m leukedge.benchmarks.composed_fields --model runs/composed-fields/model/model.keras
    nice -n 10 python -m leukedge.benchmarks.composed_fields --train          # trains that model first (~1 min)

Composition (seeded; every number is an option with its default below):
- cells: every C-NMC image of the shared sample (../shared/data/C-NMC_Leukemia, 78 cells masked on black at
  450x450), each placed PLACEMENTS times. Its mask is its non-black pixels (any channel > 16, the rule of
  edge.fields.locate.masked_single_cell), largest part, holes filled.
- backgrounds: BCCD frames (../shared/data/bccd) with exactly one white-cell box, the white cell painted out:
  the located cell's extent and the VOC box's inscribed ellipse, grown by 1.5 um, are filled with a patch of
  the same frame that holds no white cell (feathered edge), and a background on which the locator still finds
  a cell is not used (counted). BCCD's scale: 7.5 um over the median red-cell ruler of those frames.
- scale: C-NMC's release gives no micrometres per pixel; CNMC_CELL_UM (the assumed median diameter of its
  cells) over their median measured diameter sets one (`--cnmc-um-per-px` overrides). A frame draws one factor
  s in 0.6..1.5 and applies it to its cells and its background alike: the background is resized by
  s * bccd_um_per_px / cnmc_um_per_px, so the frame's red cells change size with the cells, and the frame's
  true scale is cnmc_um_per_px / s.
- each frame holds 1..3 cells at random positions and rotations, whole inside the frame, their masks at least
  GAP_UM apart (white cells on a smear rarely touch; touching cells are the locator's `touching` flag, tested
  elsewhere), pasted with their anti-aliased mask as alpha. Frames are written as PNG (lossless: no JPEG
  artefacts in the comparison).

Measured, with the frame's scale from the camera (the composed scale, as a lab that calibrated its camera
gives it) and from the frame's red-cell ruler (the default without a calibration):
- found: a placed cell is found when a located cell's centroid lies on its mask; split: more than one did;
  false cells: located cells on no placed mask.
- mask IoU of the found cell (the located extent, frame resolution) against the placed mask.
- |dP| = |P(frame path) - P(per-cell path on the original file)|, median and 95th percentile, and decision
  agreement (P >= the card's threshold) on cells whose per-cell P is at least MARGIN from the threshold.
- the same for two references that need no locator: "oracle crop" (the frame path's own crop, cell_canvas,
  from the placed mask and the composed scale: what a perfect locator would give) and "rotated cell" (the
  original image turned by the placement's angle, centred on its centroid: the model's own sensitivity to
  rotation, which no frame path can remove).
The model: the one `leukedge train` makes on the C-NMC sample with --train (image size 128, a few epochs: a
weak model, but its P spreads), converted to float32 TFLite for the device runtime; its card's `cells`
(masked, 450 px) gains the assumed um_per_px. The processor (model name, ISA flags) is in the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_WORK = ROOT / "runs" / "composed-fields"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "composed-fields.json"

CNMC_CELL_UM = 11.0  # assumed median diameter of C-NMC's cells (lymphoblasts and normal lymphocytes, 7-18 um)
SCALE_RANGE = (0.6, 1.5)  # the range of cell (and background) scales
CELLS_PER_FRAME = (1, 3)
PLACEMENTS = 2  # times each C-NMC cell is placed (different frame, angle, scale)
GAP_UM = 3.0  # least distance between two placed cells' masks
MARGIN_UM = 6.0  # least distance between a placed cell's mask and the frame's edge: past the locator's
# cytoplasm reach (4 um) and its working copy's pixel (~0.23 um), so no whole cell is flagged edge_cut
PAINT_GROW_UM = 1.5  # how far around a BCCD white cell is painted out
THRESHOLD_MARGIN = 0.1  # agreement counted on cells whose per-cell P is at least this far from the threshold
TRAIN_ARGS = ["--image-size", "128", "--epochs-head", "8", "--epochs", "4", "--batch-size", "16",
              "--set", "split=subject", "--set", "val_fraction=0.25"]


# -- inputs --------------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """A C-NMC cell: its file, uint8 RGB (450, 450, 3) and bool mask (450, 450)."""

    path: str
    rgb: np.ndarray
    mask: np.ndarray


def cnmc_cells(root: Path) -> list[Cell]:
    """Every C-NMC image under root (sorted), with its mask (module docstring)."""
    import cv2

    from leukedge.edge.preprocess import load_rgb

    cells = []
    for p in sorted(root.rglob("*.bmp")):
        rgb = load_rgb(p)
        fg = (rgb.max(axis=2) > 16).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        if n < 2:
            continue
        main = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        contours, _ = cv2.findContours(main, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        filled = np.zeros_like(main)
        cv2.drawContours(filled, contours, -1, 1, thickness=-1)
        cells.append(Cell(str(p), rgb, filled.astype(bool)))
    return cells


def bccd_wbc_boxes(bccd: Path) -> dict[str, list[list[int]]]:
    """{frame stem: WBC boxes [x0, y0, x1, y1]} from the VOC XML files."""
    import xml.etree.ElementTree as ET

    out = {}
    for xml in sorted((bccd / "Annotations").glob("*.xml")):
        boxes = []
        for obj in ET.parse(xml).getroot().iter("object"):
            if (obj.findtext("name") or "").strip() == "WBC":
                b = obj.find("bndbox")
                boxes.append([int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")])
        out[xml.stem] = boxes
    return out


def paint_out(rgb: np.ndarray, region: np.ndarray, rng: np.random.Generator, tries: int = 400) -> np.ndarray | None:
    """`rgb` with `region` (bool (H, W)) filled by a shifted copy of the same frame that avoids it, feathered.

    Returns None when no shift within `tries` random ones keeps the copied pixels inside the frame and off
    the region."""
    import cv2

    h, w = region.shape
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    guard = cv2.dilate(region.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    for _ in range(tries):
        dx, dy = int(rng.integers(-x0, w - x1 + 1)), int(rng.integers(-y0, h - y1 + 1))
        if abs(dx) < (x1 - x0) and abs(dy) < (y1 - y0):
            continue  # the source would overlap the hole
        src = np.zeros_like(region)
        src[y0 + dy:y1 + dy, x0 + dx:x1 + dx] = region[y0:y1, x0:x1]
        if (src & guard).any():
            continue
        shifted = np.roll(np.roll(rgb, -dy, axis=0), -dx, axis=1)  # shifted[y, x] = rgb[y + dy, x + dx]
        alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 4.0)
        alpha = np.maximum(alpha, region.astype(np.float32))[..., None]
        return (alpha * shifted + (1 - alpha) * rgb).round().clip(0, 255).astype(np.uint8)
    return None


def backgrounds(bccd: Path, rng: np.random.Generator, limit: int) -> tuple[list[np.ndarray], dict]:
    """BCCD frames with their one white cell painted out, on which the locator then finds nothing.

    Returns (backgrounds: uint8 (480, 640, 3) each, facts: bccd_um_per_px and counts)."""
    import cv2

    from leukedge.edge.fields.frames import load_frame
    from leukedge.edge.fields.locate import NotASmearError, RED_CELL_UM, locate_cells

    boxes = bccd_wbc_boxes(bccd)
    names = [n for n, b in boxes.items() if len(b) == 1]
    rng.shuffle(names)
    out, rulers, tried, refused = [], [], 0, {"no patch": 0, "a cell left": 0, "not a smear": 0}
    for name in names:
        if len(out) >= limit:
            break
        tried += 1
        rgb, _ = load_frame(bccd / "JPEGImages" / f"{name}.jpg")
        try:
            loc = locate_cells(rgb)
        except NotASmearError:
            refused["not a smear"] += 1
            continue
        region = np.zeros(rgb.shape[:2], np.uint8)
        for c in loc.cells:
            x0, y0, x1, y1 = c.box
            region[y0:y1, x0:x1] |= c.mask.astype(np.uint8)
        x0, y0, x1, y1 = boxes[name][0]
        cv2.ellipse(region, ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, 1, -1)
        grow = max(1, round(PAINT_GROW_UM / loc.um_per_px))
        region = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2)).astype(bool)
        painted = paint_out(rgb, region, rng)
        if painted is None:
            refused["no patch"] += 1
            continue
        try:
            left = locate_cells(painted).cells
        except NotASmearError:
            refused["not a smear"] += 1
            continue
        if left:
            refused["a cell left"] += 1
            continue
        out.append(painted)
        if loc.red_cell_px is not None:
            rulers.append(loc.red_cell_px)
    um = RED_CELL_UM / float(statistics.median(rulers))
    return out, {"bccd_frames_tried": tried, "backgrounds": len(out), "refused": refused,
                 "bccd_um_per_px": round(um, 5), "bccd_red_cell_px_median": round(float(statistics.median(rulers)), 1)}


# -- composing -----------------------------------------------------------------------------------------------

@dataclass
class Placed:
    """One placed cell: which C-NMC cell, its angle (degrees), and its mask in the frame (bool (H, W))."""

    cell: int
    angle: float
    mask: np.ndarray


def turned(cell: Cell, angle: float, scale: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The cell turned by `angle` degrees about its centroid and scaled by `scale`, on a square canvas just
    large enough: (uint8 RGB, float alpha in 0..1, the centroid's (x, y) on that canvas)."""
    import cv2

    ys, xs = np.nonzero(cell.mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    radius = float(np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2).max()) + 2
    side = int(math.ceil(2 * radius * scale)) + 2
    m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    m[0, 2] += side / 2 - cx
    m[1, 2] += side / 2 - cy
    rgb = cv2.warpAffine(np.where(cell.mask[..., None], cell.rgb, 0).astype(np.uint8), m, (side, side),
                         flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(cell.mask.astype(np.float32), m, (side, side), flags=cv2.INTER_LINEAR, borderValue=0)
    return rgb, alpha, (side / 2, side / 2)


def compose(bg: np.ndarray, cells: list[Cell], picks: list[int], s: float, um_ratio: float,
            rng: np.random.Generator, gap_px: float, margin_px: int) -> tuple[np.ndarray, list[Placed]] | None:
    """One frame: `bg` resized by s * um_ratio (bccd um/px over C-NMC um/px), the picked cells turned, scaled by
    s and pasted at random places (module docstring). None when they do not fit in 200 tries."""
    import cv2

    f = s * um_ratio
    h, w = bg.shape[:2]
    size = (max(1, round(w * f)), max(1, round(h * f)))
    frame = cv2.resize(bg, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR).astype(np.float32)
    H, W = frame.shape[:2]
    taken = np.zeros((H, W), np.uint8)
    placed = []
    for ci in picks:
        angle = float(rng.uniform(0, 360))
        rgb, alpha, _ = turned(cells[ci], angle, s)
        on = alpha >= 0.5
        ys, xs = np.nonzero(on)
        side = alpha.shape[0]
        if W - 2 * margin_px <= xs.max() - xs.min() or H - 2 * margin_px <= ys.max() - ys.min():
            return None
        for _ in range(200):
            ox = int(rng.integers(margin_px - xs.min(), W - margin_px - xs.max()))
            oy = int(rng.integers(margin_px - ys.min(), H - margin_px - ys.max()))
            mask = np.zeros((H, W), bool)
            x0, y0, x1, y1 = max(0, ox), max(0, oy), min(W, ox + side), min(H, oy + side)
            mask[y0:y1, x0:x1] = on[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            if not (mask & taken.astype(bool)).any():
                break
        else:
            return None
        a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
        frame[y0:y1, x0:x1] = a * rgb[y0 - oy:y1 - oy, x0 - ox:x1 - ox] + (1 - a) * frame[y0:y1, x0:x1]
        grow = int(math.ceil(gap_px))
        taken |= cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
        placed.append(Placed(ci, angle, mask))
    return frame.round().clip(0, 255).astype(np.uint8), placed


# -- the model -----------------------------------------------------------------------------------------------

def train_model(cnmc: Path, work: Path) -> Path:
    """`leukedge train` on the C-NMC sample into work/model (TRAIN_ARGS), unless already there."""
    keras = work / "model" / "model.keras"
    if not keras.exists():
        cmd = [sys.executable, "-m", "leukedge.cli", "train", str(cnmc), "-o", str(work / "model"), *TRAIN_ARGS]
        print("training:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    return keras


def device_model(model: Path, work: Path) -> Path:
    """A model the device runtime opens: a .keras one converted to float32 TFLite once (cached beside work by
    the Keras file's SHA-256), its card inherited from the Keras card; any other format as it is."""
    if model.suffix != ".keras":
        return model
    from leukedge.edge.card import card_path_for, inherit_card, load_card_for_model
    from leukedge.edge.files import sha256_file

    parent = load_card_for_model(model)
    out = work / f"float32-{sha256_file(model)[:12]}.tflite"
    if not out.exists():
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        from leukedge.optimize.convert import to_tflite
        from leukedge.tfcompat import load_keras_model

        out.write_bytes(to_tflite(load_keras_model(model), "float32", None))
        card = inherit_card(parent, model_file=out.name, model_format="tflite", variant="float32")
        card.bind(out)
        card.save(card_path_for(out))
    return out


# -- measuring -----------------------------------------------------------------------------------------------

@dataclass
class _OracleCell:
    """The placed mask seen as a located cell (what cell_canvas needs)."""

    centroid: tuple[float, float]
    box: tuple[int, int, int, int]
    mask: np.ndarray


def oracle(mask: np.ndarray) -> _OracleCell:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return _OracleCell((float(xs.mean()) + 0.5, float(ys.mean()) + 0.5), (x0, y0, x1, y1), mask[y0:y1, x0:x1])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _full(c, shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = c.box
    m[y0:y1, x0:x1] = c.mask
    return m


def measure_frame(clf, path: Path, rgb: np.ndarray, placed: list[Placed], true_um: float, spec: dict) -> dict:
    """Locate and classify one composed frame both ways (camera scale, red-cell ruler); match to the placed cells.

    Returns {"arms": {arm: {"cells": [per placed cell: found, split, iou, p]}, "false": n, "um_per_px": ...},
    "oracle": [P per placed cell]}."""
    from leukedge.edge.fields.crops import cell_canvas, crop_scale
    from leukedge.edge.fields.frames import _to_input, classify_frame
    from leukedge.edge.fields.locate import NotASmearError, locate_cells

    prep = clf.card.preprocessing
    out = {"arms": {}}
    for arm, cam in (("camera", true_um), ("ruler", None)):
        try:
            loc = locate_cells(rgb, cam)
        except NotASmearError as exc:
            out["arms"][arm] = {"error": str(exc), "cells": [{"found": False} for _ in placed], "false": 0}
            continue
        res = classify_frame(clf, path, um_per_px=cam, cells={"um_per_px": spec["um_per_px"]})
        if res.error or len(res.cells) != len(loc.cells):
            raise RuntimeError(f"{path}: classify_frame disagrees with locate_cells ({res.error})")
        masks = [_full(c, rgb.shape[:2]) for c in loc.cells]
        on = [[j for j, c in enumerate(loc.cells)
               if p.mask[min(int(c.centroid[1]), p.mask.shape[0] - 1), min(int(c.centroid[0]), p.mask.shape[1] - 1)]]
              for p in placed]
        rows = []
        for p, js in zip(placed, on):
            if not js:
                rows.append({"found": False})
                continue
            best = max(js, key=lambda j: _iou(masks[j], p.mask))
            rows.append({"found": True, "split": len(js) > 1, "iou": round(_iou(masks[best], p.mask), 4),
                         "p": res.cells[best].p_all, "flags": loc.cells[best].flags})
        matched = {j for js in on for j in js}
        out["arms"][arm] = {"cells": rows, "false": len(loc.cells) - len(matched),
                            "um_per_px": loc.um_per_px, "scale_source": loc.scale_source}
    scale = crop_scale(spec, true_um)
    bg = tuple(int(v) for v in np.median(rgb[::4, ::4].reshape(-1, 3), axis=0))
    out["oracle"] = [clf.predict_one(_to_input(cell_canvas(rgb, oracle(p.mask), spec, scale, bg), prep.size,
                                               prep.resize)).p_all for p in placed]
    return out


def rotated_p(clf, cell: Cell, angle: float, canvas: int) -> float:
    """P of the original cell turned by `angle`, centred on its centroid on a canvas of `canvas` px (no rescale)."""
    from leukedge.edge.fields.frames import _to_input

    rgb, alpha, _ = turned(cell, angle, 1.0)
    side = rgb.shape[0]
    out = np.zeros((canvas, canvas, 3), np.uint8)
    o = (canvas - side) // 2
    if o >= 0:
        out[o:o + side, o:o + side] = np.where(alpha[..., None] >= 0.5, rgb, 0)
    else:
        out[:] = np.where(alpha[..., None] >= 0.5, rgb, 0)[-o:-o + canvas, -o:-o + canvas]
    prep = clf.card.preprocessing
    return clf.predict_one(_to_input(out, prep.size, prep.resize)).p_all


def _dp_stats(pairs: list[tuple[float, float]], threshold: float) -> dict:
    """|dP| median and 95th percentile over (reference P, other P) pairs, and decision agreement on the pairs whose
    reference P lies at least THRESHOLD_MARGIN from the threshold."""
    if not pairs:
        return {"cells": 0}
    d = np.abs(np.array([b - a for a, b in pairs]))
    away = [(a, b) for a, b in pairs if abs(a - threshold) >= THRESHOLD_MARGIN]
    agree = sum((a >= threshold) == (b >= threshold) for a, b in away)
    return {"cells": len(pairs), "dp_median": round(float(np.median(d)), 4),
            "dp_p95": round(float(np.percentile(d, 95)), 4), "dp_max": round(float(d.max()), 4),
            "cells_away_from_threshold": len(away),
            "agreement_away": round(agree / len(away), 4) if away else None,
            "agreement_all": round(sum((a >= threshold) == (b >= threshold) for a, b in pairs) / len(pairs), 4)}


def run(args) -> dict:
    import cv2
    from PIL import Image

    from leukedge.edge.classifier import Classifier
    from leukedge.edge.fields.crops import cells_spec
    from leukedge.edge.machine import machine_record

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    work = args.work
    (work / "frames").mkdir(parents=True, exist_ok=True)
    model = args.model or train_model(args.cnmc, work)
    trained = None
    if Path(model).suffix == ".keras":
        from leukedge.edge.card import load_card_for_model

        parent = load_card_for_model(model)
        cfg = (parent.provenance or {}).get("config", {})
        trained = {"data": (parent.provenance or {}).get("data", {}).get("root"),
                   "config": {k: cfg.get(k) for k in ("image_size", "epochs_head", "epochs", "batch_size", "split",
                                                      "val_fraction", "weights", "fine_tune_from")},
                   "validation": {k: (parent.metrics or {}).get("validation", {}).get(k)
                                  for k in ("f1_positive", "sensitivity", "specificity", "auroc", "images")}}
    clf = Classifier.load(device_model(Path(model), work), threads=1)
    cells = cnmc_cells(args.cnmc)
    if not cells:
        raise SystemExit(f"{args.cnmc}: no C-NMC images")
    diam = statistics.median(2 * math.sqrt(c.mask.sum() / math.pi) for c in cells)
    cnmc_um = args.cnmc_um_per_px or CNMC_CELL_UM / diam
    spec = cells_spec(clf.card, {"um_per_px": cnmc_um} if clf.card.cells else
                      {"style": "masked", "canvas_px": 450, "um_per_px": cnmc_um})
    bgs, bg_facts = backgrounds(args.bccd, rng, args.backgrounds)
    um_ratio = bg_facts["bccd_um_per_px"] / cnmc_um

    # the plan: each cell PLACEMENTS times, in frames of 1..3 cells
    order = [i for _ in range(args.placements) for i in rng.permutation(len(cells))]
    per_cell_p = {i: clf.predict_one(c.path).p_all for i, c in enumerate(cells)}
    thr = clf.threshold
    results, frames_meta, k, draws = [], [], 0, 0
    while k < len(order):
        draws += 1
        if draws > 20 * len(order):
            raise SystemExit("cannot place the cells: the frames are too small for them (check --cnmc-um-per-px)")
        n = int(rng.integers(CELLS_PER_FRAME[0], CELLS_PER_FRAME[1] + 1))
        picks = order[k:k + n]
        s = float(rng.uniform(*SCALE_RANGE))
        bi = int(rng.integers(len(bgs)))
        true_um = cnmc_um / s
        made = compose(bgs[bi], cells, picks, s, um_ratio, rng, GAP_UM / true_um, math.ceil(MARGIN_UM / true_um))
        if made is None:
            continue  # draw again (fewer cells or another scale)
        k += len(picks)
        frame, placed = made
        path = work / "frames" / f"composed-{len(frames_meta):03d}.png"
        Image.fromarray(frame).save(path, compress_level=1)
        m = measure_frame(clf, path, frame, placed, true_um, spec)
        for j, p in enumerate(placed):
            row = {"frame": path.name, "cnmc": Path(cells[p.cell].path).name, "scale": round(s, 3),
                   "angle": round(p.angle, 1), "p_file": per_cell_p[p.cell], "p_oracle": m["oracle"][j],
                   "p_rotated": rotated_p(clf, cells[p.cell], p.angle, spec["canvas_px"])}
            for arm, a in m["arms"].items():
                row[arm] = a["cells"][j]
            results.append(row)
        frames_meta.append({"frame": path.name, "background": bi, "scale": round(s, 3), "size": frame.shape[1::-1],
                            "cells": len(placed), "true_um_per_px": round(true_um, 5),
                            **{f"{arm}_false_cells": a["false"] for arm, a in m["arms"].items()},
                            "ruler_um_per_px": m["arms"]["ruler"].get("um_per_px")})

    summary = {}
    for arm in ("camera", "ruler"):
        found = [r for r in results if r[arm]["found"]]
        ious = [r[arm]["iou"] for r in found]
        summary[arm] = {
            "placed": len(results), "found": len(found), "split": sum(r[arm]["split"] for r in found),
            "flagged": {flag: sum(flag in r[arm]["flags"] for r in found) for flag in ("edge_cut", "touching", "blurred")},
            "false_cells": sum(f[f"{arm}_false_cells"] for f in frames_meta),
            "mask_iou_median": round(float(np.median(ious)), 4) if ious else None,
            "mask_iou_p10": round(float(np.percentile(ious, 10)), 4) if ious else None,
            "frame_vs_per_cell": _dp_stats([(r["p_file"], r[arm]["p"]) for r in found], thr),
            "frame_vs_rotated_cell": _dp_stats([(r["p_rotated"], r[arm]["p"]) for r in found], thr)}
    summary["oracle_crop_vs_per_cell"] = _dp_stats([(r["p_file"], r["p_oracle"]) for r in results], thr)
    summary["oracle_crop_vs_rotated_cell"] = _dp_stats([(r["p_rotated"], r["p_oracle"]) for r in results], thr)
    summary["rotated_cell_vs_per_cell"] = _dp_stats([(r["p_file"], r["p_rotated"]) for r in results], thr)
    ruler = [f["ruler_um_per_px"] / f["true_um_per_px"] for f in frames_meta if f["ruler_um_per_px"]]
    summary["ruler_over_true_scale"] = {"median": round(float(np.median(ruler)), 3),
                                        "p5": round(float(np.percentile(ruler, 5)), 3),
                                        "p95": round(float(np.percentile(ruler, 95)), 3)} if ruler else None
    p_files = np.array(list(per_cell_p.values()))
    cam = summary["camera"]
    targets = {"every_placed_cell_found": cam["found"] == cam["placed"],
               "mask_iou_median_ge_0.9": cam["mask_iou_median"] is not None and cam["mask_iou_median"] >= 0.9,
               "agreement_ge_0.97": (cam["frame_vs_per_cell"].get("agreement_away") or 0) >= 0.97}
    return {
        "benchmark": "composed fields (issue 25 item 3)", "machine": machine_record(
            engine=clf.runtime.name, engine_version=clf.runtime.version, threads=1),
        "opencv": cv2.__version__, "seconds": round(time.perf_counter() - t_start, 1),
        "model": {"file": str(clf.model_path) if hasattr(clf, "model_path") else str(model), "name": clf.card.name,
                  "threshold": thr, "input_px": clf.card.preprocessing.size, "cells": spec, "trained": trained,
                  "p_per_cell_spread": {"p10": round(float(np.percentile(p_files, 10)), 4),
                                        "p50": round(float(np.median(p_files)), 4),
                                        "p90": round(float(np.percentile(p_files, 90)), 4)}},
        "composition": {"cnmc": str(args.cnmc), "cnmc_cells": len(cells), "cnmc_diameter_px_median": round(diam, 1),
                        "cnmc_um_per_px": round(cnmc_um, 5),
                        "cnmc_um_per_px_from": ("option" if args.cnmc_um_per_px else
                                                f"assumed median cell diameter {CNMC_CELL_UM} um"),
                        **bg_facts, "placements_per_cell": args.placements, "frames": len(frames_meta),
                        "scale_range": SCALE_RANGE, "gap_um": GAP_UM, "margin_um": MARGIN_UM, "seed": args.seed},
        "summary": summary, "targets_camera_scale": targets, "frames": frames_meta, "cells": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model file with its card (.keras converted to float32 TFLite)")
    ap.add_argument("--train", action="store_true", help="train the C-NMC model into WORK/model first if absent")
    ap.add_argument("--cnmc", type=Path, default=SHARED / "C-NMC_Leukemia")
    ap.add_argument("--bccd", type=Path, default=SHARED / "bccd")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="frames, converted model (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cnmc-um-per-px", type=float, help="C-NMC's micrometres per pixel [default: assumed, see doc]")
    ap.add_argument("--placements", type=int, default=PLACEMENTS)
    ap.add_argument("--backgrounds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.model and not a.train:
        ap.error("give --model PATH or --train")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    res = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    from leukedge.reports import composed_fields_markdown

    a.out.with_suffix(".md").write_text(composed_fields_markdown(res))
    print(a.out.with_suffix(".md").read_text())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
