"""The composed-field benchmark's building blocks (benchmarks/composed_frames.py) on generated fields."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from test_fields import NUCLEUS, RBC_PX, make_field  # noqa: E402

from leukedge.benchmarks.composed_frames import Cell, compose, paint_out, turned  # noqa: E402
from leukedge.edge.fields.locate import locate_cells  # noqa: E402


def dark_cell(size=120, radius=34):
    """A C-NMC-like cell: a near-black violet disc with an off-centre nucleus, masked on black."""
    rgb = np.zeros((size, size, 3), np.uint8)
    cv2.circle(rgb, (size // 2, size // 2), radius, (72, 36, 86), -1)
    cv2.circle(rgb, (size // 2 + 8, size // 2), radius // 2, (60, 24, 70), -1)
    return Cell("cell.bmp", rgb, rgb.max(axis=2) > 16)


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.5])
def test_turned_cell_keeps_its_area_times_scale_squared(scale):
    cell = dark_cell()
    for angle in (0.0, 37.0, 200.0):
        rgb, alpha, centre = turned(cell, angle, scale)
        assert (alpha >= 0.5).sum() == pytest.approx(cell.mask.sum() * scale ** 2, rel=0.04)
        ys, xs = np.nonzero(alpha >= 0.5)
        assert abs(xs.mean() + 0.5 - centre[0]) < 1.5 and abs(ys.mean() + 0.5 - centre[1]) < 1.5
        assert rgb[alpha < 0.01].max(initial=0) <= 2  # black outside the cell (bilinear rounding at the rim)


def test_compose_places_whole_cells_apart_and_the_locator_finds_each():
    bg = make_field(wbcs=(), platelets=0)
    rng = np.random.default_rng(3)
    made = compose(bg, [dark_cell()] * 3, [0, 1, 2], 1.2, 1.0, rng, gap_px=24, margin_px=40)
    assert made is not None
    frame, placed = made
    assert frame.shape == (576, 768, 3)  # the background resized with the cells (x1.2)
    grown = [cv2.dilate(p.mask.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool) for p in placed]
    for i in range(3):
        ys, xs = np.nonzero(placed[i].mask)
        assert xs.min() >= 40 and ys.min() >= 40 and xs.max() < 768 - 40 and ys.max() < 576 - 40
        for j in range(i + 1, 3):
            assert not (grown[i] & placed[j].mask).any()  # at least gap_px apart
    loc = locate_cells(frame, 7.5 / (RBC_PX * 1.2))
    hits = [sum(p.mask[int(c.centroid[1]), int(c.centroid[0])] for c in loc.cells) for p in placed]
    assert hits == [1, 1, 1] and len(loc.cells) == 3


def test_compose_gives_up_when_the_cells_do_not_fit():
    bg = make_field(wbcs=(), size=(160, 120), platelets=0)
    assert compose(bg, [dark_cell()], [0, 0, 0], 1.5, 1.0, np.random.default_rng(0), gap_px=24, margin_px=10) is None


def test_paint_out_removes_a_white_cell_and_keeps_the_rest():
    rgb = make_field([(320, 240)], platelets=0)
    region = np.zeros(rgb.shape[:2], np.uint8)
    cv2.circle(region, (320, 240), 44, 1, -1)
    painted = paint_out(rgb, region.astype(bool), np.random.default_rng(0))
    assert painted is not None and locate_cells(rgb).cells and not locate_cells(painted).cells
    nucleus_like = np.abs(painted.astype(int) - NUCLEUS).sum(axis=2) < 40
    assert not nucleus_like[region.astype(bool)].any()
    far = ~cv2.dilate(region, np.ones((41, 41), np.uint8)).astype(bool)
    assert np.array_equal(painted[far], rgb[far])
