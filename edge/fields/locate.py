"""Find the white cells in one frame of a stained blood smear (bright-field, Romanowsky/Wright/Giemsa-type stain).

The rules, in the order they run (every number is a module constant below, with where it comes from;
those of steps 1 and 2 are in edge.fields.smear, step 5's in edge.fields.split, re-exported here):

1. Is it a smear? (`check_smear`) A bright-field stained smear has a bright background (the glass) and
   stained matter that absorbs green: eosin-stained red cells (green most) and azure-stained nuclei (green and red)
   never absorb green least. A dark background (fluorescence, dark field), no stained
   matter (a blank slide) or stained-looking pixels of other hues (a photograph) raise `NotASmearError`.
2. Scale (`red_cell_diameter`). Red cells are the smear's built-in ruler: their median diameter, from the
   distance transform of the red-cell mask (central pallor filled), gives micrometres per pixel as
   RED_CELL_UM / diameter. A camera's own micrometres per pixel, when given, wins; the ruler is still
   measured and reported.
3. Locating runs on one downscaled copy in which a red cell is WORK_RED_CELL_PX pixels across (never
   upscaled), so the cost is the same for any magnification; boxes, centroids and diameters are mapped
   back to the frame's pixels.
4. Nuclei: B - R (blue minus red) above a threshold half-way between the background's and the most
   stained pixels' values (a half-maximum rule), floored and capped (NUCLEUS_CONTRAST_*), or very dark and
   not red (DARK_NUCLEUS_GREEN: near-black violet cells of a heavy or normalised stain). Fragments closer
   than LOBE_GAP_UM are one cell (the lobes of a neutrophil's nucleus); a group whose nuclear area is
   below MIN_NUCLEUS_AREA_RBC red-cell areas is a platelet or debris.
5. Touching nuclei are split where the group's distance transform has two peaks at least
   SPLIT_PEAK_UM deep whose ridge between them dips below SPLIT_SADDLE of the lower peak (two round
   nuclei pressed together); lobes are thinner than SPLIT_PEAK_UM and never split.
6. Extent: the nucleus plus the cytoplasm-coloured pixels (bluer than red cells, darker than the glass)
   within CYTOPLASM_REACH_UM of it, opened by CYTOPLASM_OPEN_UM (red-cell rims and specks out), closed,
   convex hull. The diameter is that of the circle
   of the extent's area.
7. Flags: `edge_cut` (the extent reaches the frame's border), `touching` (the extent meets another white
   cell's, or the cell was split from another), `blurred` (the nucleus' edge spread, from the steepest
   green-channel gradient across its border relative to the nucleus-to-surroundings contrast, is wider
   than BLUR_EDGE_UM).

Shapes and units: frames are uint8 RGB arrays (H, W, 3); coordinates are (x, y) in the frame's pixels,
boxes are (x0, y0, x1, y1) with x1, y1 exclusive.
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .smear import (  # noqa: F401 - steps 1-2; re-exported: edge.fields.locate is where callers find them
    MIN_BACKGROUND_GREEN, MIN_GREEN_ABSORBING, MIN_STAINED_FRACTION, PREVIEW_PIXELS, RED_CELL_UM, RULER_HOLE_RATIO,
    RULER_PERCENTILE, STAINED_DROP, NotASmearError, background_of, check_smear, red_cell_diameter,
)
from .split import SPLIT_MIN_DISTANCE_UM, SPLIT_PEAK_UM, SPLIT_SADDLE, split_markers, watershed_parts  # noqa: F401

# -- the numbers, and where each comes from (steps 3-7; 1-2: edge.fields.smear; 5: .split) ----------------------

# The working copy: a red cell this many pixels across (0.23 um/px). Chosen so that the thinnest structure
# used (the gap between nuclear lobes, ~1 um) still spans >= 4 pixels, and a 640x480 BCCD frame
# (red cell ~100 px) is located on a ~205x154 copy.
WORK_RED_CELL_PX = 32.0
# Nuclei: B - R over the background's value. A half-maximum threshold between background (~0) and the most
# stained 0.5 % of pixels (BCCD: 65-80), floored so that pale cytoplasm (B - R ~ 10-25) stays out and capped
# so that a very dark stain does not lose the paler nuclei.
NUCLEUS_CONTRAST_MIN = 25.0
NUCLEUS_CONTRAST_MAX = 60.0
NUCLEUS_TOP_PERCENTILE = 99.5
# Nuclei also: very dark pixels (green below this share of the glass's) that are not eosin-red (B - R at least
# the glass's). A heavy or normalised stain makes whole cells near-black violet with little B - R: C-NMC's
# released cells have green 22-38 (5..95 % of cells, median 27) and B - R 6-15, which the B - R rule alone
# never finds (benchmarks/composed_fields.py: 26 of 156 placed cells found without this rule, 156 with it).
# BCCD's nuclei are paler (green / glass: 1st percentile 0.41, median over every 6th frame; lowest 0.27) and
# are found by B - R anyway; outside its located cells 23 pixels in 2 of 61 frames pass, far below a nucleus'
# area, and the BCCD benchmark's figures are unchanged with it.
DARK_NUCLEUS_GREEN = 0.3
# A nuclear fragment smaller than this (red-cell areas) is noise or a platelet granule.
MIN_FRAGMENT_AREA_RBC = 0.01
# Neutrophil lobes are joined by strands or lie < ~1.5 um apart; two cells' nuclei are separated by both
# cells' cytoplasm (>= ~3 um). Fragments within LOBE_GAP_UM of each other form one cell.
LOBE_GAP_UM = 2.0
# Smallest white-cell nucleus: a small lymphocyte's (~6-7 um across, ~0.7 red-cell areas); a platelet is
# 2-3 um (~0.1 red-cell areas). 0.25 sits between them with room for a nucleus partly cut by the frame edge.
MIN_NUCLEUS_AREA_RBC = 0.25
# Cytoplasm: within this reach of the nucleus (a neutrophil's rim is ~2-4 um), B - R above the
# background's by CYTOPLASM_BLUE and green CYTOPLASM_DROP below the glass.
CYTOPLASM_REACH_UM = 4.0
CYTOPLASM_BLUE = 4.0
CYTOPLASM_DROP = 12.0
# ... and then opened by a disc of this radius. The colour rule alone also passes red cells' rims (a blue
# fringe 1-2 working pixels wide at their edges; about 10 % of BCCD's red-cell pixels) and specks, which the
# closing and convex hull then joined into the extent: composed-field mask IoU 0.64 (median, 156 C-NMC cells
# on BCCD backgrounds, benchmarks/composed_fields.py). A cytoplasm is a solid area and survives an opening;
# rims and specks thinner than the disc do not. Measured (2026-12-07, that benchmark's frames, and the BCCD
# benchmark's IoU >= 0.5 box recall, audited, all frames; centroid figures identical for all): no opening
# 0.64 / 0.884; 0.75 um 0.948 / 0.955; 1 um 0.950 / 0.952; 1.5 um 0.960 / 0.942; versus raising
# CYTOPLASM_BLUE to 16 without opening 0.936 / 0.955, which drops BCCD's pale cytoplasm (B - R 4-16).
# 0.75 um keeps the most pale cytoplasm: located box over BCCD box area, median 0.89 (1 um: 0.85; B - R 16:
# 0.84; no opening: 1.17). Eosinophils' granular cytoplasm is eosin-red and is in no rule's extent (their
# boxes are the most of the 4.6 % of located boxes under 0.6 of BCCD's).
CYTOPLASM_OPEN_UM = 0.75
# Blur: the edge spread (Gaussian sigma) of the nucleus border, as measured on the working copy. BCCD's
# located cells (every 2nd frame, 189 cells): median 0.26 um, 95th percentile 0.42, 99th 0.51; the frame
# that looks out of focus by eye (00327) measures 0.51. A generated field blurred by sigma = 1 um measures
# 0.59, by 0.5 um 0.45. Cells above 0.5 um are flagged.
BLUR_EDGE_UM = 0.5


@dataclass
class LocatedCell:
    """One white cell in a frame.

    centroid: (x, y) of the cell's extent, frame pixels. box: (x0, y0, x1, y1), frame pixels, exclusive ends.
    diameter_px: diameter of the circle with the extent's area, frame pixels. nucleus_area_px: frame pixels.
    mask: bool (y1 - y0, x1 - x0), the extent inside `box` (frame resolution).
    edge_cut / touching / blurred: see the module docstring. edge_spread_um: the blur measure (None when
    the scale is unknown).
    """

    centroid: tuple[float, float]
    box: tuple[int, int, int, int]
    diameter_px: float
    nucleus_area_px: float
    mask: np.ndarray = field(repr=False)
    edge_cut: bool = False
    touching: bool = False
    blurred: bool = False
    edge_spread_um: float | None = None

    @property
    def flags(self) -> list[str]:
        return [n for n in ("edge_cut", "touching", "blurred") if getattr(self, n)]


@dataclass
class FieldLocation:
    """What `locate_cells` found in one frame.

    cells: white cells, ordered top-to-bottom then left-to-right by centroid (row bands of one red-cell
    diameter). size: (width, height) of the frame. red_cell_px: median red-cell diameter in frame pixels
    (None when too few red cells were seen). um_per_px: the scale used; scale_source: 'camera' (given),
    'red cells' (the ruler) or None (unknown). work_scale: working copy's pixels per frame pixel.
    background: median RGB of the glass.
    """

    cells: list[LocatedCell]
    size: tuple[int, int]
    red_cell_px: float | None
    um_per_px: float | None
    scale_source: str | None
    work_scale: float
    background: tuple[int, int, int]


# -- locating ------------------------------------------------------------------------------------------------

def _disc(radius_px: float) -> np.ndarray:
    """An elliptical (disc) structuring element of radius round(radius_px), at least 1, in pixels."""
    k = max(1, int(round(radius_px)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))


@dataclass
class _Scale:
    """Steps 2-3 for one frame: the scale in force and the working copy located on.

    um_per_px / source: the frame's scale and where it came from ('camera' or 'red cells').
    work: uint8 (wh, ww, 3), the working copy; sx, sy: frame pixels per working pixel (exact per axis);
    px_um: working pixels per micrometre.
    """

    background: tuple[int, int, int]
    red_cell_px: float | None
    um_per_px: float
    source: str
    work: np.ndarray
    sx: float
    sy: float
    px_um: float

    @property
    def rbc_area_work(self) -> float:
        """A red cell's area in working pixels."""
        return math.pi * (RED_CELL_UM * self.px_um / 2) ** 2


