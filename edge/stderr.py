"""One process-wide reader of the standard-error file descriptor: native libraries' lines, prefixed, whole.

Native code (libtiff inside Pillow, the TFLite runtime, TensorFlow's C++ side) writes to file
descriptor 2 directly, in pieces and from any thread: its text lands unprefixed and can be
spliced into the middle of one of our own stderr lines. `install()` puts a pipe on fd 2 and
starts one reader thread that cuts what arrives into lines and writes each one, prefixed
(`edge-classify: native: ...`), whole, to the real stderr. Python's own `sys.stderr` writes go
straight to the real stderr under the same lock, so a native line and one of ours never share a
line; a native line that arrives while a Python line is unfinished (a progress bar) starts on a
line of its own.

Filters: `add_filter(pattern)` drops native lines that match (a regular expression, searched)
before they are written, e.g. TensorFlow's known-harmless `failed call to cuInit` on a machine
without a GPU. `add_rewrite(pattern, repl)` rewrites a line first: libtiff names the file Pillow
hands it `tempfile.tif`, which does not exist; that name becomes `libtiff`.

One mechanism for the device (`edge-classify`, edge.cli) and the workstation (`leukedge`,
leukedge.cli). `uninstall()` (also registered with atexit) puts fd 2 back and writes what is
still in the pipe, so nothing a library said just before exit is lost.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from typing import Pattern

_lock = threading.RLock()
_reader: "_Reader | None" = None

# Native lines dropped (compiled patterns, searched); callers add theirs with add_filter().
_filters: list[Pattern[str]] = []
# libtiff's messages start with the name of the file it was opened on; Pillow opens it as 'tempfile.tif'.
_rewrites: list[tuple[Pattern[str], str]] = [(re.compile(r"^tempfile\.tif: "), "libtiff: ")]


class _LockedStream:
    """sys.stderr while the reader runs: every write goes whole to the real stderr under the lock."""

    def __init__(self, stream, reader: "_Reader"):
        self._stream = stream
        self._reader = reader

    def write(self, text: str) -> int:
        with _lock:
            n = self._stream.write(text)
            if text:
                self._reader.mid_line = not text.endswith("\n")
            self._stream.flush()
        return n

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with _lock:
            self._stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, errors, buffer ...
        return getattr(self._stream, name)


class _Reader:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.mid_line = False  # the last Python write left a line unfinished
        self.real_fd: int | None = None
        self.read_fd: int | None = None
        self.thread: threading.Thread | None = None
        self.saved_stderr = None
        self.own_stream = None

    # the pump -----------------------------------------------------------------------------

    def pump(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self.emit(line)
        if buf:
            self.emit(buf)

    def emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        with _lock:
            rewrites, filters = list(_rewrites), list(_filters)
        for pattern, repl in rewrites:
            text = pattern.sub(repl, text)
        if any(p.search(text) for p in filters):
            return
        from .outputs import escape_text  # here: the reader starts before anything else is imported

        line = f"{self.prefix}: native: {escape_text(text)}\n"
        with _lock:
            lead = ""
            if self.mid_line:
                tty = False
                try:
                    tty = os.isatty(self.real_fd)
                except OSError:
                    pass
                lead = "\r\x1b[2K" if tty else "\n"  # a bar is redrawn at its next update; a pipe gets a new line
                self.mid_line = False
            stream = self.saved_stderr if self.own_stream is None else None
            try:
                if stream is not None:  # sys.stderr was not fd 2 (a test's capture): write where it writes
                    stream.write(lead + line)
                    stream.flush()
                else:
                    _write_all(self.real_fd, (lead + line).encode("utf-8", "replace"))
            except (OSError, ValueError):
                pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def install(prefix: str) -> bool:
    """Route file descriptor 2 through the reader (once per process; a second call only sets the prefix).

    prefix: the program name each native line starts with (`edge-classify`, `leukedge`).
    Returns True when the reader runs; False where it cannot (no fd 2, no pipe, no thread): then
    native lines go to stderr as before, and nothing else changes.
    """
    global _reader
    with _lock:
        if _reader is not None:
            _reader.prefix = prefix
            return True
        reader = _Reader(prefix)
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            real = os.dup(2)
        except OSError:
            return False
        try:
            r, w = os.pipe()
        except OSError:
            os.close(real)
            return False
        os.set_inheritable(real, False)
        reader.real_fd, reader.read_fd = real, r
        reader.saved_stderr = sys.stderr
        try:
            on_fd2 = sys.stderr is not None and sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            on_fd2 = False
        if on_fd2:  # Python's own writes must not go through the pipe: give them the real stderr
            import io

            reader.own_stream = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0, closefd=True),
                                                 encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                                 errors="backslashreplace", line_buffering=True,
                                                 write_through=True)
        thread = threading.Thread(target=reader.pump, name="leukedge-stderr", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # can't start new thread: stay as we are
            for fd in (real, r, w):
                os.close(fd)
            if reader.own_stream is not None:
                reader.own_stream.close()
            return False
        reader.thread = thread
        os.dup2(w, 2)
        os.close(w)
        sys.stderr = _LockedStream(reader.own_stream or reader.saved_stderr, reader)
        _reader = reader
    atexit.register(uninstall)
    return True


def add_filter(pattern: str | Pattern[str]) -> None:
    """Drop native stderr lines that match `pattern` (a regular expression, searched in the line).

    Works before or after `install()`; lines already written are not recalled. Use it only for
    lines known to be harmless (the caller keeps the list, with the reason for each entry).
    """
    with _lock:
        _filters.append(re.compile(pattern) if isinstance(pattern, str) else pattern)


def add_rewrite(pattern: str | Pattern[str], replacement: str) -> None:
    """Rewrite native stderr lines (re.sub with `replacement`) before they are filtered and written."""
    with _lock:
        _rewrites.append((re.compile(pattern) if isinstance(pattern, str) else pattern, replacement))


def installed() -> bool:
    """True while the reader owns file descriptor 2."""
    return _reader is not None


def uninstall(timeout: float = 2.0) -> None:
    """Put the real stderr back on fd 2 and sys.stderr, after writing every line still in the pipe.

    Closing the pipe's write end (fd 2) ends the reader; it is given `timeout` seconds (a child
    process that inherited fd 2 can keep the pipe open: then its lines stop being prefixed).
    """
    global _reader
    with _lock:
        reader, _reader = _reader, None
    if reader is None:
        return
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    os.dup2(reader.real_fd, 2)  # closes the pipe's write end: the reader drains and ends
    if reader.thread is not None:
        reader.thread.join(timeout)
    if isinstance(sys.stderr, _LockedStream):
        sys.stderr = reader.saved_stderr
    if reader.thread is None or not reader.thread.is_alive():
        for fd in (reader.read_fd, reader.real_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        if reader.own_stream is not None:
            try:
                reader.own_stream.close()
            except (OSError, ValueError):
                pass
