"""Where result rows go: stdout, a file appended to (watch mode), or a temporary file renamed into place (-o).

Each sink writes one complete line per call with an unbuffered write at the file's known end (see
edge.app.rows for the fsync measurement behind DEFAULT_FSYNC_INTERVAL). tempfile is imported only for -o.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

DEFAULT_FSYNC_INTERVAL = 1.0  # seconds; see edge.app.rows's module docstring for the measurement

# -- sinks -----------------------------------------------------------------------------


class OutputError(OSError):
    """Writing results failed (full disk, read-only or vanished folder); `.path` names the file."""


class StreamSink:
    """Rows to an already-open binary stream (stdout): written and flushed per row."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.offset = 0
        self.path = None

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()
        self.offset += len(data)

    def close(self) -> None:
        with _quiet_oserror():
            self.stream.flush()


class _FileSink:
    """A binary results file written one whole line at a time at a known offset, fsynced on a timer.

    Writes are unbuffered `os.pwrite` calls at `offset` (edge.files.pwrite_all): nothing is held
    back in a buffer after a failure, so a retry writes the same bytes at the same place instead of
    appending a second copy, and an offset the journal records is exactly where the row is. A failed
    write is cut back with ftruncate (which frees space, so it works on a full disk); if even that
    fails, the torn tail is cut before the next write. `offset` only grows by rows that are whole
    in the file (and fsync succeeded, when one was due).
    """

    def __init__(self, path: Path, fsync_interval: float = DEFAULT_FSYNC_INTERVAL):
        self.path = Path(path)
        self.fsync_interval = float(fsync_interval)
        self._fh: BinaryIO | None = None  # an unbuffered (raw) file object; writes go through its fd
        self._last_sync = time.monotonic()
        self._torn = False  # bytes after `offset` may be a failed write's tail
        self.offset = 0

    def _pwrite(self, data: bytes, offset: int) -> None:
        """The one place bytes reach the file (a test may stand a failing writer in for it)."""
        from ..files import pwrite_all

        pwrite_all(self._fh.fileno(), data, offset)

    def write(self, data: bytes) -> None:
        """Append `data` (whole lines) at `offset`; raises OutputError, leaving the file as before."""
        start = self.offset
        try:
            if self._torn:  # a failed write's tail is still there: cut it (a write over it would do too)
                self._rollback(start)
            self._pwrite(data, start)
            if self.fsync_interval <= 0 or time.monotonic() - self._last_sync >= self.fsync_interval:
                os.fsync(self._fh.fileno())  # a delayed-allocation ENOSPC shows here: the row is not kept
                self._last_sync = time.monotonic()
        except OSError as exc:
            self._rollback(start)
            raise OutputError(exc.errno, f"cannot write {self.path}: {exc.strerror or exc}", str(self.path)) from None
        self.offset = start + len(data)
        if self._torn:
            self._rollback(self.offset)

    def _rollback(self, start: int) -> None:
        """After a failed write, cut the file back to `start` (its last whole line)."""
        try:
            os.ftruncate(self._fh.fileno(), start)
            self._torn = False
        except (OSError, ValueError):
            self._torn = True

    def sync(self) -> None:
        with _quiet_oserror():
            os.fsync(self._fh.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fh is not None:
            if self._torn:
                with _quiet_oserror():
                    os.ftruncate(self._fh.fileno(), self.offset)
            self.sync()
            with _quiet_oserror():
                self._fh.close()
            self._fh = None


class AppendFileSink(_FileSink):
    """An output file that survives restarts: rows go after its last whole line; a torn last line is cut."""

    def __init__(self, path: str | os.PathLike, fsync_interval: float = DEFAULT_FSYNC_INTERVAL):
        super().__init__(Path(path), fsync_interval)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._fh = os.fdopen(fd, "r+b", buffering=0)
        self.offset = os.fstat(fd).st_size
        self.repaired = self._repair_tail()

    def _repair_tail(self) -> int:
        """Cut a half line left by a crash; returns the bytes removed."""
        if self.offset == 0:
            return 0
        start = max(0, self.offset - 65536)
        tail = self.read_at(start, self.offset - start)
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n")
        keep = start + cut + 1 if cut >= 0 else start
        return self.truncate(keep)

    def truncate(self, size: int) -> int:
        """Cut the file to `size` bytes (used by the journal's repair); returns the bytes removed."""
        removed = self.offset - size
        os.ftruncate(self._fh.fileno(), size)
        self.offset = size
        self._torn = False
        return removed

    def first_line(self) -> bytes:
        """The file's first line (up to 64 KiB), newline included if there is one."""
        head = self.read_at(0, 65536)
        cut = head.find(b"\n")
        return head if cut < 0 else head[: cut + 1]

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset` (fewer at the end of the file)."""
        out = b""
        while len(out) < n:
            chunk = os.pread(self._fh.fileno(), n - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return out


class TempFileSink(_FileSink):
    """Batch `-o`: rows go to a temporary file beside the target, renamed into place by `commit()`.

    If the run dies, `path` (the temporary file) holds every finished row; errors name it.
    """

    def __init__(self, target: str | os.PathLike, fsync_interval: float = DEFAULT_FSYNC_INTERVAL):
        import tempfile

        target = Path(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any other file
        super().__init__(Path(tmp), fsync_interval)
        self.target = target
        self._fh = os.fdopen(fd, "r+b", buffering=0)

    def commit(self) -> Path:
        """fsync, close and rename the temporary file onto the target; returns the target."""
        self.close()
        try:
            os.replace(self.path, self.target)
        except OSError as exc:
            raise OutputError(exc.errno, f"cannot rename {self.path} to {self.target}: {exc.strerror or exc}; "
                                         f"every finished row is in {self.path}", str(self.path)) from None
        return self.target


class _quiet_oserror:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, (OSError, ValueError))
