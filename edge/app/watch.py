"""edge-classify --watch: the watcher's wiring (results file, journal, heartbeat, summary, frames, signals).

The watcher itself is edge.app.watcher; it is imported here, when a run watches, never for a batch.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .console import log
from .errors import ModelUnusable, OutputProblem, UsageError
from .places import append_problem, default_heartbeat, default_journal


@dataclass
class RunSetup:
    """What `classify` decided before the work that the batch and the watcher share.

    workers: interpreters (1: one); decode: edge.preprocess.DecodeOptions or None; summary: edge.app.summary.
    Summary or None; baseline: the watch folder's listing taken before the model loaded
    (edge.app.listing.list_folder); frames: edge.app.frames.FrameOptions for --fields --watch, else None."""

    workers: int = 1
    decode: object = None
    summary: object = None
    baseline: list | None = None
    frames: object = None


def watch_frames(clf, emitter, summary, frames, output, fmt):
    """Watch mode's frame wiring (--fields): the per-file classifier that gives a frame's block of rows and
    the per-sample summary fed from those blocks (rebuilt from the results file after a restart).
    Returns (classify callable or None, FrameCounts or None); exit 2 when the card has no `cells`."""
    if frames is None:
        return None, None
    from ..errors import LeukedgeError
    from .frames import FrameCounts, classify_frame_file, overlay_path, rebuild_summary, summary_observer

    try:
        from ..fields import cells_spec

        cells_spec(clf.card, None)
    except ImportError as exc:
        raise UsageError(f"--fields needs the frame extra: pip install 'leukedge[fields]' ({exc})")
    except LeukedgeError as exc:
        raise UsageError(str(exc))
    if frames.overlays:
        Path(frames.overlays).mkdir(parents=True, exist_ok=True)
    counts = FrameCounts()
    if summary is not None:
        summary.attach(emitter, clf, every_seconds=5.0)
        emitter.observers.pop()  # frames are recorded cell by cell from their blocks, below
        if output:
            rebuild_summary(summary, output, fmt, clf.card.positive_label, frames.include_flagged)
    observe = summary_observer(summary, clf.card.positive_label, frames.include_flagged, counts)

    def observe_and_write(block):
        observe(block)
        if summary is not None:
            summary.write_if_due()

    emitter.observers.append(observe_and_write)
    model_fields = {"variant": clf.card.variant, "model_sha256": clf.card.model_sha256[:16]}

    def classify_one(worker_clf, path, model, reread=False, strict_quality=False):
        return classify_frame_file(worker_clf, path, model_fields, frames, reread, overlay_path(frames.overlays, path))

    return classify_one, counts


def open_results(output: str | None, opts, frames) -> object:
    """The watch results sink: the file appended to (a crash's half-written last line cut), or stdout."""
    from .sinks import AppendFileSink, StreamSink

    if not output:
        return StreamSink(sys.stdout.buffer)
    try:
        sink = AppendFileSink(output, opts.fsync_interval)
    except OSError as exc:
        raise OutputProblem(f"{output}: cannot write results there: {exc.strerror or exc}") from None
    problem = append_problem(output, sink.first_line(), opts.fmt, frames is not None)
    if problem:
        sink.close()
        raise UsageError(problem)
    if sink.repaired:
        log(f"{output}: cut a half-written last line ({sink.repaired} bytes) left by a crash")
    return sink


def open_journal(journal_path: str | None, minfo, output: str | None, opts, sink):
    """The journal (edge.app.journal) beside the results, or None when results go to stdout without --state."""
    from .journal import Journal, JournalError

    if not journal_path:
        if not opts.quiet:
            log("results go to stdout and no --state FILE is given: a restart will not resume")
        return None
    try:
        journal = Journal(journal_path, opts.watch_dir, minfo, output, opts.fmt, opts.reclassify,
                          opts.fsync_interval).open(sink if output else None)
    except JournalError as exc:
        raise UsageError(str(exc.strerror or exc)) from None
    except OSError as exc:
        raise UsageError(f"{journal_path}: cannot use journal: {exc.strerror or exc}") from None
    for note in journal.notes:
        log(note)
    return journal


def _emitter(clf, minfo, opts, setup: RunSetup, output, sink, journal):
    """(Emitter, Counts, the per-file classify callable or None, FrameCounts or None) for the watcher."""
    from .handling import Counts, Emitter
    from .rows import RowWriter
    from .sinks import OutputError

    counts = Counts()
    if setup.frames is not None:
        from .frames import FrameRowWriter

        writer = FrameRowWriter(opts.fmt, sink)
    else:
        writer = RowWriter(opts.fmt, sink, minfo, header_each_run=bool(output))
    try:
        writer.ensure_header()
    except OutputError:
        pass  # a full disk at start: the header goes with the first row that can be written
    emitter = Emitter(writer, journal, counts)
    summary = setup.summary
    classify_one, frame_counts = watch_frames(clf, emitter, summary, setup.frames, output, opts.fmt)
    if summary is not None and setup.frames is None:
        if output and opts.fmt in ("json", "csv") and Path(output).exists():
            summary.rebuild(output, opts.fmt)  # after a restart: what was already classified (a re-read counts once)
        summary.attach(emitter, clf, every_seconds=5.0)
    return emitter, counts, classify_one, frame_counts


def watch(clf, minfo, opts, setup: RunSetup) -> tuple[bool, str | None]:
    """Run the watcher on `opts.watch_dir` (edge.app.options.ClassifyOptions) until SIGINT, SIGTERM or SIGHUP;
    returns (any input's latest row failed, the signal's name). With setup.frames (--fields) each settled file
    is a frame: a block of cell rows, journalled as one; else one row per file."""
    from .batch import make_pool
    from .loading import self_test_passes
    from .watcher import WatchOptions

    if not self_test_passes(clf, required=False):
        raise ModelUnusable(None)  # a model that fails its self-test here is not started (systemd: failed)
    output = opts.output if opts.output != "-" else None  # "-": stdout, as in a batch
    sink = open_results(output, opts, setup.frames)
    journal_path = default_journal(output, opts.state_file)
    journal = open_journal(journal_path, minfo, output, opts, sink)
    emitter, counts, classify_one, frame_counts = _emitter(clf, minfo, opts, setup, output, sink, journal)
    settings = WatchOptions(recursive=opts.recursive, settle=opts.settle, poll_interval=opts.poll_interval,
                            mode="poll" if opts.poll_mode else "inotify", full_scan_interval=opts.full_scan_interval,
                            include_existing=opts.include_existing, strict_quality=opts.strict_quality,
                            heartbeat=default_heartbeat(journal_path, opts.heartbeat_file),
                            empty_timeout=opts.empty_timeout)
    pool = make_pool(clf, setup.workers, opts.threads, setup.decode) if setup.workers > 1 else None
    ended_by = _run_watcher(clf, minfo, opts, setup, emitter, settings, pool, classify_one, sink, journal)
    by = f" by {ended_by}" if ended_by else ""
    log(f"stopped{by}; {counts.summary()}" + (f"; {frame_counts.summary()}" if frame_counts is not None else ""))
    if setup.summary is not None:
        setup.summary.finish(opts.quiet)
    return counts.any_failed, ended_by


def _run_watcher(clf, minfo, opts, setup, emitter, settings, pool, classify_one, sink, journal) -> str | None:
    """Start the watcher and run it until a signal (its name is returned); then close what it wrote to."""
    from . import watcher as watching  # looked up now: tests record the Watcher a run makes

    stop = threading.Event()
    ended_by: list[str] = []

    def _stop(signum, frame):
        ended_by.append(signal.Signals(signum).name)
        stop.set()

    ending = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old_handlers = {sig: signal.signal(sig, _stop) for sig in ending}
    how = watching.Classifying(clf, classify_one, pool)
    watcher = watching.Watcher(how, opts.watch_dir, emitter, minfo, settings, log, stop, baseline=setup.baseline)
    try:
        try:
            watcher.start()  # lists what is there first, so anything written after the next line is new
            log(f"watching {opts.watch_dir} ({'polling' if opts.poll_mode else 'inotify'}; Ctrl-C to stop)")
            watcher.run(started=True)
        except FileNotFoundError:
            raise UsageError(f"{opts.watch_dir}: watch folder vanished before the first scan") from None
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if watcher.pool is not None:
            watcher.pool.close()
        sink.close()
        if journal is not None:
            journal.close()
    return ended_by[0] if ended_by else None
