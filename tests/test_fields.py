"""leukedge.edge.fields: white cells found in generated fields (known positions) and in BCCD frames when present."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2")

from helpers import SHARED_DATA  # noqa: E402
from leukedge.edge.card import ModelCard  # noqa: E402
from leukedge.edge.classifier import Classifier  # noqa: E402
from leukedge.edge.fields import crops, frames, locate  # noqa: E402
from leukedge.edge.preprocess import DecodeOptions, Preprocessing  # noqa: E402

BCCD = SHARED_DATA / "bccd"
GLASS = (212, 216, 214)
RED = (196, 148, 152)
NUCLEUS = (112, 82, 184)
CYTOPLASM = (196, 180, 218)
RBC_PX = 60  # red-cell diameter in the generated fields: 7.5 um / 60 px = 0.125 um/px


def make_field(wbcs=((200, 160),), size=(640, 480), seed=0, platelets=6, blur=0.0, rbc=True):
    """A stained-smear-like frame: glass, red cells (pink discs with pale centres), white cells (lilac
    cytoplasm disc of radius 34 px, purple nucleus of two lobes), platelets (purple dots, radius 4 px)."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = GLASS
    r = RBC_PX // 2
    if rbc:
        placed = 0
        for _ in range(4000):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            if any(math.hypot(x - cx, y - cy) < 34 + r + 4 for cx, cy in wbcs):
                continue
            cv2.circle(img, (x, y), r, RED, -1)
            cv2.circle(img, (x, y), r // 3, tuple(int(0.5 * a + 0.5 * b) for a, b in zip(RED, GLASS)), -1)
            placed += 1
            if placed >= 28:
                break
    for _ in range(platelets):
        x, y = int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))
        if all(math.hypot(x - cx, y - cy) > 60 for cx, cy in wbcs):
            cv2.circle(img, (x, y), 4, NUCLEUS, -1)
    for cx, cy in wbcs:
        cv2.circle(img, (cx, cy), 34, CYTOPLASM, -1)
        cv2.circle(img, (cx - 9, cy - 4), 13, NUCLEUS, -1)
        cv2.circle(img, (cx + 10, cy + 5), 12, NUCLEUS, -1)
    noise = rng.normal(0, 2.0, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return img


def masked_cell(size=450, radius=120):
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), radius, CYTOPLASM, -1)
    cv2.circle(img, (size // 2, size // 2), radius // 2, NUCLEUS, -1)
    return img


class MeanBlueBackend:
    """A stand-in runtime: P(positive) = sigmoid((mean blue - mean red) / 20) of the input, so each crop gets its own P."""

    runtime_name, runtime_version, detail = "stand-in", "0", ""
    input_dtype = output_dtype = np.float32
    input_quantization = output_quantization = (0.0, 0)
    output_size = 2

    def __init__(self, size):
        self.input_shape = (1, size, size, 3)

    def run(self, x):
        v = float(x[0, ..., 2].mean() - x[0, ..., 0].mean()) * 128 / 20
        p = 1 / (1 + math.exp(-v))
        return np.array([1 - p, p], np.float32)


def classifier(tmp_path, cells=None, size=64):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"stand-in")
    card = ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=size),
                     model_file=model.name, model_format="tflite")
    card.cells = cells  # the card's optional `cells` field (set as an attribute: works with or without it declared)
    return Classifier(model, card, backend=MeanBlueBackend(size))


CROP_CELLS = {"style": "crop", "canvas_px": 96, "diameter_px": 68.0, "um_per_px": 0.125}


def save(tmp_path, rgb, name="field.png"):
    p = tmp_path / name
    Image.fromarray(rgb).save(p)
    return p


# -- the locator on generated fields --------------------------------------------------------------------------

def test_finds_white_cells_at_known_positions_and_not_platelets():
    truth = [(180, 150), (470, 330)]
    loc = locate.locate_cells(make_field(truth))
    assert loc.scale_source == "red cells"
    assert loc.red_cell_px == pytest.approx(RBC_PX, rel=0.25)
    assert len(loc.cells) == 2
    for c, (tx, ty) in zip(sorted(loc.cells, key=lambda c: c.centroid[0]), truth):
        assert math.hypot(c.centroid[0] - tx, c.centroid[1] - ty) < 8
        x0, y0, x1, y1 = c.box
        assert x0 <= tx - 25 and x1 >= tx + 25 and y0 <= ty - 25 and y1 >= ty + 25
        assert c.diameter_px == pytest.approx(68, rel=0.2)
        assert c.mask.shape == (y1 - y0, x1 - x0)
        assert not c.flags


