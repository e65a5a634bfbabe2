"""An edge-classify batch: INPUTS classified in input order, one row each (or a frame's rows with --fields),
on one interpreter or on the throughput layout's workers (edge.throughput.ClassifierPool)."""

from __future__ import annotations

import sys

from . import console
from .console import log
from .errors import EXIT_SIGINT, EXIT_SOME_FAILED, Exit, Interrupted, OutputProblem, UsageError


def run_inputs(clf, minfo, opts, setup, files, input_errors, skipped, sink) -> bool:
    """Classify the batch's `files` (edge.app.inputs.expand_inputs gave them, `input_errors` and `skipped`)
    into `sink` (edge.app.places.open_batch_sink), then commit it; returns whether any input failed.
    A full disk is an OutputProblem naming the temporary file that keeps every finished row; a signal is
    Interrupted naming it too; a closed stdout pipe is BrokenPipeError."""
    from .handling import Counts, Emitter
    from .inputs import report_skips
    from .rows import RowWriter
    from .sinks import OutputError

    counts = Counts()
    writer = RowWriter(opts.fmt, sink, minfo)
    emitter = Emitter(writer, None, counts)
    summary = setup.summary
    if summary is not None:
        summary.attach(emitter, clf)
    show_bar = len(files) > 1 and sys.stderr.isatty() and not opts.quiet
    report_skips(skipped, counts)
    try:
        if opts.fields:
            frame_counts = run_frames_batch(clf, files, input_errors, sink, opts, summary)
            counts.failing.update(["frames"] if frame_counts.failed or input_errors else [])
        else:
            run_batch(clf, files, input_errors, emitter, minfo, opts.strict_quality, show_bar,
                      workers=setup.workers, threads=opts.threads, decode=setup.decode)
            writer.ensure_header()  # a batch without rows still gets its CSV column names / text header
        if sink.path is not None:  # -o FILE (not stdout): rename the finished file into place
            sink.commit()
        else:
            sink.close()
    except OutputError as exc:
        sink.close()
        where = f"; every finished row is in {sink.path}" if sink.path else ""
        raise OutputProblem(f"{exc.strerror or exc}{where}") from None
    except BrokenPipeError:
        raise Exit(EXIT_SOME_FAILED) from None
    except KeyboardInterrupt as exc:
        if sink.path is not None:
            sink.close()
            if isinstance(exc, Interrupted):
                raise Interrupted(exc.name, exc.code, sink.path) from None
            raise Interrupted("SIGINT", EXIT_SIGINT, sink.path) from None
        raise
    if not opts.fields and not opts.quiet and (len(files) > 1 or counts.any_failed or input_errors or counts.skipped):
        log(counts.summary())
    if summary is not None and not opts.watch_dir:
        summary.finish(opts.quiet)
        if summary.failed_write:
            raise OutputProblem(f"{opts.summary_out}: the per-sample summary could not be written (every row was)")
    return counts.any_failed


def run_frames_batch(clf, files, input_errors, sink, opts, summary):
    """The --fields batch (edge.app.frames): frame rows to `sink`; a card without `cells` or a missing
    leukedge[fields] is one line and exit 2. Returns the FrameCounts."""
    from ..errors import LeukedgeError
    from .frames import FrameOptions, render, run_frames

    for path, problem, _position in input_errors:
        sink.write(render({"frame": path, "error": problem}, opts.fmt, False))
    frames = FrameOptions(opts.fmt, opts.um_per_px, opts.overlays, opts.crops, opts.include_flagged)
    try:
        counts = run_frames(clf, files, sink, frames, summary, log=log)
    except ImportError as exc:
        raise UsageError(f"--fields needs the frame extra: pip install 'leukedge[fields]' ({exc})")
    except LeukedgeError as exc:
        raise UsageError(str(exc))
    if not opts.quiet:
        log(counts.summary())
    return counts


def make_pool(clf, workers: int, threads: int | None, decode):
    """The throughput layout's workers (edge.throughput.ClassifierPool), or None with one stderr line
    when a further interpreter cannot be made (memory, a runtime failure): the run goes on with the
    one already loaded, slower, rather than ending in a traceback."""
    from ..errors import LeukedgeError
    from ..throughput import ClassifierPool

    try:
        return ClassifierPool(clf, workers, threads=threads, decode=decode)
    except MemoryError:
        problem = "not enough memory"
    except (LeukedgeError, RuntimeError, ValueError, SystemError, OSError) as exc:
        problem = " ".join(str(exc).split())[:300] or type(exc).__name__
    log(f"cannot create {workers} workers ({problem}); going on with one worker "
         "(see the README for the memory each worker needs)")
    return None


def run_batch(clf, files: list[str], input_errors, emitter, model, strict_quality: bool, show_bar: bool,
              workers: int = 1, threads: int | None = None, decode=None) -> None:
    """Classify `files`, one row each, in input order; raises OutputError if rows cannot be written.

    input_errors: (input, problem, position) from `expand_inputs`: each becomes an InputError row
    before the files[position] row (the order the inputs were given in). workers > 1: the
    throughput layout (edge.throughput), `clf` is worker 0.
    """
    from .handling import classify_file
    from .rows import make_row

    pending_errors = sorted(input_errors, key=lambda e: e[2])

    def emit_errors_before(position: int) -> None:
        while pending_errors and pending_errors[0][2] <= position:
            raw, problem, _ = pending_errors.pop(0)
            log(f"{raw}: {problem}")
            emitter.emit(make_row(raw, model, error=problem, error_type="InputError"))

    pool = make_pool(clf, workers, threads, decode) if workers > 1 and len(files) > 1 else None
    done = 0  # rows handed out so far: if a worker thread cannot start, one worker goes on from here

    def rows_from(start: int):
        nonlocal pool
        if pool is not None:
            try:
                yield from pool.map(lambda c, f: classify_file(c, f, model, strict_quality=strict_quality),
                                    files[start:])
                return
            except RuntimeError as exc:  # "can't start new thread": memory or a thread limit
                if "thread" not in str(exc):
                    raise
                log(f"cannot start a worker thread ({exc}); going on with one worker")
                broken, pool = pool, None
                broken.close()
        for f in files[done:]:
            yield classify_file(clf, f, model, strict_quality=strict_quality)

    rows = rows_from(0)
    bar = None
    if show_bar:
        import click  # only for the bar: a single image or a pipe never pays for importing click

        bar = click.progressbar(length=len(files), label="classifying", file=sys.stderr)
        console.bar_on_screen = True
    try:
        for i, row in enumerate(rows):
            done = i + 1
            emit_errors_before(i)
            if row["status"] != "ok":
                log(f"{row['path']}: {row['error']}")
            elif row.get("warning"):
                log(f"{row['path']}: warning: {row['warning']} (classified; --strict-quality refuses such images)")
            emitter.emit(row)
            if bar is not None:
                bar.update(1)
        emit_errors_before(len(files))
        if bar is not None:
            bar.render_finish()
    finally:
        console.bar_on_screen = False
        if pool is not None:
            pool.close()
