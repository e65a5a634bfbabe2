"""Annotations of microscope frames for `leukedge data crop` (VOC XML or CSV; boxes or points), and which
annotation a located cell takes."""

from __future__ import annotations

import csv
import io
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from leukedge.edge.files import is_ignored_name

from .crop_dataset import CropError

MAX_ANNOTATION_BYTES = 8 << 20  # a VOC file or CSV larger than this is not an annotation file


@dataclass
class Annotation:
    """One annotated cell in a frame: a label and a box (x0, y0, x1, y1; frame pixels, exclusive ends) or a point."""

    label: str
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None



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
