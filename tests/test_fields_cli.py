"""`edge-classify --fields` (issue 24 item 3) and the engine options (issue 22) through the device CLI."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
from test_fields import CROP_CELLS, make_field  # noqa: E402

EDGE = [sys.executable, "-m", "leukedge.edge.cli"]


def _run(*args):
    return subprocess.run([*EDGE, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def cells_model(tiny_models, tmp_path):
    """The tiny float32 model with a card that says how its training cells look (crop style)."""
    from leukedge.edge.card import card_path_for, load_card_for_model

    model = tmp_path / "float32.tflite"
    shutil.copy(tiny_models["float32"], model)
    card = load_card_for_model(tiny_models["float32"])
    card.cells = dict(CROP_CELLS)
    card.save(card_path_for(model))
    return model


def test_fields_batch_writes_one_row_per_white_cell_an_error_row_and_overlays(cells_model, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(make_field(wbcs=((180, 150), (470, 330)))).save(frames / "a.png")
    Image.fromarray(make_field(wbcs=(), seed=1)).save(frames / "b.png")  # no white cell: a result, 0 cells
    Image.fromarray(np.full((480, 640, 3), 255, np.uint8)).save(frames / "c.png")  # blank: not a smear
    out, overlays = tmp_path / "rows.csv", tmp_path / "overlays"
    r = _run("-m", cells_model, "--fields", "--um-per-px", "0.125", "--overlays", overlays, "--format", "csv",
             "-o", out, frames)
    assert r.returncode == 1, r.stderr  # one frame failed; the batch went on
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    from leukedge.edge.frame_batch import FRAME_FIELDS

    assert tuple(rows[0]) == FRAME_FIELDS
    a = [row for row in rows if row["frame"].endswith("a.png")]
    assert len(a) == 2 and {row["cells"] for row in a} == {"2"}
    for row in a:
        assert 0.0 <= float(row["p_all"]) <= 1.0 and row["label"] in ("all", "hem")
    b = [row for row in rows if row["frame"].endswith("b.png")]
    assert len(b) == 1 and b[0]["cells"] == "0" and not b[0]["error"]
    c = [row for row in rows if row["frame"].endswith("c.png")]
    assert len(c) == 1 and c[0]["error"]
    assert len(list(overlays.glob("*.png"))) == 2  # a and b (c could not be located)
    assert "c.png" in r.stderr and "3 frame(s): 2 white cell(s)" in r.stderr


def test_fields_with_a_card_without_cells_is_refused_in_one_line(tiny_models, tmp_path):
    Image.fromarray(make_field()).save(tmp_path / "f.png")
    r = _run("-m", tiny_models["float32"], "--fields", "--format", "json", tmp_path / "f.png")
    assert r.returncode == 2 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "unsigned" not in ln and "float32.tflite (" not in ln]
    assert len(lines) == 1 and "cells" in lines[0], r.stderr


@pytest.mark.parametrize("args, words", [
    (["--overlays", "o"], "only applies with --fields"),
    (["--fields", "--watch", "."], "not supported yet"),
    (["--engine", "tensorflow"], "invalid choice"),
])
def test_fields_and_engine_usage_errors_are_one_line(tiny_models, tmp_path, args, words):
    r = _run("-m", tiny_models["float32"], *args, tmp_path)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_engine_litert_named_and_a_missing_choice_file(tiny_models, synth_dir, tmp_path):
    img = sorted(synth_dir.rglob("*.bmp"))[0]
    r = _run("-m", tiny_models["float32"], "--engine", "litert", "--format", "json", img)
    assert r.returncode == 0, r.stderr
    assert 0.0 <= json.loads(r.stdout.splitlines()[0])["p_all"] <= 1.0
    r = _run("--choice", tmp_path / "nowhere.json", "--format", "json", img)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
