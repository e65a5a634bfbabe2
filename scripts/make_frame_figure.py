"""Draw docs/img/frame-overlay.png: a generated smear-like field through `classify_frame`, as docs/frames.md shows.

The field is generated (stain-coloured shapes on a red-cell background: tests/test_fields.py's make_field), and
the model is the tiny stand-in runtime of those tests (P from the crop's colour), so the figure shows what the
device writes, not a diagnosis. Run: .venv/bin/python scripts/make_frame_figure.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image  # noqa: E402
from test_fields import CROP_CELLS, classifier, make_field  # noqa: E402

from leukedge.edge.fields import classify_frame  # noqa: E402


def main() -> None:
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    frame = out / "frame.png"
    Image.fromarray(make_field(wbcs=((150, 140), (420, 300), (610, 60)), seed=3)).save(frame)
    clf = classifier(out, cells=dict(CROP_CELLS))
    res = classify_frame(clf, frame, um_per_px=0.125, overlay=out / "frame-overlay.png")
    (out / "m.tflite").unlink(missing_ok=True)  # the stand-in's placeholder model file
    for name in ("frame.png", "frame-overlay.png"):  # 256-colour palettes keep the committed figures small
        with Image.open(out / name) as im:
            small = im.convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE)
        small.save(out / name, optimize=True)
    for row in res.rows():
        print({k: row[k] for k in ("frame", "cell", "x", "y", "diameter_um", "p_all", "label", "edge_cut")})


if __name__ == "__main__":
    main()
