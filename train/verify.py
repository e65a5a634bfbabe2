"""Check a C-NMC download against the release manifest shipped with leukedge."""

from __future__ import annotations

import contextlib
import gzip
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from leukedge.edge.files import sha256_file

from .datasets import DatasetError

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

    @property
    def complete(self) -> bool:
        return not (self.missing or self.corrupt or self.unexpected)

    def to_dict(self) -> dict:
        return {"root": self.root, "expected": self.expected, "checked": self.checked, "ok": self.ok,
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


def verify_release(path: str | Path, progress: bool | None = None) -> VerifyReport:
    root = Path(path)
    if (root / RELEASE_DIR).is_dir():
        root = root / RELEASE_DIR
    if not root.is_dir():
        raise DatasetError(f"{path}: no such folder")
    manifest = load_manifest()
    report = VerifyReport(str(root), expected=len(manifest))
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    report.unexpected = sorted(on_disk - set(manifest))
    present = sorted(set(manifest) & on_disk)
    report.missing = sorted(set(manifest) - on_disk)
    show = sys.stderr.isatty() if progress is None else progress
    import click

    bar_cm = click.progressbar(present, label="verifying", file=sys.stderr) if show else contextlib.nullcontext(present)
    with bar_cm as bar:
        for rel in bar:
            sha, size = manifest[rel]
            p = root / rel
            report.checked += 1
            actual_size = p.stat().st_size
            if actual_size != size:
                report.corrupt.append((rel, f"size {actual_size} bytes, expected {size}"))
            elif sha256_file(p) != sha:
                report.corrupt.append((rel, "SHA-256 differs from the release"))
            else:
                report.ok += 1
    return report
