"""Lossless unattended ingest: per-file handling that never ends a run, the restart-safe journal, the watcher.

Content identity. A file is known by its path relative to the watched folder and its content
identity: (size, mtime_ns), plus (inode, ctime_ns) and a SHA-256 of the content as the "cheap
hash when needed". `cp -p` or `touch -r` can give new content an old mtime, but never an old
ctime; when size and mtime match a journaled result but inode or ctime do not, the content
hash decides (equal: same content, nothing to do; different: classify again). The hash also
decides when all four are equal but the content was read within the file system's timestamp
granularity of its mtime (1 s on ext3/HFS+/many shares, 2 s on FAT: a rewrite in the same tick
leaves every stamp as it was; git's "racy clean" rule, `Record.racy`), and when an inotify event
says the file was written: such files are compared by content until a read falls outside that
window. Folders follow the same rule in poll mode (a folder listed within its mtime's tick is
listed again).

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

Heartbeat: a small JSON file rewritten (atomically) every few seconds: time, pid, state
(watching | folder-missing | output-error | stopped), last scan, counts (classified, failed,
internal, rereads, pending, skipped files by reason, inotify overflows) and the model, so monitoring can tell a dead or stuck watcher
(old `time`) from a quiet microscope (fresh `time`, growing `last_scan`, no new counts).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .files import (SKIP_NOT_FILE, is_ignored_name, is_image_name, loads_bounded, pwrite_all,  # noqa: F401
                    skip_reason, write_text_atomic)
from .handling import Counts, Emitter, classify_file, one_line  # noqa: F401 - re-exported (see edge.handling)
from .outputs import STATUS_ERROR, STATUS_INTERNAL, STATUS_OK, ModelInfo, OutputError, now_iso

JOURNAL_VERSION = 1
HASH_WHOLE_LIMIT = 8 << 20  # files up to 8 MiB are hashed whole; larger: first and last MiB plus the size


# -- per-file handling (edge.handling; re-exported here) ------------------------------------
#
# one_line, classify_file, Counts and Emitter live in edge.handling so that a batch does not import
# the journal and the watcher; they stay importable from here.


# -- identity ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """What the file system says about a file's content: size, mtime_ns, inode, ctime_ns."""

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    @property
    def key(self) -> tuple[int, int]:
        return self.size, self.mtime_ns


def stat_identity(path: str | os.PathLike) -> Identity | None:
    """Identity of a regular file, or None if it is gone or not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat as _stat

    return Identity.of(st) if _stat.S_ISREG(st.st_mode) else None


# The kernel stamps mtime/ctime from a clock that ticks once per jiffy (up to 10 ms at HZ=100), even
# on nanosecond file systems; 20 ms covers that and exFAT's 10 ms. Whole seconds: ext3, ext4 with
# 128-byte inodes, HFS+, many SMB/NFS servers; even seconds: FAT.
COARSE_CLOCK_NS = 20_000_000


def timestamp_granularity_ns(mtime_ns: int) -> int:
    """How coarse the file system's timestamps are, judged from one of them: 2 s when it is a whole
    even second (FAT), 1 s when a whole second, else COARSE_CLOCK_NS. A nanosecond stamp that happens
    to fall on a whole second (one in a billion) only costs one extra content comparison."""
    if mtime_ns % 2_000_000_000 == 0:
        return 2_000_000_000
    if mtime_ns % 1_000_000_000 == 0:
        return 1_000_000_000
    return COARSE_CLOCK_NS


def content_hash(path: str | os.PathLike) -> str | None:
    """SHA-256 (16 hex digits) of a file's content; files over 8 MiB: of the size, first and last MiB.

    Cell images are 10 KB–1 MB, so in practice the whole file (about 1 ms per MB). None if unreadable.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= HASH_WHOLE_LIMIT:
                h.update(fh.read())
            else:
                h.update(str(size).encode())
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    except OSError:
        return None
    return h.hexdigest()[:16]


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


