"""`edge-classify --fields`: microscope frames in, one row per white cell out (the device app's frame batch).

Each frame goes through the device library's `leukedge.edge.fields.classify_frame` (locate the white
cells, crop them the way the card says the training cells look, classify each crop with the same
classifier as the per-cell path). Rows are the frame rows (FRAME_FIELDS, `rows_version` = the library's
ROWS_VERSION) in the existing formats: CSV with a header, JSON lines, or tab-separated text. They are a
different layout from the per-cell rows, so a frame run never appends to a per-cell results file: `-o`
names a new file (written beside it and renamed into place at the end, as a per-cell batch does) and a
CSV header or JSON keys say which layout a file holds.

Bad input loses nothing: a frame that cannot be read or is not a stained smear gets an error row and the
batch goes on (exit 1 at the end); a frame with no white cell is a result (one row, cells = 0).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

FRAME_FIELDS = ("rows_version", "frame", "cell", "cells", "x", "y", "x0", "y0", "x1", "y1", "diameter_px",
                "diameter_um", "p_all", "label", "edge_cut", "touching", "blurred", "flagged", "overlay", "crop",
                "error", "warning", "variant", "model_sha256")


@dataclass
class FrameOptions:
    """What a frame batch needs besides the classifier and the files.

    fmt: text | json | csv; um_per_px: the camera's micrometres per pixel (None: the red cells in each
    frame set its scale); overlays: folder for one review PNG per frame (None: none); crops: folder for
    each cell's canvas (None: none); include_flagged: count cut/touching/blurred cells in the per-sample
    fraction (default: counted apart and left out).
    """

    fmt: str = "text"
    um_per_px: float | None = None
    overlays: str | None = None
    crops: str | None = None
    include_flagged: bool = False


@dataclass
class FrameCounts:
    frames: int = 0
    failed: int = 0
    cells: int = 0
    flagged: int = 0

    def summary(self) -> str:
        return (f"{self.frames} frame(s): {self.cells} white cell(s) ({self.flagged} flagged: cut by the edge, "
                f"touching or blurred), {self.failed} frame(s) failed")


def render(row: dict, fmt: str, header: bool) -> bytes:
    """One frame row in `fmt` (csv: with the column line first when `header`); returns bytes ending in \\n."""
    if fmt == "json":
        return (json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False) + "\n").encode()
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if header:
            w.writerow(FRAME_FIELDS)
        w.writerow(["" if row.get(k) is None else row.get(k) for k in FRAME_FIELDS])
        return buf.getvalue().encode()
    if row.get("error"):
        line = f"{row['frame']}\terror\t{row['error']}"
    elif not row.get("cells", 1):
        line = f"{row['frame']}\t0 cells"
    else:
        flags = ",".join(k for k in ("edge_cut", "touching", "blurred") if row.get(k)) or "-"
        line = (f"{row['frame']}\tcell {row['cell']}\t{row.get('label')}\t{row.get('p_all')}\t"
                f"({row['x']:.0f},{row['y']:.0f}) {row['diameter_px']:.0f} px\t{flags}")
    return (line.replace("\n", " ") + "\n").encode()


def frame_rows(result, model_fields: dict) -> list[dict]:
    """The rows of one FrameResult with the frame's cell count, flags and the model's identity."""
    rows = []
    for r in result.rows():
        row = {**r, **model_fields}
        if not r.get("error") and r.get("cells") != 0:
            row["cells"] = len(result.cells)
            row["flagged"] = bool(r.get("edge_cut") or r.get("touching") or r.get("blurred"))
        row["overlay"] = result.overlay
        rows.append(row)
    return rows


def run_frames(clf, files: list[str], sink, opts: FrameOptions, summary=None,
               log: Callable[[str], None] = lambda m: None) -> FrameCounts:
    """Classify every white cell of every frame in `files`, writing rows to `sink` as they come.

    clf: a loaded Classifier whose card has `cells` (else the first frame raises CellsError, one line);
    sink: an edge.outputs sink (write(bytes)); summary: the run's per-sample summary adapter or None
    (cells are recorded under '<frame>#cell<N>', grouped by the frame's path); log: one-line messages.
    Returns the counts. Raises CellsError when the card cannot say how its training cells look, and
    OutputError when a row cannot be written; never for one frame's content.
    """
    from .fields import classify_frame

    counts = FrameCounts()
    model_fields = {"variant": clf.card.variant, "model_sha256": clf.card.model_sha256[:16]}
    overlays = Path(opts.overlays) if opts.overlays else None
    if overlays is not None:
        overlays.mkdir(parents=True, exist_ok=True)
    header = opts.fmt == "csv"
    for i, path in enumerate(files):
        overlay = overlays / f"{Path(path).stem}.{i + 1}.overlay.png" if overlays is not None else None
        crops = Path(opts.crops) / Path(path).stem if opts.crops else None
        result = classify_frame(clf, path, um_per_px=opts.um_per_px, overlay=overlay, crops_dir=crops)
        counts.frames += 1
        if not result.ok:
            counts.failed += 1
            log(f"{path}: {result.error}")
        for row in frame_rows(result, model_fields):
            sink.write(render(row, opts.fmt, header))
            header = False
            if row.get("error") or not row.get("cells"):
                continue
            counts.cells += 1
            counts.flagged += bool(row["flagged"])
            if summary is not None and (opts.include_flagged or not row["flagged"]):
                summary.summary.add(f"{path}#cell{row['cell']}", row["label"] == clf.card.positive_label,
                                    row["p_all"], False, bool(row.get("warning")),
                                    key=summary.summary.group_key(path))
    if header:  # no row at all: a CSV still says its columns
        sink.write(render({}, opts.fmt, True).split(b"\n", 1)[0] + b"\n")
    if summary is not None and counts.flagged and not opts.include_flagged:
        log(f"{counts.flagged} flagged cell(s) (cut by the frame edge, touching another white cell or blurred) "
            "are left out of the per-sample fractions (--include-flagged counts them)")
    return counts


__all__ = ["FRAME_FIELDS", "FrameCounts", "FrameOptions", "frame_rows", "render", "run_frames"]
