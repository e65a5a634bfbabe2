"""One process-wide reader of the standard-error file descriptor: native libraries' lines, prefixed, whole.

Native code (libtiff inside Pillow, OpenBLAS, the TFLite runtime, TensorFlow's C++ side) writes to
file descriptor 2 directly, in pieces and from any thread: its text lands unprefixed and can be
spliced into the middle of one of our own stderr lines. `install()` puts a pipe on fd 2 and forks
one small reader process that cuts what arrives into lines and writes each one, prefixed
(`edge-classify: native: ...`), with a single write, to the real stderr. Python's own `sys.stderr`
goes straight to the real stderr (one write per line), so a native line and one of ours never share
a line; on a terminal each native line first clears the line it lands on (a progress bar is redrawn
at its next update).

A process, not a thread: when native code aborts the program (OpenBLAS "Memory allocation still
failed ... giving up", a C++ std::bad_alloc, a fatal Python error), its last words are already in
the pipe, and the reader, still alive, writes them out and ends when the pipe closes; a thread would
die with the process and lose them. It ignores SIGINT, SIGTERM and SIGHUP (it ends with its parent,
having written everything), and holds nothing but the pipe and the real stderr. Forking happens at
the very start of a command, before models or TensorFlow are loaded, so it copies little.

Filters: `add_filter(pattern)` drops native lines that match (a regular expression, searched)
before they are written, e.g. TensorFlow's known-harmless `failed call to cuInit` on a machine
without a GPU (issue 21). `add_rewrite(pattern, repl)` rewrites a line first: libtiff names the
file Pillow hands it `tempfile.tif`, which does not exist; that name becomes `libtiff`. Both work
before and after `install()` (afterwards they travel to the reader in the pipe itself, so they apply
to every native line written after the call).

One mechanism for the device (`edge-classify`, edge.app.cli) and the workstation (`leukedge`,
leukedge.app.cli). `uninstall()` (also registered with atexit) puts fd 2 back and waits for the reader
to write what is still in the pipe.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import time
from typing import Pattern

# Native lines dropped (searched) and rewritten (re.sub), in this process; the reader gets a copy.
_filters: list[Pattern[bytes]] = []
_rewrites: list[tuple[Pattern[bytes], bytes]] = [(re.compile(rb"^tempfile\.tif: "), b"libtiff: ")]

# A control message inside the pipe: MARK kind \x01 payload \n (kind: f filter, r rewrite, p prefix).
_MARK = b"\x00\x1bleukedge-stderr:"


class _Installed:
    """The parent's side of a running reader."""

    def __init__(self, pid: int, real_fd: int, saved_stderr, own_stream):
        self.pid, self.real_fd, self.saved_stderr, self.own_stream = pid, real_fd, saved_stderr, own_stream


_state: _Installed | None = None


class _LineStream:
    """sys.stderr while the reader runs, when it was fd 2: text to the real stderr, one write per call."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._stream.flush()
        return n

    def writelines(self, lines) -> None:
        self.write("".join(lines))

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, errors, buffer ...
        return getattr(self._stream, name)


def _pattern(p: str | bytes | Pattern) -> Pattern[bytes]:
    if isinstance(p, re.Pattern):
        p = p.pattern
    return re.compile(p.encode() if isinstance(p, str) else p)


# -- the reader process -------------------------------------------------------------------------


def _pump(read_fd: int, out_fd: int, prefix: bytes, filters, rewrites, escape) -> None:
    """The reader's loop: pipe -> prefixed whole lines on out_fd, until every writer has closed the pipe."""
    try:
        tty = os.isatty(out_fd)
    except OSError:
        tty = False
    lead = b"\r\x1b[2K" if tty else b""

    def emit(raw: bytes) -> None:
        line = raw.rstrip(b"\r")
        if not line.strip():
            return
        for pattern, repl in rewrites:
            line = pattern.sub(repl, line)
        if any(p.search(line) for p in filters):
            return
        text = escape(line.decode("utf-8", "replace")).encode("utf-8", "replace")
        data = lead + prefix + b": native: " + text + b"\n"
        try:
            while data:
                data = data[os.write(out_fd, data):]
        except OSError:  # stderr gone (a closed terminal): keep draining, so no writer ever blocks
            pass

    buf = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
        while _MARK in buf:  # control messages, in the order they were written among the lines
            i = buf.index(_MARK)
            j = buf.find(b"\n", i)
            if j < 0:
                break
            kind, _, payload = buf[i + len(_MARK): j].partition(b"\x01")
            buf = buf[:i] + buf[j + 1:]
            if kind == b"f":
                filters.append(re.compile(payload))
            elif kind == b"r":
                pattern, _, repl = payload.partition(b"\x02")
                rewrites.append((re.compile(pattern), repl))
            elif kind == b"p":
                prefix = payload
        if _MARK in buf:
            continue  # a control message still arriving
        *lines, buf = buf.split(b"\n")
        for line in lines:
            emit(line)
    if buf:
        emit(buf)


