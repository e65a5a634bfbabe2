"""A microscope frame in, per-cell rows (and an overlay for review) out: `classify_frame`.

    from leukedge.edge.classifier import Classifier
    from leukedge.edge.fields import classify_frame

    clf = Classifier.load("int8.tflite")
    result = classify_frame(clf, "field-001.jpg", overlay="field-001.overlay.png")
    for row in result.rows():          # one dict per white cell; one row with cells=0 for an empty frame
        print(row)

The frame is decoded by leukedge's one decoder (edge.preprocess.load_rgb: formats, EXIF orientation, ICC,
bit depth), located (edge.fields.locate), each cell cut out the way the card says the training cells look
(edge.fields.crops), resized to the model's input with the card's resize method (the same Pillow call
load_rgb uses) and classified by `Classifier.predict_one` on that array. A single-cell image in the
masked-on-black style is recognised before any smear check and classified as it is, exactly as the
per-cell path would (`predict_one` on the file).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..preprocess import DecodeOptions, ImageError, load_rgb
from .crops import CellsError, cell_canvas, cells_spec, crop_scale
from .locate import NotASmearError, locate_cells, masked_single_cell
from .overlay import draw_overlay

ROWS_VERSION = 1  # the layout of CellRow.to_dict(); bump when a key changes meaning


@dataclass
class CellRow:
    """One white cell's result. Coordinates in the frame's pixels as decoded (after EXIF orientation);
    box (x0, y0, x1, y1) with exclusive ends; diameter_um only when the frame's scale is known.
    p_all: P(the card's positive label); label: the decision at the classifier's threshold;
    error: why this cell could not be classified (then p_all and label are None)."""

    frame: str
    cell: int
    centroid: tuple[float, float]
    box: tuple[int, int, int, int]
    diameter_px: float
    diameter_um: float | None
    p_all: float | None
    label: str | None
    edge_cut: bool
    touching: bool
    blurred: bool
    crop: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """True when a technologist should not count this cell without a look (cut, touching or blurred)."""
        return self.edge_cut or self.touching or self.blurred

    def to_dict(self) -> dict:
        d = {"frame": self.frame, "cell": self.cell, "x": round(self.centroid[0], 1), "y": round(self.centroid[1], 1),
             "x0": self.box[0], "y0": self.box[1], "x1": self.box[2], "y1": self.box[3],
             "diameter_px": round(self.diameter_px, 1),
             "diameter_um": None if self.diameter_um is None else round(self.diameter_um, 2),
             "p_all": None if self.p_all is None else round(float(self.p_all), 6), "label": self.label,
             "edge_cut": self.edge_cut, "touching": self.touching, "blurred": self.blurred}
        if self.crop:
            d["crop"] = self.crop
        if self.error:
            d["error"] = self.error
        if self.warnings:
            d["warning"] = "; ".join(self.warnings)
        return d


@dataclass
class FrameResult:
    """One frame's result. cells: CellRow per white cell (empty: the frame has none, which is not an error).
    error: one line when the frame could not be used (unreadable, not a stained smear, no scale); then
    cells is empty. kind: 'field', or 'single cell' for a masked-on-black cell image.
    um_per_px / scale_source: the frame's scale and where it came from ('camera', 'red cells', None).
    decode_scale: decoded pixels per stored pixel (< 1 when a frame above the pixel cap was reduced while
    decoding). overlay: the PNG written, if asked for. timings_ms: decode, locate, classify, overlay, total."""

    frame: str
    cells: list[CellRow] = field(default_factory=list)
    error: str | None = None
    kind: str = "field"
    size: tuple[int, int] | None = None
    um_per_px: float | None = None
    scale_source: str | None = None
    decode_scale: float = 1.0
    overlay: str | None = None
    timings_ms: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def rows(self) -> list[dict]:
        """One dict per cell (CellRow.to_dict() plus rows_version); for a frame without cells one row
        {"frame", "cell": 0, "cells": 0}; for a failed frame one row {"frame", "error"}."""
        if self.error:
            return [{"rows_version": ROWS_VERSION, "frame": self.frame, "error": self.error}]
        if not self.cells:
            return [{"rows_version": ROWS_VERSION, "frame": self.frame, "cell": 0, "cells": 0}]
        return [{"rows_version": ROWS_VERSION, **c.to_dict()} for c in self.cells]


def load_frame(path: str | os.PathLike, options: DecodeOptions | None = None) -> tuple[np.ndarray, float]:
    """Decode a frame: uint8 RGB (H, W, 3) and the decode scale (decoded px per stored px, 1.0 normally).

    Within the pixel cap (options.max_pixels, default 16 Mpx) this is `load_rgb` at full size. Above it,
    a JPEG is decoded reduced in the DCT domain (Pillow draft mode, 1/2..1/8) to the largest size within
    the cap, so memory stays bounded by the cap (3 bytes a pixel) and the frame is located on that copy;
    other formats above the cap are refused (ImageError), since they would have to be decoded whole first.
    """
    opts = options or DecodeOptions()
    try:
        return load_rgb(path, None, options=opts), 1.0
    except ImageError as exc:
        if "above leukedge's cap" not in exc.problem:
            raise
        over_cap = exc
    from PIL import ImageOps

    p = Path(path)
    try:
        im = Image.open(p, formats=("JPEG",))
    except Exception:  # noqa: BLE001 - not a JPEG (load_rgb read it): only a JPEG can be decoded reduced
        raise ImageError(p, over_cap.problem + "; only JPEG frames are located on a reduced decode") from None
    with im:
        w, h = im.size
        k = 2
        while k <= 8 and math.ceil(w / k) * math.ceil(h / k) > opts.max_pixels:
            k *= 2
        if k > 8:
            raise ImageError(p, f"frame is {w}x{h}, too large to locate within the pixel cap of {opts.max_pixels:,} "
                                "even at 1/8 size (raise --max-pixels)")
        im.draft("RGB", (math.ceil(w / k), math.ceil(h / k)))
        im.load()
        scale = im.size[0] / w
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8).copy()
    return rgb, scale


def _to_input(canvas: np.ndarray, size: int, resize: str) -> np.ndarray:
    """A training-style canvas -> the model's input array, resized exactly as load_rgb resizes a file."""
    from ..preprocess_decode import finish as _finish  # the one resize (card's method, Pillow) of the per-cell path

    return np.asarray(_finish(Image.fromarray(canvas), size, resize), dtype=np.uint8)


def classify_frame(classifier, frame: str | os.PathLike, *, um_per_px: float | None = None,
                   cells: dict | None = None, overlay: str | os.PathLike | None = None,
                   crops_dir: str | os.PathLike | None = None, decode: DecodeOptions | None = None) -> FrameResult:
    """Locate, crop and classify every white cell of one frame.

    classifier: a leukedge.edge.classifier.Classifier (its card gives the input size, resize, threshold and,
        in `card.cells`, how the training cells look).
    frame: an image file (BMP, PNG, JPEG, TIFF).
    um_per_px: the camera's micrometres per pixel (else the red cells set the frame's scale).
    cells: overrides of the card's `cells` (style, canvas_px, um_per_px), e.g. for a card without them.
    overlay: write a review PNG here (each cell's box coloured by label, with its P and flags).
    crops_dir: write each cell's canvas here as <frame stem>.cell<N>.png.
    decode: decoding options (pixel cap, bit depth); None = the classifier's.
    Returns a FrameResult. Never raises for the frame's content: an unreadable file, an image that is not
    a stained smear, or one without a scale gives a result with `error` (one line). Raises CellsError
    before any decoding when the card (with `cells`) cannot say how the training cells look.
    """
    t0 = time.perf_counter()
    name = str(frame)
    spec = cells_spec(classifier.card, cells)
    opts = decode or classifier.decode
    prep = classifier.card.preprocessing
    result = FrameResult(name)
    try:
        rgb, dscale = load_frame(frame, opts)
    except ImageError as exc:
        result.error = exc.problem
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result
    t1 = time.perf_counter()
    result.size = (rgb.shape[1], rgb.shape[0])
    result.decode_scale = dscale
    result.timings_ms["decode"] = (t1 - t0) * 1e3

    single = masked_single_cell(rgb)
    if single is not None:
        # the per-cell path's own decision on the file, byte for byte
        pred = classifier.predict_one(frame)
        box, diameter = single
        result.kind = "single cell"
        result.cells.append(CellRow(name, 1, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), box, diameter, None,
                                    pred.p_all, pred.label, False, False, False, error=pred.error,
                                    warnings=list(pred.warnings)))
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result

    cam = None if um_per_px is None else float(um_per_px) * (1.0 / dscale)  # per decoded pixel
    try:
        loc = locate_cells(rgb, cam)
        scale = crop_scale(spec, loc.um_per_px)
    except (NotASmearError, CellsError) as exc:
        result.error = str(exc)
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return result
    t2 = time.perf_counter()
    result.um_per_px, result.scale_source = loc.um_per_px, loc.scale_source
    crops = Path(crops_dir) if crops_dir is not None else None
    if crops is not None:
        crops.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(loc.cells, start=1):
        canvas = cell_canvas(rgb, c, spec, scale, loc.background)
        crop_path = None
        if crops is not None:
            crop_path = crops / f"{Path(name).stem}.cell{i}.png"
            Image.fromarray(canvas).save(crop_path)
        pred = classifier.predict_one(_to_input(canvas, prep.size, prep.resize))
        result.cells.append(CellRow(
            name, i, c.centroid, c.box, c.diameter_px,
            None if loc.um_per_px is None else c.diameter_px * loc.um_per_px,
            pred.p_all, pred.label, c.edge_cut, c.touching, c.blurred,
            crop=None if crop_path is None else str(crop_path), error=pred.error, warnings=list(pred.warnings)))
    t3 = time.perf_counter()
    result.timings_ms.update(locate=(t2 - t1) * 1e3, classify=(t3 - t2) * 1e3)
    if overlay is not None:
        draw_overlay(rgb, result.cells, overlay, classifier.card.positive_label)
        result.overlay = str(overlay)
        result.timings_ms["overlay"] = (time.perf_counter() - t3) * 1e3
    result.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
    return result


__all__ = ["CellRow", "FrameResult", "ROWS_VERSION", "classify_frame", "load_frame"]
