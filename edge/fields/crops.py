"""Cut a located white cell out of its frame the way the model's training cells look, and measure that look.

A card's optional `cells` field describes the training cells: {"style": "masked" | "crop", "canvas_px": int,
"diameter_px": float, "um_per_px": float | None}. masked = one cell on black, centred on a square canvas
(C-NMC: 450x450); crop = a square crop of the smear centred on the cell, background kept (PBC: ~360x363).

Scale is set per camera, never per cell: the frame is rescaled once by frame um/px over training um/px, so a
blast that is larger than a lymphocyte stays larger. Without a known training um/px the frame's cells
cannot be put at the training scale, and `crop_scale` says so (`CellsError`) instead of guessing.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import cv2
import numpy as np

from ..errors import LeukedgeError
from .locate import RED_CELL_UM, LocatedCell, NotASmearError, locate_cells, masked_single_cell

STYLES = ("masked", "crop")
# White-cell diameters on a dried smear: a small lymphocyte ~7 um, a neutrophil 10-14 um, a monocyte or
# blast up to ~20-25 um (Bain, "Blood Cells: A Practical Guide"). A red-cell ruler that puts the median
# training cell outside these bounds is measuring something else (on PBC's 360 px crops, whose pale red
# cells are mostly cut by the edge, it reads ~16 px for cells ~75 px across, i.e. 55 um white cells).
WHITE_CELL_UM = (5.0, 30.0)


class CellsError(LeukedgeError, ValueError):
    """The card (or the options) cannot say how the training cells look; one line saying how to add it."""


def cells_spec(card, override: dict | None = None) -> dict:
    """The `cells` description to crop with: the card's (`getattr(card, "cells", None)`), updated by `override`.

    Returns a dict with style, canvas_px, diameter_px, um_per_px. Raises CellsError (one line) when the card
    has none and the override does not give style and canvas_px, or a value is invalid.
    """
    spec = dict(getattr(card, "cells", None) or {})
    spec.update({k: v for k, v in (override or {}).items() if v is not None})
    if "style" not in spec or "canvas_px" not in spec:
        raise CellsError("the model card does not say how its training cells look (no 'cells' field): re-run "
                         "`leukedge train`/`import` to measure it, or give the style, canvas and scale as options "
                         "(cells={'style': 'masked'|'crop', 'canvas_px': N, 'um_per_px': X})")
    if spec["style"] not in STYLES:
        raise CellsError(f"cells style must be one of {STYLES}, got {spec['style']!r}")
    canvas = spec["canvas_px"]
    if isinstance(canvas, bool) or not isinstance(canvas, int) or not 16 <= canvas <= 8192:
        raise CellsError(f"cells canvas_px must be a whole number of pixels in 16..8192, got {canvas!r}")
    for key in ("um_per_px", "diameter_px"):
        v = spec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise CellsError(f"cells {key} must be a number > 0, got {v!r}")
    spec.setdefault("um_per_px", None)
    spec.setdefault("diameter_px", None)
    return spec


def crop_scale(spec: dict, frame_um_per_px: float | None) -> float:
    """Training pixels per frame pixel: frame um/px over the training cells' um/px.

    Raises CellsError when either scale is unknown (the frame's comes from the camera or the red cells).
    """
    if spec.get("um_per_px") is None:
        raise CellsError("the training cells' micrometres per pixel is unknown (cells.um_per_px is null): give "
                         "it as an option (cells={'um_per_px': X}); a frame is never rescaled per cell")
    if frame_um_per_px is None:
        raise CellsError("the frame's micrometres per pixel is unknown: give the camera's, or use frames with red cells")
    return float(frame_um_per_px) / float(spec["um_per_px"])


def cell_canvas(frame: np.ndarray, cell: LocatedCell, spec: dict, scale: float,
                background: tuple[int, int, int]) -> np.ndarray:
    """The cell as a training image: uint8 (canvas_px, canvas_px, 3).

    frame: uint8 (H, W, 3) at full resolution; cell: from locate_cells on that frame; spec: `cells_spec`;
    scale: `crop_scale` (training px per frame px); background: the glass colour, used to pad a 'crop' that
    reaches past the frame's edge (a 'masked' canvas is black outside the cell). One resize (INTER_AREA when
    shrinking, bilinear when enlarging), centred on the cell's centroid.
    """
    canvas = int(spec["canvas_px"])
    side = canvas / scale  # frame pixels the canvas covers
    cx, cy = cell.centroid
    x0, y0 = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    n = int(math.ceil(side))
    h, w = frame.shape[:2]
    fill = (0, 0, 0) if spec["style"] == "masked" else tuple(int(v) for v in background)
    window = np.empty((n, n, 3), np.uint8)
    window[:] = fill
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + n), min(h, y0 + n)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    if spec["style"] == "masked":
        keep = np.zeros((n, n), bool)
        bx0, by0, bx1, by1 = cell.box
        tx0, ty0, tx1, ty1 = max(bx0, x0), max(by0, y0), min(bx1, x0 + n), min(by1, y0 + n)
        if tx1 > tx0 and ty1 > ty0:
            keep[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = cell.mask[ty0 - by0:ty1 - by0, tx0 - bx0:tx1 - bx0]
        window[~keep] = 0
    interp = cv2.INTER_AREA if n > canvas else cv2.INTER_LINEAR
    return cv2.resize(window, (canvas, canvas), interpolation=interp)


def measure_cells(images: Iterable[str | os.PathLike | np.ndarray], um_per_px: float | None = None,
                  limit: int | None = 200) -> dict:
    """Measure how training cells look, for a card's `cells` field, with the same locator as the frames.

    images: training image files or uint8 RGB arrays (H, W, 3), one cell each (a sample is enough; `limit`
    caps how many are read, None = all). um_per_px: the training images' micrometres per pixel when known.
    Returns {"style", "canvas_px", "diameter_px", "um_per_px"}: style 'masked' when most images are one cell
    on black (`masked_single_cell`), else 'crop'; canvas_px the median longest side; diameter_px the median
    white-cell diameter (masked: the cell's area; crop: the located cell nearest the centre); um_per_px
    given, else from the red cells (RED_CELL_UM / median red-cell diameter) for crops that show them, else None;
    a ruler that makes the median white cell smaller or larger than WHITE_CELL_UM allows is not trusted (None).
    Raises CellsError when no image could be measured.
    """
    from ..preprocess import ImageError, load_rgb

    sides, diameters, rulers, masked = [], [], [], 0
    n = 0
    for item in images:
        if limit is not None and n >= limit:
            break
        try:
            rgb = item if isinstance(item, np.ndarray) else load_rgb(item)
        except ImageError:
            continue
        n += 1
        h, w = rgb.shape[:2]
        sides.append(max(h, w))
        single = masked_single_cell(rgb)
        if single is not None:
            masked += 1
            diameters.append(single[1])
            continue
        try:
            loc = locate_cells(rgb, um_per_px)
        except NotASmearError:
            continue
        if loc.red_cell_px is not None:
            rulers.append(loc.red_cell_px)
        if loc.cells:
            c = min(loc.cells, key=lambda c: (c.centroid[0] - w / 2) ** 2 + (c.centroid[1] - h / 2) ** 2)
            diameters.append(c.diameter_px)
    if not sides or not diameters:
        raise CellsError(f"could not measure the training cells: none of {n} image(s) showed a white cell")
    style = "masked" if masked * 2 > n else "crop"
    if um_per_px is None and style == "crop" and len(rulers) >= 3:
        ruler = RED_CELL_UM / float(np.median(rulers))
        if WHITE_CELL_UM[0] <= ruler * float(np.median(diameters)) <= WHITE_CELL_UM[1]:
            um_per_px = ruler
    return {"style": style, "canvas_px": int(np.median(sides)), "diameter_px": round(float(np.median(diameters)), 2),
            "um_per_px": None if um_per_px is None else round(float(um_per_px), 5)}


__all__ = ["CellsError", "STYLES", "WHITE_CELL_UM", "cell_canvas", "cells_spec", "crop_scale", "measure_cells"]
