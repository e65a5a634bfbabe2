"""Check a C-NMC download against the release manifest shipped with leukedge.

The manifest names files as in the Kaggle layout (relative to C-NMC_Leukemia/). TCIA's package
("PKG - C-NMC 2019", see train.datasets) holds the same files under other folder names; they are
mapped onto the manifest by `tcia_to_release` before checking. Temp and OS-metadata files
(`._*` sidecars, .DS_Store, ...) are not data and are skipped.
"""

from __future__ import annotations

import contextlib
import gzip
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from leukedge.edge.files import is_ignored_name, sha256_file

from .datasets import TCIA_DIRS, DatasetError, find_tcia_root

MANIFEST = "cnmc-manifest.tsv.gz"
RELEASE_DIR = "C-NMC_Leukemia"


@dataclass
class VerifyReport:
    root: str
    expected: int
    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    layout: str = "kaggle"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.corrupt or self.unexpected)

    def to_dict(self) -> dict:
        return {"root": self.root, "layout": self.layout, "expected": self.expected, "checked": self.checked, "ok": self.ok,
                "missing": len(self.missing), "corrupt": [list(c) for c in self.corrupt],
                "unexpected": self.unexpected, "missing_files": self.missing}


def load_manifest() -> dict[str, tuple[str, int]]:
    """path (relative to C-NMC_Leukemia/) -> (sha256, size) for every file of the public release."""
    data = resources.files("leukedge.train").joinpath("reference", MANIFEST).read_bytes()
    out = {}
    for i, line in enumerate(gzip.decompress(data).decode().splitlines()):
        if i == 0 or not line.strip():
            continue
        path, sha, size = line.split("\t")
        out[path.split("/", 1)[1] if path.startswith(RELEASE_DIR + "/") else path] = (sha, int(size))
    return out


def tcia_to_release(rel: str) -> str | None:
    """A path inside TCIA's package -> the same file's path in the release manifest (None: not a release file).

    C-NMC_training_data/X -> training_data/X; C-NMC_test_prelim_phase_data/*labels*.csv ->
    validation_data/C-NMC_test_prelim_phase_data_labels.csv; C-NMC_test_prelim_phase_data/X ->
    validation_data/C-NMC_test_prelim_phase_data/X; C-NMC_test_final_phase_data/X ->
    testing_data/C-NMC_test_final_phase_data/X.
    """
    top, _, rest = rel.replace("\\", "/").partition("/")
    if not rest:
        return None
    if top == TCIA_DIRS["train"]:
        return f"training_data/{rest}"
    if top == TCIA_DIRS["validation"]:
        if "/" not in rest and rest.lower().endswith(".csv") and "labels" in rest.lower():
            return "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
        return f"validation_data/{TCIA_DIRS['validation']}/{rest}"
    if top == TCIA_DIRS["test"]:
        return f"testing_data/{TCIA_DIRS['test']}/{rest}"
    return None


def verify_release(path: str | Path, progress: bool | None = None) -> VerifyReport:
    """SHA-256 and size of every file of a C-NMC download (Kaggle layout or TCIA package) against the manifest.

    Returns a VerifyReport (paths in the manifest's names; `unexpected` in the download's own names).
    Raises DatasetError if `path` is not a folder.
    """
    root = Path(path)
    if (root / RELEASE_DIR).is_dir():
        root = root / RELEASE_DIR
    if not root.is_dir():
        raise DatasetError(f"{path}: no such folder")
    tcia = find_tcia_root(root) if not (root / "training_data").is_dir() else None
    if tcia is not None:
        root = tcia
    manifest = load_manifest()
    report = VerifyReport(str(root), expected=len(manifest), layout="tcia" if tcia is not None else "kaggle")
    on_disk_names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not is_ignored_name(p.name))
    disk_path: dict[str, str] = {}  # manifest name -> name on disk
    unexpected = []
    for rel in on_disk_names:
        name = tcia_to_release(rel) if tcia is not None else rel
        if name is None or name not in manifest:
            unexpected.append(rel)
        else:
            disk_path[name] = rel
    report.unexpected = unexpected
    on_disk = set(disk_path)
    present = sorted(set(manifest) & on_disk)
    report.missing = sorted(set(manifest) - on_disk)
    show = sys.stderr.isatty() if progress is None else progress
    import click

    bar_cm = click.progressbar(present, label="verifying", file=sys.stderr) if show else contextlib.nullcontext(present)
    with bar_cm as bar:
        for rel in bar:
            sha, size = manifest[rel]
            p = root / disk_path[rel]
            report.checked += 1
            actual_size = p.stat().st_size
            if actual_size != size:
                report.corrupt.append((rel, f"size {actual_size} bytes, expected {size}"))
            elif sha256_file(p) != sha:
                report.corrupt.append((rel, "SHA-256 differs from the release"))
            else:
                report.ok += 1
    return report
