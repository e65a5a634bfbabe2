"""`leukedge data crop` (issue 25 item 2): frames -> a labelable dataset of cell crops -> `leukedge train`."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2")

from test_fields import RBC_PX, make_field  # noqa: E402

from leukedge.train.crop import (CropError, CropOptions, crop_frames, read_annotations,  # noqa: E402
                                 read_reviewed)

# three white cells per generated 640x480 field, far enough apart not to touch (a cell is ~68 px across)
SPOTS = ((130, 130), (320, 340), (510, 130))
CAMERA_UM = 7.5 / RBC_PX  # the generated fields' scale: 0.125 um/px


def write_fields(folder, n=8, seed=0):
    """n generated fields, each with the three SPOTS; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"field{i:02d}.png"
        Image.fromarray(make_field(SPOTS, seed=seed + i)).save(p)
        paths.append(p)
    return paths


def voc(folder, frames, label_of):
    """One VOC XML per frame, a box around each SPOT labelled label_of(frame index, spot index)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        objs = "".join(f"<object><name>{label_of(i, j)}</name><bndbox><xmin>{x - 40}</xmin><ymin>{y - 40}</ymin>"
                       f"<xmax>{x + 40}</xmax><ymax>{y + 40}</ymax></bndbox></object>"
                       for j, (x, y) in enumerate(SPOTS))
        (folder / f"{f.stem}.xml").write_text(f"<annotation><filename>{f.name}</filename>{objs}"
                                              "<object><name>RBC</name><bndbox><xmin>5</xmin><ymin>5</ymin>"
                                              "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")


def manifest(root):
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_annotated_frames_round_trip_into_train(tmp_path, monkeypatch):
    from leukedge.edge.card import load_card_for_model
    from leukedge.train.config import TrainConfig
    from leukedge.train.datasets import read_dataset
    from leukedge.train.fit import train

    frames = write_fields(tmp_path / "frames", n=8)
    voc(tmp_path / "ann", frames, lambda i, j: "all" if (i + j) % 2 else "hem")
    out = tmp_path / "ds"
    res = crop_frames(tmp_path / "frames", out, CropOptions(annotations=str(tmp_path / "ann"), classes=("all", "hem"),
                                                            style="crop", canvas_px=128, um_per_px=0.1))
    assert res.errors == [] and res.cells == 24 and res.per_folder == {"all": 12, "hem": 12}
    assert res.reviewed == 24 and len(read_reviewed(out)) == 24  # annotated cells were labelled by a person
    rows = manifest(out)
    assert {r["source"] for r in rows} == {"annotation"} and all(r["p_all"] == "" for r in rows)
    first = next(r for r in rows if r["frame"] == "field00.png" and r["cell"] == "1")
    assert abs(float(first["x"]) - 130) < 8 and abs(float(first["y"]) - 130) < 8  # frame pixels, top-left cell first
    assert first["file"] == "hem/field00.cell1.png"
    with Image.open(out / first["file"]) as im:
        assert im.size == (128, 128)
    rec = json.loads((out / "crop.json").read_text())
    assert rec["cells"] == {"style": "crop", "canvas_px": 128, "diameter_px": None, "um_per_px": 0.1}
    assert rec["annotations_without_a_cell"] == 0

    ds = read_dataset(out)
    assert ds.layout == "folders" and ds.labels == ["hem", "all"] and len(ds.labelled) == 24 and ds.problems == []
    cfg = TrainConfig(image_size=75, batch_size=8, epochs_head=1, epochs=0, weights="none",
                      max_train_images=16).validate()
    train(out, tmp_path / "run", cfg)
    card = load_card_for_model(tmp_path / "run" / "model.keras")
    # the crops' scale comes back from crop.json, the look from the crops themselves
    assert card.cells["style"] == "crop" and card.cells["canvas_px"] == 128 and card.cells["um_per_px"] == 0.1
    assert card.cells["diameter_px"] == pytest.approx(68 * CAMERA_UM / 0.1, rel=0.2)  # 68 px at 0.125 -> 0.1 um/px


def test_a_model_sorts_cells_unreviewed_with_the_frame_paths_p(tiny_models, tmp_path):
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.fields import classify_frame

    frames = write_fields(tmp_path / "frames", n=2)
    model = tiny_models["float32"]
    look = dict(style="masked", canvas_px=96, um_per_px=0.125)
    res = crop_frames(tmp_path / "frames", tmp_path / "ds", CropOptions(model=str(model), **look))
    assert res.cells == 6 and res.reviewed == 0 and read_reviewed(tmp_path / "ds") == set()
    rows = manifest(tmp_path / "ds")
    clf = Classifier.load(model)
    for f in frames:
        expected = classify_frame(clf, f, cells=look).cells
        got = [r for r in rows if r["frame"] == f.name]
        assert [int(r["cell"]) for r in got] == [c.cell for c in expected]
        for r, c in zip(got, expected):  # the crop the device would classify, and its P
            assert float(r["p_all"]) == pytest.approx(c.p_all, abs=1e-6)
            assert r["predicted"] == r["label"] == c.label and r["source"] == "model" and r["reviewed"] == "no"
            assert r["file"] == f"{c.label}/{f.stem}.cell{c.cell}.png"
            assert (r["x0"], r["y0"], r["x1"], r["y1"]) == tuple(str(v) for v in c.box)
    # masked style: black outside the located cell
    with Image.open(tmp_path / "ds" / rows[0]["file"]) as im:
        a = np.asarray(im)
    assert a.shape == (96, 96, 3) and a[0, 0].max() == 0 and a[48, 48].max() > 0


def test_no_model_goes_to_unlabelled_then_a_lab_sorts_it(tmp_path):
    from leukedge.train.datasets import DatasetError, read_dataset

    write_fields(tmp_path / "frames", n=2)
    out = tmp_path / "ds"
    res = crop_frames(tmp_path / "frames", out, CropOptions(style="crop", canvas_px=96))
    assert res.per_folder == {"unlabelled": 6} and res.reviewed == 0
    rec = json.loads((out / "crop.json").read_text())
    # no card, no camera scale: the frames' own median red-cell ruler, so crops keep the camera's pixels
    assert rec["cells"]["um_per_px"] == pytest.approx(CAMERA_UM, rel=0.25) and "median red-cell" in rec["scale_from"]
    with pytest.raises(DatasetError, match="two class folders"):
        read_dataset(out)
    # a technologist sorts four cells into two classes and lists three as reviewed; two stay unlabelled
    files = sorted((out / "unlabelled").iterdir())
    for cls, group in (("all", files[:2]), ("hem", files[2:4])):
        (out / cls).mkdir()
        for f in group:
            shutil.move(str(f), out / cls / f.name)
    with open(out / "reviewed.txt", "a") as fh:
        fh.writelines(f"{f.name}\n" for f in files[:3])
    ds = read_dataset(out)
    assert ds.labels == ["hem", "all"] and len(ds.labelled) == 4
    assert [p for _, p in ds.problems] == [
        "2 images here are not used by the folders layout (33 % of the images under the root)",
        "1 of 4 images are not listed in reviewed.txt (no person has checked their class): a model trained on "
        "a model's unchecked sorting learns that model's mistakes"]


def test_camera_scale_and_csv_points(tmp_path):
    frames = write_fields(tmp_path / "frames", n=1)
    (tmp_path / "ann.csv").write_text("frame,label,x,y\n" + "".join(
        f"{frames[0].name},{'blast' if j == 0 else 'lymph'},{x},{y}\n" for j, (x, y) in enumerate(SPOTS[:2])))
    res = crop_frames(tmp_path / "frames", tmp_path / "ds",
                      CropOptions(annotations=str(tmp_path / "ann.csv"), style="masked", canvas_px=64,
                                  camera_um_per_px=CAMERA_UM))
    assert res.per_folder == {"blast": 1, "lymph": 1, "unlabelled": 1} and res.reviewed == 2
    rec = json.loads((tmp_path / "ds" / "crop.json").read_text())
    assert rec["cells"]["um_per_px"] == CAMERA_UM and "camera" in rec["scale_from"]
    assert rec["annotations_without_a_cell"] == 0


def test_bad_frames_are_lines_and_the_rest_goes_on_exit_1(tmp_path):
    write_fields(tmp_path / "frames", n=1)
    Image.fromarray(np.zeros((200, 300, 3), np.uint8) + 20).save(tmp_path / "frames" / "dark.png")
    (tmp_path / "frames" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "data", "crop", str(tmp_path / "frames"), "-o",
                        str(tmp_path / "ds"), "--style", "crop", "--canvas", "96", "--um-per-px", "0.125"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert any(ln.startswith("leukedge data crop: broken.jpg: ") for ln in lines)
    assert any(ln.startswith("leukedge data crop: dark.png: not a bright-field smear") for ln in lines)
    assert "3 cells from 1 of 3 frames" in lines[-1] and "Traceback" not in r.stderr
    rec = json.loads((tmp_path / "ds" / "crop.json").read_text())
    assert rec["frames_failed"] == 2 and rec["cells_cropped"] == 3


@pytest.mark.parametrize("args, words", [
    ([], "--style masked|crop and --canvas"),
    (["--style", "crop", "--canvas", "96", "--annotations", "ANN"], "needs columns frame, label"),
    (["-m", "MISSING.tflite"], "missing.tflite: model file not found"),
])
def test_setup_problems_are_one_line_exit_2_and_nothing_written(tmp_path, args, words):
    write_fields(tmp_path / "frames", n=1)
    (tmp_path / "bad.csv").write_text("image,what\nfield00.png,x\n")
    args = [a.replace("ANN", str(tmp_path / "bad.csv")).replace("MISSING", str(tmp_path / "missing")) for a in args]
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "data", "crop", str(tmp_path / "frames"), "-o",
                        str(tmp_path / "ds"), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "ds").exists()


def test_out_must_be_new_and_the_card_must_know_its_scale(tiny_models, tmp_path):
    write_fields(tmp_path / "frames", n=1)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "x.txt").write_text("mine")
    with pytest.raises(CropError, match="not an empty folder"):
        crop_frames(tmp_path / "frames", tmp_path / "ds", CropOptions(style="crop", canvas_px=96))
    # the tiny model's card has no `cells`; style and canvas alone leave its training scale unknown
    with pytest.raises(CropError, match="--um-per-px"):
        crop_frames(tmp_path / "frames", tmp_path / "new", CropOptions(model=str(tiny_models["float32"]),
                                                                       style="masked", canvas_px=96))
    assert not (tmp_path / "new").exists()


def test_voc_empty_boxes_are_ignored_and_named(tmp_path):
    frames = write_fields(tmp_path / "frames", n=1)
    voc(tmp_path / "ann", frames, lambda i, j: "WBC")
    anns, problems = read_annotations(tmp_path / "ann")
    assert [a.label for a in anns["field00"]] == ["WBC"] * 3
    assert problems == ["field00.xml: object 'RBC' has an empty box (5, 5, 5, 5): ignored"]
    anns, problems = read_annotations(tmp_path / "ann", classes=("WBC",))
    assert len(anns["field00"]) == 3 and problems == []
    (tmp_path / "ann" / "field00.xml").write_text("<annotation><object>")
    with pytest.raises(CropError, match="field00.xml: not VOC XML"):
        read_annotations(tmp_path / "ann")
