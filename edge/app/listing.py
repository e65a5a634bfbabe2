"""How the watcher lists a folder: which names are input images, the listing taken before the model loads,
and the per-folder state that lets a sweep skip folders whose mtime says nothing changed (`FolderListing`,
a part of edge.app.watcher.Watcher)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..files import SKIP_NOT_FILE, is_image_name, skip_reason
from .identity import timestamp_granularity_ns


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


class FolderListing:
    """The Watcher's discovery: `_list` walks the folder (skipping unchanged folders when asked), `_tell_skip`
    reports once each file that is not classified. Uses the Watcher's folder, opts, log and folder state."""

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