@dataclass
class _Stain:
    """Step 4's masks on the working copy: green (int16), nucleus (uint8 0/1, specks dropped), cytoplasm (uint8 0/1)."""

    green: np.ndarray
    nuc: np.ndarray
    cyto: np.ndarray


@dataclass
class _Nucleus:
    """One white cell before its flags: its extent (uint8 0/1) in the ROI at `origin` (x0, y0, working pixels),
    whether it was split from a group, and its nuclear area (working pixels)."""

    extent: np.ndarray
    origin: tuple[int, int]
    split: bool
    area: float


def locate_cells(rgb: np.ndarray, um_per_px: float | None = None, *, check: bool = True) -> FieldLocation:
    """Find the white cells in one smear frame.

    rgb: uint8 (H, W, 3), the frame as decoded. um_per_px: the camera's micrometres per pixel, when known
    (else the red-cell ruler sets the scale). check: run `check_smear` first (False: the caller did).
    Returns a FieldLocation (0 cells is a valid result). Raises NotASmearError for a frame that is not a
    stained smear, or whose scale cannot be set (no um_per_px and fewer than 3 red cells to measure);
    ValueError for a um_per_px that is not a number > 0.
    """
    h, w = rgb.shape[:2]
    sc = _scale(rgb, um_per_px, check)
    stain = _stain(sc)
    found = _nuclei(sc, stain)
    cells = _located_cells(sc, stain, found, (w, h))
    band = max(1.0, RED_CELL_UM / sc.um_per_px)
    cells.sort(key=lambda c: (int(c.centroid[1] // band), c.centroid[0]))
    return FieldLocation(cells=cells, size=(w, h), red_cell_px=sc.red_cell_px, um_per_px=sc.um_per_px,
                         scale_source=sc.source, work_scale=1.0 / ((sc.sx + sc.sy) / 2), background=sc.background)


def _scale(rgb: np.ndarray, um_per_px: float | None, check: bool) -> _Scale:
    """Steps 1-3: the smear check (when `check`), the red-cell ruler, the scale in force, the working copy."""
    h, w = rgb.shape[:2]
    background = check_smear(rgb) if check else tuple(int(v) for v in background_of(rgb)[0])
    rbc_px = red_cell_diameter(rgb, background)
    if um_per_px is not None:
        if not (isinstance(um_per_px, (int, float)) and math.isfinite(um_per_px) and um_per_px > 0):
            raise ValueError(f"um_per_px must be a number > 0, got {um_per_px!r}")
        scale_um, source = float(um_per_px), "camera"
    elif rbc_px is not None:
        scale_um, source = RED_CELL_UM / rbc_px, "red cells"
    else:
        raise NotASmearError("cannot set the scale: fewer than 3 red cells in the frame to measure, and no "
                             "micrometres per pixel given for the camera")
    cell_px = RED_CELL_UM / scale_um  # a red cell's diameter in frame pixels, by the scale in force
    s = min(1.0, WORK_RED_CELL_PX / cell_px)
    work = rgb if s >= 1.0 else cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))),
                                           interpolation=cv2.INTER_AREA)
    wh, ww = work.shape[:2]
    sx, sy = w / ww, h / wh  # frame pixels per working pixel (exact per axis)
    px_um = 1.0 / (scale_um * (sx + sy) / 2)  # working pixels per micrometre
    return _Scale(background, rbc_px, scale_um, source, work, sx, sy, px_um)


