"""`edge-classify`: classify segmented blood-cell images on the device, in a batch or watching a folder.

Exit codes: 0 every input classified; 1 some inputs failed or hit an internal error (each is
reported as its own row; the others are still classified); 2 usage, model (a failed self-test
included) or output-location error (a batch with -o keeps every finished row in the temporary
file the message names); 129 / 130 / 143 a batch ended by SIGHUP (a closed terminal) / SIGINT
(Ctrl-C) / SIGTERM (rows kept, one line naming where); a watcher ended by SIGHUP stops as on
SIGTERM (its `stopped` line, last heartbeat, rows and journal kept) and exits 129.

Nothing the command writes may be one of its inputs (edge.files rules; `_check_writes`), and one
process at a time writes a results file (edge.files.WriterLock). Native libraries' stderr lines go
through edge.stderr (prefixed, whole). OpenBLAS (NumPy's) is held to one thread: its per-core
threads and buffers are what a small device runs out of first.

Rows: edge.outputs (one versioned field list). Watch mode and its journal: edge.ingest.
Options: the standard library's argparse (click costs a device ~10 ms at every start; it is
imported only to draw the progress bar of a multi-file batch on a terminal).
"""

from __future__ import annotations

import os

# Before NumPy is first imported (it is not imported at the top of this module): OpenBLAS otherwise
# starts a thread with its own buffers per core, which under a memory limit aborts inside native code.
# NumPy does no heavy linear algebra here; the user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402 - after the environment above
import errno  # noqa: E402
import re
import signal
import sys
import time
import threading
from pathlib import Path

from leukedge import __version__

from .files import IMAGE_SUFFIXES, SKIP_NOT_FILE, is_ignored_name, is_image_name, skip_reason

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM = 128 + 1, 128 + 2, 128 + 15  # the shell's convention: 128 + the signal
_GLOB_CHARS = set("*?[")
_PROG = "edge-classify"  # the name on every stderr line (`leukedge classify` through the workstation CLI)
_BAR_ON_SCREEN = False  # a progress bar is drawn on stderr: a log line clears it first


def _log(msg: str) -> None:
    """One stderr line per line of `msg` (each escaped, so no file name can forge a line)."""
    from .outputs import escape_text

    clear = "\r\x1b[2K" if _BAR_ON_SCREEN else ""  # the bar is redrawn below at its next update
    try:
        sys.stderr.write(clear + "".join(f"{_PROG}: {escape_text(line)}\n" for line in str(msg).split("\n")))
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone (a closed terminal): the run goes on, its rows still count
        pass