def test_no_white_cell_is_zero_cells_not_an_error(tmp_path):
    assert locate.locate_cells(make_field(wbcs=())).cells == []
    res = frames.classify_frame(classifier(tmp_path, CROP_CELLS), save(tmp_path, make_field(wbcs=())))
    assert res.ok and res.cells == []
    assert res.rows() == [{"rows_version": frames.ROWS_VERSION, "frame": res.frame, "cell": 0, "cells": 0}]


def test_a_near_black_violet_cell_is_found():
    """A heavy or normalised stain makes a cell near-black violet with little B - R (C-NMC's: RGB ~(66, 28, 76))."""
    img = make_field([(300, 240)], platelets=0)
    cv2.circle(img, (300, 240), 34, (66, 28, 76), -1)
    loc = locate.locate_cells(img)
    assert len(loc.cells) == 1
    c = loc.cells[0]
    assert math.hypot(c.centroid[0] - 300, c.centroid[1] - 240) < 5 and c.diameter_px == pytest.approx(68, rel=0.15)


def test_extent_hugs_the_cell_not_the_red_cells_around_it():
    """Red cells pressed against a white cell, each with a thin bluish rim (the fringe BCCD's red cells show,
    which passes the cytoplasm colour rule): the extent is the white cell's disc (radius 34 px), not its
    neighbours; the pale cytoplasm disc is kept whole."""
    img = make_field([(300, 240)], platelets=0, rbc=False)
    rim = (180, 180, 200)  # B - R 20 over red, green 36 below the glass: cytoplasm-coloured
    for a in range(0, 360, 60):
        x, y = 300 + round(63 * math.cos(math.radians(a))), 240 + round(63 * math.sin(math.radians(a)))
        cv2.circle(img, (x, y), 30, rim, -1)
        cv2.circle(img, (x, y), 28, RED, -1)
    for x, y in ((80, 80), (560, 80), (80, 400), (560, 400), (150, 240), (450, 240)):
        cv2.circle(img, (x, y), 30, RED, -1)
    cv2.circle(img, (300, 240), 34, CYTOPLASM, -1)  # the white cell on top of its neighbours
    cv2.circle(img, (291, 236), 13, NUCLEUS, -1)
    cv2.circle(img, (310, 245), 12, NUCLEUS, -1)
    loc = locate.locate_cells(img, um_per_px=0.125)
    assert len(loc.cells) == 1
    c = loc.cells[0]
    truth = np.zeros(img.shape[:2], bool)
    cv2.circle(truth.view(np.uint8), (300, 240), 34, 1, -1)
    found = np.zeros_like(truth)
    x0, y0, x1, y1 = c.box
    found[y0:y1, x0:x1] = c.mask
    assert (found & truth).sum() / (found | truth).sum() >= 0.9


def test_flags_edge_cut_and_touching():
    cut = locate.locate_cells(make_field([(20, 240)]))
    assert [c.edge_cut for c in cut.cells] == [True]
    pair = locate.locate_cells(make_field([(250, 240), (318, 240)]))
    assert len(pair.cells) == 2 and all(c.touching for c in pair.cells)
    apart = locate.locate_cells(make_field([(150, 240), (450, 240)]))
    assert [c.touching for c in apart.cells] == [False, False]


def test_blur_flag_follows_focus():
    sharp = locate.locate_cells(make_field([(300, 240)]), um_per_px=0.125)
    soft = locate.locate_cells(make_field([(300, 240)], blur=12), um_per_px=0.125)
    assert [c.blurred for c in sharp.cells] == [False]
    assert [c.blurred for c in soft.cells] == [True]
    assert soft.cells[0].edge_spread_um > sharp.cells[0].edge_spread_um


def test_camera_scale_wins_over_the_ruler():
    loc = locate.locate_cells(make_field([(300, 240)]), um_per_px=0.1)
    assert loc.scale_source == "camera" and loc.um_per_px == 0.1
    with pytest.raises(ValueError):
        locate.locate_cells(make_field([(300, 240)]), um_per_px=-1)


@pytest.mark.parametrize("kind, words", [
    ("blank", "only"), ("dark", "dark"), ("photo", "colours"),
])
def test_not_a_smear_is_a_clear_error(tmp_path, kind, words):
    rng = np.random.default_rng(1)
    if kind == "blank":
        img = np.full((480, 640, 3), 214, np.uint8)
    elif kind == "dark":  # fluorescence: black background, green nuclei
        img = np.zeros((480, 640, 3), np.uint8)
        for _ in range(20):
            cv2.circle(img, (int(rng.integers(0, 640)), int(rng.integers(0, 480))), 20, (20, 220, 40), -1)
    else:  # a photograph: sky over foliage
        img = np.zeros((480, 640, 3), np.uint8)
        img[:240] = (150, 190, 240)
        img[240:] = (60, 140, 50)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    with pytest.raises(locate.NotASmearError, match=words):
        locate.locate_cells(img)
    res = frames.classify_frame(classifier(tmp_path, CROP_CELLS), save(tmp_path, img))
    assert not res.ok and words in res.error and "\n" not in res.error
    assert res.rows() == [{"rows_version": frames.ROWS_VERSION, "frame": res.frame, "error": res.error}]


