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

from .rows import RowWriter

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


def csv_header() -> bytes:
    """The CSV column line of frame rows (what a frame-rows CSV file starts with)."""
    return (",".join(FRAME_FIELDS) + "\n").encode()


TEXT_HEADER = b"# leukedge frame rows: frame, cell N, label, P(positive), (x,y) diameter, flags\n"


def header_for(fmt: str) -> bytes | None:
    """The line a frame-rows file starts with in `fmt` (None for JSON lines, which name every key)."""
    return {"csv": csv_header(), "text": TEXT_HEADER}.get(fmt)


def rows_layout(first_line: bytes, fmt: str) -> str | None:
    """Which rows an existing results file holds, from its first line: 'frames', 'cells' (the per-cell rows
    of edge.app.rows) or None (empty). A frame run never appends to a per-cell file, nor the other way round."""
    if not first_line.strip():
        return None
    if fmt == "csv":
        return "frames" if first_line == csv_header() else "cells"
    if fmt == "json":
        try:
            keys = json.loads(first_line)
        except ValueError:
            return "cells"
        return "frames" if isinstance(keys, dict) and "frame" in keys and "path" not in keys else "cells"
    return "frames" if first_line == TEXT_HEADER else "cells"


class FrameRowWriter(RowWriter):
    """edge.app.rows.RowWriter for frame rows, so a batch and the watcher (its Emitter and journal) handle
    frames as they handle cells. One 'row' is a frame's block: {"path", "status", "rows"}; it renders as all
    of the frame's cell rows together, so the journal records the whole block (offset, length, CRC) and a
    kill inside it leaves a torn block that the next start cuts off and reads again. The header, writes and
    close are RowWriter's; only the header line and the rendering differ."""

    def __init__(self, fmt: str, sink):  # noqa: D107 - RowWriter's per-cell header does not apply
        self.format, self.sink, self.rows = fmt, sink, 0
        self._header = header_for(fmt) if sink.offset == 0 else None

    def render(self, block: dict) -> bytes:
        return b"".join(render(row, self.format, False) for row in block["rows"])


def classify_frame_file(clf, path: str, model_fields: dict, opts: FrameOptions, reread: bool = False,
                        overlay: str | None = None) -> dict:
    """One frame file -> its block {"path", "status" ('ok' | 'error' | 'internal'), "rows", "reread"}.

    Never raises for the file's sake (an unusable frame is an error block, anything unexpected an
    'internal' block naming the exception), except CellsError: the card cannot say how its cells look,
    which the caller checks before the first frame."""
    from ..fields import CellsError, classify_frame

    crops = Path(opts.crops) / Path(path).stem if opts.crops else None
    try:
        result = classify_frame(clf, path, um_per_px=opts.um_per_px, overlay=overlay, crops_dir=crops)
    except CellsError:
        raise
    except Exception as exc:  # noqa: BLE001 - one frame never ends a run
        row = {"rows_version": None, "frame": path, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
        return {"path": path, "status": "internal", "rows": [{**row, **model_fields}], "reread": reread}
    rows = frame_rows(result, model_fields)
    return {"path": path, "status": "ok" if result.ok else "error", "rows": rows, "reread": reread,
            "error": result.error}


def overlay_path(folder: str | os.PathLike | None, frame: str) -> str | None:
    """Where a frame's review PNG goes: <folder>/<frame stem>.<8 hex of the frame's path>.overlay.png (frames of
    one name in different subfolders never share a PNG); None without a folder."""
    if folder is None:
        return None
    import zlib

    return str(Path(folder) / f"{Path(frame).stem}.{zlib.crc32(os.fsencode(frame)):08x}.overlay.png")


def summary_observer(summary, positive_label: str, include_flagged: bool, counts: FrameCounts):
    """A callable fed every written block: counts its cells and records them in the per-sample summary
    (`summary`: the run's adapter or None), keyed '<frame>#cell<N>' and grouped by the frame's path; flagged
    cells are left out of the fractions unless include_flagged."""

    def observe(block: dict) -> None:
        counts.frames += 1
        counts.failed += block["status"] != "ok"
        for row in block["rows"]:
            if row.get("error") or not row.get("cells"):
                continue
            counts.cells += 1
            counts.flagged += bool(row["flagged"])
            if summary is not None and (include_flagged or not row["flagged"]):
                summary.summary.add(f"{block['path']}#cell{row['cell']}", row["label"] == positive_label,
                                    row["p_all"], False, bool(row.get("warning")),
                                    key=summary.summary.group_key(block["path"]))

    return observe


def rebuild_summary(summary, output: str | os.PathLike, fmt: str, positive_label: str, include_flagged: bool) -> None:
    """After a watch restart: record in `summary` every cell an earlier run already wrote to `output` (frame
    rows, csv or json), so the per-sample summary counts what is done once. Unreadable files are left alone."""
    path = Path(output)
    if fmt not in ("csv", "json") or not path.is_file():
        return
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh)) if fmt == "csv" else [json.loads(line) for line in fh if line.strip()]
    truth = (True, "True", "true", "1")
    for row in rows:
        if row.get("error") or str(row.get("cells", "")) in ("", "0") or row.get("label") in (None, ""):
            continue
        flagged = row.get("flagged") in truth
        if include_flagged or not flagged:
            summary.summary.add(f"{row['frame']}#cell{row['cell']}", row["label"] == positive_label,
                                float(row["p_all"]), False, bool(row.get("warning")),
                                key=summary.summary.group_key(row["frame"]))


def run_frames(clf, files: list[str], sink, opts: FrameOptions, summary=None,
               log: Callable[[str], None] = lambda m: None) -> FrameCounts:
    """Classify every white cell of every frame in `files`, writing rows to `sink` as they come.

    clf: a loaded Classifier whose card has `cells` (else CellsError before the first frame, one line);
    sink: an edge.app.sinks sink (write(bytes), offset); summary: the run's per-sample summary adapter or
    None; log: one-line messages. Returns the counts. Raises CellsError, and OutputError when a row cannot
    be written; never for one frame's content.
    """
    from ..fields import cells_spec

    cells_spec(clf.card, None)  # the card must say how its training cells look, before any frame is read
    counts = FrameCounts()
    writer = FrameRowWriter(opts.fmt, sink)
    observe = summary_observer(summary, clf.card.positive_label, opts.include_flagged, counts)
    model_fields = {"variant": clf.card.variant, "model_sha256": clf.card.model_sha256[:16]}
    if opts.overlays:
        Path(opts.overlays).mkdir(parents=True, exist_ok=True)
    for path in files:
        block = classify_frame_file(clf, path, model_fields, opts, overlay=overlay_path(opts.overlays, path))
        if block["status"] != "ok":
            log(f"{path}: {block['rows'][0].get('error')}")
        writer.write(block)
        observe(block)
    writer.ensure_header()  # no row at all: a CSV still says its columns
    if summary is not None and counts.flagged and not opts.include_flagged:
        log(f"{counts.flagged} flagged cell(s) (cut by the frame edge, touching another white cell or blurred) "
            "are left out of the per-sample fractions (--include-flagged counts them)")
    return counts


__all__ = ["FRAME_FIELDS", "FrameCounts", "FrameOptions", "FrameRowWriter", "classify_frame_file", "csv_header",
           "frame_rows", "header_for", "overlay_path", "rebuild_summary", "render", "rows_layout", "run_frames",
           "summary_observer"]