def expand_inputs(inputs: tuple[str, ...], recursive: bool,
                  skipped: list[tuple[str, str, str]] | None = None) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Turn files, folders and glob patterns into a file list plus (input, problem, position) errors.

    position: how many files come before the error's input, so rows can follow the input order.
    skipped: when given, gets (input, file, reason) for every file a folder or pattern held that is
    not classified (edge.files.skip_reason: not an image name, a temp/OS-metadata file, not a
    regular file), so each is counted and reported, never silently dropped.

    Folders and patterns yield image names (edge.files.IMAGE_SUFFIXES, .jfif and .jpe included)
    that are not temp/OS-metadata files (AppleDouble `._*` sidecars and the like); a file named
    explicitly is classified whatever its name, except those metadata files, which are skipped
    with a note. Never raises for unreadable folders: they become errors.
    """
    files: list[str] = []
    errors: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    skips = skipped if skipped is not None else []

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            files.append(p)

    def sort_out(raw: str, found) -> list[str]:
        """The images among `found` (paths), sorted; the rest go to `skips` with their reason."""
        images = []
        for p in found:
            reason = skip_reason(p) or (None if os.path.isfile(p) else SKIP_NOT_FILE)
            if reason is None:
                images.append(str(p))
            else:
                skips.append((raw, str(p), reason))
        return sorted(images)

    for raw in inputs:
        path = Path(raw)
        try:
            if path.is_dir():
                walker = path.rglob("*") if recursive else path.iterdir()
                found = sort_out(raw, (p for p in walker if not p.is_dir()))
                if not found:
                    hint = "" if recursive else " (use --recursive for subfolders)"
                    problem = f"folder has no images ({', '.join(IMAGE_SUFFIXES)}){hint}"
                    errors.append((raw, problem, len(files)))
                for f in found:
                    add(f)
            elif path.exists():
                if is_ignored_name(path.name):
                    _log(f"{raw}: skipped: a temporary or OS metadata file, not an image")
                    skips.append((raw, raw, skip_reason(path.name)))
                else:
                    add(raw)
            elif _GLOB_CHARS & set(raw):
                import glob

                matches = []  # a pattern names files: each gets a row, whatever its suffix (metadata aside)
                for m in sorted(glob.glob(raw, recursive=True)):
                    if os.path.isdir(m):
                        continue
                    if is_ignored_name(m) or not os.path.isfile(m):
                        skips.append((raw, m, skip_reason(m) or SKIP_NOT_FILE))
                    else:
                        matches.append(m)
                if not matches:
                    errors.append((raw, "pattern matches no files", len(files)))
                for m in matches:
                    add(m)
            else:
                errors.append((raw, "no such file or folder", len(files)))
        except OSError as exc:
            errors.append((raw, f"cannot read: {exc.strerror or exc}", len(files)))
    return files, errors


def _report_skips(skipped: list[tuple[str, str, str]], counts) -> None:
    """One stderr line per input that held files that are not classified (by reason, a few names),
    and the counts in `counts` (the summary line says them)."""
    by_input: dict[str, dict[str, list[str]]] = {}
    for raw, path, reason in skipped:
        by_input.setdefault(raw, {}).setdefault(reason, []).append(path)
    for raw, reasons in by_input.items():
        parts = []
        for reason, paths in sorted(reasons.items()):
            counts.skip(reason, len(paths))
            names = ", ".join(os.path.basename(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
            parts.append(f"{len(paths)} {reason} ({names})")
        n = sum(len(p) for p in reasons.values())
        if any(p == raw for paths in reasons.values() for p in paths):
            continue  # an explicitly named metadata file: said when it was skipped
        _log(f"{raw}: skipped {n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not classified: "
             + "; ".join(parts))


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    from .outputs import escape_text

    clear = "\r\x1b[2K" if _BAR_ON_SCREEN else ""
    try:
        sys.stderr.write(f"{clear}{_PROG}: error: {escape_text(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone (SIGHUP: the terminal closed): the exit code still says it
        pass
    sys.exit(code)


def _decode_options(bit_depth, page, max_pixels, value_range=None):
    if bit_depth is None and page is None and max_pixels is None and value_range is None:
        return None
    from .preprocess import DecodeOptions

    kw = {"bit_depth": bit_depth, "page": page, "value_range": value_range}
    if max_pixels is not None:
        kw["max_pixels"] = max_pixels
    try:
        return DecodeOptions(**kw)
    except ValueError as exc:  # the message names the field; the user typed the option
        msg = re.sub(r"'(bit_depth|page|max_pixels|value_range)(\[\d\])?'",
                     lambda m: "--" + m.group(1).replace("_", "-") + (" " + ("LOW" if m.group(2) == "[0]" else "HIGH")
                                                                       if m.group(2) else ""), str(exc))
        _fail(msg)


def _append_problem(output: str, first: bytes, fmt: str, frames: bool) -> str | None:
    """Why rows of this run must not be appended to `output` (its first line `first`), or None: another
    --format, other CSV columns, or per-cell rows where frame rows go (--fields) and the other way round."""
    from .outputs import check_append_target, detect_format

    if frames or detect_format(first) == fmt:
        from .frame_batch import rows_layout

        layout = rows_layout(first, fmt)
        if layout is not None and layout != ("frames" if frames else "cells"):
            return (f"{output}: holds {'per-cell' if layout == 'cells' else 'frame (--fields)'} rows; this run writes "
                    f"{'frame' if frames else 'per-cell'} rows: choose another --output file")
        if frames:
            found = detect_format(first)
            return None if found in (None, fmt) else (f"{output}: holds {found} rows, this run writes {fmt} "
                                                      "(--format); use another --output file")
    return check_append_target(output, first, fmt)  # another --format must not mix formats


def _watch_frames(clf, emitter, summary, frames, output, fmt):
    """Watch mode's frame wiring (--fields): the per-file classifier that gives a frame's block of rows and
    the per-sample summary fed from those blocks (rebuilt from the results file after a restart).
    Returns (classify callable or None, FrameCounts or None); exit 2 when the card has no `cells`."""
    if frames is None:
        return None, None
    from .errors import LeukedgeError
    from .frame_batch import FrameCounts, classify_frame_file, overlay_path, rebuild_summary, summary_observer

    try:
        from .fields import cells_spec

        cells_spec(clf.card, None)
    except ImportError as exc:
        _fail(f"--fields needs the frame extra: pip install 'leukedge[fields]' ({exc})")
    except LeukedgeError as exc:
        _fail(str(exc))
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


def _engine_for(model: str | None, engine: str, choice: str | None, layout: str, require_signature: str | None,
                quiet: bool) -> tuple[str, str]:
    """(model, engine) for this run: --choice picks both (edge.choose.pick_from, re-checked now); with
    --engine auto the choice.json beside --model names the engine measured fastest here (edge.choose.engine_for);
    otherwise the engine asked for. Only a model with a choice.json beside it pays for reading it. Exit 2 on error."""
    from .errors import LeukedgeError

    try:
        if choice:
            from .choose import pick_from

            pick = pick_from(choice, layout, require_signature)
            return str(pick.model), pick.engine or "auto"
        if engine == "auto" and (Path(model).parent / "choice.json").is_file():
            from .choose import engine_for

            chosen, note = engine_for(model, layout)
            if note and not quiet:
                _log(note)
            return model, chosen or "auto"
    except LeukedgeError as exc:
        _fail(str(exc))
    return model, engine


def _load(model: str, threads: int | None, threshold: float | None, decode, require_signature: str | None,
          quiet: bool, engine: str | None = None):
    """Check the signature (if asked), load the classifier on `engine` (None: the card format's default);
    every failure is one line and exit 2."""
    from .errors import LeukedgeError

    try:
        if require_signature:
            from .signature import verify_model_signature

            verify_model_signature(model, None, require_signature)  # None: the card beside the model
        if engine is None:
            from .classifier import Classifier

            clf = Classifier.load(model, threads=threads, threshold=threshold, decode=decode)
        else:
            from .engines import load_classifier

            clf = load_classifier(model, engine=engine, threads=threads, threshold=threshold, decode=decode)
    except LeukedgeError as exc:
        _fail(str(exc))  # a model that cannot be used: this one line is all (nothing said before it)
    except MemoryError:
        _fail(f"{model}: not enough memory to load the model (the README names the memory each model needs)")
    except RuntimeError as exc:  # "can't start new thread" from the runtime's thread pool
        _fail(f"{model}: the runtime could not start: {' '.join(str(exc).split())[:300]}")
    if not require_signature and not quiet:
        try:
            from .signature import signature_status
        except ImportError:  # the cryptography package is missing: signing is unavailable, not an error
            signature_status = None
        if signature_status is not None:
            _log(signature_status(model))
    return clf


class SummaryLocationError(OSError):
    pass


def _run_frames(clf, files, input_errors, sink, fmt, um_per_px, overlays, crops, include_flagged, summary, quiet):
    """The --fields batch (edge.frame_batch): frame rows to `sink`; a card without `cells` or a missing
    leukedge[fields] is one line and exit 2. Returns the FrameCounts."""
    from .errors import LeukedgeError
    from .frame_batch import FrameOptions, render, run_frames

    for path, problem, _position in input_errors:
        sink.write(render({"frame": path, "error": problem}, fmt, False))
    try:
        counts = run_frames(clf, files, sink, FrameOptions(fmt, um_per_px, overlays, crops, include_flagged),
                            summary, log=_log)
    except ImportError as exc:
        _fail(f"--fields needs the frame extra: pip install 'leukedge[fields]' ({exc})")
    except LeukedgeError as exc:
        _fail(str(exc))
    if not quiet:
        _log(counts.summary())
    return counts


class _Summary:
    """The per-sample summary of a run (edge.calibration.SampleSummary) fed by every written row."""

    def __init__(self, by: str, out: str | None):
        from .calibration import SampleSummary, check_summary_output

        self.out = out
        if out:
            check_summary_output(out)
            folder = Path(os.path.realpath(out)).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SummaryLocationError(f"{out}: cannot write the summary there: {exc.strerror or exc}") from None
            if not os.access(folder, os.W_OK):
                raise SummaryLocationError(f"{out}: cannot write the summary there: folder not writable")
        self.failed_write = False
        self.summary = SampleSummary(by)
        self.clf = None
        self.every = None
        self.last_write = 0.0

    def attach(self, emitter, clf, every_seconds: float | None = None) -> None:
        self.clf, self.every = clf, every_seconds
        self.summary.positive_label = clf.card.positive_label
        emitter.observers.append(self.add_row)

    def add_row(self, row: dict) -> None:
        failed = row.get("status") not in (None, "ok") or bool(row.get("error"))
        self.summary.add(row["path"], None if failed else row.get("label") == self.summary.positive_label,
                         None if failed or row.get("p_all") in (None, "") else float(row["p_all"]), failed,
                         bool(row.get("warning")))
        self.write_if_due()

    def write_if_due(self) -> None:
        """In watch mode (every_seconds given): rewrite the summary file when its interval has passed."""
        if self.every is not None and self.out and time.monotonic() - self.last_write >= self.every:
            self.write()

    def rebuild(self, output: str, fmt: str) -> None:
        from .outputs import read_rows

        try:
            for row in read_rows(output, fmt):
                if row.get("path"):
                    self.add_row(row)
        except (OSError, ValueError) as exc:
            _log(f"{output}: summary not rebuilt from earlier rows: {exc}")

    def rows(self) -> list[dict]:
        val = (self.clf.card.metrics or {}).get("validation", {}) if self.clf else {}
        return self.summary.rows(val.get("sensitivity"), val.get("specificity"))

    def write(self) -> None:
        self.last_write = time.monotonic()
        try:
            self.summary.write(self.out, self.rows())
            self.failed_write = False
        except OSError as exc:
            self.failed_write = True
            _log(f"{self.out}: cannot write the summary: {exc.strerror or exc}")

    def finish(self, quiet: bool) -> None:
        rows = self.rows()
        if not quiet:
            _log("per-sample summary (sensitivity/specificity from the card's validation figures):\n"
                 + self.summary.format_text(rows))
        if self.out:
            self.write()


def _summary_or_fail(by: str | None, out: str | None):
    if not by and not out:
        return None
    from .errors import LeukedgeError

    try:
        return _Summary(by or "subject", out)
    except (LeukedgeError, ValueError, SummaryLocationError) as exc:
        _fail(str(exc))


def _self_test(clf, required: bool) -> bool:
    """Run the golden-set self-test; returns ok. Not required (watch start) and no golden set: a note, ok."""
    from .selftest import self_test

    if not required and not getattr(clf.card, "golden", None):
        _log("self-test skipped: the model's card has no golden set")
        return True
    report = self_test(clf)
    _log(("self-test passed: " if report.ok else "self-test FAILED: ") + report.message)
    return bool(report.ok)


def _output_target(output: str) -> Path:
    """The file -o names (a symlink's target: that is what gets written); a folder, device, FIFO or socket
    is a usage error in one line. The file need not exist."""
    target = Path(os.path.realpath(output))
    if target.is_dir():
        _fail(f"{output}: --output is a folder; give a file name")
    if target.exists() and not target.is_file():
        _fail(f"{output}: not a regular file (a device, FIFO or socket); results go to a file — "
              "use stdout (-o -) for pipes")
    return target


def _default_journal(output: str | None, state_file: str | None) -> str | None:
    """The journal a watch run keeps: --state, else `<output>.journal` beside a results file."""
    if state_file:
        return state_file
    return str(Path(output).with_name(Path(output).name + ".journal")) if output and output != "-" else None


def _default_heartbeat(journal_path: str | None, heartbeat_file: str | None) -> str | None:
    """The heartbeat file: --heartbeat, else beside the journal (`x.journal` -> `x.heartbeat`)."""
    if heartbeat_file is not None or not journal_path:
        return heartbeat_file
    jp = Path(journal_path)
    return str(jp.with_suffix(".heartbeat") if jp.suffix == ".journal" else jp.with_name(jp.name + ".heartbeat"))


def _same_file(a: str, b: str) -> bool:
    """Two names for one file: the same path once symlinks are resolved, or (existing) the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_writes(writes: list[tuple[str, str]], files: list[str], model: str | None,
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
        from .signature import signature_path_for

        card = Path(model).with_name(Path(model).name + ".json")
        try:
            from .card import find_card_for

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
            if _same_file(path, read):
                _fail(f"{path}: {option} names {what} ({read}); it would be overwritten: choose another file "
                      "(nothing was classified)")
        if watched is not None and is_image_name(path):
            parent = os.path.dirname(os.path.realpath(path))
            if parent == watched or (recursive and parent.startswith(watched + os.sep)):
                _fail(f"{path}: {option} names an image file in the watched folder {watch_dir}; the watcher "
                      "would read it as a cell: choose another file or folder")
        for other_option, other in writes[i + 1:]:
            if _same_file(path, other):
                _fail(f"{path}: {option} and {other_option} name the same file; give each its own")


def _lock_results(output: str | None):
    """Hold the results file's lock (edge.files.WriterLock) for the whole run: a second batch or watcher
    writing the same file is refused in one line (exit 2) instead of silently replacing rows."""
    if not output or output == "-":
        return None
    from .files import FileInUseError, WriterLock

    _output_target(output)  # a folder, device or FIFO is refused first
    try:
        return WriterLock(output).acquire()
    except FileInUseError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{output}: cannot write results there: {exc.strerror or exc}")


def _open_batch_sink(output: str | None):
    """Check the output location before any work; returns the sink (temp file beside -o, or stdout)."""
    from .outputs import StreamSink, TempFileSink

    if output is None or output == "-":
        return StreamSink(sys.stdout.buffer)
    target = _output_target(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return TempFileSink(target)
    except OSError as exc:
        _fail(f"{output}: cannot write results there: {exc.strerror or exc}")


def _check_watch_output(output: str | None, fmt: str, frames: bool = False) -> None:
    """Before the model is loaded: a watch results file that cannot be appended to in `fmt` is a usage
    error (one line). The file itself is opened (and a crash's half-written line cut) later."""
    if not output or output == "-":
        return
    target = _output_target(output)
    if not target.exists():
        return
    try:
        with open(target, "rb") as fh:
            problem = _append_problem(output, fh.readline(), fmt, frames)
    except OSError as exc:
        problem = f"{output}: cannot read results there: {exc.strerror or exc}"
    if problem:
        _fail(problem)


def make_pool(clf, workers: int, threads: int | None, decode):
    """The throughput layout's workers (edge.throughput.ClassifierPool), or None with one stderr line
    when a further interpreter cannot be made (memory, a runtime failure): the run goes on with the
    one already loaded, slower, rather than ending in a traceback."""
    from .errors import LeukedgeError
    from .throughput import ClassifierPool

    try:
        return ClassifierPool(clf, workers, threads=threads, decode=decode)
    except MemoryError:
        problem = "not enough memory"
    except (LeukedgeError, RuntimeError, ValueError, SystemError, OSError) as exc:
        problem = " ".join(str(exc).split())[:300] or type(exc).__name__
    _log(f"cannot create {workers} workers ({problem}); going on with one worker "
         "(see the README for the memory each worker needs)")
    return None


def run_batch(clf, files: list[str], input_errors, emitter, model, strict_quality: bool, show_bar: bool,
              workers: int = 1, threads: int | None = None, decode=None) -> None:
    """Classify `files`, one row each, in input order; raises OutputError if rows cannot be written.

    input_errors: (input, problem, position) from `expand_inputs`: each becomes an InputError row
    before the files[position] row (the order the inputs were given in). workers > 1: the
    throughput layout (edge.throughput), `clf` is worker 0.
    """
    global _BAR_ON_SCREEN
    from .handling import classify_file
    from .outputs import make_row

    pending_errors = sorted(input_errors, key=lambda e: e[2])

    def emit_errors_before(position: int) -> None:
        while pending_errors and pending_errors[0][2] <= position:
            raw, problem, _ = pending_errors.pop(0)
            _log(f"{raw}: {problem}")
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
                _log(f"cannot start a worker thread ({exc}); going on with one worker")
                broken, pool = pool, None
                broken.close()
        for f in files[done:]:
            yield classify_file(clf, f, model, strict_quality=strict_quality)

    rows = rows_from(0)
    bar = None
    if show_bar:
        import click  # only for the bar: a single image or a pipe never pays for importing click

        bar = click.progressbar(length=len(files), label="classifying", file=sys.stderr)
        _BAR_ON_SCREEN = True
    try:
        for i, row in enumerate(rows):
            done = i + 1
            emit_errors_before(i)
            if row["status"] != "ok":
                _log(f"{row['path']}: {row['error']}")
            elif row.get("warning"):
                _log(f"{row['path']}: warning: {row['warning']} (classified; --strict-quality refuses such images)")
            emitter.emit(row)
            if bar is not None:
                bar.update(1)
        emit_errors_before(len(files))
        if bar is not None:
            bar.render_finish()
    finally:
        _BAR_ON_SCREEN = False
        if pool is not None:
            pool.close()


DESCRIPTION = """\
Classify segmented blood-cell images with a screening model. The model's card names its labels
(C-NMC models: ALL = leukemic blast, HEM = normal); p_all is P(the card's positive label).

INPUTS are image files (BMP, PNG, JPEG, TIFF), folders, or glob patterns.

Exit codes:
  0    every input was classified
  1    some inputs failed (each is reported; the others are still classified)
  2    usage, model (a failed self-test included) or output error (a batch's finished rows are
       kept; the message says where)
  130  a batch interrupted by Ctrl-C (SIGINT), 143 by SIGTERM: every finished row is kept
"""


class _Range:
    """argparse type: an int or float within [low, high] (None: unbounded), like click's IntRange/FloatRange.

    A value that is not a number, or lies outside the range (NaN included), is a usage error (exit 2)
    whose message names the option, the value and the range: `2.0 is not in the range 0.0<=x<=1.0`.
    """

    def __init__(self, kind: type, low=None, high=None):
        self.kind, self.low, self.high = kind, low, high

    def describe(self) -> str:
        if self.low is None:
            return f"x<={self.high}"
        if self.high is None:
            return f"x>={self.low}"
        return f"{self.low}<=x<={self.high}"

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid {'integer' if self.kind is int else 'number'}") from None
        if value != value or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise argparse.ArgumentTypeError(f"{value} is not in the range {self.describe()}")
        return value


class _PathArg:
    """argparse type: a path checked like click.Path: when it exists, it must be of the allowed kind
    (a file or a folder) and readable; with exists=True it must exist. The path is returned as given."""

    def __init__(self, file_okay: bool = True, dir_okay: bool = True, exists: bool = False):
        self.file_okay, self.dir_okay, self.exists = file_okay, dir_okay, exists
        self.noun = "file" if not dir_okay else "folder" if not file_okay else "path"

    def __call__(self, text: str) -> str:
        import stat

        try:
            st = os.stat(text)
        except OSError:
            if self.exists:
                raise argparse.ArgumentTypeError(f"{self.noun} {text!r} does not exist") from None
            return text
        if not self.file_okay and stat.S_ISREG(st.st_mode):
            raise argparse.ArgumentTypeError(f"{self.noun} {text!r} is a file")
        if not self.dir_okay and stat.S_ISDIR(st.st_mode):
            raise argparse.ArgumentTypeError(f"{self.noun} {text!r} is a folder")
        if not os.access(text, os.R_OK):
            raise argparse.ArgumentTypeError(f"{self.noun} {text!r} is not readable")
        return text


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The help layout: the description as written, option help in a column from 34 characters.

    argparse makes a formatter for every add_argument (to check the metavar); the terminal width,
    which costs importing shutil, is looked up only when help or usage is really formatted."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=120)

    def _fit_terminal(self) -> None:
        import shutil

        self._width = max(shutil.get_terminal_size().columns - 2, 40)
        self._max_help_position = min(34, max(self._width - 20, 2 * self._indent_increment))

    def format_help(self) -> str:
        self._fit_terminal()
        return super().format_help()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A usage error: one escaped `PROG: error: ... (PROG --help lists the options)` line; exit 2."""
        from .outputs import escape_text

        sys.stderr.write(f"{self.prog}: error: {escape_text(message)} ({self.prog} --help lists the options)\n")
        sys.stderr.flush()
        sys.exit(EXIT_USAGE)


# argparse takes "-1e3" or "-inf" for an option name (its own pattern knows only -1 and -.5); no
# option of edge-classify looks like a number, so every number-like word is a value.
_NEGATIVE_NUMBER = re.compile(r"^-(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)$", re.IGNORECASE)


def build_parser(prog: str = "edge-classify") -> argparse.ArgumentParser:
    """The option parser of `edge-classify` (argparse; every default and range is in its help)."""
    ap = _Parser(prog=prog, usage="%(prog)s [OPTIONS] [INPUTS]...", description=DESCRIPTION, add_help=False,
                 allow_abbrev=False, formatter_class=_HelpFormatter)
    ap._negative_number_matcher = _NEGATIVE_NUMBER  # argparse's hook for this (a private name since 3.2)
    ap.add_argument("inputs", nargs="*", metavar="INPUTS", help="Image files, folders or glob patterns.")
    opt = ap.add_argument

    def ranged(*flags, kind, low=None, high=None, default=None, help, **kw):
        """An option with a _Range type; its help ends like click's: [default: D; RANGE] or [RANGE]."""
        t = _Range(kind, low, high)
        note = f"[default: {default}; {t.describe()}]" if default is not None else f"[{t.describe()}]"
        opt(*flags, type=t, default=default, help=f"{help}  {note}", **kw)

    opt("-m", "--model", metavar="FILE", default=os.environ.get("LEUKEDGE_MODEL") or None,
        help="Model .tflite (its card .json beside it). Env: LEUKEDGE_MODEL.")
    ranged("--threshold", kind=float, low=0.0, high=1.0, metavar="P",
           help="Override the card's decision threshold on P(positive label), e.g. P(ALL).")
    opt("--format", dest="fmt", choices=["text", "json", "csv"], default="text", metavar="[text|json|csv]",
        help="[default: text]")
    opt("-o", "--output", type=_PathArg(dir_okay=False), metavar="FILE",
        help="Results FILE. Batch: written to a temporary file beside it, renamed at the end. "
             "Watch: appended, with a journal FILE.journal for restarts.")
    ranged("--threads", kind=int, low=1, high=256, metavar="N",
           help="Interpreter threads per worker [default: all cores with one worker, 1 with several].")
    ranged("--workers", kind=int, low=1, high=256, metavar="N",
           help="Parallel workers, each with its own interpreter [default: one per core for several files, "
                "1 for one file].")
    opt("-r", "--recursive", action="store_true", help="Descend into subfolders of folder inputs (and of --watch DIR).")
    opt("--watch", dest="watch_dir", type=_PathArg(file_okay=False), metavar="DIR",
        help="Classify each image saved into DIR until Ctrl-C / SIGTERM.")
    opt("--include-existing", action="store_true", help="With --watch, first start: also classify images already in DIR.")
    opt("--state", dest="state_file", type=_PathArg(dir_okay=False), metavar="FILE",
        help="With --watch: journal FILE for restarts [default: beside --output; needed when results go to stdout].")
    opt("--reclassify", action="store_true", help="With --watch: classify again what another model already classified.")
    opt("--poll", dest="poll_mode", action="store_true",
        help="With --watch: poll instead of inotify (network shares: inotify misses remote writes).")
    ranged("--poll-interval", kind=float, low=0.01, high=60.0, default=0.5, metavar="SECONDS",
           help="With --watch: seconds between checks.")
    ranged("--full-scan-interval", kind=float, low=1.0, high=86400.0, metavar="SECONDS",
           help="With --watch: seconds between full sweeps [default: 30 with --poll, 300 with inotify].")
    ranged("--settle", kind=float, low=0.0, high=600.0, default=1.0, metavar="SECONDS",
           help="With --watch: seconds a file's size and mtime must hold still before it is read.")
    ranged("--empty-timeout", kind=float, low=0.0, high=86400.0, default=60.0, metavar="SECONDS",
           help="With --watch: seconds a 0-byte file waits for its writer before it is reported as empty.")
    opt("--heartbeat", dest="heartbeat_file", type=_PathArg(dir_okay=False), metavar="FILE",
        help="With --watch: status FILE rewritten every few seconds [default: beside the journal].")
    ranged("--fsync-interval", kind=float, low=0.0, high=3600.0, default=1.0, metavar="SECONDS",
           help="Seconds between fsyncs of results and journal (0: every row).")
    opt("--strict-quality", action="store_true", help="An image with quality warnings is a failed input, not a result.")
    ranged("--bit-depth", kind=int, low=1, high=32, metavar="BITS",
           help="Significant bits of integer samples when the file does not say (e.g. 12).")
    ranged("--page", kind=int, low=1, metavar="N", help="Page of multi-page files to classify (1-based).")
    ranged("--max-pixels", kind=int, low=1, metavar="N", help="Refuse images with more pixels than this [default: 16 Mpx].")
    opt("--value-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
        help="Float images: the values that mean black and white (e.g. 0 4095); [0, 1] is assumed otherwise.")
    opt("--self-test", dest="self_test_flag", action="store_true",
        help="Run the model's golden-set self-test first; exit 2 (a model error) if it fails.")
    opt("--engine", choices=["auto", "litert", "onnxruntime", "openvino"], default="auto",
        metavar="[auto|litert|onnxruntime|openvino]",
        help="Inference engine for the model [default: auto: the engine edge-choose measured fastest for this "
             "model on this machine (choice.json beside it), else the card format's default].")
    opt("--choice", type=_PathArg(), metavar="FILE|DIR",
        help="Run the variant and engine that edge-choose picked (its choice.json, or the folder holding it) "
             "instead of --model: only a variant that passed its gate, only a signed one with --require-signature.")
    opt("--fields", action="store_true",
        help="Inputs are microscope frames: find every white cell, crop it as the training cells were, and write "
             "one row per cell (frame rows, docs/frames.md). Needs the card's 'cells' and leukedge[fields].")
    ranged("--um-per-px", kind=float, low=1e-3, high=100.0, metavar="UM",
           help="With --fields: the camera's micrometres per pixel [default: measured from the red cells].")
    opt("--overlays", type=_PathArg(file_okay=False), metavar="DIR",
        help="With --fields: write a review PNG per frame into DIR (each cell's box coloured by label, with P).")
    opt("--crops", type=_PathArg(file_okay=False), metavar="DIR", help="With --fields: write each cell's crop into DIR.")
    opt("--include-flagged", action="store_true",
        help="With --fields: count cells cut by the edge, touching or blurred in the per-sample fractions.")
    opt("--require-signature", type=_PathArg(dir_okay=False, exists=True), metavar="FILE",
        help="Refuse a model and card not signed with this Ed25519 public key.")
    opt("--summary-by", metavar="folder|subject|REGEX",
        help="Per-sample summary: group cells by folder, by C-NMC subject (UID_<subject>_...), or by a "
             "regular expression with one group, searched in each file's path (no match: group 'unknown'); "
             "printed on stderr at the end.")
    opt("--summary-out", type=_PathArg(dir_okay=False), metavar="FILE",
        help="Write the per-sample summary to FILE (.json or .csv, atomically; in --watch mode kept current).")
    opt("-q", "--quiet", action="store_true", help="No summary or runtime line on stderr.")
    opt("--version", action="version", version=f"edge-classify (leukedge), version {__version__}",
        help="Show the version and exit.")
    opt("-h", "--help", action="help", help="Show this message and exit.")
    return ap


def parse_args(argv: list[str] | None = None, prog: str = "edge-classify") -> dict:
    """The options of one run as `classify`'s keyword arguments; a usage error exits 2.

    Options and INPUTS may be mixed in any order; everything after `--` is an input.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in args:  # parse_intermixed_args mishandles `--`: split it off here
        cut = args.index("--")
        args, tail = args[:cut], args[cut + 1:]
    parser = build_parser(prog)
    opts = vars(parser.parse_intermixed_args(args))
    opts["inputs"] = (*opts["inputs"], *tail)
    if opts["value_range"] is not None:
        opts["value_range"] = tuple(opts["value_range"])
    if "" in opts["inputs"]:  # Path("") is the current folder: an unset "$IMG" must not classify it
        parser.error("an input is an empty string (an unset shell variable?)")
    for action in parser._actions:
        if action.option_strings and isinstance(opts.get(action.dest), str) and opts[action.dest] == "":
            parser.error(f"argument {'/'.join(action.option_strings)}: empty value")
    if not opts["watch_dir"]:
        stray = [a.option_strings[-1] for a in parser._actions
                 if a.dest in _WATCH_ONLY and opts[a.dest] != a.default]
        if stray:
            parser.error(f"{', '.join(stray)} only appl{'ies' if len(stray) == 1 else 'y'} with --watch DIR")
    if not opts["fields"]:
        stray = [a.option_strings[-1] for a in parser._actions if a.dest in _FIELDS_ONLY and opts[a.dest] != a.default]
        if stray:
            parser.error(f"{', '.join(stray)} only appl{'ies' if len(stray) == 1 else 'y'} with --fields")
    if opts["choice"] and any(a in ("-m", "--model") or a.startswith("--model=") for a in args):
        parser.error("give either --model or --choice, not both")
    return opts


# Options that mean something only in watch mode: given without --watch, they are a usage error
# rather than silently ignored.
_WATCH_ONLY = {"include_existing", "state_file", "reclassify", "poll_mode", "poll_interval", "full_scan_interval",
               "settle", "empty_timeout", "heartbeat_file"}
_FIELDS_ONLY = {"um_per_px", "overlays", "crops", "include_flagged"}


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """The `edge-classify` console script: parse `argv` (default: sys.argv[1:]), run, sys.exit(code).

    prog: the name in usage and errors (`leukedge classify` when called from the workstation CLI).
    A batch ended by SIGHUP (its terminal closed), SIGINT (Ctrl-C) or SIGTERM says so in one line and
    exits 129 / 130 / 143 (128 + the signal, as a shell reports it); a closed stdout pipe exits 1
    quietly. Native libraries' stderr lines go through edge.stderr's reader while it runs.
    """
    global _PROG
    _PROG = prog or "edge-classify"
    from . import stderr as native_stderr

    native_stderr.install(_PROG)
    saved = _end_on_signals()
    try:
        classify(**parse_args(argv, _PROG))
    except _Terminated as exc:
        _interrupted(exc.name, exc.code)
    except KeyboardInterrupt:
        _interrupted("SIGINT", EXIT_SIGINT)
    except MemoryError:
        _fail(_NO_MEMORY)
    except ImportError as exc:  # under a memory limit a library's shared object cannot be mapped
        text = " ".join(str(exc).split())
        if "failed to map segment" not in text and "Cannot allocate memory" not in text:
            raise
        _fail(f"{_NO_MEMORY} ({text[:200]})")
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        _quiet_closed_pipes()
        sys.exit(EXIT_SOME_FAILED)
    finally:
        _restore_signals(saved)
        while _HELD_LOCKS:
            _HELD_LOCKS.pop().release()
        native_stderr.uninstall()


_NO_MEMORY = "not enough memory for this run (the README names the memory each model needs)"


class _Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, kill) or SIGHUP (the terminal closed) during a batch or while a model loads: it
    ends the run like Ctrl-C, with the signal's own exit code. name: "SIGTERM" | "SIGHUP"; code: 128 + n."""

    def __init__(self, name: str = "SIGTERM", code: int = EXIT_SIGTERM):
        super().__init__(name)
        self.name, self.code = name, code


_ENDING_SIGNALS = {"SIGTERM": EXIT_SIGTERM, "SIGHUP": EXIT_SIGHUP}
_HELD_LOCKS: list = []  # results-file locks (edge.files.WriterLock) this run holds


def _end_on_signals() -> dict:
    """From now on SIGTERM and SIGHUP raise _Terminated in the main thread (SIGINT raises
    KeyboardInterrupt already), so a run ended by any of them keeps its rows and says so.
    Returns {signal number: previous handler} for `_restore_signals`."""
    saved = {}
    for name, code in _ENDING_SIGNALS.items():
        signum = getattr(signal, name, None)
        if signum is None:  # no SIGHUP off POSIX
            continue

        def _terminate(signum, frame, name=name, code=code):
            raise _Terminated(name, code)

        try:
            saved[signum] = signal.signal(signum, _terminate)
        except ValueError:  # not the main thread (a caller's worker): leave the defaults
            break
    return saved


def _restore_signals(saved: dict) -> None:
    for signum, handler in saved.items():
        try:
            signal.signal(signum, handler)
        except (ValueError, TypeError):
            pass


def _interrupted(signal_name: str, code: int, where: str | None = None) -> None:
    """One line for a batch ended by a signal (naming the file that keeps its rows), then exit `code`."""
    kept = f"; every finished row is in {where}" if where else ""
    try:
        sys.stderr.write("\n" if signal_name == "SIGINT" and sys.stderr.isatty() else "")  # after the ^C echo
    except (OSError, ValueError):
        pass
    _fail(f"interrupted by {signal_name}{kept}", code)


def _quiet_closed_pipes() -> None:
    """After EPIPE: point stdout and stderr at /dev/null so the final flush at exit cannot complain."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(null, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def classify(inputs, model, threshold, fmt, output, threads, workers, recursive, watch_dir, include_existing,
             state_file, reclassify, poll_mode, poll_interval, full_scan_interval, settle, heartbeat_file,
             fsync_interval, strict_quality, bit_depth, page, max_pixels, value_range, self_test_flag,
             require_signature, summary_by, summary_out, quiet, empty_timeout=60.0, engine="auto", choice=None,
             fields=False, um_per_px=None, overlays=None, crops=None, include_flagged=False) -> None:
    """Run `edge-classify` with parsed options (see `build_parser`); ends with sys.exit(code)."""
    if choice:
        model = None  # the choice file names the model (picked below, for the run's layout)
    elif not model:
        _fail("no model given: pass --model FILE.tflite (or --choice FILE) or set LEUKEDGE_MODEL")
    if not inputs and not watch_dir and not self_test_flag:
        _fail("no inputs: give image files, folders or patterns, or --watch DIR")
    if watch_dir and not Path(watch_dir).is_dir():
        _fail(f"{watch_dir}: watch folder does not exist")
    if output and watch_dir and inputs:
        _fail("give either INPUTS or --watch with --output, not both")
    decode = _decode_options(bit_depth, page, max_pixels, value_range)
    skipped: list[tuple[str, str, str]] = []
    files, input_errors = expand_inputs(inputs, recursive, skipped) if inputs else ([], [])

    # what the run writes, checked against what it reads, before anything is written or loaded
    journal_path = _default_journal(output, state_file) if watch_dir else None
    writes = [(opt, path) for opt, path in (
        ("--output", output if output != "-" else None), ("--summary-out", summary_out),
        ("--state" if state_file else "the journal (beside --output)", journal_path),
        ("--heartbeat" if heartbeat_file else "the heartbeat (beside the journal)",
         _default_heartbeat(journal_path, heartbeat_file) if watch_dir else None)) if path]
    _check_writes(writes, files, model, require_signature, watch_dir, recursive)
    summary = _summary_or_fail(summary_by, summary_out)

    # output location first: no work is done for results that could not be kept
    lock = _lock_results(output)
    if lock is not None:
        _HELD_LOCKS.append(lock)  # held until main() returns (or the process ends)
    batch_sink = _open_batch_sink(output) if inputs else None
    baseline = None
    try:
        if watch_dir and not inputs:
            _check_watch_output(output, fmt, fields)
        if watch_dir:
            # listed before the model loads: at a first start only this is "already there"; a cell
            # written while the model loads and tests itself is new (see edge.ingest.Watcher.start)
            from .ingest import list_folder

            try:
                baseline = list_folder(watch_dir, recursive)
            except OSError as exc:
                _fail(f"{watch_dir}: cannot list the watch folder: {exc.strerror or exc}")
        # layout: throughput (one single-threaded interpreter per core) for folders and watch backlogs,
        # latency (one interpreter on every core) for a single image
        if workers is None:
            if watch_dir or len(files) > 1:
                from .throughput import default_workers

                workers = default_workers()
            else:
                workers = 1
        n_workers = 1 if fields else workers  # a frame's cells are classified in turn by one interpreter
        if choice or engine != "litert":
            model, engine = _engine_for(model, engine, choice, "folder" if n_workers > 1 else "single",
                                        require_signature, quiet)
        clf = _load(model, threads if (threads or n_workers == 1) else 1, threshold, decode, require_signature, quiet,
                    engine=None if engine == "auto" else engine)
    except BaseException:  # a usage or model error, a signal: nothing was classified, so no results file
        if batch_sink is not None and batch_sink.path is not None:
            batch_sink.close()
            Path(batch_sink.path).unlink(missing_ok=True)
        raise
    from .handling import Counts, Emitter
    from .outputs import ModelInfo, OutputError, RowWriter

    minfo = ModelInfo.from_classifier(clf)
    if not quiet:
        _log(f"{Path(model).name} ({clf.card.variant}, sha256 {minfo.model_sha256}) on {clf.runtime.name} "
             f"{clf.runtime.version}" + (f" ({clf.runtime.detail})" if clf.runtime.detail else "")
             + f", threshold {clf.threshold:.4f}"
             + (f", {n_workers} workers x {threads or 1} thread(s)" if n_workers > 1 else ""))
    for note in getattr(clf.backend, "notes", ()) if not quiet else ():
        _log(note)  # e.g. ONNX Runtime: "building the TensorRT engine (first start)", "engine cache off"
    if self_test_flag and not _self_test(clf, required=True):
        sys.exit(EXIT_USAGE)  # the model does not reproduce the workstation's outputs here: a model error
    if self_test_flag and not inputs and not watch_dir and summary is None:
        sys.exit(EXIT_OK)

    failed = False
    if inputs:
        counts = Counts()
        writer = RowWriter(fmt, batch_sink, minfo)
        emitter = Emitter(writer, None, counts)
        if summary is not None:
            summary.attach(emitter, clf)
        show_bar = len(files) > 1 and sys.stderr.isatty() and not quiet
        _report_skips(skipped, counts)
        try:
            if fields:
                frame_counts = _run_frames(clf, files, input_errors, batch_sink, fmt, um_per_px, overlays, crops,
                                           include_flagged, summary, quiet)
                counts.failing.update(["frames"] if frame_counts.failed or input_errors else [])
            else:
                run_batch(clf, files, input_errors, emitter, minfo, strict_quality, show_bar,
                          workers=n_workers, threads=threads, decode=decode)
                writer.ensure_header()  # a batch without rows still gets its CSV column names / text header
            if batch_sink.path is not None:  # -o FILE (not stdout): rename the finished file into place
                batch_sink.commit()
            else:
                batch_sink.close()
        except OutputError as exc:
            batch_sink.close()
            where = f"; every finished row is in {batch_sink.path}" if batch_sink.path else ""
            _fail(f"{exc.strerror or exc}{where}")
        except BrokenPipeError:
            sys.exit(EXIT_SOME_FAILED)
        except KeyboardInterrupt as exc:
            if batch_sink.path is not None:
                batch_sink.close()
                if isinstance(exc, _Terminated):
                    _interrupted(exc.name, exc.code, batch_sink.path)
                _interrupted("SIGINT", EXIT_SIGINT, batch_sink.path)
            raise
        if not fields and not quiet and (len(files) > 1 or counts.any_failed or input_errors or counts.skipped):
            _log(counts.summary())
        if summary is not None and not watch_dir:
            summary.finish(quiet)
            if summary.failed_write:
                _fail(f"{summary_out}: the per-sample summary could not be written (every row was)")
        failed = counts.any_failed

    if watch_dir:
        frames = None
        if fields:
            from .frame_batch import FrameOptions

            frames = FrameOptions(fmt, um_per_px, overlays or (f"{output}.overlays" if output else None), crops,
                                  include_flagged)
        watch_failed, ended_by = _watch(clf, minfo, watch_dir, fmt, output, state_file, heartbeat_file, recursive,
                                        include_existing, reclassify, poll_mode, poll_interval, full_scan_interval,
                                        settle, fsync_interval, strict_quality, quiet, n_workers, threads, decode,
                                        summary, empty_timeout, baseline, frames)
        if ended_by == "SIGHUP":
            sys.exit(EXIT_SIGHUP)  # not asked to stop: its terminal went away (rows, journal, heartbeat kept)
        failed = watch_failed or failed
    sys.exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _watch(clf, minfo, watch_dir, fmt, output, state_file, heartbeat_file, recursive, include_existing, reclassify,
           poll_mode, poll_interval, full_scan_interval, settle, fsync_interval, strict_quality, quiet,
           workers=1, threads=None, decode=None, summary=None, empty_timeout=60.0,
           baseline=None, frames=None) -> tuple[bool, str | None]:
    """Run the watcher until SIGINT, SIGTERM or SIGHUP; returns (any input's latest row failed, the
    signal's name). baseline: the folder's listing taken before the model loaded (edge.ingest.list_folder).
    frames: edge.frame_batch.FrameOptions for --fields (each settled file is a frame: a block of cell rows,
    journalled as one), else None (one row per file)."""
    from .handling import Counts, Emitter
    from .ingest import Journal, JournalError, WatchOptions, Watcher
    from .outputs import AppendFileSink, OutputError, RowWriter, StreamSink

    if not _self_test(clf, required=False):
        sys.exit(EXIT_USAGE)  # a model that fails its self-test here is not started (systemd: failed, not restarted)
    if output == "-":  # stdout, as in a batch
        output = None
    if output:
        try:
            sink = AppendFileSink(output, fsync_interval)
        except OSError as exc:
            _fail(f"{output}: cannot write results there: {exc.strerror or exc}")
        problem = _append_problem(output, sink.first_line(), fmt, frames is not None)
        if problem:
            sink.close()
            _fail(problem)
        if sink.repaired:
            _log(f"{output}: cut a half-written last line ({sink.repaired} bytes) left by a crash")
    else:
        sink = StreamSink(sys.stdout.buffer)
    journal_path = _default_journal(output, state_file)
    journal = None
    if journal_path:
        try:
            journal = Journal(journal_path, watch_dir, minfo, output, fmt, reclassify, fsync_interval).open(
                sink if output else None)
        except JournalError as exc:
            _fail(str(exc.strerror or exc))
        except OSError as exc:
            _fail(f"{journal_path}: cannot use journal: {exc.strerror or exc}")
        for note in journal.notes:
            _log(note)
    elif not quiet:
        _log("results go to stdout and no --state FILE is given: a restart will not resume")
    heartbeat = _default_heartbeat(journal_path, heartbeat_file)
    counts = Counts()
    if frames is not None:
        from .frame_batch import FrameRowWriter

        writer = FrameRowWriter(fmt, sink)
    else:
        writer = RowWriter(fmt, sink, minfo, header_each_run=bool(output))
    try:
        writer.ensure_header()
    except OutputError:
        pass  # a full disk at start: the header goes with the first row that can be written
    emitter = Emitter(writer, journal, counts)
    classify_one, frame_counts = _watch_frames(clf, emitter, summary, frames, output, fmt)
    if summary is not None and frames is None:
        if output and fmt in ("json", "csv") and Path(output).exists():
            summary.rebuild(output, fmt)  # after a restart: what was already classified (a re-read counts once)
        summary.attach(emitter, clf, every_seconds=5.0)
    opts = WatchOptions(recursive=recursive, settle=settle, poll_interval=poll_interval,
                        mode="poll" if poll_mode else "inotify", full_scan_interval=full_scan_interval,
                        include_existing=include_existing, strict_quality=strict_quality, heartbeat=heartbeat,
                        empty_timeout=empty_timeout)
    stop = threading.Event()
    ended_by: list[str] = []

    def _stop(signum, frame):
        ended_by.append(signal.Signals(signum).name)
        stop.set()

    ending = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old_handlers = {sig: signal.signal(sig, _stop) for sig in ending}
    pool = make_pool(clf, workers, threads, decode) if workers > 1 else None
    watcher = Watcher(clf, watch_dir, emitter, minfo, opts, _log, stop, pool=pool, baseline=baseline,
                      classify=classify_one)
    try:
        try:
            watcher.start()  # lists what is there first, so anything written after the next line is new
            _log(f"watching {watch_dir} ({'polling' if poll_mode else 'inotify'}; Ctrl-C to stop)")
            watcher.run(started=True)
        except FileNotFoundError:
            _fail(f"{watch_dir}: watch folder vanished before the first scan")
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if watcher.pool is not None:
            watcher.pool.close()
        sink.close()
        if journal is not None:
            journal.close()
    by = f" by {ended_by[0]}" if ended_by else ""
    _log(f"stopped{by}; {counts.summary()}" + (f"; {frame_counts.summary()}" if frame_counts is not None else ""))
    if summary is not None:
        summary.finish(quiet)
    return counts.any_failed, (ended_by[0] if ended_by else None)


if __name__ == "__main__":
    main()