def test_a_field_without_red_cells_needs_the_camera_scale():
    img = make_field([(110, 110), (330, 110), (530, 110), (110, 370), (330, 370), (530, 370)], rbc=False)
    with pytest.raises(locate.NotASmearError, match="scale"):
        locate.locate_cells(img)
    assert len(locate.locate_cells(img, um_per_px=0.125).cells) == 6


# -- frame to rows ----------------------------------------------------------------------------------------------

def test_classify_frame_rows_overlay_and_crops(tmp_path):
    clf = classifier(tmp_path, CROP_CELLS)
    path = save(tmp_path, make_field([(180, 150), (470, 330)]))
    res = frames.classify_frame(clf, path, overlay=tmp_path / "o.png", crops_dir=tmp_path / "crops")
    assert res.ok and res.kind == "field" and len(res.cells) == 2
    for row in res.cells:
        crop = np.asarray(Image.open(row.crop))
        assert crop.shape == (96, 96, 3)
        # the row's P is the classifier's on exactly the crop resized the per-cell way
        direct = clf.predict_one(frames._to_input(crop, 64, "bilinear"))
        assert row.p_all == pytest.approx(direct.p_all) and row.label == direct.label
        assert row.diameter_um == pytest.approx(row.diameter_px * res.um_per_px)
    rows = res.rows()
    assert [r["cell"] for r in rows] == [1, 2] and all(r["rows_version"] == frames.ROWS_VERSION for r in rows)
    assert {"x", "y", "x0", "y0", "x1", "y1", "diameter_px", "p_all", "label", "edge_cut", "touching", "blurred"} <= set(rows[0])
    with Image.open(tmp_path / "o.png") as im:
        assert im.format == "PNG" and im.size == (640, 480)
        overlay = np.asarray(im.convert("RGB"))
    x0, y0, x1, y1 = res.cells[0].box
    assert (overlay[y0:y1, x0] != np.asarray(Image.open(path))[y0:y1, x0]).any()  # a box was drawn there


def test_scale_is_per_camera_not_per_cell(tmp_path):
    """A larger cell stays larger in its crop: one frame scale, no per-cell resizing."""
    img = make_field([(180, 240)])
    cv2.circle(img, (470, 240), 48, CYTOPLASM, -1)
    cv2.circle(img, (470, 240), 26, NUCLEUS, -1)
    res = frames.classify_frame(classifier(tmp_path, CROP_CELLS), save(tmp_path, img), um_per_px=0.125,
                                crops_dir=tmp_path / "c")
    small, big = sorted(res.cells, key=lambda c: c.diameter_px)
    assert big.diameter_px / small.diameter_px == pytest.approx(96 / 68, rel=0.15)

    def extent(p):
        a = np.asarray(Image.open(p)).astype(int)
        return int(((a[..., 2] - a[..., 0]) > 10).sum())
    assert extent(big.crop) > 1.5 * extent(small.crop)


def test_masked_style_crop_is_black_outside_the_cell(tmp_path):
    spec = {"style": "masked", "canvas_px": 128, "diameter_px": 68.0, "um_per_px": 0.125}
    res = frames.classify_frame(classifier(tmp_path, spec), save(tmp_path, make_field([(300, 240)])),
                                crops_dir=tmp_path / "c")
    crop = np.asarray(Image.open(res.cells[0].crop))
    assert crop.shape == (128, 128, 3)
    assert (crop[:8, :8] == 0).all() and (crop[64, 64] > 0).any()


def test_single_masked_cell_is_one_cell_with_the_per_cell_decision(tmp_path):
    clf = classifier(tmp_path, CROP_CELLS)
    p = save(tmp_path, masked_cell(), "cell.bmp")
    res = frames.classify_frame(clf, p)
    assert res.ok and res.kind == "single cell" and len(res.cells) == 1
    direct = clf.predict_one(p)
    assert res.cells[0].p_all == direct.p_all and res.cells[0].label == direct.label
    assert res.cells[0].diameter_px == pytest.approx(240, rel=0.05)


