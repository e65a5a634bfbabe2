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
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from leukedge.edge.errors import LeukedgeError
from leukedge.edge.files import is_ignored_name, is_image_name, sha256_file, staged_dir, write_text_atomic

MANIFEST = "manifest.csv"
REVIEWED = "reviewed.txt"
UNLABELLED = "unlabelled"  # cells nobody labelled; not a class (train.datasets skips it)
CROP_SCHEMA = "leukedge.crop"
MANIFEST_COLUMNS = ("file", "frame", "cell", "x", "y", "x0", "y0", "x1", "y1", "diameter_px", "diameter_um",
                    "p_all", "predicted", "label", "source", "reviewed", "edge_cut", "touching", "blurred", "error")
MAX_ANNOTATION_BYTES = 8 << 20  # a VOC file or CSV larger than this is not an annotation file
_REVIEWED_HEADER = ("# leukedge data crop: file names (one a line, without the folder) whose class a person has\n"
                    "# checked. Cells sorted by a model are not listed until someone checks them: move a wrong one\n"
                    "# to its right folder, then add its name here. Annotated cells are listed from the start.\n")


class CropError(LeukedgeError, ValueError):
    """`data crop` cannot run as asked (no frames, bad annotations, no scale); one line naming the file."""


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
class Annotation:
    """One annotated cell in a frame: a label and a box (x0, y0, x1, y1; frame pixels, exclusive ends) or a point."""

    label: str
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None


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


