"""Lossless unattended ingest: per-file handling that never ends a run, the restart-safe journal, the watcher.

Content identity. A file is known by its path relative to the watched folder and its content
identity: (size, mtime_ns), plus (inode, ctime_ns) and a SHA-256 of the content as the "cheap
hash when needed". `cp -p` or `touch -r` can give new content an old mtime, but never an old
ctime; when size and mtime match a journaled result but inode or ctime do not, the content
hash decides (equal: same content, nothing to do; different: classify again).

Journal (JSON lines, append-only, rewritten compactly at each start). Lines:

    {"t": "section", "v": 1, "folder": ABS, "model": {file, sha256, variant, threshold, leukedge},
     "output": ABS or null, "format": fmt, "started": ISO}
    {"t": "file", "p": REL, "s": size, "m": mtime_ns, "i": inode, "c": ctime_ns, "h": sha256[:16] or null,
     "st": "ok" | "error" | "internal" | "existing", "o": offset, "n": bytes, "k": crc32}

A "file" line belongs to the section above it. With a results FILE, the journal line is written
BEFORE the row, naming the row's offset, length and CRC-32; at the next start every journaled
row is checked against the output file: a record whose row is not there (crash between the two
writes, full disk) is dropped, so its file is classified again, and bytes after the last
verified row (rows whose journal line a power loss took) are cut, so nothing is duplicated.
With results on stdout (`--state FILE`) the line is written AFTER the row: a crash between the
two can repeat that one row, never lose it. "existing" marks a file that was there at a first
start without --include-existing. When the hash shows unchanged content under a new inode/ctime,
the previous record is repeated with the new identity (same status and row).

Heartbeat: a small JSON file rewritten (atomically) every few seconds: time, pid, state
(watching | folder-missing | output-error | stopped), last scan, counts (classified, failed,
internal, rereads, pending) and the model, so monitoring can tell a dead or stuck watcher
(old `time`) from a quiet microscope (fresh `time`, growing `last_scan`, no new counts).
"""

from __future__ import annotations

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

from .files import is_ignored_name, write_text_atomic
from .handling import Counts, Emitter, classify_file, one_line  # noqa: F401 - re-exported (see edge.handling)
from .outputs import STATUS_ERROR, STATUS_INTERNAL, STATUS_OK, ModelInfo, OutputError, now_iso
from .preprocess import IMAGE_EXTENSIONS

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

    def to_json(self) -> dict:
        d = {"t": "file", "p": self.path, "s": self.size, "m": self.mtime_ns, "i": self.ino, "c": self.ctime_ns,
             "h": self.hash, "st": self.status}
        if self.out is not None:
            d.update(o=self.out, n=self.n, k=self.crc)
        return d

    @classmethod
    def from_json(cls, d: dict, section: int) -> "Record":
        return cls(str(d["p"]), int(d["s"]), int(d["m"]), int(d.get("i", 0)), int(d.get("c", 0)), d.get("h"),
                   str(d["st"]), d.get("o"), d.get("n"), d.get("k"), section)

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
                d = json.loads(raw)
            except ValueError:
                continue  # a half line from a crash
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
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def release_lock(self) -> None:
        fh = getattr(self, "_lock_fh", None)
        if fh is not None:
            fh.close()
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
        self.first_start = not ours
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
        keep, dropped, last_end = [], 0, None
        for r in records:
            if r.section in same_out and r.out is not None:
                data = sink.read_at(r.out, r.n or 0)
                if len(data) != r.n or zlib.crc32(data) != r.crc:
                    dropped += 1
                    continue
                last_end = max(last_end or 0, r.out + r.n)
            keep.append(r)
        if dropped:
            self.notes.append(f"{dropped} journaled results were not in {sink.path} (crash or full disk): "
                              "those files are classified again")
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
            write_text_atomic(self.path, "\n".join(out_lines) + "\n")
            self._fh = open(self.path, "ab")
        except OSError as exc:
            raise JournalError(exc.errno, f"{self.path}: cannot write journal: {exc.strerror or exc}") from None

    # writing ----------------------------------------------------------------------------

    def append(self, rec: Record) -> None:
        """Append one record, flushed; fsynced on the timer. Raises JournalError (the record is then not kept)."""
        data = (json.dumps(rec.to_json()) + "\n").encode()
        start = self._fh.tell()
        try:
            self._fh.write(data)
            self._fh.flush()
            if self.fsync_interval <= 0 or time.monotonic() - self._last_sync >= self.fsync_interval:
                os.fsync(self._fh.fileno())
                self._last_sync = time.monotonic()
        except OSError as exc:
            try:
                self._fh.seek(start)
                self._fh.truncate(start)
            except (OSError, ValueError):
                pass
            raise JournalError(exc.errno, f"cannot write journal {self.path}: {exc.strerror or exc}") from None
        self.known[rec.path] = rec

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
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


