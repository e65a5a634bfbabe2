"""The frames of the composed-fields benchmark (leukedge.benchmarks.composed_fields): real C-NMC cells placed on
real smear backgrounds.

Composition (seeded; every number is an option or a constant of composed_fields, PAINT_GROW_UM here):
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
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAINT_GROW_UM = 1.5  # how far around a BCCD white cell is painted out


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