def _stain(sc: _Scale) -> _Stain:
    """Step 4's colour rules on the working copy: the nucleus and cytoplasm masks, nuclear specks dropped."""
    work, background = sc.work, sc.background
    r = work[..., 0].astype(np.int16)
    g = work[..., 1].astype(np.int16)
    b = work[..., 2].astype(np.int16)
    blue = b - r
    bg_g = float(background[1])
    bg_blue = float(background[2] - background[0])
    top = float(np.percentile(blue, NUCLEUS_TOP_PERCENTILE))
    contrast = min(NUCLEUS_CONTRAST_MAX, max(NUCLEUS_CONTRAST_MIN, 0.5 * (top - bg_blue)))
    nuc = ((blue > bg_blue + contrast) | ((g < DARK_NUCLEUS_GREEN * bg_g) & (blue >= bg_blue))).astype(np.uint8)
    cyto = ((blue > bg_blue + CYTOPLASM_BLUE) & (g < bg_g - CYTOPLASM_DROP)).astype(np.uint8)
    # drop specks
    n, labels, stats, _ = cv2.connectedComponentsWithStats(nuc, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_FRAGMENT_AREA_RBC * sc.rbc_area_work
    return _Stain(green=g, nuc=keep[labels].astype(np.uint8), cyto=cyto)


def _nuclei(sc: _Scale, stain: _Stain) -> list[_Nucleus]:
    """Steps 4-6: group fragments (lobes) within LOBE_GAP_UM, drop groups too small for a nucleus, split
    touching nuclei, and grow each nucleus into its extent."""
    work, nuc, px_um = sc.work, stain.nuc, sc.px_um
    wh, ww = work.shape[:2]
    grouped = cv2.dilate(nuc, _disc(LOBE_GAP_UM * px_um / 2))
    ng, glabels, gstats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    reach = CYTOPLASM_REACH_UM * px_um
    pad = int(math.ceil(reach)) + 2
    found: list[_Nucleus] = []
    for gi in range(1, ng):
        x, y, bw, bh, _ = gstats[gi]
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(ww, x + bw + pad), min(wh, y + bh + pad)
        group = (glabels[y0:y1, x0:x1] == gi) & (nuc[y0:y1, x0:x1] > 0)
        area = float(group.sum())
        if area < MIN_NUCLEUS_AREA_RBC * sc.rbc_area_work:
            continue
        group8 = group.astype(np.uint8)
        closed = cv2.morphologyEx(group8, cv2.MORPH_CLOSE, _disc(LOBE_GAP_UM * px_um / 2))
        markers = split_markers(closed, px_um)
        parts = [group8] if markers is None else watershed_parts(work[y0:y1, x0:x1], closed, markers, group8)
        for part in parts:
            extent = _extent(part, stain.cyto[y0:y1, x0:x1], reach, px_um)
            found.append(_Nucleus(extent, (x0, y0), markers is not None, float(part.sum())))
    return found


def _touching(found: list[_Nucleus], shape: tuple[int, int]) -> tuple[list[np.ndarray], list[bool]]:
    """Each extent on the whole working copy (uint8 (wh, ww)), and step 7's `touching` flag of each: its
    extent meets another's (one working pixel apart), or it was split from another."""
    full = [np.zeros(shape, np.uint8) for _ in found]
    for m, f in zip(full, found):
        x0, y0 = f.origin
        m[y0:y0 + f.extent.shape[0], x0:x0 + f.extent.shape[1]] = f.extent
    touching = [f.split for f in found]
    for i in range(len(found)):
        di = cv2.dilate(full[i], np.ones((3, 3), np.uint8))
        for j in range(i + 1, len(found)):
            if (di & full[j]).any():
                touching[i] = touching[j] = True
    return full, touching


def _located_cells(sc: _Scale, stain: _Stain, found: list[_Nucleus], size: tuple[int, int]) -> list[LocatedCell]:
    """Step 7 and the way back to the frame: each extent's box, centroid, diameter and mask in frame pixels,
    with its flags (edge_cut, touching, blurred). size: (W, H) of the frame. Unordered."""
    w, h = size
    sx, sy, work = sc.sx, sc.sy, sc.work
    wh, ww = work.shape[:2]
    full, touching = _touching(found, (wh, ww))
    grad = None
    cells = []
    for k, (m, f) in enumerate(zip(full, found)):
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        edge_cut = bx0 == 0 or by0 == 0 or bx1 == ww or by1 == wh
        box = (int(math.floor(bx0 * sx)), int(math.floor(by0 * sy)),
               min(w, int(math.ceil(bx1 * sx))), min(h, int(math.ceil(by1 * sy))))
        area_frame = float(len(xs)) * sx * sy
        fmask = cv2.resize(m[by0:by1, bx0:bx1].astype(np.float32), (box[2] - box[0], box[3] - box[1]),
                           interpolation=cv2.INTER_LINEAR) >= 0.5
        if grad is None:
            gx = cv2.Sobel(work[..., 1], cv2.CV_32F, 1, 0, ksize=3)
            gy = cv2.Sobel(work[..., 1], cv2.CV_32F, 0, 1, ksize=3)
            grad = cv2.magnitude(gx, gy) / 8.0  # Sobel 3x3 sums 8x the unit gradient
        spread_px = _edge_spread(stain.green, grad, stain.nuc, m)
        spread_um = None if spread_px is None else spread_px / sc.px_um
        cells.append(LocatedCell(
            centroid=((float(xs.mean()) + 0.5) * sx, (float(ys.mean()) + 0.5) * sy),
            box=box, diameter_px=2.0 * math.sqrt(area_frame / math.pi), nucleus_area_px=f.area * sx * sy,
            mask=fmask, edge_cut=bool(edge_cut), touching=bool(touching[k]),
            blurred=spread_um is not None and spread_um > BLUR_EDGE_UM, edge_spread_um=spread_um))
    return cells


def _extent(part: np.ndarray, cyto: np.ndarray, reach: float, px_um: float) -> np.ndarray:
    """The cell's extent (uint8 0/1, the ROI's shape) around one nucleus `part` (uint8 0/1 in the ROI).

    cyto: uint8 0/1, the cytoplasm-coloured pixels of the ROI; reach: CYTOPLASM_REACH_UM in working pixels;
    px_um: working pixels per micrometre. The cytoplasm within reach is opened by a disc of CYTOPLASM_OPEN_UM
    (so red-cell rims and specks drop out, see there), joined to the nucleus, closed by a 1 um disc, and the
    convex hull of the parts that touch the nucleus is the extent.
    """
    near = cv2.distanceTransform(1 - part, cv2.DIST_L2, 3) <= reach
    c = cv2.morphologyEx((near & (cyto > 0)).astype(np.uint8), cv2.MORPH_OPEN, _disc(CYTOPLASM_OPEN_UM * px_um))
    region = (part > 0) | (c > 0)
    region = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_CLOSE, _disc(px_um))
    return _hull_of_component_touching(region, part)


