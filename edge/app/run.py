"""`edge-classify`'s run: `classify(opts)` checks the options and every place it writes, loads the model,
then classifies a batch (edge.app.batch) and/or watches a folder (edge.app.watch); it returns the exit code
and raises the typed errors of edge.app.errors, which edge.app.cli turns into exit codes.

Nothing the command writes may be one of its inputs (edge.app.places), and one process at a time writes a
results file. Rows: edge.app.rows (one versioned field list). Watch mode and its journal: edge.app.watcher,
edge.app.journal. Options: edge.app.options / edge.app.parser.
"""

from __future__ import annotations

from pathlib import Path

from . import loading
from .console import log
from .errors import EXIT_OK, EXIT_SIGHUP, EXIT_SOME_FAILED, ModelUnusable, UsageError
from .inputs import expand_inputs
from .places import (HELD_LOCKS, check_watch_output, check_writes, default_heartbeat, default_journal, lock_results,
                     open_batch_sink)
from .summary import summary_or_fail
from .watch import RunSetup


def classify(opts) -> int:
    """Run `edge-classify` with parsed options (edge.app.options.ClassifyOptions); returns the exit code."""
    model = _check_usage(opts)
    decode = loading.decode_options(opts.bit_depth, opts.page, opts.max_pixels, opts.value_range)
    skipped: list[tuple[str, str, str]] = []
    files, input_errors = expand_inputs(opts.inputs, opts.recursive, skipped) if opts.inputs else ([], [])
    _check_places(opts, files, model)
    setup = RunSetup(decode=decode, summary=summary_or_fail(opts.summary_by, opts.summary_out))

    # output location first: no work is done for results that could not be kept
    lock = lock_results(opts.output)
    if lock is not None:
        HELD_LOCKS.append(lock)  # held until the entry point returns (or the process ends)
    batch_sink = open_batch_sink(opts.output) if opts.inputs else None
    try:
        model, clf = _prepare(opts, model, files, setup)
    except BaseException:  # a usage or model error, a signal: nothing was classified, so no results file
        if batch_sink is not None and batch_sink.path is not None:
            batch_sink.close()
            Path(batch_sink.path).unlink(missing_ok=True)
        raise
    from .rows import ModelInfo

    minfo = ModelInfo.from_classifier(clf)
    if not opts.quiet:
        _say_model(model, clf, minfo, setup.workers, opts.threads)
    if opts.self_test_flag and not loading.self_test_passes(clf, required=True):
        raise ModelUnusable(None)  # the model does not reproduce the workstation's outputs here: a model error
    if opts.self_test_flag and not opts.inputs and not opts.watch_dir and setup.summary is None:
        return EXIT_OK

    failed = False
    if opts.inputs:
        from .batch import run_inputs

        failed = run_inputs(clf, minfo, opts, setup, files, input_errors, skipped, batch_sink)
    if opts.watch_dir:
        from .watch import watch

        if opts.fields:
            from .frames import FrameOptions

            setup.frames = FrameOptions(opts.fmt, opts.um_per_px,
                                        opts.overlays or (f"{opts.output}.overlays" if opts.output else None),
                                        opts.crops, opts.include_flagged)
        watch_failed, ended_by = watch(clf, minfo, opts, setup)
        if ended_by == "SIGHUP":
            return EXIT_SIGHUP  # not asked to stop: its terminal went away (rows, journal, heartbeat kept)
        failed = watch_failed or failed
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _check_usage(opts) -> str | None:
    """The options that cannot work together, each one line; returns the model (None: --choice names it)."""
    if opts.choice:
        model = None  # the choice file names the model (picked below, for the run's layout)
    elif not opts.model:
        raise UsageError("no model given: pass --model FILE.tflite (or --choice FILE) or set LEUKEDGE_MODEL")
    else:
        model = opts.model
    if not opts.inputs and not opts.watch_dir and not opts.self_test_flag:
        raise UsageError("no inputs: give image files, folders or patterns, or --watch DIR")
    if opts.watch_dir and not Path(opts.watch_dir).is_dir():
        raise UsageError(f"{opts.watch_dir}: watch folder does not exist")
    if opts.output and opts.watch_dir and opts.inputs:
        raise UsageError("give either INPUTS or --watch with --output, not both")
    return model


def _check_places(opts, files: list[str], model: str | None) -> None:
    """What the run writes, checked against what it reads, before anything is written or loaded."""
    journal_path = default_journal(opts.output, opts.state_file) if opts.watch_dir else None
    writes = [(opt, path) for opt, path in (
        ("--output", opts.output if opts.output != "-" else None), ("--summary-out", opts.summary_out),
        ("--state" if opts.state_file else "the journal (beside --output)", journal_path),
        ("--heartbeat" if opts.heartbeat_file else "the heartbeat (beside the journal)",
         default_heartbeat(journal_path, opts.heartbeat_file) if opts.watch_dir else None)) if path]
    check_writes(writes, files, model, opts.require_signature, opts.watch_dir, opts.recursive)


def _prepare(opts, model: str | None, files: list[str], setup: RunSetup):
    """Before any row: the watch output checked and the folder listed, the layout chosen (setup.workers),
    the engine picked and the model loaded. Returns (model path, classifier)."""
    if opts.watch_dir and not opts.inputs:
        check_watch_output(opts.output, opts.fmt, opts.fields)
    if opts.watch_dir:
        # listed before the model loads: at a first start only this is "already there"; a cell
        # written while the model loads and tests itself is new (see edge.app.watcher.Watcher.start)
        from .listing import list_folder

        try:
            setup.baseline = list_folder(opts.watch_dir, opts.recursive)
        except OSError as exc:
            raise UsageError(f"{opts.watch_dir}: cannot list the watch folder: {exc.strerror or exc}") from None
    # layout: throughput (one single-threaded interpreter per core) for folders and watch backlogs,
    # latency (one interpreter on every core) for a single image
    workers = opts.workers
    if workers is None:
        if opts.watch_dir or len(files) > 1:
            from ..throughput import default_workers

            workers = default_workers()
        else:
            workers = 1
    setup.workers = 1 if opts.fields else workers  # a frame's cells are classified in turn by one interpreter
    engine = opts.engine
    if opts.choice or engine != "litert":
        model, engine = loading.pick_engine(model, engine, opts.choice, "folder" if setup.workers > 1 else "single",
                                            opts.require_signature, opts.quiet)
    threads = opts.threads if (opts.threads or setup.workers == 1) else 1
    clf = loading.load(model, threads, opts.threshold, setup.decode, opts.require_signature, opts.quiet,
                       engine=None if engine == "auto" else engine)
    return model, clf


def _say_model(model: str, clf, minfo, workers: int, threads: int | None) -> None:
    """The one line naming the model, its runtime and threshold, and the runtime's own notes."""
    log(f"{Path(model).name} ({clf.card.variant}, sha256 {minfo.model_sha256}) on {clf.runtime.name} "
        f"{clf.runtime.version}" + (f" ({clf.runtime.detail})" if clf.runtime.detail else "")
        + f", threshold {clf.threshold:.4f}"
        + (f", {workers} workers x {threads or 1} thread(s)" if workers > 1 else ""))
    for note in getattr(clf.backend, "notes", ()):
        log(note)  # e.g. ONNX Runtime: "building the TensorRT engine (first start)", "engine cache off"
