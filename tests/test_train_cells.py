"""The card's `cells` field measured by train/import (issue 24 item 2): optional, one warning line when it cannot be."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import PBC
from leukedge.train.cells import CROP_RECORD, measure_training_cells, recorded_um_per_px
from leukedge.train.config import TrainConfig

QUICK = dict(image_size=75, batch_size=16, epochs_head=0, epochs=0, fine_tune_from="mixed9", weights="none")


def _masked_cells(tmp_path, n=4):
    """One lilac cell with a purple nucleus masked on black, 120x120 (C-NMC's style in miniature)."""
    import cv2

    paths = []
    for i in range(n):
        img = np.zeros((120, 120, 3), np.uint8)
        cv2.circle(img, (60, 60), 30 + i, (196, 180, 218), -1)
        cv2.circle(img, (60, 60), 15, (112, 82, 184), -1)
        p = tmp_path / f"c{i}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


def _without_opencv(monkeypatch):
    """Make `import cv2` fail as it does where the `fields` extra is not installed."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    for name in [m for m in sys.modules if m.startswith("leukedge.edge.fields.")]:
        monkeypatch.delitem(sys.modules, name)


def test_measures_masked_cells(tmp_path):
    pytest.importorskip("cv2")
    cells = measure_training_cells(_masked_cells(tmp_path))
    assert cells["style"] == "masked" and cells["canvas_px"] == 120 and cells["um_per_px"] is None
    assert cells["diameter_px"] == pytest.approx(63, rel=0.1)


def test_without_opencv_no_cells_and_one_warning_line(tmp_path, monkeypatch, capsys):
    paths = [str(tmp_path / "x.png")]
    _without_opencv(monkeypatch)
    assert measure_training_cells(paths, step="import") is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("leukedge import: warning:") and "leukedge[fields]" in err[0]


def test_unmeasurable_images_no_cells_and_one_warning_line(tmp_path, capsys):
    pytest.importorskip("cv2")
    p = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(p)
    assert measure_training_cells([str(p)]) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CellsError" in err[0] and "no 'cells' field" in err[0]


def test_a_crop_datasets_recorded_scale_is_used(tmp_path):
    pytest.importorskip("cv2")
    (tmp_path / CROP_RECORD).write_text(json.dumps({"cells": {"style": "masked", "canvas_px": 120, "um_per_px": 0.08}}))
    assert recorded_um_per_px(tmp_path) == 0.08
    assert measure_training_cells(_masked_cells(tmp_path), root=tmp_path)["um_per_px"] == 0.08
    (tmp_path / CROP_RECORD).write_text("{not json")
    assert recorded_um_per_px(tmp_path) is None
    assert recorded_um_per_px(tmp_path / "nowhere") is None


def test_an_implausible_red_cell_ruler_is_not_written(tmp_path, monkeypatch):
    """A ruler that makes the white cells 50 um across is measuring something else: no um_per_px."""
    pytest.importorskip("cv2")
    from test_fields import make_field

    from leukedge.edge.fields import crops, locate

    paths = []
    for s in range(3):
        p = tmp_path / f"f{s}.png"
        Image.fromarray(make_field([(180, 180)], size=(360, 360), seed=s)).save(p)
        paths.append(p)
    good = crops.measure_cells(paths)
    assert good["um_per_px"] is not None and 5 < good["um_per_px"] * good["diameter_px"] < 30
    monkeypatch.setattr(locate, "red_cell_diameter", lambda rgb, bg=None: 10.0)  # 0.75 um/px: cells ~51 um
    assert crops.measure_cells(paths)["um_per_px"] is None


@pytest.mark.skipif(not PBC.is_dir(), reason="PBC sample not present (../shared/data)")
def test_pbc_crops_get_no_wrong_scale():
    """PBC's pale red cells, mostly cut by the 360 px crop's edge, fool the ruler (~16 px for ~75 px cells)."""
    pytest.importorskip("cv2")
    paths = sorted(str(p) for p in PBC.glob("*/*.jpg"))[::100]
    cells = measure_training_cells(paths)
    assert cells["style"] == "crop" and 355 <= cells["canvas_px"] <= 370
    assert cells["um_per_px"] is None or 5 < cells["um_per_px"] * cells["diameter_px"] < 30


def test_train_without_opencv_writes_a_card_without_cells(synth_dir, tmp_path, monkeypatch, capsys):
    from leukedge.edge.card import load_card_for_model
    from leukedge.train.fit import train

    _without_opencv(monkeypatch)
    train(synth_dir, tmp_path / "run", TrainConfig(**QUICK).validate())
    assert load_card_for_model(tmp_path / "run" / "model.keras").cells is None
    assert "leukedge train: warning: the card gets no 'cells' field" in capsys.readouterr().err
