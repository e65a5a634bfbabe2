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


# File-name suffixes that are input images, one rule for a folder batch, a glob and a watched folder.
# Pillow decodes by content, so a suffix only decides what a folder yields: .jfif (Windows saves
# JPEGs under it by default), .jpe and .jif are registered JPEG suffixes (IANA image/jpeg).
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".tif", ".tiff")

SKIP_METADATA = "a temporary or OS metadata file"
SKIP_NOT_IMAGE = "not an image file name"
SKIP_NOT_FILE = "not a regular file"


def is_image_name(name: str | os.PathLike) -> bool:
    """True if a file name (or path) ends in one of `IMAGE_SUFFIXES` (any case) and is not a
    temp/OS-metadata name (`is_ignored_name`): the files a folder or a watched folder yields."""
    text = os.fsdecode(name).lower()
    return text.endswith(IMAGE_SUFFIXES) and not is_ignored_name(text)


def skip_reason(name: str | os.PathLike) -> str | None:
    """Why a file found in a folder is not classified, in words (`SKIP_METADATA` or
    `SKIP_NOT_IMAGE`), or None when it is an input image. Counted and reported, never silent."""
    if is_ignored_name(name):
        return SKIP_METADATA
    if not os.fsdecode(name).lower().endswith(IMAGE_SUFFIXES):
        return SKIP_NOT_IMAGE
    return None


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


# -- JSON with a depth bound -------------------------------------------------------

MAX_JSON_DEPTH = 64  # a card, a journal line or a result row nests 3-4 levels; 64 is generous

_JSON_TOKENS = None


def loads_bounded(text: str | bytes, max_depth: int = MAX_JSON_DEPTH):
    """json.loads for untrusted files (cards, journals, result rows) that refuses deep nesting.

    Python's json parser recurses once per nesting level, so a 100,000-deep value raises
    RecursionError (or exhausts the C stack) instead of a parse error. The text is scanned
    first (brackets outside strings, one regex pass) and a value nested more than `max_depth`
    levels raises json.JSONDecodeError (a ValueError) naming the position, like any other
    malformed JSON. Returns what json.loads returns.
    """
    import json
    import re

    global _JSON_TOKENS
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    if _JSON_TOKENS is None:
        _JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
    if text.count("[") + text.count("{") > max_depth:  # only texts with many brackets need the scan
        depth = 0
        for m in _JSON_TOKENS.finditer(text):
            tok = m.group()
            if tok in "[{":
                depth += 1
                if depth > max_depth:
                    raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", text, m.start())
            elif tok in "]}":
                depth -= 1
    return json.loads(text)


# -- exact writes and one writer per file ------------------------------------------


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of `data` at byte `offset` of file descriptor `fd` (os.pwrite, unbuffered).

    A short write (a disk filling up, a signal) is continued where it stopped; a failure raises
    OSError with nothing held back in a buffer, so the caller knows the file holds at most a
    prefix of `data` at `offset` and can cut it (os.ftruncate) or write the same bytes again at
    the same offset. Never appends a second copy, whatever the retries.
    """
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:  # pragma: no cover - pwrite returns >0 or raises for regular files
            raise OSError(28, "No space left on device")
        done += n


def lock_path_for(path: str | os.PathLike) -> Path:
    """The lock file of a results file: `.<name>.lock` beside the file the name resolves to."""
    target = Path(os.path.realpath(path))
    return target.with_name(f".{target.name}.lock")


class FileInUseError(OSError):
    """Another process holds a file's lock; the message names the file and that process."""


class WriterLock:
    """One writer per file: an exclusive, non-blocking flock on `lock_path_for(path)`.

    The lock file stays (removing it would let a third process lock a new inode while the
    second still holds the old one); it holds the owner's pid for the message. The kernel
    drops the lock when the owner exits, however it exits. `acquire()` raises FileInUseError
    (one line: the file, the other pid, what to do) or OSError when the lock file cannot be made.
    """

    def __init__(self, path: str | os.PathLike, what: str = "results file"):
        self.path = Path(path)
        self.what = what
        self.lock_file = lock_path_for(path)
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (Windows is not a device target)
            return self
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise FileInUseError(16, f"{self.path}: {self.what} in use by another edge-classify (pid {other}); "
                                     "one writer per file: wait for it, or choose another --output") from None
        try:  # the pid is only for the other process's message: a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
