"""The watcher's inotify side (watchdog): events feed the set of paths to look at again; an overflow or a
lost observer triggers a full sweep (`InotifyEvents`, a part of edge.app.watcher.Watcher). Imported only
in --watch mode; watchdog itself only with inotify."""

from __future__ import annotations

import os

from .listing import wanted


# What an event says about a file's content. "opened" and "closed_no_write" (our own reads among them)
# and "deleted" say nothing about it; the others may come with new content under unchanged stamps.
_CONTENT_EVENTS = frozenset({"created", "modified", "moved", "closed", "attrib"})
_RESCAN, _LOST = "\0rescan", "\0lost"


class InotifyEvents:
    """The Watcher's event side: `_start_observer`, `_ensure_observer`, `_stop_observer`, `_drain_events`."""

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
