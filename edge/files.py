"""Small file helpers shared by every step: hashing, whole-or-nothing writes, names to skip.

hashlib, tempfile and shutil are imported by the functions that use them: the device's cold start
(one image, the model's hash from the verified-hash cache, results on stdout) needs none of them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


# Names that are never input images: partial downloads and copies, editor/Office lock files,
# and the metadata files macOS (AppleDouble "._x" sidecars, .DS_Store) and Windows
# (Thumbs.db, desktop.ini) leave beside images. One rule for batch, watch and dataset readers.
IGNORED_NAME_PATTERNS = ("._*", ".DS_Store", "Thumbs.db", "desktop.ini", "~$*", "*.part", "*.tmp", "*.crdownload")
_IGNORED_EXACT = {".ds_store", "thumbs.db", "desktop.ini"}
_IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload")


def is_ignored_name(name: str | os.PathLike) -> bool:
    """True if a file name (or the last part of a path) is a temp or OS-metadata file, not data.

    The rule is `IGNORED_NAME_PATTERNS`, compared case-insensitively (Windows and macOS
    file systems are case-insensitive, and ``THUMBS.DB`` is as common as ``Thumbs.db``).
    Accepts str, bytes-decoded (surrogate-escaped) str or a path; never raises.
    """
    if isinstance(name, str) and "/" not in name:  # a bare name (os.scandir): the common, fast case
        base = name.lower()
    else:
        base = os.path.basename(os.fsdecode(name)).lower()
    return base.startswith(("._", "~$")) or base in _IGNORED_EXACT or base.endswith(_IGNORED_SUFFIXES)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's content, read in `chunk`-byte blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    Readers never see a half-written file, and a failure leaves the old file (or none).
    """
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any other file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Build an output folder's new files in a staging folder and move them in only on success.

    Files already in `out_dir` that the step does not produce are left alone; on failure
    nothing of this run appears in `out_dir`.
    """
    import shutil
    import tempfile

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        yield stage
        out.mkdir(parents=True, exist_ok=True)
        for item in sorted(stage.rglob("*")):
            if item.is_file():
                dest = out / item.relative_to(stage)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
