"""Where an edge-classify run writes, checked before any work: nothing it writes may be one of its inputs
(edge.files rules), one process at a time writes a results file (edge.files.WriterLock, held until the
entry point ends: `release_locks`), and a results file appended to holds rows of this run's kind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..files import is_image_name
from .errors import OutputProblem, UsageError

HELD_LOCKS: list = []  # results-file locks (edge.files.WriterLock) this run holds


def release_locks() -> None:
    while HELD_LOCKS:
        HELD_LOCKS.pop().release()


def append_problem(output: str, first: bytes, fmt: str, frames: bool) -> str | None:
    """Why rows of this run must not be appended to `output` (its first line `first`), or None: another
    --format, other CSV columns, or per-cell rows where frame rows go (--fields) and the other way round."""
    from .rows import check_append_target, detect_format

    if frames or detect_format(first) == fmt:
        from .frames import rows_layout

        layout = rows_layout(first, fmt)
        if layout is not None and layout != ("frames" if frames else "cells"):
            return (f"{output}: holds {'per-cell' if layout == 'cells' else 'frame (--fields)'} rows; this run writes "
                    f"{'frame' if frames else 'per-cell'} rows: choose another --output file")
        if frames:
            found = detect_format(first)
            return None if found in (None, fmt) else (f"{output}: holds {found} rows, this run writes {fmt} "
                                                      "(--format); use another --output file")
    return check_append_target(output, first, fmt)  # another --format must not mix formats


def output_target(output: str) -> Path:
    """The file -o names (a symlink's target: that is what gets written); a folder, device, FIFO or socket
    is a usage error in one line. The file need not exist."""
    target = Path(os.path.realpath(output))
    if target.is_dir():
        raise UsageError(f"{output}: --output is a folder; give a file name")
    if target.exists() and not target.is_file():
        raise UsageError(f"{output}: not a regular file (a device, FIFO or socket); results go to a file — "
              "use stdout (-o -) for pipes")
    return target


def default_journal(output: str | None, state_file: str | None) -> str | None:
    """The journal a watch run keeps: --state, else `<output>.journal` beside a results file."""
    if state_file:
        return state_file
    return str(Path(output).with_name(Path(output).name + ".journal")) if output and output != "-" else None


def default_heartbeat(journal_path: str | None, heartbeat_file: str | None) -> str | None:
    """The heartbeat file: --heartbeat, else beside the journal (`x.journal` -> `x.heartbeat`)."""
    if heartbeat_file is not None or not journal_path:
        return heartbeat_file
    jp = Path(journal_path)
    return str(jp.with_suffix(".heartbeat") if jp.suffix == ".journal" else jp.with_name(jp.name + ".heartbeat"))


def same_file(a: str, b: str) -> bool:
    """Two names for one file: the same path once symlinks are resolved, or (existing) the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_writes(writes: list[tuple[str, str]], files: list[str], model: str | None,
                  require_signature: str | None, watch_dir: str | None, recursive: bool) -> None:
    """Refuse, in one line and before any work, a run that would write over one of its own inputs.

    writes: (option, path) of every file the run writes: -o, --summary-out, --state, --heartbeat and
    the journal and heartbeat placed beside them by default. Each is compared (resolved path, or
    inode for another name of an existing file) with every input: the image files (named, or found
    in input folders or by patterns), the model, its card, its signature and golden set, and the
    --require-signature key; a write into the watched folder under an image name is refused too
    (the watcher would read its own output), and so are two options naming one file.
    """
    reads: list[tuple[str, str]] = [(f, "an input image") for f in files]
    if model:
        reads.append((model, "the model"))
        from ..signature import signature_path_for

        card = Path(model).with_name(Path(model).name + ".json")
        try:
            from ..card import find_card_for

            card = find_card_for(model)
        except Exception:  # noqa: BLE001 - no card yet is the loader's error to report, after this check
            pass
        reads += [(str(card), "the model's card"), (str(signature_path_for(model)), "the model's signature"),
                  (str(Path(model).with_name(Path(model).name + ".golden.npz")), "the model's golden set")]
    if require_signature:
        reads.append((require_signature, "the --require-signature key"))
    watched = os.path.realpath(watch_dir) if watch_dir else None
    for i, (option, path) in enumerate(writes):
        for read, what in reads:
            if same_file(path, read):
                raise UsageError(f"{path}: {option} names {what} ({read}); it would be overwritten: choose another file "
                      "(nothing was classified)")
        if watched is not None and is_image_name(path):
            parent = os.path.dirname(os.path.realpath(path))
            if parent == watched or (recursive and parent.startswith(watched + os.sep)):
                raise UsageError(f"{path}: {option} names an image file in the watched folder {watch_dir}; the watcher "
                      "would read it as a cell: choose another file or folder")
        for other_option, other in writes[i + 1:]:
            if same_file(path, other):
                raise UsageError(f"{path}: {option} and {other_option} name the same file; give each its own")


def lock_results(output: str | None):
    """Hold the results file's lock (edge.files.WriterLock) for the whole run: a second batch or watcher
    writing the same file is refused in one line (exit 2) instead of silently replacing rows."""
    if not output or output == "-":
        return None
    from ..files import FileInUseError, WriterLock

    output_target(output)  # a folder, device or FIFO is refused first
    try:
        return WriterLock(output).acquire()
    except FileInUseError as exc:
        raise UsageError(str(exc))
    except OSError as exc:
        raise OutputProblem(f"{output}: cannot write results there: {exc.strerror or exc}")


def open_batch_sink(output: str | None):
    """Check the output location before any work; returns the sink (temp file beside -o, or stdout)."""
    from .sinks import StreamSink, TempFileSink

    if output is None or output == "-":
        return StreamSink(sys.stdout.buffer)
    target = output_target(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return TempFileSink(target)
    except OSError as exc:
        raise OutputProblem(f"{output}: cannot write results there: {exc.strerror or exc}")


def check_watch_output(output: str | None, fmt: str, frames: bool = False) -> None:
    """Before the model is loaded: a watch results file that cannot be appended to in `fmt` is a usage
    error (one line). The file itself is opened (and a crash's half-written line cut) later."""
    if not output or output == "-":
        return
    target = output_target(output)
    if not target.exists():
        return
    try:
        with open(target, "rb") as fh:
            problem = append_problem(output, fh.readline(), fmt, frames)
    except OSError as exc:
        problem = f"{output}: cannot read results there: {exc.strerror or exc}"
    if problem:
        raise UsageError(problem)
