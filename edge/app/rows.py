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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from leukedge import __version__

from ..text import _has_surrogates, _json_str, escape_text, path_bytes, unescape_text

ROWS_VERSION = 1


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


def _ms(v) -> float | None:
    """A time in ms as a row holds it: 3 decimals, None when not measured."""
    return None if v is None else round(float(v), 3)


def make_row(path: str, model: ModelInfo, *, label=None, p_all=None, warning=None, error=None, error_type=None,
             status=None, reread=False, total_ms=None) -> dict:
    """One result row as a dict with the `FIELDS` keys (None = empty).

    path: the input as given or found; model: the ModelInfo every row carries. label / p_all / warning: the
    decision (p_all rounded to 6 decimals); error / error_type: what went wrong, one line (status defaults to
    ok without an error, else error). total_ms: the whole time spent on this input, ms (3 decimals). The stage
    times (preprocess_ms, invoke_ms) exist only for a classified image: `row_from_prediction` adds them.
    """
    if status is None:
        status = STATUS_OK if error is None else STATUS_ERROR
    row = dict.fromkeys(FIELD_NAMES)
    row.update(path=path, status=status, label=label,
               p_all=None if p_all is None else round(float(p_all), 6), warning=warning or None,
               error=error, error_type=error_type, reread=bool(reread), time=now_iso(), total_ms=_ms(total_ms))
    row.update(model.fields())
    return row


def row_from_prediction(pred, model: ModelInfo, reread: bool = False, path: str | None = None) -> dict:
    """A `Prediction` (edge.classifier) -> row. Warnings (a list, possibly absent) become the warning field.

    path: the row's path (default: the prediction's). A classified image's row has its stage times too.
    """
    warnings = list(getattr(pred, "warnings", None) or [])
    p = path if path is not None else str(pred.path)
    if pred.error is not None:
        return make_row(p, model, error=str(pred.error), error_type="ImageError", reread=reread,
                        total_ms=pred.total_ms)
    row = make_row(p, model, label=pred.label, p_all=pred.p_all, warning="; ".join(warnings) or None,
                   reread=reread, total_ms=pred.total_ms)
    row.update(preprocess_ms=_ms(pred.preprocess_ms), invoke_ms=_ms(pred.invoke_ms))
    return row


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
        from ..files import loads_bounded

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