def _hull_of_component_touching(region: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Convex hull (uint8 0/1) of the connected parts of `region` that overlap `nucleus`."""
    n, labels = cv2.connectedComponents(region, connectivity=8)
    ids = np.unique(labels[(nucleus > 0) & (labels > 0)])
    sel = np.isin(labels, ids).astype(np.uint8)
    pts = cv2.findNonZero(sel)
    out = np.zeros_like(sel)
    if pts is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    return out


def _edge_spread(green: np.ndarray, grad: np.ndarray, nuc: np.ndarray, cell: np.ndarray) -> float | None:
    """Gaussian edge sigma (working pixels) of the nucleus border inside `cell`, or None if it has no border.

    For a step of height C blurred by a Gaussian of sigma s, the steepest gradient is C / (s sqrt(2 pi));
    C is the median green outside the nucleus but in the cell minus the median inside, the gradient the
    90th percentile on the nucleus border (robust to a few sharp specks).
    """
    inside = (nuc > 0) & (cell > 0)
    if inside.sum() < 4:
        return None
    ring = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) & ~cv2.erode(
        inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    around = (cell > 0) & ~cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if ring.sum() < 4 or around.sum() < 4:
        return None
    contrast = float(np.median(green[around])) - float(np.median(green[inside]))
    steep = float(np.percentile(grad[ring.astype(bool)], 90))
    if contrast <= 0 or steep <= 0:
        return None
    return contrast / (steep * math.sqrt(2 * math.pi))


def masked_single_cell(rgb: np.ndarray) -> tuple[tuple[int, int, int, int], float] | None:
    """If `rgb` (uint8 (H, W, 3)) is one cell masked on black (C-NMC's style), its (box, diameter_px); else None.

    Rule: the outermost ring (2 % of the side, >= 2 px) is at least 90 % black (every channel <= 16), and
    the non-black pixels form one main connected part holding >= 95 % of them, not touching the border.
    C-NMC's cells: ring 100 % black; a smear frame: ring ~0 % black.
    """
    h, w = rgb.shape[:2]
    t = max(2, int(0.02 * min(h, w)))
    black = rgb.max(axis=2) <= 16
    ring = np.concatenate([black[:t].ravel(), black[-t:].ravel(), black[:, :t].ravel(), black[:, -t:].ravel()])
    if ring.mean() < 0.9:
        return None
    fg = (~black).astype(np.uint8)
    total = int(fg.sum())
    if total == 0:
        return None
    n, labels, stats, cents = cv2.connectedComponentsWithStats(fg, connectivity=8)
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[i, cv2.CC_STAT_AREA] < 0.95 * total:
        return None
    x, y, bw, bh, area = stats[i]
    if x == 0 or y == 0 or x + bw == w or y + bh == h:
        return None
    return (int(x), int(y), int(x + bw), int(y + bh)), 2.0 * math.sqrt(float(area) / math.pi)
