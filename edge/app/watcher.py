"""The watcher: classify every image that settles in a folder, forever, losslessly (edge-classify --watch).

Rows and their journal records go through edge.app.handling.Emitter; the journal is edge.app.journal and
a file's identity edge.app.identity.

Heartbeat: a small JSON file rewritten (atomically) every few seconds: time, pid, state
(watching | folder-missing | output-error | stopped), last scan, counts (classified, failed,
internal, rereads, pending, skipped files by reason, inotify overflows) and the model, so monitoring can tell a dead or stuck watcher
(old `time`) from a quiet microscope (fresh `time`, growing `last_scan`, no new counts).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..files import write_text_atomic
from .events import InotifyEvents
from .handling import Counts, Emitter, classify_file, one_line
from .identity import Identity, content_hash, stat_identity, timestamp_granularity_ns
from .journal import JournalError, Record
from .listing import FolderListing, _DirState
from .rows import STATUS_OK, ModelInfo, now_iso
from .sinks import OutputError


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




@dataclass(frozen=True)
class Classifying:
    """How the watcher turns a settled file into rows.

    clf: a Classifier. classify: (clf, path, model, reread=, strict_quality=) -> the row (or a frame's block of
    rows, edge.app.frames.classify_frame_file) one settled file gives; None = `classify_file` (one cell).
    pool: an edge.throughput.ClassifierPool, on whose workers a backlog is classified (rows in order), or None.
    """

    clf: object
    classify: Callable | None = None
    pool: object | None = None


class Watcher(FolderListing, InotifyEvents):
    """Classify every image that settles in `folder`, forever, losslessly; `run()` until `stop` is set.

    how: a Classifying (the Classifier, the per-file function, the pool); emitter: Emitter (rows + journal);
    log: one-line stderr messages. baseline: the listing taken before the model was loaded (`list_folder`);
    at a first start without --include-existing only the files in it (as they were then) count as already there.
    """

    def __init__(self, how: Classifying, folder: str | os.PathLike, emitter: Emitter, model: ModelInfo,
                 opts: WatchOptions, log: Callable[[str], None], stop: threading.Event | None = None,
                 baseline: list[tuple[str, os.stat_result]] | None = None):
        self.clf = how.clf
        self.classify = how.classify or classify_file
        self.pool = how.pool  # edge.throughput.ClassifierPool: a backlog is classified on its workers, rows in order
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
