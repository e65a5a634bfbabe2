"""`leukedge data crop FRAMES --out DATASET`: every white cell of every microscope frame, cut out the way a
model's training cells look, into class folders a lab can label and `leukedge train` reads (issue 25 item 2).

    DATASET/
      <label>/<frame>.cell<N>.png   with a model (-m): the predicted label, NOT reviewed; with annotations
                                    (VOC XML or CSV): the annotated class, reviewed (a person drew it)
      unlabelled/<frame>.cell<N>.png  no model and no annotation for the cell; `train` does not read it
      manifest.csv                  one row per cell: file, frame, cell, centroid, box, diameter, P, label, source, flags
      reviewed.txt                  the file names (not folders) a person has checked, one a line; `#` comments.
                                    A lab moves a file to its right folder and adds its name here.
      crop.json                     how the cells were cut (style, canvas, scale), the model, counts, failed frames

Cells are located and cut by the frame path's own library (`leukedge.edge.fields`: locate_cells, cell_canvas),
and a model's P is computed on the same input array `classify_frame` gives it, so a crop here is what the
device would classify. Scale is set per camera, never per cell: each frame is rescaled once, by its camera's
micrometres per pixel (`camera_um_per_px`) or its red-cell ruler, to the training cells' micrometres per pixel
(the card's, `um_per_px`, or, without either, the median over the frames' red-cell rulers, so the crops keep the
camera's typical pixel scale). The scale used is recorded in crop.json, where `leukedge train` reads it back for
the card (train/cells.py): masked crops show no red cells to measure it from.

Needs OpenCV (`leukedge[fields]`). A frame that cannot be used (unreadable, not a stained smear, no scale) is
reported in one line and the others go on.

The dataset's file names and reading it back are in train/crop_dataset.py, the annotations in
train/crop_annotations.py (both re-exported here).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from leukedge.edge.files import is_image_name, sha256_file, staged_dir, write_text_atomic

from .crop_annotations import Annotation, match_annotation, read_annotations
from .crop_dataset import (CROP_SCHEMA, MANIFEST, MANIFEST_COLUMNS, REVIEWED, UNLABELLED, CropError,
                           read_reviewed, unreviewed_note)

_REVIEWED_HEADER = ("# leukedge data crop: file names (one a line, without the folder) whose class a person has\n"
                    "# checked. Cells sorted by a model are not listed until someone checks them: move a wrong one\n"
                    "# to its right folder, then add its name here. Annotated cells are listed from the start.\n")



@dataclass
class CropOptions:
    """What `crop_frames` does.

    model: a model file with its card (an edge format: .tflite, .onnx, ...): cells go into folders by its
        predicted label, and its card says how its training cells look (`cells`).
    annotations: VOC XML (a folder of <frame stem>.xml, or one file) or a CSV (read_annotations): a cell whose
        centroid lies in an annotated box, or that holds an annotated point, goes into that class.
    classes: annotation names kept (others ignored, e.g. BCCD's RBC and Platelets); empty = all.
    style / canvas_px / um_per_px: the training cells' look, overriding the card's (needed without a model:
        style and canvas_px; um_per_px defaults to the camera's, else the median red-cell ruler of the frames).
    camera_um_per_px: the camera's micrometres per (stored) pixel; else each frame's red cells set it.
    skip_flagged: leave out cells cut by the frame edge, touching another white cell, or blurred.
    """

    model: str = ""
    annotations: str = ""
    classes: tuple[str, ...] = ()
    style: str | None = None
    canvas_px: int | None = None
    um_per_px: float | None = None
    camera_um_per_px: float | None = None
    skip_flagged: bool = False



@dataclass
class CropSummary:
    """What `crop_frames` wrote: counts per folder, failed frames (frame, one line), and crop.json's content."""

    out: str
    frames: int
    cells: int
    per_folder: dict[str, int]
    reviewed: int
    skipped_flagged: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    record: dict = field(default_factory=dict)


# -- the frames and their annotations ----------------------------------------------------------------------------

def list_frames(frames: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(root, image files): one image file, or every image under a folder (recursively, sorted; hidden
    folders and temp/OS-metadata files skipped). Raises CropError when there are none."""
    p = Path(frames)
    if p.is_file():
        return p.parent, [p]
    if not p.is_dir():
        raise CropError(f"{p}: no such file or folder")
    found = sorted(f for f in p.rglob("*")
                   if f.is_file() and is_image_name(f.name)
                   and not any(part.startswith(".") for part in f.relative_to(p).parts[:-1]))
    if not found:
        raise CropError(f"{p}: no image files (.png, .jpg, .bmp, .tif) in this folder")
    return p, found


def frame_key(root: Path, frame: Path) -> str:
    """A frame's name in the dataset: its path under the frames' root without the extension, '/' -> '__'."""
    rel = frame.relative_to(root) if frame.is_relative_to(root) else Path(frame.name)
    return "__".join(rel.with_suffix("").parts)



# -- the scale ---------------------------------------------------------------------------------------------------

def frames_um_per_px(frames: Iterable[Path], decode=None) -> float:
    """The median micrometres per stored pixel over the frames' red-cell rulers (7.5 um / red-cell diameter).

    Raises CropError when no frame shows enough red cells (then give the camera's scale)."""
    from leukedge.edge.fields.frames import load_frame
    from leukedge.edge.fields.locate import NotASmearError, RED_CELL_UM, check_smear, red_cell_diameter
    from leukedge.edge.preprocess import ImageError

    values = []
    for f in frames:
        try:
            rgb, dscale = load_frame(f, decode)
            d = red_cell_diameter(rgb, check_smear(rgb))
        except (ImageError, NotASmearError):
            continue
        if d is not None:
            values.append(RED_CELL_UM * dscale / d)
    if not values:
        raise CropError("no frame shows enough red cells to set the scale: give the camera's micrometres per pixel "
                        "(--camera-um-per-px) or the training cells' (--um-per-px)")
    return float(statistics.median(values))


# -- cropping ----------------------------------------------------------------------------------------------------

_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


def _folder_for(label: str, where: str) -> str:
    if not _SAFE_LABEL.match(label) or label.lower() == UNLABELLED or label.endswith("."):
        raise CropError(f"{where}: class {label!r} cannot be a folder name (letters, digits, ' _.+-', at most "
                        f"64 characters, not {UNLABELLED!r})")
    return label


def _spec(opts: CropOptions, card, frames: list[Path], decode) -> tuple[dict, str]:
    """The training cells' look to crop to, and where its scale came from."""
    from leukedge.edge.fields.crops import cells_spec

    override = {"style": opts.style, "canvas_px": opts.canvas_px, "um_per_px": opts.um_per_px}
    if card is None and (opts.style is None or opts.canvas_px is None):
        raise CropError("without a model (-m), say how the crops should look: --style masked|crop and --canvas PX")
    spec = cells_spec(card, override)
    if opts.um_per_px is not None:
        return spec, "option --um-per-px"
    if spec["um_per_px"] is not None:
        return spec, "the model's card"
    if card is not None:
        raise CropError(f"{opts.model}: the model's card does not know its training cells' micrometres per pixel "
                        "(cells.um_per_px is null, e.g. C-NMC's masked cells): give it with --um-per-px")
    if opts.camera_um_per_px is not None:
        spec["um_per_px"] = float(opts.camera_um_per_px)
        return spec, "the camera (--camera-um-per-px): crops keep the camera's pixels"
    spec["um_per_px"] = round(frames_um_per_px(frames, decode), 6)
    return spec, "the median red-cell ruler of the frames: crops keep the camera's typical pixels"



@dataclass
class _CropPlan:
    """What crop_frames works from (_setup: frames, annotations, model, the cells' look) and what its stages have
    gathered so far (manifest rows, failed frames, counts)."""

    opts: CropOptions
    root: Path
    paths: list[Path]
    keys: list[str]  # frame_key of each path
    annotations: dict[str, list[Annotation]] | None  # per frame stem; None without --annotations
    annotation_problems: list[str]
    classifier: object  # leukedge.edge.classifier.Classifier or None
    decode: object  # the DecodeOptions frames are loaded with
    spec: dict  # cells_spec: style, canvas_px, diameter_px, um_per_px
    scale_source: str
    rows: list[dict] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    per_folder: dict[str, int] = field(default_factory=dict)
    reviewed: list[str] = field(default_factory=list)
    skipped_flagged: int = 0
    unmatched: int = 0


@dataclass
class _Frame:
    """One loaded frame's cells: [(located cell, canvas)], decoded pixels per stored pixel, um per decoded px."""

    path: Path
    rel: str  # the frame's path under the frames' root, as the manifest and errors name it
    key: str
    dscale: float
    um_per_px: float | None  # None for a masked single-cell image
    single: bool
    cells: list


def _setup(frames: str | os.PathLike, out: Path, opts: CropOptions) -> _CropPlan:
    """Check `out`, list the frames, read the annotations, load the model and settle the cells' look (_spec).
    Raises CropError (or the model's CardError) in one line."""
    from leukedge.edge.preprocess import DecodeOptions

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CropError(f"{out}: already exists and is not an empty folder; choose a new --out")
    root, paths = list_frames(frames)
    keys = [frame_key(root, p) for p in paths]
    annotations, annotation_problems = None, []
    if opts.annotations:
        stems = [p.stem for p in paths]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise CropError(f"{root}: frames {dup[:3]} share a file name in different folders; annotations name "
                            "frames by file name, so crop each folder on its own")
        annotations, annotation_problems = read_annotations(opts.annotations, opts.classes, stems)
        for k, v in annotations.items():
            for a in v:
                _folder_for(a.label, opts.annotations)
    classifier = None
    if opts.model:
        from leukedge.edge.classifier import Classifier

        classifier = Classifier.load(opts.model)
        for label in classifier.card.labels:
            _folder_for(label, f"{opts.model}: card label")
    decode = classifier.decode if classifier is not None else DecodeOptions()
    spec, scale_source = _spec(opts, classifier.card if classifier else None, paths, decode)
    return _CropPlan(opts, root, paths, keys, annotations, annotation_problems, classifier, decode, spec, scale_source)


def _load_frame_cells(plan: _CropPlan, path: Path, key: str) -> _Frame | None:
    """The frame's white cells cut to the training cells' look (a masked single-cell image is its own cell), or
    None with the frame's one-line problem added to plan.errors (unreadable, not a smear, no scale)."""
    from leukedge.edge.fields.crops import CellsError, cell_canvas, crop_scale
    from leukedge.edge.fields.frames import load_frame
    from leukedge.edge.fields.locate import NotASmearError, locate_cells, masked_single_cell
    from leukedge.edge.preprocess import ImageError

    rel = str(path.relative_to(plan.root)) if path.is_relative_to(plan.root) else str(path)
    try:
        rgb, dscale = load_frame(path, plan.decode)
    except ImageError as exc:
        plan.errors.append((rel, exc.problem))
        return None
    single = masked_single_cell(rgb)
    if single is not None:  # one cell masked on black: the image is the cell, as on the per-cell path
        box, diameter = single
        return _Frame(path, rel, key, dscale, None, True, [(_Single(box, diameter), rgb)])
    cam = None if plan.opts.camera_um_per_px is None else float(plan.opts.camera_um_per_px) / dscale
    try:
        loc = locate_cells(rgb, cam)
        scale = crop_scale(plan.spec, loc.um_per_px)
    except (NotASmearError, CellsError) as exc:
        plan.errors.append((rel, str(exc)))
        return None
    cells = [(c, cell_canvas(rgb, c, plan.spec, scale, loc.background)) for c in loc.cells]
    return _Frame(path, rel, key, dscale, loc.um_per_px, False, cells)


def _predict(plan: _CropPlan, frame: _Frame, canvas):
    """The model's prediction for one cell on the input `classify_frame` gives it (None without a model)."""
    from leukedge.edge.fields.frames import _to_input

    classifier = plan.classifier
    if classifier is None:
        return None
    prep = classifier.card.preprocessing
    return (classifier.predict_one(frame.path) if frame.single
            else classifier.predict_one(_to_input(canvas, prep.size, prep.resize)))


def _manifest_row(frame: _Frame, i: int, cell, folder: str, name: str, source: str, pred) -> dict:
    """manifest.csv's row of cell `i` (MANIFEST_COLUMNS), positions in the stored frame's pixels."""
    x0, y0, x1, y1 = cell.box
    inv = 1.0 / frame.dscale  # back to the stored frame's pixels
    um = frame.um_per_px
    return {
        "file": f"{folder}/{name}", "frame": frame.rel, "cell": i,
        "x": round(cell.centroid[0] * inv, 1), "y": round(cell.centroid[1] * inv, 1),
        "x0": round(x0 * inv), "y0": round(y0 * inv), "x1": round(x1 * inv), "y1": round(y1 * inv),
        "diameter_px": round(cell.diameter_px * inv, 1),
        "diameter_um": "" if um is None else round(cell.diameter_px * um, 2),
        "p_all": "" if pred is None or not pred.ok else round(float(pred.p_all), 6),
        "predicted": "" if pred is None or not pred.ok else pred.label,
        "label": "" if folder == UNLABELLED else folder, "source": source,
        "reviewed": "yes" if source == "annotation" else "no",
        "edge_cut": int(cell.edge_cut), "touching": int(cell.touching), "blurred": int(cell.blurred),
        "error": "" if pred is None or pred.ok else pred.error}


def _crop_frame(plan: _CropPlan, stage: Path, frame: _Frame) -> None:
    """Save each of the frame's cells into its folder (the annotation's class, else the model's label, else
    unlabelled) and add its manifest row; flagged cells are skipped with opts.skip_flagged."""
    from PIL import Image

    anns = None if plan.annotations is None else plan.annotations.get(frame.path.stem, [])
    matched_anns = set()
    for i, (cell, canvas) in enumerate(frame.cells, start=1):
        if plan.opts.skip_flagged and (cell.edge_cut or cell.touching or cell.blurred):
            plan.skipped_flagged += 1
            continue
        pred = _predict(plan, frame, canvas)
        ann = None if anns is None else match_annotation(cell, anns, frame.dscale)
        if ann is not None:
            matched_anns.add(id(ann))
            folder, source = ann.label, "annotation"
        elif pred is not None and pred.ok:
            folder, source = pred.label, "model"
        else:
            folder, source = UNLABELLED, "none"
        name = f"{frame.key}.cell{i}.png"
        (stage / folder).mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(canvas)).save(stage / folder / name, compress_level=1)
        plan.per_folder[folder] = plan.per_folder.get(folder, 0) + 1
        if source == "annotation":
            plan.reviewed.append(name)
        plan.rows.append(_manifest_row(frame, i, cell, folder, name, source, pred))
    if anns:
        plan.unmatched += sum(1 for a in anns if id(a) not in matched_anns)


def _record(plan: _CropPlan) -> dict:
    """crop.json: how the cells were cut (style, canvas, scale and where it came from), the model, the
    annotations, counts and failed frames."""
    opts, classifier = plan.opts, plan.classifier
    return {
        "schema": CROP_SCHEMA, "schema_version": 1, "frames_root": str(plan.root.resolve()),
        "cells": {k: plan.spec[k] for k in ("style", "canvas_px", "diameter_px", "um_per_px")},
        "scale_from": plan.scale_source, "camera_um_per_px": opts.camera_um_per_px,
        "model": None if classifier is None else {
            "file": str(Path(opts.model).resolve()), "sha256": sha256_file(opts.model),
            "name": classifier.card.name, "labels": classifier.card.labels,
            "positive_label": classifier.card.positive_label, "threshold": classifier.threshold},
        "annotations": str(Path(opts.annotations).resolve()) if opts.annotations else None,
        "classes": list(opts.classes) or None,
        "frames": len(plan.paths), "frames_failed": len(plan.errors), "cells_cropped": len(plan.rows),
        "per_folder": plan.per_folder,
        "reviewed": len(plan.reviewed), "skipped_flagged": plan.skipped_flagged,
        "annotations_without_a_cell": plan.unmatched if plan.annotations is not None else None,
        "annotations_ignored": plan.annotation_problems,
        "errors": [list(e) for e in plan.errors],
    }


def _write_records(plan: _CropPlan, stage: Path) -> dict:
    """manifest.csv, reviewed.txt and crop.json into `stage`; returns crop.json's content."""
    from .cells import CROP_RECORD

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(plan.rows)
    write_text_atomic(stage / MANIFEST, buf.getvalue())
    write_text_atomic(stage / REVIEWED, _REVIEWED_HEADER + "".join(f"{n}\n" for n in plan.reviewed))
    record = _record(plan)
    write_text_atomic(stage / CROP_RECORD, json.dumps(record, indent=2) + "\n")
    return record


def crop_frames(frames: str | os.PathLike, out: str | os.PathLike, opts: CropOptions,
                progress=None) -> CropSummary:
    """Crop every white cell of every frame under `frames` into the dataset `out` (module docstring).

    out: a new or empty folder (written all or nothing). progress: called with (frame index, frame count,
    frame path) before each frame, or None. Returns a CropSummary; a frame that cannot be used is in
    `errors` (frame, one line) and the others go on. Raises CropError / CellsError / CardError (one line)
    for a setup problem (no frames, an unusable model or annotations, no scale, an `out` that is not empty).

    Stages (a _CropPlan carries the state): setup, then per frame load its cells and crop them, then the records.
    """
    from leukedge.edge.fields import frames as _needs_opencv  # noqa: F401 - without OpenCV, fail before anything

    out = Path(out)
    plan = _setup(frames, out, opts)
    with staged_dir(out) as stage:
        for n, (path, key) in enumerate(zip(plan.paths, plan.keys)):
            if progress is not None:
                progress(n, len(plan.paths), path)
            frame = _load_frame_cells(plan, path, key)
            if frame is not None:
                _crop_frame(plan, stage, frame)
        record = _write_records(plan, stage)
    return CropSummary(str(out), len(plan.paths), len(plan.rows), dict(sorted(plan.per_folder.items())),
                       len(plan.reviewed), plan.skipped_flagged, plan.errors, record)


@dataclass
class _Single:
    """A masked single-cell image seen as a located cell: the whole image is the cell (no flags)."""

    box: tuple[int, int, int, int]
    diameter_px: float

    def __post_init__(self):
        x0, y0, x1, y1 = self.box
        self.centroid = ((x0 + x1) / 2, (y0 + y1) / 2)
        self.edge_cut = self.touching = self.blurred = False
        self.mask = np.ones((y1 - y0, x1 - x0), bool)


__all__ = ["Annotation", "CropError", "CropOptions", "CropSummary", "MANIFEST", "REVIEWED", "UNLABELLED",
           "crop_frames", "frame_key", "frames_um_per_px", "list_frames", "match_annotation", "read_annotations",
           "read_reviewed", "unreviewed_note"]
