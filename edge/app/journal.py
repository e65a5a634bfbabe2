"""The watch-mode journal: what was classified, in which folder, with which model; restart-safe.

Each file is known by its content identity (edge.app.identity).

Journal (JSON lines, append-only, rewritten compactly at each start). Lines:

    {"t": "section", "v": 1, "folder": ABS, "model": {file, sha256, variant, threshold, leukedge},
     "output": ABS or null, "format": fmt, "started": ISO}
    {"t": "file", "p": REL, "s": size, "m": mtime_ns, "i": inode, "c": ctime_ns, "h": sha256[:16] or null,
     "st": "ok" | "error" | "internal" | "existing", "o": offset, "n": bytes, "k": crc32,
     "r": wall-clock ns just before the content was read (the racy-clean rule)}

A "file" line belongs to the section above it. With a results FILE, the journal line is written
BEFORE the row, naming the row's offset, length and CRC-32; at the next start every journaled
row is checked against the output file: a record whose row is not there (crash between the two
writes, full disk) is dropped, so its file is classified again, and bytes after the last
verified row (rows whose journal line a power loss took) are cut, so nothing is duplicated.
With results on stdout (`--state FILE`) the line is written AFTER the row: a crash between the
two can repeat that one row, never lose it. Both files are written with unbuffered writes at a
known offset: a write that fails (a full disk) is cut back and retried at the same offset, never
appended twice, and a record whose row could not be written is cut from the journal again, so
the journal names exactly the rows the file holds. "existing" marks a file that was in the
listing taken before the model loaded, at a first start without --include-existing. When the hash shows unchanged content under a new inode/ctime,
the previous record is repeated with the new identity (same status and row).
"""

from __future__ import annotations

import errno
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..files import loads_bounded, pwrite_all, write_text_atomic
from .identity import timestamp_granularity_ns
from .rows import STATUS_ERROR, STATUS_INTERNAL, STATUS_OK, ModelInfo, now_iso

JOURNAL_VERSION = 1


# -- journal ----------------------------------------------------------------------------


@dataclass
class Record:
    """The journal's last word on one file (see the module docstring for the fields)."""

    path: str
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    hash: str | None
    status: str
    out: int | None = None
    n: int | None = None
    crc: int | None = None
    section: int = 0
    read_ns: int | None = None  # wall-clock time (ns) just before the content was read and hashed

    def to_json(self) -> dict:
        d = {"t": "file", "p": self.path, "s": self.size, "m": self.mtime_ns, "i": self.ino, "c": self.ctime_ns,
             "h": self.hash, "st": self.status}
        if self.out is not None:
            d.update(o=self.out, n=self.n, k=self.crc)
        if self.read_ns is not None:
            d["r"] = self.read_ns
        return d

    @classmethod
    def from_json(cls, d: dict, section: int) -> "Record":
        return cls(str(d["p"]), int(d["s"]), int(d["m"]), int(d.get("i", 0)), int(d.get("c", 0)), d.get("h"),
                   str(d["st"]), d.get("o"), d.get("n"), d.get("k"), section,
                   int(d["r"]) if isinstance(d.get("r"), int) else None)

    @property
    def racy(self) -> bool:
        """The content was read so soon after its last modification that the file system's clock
        could not have shown a change made right after the read (git's "racy clean" rule): equal
        size, mtime, inode and ctime prove nothing, so the content is compared. See `timestamp_granularity_ns`."""
        return self.read_ns is not None and self.read_ns - self.mtime_ns < timestamp_granularity_ns(self.mtime_ns)

    @property
    def has_result(self) -> bool:
        return self.status in (STATUS_OK, STATUS_ERROR, STATUS_INTERNAL)


class JournalError(OSError):
    """The journal cannot be read or written; the message names the file."""


def default_journal_path(output: str | os.PathLike) -> Path:
    """The journal beside a results file: `<output>.journal`."""
    out = Path(output)
    return out.with_name(out.name + ".journal")