def install(prefix: str) -> bool:
    """Route file descriptor 2 through the reader (once per process; a second call only sets the prefix).

    prefix: the program name each native line starts with (`edge-classify`, `leukedge`).
    Returns True when the reader runs; False where it cannot (no fd 2, no pipe, no fork): then
    native lines go to stderr unprefixed, as before, and nothing else changes.
    """
    global _state
    if _state is not None:
        _send(b"p", prefix.encode())
        return True
    from .text import escape_text  # before the fork: the reader imports nothing

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
    try:
        import warnings

        with warnings.catch_warnings():  # Python 3.12 warns about fork() in a threaded process; the
            warnings.simplefilter("ignore", DeprecationWarning)  # child only reads and writes two fds
            pid = os.fork()
    except OSError:
        for fd in (real, r, w):
            os.close(fd)
        return False
    if pid == 0:  # the reader
        code = 0
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_IGN)
            keep = {r, real}
            for fd in range(0, max(keep) + 1):  # hold nothing else open: no one waits on our copies
                if fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            os.closerange(max(keep) + 1, 65536)
            _pump(r, real, prefix.encode(), list(_filters), list(_rewrites), escape_text)
        except BaseException:  # noqa: BLE001 - the reader never runs the parent's code or cleanup
            code = 1
        finally:
            os._exit(code)
    os.close(r)
    os.set_inheritable(real, False)
    saved = sys.stderr
    own = None
    try:
        on_fd2 = saved is not None and saved.fileno() == 2
    except (AttributeError, OSError, ValueError):
        on_fd2 = False
    if on_fd2:  # Python's own lines must not go through the pipe: give them the real stderr
        import io

        own = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0, closefd=True),
                               encoding=getattr(saved, "encoding", None) or "utf-8",
                               errors="backslashreplace", write_through=True)
    os.dup2(w, 2)
    os.close(w)
    if own is not None:
        sys.stderr = _LineStream(own)
    _state = _Installed(pid, real, saved, own)
    atexit.register(uninstall)
    return True


def _send(kind: bytes, payload: bytes) -> None:
    """A control message to the running reader, in the pipe (so it applies to what is written after it)."""
    try:
        os.write(2, _MARK + kind + b"\x01" + payload + b"\n")
    except OSError:
        pass


def add_filter(pattern: str | bytes | Pattern) -> None:
    """Drop native stderr lines that match `pattern` (a regular expression, searched in the line).

    Works before or after `install()`; lines already written are not recalled. Use it only for
    lines known to be harmless (the caller keeps the list, with the reason for each entry).
    """
    compiled = _pattern(pattern)
    _filters.append(compiled)
    if _state is not None:
        _send(b"f", compiled.pattern)


def add_rewrite(pattern: str | bytes | Pattern, replacement: str | bytes) -> None:
    """Rewrite native stderr lines (re.sub with `replacement`) before they are filtered and written."""
    compiled = _pattern(pattern)
    repl = replacement.encode() if isinstance(replacement, str) else replacement
    _rewrites.append((compiled, repl))
    if _state is not None:
        _send(b"r", compiled.pattern + b"\x02" + repl)


def installed() -> bool:
    """True while the reader owns file descriptor 2."""
    return _state is not None


def uninstall(timeout: float = 2.0) -> None:
    """Put the real stderr back on fd 2 and sys.stderr, after the reader has written every line still in the pipe.

    Closing this process's end of the pipe (fd 2) ends the reader once nothing else holds the pipe; it
    is given `timeout` seconds (a child process that inherited fd 2 keeps it open: the reader then
    goes on for that child and ends with it).
    """
    global _state
    state, _state = _state, None
    if state is None:
        return
    atexit.unregister(uninstall)
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    os.dup2(state.real_fd, 2)  # closes our end of the pipe: the reader drains and ends
    end = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(state.pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done or time.monotonic() >= end:
            break
        time.sleep(0.002)
    if isinstance(sys.stderr, _LineStream):
        sys.stderr = state.saved_stderr
    if state.own_stream is not None:
        try:
            state.own_stream.close()
        except (OSError, ValueError):
            pass
    os.close(state.real_fd)
