"""edge-classify's result rows: ONE versioned field list, the escaping of file names, append-only writers.

Rows version 1 — the fields, in CSV column order (`FIELDS`; JSON rows omit empty fields):

    path              the input file as given or found (CSV/text: escaped by `escape_text`)
    status            ok | error (the input cannot be used: decoding, size, quality with --strict-quality)
                      | internal (an unexpected exception while handling this one file: a bug, please report)
    label             the decision: the card's positive label when p_all >= threshold, else the other label
    p_all             probability of the card's positive label (ALL), 6 decimals
    threshold         the decision threshold used (the card's unless --threshold)
    warning           quality / out-of-distribution warnings, "; "-joined (classified anyway)
    error             what went wrong, one line (empty when status is ok)
    error_type        the exception's class name (ImageError, TypeError, ...) when status is not ok
    reread            true when this path had a result before (this run or a journaled earlier one)
                      and is classified again because its content changed
    time              UTC time the row was made, ISO 8601 with milliseconds
    preprocess_ms, invoke_ms, total_ms   time spent on this image
    model_file, model_sha256 (first 12 hex digits), variant, leukedge_version   which model and software
    rows_version      this list's version (1); a later version only appends fields

JSON only: `path_b64`, the raw bytes of the path (base64), present exactly when the name is not
valid UTF-8; `path` then shows the undecodable bytes as U+FFFD.

Escaping in CSV and text (`escape_text` / `unescape_text`, a lossless round trip to the name's
bytes): backslash -> ``\\\\``, TAB -> ``\\t``, LF -> ``\\n``, CR -> ``\\r``, other control characters
and bytes that are not UTF-8 -> ``\\xHH``; everything else is written as UTF-8. So no name can
split a CSV record, a text line or a text column.

Writers add one complete line per row with an unbuffered write at the file's known end (a killed
process loses no finished row; a write that fails, e.g. on a full disk, is cut back and leaves
nothing buffered, so a retry never writes a second copy). fsync: measured on this workstation's disk, fsync costs 0.22 ms per row against
0.002 ms for a flush (SD cards on a Pi: milliseconds); the default fsyncs on a 1-second timer and
at the end, so a power loss costs at most the last second of rows, which the ingest journal
detects and classifies again (`fsync_interval=0` fsyncs every row).

csv, base64 and tempfile are imported where they are used (CSV rows, undecodable names, -o), not
at every device start.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from leukedge import __version__

ROWS_VERSION = 1
DEFAULT_FSYNC_INTERVAL = 1.0  # seconds; see the module docstring for the measurement


@dataclass(frozen=True)
class Field:
    """One output field: its name, value kind (str | float | int | bool) and meaning."""

    name: str
    kind: str
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("path", "str", "input file as given or found; CSV/text: escape_text()"),
    Field("status", "str", "ok | error | internal"),
    Field("label", "str", "decision: positive label when p_all >= threshold"),
    Field("p_all", "float", "probability of the card's positive label"),
    Field("threshold", "float", "decision threshold used"),
    Field("warning", "str", "quality / out-of-distribution warnings, '; '-joined"),
    Field("error", "str", "what went wrong, one line"),
    Field("error_type", "str", "exception class name when status is not ok"),
    Field("reread", "bool", "classified again because the content changed"),
    Field("time", "str", "UTC time of the row, ISO 8601"),
    Field("preprocess_ms", "float", "decode + checks + input tensor, ms"),
    Field("invoke_ms", "float", "model invoke, ms"),
    Field("total_ms", "float", "whole image, ms"),
    Field("model_file", "str", "model file name"),
    Field("model_sha256", "str", "first 12 hex digits of the model's SHA-256"),
    Field("variant", "str", "model variant from the card"),
    Field("leukedge_version", "str", "leukedge version"),
    Field("rows_version", "int", "version of this field list"),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
JSON_ONLY_FIELDS = (Field("path_b64", "str", "raw path bytes, base64, when the name is not UTF-8"),)
FORMATS = ("text", "json", "csv")

STATUS_OK, STATUS_ERROR, STATUS_INTERNAL = "ok", "error", "internal"


# -- model identity --------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What every row and journal section says about the model: file, SHA-256 prefix, variant, threshold."""

    model_file: str
    model_sha256: str
    variant: str
    threshold: float
    leukedge_version: str = __version__

    @classmethod
    def from_classifier(cls, clf) -> "ModelInfo":
        """From a loaded `Classifier` (its model path, card and effective threshold)."""
        return cls(Path(clf.model_path).name, (clf.card.model_sha256 or "")[:12], str(clf.card.variant),
                   float(clf.threshold))

    def fields(self) -> dict:
        return {"threshold": self.threshold, "model_file": self.model_file, "model_sha256": self.model_sha256,
                "variant": self.variant, "leukedge_version": self.leukedge_version, "rows_version": ROWS_VERSION}

    def header_line(self) -> str:
        """The text format's header line (starts with '#')."""
        return (f"# leukedge {self.leukedge_version} rows v{ROWS_VERSION}: model {escape_text(self.model_file)} "
                f"sha256 {self.model_sha256} variant {self.variant} threshold {self.threshold:.4f}")


