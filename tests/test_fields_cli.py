"""`edge-classify --fields` (issue 24 item 3) and the engine options (issue 22) through the device CLI."""

from __future__ import annotations

import csv
import json
import os
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
    from leukedge.edge.app.frames import FRAME_FIELDS

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
    (["--crops", "c", "--watch", "."], "only applies with --fields"),
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


def _wait_for(predicate, timeout=60.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _csv_rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _put(field, path):
    """Write a frame into the watched folder whole (written beside it, then renamed in): this test is about the
    frame's block of rows, and a 0.2 s settle can expire inside a slow, loaded non-atomic write (the watcher
    re-reads a file that changes after it was read; the settle rule has its own tests in test_ingest)."""
    tmp = path.parent.parent / (path.name + ".writing")
    Image.fromarray(field).save(tmp, format=path.suffix.lstrip(".").upper())
    os.replace(tmp, path)


def _start_watch(model, watch, out):
    return subprocess.Popen([*EDGE, "-m", str(model), "--fields", "--um-per-px", "0.125", "--format", "csv",
                             "-o", str(out), "--watch", str(watch), "--poll", "--poll-interval", "0.1",
                             "--settle", "0.2", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_watch_takes_frames_journals_each_block_and_survives_a_kill_inside_one(cells_model, tmp_path):
    """Issue 25: a frame is a block of rows, journalled as one (offset, length, CRC). A results file cut inside
    a frame's block (what kill -9 mid-write leaves) is repaired on restart: the frame is classified again, and
    no cell is lost or written twice. Overlays go to a folder beside the results."""
    import signal
    import time

    watch, out = tmp_path / "camera", tmp_path / "rows.csv"
    watch.mkdir()
    proc = _start_watch(cells_model, watch, out)
    try:
        assert _wait_for(lambda: proc.stderr and False or (tmp_path / "rows.csv.journal").exists() or out.exists(), 60)
        time.sleep(1.0)  # the watcher lists the folder before its model loads; frames written after are new
        _put(make_field(wbcs=((180, 150), (470, 330))), watch / "a.png")
        assert _wait_for(lambda: out.exists() and len(_csv_rows(out)) >= 2), "frame a never got its rows"
        _put(make_field(wbcs=(), seed=1), watch / "b.png")
        assert _wait_for(lambda: len(_csv_rows(out)) >= 3), "frame b never got its row"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = _csv_rows(out)
    assert [r["frame"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "a.png", "b.png"]
    assert len(list((tmp_path / "rows.csv.overlays").glob("*.png"))) == 2
    assert "3 white cell" not in err and "2 white cell(s)" in err  # the stop line counts frames' cells

    # a kill inside a's block: the file ends in the middle of a's second row (b's row lost with it)
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    cut = len(lines[0]) + len(lines[1]) + len(lines[2]) // 2
    out.write_bytes(data[:cut])
    proc = _start_watch(cells_model, watch, out)
    try:
        assert _wait_for(lambda: len(_csv_rows(out)) == 3 and out.read_bytes().endswith(b"\n")
                         and b"b.png" in out.read_bytes(), 90), out.read_text()
        time.sleep(1.0)  # nothing more may come
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = _csv_rows(out)
    assert sorted(r["frame"].rsplit("/", 1)[-1] + "#" + r["cell"] for r in rows) == ["a.png#1", "a.png#2", "b.png#0"]


def test_watch_refuses_to_mix_frame_rows_and_per_cell_rows(cells_model, tmp_path):
    out = tmp_path / "cells.csv"
    from leukedge.edge.app.rows import FIELD_NAMES

    out.write_text(",".join(FIELD_NAMES) + "\n")
    (tmp_path / "w").mkdir()
    r = _run("-m", cells_model, "--fields", "--format", "csv", "-o", out, "--watch", tmp_path / "w")
    assert r.returncode == 2 and "per-cell rows" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
