"""The card's optional `cells` field, measured on training images for `train` and `import` (issue 24).

`cells` says how the training cells look (style, canvas, scale) so that the frame path
(`leukedge.edge.fields`) can cut cells out of a microscope frame the same way. It is measured with the
frame path's own locator (`edge.fields.crops.measure_cells`), which needs OpenCV (the `fields` extra).
It is optional: without OpenCV, or when the images cannot be measured, the card has no `cells`, the
step says so in one warning line and goes on (the per-cell path never needs it).

A dataset written by `leukedge data crop` records the scale its crops were cut at in CROP_RECORD; that
scale is used instead of being re-measured (masked crops show no red cells to measure it from).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Sequence

# Images read to measure the look (measure_cells' own default): it reports medians, so a seeded sample
# across both classes is enough, and reading it costs ~1 s (masked) to ~8 s (crops with smear) on one core.
MEASURE_SAMPLE = 200
CROP_RECORD = "crop.json"  # written by `leukedge data crop` at the dataset's root


def recorded_um_per_px(root: str | Path | None) -> float | None:
    """The training cells' micrometres per pixel recorded by `leukedge data crop` in <root>/crop.json, or None.

    A record that cannot be read or holds no positive number is ignored (the scale is then measured)."""
    if root is None:
        return None
    path = Path(root) / CROP_RECORD
    try:
        value = json.loads(path.read_text())["cells"]["um_per_px"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def measure_training_cells(paths: Sequence[str], *, root: str | Path | None = None, step: str = "train",
                           seed: int = 0, sample: int = MEASURE_SAMPLE) -> dict | None:
    """The card's `cells` dict measured on (a seeded sample of) the training images, or None.

    paths: training image files (any order; `sample` of them are drawn with `seed`, so both classes are seen).
    root: the dataset's root, where a `data crop` record may give the scale. step: the step's name for
    the warning line. Returns {"style", "canvas_px", "diameter_px", "um_per_px"} (edge.fields.crops.measure_cells),
    or None after one warning line on stderr when OpenCV is missing or nothing could be measured.
    """
    try:
        from leukedge.edge.fields.crops import measure_cells
    except ModuleNotFoundError as exc:
        if exc.name != "cv2":
            raise
        print(f"leukedge {step}: warning: the card gets no 'cells' field (how the training cells look, for frame "
              "input): OpenCV is not installed (pip install 'leukedge[fields]')", file=sys.stderr)
        return None
    chosen = list(paths)
    if len(chosen) > sample:
        chosen = random.Random(seed).sample(sorted(chosen), sample)
    try:
        return measure_cells(chosen, um_per_px=recorded_um_per_px(root), limit=None)
    except Exception as exc:  # noqa: BLE001 - an optional card field must never cost a training run
        print(f"leukedge {step}: warning: the card gets no 'cells' field (how the training cells look, for frame "
              f"input): {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


__all__ = ["CROP_RECORD", "MEASURE_SAMPLE", "measure_training_cells", "recorded_um_per_px"]