def now_iso() -> str:
    """Current UTC time, ISO 8601 with milliseconds and a Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_row(path: str, model: ModelInfo, *, label=None, p_all=None, warning=None, error=None, error_type=None,
             status=None, reread=False, preprocess_ms=None, invoke_ms=None, total_ms=None) -> dict:
    """One result row as a dict with the `FIELDS` keys (None = empty)."""
    if status is None:
        status = STATUS_OK if error is None else STATUS_ERROR
    row = dict.fromkeys(FIELD_NAMES)
    row.update(path=path, status=status, label=label,
               p_all=None if p_all is None else round(float(p_all), 6), warning=warning or None,
               error=error, error_type=error_type, reread=bool(reread), time=now_iso(),
               preprocess_ms=None if preprocess_ms is None else round(float(preprocess_ms), 3),
               invoke_ms=None if invoke_ms is None else round(float(invoke_ms), 3),
               total_ms=None if total_ms is None else round(float(total_ms), 3))
    row.update(model.fields())
    return row


def row_from_prediction(pred, model: ModelInfo, reread: bool = False, path: str | None = None) -> dict:
    """A `Prediction` (edge.classifier) -> row. Warnings (a list, possibly absent) become the warning field."""
    warnings = list(getattr(pred, "warnings", None) or [])
    p = path if path is not None else str(pred.path)
    if pred.error is not None:
        return make_row(p, model, error=str(pred.error), error_type="ImageError", reread=reread,
                        total_ms=pred.total_ms)
    return make_row(p, model, label=pred.label, p_all=pred.p_all, warning="; ".join(warnings) or None,
                    reread=reread, preprocess_ms=pred.preprocess_ms, invoke_ms=pred.invoke_ms, total_ms=pred.total_ms)


# -- names -------------------------------------------------------------------------

_SIMPLE = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNSIMPLE = {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}


def escape_text(s: str) -> str:
    """Escape a string (a path from os.fsdecode, possibly with surrogate-escaped bytes) for CSV/text.

    See the module docstring for the rule; `unescape_text` inverts it to the original bytes.
    """
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _SIMPLE:
            out.append(_SIMPLE[ch])
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:  # any other lone surrogate cannot be written as UTF-8
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_text(s: str) -> bytes:
    """Inverse of `escape_text`: the escaped field -> the original name's bytes (os.fsencode form)."""
    out = bytearray()
    i = 0
    while i < len(s):
        ch = s[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = s[i + 1: i + 2]
        if nxt in _UNSIMPLE:
            out += _UNSIMPLE[nxt]
            i += 2
        elif nxt == "x":
            out.append(int(s[i + 2: i + 4], 16))
            i += 4
        elif nxt == "u":
            out += chr(int(s[i + 2: i + 6], 16)).encode("utf-8", "surrogatepass")
            i += 6
        else:
            raise ValueError(f"bad escape at {i} in {s!r}")
    return bytes(out)


def _json_str(s: str) -> str:
    """A string JSON can carry as UTF-8: undecodable bytes shown as U+FFFD."""
    return os.fsencode(s).decode("utf-8", "replace") if _has_surrogates(s) else s


def _has_surrogates(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def path_bytes(path: str) -> bytes:
    """The file system bytes of a path string (surrogate-escaped bytes restored)."""
    return os.fsencode(path)


# -- rendering -----------------------------------------------------------------------


class RowFormat:
    """Renders rows as complete lines (bytes ending in b"\\n") in one of `FORMATS`."""

    def __init__(self, fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
        self.fmt = fmt

    def header(self, model: ModelInfo) -> bytes | None:
        """The line(s) a new file or stream starts with: CSV column names; text: the model line."""
        if self.fmt == "csv":
            return (",".join(FIELD_NAMES) + "\n").encode()
        if self.fmt == "text":
            return (model.header_line() + "\n").encode("utf-8")
        return None

    def render(self, row: dict) -> bytes:
        """One row -> one line of bytes, newline included; never more than one line."""
        if self.fmt == "json":
            d = {}
            for k, v in row.items():
                if v is None or (k == "reread" and not v) or v == "":
                    continue
                d[k] = _json_str(v) if isinstance(v, str) else v
            if _has_surrogates(row["path"]):
                import base64

                d["path_b64"] = base64.b64encode(path_bytes(row["path"])).decode("ascii")
            return (json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8")
        if self.fmt == "csv":
            import csv

            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow([_csv_value(row.get(k)) for k in FIELD_NAMES])
            return buf.getvalue().encode("utf-8")
        path = escape_text(row["path"])
        if row["status"] != STATUS_OK:
            kind = "INTERNAL-ERROR" if row["status"] == STATUS_INTERNAL else "ERROR"
            what = escape_text(str(row.get("error") or ""))
            if row["status"] == STATUS_INTERNAL and row.get("error_type"):
                what = f"{row['error_type']}: {what}"
            line = f"{path}\t{kind}\t{what}"
        else:
            line = f"{path}\t{row['label']}\tp_all={row['p_all']:.4f}"
            if row.get("warning"):
                line += f"\twarning={escape_text(row['warning'])}"
        if row.get("reread"):
            line += "\treread"
        return (line + "\n").encode("utf-8")


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return escape_text(v)
    return str(v)


def read_rows(path: str | os.PathLike, fmt: str) -> list[dict]:
    """Read back a JSONL or CSV results file (complete lines only; a half last line is ignored).

    CSV fields come back as strings with `path` unescaped to the file system's str form.
    """
    data = Path(path).read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    text = data.decode("utf-8")
    if fmt == "json":
        from .files import loads_bounded

        rows = [loads_bounded(line) for line in text.splitlines() if line.strip()]
        for r in rows:
            if "path_b64" in r:
                import base64

                r["path"] = os.fsdecode(base64.b64decode(r["path_b64"]))
        return rows
    if fmt == "csv":
        import csv

        rows = list(csv.DictReader(io.StringIO(text)))
        for r in rows:
            r["path"] = os.fsdecode(unescape_text(r["path"]))
        return rows
    raise ValueError(f"read_rows reads json or csv, not {fmt!r}")


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
        from .files import pwrite_all

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


class RowWriter:
    """Rows in one format to one sink; the header goes first when the sink is empty.

    header_each_run: for text appended to an existing file, repeat the model header line
    (the model may have changed since the last run). The header is written with the first row
    (`ensure_header`), so a full disk at start is retried like any row, not a crash.
    """

    def __init__(self, fmt: str, sink, model: ModelInfo, header_each_run: bool = False):
        self.format = RowFormat(fmt)
        self.sink = sink
        self.model = model
        self.rows = 0
        header = self.format.header(model)
        self._header = header if header is not None and (sink.offset == 0 or (fmt == "text" and header_each_run)) \
            else None

    def render(self, row: dict) -> bytes:
        return self.format.render(row)

    def ensure_header(self) -> None:
        """Write the pending header line(s), if any (raises OutputError; then it stays pending)."""
        if self._header is not None:
            self.sink.write(self._header)
            self._header = None

    def write_bytes(self, data: bytes) -> None:
        """Write one rendered row, after the header if it is still due (raises OutputError)."""
        self.ensure_header()
        self.sink.write(data)
        self.rows += 1

    def write(self, row: dict) -> None:
        self.write_bytes(self.render(row))

    def close(self) -> None:
        """Write a header still due (an empty batch's file has its column names), then close."""
        try:
            self.ensure_header()
        finally:
            self.sink.close()


def detect_format(first_line: bytes) -> str | None:
    """The rows format of a results file from its first line: "json" (an object), "text" (the
    `# leukedge` header), "csv" (anything else: a header of column names); None when empty."""
    line = first_line.lstrip()
    if not line:
        return None
    if line.startswith(b"{"):
        return "json"
    if line.startswith(b"# leukedge"):
        return "text"
    return "csv"


def check_append_target(path: str | os.PathLike, first: bytes, fmt: str) -> str | None:
    """For an existing output that rows are appended to (watch mode), given its first line: None if
    it holds `fmt` rows of this version (for CSV: the same header), else the problem in words,
    naming `path`."""
    found = detect_format(first)
    if found is None:
        return None
    if found != fmt:
        return (f"{path}: holds {found} rows, this run writes {fmt} (--format); use --format {found} "
                "or another --output file")
    if fmt == "csv" and first != (",".join(FIELD_NAMES) + "\n").encode():
        return (f"{path}: existing CSV has other columns (rows v{ROWS_VERSION} writes {len(FIELD_NAMES)}); "
                "choose a new --output file")
    return None

