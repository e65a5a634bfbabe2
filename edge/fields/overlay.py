"""The review overlay: the frame with each white cell's box coloured by its label, its number, P and flags.

Drawn with Pillow only (no OpenCV), so a result can be re-drawn wherever leukedge is installed.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colours chosen to be told apart by colour-blind readers as well (Okabe-Ito palette): vermilion for the
# positive label, bluish green for the other, grey for a cell that could not be classified.
POSITIVE = (213, 94, 0)
NEGATIVE = (0, 158, 115)
UNKNOWN = (128, 128, 128)


def draw_overlay(rgb: np.ndarray, cells, path: str | os.PathLike, positive_label: str) -> None:
    """Write `rgb` (uint8 (H, W, 3)) as a PNG at `path` with one box per cell.

    cells: objects with .cell (number), .box (x0, y0, x1, y1), .label, .p_all and .edge_cut/.touching/.blurred
    (edge.fields.frames.CellRow). A flagged cell's box is dashed-looking (drawn thinner) and its caption
    names the flags. The line width and text size follow the frame's size (1/200 of the shorter side).
    """
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    width = max(2, min(im.size) // 200)
    font = _font(max(10, min(im.size) // 32))
    for c in cells:
        colour = UNKNOWN if c.label is None else POSITIVE if c.label == positive_label else NEGATIVE
        flags = [n for n in ("edge_cut", "touching", "blurred") if getattr(c, n)]
        d.rectangle(c.box, outline=colour, width=width if not flags else max(1, width // 2))
        p = "?" if c.p_all is None else f"{c.p_all:.2f}"
        caption = f"{c.cell} {c.label or 'error'} P={p}" + (f" [{', '.join(flags)}]" if flags else "")
        x, y = c.box[0] + width, max(0, c.box[1] - font.size - 2 * width) if hasattr(font, "size") else c.box[1]
        tb = d.textbbox((x, y), caption, font=font)
        if tb[2] > im.size[0]:  # a cell at the right edge: its caption ends at the edge instead of off it
            x -= tb[2] - im.size[0]
            tb = d.textbbox((max(0, x), y), caption, font=font)
            x = max(0, x)
        d.rectangle(tb, fill=(255, 255, 255))
        d.text((x, y), caption, fill=colour, font=font)
    im.save(path, format="PNG", compress_level=1)  # level 1: ~5x faster than the default, ~10 % larger


@lru_cache(maxsize=8)
def _font(size: int):
    """Pillow's default font at `size` px, loaded once per size (loading it costs ~0.2 s)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()