class Journal:
    """The restart-safe record of what was classified in which watched folder with which model.

    path: the journal file (created if absent). folder: the watched folder. model: ModelInfo.
    output/fmt: the results file (None for stdout) and its format. reclassify: ignore results of
    other models (files they classified are classified again with this one).
    After `open()`, `known` maps relative path -> Record (the latest one), and `notes` holds
    one-line messages for the user (resumed, model changed, rows repaired).
    """

    def __init__(self, path: str | os.PathLike, folder: str | os.PathLike, model: ModelInfo,
                 output: str | os.PathLike | None, fmt: str, reclassify: bool = False,
                 fsync_interval: float = 1.0):
        self.path = Path(path)
        self.folder = str(Path(folder).resolve())
        self.model = model
        self.output = str(Path(output).resolve()) if output else None
        self.fmt = fmt
        self.reclassify = reclassify
        self.fsync_interval = fsync_interval
        self.known: dict[str, Record] = {}
        self.notes: list[str] = []
        self.first_start = True
        self._fh = None
        self._end = 0  # the journal's length: the next record goes here
        self._torn = False  # bytes after _end may be a failed append's tail
        self._pending = b""  # this run's section line, when a full disk kept it from the compacted rewrite
        self._last: tuple[Record, int] | None = None  # the last record appended and where it starts
        self._last_sync = time.monotonic()
        self._lines: list[dict] = []  # compacted content, for the rewrite at open

    # reading ----------------------------------------------------------------------------

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise JournalError(exc.errno, f"{self.path}: cannot read journal: {exc.strerror or exc}") from None
        out = []
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                d = loads_bounded(raw)
            except ValueError:
                continue  # a half line from a crash (or a line nested too deeply to be ours)
            if isinstance(d, dict) and d.get("t") in ("section", "file"):
                out.append(d)
        return out

    def _lock(self) -> None:
        """Hold `<journal>.lock` (flock) while running: two watchers on one journal would both append."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fh = open(lock_path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            other = fh.read().strip() or "another process"
            fh.close()
            raise JournalError(0, f"{self.path}: in use by another edge-classify (pid {other}); "
                                  "one watcher per journal") from None
        try:  # the pid is only for the other process's message: a full disk must not stop the watcher
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        except OSError:
            pass
        self._lock_fh = fh

    def release_lock(self) -> None:
        fh = getattr(self, "_lock_fh", None)
        if fh is not None:
            try:
                fh.close()
            except OSError:  # a pid that never reached a full disk: the lock is dropped all the same
                pass
            self._lock_fh = None

    def open(self, sink=None) -> "Journal":
        """Lock, load, repair against the results file (`sink`, an AppendFileSink or None), compact,
        open for appending. Raises JournalError when another process holds the journal."""
        self._lock()
        lines = self._read()
        sections: list[dict] = []
        records: list[Record] = []
        for d in lines:
            if d["t"] == "section":
                sections.append(d)
            elif sections:
                try:
                    records.append(Record.from_json(d, len(sections) - 1))
                except (KeyError, TypeError, ValueError):
                    continue
        mine = {i for i, s in enumerate(sections) if s.get("folder") == self.folder}
        if sink is not None:
            records = self._repair(records, sections, sink)
        ours = [r for r in records if r.section in mine]
        # a first start is one with no section for this folder: when every record was dropped above (a crash
        # cut them all off), the files they named are lost results to classify again, not "already there"
        self.first_start = not mine
        last_model = sections[max(mine)].get("model", {}) if mine else None
        if last_model is not None and last_model.get("sha256") != self.model.model_sha256:
            self.notes.append(
                f"model changed for {self.folder}: {last_model.get('file')} ({last_model.get('sha256')}) -> "
                f"{self.model.model_file} ({self.model.model_sha256}); new journal section"
                + ("; --reclassify: files classified by other models are classified again" if self.reclassify
                   else "; files already classified are not redone (--reclassify to redo them)"))
        for r in ours:
            model_sha = sections[r.section].get("model", {}).get("sha256")
            if self.reclassify and model_sha != self.model.model_sha256 and r.status != "existing":
                continue
            self.known[r.path] = r
        if ours:
            n_res = sum(1 for r in self.known.values() if r.has_result)
            self.notes.append(f"resuming from journal {self.path}: {n_res} files already have results")
        self._rewrite(sections, records)
        return self

    def _repair(self, records: list[Record], sections: list[dict], sink) -> list[Record]:
        """Keep records whose row is verifiably in the results file; cut unjournaled trailing rows."""
        same_out = {i for i, s in enumerate(sections) if s.get("output") == self.output and s.get("format") == self.fmt}
        keep, lost, last_end = [], set(), None
        first_out = min((r.out for r in records if r.section in same_out and r.out is not None), default=None)
        for r in records:
            if r.section in same_out and r.out is not None:
                data = sink.read_at(r.out, r.n or 0)
                if len(data) != r.n or zlib.crc32(data) != r.crc:
                    lost.add((r.section, r.path))
                    continue
                last_end = max(last_end or 0, r.out + r.n)
            lost.discard((r.section, r.path))  # a later record with its row in place: nothing lost
            keep.append(r)
        dropped = len(lost)
        if dropped:
            self.notes.append(f"{dropped} journaled results were not in {sink.path} (crash or full disk): "
                              "those files are classified again")
        if last_end is None:  # no journaled row survived: everything from the first one on is unjournaled
            last_end = first_out
        if last_end is not None and sink.offset > last_end:
            extra = sink.read_at(last_end, sink.offset - last_end)
            rows = sum(1 for line in extra.split(b"\n") if line.strip() and not line.startswith(b"#"))
            sink.truncate(last_end)
            if rows:
                self.notes.append(f"removed {rows} unjournaled rows at the end of {sink.path}; "
                                  "those files are classified again")
        return keep

    def _rewrite(self, sections: list[dict], records: list[Record]) -> None:
        """Compact (last record per folder and path), append this run's section, open for appending."""
        last: dict[tuple[int, str], int] = {}
        for idx, r in enumerate(records):
            last[(sections[r.section].get("folder"), r.path)] = idx
        keep_idx = set(last.values())
        out_lines: list[str] = []
        cur = None
        for idx, r in enumerate(records):
            if idx not in keep_idx:
                continue
            if r.section != cur:
                out_lines.append(json.dumps(sections[r.section]))
                cur = r.section
            out_lines.append(json.dumps(r.to_json()))
        section = {"t": "section", "v": JOURNAL_VERSION, "folder": self.folder,
                   "model": {"file": self.model.model_file, "sha256": self.model.model_sha256,
                             "variant": self.model.variant, "threshold": self.model.threshold,
                             "leukedge": self.model.leukedge_version},
                   "output": self.output, "format": self.fmt, "started": now_iso()}
        out_lines.append(json.dumps(section))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_text_atomic(self.path, "\n".join(out_lines) + "\n")
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # a full disk at start: keep the journal as it is (records it no longer trusts are dropped
                # again at every start) and write this run's section with its first record
                self._pending = (json.dumps(section) + "\n").encode()
                self.notes.append(f"{self.path}: not compacted ({exc.strerror}); this run's records are appended")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            self._fh = os.fdopen(fd, "r+b", buffering=0)  # unbuffered: see append()
            self._end = os.fstat(fd).st_size
            if self._pending:  # never glue a record to a torn last line
                tail = os.pread(fd, min(self._end, 1 << 16), max(0, self._end - (1 << 16)))
                if tail and not tail.endswith(b"\n"):
                    self._end -= len(tail) - (tail.rfind(b"\n") + 1)
                    os.ftruncate(fd, self._end)
        except OSError as exc:
            raise JournalError(exc.errno, f"{self.path}: cannot write journal: {exc.strerror or exc}") from None

    # writing ----------------------------------------------------------------------------

    def append(self, rec: Record) -> None:
        """Append one record (an unbuffered write at the journal's end); fsynced on the timer.

        Raises JournalError when it cannot be written whole; the journal is then cut back to what it
        was (or, if even that fails, the torn tail is cut before the next append), so no record is
        half there and none is written twice: the journal holds exactly the records that succeeded.
        """
        data = self._pending + (json.dumps(rec.to_json()) + "\n").encode()
        start = self._end
        fd = self._fh.fileno()
        try:
            if self._torn:  # a failed append's tail is still there: cut it (a write over it would do too)
                self._cut(start)
            pwrite_all(fd, data, start)
            if self.fsync_interval <= 0 or time.monotonic() - self._last_sync >= self.fsync_interval:
                os.fsync(fd)
                self._last_sync = time.monotonic()
        except OSError as exc:
            self._cut(start)
            raise JournalError(exc.errno, f"cannot write journal {self.path}: {exc.strerror or exc}") from None
        self._end = start + len(data)
        if self._torn:
            self._cut(self._end)
        self._last = (rec, start + len(self._pending))
        self._pending = b""
        self.known[rec.path] = rec

    def _cut(self, size: int) -> None:
        try:
            os.ftruncate(self._fh.fileno(), size)
            self._end = size
            self._torn = False
        except (OSError, ValueError):
            self._torn = True

    def retract(self, rec: Record, before: Record | None) -> None:
        """Take back `rec`, the record just appended, whose row could not be written: the journal is
        cut back to before it (best effort: if that fails, the next start's CRC check drops it), and
        the file's previous record (`before`, or none) is its latest again."""
        if self._last is not None and self._last[0] is rec:
            self._cut(self._last[1])
            self._torn = False  # a failed cut leaves a whole record, which the restart's check drops
            self._last = None
        if before is None:
            self.known.pop(rec.path, None)
        else:
            self.known[rec.path] = before

    def close(self) -> None:
        if self._fh is not None:
            try:
                if self._torn:
                    os.ftruncate(self._fh.fileno(), self._end)
                os.fsync(self._fh.fileno())
            except (OSError, ValueError):
                pass
            try:
                self._fh.close()
            except (OSError, ValueError):
                pass
            self._fh = None
        self.release_lock()
