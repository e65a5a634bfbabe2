"""A `leukedge data crop` dataset (train/crop.py writes it): its file names, its error, and reading back which
crops a person has reviewed (train.datasets warns about the others)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from leukedge.edge.errors import LeukedgeError

MANIFEST = "manifest.csv"
REVIEWED = "reviewed.txt"
UNLABELLED = "unlabelled"  # cells nobody labelled; not a class (train.datasets skips it)
CROP_SCHEMA = "leukedge.crop"
MANIFEST_COLUMNS = ("file", "frame", "cell", "x", "y", "x0", "y0", "x1", "y1", "diameter_px", "diameter_um",
                    "p_all", "predicted", "label", "source", "reviewed", "edge_cut", "touching", "blurred", "error")


class CropError(LeukedgeError, ValueError):
    """`data crop` cannot run as asked (no frames, bad annotations, no scale); one line naming the file."""



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