def test_card_without_cells_is_refused_in_one_line_unless_options_say(tmp_path):
    clf = classifier(tmp_path, None)
    path = save(tmp_path, make_field())
    with pytest.raises(crops.CellsError, match="cells") as exc:
        frames.classify_frame(clf, path)
    assert "\n" not in str(exc.value)
    res = frames.classify_frame(clf, path, cells=CROP_CELLS)
    assert res.ok and len(res.cells) == 1
    # a training scale that is unknown is refused per frame, not guessed
    res = frames.classify_frame(clf, path, cells={**CROP_CELLS, "um_per_px": None})
    assert not res.ok and "um_per_px" in res.error


def test_frame_above_the_pixel_cap_is_located_on_a_reduced_decode(tmp_path):
    big = cv2.resize(make_field([(180, 150), (470, 330)]), (1280, 960), interpolation=cv2.INTER_LINEAR)
    jpg = tmp_path / "big.jpg"
    Image.fromarray(big).save(jpg, quality=95)
    opts = DecodeOptions(max_pixels=400_000)
    rgb, scale = frames.load_frame(jpg, opts)
    assert scale == 0.5 and rgb.shape == (480, 640, 3)
    res = frames.classify_frame(classifier(tmp_path, CROP_CELLS), jpg, decode=opts)
    assert res.ok and res.decode_scale == 0.5 and len(res.cells) == 2
    png = save(tmp_path, big, "big.png")
    res = frames.classify_frame(classifier(tmp_path, CROP_CELLS), png, decode=opts)
    assert not res.ok and "cap" in res.error


def test_unreadable_frame_is_a_row_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = frames.classify_frame(classifier(tmp_path, CROP_CELLS), bad)
    assert not res.ok and res.rows()[0]["error"]


# -- measuring the training cells for the card ---------------------------------------------------------------

def test_measure_cells_masked_and_crop_styles(tmp_path):
    masked = crops.measure_cells([masked_cell(radius=r) for r in (100, 110, 120)])
    assert masked["style"] == "masked" and masked["canvas_px"] == 450 and masked["um_per_px"] is None
    assert masked["diameter_px"] == pytest.approx(220, rel=0.05)
    paths = [save(tmp_path, make_field([(180, 180)], size=(360, 360), seed=s), f"c{s}.png") for s in range(3)]
    crop = crops.measure_cells(paths)
    assert crop["style"] == "crop" and crop["canvas_px"] == 360
    assert crop["diameter_px"] == pytest.approx(68, rel=0.2)
    assert crop["um_per_px"] == pytest.approx(7.5 / RBC_PX, rel=0.25)
    ModelCard(labels=["a", "b"], positive_label="b", preprocessing=Preprocessing(), model_file="m",
              model_format="tflite")  # the dict is what the card's `cells` takes (validated by edge.card)
    with pytest.raises(crops.CellsError):
        crops.measure_cells([np.full((64, 64, 3), 200, np.uint8)])


# -- the single-cell path never loads OpenCV -------------------------------------------------------------------

def test_single_cell_path_does_not_import_opencv():
    code = ("import sys; import leukedge.edge.classifier, leukedge.edge.fields; "
            "assert 'cv2' not in sys.modules, 'cv2 imported'; "
            "import leukedge.edge.fields.locate; assert 'cv2' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# -- real frames (BCCD), when ../shared is here ------------------------------------------------------------------

@pytest.fixture(scope="module")
def bccd():
    if not (BCCD / "Annotations").is_dir():
        pytest.skip(f"BCCD frames not found at {BCCD} (../shared/data is absent on this machine)")
    from leukedge.benchmarks.locate import read_bccd

    return {f["name"]: f for f in read_bccd(BCCD)}


@pytest.mark.parametrize("name", ["BloodImage_00007", "BloodImage_00011", "BloodImage_00015", "BloodImage_00010"])
def test_bccd_frames_white_cells_match_their_boxes(bccd, name):
    from leukedge.benchmarks.locate import match_frame

    f = bccd[name]
    rgb, _ = frames.load_frame(f["path"])
    loc = locate.locate_cells(rgb)
    m = match_frame([{"centroid": c.centroid, "box": c.box} for c in loc.cells], f["boxes"], [])
    assert m["centroid"]["hits"] == len(f["boxes"]) and m["centroid"]["false"] == 0
    assert 60 < loc.red_cell_px < 150  # BCCD's red-cell boxes are ~100 px


def test_bccd_audit_list_is_well_formed(bccd):
    from leukedge.benchmarks.locate import audited

    audit = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/bccd-audit.json").read_text())
    fixed = {f["name"]: f for f in audited(list(bccd.values()), audit)}
    assert all(e["frame"] in bccd for e in audit["entries"])
    assert sum(len(f["boxes"]) for f in fixed.values()) == 372 - 1 + 7
