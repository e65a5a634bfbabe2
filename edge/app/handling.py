"""Per-file handling shared by a batch and the watcher: one file -> one row, counted and written.

- `classify_file`: classify one file into a result row (edge.app.rows); never raises for the file's sake.
- `Counts`: classified / failed / internal / re-read counts of a run.
- `Emitter`: writes a row, and with a journal its record, in the order that keeps both consistent.

A batch needs only this module; the journal and the watcher (edge.app.journal, edge.app.watcher) are
imported only in --watch mode, so a single-image start does not pay for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .rows import STATUS_INTERNAL, STATUS_OK, ModelInfo, make_row, row_from_prediction
from .sinks import OutputError

if TYPE_CHECKING:
    from .identity import Identity
    from .journal import Journal


def one_line(text: str, limit: int = 500) -> str:
    """First meaningful content of a message as a single line (CR/LF/TAB become spaces)."""
    flat = " ".join(str(text).replace("\t", " ").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def classify_file(clf, path: str, model: ModelInfo, reread: bool = False, strict_quality: bool = False) -> dict:
    """Classify one file and return its result row (edge.app.rows); never raises for the file's sake.

    Decoding problems come back from `clf.predict_one` as the image error (status "error");
    anything else raised while handling the file becomes a row with status "internal" naming
    the exception type, so one input can never end a run. With strict_quality, a prediction
    carrying quality warnings becomes an error row. KeyboardInterrupt/SystemExit still propagate.
    """
    t0 = time.perf_counter()
    try:
        pred = clf.predict_one(path)
        if pred.ok and strict_quality and getattr(pred, "warnings", None):
            return make_row(path, model, error="quality check: " + one_line("; ".join(pred.warnings)),
                            error_type="QualityWarning", reread=reread, total_ms=pred.total_ms)
        return row_from_prediction(pred, model, reread=reread, path=path)
    except Exception as exc:  # noqa: BLE001 - the point: no single input ends the run
        problem = getattr(exc, "problem", None)
        if problem is not None and type(exc).__name__ == "ImageError":
            return make_row(path, model, error=one_line(problem), error_type="ImageError", reread=reread,
                            total_ms=(time.perf_counter() - t0) * 1e3)
        return make_row(path, model, status=STATUS_INTERNAL, error=one_line(f"{type(exc).__name__}: {exc}"),
                        error_type=type(exc).__name__, reread=reread, total_ms=(time.perf_counter() - t0) * 1e3)


@dataclass
class Counts:
    """Summary counts: classified (ok rows), failed (error rows), internal errors, re-reads (rows of either kind).

    Rows are counted as written; `any_failed` (the exit code) asks whether any input's *latest* row
    failed, so a file read half-written in watch mode and classified when read again (a `reread`
    ok row) no longer fails the run; `recovered` counts those files.
    """

    classified: int = 0
    failed: int = 0
    internal: int = 0
    rereads: int = 0
    recovered: int = 0
    failing: set = field(default_factory=set)  # paths whose latest row failed
    skipped: dict = field(default_factory=dict)  # reason -> files found in a folder and not classified

    def skip(self, reason: str, n: int = 1) -> None:
        """Count `n` files a folder held that get no row, under `reason` (edge.files.skip_reason)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def add(self, row: dict) -> None:
        st = row["status"]
        path = row.get("path")
        if st == STATUS_OK:
            self.classified += 1
            if path in self.failing:
                self.failing.discard(path)
                self.recovered += 1
        else:
            if st == STATUS_INTERNAL:
                self.internal += 1
            else:
                self.failed += 1
            self.failing.add(path)
        if row.get("reread"):
            self.rereads += 1

    @property
    def any_failed(self) -> bool:
        return bool(self.failing)

    def summary(self) -> str:
        text = (f"{self.classified} classified, {self.failed} failed, {self.internal} internal errors, "
                f"{self.rereads} re-reads")
        if self.recovered:
            text += f" ({self.recovered} failed file(s) classified when read again; {len(self.failing)} still failing)"
        if self.skipped:
            text += f", {sum(self.skipped.values())} skipped (" + ", ".join(
                f"{n} {reason}" for reason, n in sorted(self.skipped.items())) + ")"
        return text


class Emitter:
    """Writes one row and its journal record in the order that keeps both consistent (see edge.app.journal's
    module docstring: with a results file the record goes first, with stdout the row goes first).

    writer: edge.app.rows.RowWriter; journal: edge.app.journal.Journal or None; counts: Counts.
    """

    def __init__(self, writer, journal: Journal | None, counts: Counts):
        self.writer = writer
        self.journal = journal
        self.counts = counts
        self.to_file = getattr(writer.sink, "path", None) is not None
        self.observers: list = []  # callables fed every written row (e.g. the per-sample summary)

    def emit(self, row: dict, rel: str | None = None, ident: Identity | None = None, digest: str | None = None,
             read_ns: int | None = None) -> None:
        """Write `row`; with a journal, record `rel`'s identity (and `read_ns`, the wall-clock time its
        content was read, for the racy-clean rule). Raises OutputError / JournalError."""
        data = self.writer.render(row)
        if self.journal is not None and rel is not None and ident is not None:
            from .journal import Record  # a journal means --watch: edge.app.journal is loaded already

            rec = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns, digest, row["status"],
                         read_ns=read_ns)
            if self.to_file:
                import zlib

                self.writer.ensure_header()  # the row's offset is known only after a pending header
                rec.out, rec.n, rec.crc = self.writer.sink.offset, len(data), zlib.crc32(data)
                before = self.journal.known.get(rel)
                self.journal.append(rec)
                try:
                    self.writer.write_bytes(data)
                except OutputError:
                    # the record names a row that is not there: take it back out of the journal (if even
                    # that fails, the next start's CRC check drops it) and forget it here
                    self.journal.retract(rec, before)
                    raise
            else:
                self.writer.write_bytes(data)
                self.journal.append(rec)
        else:
            self.writer.write_bytes(data)
        self.counts.add(row)
        for observe in self.observers:
            observe(row)
