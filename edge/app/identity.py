"""How the watcher knows a file: its identity (size, mtime, inode, ctime) and, when needed, its content hash.

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
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

HASH_WHOLE_LIMIT = 8 << 20  # files up to 8 MiB are hashed whole; larger: first and last MiB plus the size


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
