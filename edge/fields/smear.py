"""Steps 1 and 2 of edge.fields.locate's rules (its module docstring states them): `check_smear`, which
refuses with `NotASmearError` a frame that is not a bright-field stained blood smear, and
`red_cell_diameter`, the red-cell ruler that sets micrometres per pixel as RED_CELL_UM / diameter.
edge.fields.locate re-exports every public name here.

Shapes and units: frames are uint8 RGB arrays (H, W, 3); diameters are in the frame's pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import LeukedgeError

# -- the numbers, and where each comes from ---------------------------------------------------------------

# Mean diameter of a normal red cell on a dried, stained smear: 7.5 um is the textbook figure (normal range
# about 6.7-7.7 um; Bain, "Blood Cells: A Practical Guide"). When both the training cells and the frame
# are scaled by this ruler the constant cancels out; it matters only where a camera's um/px is mixed with it.
RED_CELL_UM = 7.5
# Smear check (measured on every 4th BCCD frame: background green 192-215, stained fraction 0.31-0.7). The
# limits leave wide margins for paler or darker stains.
MIN_BACKGROUND_GREEN = 110  # the glass seen in bright field; fluorescence/dark field is far darker
STAINED_DROP = 25  # a pixel is stained when its green is this much below the background's
MIN_STAINED_FRACTION = 0.02  # below: a blank slide or an empty area, not a smear
# Share of stained pixels where green is not the least absorbed channel (absorbance log(glass / pixel) per
# channel): eosin (red cells) absorbs green most, azure/methylene blue (nuclei) green and red; BCCD: >= 0.98.
MIN_GREEN_ABSORBING = 0.80
# The red-cell ruler (see red_cell_diameter): the distance-transform percentile read, and the largest hole
# (as a share of its part's area) taken for central pallor; both chosen on every 3rd BCCD frame against
# the frames' own red-cell boxes.
RULER_PERCENTILE = 90.0
RULER_HOLE_RATIO = 0.3
# The copy the red-cell ruler is measured on: at most this many pixels (a 640x480 frame at half size).
PREVIEW_PIXELS = 80_000


class NotASmearError(LeukedgeError, ValueError):
    """The frame is not a bright-field stained blood smear; the message says why, in one line."""


def background_of(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Median RGB and green level of the glass: the brightest 10 % of green (every 2nd pixel of every 2nd row)."""
    g = rgb[::2, ::2, 1]
    top = np.percentile(g, 90)
    bright = rgb[::2, ::2][g >= top]
    return np.median(bright, axis=0), float(np.median(bright[:, 1]))


def check_smear(rgb: np.ndarray) -> tuple[int, int, int]:
    """Raise NotASmearError unless `rgb` (uint8 (H, W, 3)) looks like a bright-field stained smear.

    Returns the background (glass) colour as (R, G, B). The three rules are in the module docstring.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    small = rgb[::2, ::2]
    bg, bg_g = background_of(rgb)
    if bg_g < MIN_BACKGROUND_GREEN:
        raise NotASmearError(f"not a bright-field smear: the background is dark (green {bg_g:.0f} of 255; "
                             "fluorescence or dark field?)")
    g = small[..., 1].astype(np.int16)
    stained = g < bg_g - STAINED_DROP
    frac = float(stained.mean())
    if frac < MIN_STAINED_FRACTION:
        raise NotASmearError(f"not a stained smear: only {frac:.1%} of the frame is stained "
                             "(a blank slide, an empty area or far out of focus)")
    absorb = np.log((bg.astype(np.float32) + 1.0) / (small[stained].astype(np.float32) + 1.0))
    green_absorbs = float((absorb[:, 1] >= np.minimum(absorb[:, 0], absorb[:, 2])).mean())
    if green_absorbs < MIN_GREEN_ABSORBING:
        raise NotASmearError(f"not a stained smear: the colours are not those of a Romanowsky-type stain (green "
                             f"is absorbed more than red or blue in {green_absorbs:.0%} of stained pixels, expected "
                             f">= {MIN_GREEN_ABSORBING:.0%}; a photograph or another kind of image?)")
    return tuple(int(round(v)) for v in bg)


def red_cell_diameter(rgb: np.ndarray, background: tuple[int, int, int] | None = None) -> float | None:
    """Red-cell diameter in pixels of `rgb` (uint8 (H, W, 3)), or None when the frame shows too few red cells.

    Red cells: stained (green STAINED_DROP below the glass) and not blue (B - R less than 10 above the
    glass'). Holes smaller than RULER_HOLE_RATIO of their part are filled (central pallor; larger holes are
    glass enclosed by a ring of cells). For discs of radius R the distance transform's values over their
    area reach q R with q = 1 - sqrt(1 - p) at percentile p; R is read from the RULER_PERCENTILE-th
    percentile, which small fragments (little area) and clumps (ridges about one radius deep) barely move.
    Checked against the median BCCD red-cell box of each of 118 frames: ratio 0.95 median, 0.72..1.44 for
    5..95 % of frames (a per-frame ruler is noisy: give the camera's um/px, or the median over its frames,
    where it matters). Measured on a copy of at most PREVIEW_PIXELS; again on 4x the pixels while the cells
    there are under 16 px across. None when red cells cover under 2 % of the frame.
    """
    h, w = rgb.shape[:2]
    budget = PREVIEW_PIXELS
    while True:
        f = min(1.0, math.sqrt(budget / float(h * w)))
        prev = rgb if f >= 1.0 else cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))),
                                               interpolation=cv2.INTER_AREA)
        d = _red_cell_diameter_at(prev, background)
        if d is None or d >= 16 or f >= 1.0:
            return None if d is None else d / f
        budget *= 4


def _red_cell_diameter_at(prev: np.ndarray, background) -> float | None:
    bg = background_of(prev)[0] if background is None else np.asarray(background, np.float32)
    r = prev[..., 0].astype(np.int16)
    g = prev[..., 1].astype(np.int16)
    b = prev[..., 2].astype(np.int16)
    red = ((g < bg[1] - STAINED_DROP) & (b - r < bg[2] - bg[0] + 10)).astype(np.uint8)
    red = cv2.morphologyEx(red, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if red.mean() < 0.02:
        return None
    contours, hierarchy = cv2.findContours(red, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None:
        for i, (_, _, _, parent) in enumerate(hierarchy[0]):
            if parent >= 0 and cv2.contourArea(contours[i]) <= RULER_HOLE_RATIO * cv2.contourArea(contours[parent]):
                cv2.drawContours(red, contours, i, 1, thickness=-1)
    dist = cv2.distanceTransform(red, cv2.DIST_L2, 3)
    q = 1.0 - math.sqrt(1.0 - RULER_PERCENTILE / 100.0)
    return 2.0 * float(np.percentile(dist[red > 0], RULER_PERCENTILE)) / q