_IMAGE_EXTS = tuple(IMAGE_EXTENSIONS)


def wanted(name: str) -> bool:
    """The one rule for which names are input images: an image extension (edge.preprocess) and not a
    temp/metadata file (edge.files.is_ignored_name). `name` is a file name or path."""
    return name.lower().endswith(_IMAGE_EXTS) and not is_ignored_name(name)


class Watcher:
    """Classify every image that settles in `folder`, forever, losslessly; `run()` until `stop` is set.

    clf: a Classifier; emitter: Emitter (rows + journal); log: one-line stderr messages.
    """

    def __init__(self, clf, folder: str | os.PathLike, emitter: Emitter, model: ModelInfo, opts: WatchOptions,
                 log: Callable[[str], None], stop: threading.Event | None = None, pool=None):
        self.clf = clf
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
        self.pending: dict[str, _Pending] = {}
        self.dir_mtimes: dict[str, int] = {}
        self.subdirs: dict[str, list[str]] = {}
        self.state = "starting"
        self.last_scan: str | None = None
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._observer = None
        self._last_full = 0.0
        self._last_heartbeat = 0.0
        self._problem: str | None = None

    # discovery ----------------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.folder)

    def _list(self, skip_unchanged_dirs: bool) -> list[tuple[str, os.stat_result]]:
        """(rel path, stat) of every wanted file; in poll mode, folders whose mtime is unchanged
        and hold nothing pending are not listed. Raises FileNotFoundError if the folder is gone."""
        found = []
        hot_dirs = {os.path.dirname(r) for r in self.pending}
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            full = os.path.join(self.folder, rel_dir) if rel_dir else str(self.folder)
            try:
                dst = os.stat(full)
            except FileNotFoundError:
                if rel_dir == "":
                    raise
                continue
            if skip_unchanged_dirs and self.dir_mtimes.get(rel_dir) == dst.st_mtime_ns and rel_dir not in hot_dirs:
                # nothing created, renamed or deleted here; still descend into known subfolders
                stack.extend(self.subdirs.get(rel_dir, ()))
                continue
            self.dir_mtimes[rel_dir] = dst.st_mtime_ns
            children = self.subdirs[rel_dir] = []
            try:
                entries = list(os.scandir(full))
            except (FileNotFoundError, NotADirectoryError):
                if rel_dir == "":
                    raise FileNotFoundError(full)
                continue
            except PermissionError:
                continue
            for e in entries:
                rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                try:
                    if e.is_dir(follow_symlinks=False):
                        if self.opts.recursive:
                            stack.append(rel)
                            children.append(rel)
                        continue
                    if not wanted(e.name):
                        continue
                    found.append((rel, e.stat()))
                except OSError:
                    continue
        return found

    def _consider(self, rel: str, st: os.stat_result | None = None) -> None:
        """Decide whether a file needs reading (new or changed content) and put it in `pending`."""
        if st is None:
            try:
                st = os.stat(os.path.join(self.folder, rel))
            except OSError:
                self.pending.pop(rel, None)
                return
        ident = Identity.of(st)
        if rel in self.pending:
            return  # the settle check follows it
        rec = self.known.get(rel)
        if rec is not None:
            if (rec.size, rec.mtime_ns) == ident.key:
                if rec.hash is None or (rec.ino, rec.ctime_ns) == (ident.ino, ident.ctime_ns):
                    return
                digest = content_hash(os.path.join(self.folder, rel))  # same size and mtime, other inode/ctime: did the content change?
                if digest == rec.hash:  # same content under a new inode/ctime: remember it, nothing to redo
                    same = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns, digest, rec.status,
                                  rec.out, rec.n, rec.crc)
                    if self.journal is not None:
                        try:
                            self.journal.append(same)
                        except JournalError:
                            pass
                    else:
                        self.known[rel] = same
                    return
        self.pending[rel] = _Pending(ident, time.monotonic())

    def _full_scan(self, skip_unchanged_dirs: bool = False) -> None:
        for rel, st in self._list(skip_unchanged_dirs):
            self._consider(rel, st)
        self.last_scan = now_iso()

    # inotify -------------------------------------------------------------------------------

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.is_directory:
                    if event.event_type in ("created", "moved"):
                        with watcher._dirty_lock:
                            watcher._dirty.add("\0rescan")  # a folder moved in: its files came with it
                    return
                for p in (getattr(event, "dest_path", None), event.src_path):
                    if p:
                        p = os.fsdecode(p)
                        if wanted(os.path.basename(p)):
                            with watcher._dirty_lock:
                                watcher._dirty.add(p)

        obs = Observer()
        obs.schedule(Handler(), str(self.folder), recursive=self.opts.recursive)
        obs.daemon = True
        obs.start()
        self._observer = obs

    def _ensure_observer(self) -> None:
        """Start inotify; if the system refuses (watch/instance limits, no inotify), poll instead."""
        try:
            self._start_observer()
        except OSError as exc:
            self.log(f"inotify unavailable for {self.folder} ({exc.strerror or exc}); polling instead "
                     "(raise fs.inotify.max_user_watches, or pass --poll)")
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
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        if "\0rescan" in dirty:
            return True
        for p in dirty:
            rel = self._rel(p)
            if rel.startswith(".."):
                continue
            self._consider(rel)
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
        digest = content_hash(full)
        row = classify_file(clf, full, self.model, reread=reread, strict_quality=self.opts.strict_quality)
        return rel, ident, digest, row, stat_identity(full)

    def _read_ready(self, ready: list[tuple[str, Identity]]) -> None:
        items = []
        for rel, ident in ready:
            prev = self.known.get(rel)
            items.append((rel, ident, prev is not None and prev.has_result))
        if self.pool is not None and len(items) > 1:
            results = self.pool.map(self._compute, items)
        else:
            results = (self._compute(self.clf, it) for it in items)
        for res in results:
            self._commit(*res)
            if self.stop.is_set():
                break

    def _commit(self, rel: str, ident: Identity, digest: str | None, row: dict, after: Identity | None) -> None:
        full = os.path.join(self.folder, rel)
        if after is None:
            self.pending.pop(rel, None)
            return  # deleted while being read: no result for content that no longer exists
        if after.key != ident.key:
            self.pending[rel] = _Pending(after, time.monotonic())  # the writer came back; read it when it settles
            return
        self.emitter.emit(row, rel, ident, digest)  # raises OutputError / JournalError: stays pending
        self.pending.pop(rel, None)
        if self.journal is None:
            self.known[rel] = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns, digest, row["status"])
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
        """First listing: with a journal, what arrived while down; on a first start without
        --include-existing, what exists is recorded as existing and not classified."""
        first = self.journal is None or self.journal.first_start
        listing = self._list(False)
        self.last_scan = now_iso()
        if first and not self.opts.include_existing:
            for rel, st in listing:
                ident = Identity.of(st)
                rec = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns, None, "existing")
                if self.journal is not None:
                    self.journal.append(rec)
                else:
                    self.known[rel] = rec
        else:
            for rel, st in listing:
                self._consider(rel, st)
        if self.opts.mode == "inotify":
            self._ensure_observer()
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
                    self.dir_mtimes.clear()
                    self.subdirs.clear()
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