def _read_limited(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_ANNOTATION_BYTES:
            raise CropError(f"{path}: {size:,} bytes is too large for an annotation file (at most {MAX_ANNOTATION_BYTES:,})")
        return path.read_bytes()
    except OSError as exc:
        raise CropError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _voc(path: Path, keep, problems: list[str]) -> list[Annotation]:
    try:
        root = ET.fromstring(_read_limited(path))
    except ET.ParseError as exc:
        raise CropError(f"{path}: not VOC XML: {exc}") from None
    out = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not keep(name):
            continue
        box = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems.append(f"{path.name}: object {name!r} has no numeric <bndbox> (xmin, ymin, xmax, ymax): ignored")
            continue
        if not (x1 > x0 and y1 > y0):
            problems.append(f"{path.name}: object {name!r} has an empty box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): ignored")
            continue
        out.append(Annotation(name, box=(x0, y0, x1, y1)))
    return out


_CSV_FRAME = ("frame", "filename", "file", "image")
_CSV_LABEL = ("label", "class", "name")
_CSV_BOXES = (("x0", "y0", "x1", "y1"), ("xmin", "ymin", "xmax", "ymax"))


def _csv(path: Path, keep, problems: list[str]) -> dict[str, list[Annotation]]:
    text = _read_limited(path).decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    frame_col = next((cols[c] for c in _CSV_FRAME if c in cols), None)
    label_col = next((cols[c] for c in _CSV_LABEL if c in cols), None)
    box_cols = next(([cols[c] for c in names] for names in _CSV_BOXES if all(c in cols for c in names)), None)
    point_cols = [cols["x"], cols["y"]] if "x" in cols and "y" in cols else None
    if frame_col is None or label_col is None or (box_cols is None and point_cols is None):
        raise CropError(f"{path}: an annotation CSV needs columns frame, label and a box (x0,y0,x1,y1 or "
                        f"xmin,ymin,xmax,ymax) or a point (x,y); it has {list(cols) or 'none'}")
    out: dict[str, list[Annotation]] = {}
    for line, row in enumerate(reader, start=2):
        label = (row.get(label_col) or "").strip()
        frame = Path((row.get(frame_col) or "").strip()).stem
        if not frame or not label:
            raise CropError(f"{path}: line {line}: no frame or no label")
        if not keep(label):
            continue
        try:
            if box_cols:
                x0, y0, x1, y1 = (float(row[c]) for c in box_cols)
                ann = Annotation(label, box=(x0, y0, x1, y1))
            else:
                ann = Annotation(label, point=(float(row[point_cols[0]]), float(row[point_cols[1]])))
        except (TypeError, ValueError):
            raise CropError(f"{path}: line {line}: the box or point is not numbers") from None
        if ann.box is not None and not (ann.box[2] > ann.box[0] and ann.box[3] > ann.box[1]):
            problems.append(f"{path.name}: line {line}: empty box {ann.box}: ignored")
            continue
        out.setdefault(frame, []).append(ann)
    return out


def read_annotations(path: str | os.PathLike, classes: Iterable[str] = (),
                     stems: Iterable[str] | None = None) -> tuple[dict[str, list[Annotation]], list[str]]:
    """Annotations per frame stem (the frame's file name without its extension), and what was ignored.

    path: a folder of VOC XML files (<frame stem>.xml: <object><name>, <bndbox> xmin ymin xmax ymax), one VOC
    XML file, or a CSV with a header: frame (or filename/file/image), label (or class/name), and a box
    (x0,y0,x1,y1 or xmin,ymin,xmax,ymax; frame pixels) or a point (x,y). classes: the labels kept (empty:
    all). stems: read only these frames' XML files from a folder (None: all).
    Returns ({stem: [Annotation]}, problems): an object with an empty or missing box is ignored and named in
    `problems` (hand-drawn sets have a few: BCCD's 00338 has a zero-size RBC box). Raises CropError (one line
    naming the file, and the line for a CSV) for a file that is not such annotations.
    """
    wanted = set(classes)
    keep = (lambda name: name in wanted) if wanted else (lambda name: True)
    problems: list[str] = []
    p = Path(path)
    if p.is_dir():
        xmls = sorted(f for f in p.glob("*.xml") if not is_ignored_name(f.name))
        if not xmls:
            raise CropError(f"{p}: no VOC .xml files in this folder")
        if stems is not None:
            stems = set(stems)
            xmls = [f for f in xmls if f.stem in stems]
        return {f.stem: _voc(f, keep, problems) for f in xmls}, problems
    if p.suffix.lower() == ".xml":
        return {p.stem: _voc(p, keep, problems)}, problems
    if p.suffix.lower() == ".csv":
        return _csv(p, keep, problems), problems
    raise CropError(f"{p}: annotations must be a folder of VOC .xml files, one .xml file or a .csv")


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_annotation(cell, annotations: list[Annotation], scale: float = 1.0) -> Annotation | None:
    """The annotation a located cell takes, or None.

    cell: a LocatedCell (centroid, box, mask in the decoded frame's pixels); scale: decoded pixels per annotated
    (stored) pixel. A box matches when it holds the cell's centroid (the rule of the BCCD benchmark); among
    several, the one whose box overlaps the cell's most (IoU). A point matches when it lies on the cell's
    extent; among several, the one nearest the centroid.
    """
    cx, cy = cell.centroid
    best, best_key = None, None
    for ann in annotations:
        if ann.box is not None:
            b = tuple(v * scale for v in ann.box)
            if not (b[0] <= cx < b[2] and b[1] <= cy < b[3]):
                continue
            key = (1, _box_iou(b, cell.box))
        else:
            px, py = ann.point[0] * scale, ann.point[1] * scale
            x0, y0, x1, y1 = cell.box
            if not (x0 <= px < x1 and y0 <= py < y1) or not cell.mask[int(py) - y0, int(px) - x0]:
                continue
            key = (0, -math.hypot(px - cx, py - cy))
        if best_key is None or key > best_key:
            best, best_key = ann, key
    return best


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


def crop_frames(frames: str | os.PathLike, out: str | os.PathLike, opts: CropOptions,
                progress=None) -> CropSummary:
    """Crop every white cell of every frame under `frames` into the dataset `out` (module docstring).

    out: a new or empty folder (written all or nothing). progress: called with (frame index, frame count,
    frame path) before each frame, or None. Returns a CropSummary; a frame that cannot be used is in
    `errors` (frame, one line) and the others go on. Raises CropError / CellsError / CardError (one line)
    for a setup problem (no frames, an unusable model or annotations, no scale, an `out` that is not empty).
    """
    from PIL import Image

    from leukedge.edge.fields.crops import CellsError, cell_canvas, crop_scale
    from leukedge.edge.fields.frames import _to_input, load_frame
    from leukedge.edge.fields.locate import NotASmearError, locate_cells, masked_single_cell
    from leukedge.edge.preprocess import DecodeOptions, ImageError

    out = Path(out)
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

    rows, errors, per_folder = [], [], {}
    reviewed, skipped_flagged, unmatched = [], 0, 0
    with staged_dir(out) as stage:
        for n, (path, key) in enumerate(zip(paths, keys)):
            if progress is not None:
                progress(n, len(paths), path)
            rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            try:
                rgb, dscale = load_frame(path, decode)
            except ImageError as exc:
                errors.append((rel, exc.problem))
                continue
            anns = None if annotations is None else annotations.get(path.stem, [])
            single = masked_single_cell(rgb)
            if single is not None:  # one cell masked on black: the image is the cell, as on the per-cell path
                box, diameter = single
                cells = [(_Single(box, diameter), rgb)]
                um = None
            else:
                cam = None if opts.camera_um_per_px is None else float(opts.camera_um_per_px) / dscale
                try:
                    loc = locate_cells(rgb, cam)
                    scale = crop_scale(spec, loc.um_per_px)
                except (NotASmearError, CellsError) as exc:
                    errors.append((rel, str(exc)))
                    continue
                um = loc.um_per_px
                cells = [(c, cell_canvas(rgb, c, spec, scale, loc.background)) for c in loc.cells]
            matched_anns = set()
            for i, (cell, canvas) in enumerate(cells, start=1):
                if opts.skip_flagged and (cell.edge_cut or cell.touching or cell.blurred):
                    skipped_flagged += 1
                    continue
                pred = None
                if classifier is not None:
                    prep = classifier.card.preprocessing
                    pred = (classifier.predict_one(path) if single is not None
                            else classifier.predict_one(_to_input(canvas, prep.size, prep.resize)))
                ann = None if anns is None else match_annotation(cell, anns, dscale)
                if ann is not None:
                    matched_anns.add(id(ann))
                    folder, source = ann.label, "annotation"
                elif pred is not None and pred.ok:
                    folder, source = pred.label, "model"
                else:
                    folder, source = UNLABELLED, "none"
                name = f"{key}.cell{i}.png"
                (stage / folder).mkdir(exist_ok=True)
                Image.fromarray(np.ascontiguousarray(canvas)).save(stage / folder / name, compress_level=1)
                per_folder[folder] = per_folder.get(folder, 0) + 1
                if source == "annotation":
                    reviewed.append(name)
                x0, y0, x1, y1 = cell.box
                inv = 1.0 / dscale  # back to the stored frame's pixels
                rows.append({
                    "file": f"{folder}/{name}", "frame": rel, "cell": i,
                    "x": round(cell.centroid[0] * inv, 1), "y": round(cell.centroid[1] * inv, 1),
                    "x0": round(x0 * inv), "y0": round(y0 * inv), "x1": round(x1 * inv), "y1": round(y1 * inv),
                    "diameter_px": round(cell.diameter_px * inv, 1),
                    "diameter_um": "" if um is None else round(cell.diameter_px * um, 2),
                    "p_all": "" if pred is None or not pred.ok else round(float(pred.p_all), 6),
                    "predicted": "" if pred is None or not pred.ok else pred.label,
                    "label": "" if folder == UNLABELLED else folder, "source": source,
                    "reviewed": "yes" if source == "annotation" else "no",
                    "edge_cut": int(cell.edge_cut), "touching": int(cell.touching), "blurred": int(cell.blurred),
                    "error": "" if pred is None or pred.ok else pred.error})
            if anns:
                unmatched += sum(1 for a in anns if id(a) not in matched_anns)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(stage / MANIFEST, buf.getvalue())
        write_text_atomic(stage / REVIEWED, _REVIEWED_HEADER + "".join(f"{n}\n" for n in reviewed))
        from .cells import CROP_RECORD

        record = {
            "schema": CROP_SCHEMA, "schema_version": 1, "frames_root": str(root.resolve()),
            "cells": {k: spec[k] for k in ("style", "canvas_px", "diameter_px", "um_per_px")},
            "scale_from": scale_source, "camera_um_per_px": opts.camera_um_per_px,
            "model": None if classifier is None else {
                "file": str(Path(opts.model).resolve()), "sha256": sha256_file(opts.model),
                "name": classifier.card.name, "labels": classifier.card.labels,
                "positive_label": classifier.card.positive_label, "threshold": classifier.threshold},
            "annotations": str(Path(opts.annotations).resolve()) if opts.annotations else None,
            "classes": list(opts.classes) or None,
            "frames": len(paths), "frames_failed": len(errors), "cells_cropped": len(rows), "per_folder": per_folder,
            "reviewed": len(reviewed), "skipped_flagged": skipped_flagged,
            "annotations_without_a_cell": unmatched if annotations is not None else None,
            "annotations_ignored": annotation_problems,
            "errors": [list(e) for e in errors],
        }
        write_text_atomic(stage / CROP_RECORD, json.dumps(record, indent=2) + "\n")
    return CropSummary(str(out), len(paths), len(rows), dict(sorted(per_folder.items())), len(reviewed),
                       skipped_flagged, errors, record)


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


# -- reading a crop dataset back -----------------------------------------------------------------------------------

def read_reviewed(root: str | os.PathLike) -> set[str] | None:
    """The file names listed in <root>/reviewed.txt (comments and blank lines skipped), or None without one."""
    p = Path(root) / REVIEWED
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return {line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}


def unreviewed_note(root: str | os.PathLike, files: Iterable[str]) -> str | None:
    """For a dataset written by `data crop`: a one-line note when some of `files` are not in reviewed.txt, else None."""
    reviewed = read_reviewed(root)
    if reviewed is None:
        return None
    names = [Path(f).name for f in files]
    left = sum(1 for n in names if n not in reviewed)
    if not left:
        return None
    return (f"{left} of {len(names)} images are not listed in {REVIEWED} (no person has checked their class): "
            "a model trained on a model's unchecked sorting learns that model's mistakes")


__all__ = ["Annotation", "CropError", "CropOptions", "CropSummary", "MANIFEST", "REVIEWED", "UNLABELLED",
           "crop_frames", "frame_key", "frames_um_per_px", "list_frames", "match_annotation", "read_annotations",
           "read_reviewed", "unreviewed_note"]