# -- watching ---------------------------------------------------------------------------


@dataclass
class _Pending:
    ident: Identity
    since: float  # monotonic time the identity was first seen unchanged


@dataclass
class WatchOptions:
    """Watch settings. settle: seconds a file's (size, mtime) must hold still before it is read.
    poll_interval: seconds between checks. mode: "inotify" (watchdog; local disks) or "poll"
    (network shares). full_scan_interval: seconds between full stat sweeps (poll mode sees in-place
    overwrites only then: directory mtimes change on create/rename/delete, not on rewrites).
    heartbeat_interval: seconds between heartbeat rewrites. empty_timeout: seconds a 0-byte file
    waits for its writer (created first, written later) before it is read and reported as empty.
    A row that failed and a later `reread` row that succeeded leave the run's exit code at 0."""

    recursive: bool = False
    settle: float = 1.0
    poll_interval: float = 0.5
    mode: str = "inotify"
    full_scan_interval: float | None = None
    include_existing: bool = False
    strict_quality: bool = False
    heartbeat: str | None = None
    heartbeat_interval: float = 5.0
    retry_interval: float = 2.0
    empty_timeout: float = 60.0  # a 0-byte file still empty after this long gets an error row

    def __post_init__(self):
        if self.full_scan_interval is None:
            self.full_scan_interval = 300.0 if self.mode == "inotify" else 30.0


def wanted(name: str) -> bool:
    """The one rule for which names are input images (edge.files.is_image_name): an image suffix
    (.jfif and .jpe included) and not a temp/metadata file. `name` is a file name or path."""
    return is_image_name(name)


def list_folder(folder: str | os.PathLike, recursive: bool) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of every input image in `folder` (subfolders too when `recursive`).

    The listing a watcher takes before its model loads: what it holds is "already there" at a
    first start, and anything written later is new. Unreadable subfolders are left out; raises
    FileNotFoundError when `folder` itself is gone.
    """
    found = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full = os.path.join(folder, rel_dir) if rel_dir else os.fspath(folder)
        try:
            entries = list(os.scandir(full))
        except (FileNotFoundError, NotADirectoryError):
            if rel_dir == "":
                raise FileNotFoundError(full) from None
            continue
        except PermissionError:
            continue
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    if recursive:
                        stack.append(rel)
                elif is_image_name(e.name) and e.is_file():
                    found.append((rel, e.stat()))
            except OSError:
                continue
    return found


# What an event says about a file's content. "opened" and "closed_no_write" (our own reads among them)
# and "deleted" say nothing about it; the others may come with new content under unchanged stamps.
_CONTENT_EVENTS = frozenset({"created", "modified", "moved", "closed", "attrib"})
_RESCAN, _LOST = "\0rescan", "\0lost"


@dataclass
class _DirState:
    """What the last listing of one folder found: its mtime, when it was listed (wall clock, ns), every
    entry's inode number (by name), its subfolders, and its skipped files (name -> reason, and counts)."""

    mtime_ns: int
    listed_ns: int
    inodes: dict = field(default_factory=dict)  # name -> inode, every entry
    subdirs: set = field(default_factory=set)  # relative paths
    skip_of: dict = field(default_factory=dict)  # name -> reason, for files that are not classified
    skipped: dict = field(default_factory=dict)  # reason -> count

    @property
    def racy(self) -> bool:
        """Listed within the clock's granularity of its last change: a create in the same tick would not
        change its mtime, so it is listed again (the "racy clean" rule, for folders)."""
        return self.listed_ns - self.mtime_ns < timestamp_granularity_ns(self.mtime_ns)

    def skip(self, name: str, reason: str) -> None:
        self.skip_of[name] = reason
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def forget(self, name: str, rel: str) -> None:
        """Drop what was known about entry `name` (path `rel`): it is gone or now another inode."""
        reason = self.skip_of.pop(name, None)
        if reason is not None:
            self.skipped[reason] -= 1
            if not self.skipped[reason]:
                del self.skipped[reason]
        self.subdirs.discard(rel)


