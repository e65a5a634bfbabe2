"""Finding white cells in microscope frames and classifying each one (docs/frames.md).

Imported only when frames are asked for: it needs OpenCV (`pip install 'leukedge[fields]'`), which the
single-cell path never loads. The names below are loaded on first use, so `import leukedge.edge.fields`
alone costs nothing.

- classify_frame(classifier, frame, ...) -> FrameResult     (edge.fields.frames)
- locate_cells(rgb, um_per_px=None) -> FieldLocation        (edge.fields.locate)
- measure_cells(images, um_per_px=None) -> card `cells` dict (edge.fields.crops)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "classify_frame": "frames", "FrameResult": "frames", "CellRow": "frames", "load_frame": "frames",
    "ROWS_VERSION": "frames",
    "locate_cells": "locate", "FieldLocation": "locate", "LocatedCell": "locate", "NotASmearError": "locate",
    "check_smear": "locate", "masked_single_cell": "locate",
    "measure_cells": "crops", "cells_spec": "crops", "CellsError": "crops", "cell_canvas": "crops",
    "draw_overlay": "overlay",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name == "cv2":
            raise ModuleNotFoundError("finding cells in frames needs OpenCV: pip install 'leukedge[fields]'",
                                      name="cv2") from None
        raise
    return getattr(module, name)