class Watcher:
    """Classify every image that settles in `folder`, forever, losslessly; `run()` until `stop` is set.

    clf: a Classifier; emitter: Emitter (rows + journal); log: one-line stderr messages.
    baseline: the listing taken before the model was loaded (`list_folder`); at a first start
    without --include-existing only the files in it (as they were then) count as already there.
    classify: (clf, path, model, reread=, strict_quality=) -> the row (or a frame's block of rows,
    edge.frame_batch.classify_frame_file) one settled file gives; default `classify_file` (one cell).
    """

    def __init__(self, clf, folder: str | os.PathLike, emitter: Emitter, model: ModelInfo, opts: WatchOptions,
                 log: Callable[[str], None], stop: threading.Event | None = None, pool=None,
                 baseline: list[tuple[str, os.stat_result]] | None = None, classify: Callable | None = None):
        self.clf = clf
        self.classify = classify or classify_file
        self.pool = pool  # edge.throughput.ClassifierPool: a backlog is classified on its workers, rows in order
        self.folder = Path(folder)
        self.emitter = emitter
        self.journal = emitter.journal
        self.known: dict[str, Record] = self.journal.known if self.journal else {}
        self.model = model
        self.opts = opts
        self.log = log
        self.stop = stop or threading.Event()
        self.counts = emitter.counts
        self.baseline = baseline
        self.pending: dict[str, _Pending] = {}
        self.dirs: dict[str, _DirState] = {}
        self.racy: set[str] = set()  # files whose last read was racily clean: compared by content until clean
        self.state = "starting"
        self.last_scan: str | None = None
        self.sweeps = 0
        self.lost_events = 0
        self._dirty: dict[str, bool] = {}  # path -> an event said its content may have changed
        self._dirty_lock = threading.Lock()
        self._observer = None
        self._handler = None
        self._last_full = 0.0
        self._last_heartbeat = 0.0
        self._problem: str | None = None
        self._skips_told: set[tuple[str, str]] = set()

    # discovery ----------------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.folder)

    def _list(self, skip_unchanged_dirs: bool) -> list[tuple[str, os.stat_result]]:
        """(rel path, stat) of the files to consider; raises FileNotFoundError if the folder is gone.

        Full (skip_unchanged_dirs False): every input image, stat'ed. Incremental (poll mode's
        ticks): a folder whose mtime is unchanged (and was not listed racily) is not listed; one that
        is, is read as names and inode numbers only, and just the entries that are new or now another
        inode (a rename over an old name) are looked at and stat'ed, so a tick costs nothing per
        unchanged file beyond its name (in-place rewrites wait for the full sweep, or are caught as
        racy). Every file that is not an input image is counted by reason (`counts.skipped`).
        """
        found = []
        seen_dirs = set()
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            seen_dirs.add(rel_dir)
            full = os.path.join(self.folder, rel_dir) if rel_dir else str(self.folder)
            try:
                dst = os.stat(full)
            except FileNotFoundError:
                if rel_dir == "":
                    raise
                continue
            prev = self.dirs.get(rel_dir)
            incremental = skip_unchanged_dirs and prev is not None
            if incremental and prev.mtime_ns == dst.st_mtime_ns and not prev.racy:
                stack.extend(prev.subdirs)  # nothing created, renamed or deleted here; still descend
                continue
            listed_ns = time.time_ns()
            try:
                entries = list(os.scandir(full))
            except (FileNotFoundError, NotADirectoryError):
                if rel_dir == "":
                    raise FileNotFoundError(full)
                continue
            except PermissionError:
                continue
            inodes = {e.name: e.inode() for e in entries}
            if incremental:
                state, todo = prev, entries
                changed = {name for name, _ in inodes.items() - prev.inodes.items()}  # C speed: set algebra
                for name in prev.inodes.keys() - inodes.keys():  # deleted or renamed away
                    gone = f"{rel_dir}/{name}" if rel_dir else name
                    state.forget(name, gone)
                    self.pending.pop(gone, None)
                    self.racy.discard(gone)
                    for sub in [d for d in self.dirs if d.startswith(gone + "/")]:
                        del self.dirs[sub]
                for name in changed:
                    state.forget(name, f"{rel_dir}/{name}" if rel_dir else name)
                todo = [e for e in entries if e.name in changed] if changed else []
                state.mtime_ns, state.listed_ns, state.inodes = dst.st_mtime_ns, listed_ns, inodes
            else:
                state, todo = _DirState(dst.st_mtime_ns, listed_ns, inodes), entries
            for e in todo:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                try:
                    if e.is_dir(follow_symlinks=False):
                        if self.opts.recursive:
                            state.subdirs.add(rel)
                        continue
                    reason = skip_reason(e.name) or (None if e.is_file() else SKIP_NOT_FILE)
                    if reason is not None:
                        state.skip(e.name, reason)
                        self._tell_skip(rel, reason)
                        continue
                    found.append((rel, e.stat()))
                except OSError:
                    continue
            stack.extend(state.subdirs)
            self.dirs[rel_dir] = state
        if not skip_unchanged_dirs:
            for rel_dir in self.dirs.keys() - seen_dirs:
                del self.dirs[rel_dir]
        skipped: dict[str, int] = {}
        for d in self.dirs.values():
            for reason, n in d.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        self.counts.skipped = skipped
        return found

    def _tell_skip(self, rel: str, reason: str) -> None:
        """One line the first time a kind of file (reason and suffix) is skipped; the rest are counted."""
        kind = (reason, os.path.splitext(rel)[1].lower())
        if kind not in self._skips_told and len(self._skips_told) < 100:
            self._skips_told.add(kind)
            self.log(f"{os.path.join(self.folder, rel)}: skipped: {reason}; further {kind[1] or 'such'} files "
                     "are counted (heartbeat 'skipped'), not listed")

    def _consider(self, rel: str, st: os.stat_result | None = None, content_event: bool = False) -> None:
        """Decide whether a file needs reading (new or changed content) and put it in `pending`.

        Size and mtime differing from the file's record: changed. Equal, with inode and ctime equal
        too: unchanged, unless the record was read racily (within the file system's timestamp
        granularity of its mtime: see Record.racy) or an event says the content may have changed;
        then, as when inode or ctime differ, the content hash decides.
        """
        if st is None:
            try:
                st = os.stat(os.path.join(self.folder, rel))
            except OSError:
                self.pending.pop(rel, None)
                self.racy.discard(rel)
                return
        ident = Identity.of(st)
        if rel in self.pending:
            return  # the settle check follows it
        rec = self.known.get(rel)
        if rec is not None and (rec.size, rec.mtime_ns) == ident.key:
            if rec.hash is None:
                return  # there at a first start, never read: nothing to compare with
            same_node = (rec.ino, rec.ctime_ns) == (ident.ino, ident.ctime_ns)
            if same_node and not content_event and not rec.racy:
                self.racy.discard(rel)
                return
            now = time.time_ns()
            digest = content_hash(os.path.join(self.folder, rel))
            if digest == rec.hash:  # same content: remember the identity, and whether it is clean now
                clean = now - ident.mtime_ns >= timestamp_granularity_ns(ident.mtime_ns)
                if not same_node or (rec.racy and clean):
                    same = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns, digest, rec.status,
                                  rec.out, rec.n, rec.crc, read_ns=now if clean else rec.read_ns)
                    if self.journal is not None:
                        try:
                            self.journal.append(same)
                        except JournalError:
                            pass  # compared again next time
                    else:
                        self.known[rel] = same
                if clean:
                    self.racy.discard(rel)
                else:
                    self.racy.add(rel)
                return
        self.racy.discard(rel)
        self.pending[rel] = _Pending(ident, time.monotonic())

    def _full_scan(self, skip_unchanged_dirs: bool = False) -> None:
        for rel, st in self._list(skip_unchanged_dirs):
            self._consider(rel, st)
        if not skip_unchanged_dirs:
            self.sweeps += 1
        self.last_scan = now_iso()

    def _check_racy(self) -> None:
        """Compare again the files read racily (few: those read within a clock tick of their change)."""
        for rel in sorted(self.racy):
            self._consider(rel)

    # inotify -------------------------------------------------------------------------------

    def _make_handler(self):
        """The watchdog event handler that feeds `_dirty` (paths, content flag, overflow, folders moved in)."""
        from watchdog.events import EVENT_TYPE_EVENTS_LOST, FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type == EVENT_TYPE_EVENTS_LOST:  # the kernel queue overflowed
                    with watcher._dirty_lock:
                        watcher._dirty[_LOST] = True
                    return
                if event.is_directory:
                    if event.event_type in ("created", "moved"):
                        with watcher._dirty_lock:
                            watcher._dirty[_RESCAN] = True  # a folder moved in: its files came with it
                    return
                content = event.event_type in _CONTENT_EVENTS
                for p in (getattr(event, "dest_path", None), event.src_path):
                    if p:
                        p = os.fsdecode(p)
                        if wanted(os.path.basename(p)):
                            with watcher._dirty_lock:
                                watcher._dirty[p] = watcher._dirty.get(p, False) or content

        return Handler()

    def _start_observer(self) -> None:
        from watchdog.observers import Observer

        obs = Observer()
        self._handler = self._make_handler()
        obs.schedule(self._handler, str(self.folder), recursive=self.opts.recursive)
        obs.daemon = True
        obs.start()
        self._observer = obs

    def _ensure_observer(self) -> None:
        """Start inotify; if the system refuses (watch/instance limits, no inotify, no thread), poll instead."""
        try:
            self._start_observer()
        except (OSError, RuntimeError) as exc:  # RuntimeError: can't start new thread
            self._observer = None
            self.log(f"inotify unavailable for {self.folder} ({getattr(exc, 'strerror', None) or exc}); polling "
                     "instead (raise fs.inotify.max_user_watches, or pass --poll)")
            self.opts.mode = "poll"
            self.opts.full_scan_interval = min(self.opts.full_scan_interval, 30.0)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=2)
            except Exception:  # noqa: BLE001 - an observer of a vanished folder may fail to stop cleanly
                pass
            self._observer = None

    def _drain_events(self) -> bool:
        """Consider the files events named; True when a full sweep is due now (a folder moved in,
        or events were lost: watchdog's EventsLostEvent after an inotify queue overflow)."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, {}
        if _LOST in dirty:
            self.lost_events += 1
            self.log(f"inotify lost events for {self.folder} (its queue overflowed: fs.inotify.max_queued_events); "
                     "sweeping the folder now")
            return True
        if _RESCAN in dirty:
            return True
        for p, content in dirty.items():
            rel = self._rel(p)
            if rel.startswith(".."):
                continue
            self._consider(rel, content_event=content)
        return False

    # reading ----------------------------------------------------------------------------

    def _ready(self) -> list[tuple[str, Identity]]:
        now = time.monotonic()
        ready = []
        for rel, pend in list(self.pending.items()):
            ident = stat_identity(os.path.join(self.folder, rel))
            if ident is None:
                del self.pending[rel]  # deleted (or replaced by a folder) before it settled
                continue
            if ident.key != pend.ident.key:
                self.pending[rel] = _Pending(ident, now)
                continue
            held = now - pend.since
            if held >= self.opts.settle and (ident.size > 0 or held >= max(self.opts.empty_timeout, self.opts.settle)):
                ready.append((rel, ident))
        return sorted(ready)

    def _compute(self, clf, item: tuple[str, Identity, bool]):
        """On a worker: hash, classify and re-stat one settled file (no shared state touched)."""
        rel, ident, reread = item
        full = os.path.join(self.folder, rel)
        read_ns = time.time_ns()  # before the content is read: see Record.racy
        digest = content_hash(full)
        row = self.classify(clf, full, self.model, reread=reread, strict_quality=self.opts.strict_quality)
        return rel, ident, digest, row, stat_identity(full), read_ns

    def _read_ready(self, ready: list[tuple[str, Identity]]) -> None:
        items = []
        for rel, ident in ready:
            prev = self.known.get(rel)
            items.append((rel, ident, prev is not None and prev.has_result))
        done = 0
        if self.pool is not None and len(items) > 1:
            try:
                for res in self.pool.map(self._compute, items):
                    self._commit(*res)
                    done += 1
                    if self.stop.is_set():
                        return
            except RuntimeError as exc:  # a worker thread could not start (memory, thread limits)
                if "thread" not in str(exc):
                    raise
                self.log(f"cannot start a worker thread ({exc}); going on with one worker")
                pool, self.pool = self.pool, None
                try:
                    pool.close()
                except Exception:  # noqa: BLE001 - the pool is being dropped; its own failure changes nothing
                    pass
        for it in items[done:]:
            if self.stop.is_set():
                return
            self._commit(*self._compute(self.clf, it))

    def _commit(self, rel: str, ident: Identity, digest: str | None, row: dict, after: Identity | None,
                read_ns: int | None = None) -> None:
        full = os.path.join(self.folder, rel)
        if after is None:
            self.pending.pop(rel, None)
            return  # deleted while being read: no result for content that no longer exists
        if after.key != ident.key:
            self.pending[rel] = _Pending(after, time.monotonic())  # the writer came back; read it when it settles
            return
        self.emitter.emit(row, rel, ident, digest, read_ns=read_ns)  # raises OutputError / JournalError: stays pending
        self.pending.pop(rel, None)
        if self.journal is None:
            self.known[rel] = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns, digest, row["status"],
                                     read_ns=read_ns)
        rec = self.known.get(rel)
        if rec is not None and rec.racy:
            self.racy.add(rel)  # read within a clock tick of its last change: compared by content until clean
        if row["status"] != STATUS_OK:
            self.log(f"{full}: {row['error']}")
        elif row.get("warning"):
            self.log(f"{full}: warning: {row['warning']} (classified; --strict-quality refuses such images)")

    # main loop ----------------------------------------------------------------------------

    def heartbeat(self, force: bool = False) -> None:
        """Rewrite the heartbeat file (atomically) if it is due; failures are ignored."""
        if not self.opts.heartbeat:
            return
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.opts.heartbeat_interval:
            return
        self._last_heartbeat = now
        beat = {"time": now_iso(), "pid": os.getpid(), "state": self.state, "folder": str(self.folder),
                "last_scan": self.last_scan, "classified": self.counts.classified, "failed": self.counts.failed,
                "internal": self.counts.internal, "rereads": self.counts.rereads, "pending": len(self.pending),
                "skipped": dict(self.counts.skipped), "lost_events": self.lost_events,
                "problem": self._problem, "model_file": self.model.model_file,
                "model_sha256": self.model.model_sha256, "variant": self.model.variant}
        try:
            write_text_atomic(self.opts.heartbeat, json.dumps(beat) + "\n")
        except OSError:
            pass

    def _set_problem(self, state: str, message: str | None) -> None:
        if message and message != self._problem:
            self.log(message)
        elif message is None and self._problem is not None:
            self.log(f"recovered: watching {self.folder} again")
        self._problem = message
        self.state = state

    def start(self) -> None:
        """Start watching: inotify first (so nothing written from now on is missed), then list.

        With a journal: what arrived while down is read. At a first start without --include-existing,
        the files of the listing taken before the model loaded (`baseline`; this listing when there
        is none) are recorded as existing, as they were then, and not classified; anything that
        arrived or changed since is read.
        """
        first = self.journal is None or self.journal.first_start
        if self.opts.mode == "inotify":
            self._ensure_observer()
        listing = self._list(False)
        self.last_scan = now_iso()
        if first and not self.opts.include_existing:
            for rel, st in (self.baseline if self.baseline is not None else listing):
                ident = Identity.of(st)
                rec = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns, None, "existing")
                if self.journal is not None:
                    try:
                        self.journal.append(rec)
                    except JournalError:  # a full disk at start: known for this run; a restart lists again
                        self.known[rel] = rec
                else:
                    self.known[rel] = rec
        for rel, st in listing:
            self._consider(rel, st)
        self._last_full = time.monotonic()
        self.state = "watching"

    def run(self, started: bool = False) -> Counts:
        """Watch until `stop` is set (calls `start()` first unless `started`). A vanished folder or an
        unwritable output is reported once and retried every retry_interval; nothing finished is lost."""
        if not started:
            self.start()
        self.heartbeat(force=True)
        try:
            while not self.stop.is_set():
                try:
                    self._tick()
                    if self._problem:
                        self._set_problem("watching", None)
                except FileNotFoundError:
                    self._stop_observer()
                    self.dirs.clear()
                    self._set_problem("folder-missing", f"watch folder {self.folder} is gone; retrying every "
                                                        f"{self.opts.retry_interval:g} s")
                    self.stop.wait(self.opts.retry_interval)
                except (OutputError, JournalError) as exc:
                    self._set_problem("output-error", f"{exc.strerror or exc}; retrying every "
                                                      f"{self.opts.retry_interval:g} s (unfinished files stay pending)")
                    self.stop.wait(self.opts.retry_interval)
                except OSError as exc:  # the folder unreadable, replaced by a file, a stale network mount...
                    self._stop_observer()
                    self._set_problem("folder-error", f"watch folder {self.folder}: {exc.strerror or exc}; "
                                                      f"retrying every {self.opts.retry_interval:g} s")
                    self.stop.wait(self.opts.retry_interval)
                except Exception as exc:  # noqa: BLE001 - a watcher that runs for days must not die of one bug
                    self._set_problem("internal-error", f"internal error in the watcher ({type(exc).__name__}: "
                                                        f"{one_line(str(exc))}); retrying every "
                                                        f"{self.opts.retry_interval:g} s")
                    self.stop.wait(self.opts.retry_interval)
                self.heartbeat()
        finally:
            self._stop_observer()
            self.state = "stopped"
            self.heartbeat(force=True)
        return self.counts

    def _tick(self) -> None:
        now = time.monotonic()
        if not self.folder.is_dir():
            raise FileNotFoundError(str(self.folder))
        if self.opts.mode == "inotify":
            if self._observer is None:  # first tick after the folder came back: events were missed
                self._ensure_observer()
                self._full_scan()
                self._last_full = now
            elif self._drain_events() or now - self._last_full >= self.opts.full_scan_interval:
                self._full_scan()
                self._last_full = now
        else:
            full = now - self._last_full >= self.opts.full_scan_interval
            self._full_scan(skip_unchanged_dirs=not full)
            if full:
                self._last_full = now
        if self.racy:
            self._check_racy()
        self.last_scan = now_iso()
        ready = self._ready()
        if ready and not self.stop.is_set():
            self._read_ready(ready)
        if not self.stop.is_set():
            self.stop.wait(self.opts.poll_interval)


def stderr_log(prefix: str = "edge-classify") -> Callable[[str], None]:
    """A logger that writes one line per message to stderr, names escaped so a line stays a line."""
    from .outputs import escape_text

    def log(msg: str) -> None:
        try:
            sys.stderr.write(f"{prefix}: {escape_text(msg)}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    return log
