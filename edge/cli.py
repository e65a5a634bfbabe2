"""`edge-classify`: classify segmented blood-cell images on the device, in a batch or watching a folder.

Exit codes: 0 every input classified; 1 some inputs failed or hit an internal error (each is
reported as its own row; the others are still classified); 2 usage, model (a failed self-test
included) or output-location error (a batch with -o keeps every finished row in the temporary
file the message names); 130 / 143 a batch interrupted by SIGINT (Ctrl-C) / SIGTERM (rows kept).

Rows: edge.outputs (one versioned field list). Watch mode and its journal: edge.ingest.
Options: the standard library's argparse (click costs a device ~10 ms at every start; it is
imported only to draw the progress bar of a multi-file batch on a terminal).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
import time
import threading
from pathlib import Path

from leukedge import __version__

from .files import is_ignored_name
from .preprocess import IMAGE_EXTENSIONS, is_image_name

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + 2, 128 + 15  # the shell's convention for a run ended by that signal
_GLOB_CHARS = set("*?[")
_PROG = "edge-classify"  # the name on every stderr line (`leukedge classify` through the workstation CLI)
_BAR_ON_SCREEN = False  # a progress bar is drawn on stderr: a log line clears it first


def _log(msg: str) -> None:
    """One stderr line per line of `msg` (each escaped, so no file name can forge a line)."""
    from .outputs import escape_text

    clear = "\r\x1b[2K" if _BAR_ON_SCREEN else ""  # the bar is redrawn below at its next update
    sys.stderr.write(clear + "".join(f"{_PROG}: {escape_text(line)}\n" for line in str(msg).split("\n")))
    sys.stderr.flush()


def expand_inputs(inputs: tuple[str, ...], recursive: bool) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Turn files, folders and glob patterns into a file list plus (input, problem, position) errors.

    position: how many files come before the error's input, so rows can follow the input order.

    Folders and patterns yield image names (IMAGE_EXTENSIONS) that are not temp/OS-metadata
    files (edge.files.is_ignored_name: AppleDouble `._*` sidecars and the like); a file named
    explicitly is classified whatever its name, except those metadata files, which are skipped
    with a note. Never raises for unreadable folders: they become errors.
    """
    files: list[str] = []
    errors: list[tuple[str, str, int]] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            files.append(p)

    for raw in inputs:
        path = Path(raw)
        try:
            if path.is_dir():
                walker = path.rglob("*") if recursive else path.iterdir()
                found = sorted(str(p) for p in walker
                               if is_image_name(p) and not is_ignored_name(p.name) and p.is_file())
                if not found:
                    hint = "" if recursive else " (use --recursive for subfolders)"
                    problem = f"folder has no images ({', '.join(IMAGE_EXTENSIONS)}){hint}"
                    errors.append((raw, problem, len(files)))
                for f in found:
                    add(f)
            elif path.exists():
                if is_ignored_name(path.name):
                    _log(f"{raw}: skipped: a temporary or OS metadata file, not an image")
                else:
                    add(raw)
            elif _GLOB_CHARS & set(raw):
                import glob

                matches = sorted(m for m in glob.glob(raw, recursive=True)
                                 if os.path.isfile(m) and not is_ignored_name(m))
                if not matches:
                    errors.append((raw, "pattern matches no files", len(files)))
                for m in matches:
                    add(m)
            else:
                errors.append((raw, "no such file or folder", len(files)))
        except OSError as exc:
            errors.append((raw, f"cannot read: {exc.strerror or exc}", len(files)))
    return files, errors


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    from .outputs import escape_text

    clear = "\r\x1b[2K" if _BAR_ON_SCREEN else ""
    sys.stderr.write(f"{clear}{_PROG}: error: {escape_text(message)}\n")
    sys.stderr.flush()
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


def _load(model: str, threads: int | None, threshold: float | None, decode, require_signature: str | None,
          quiet: bool):
    """Check the signature (if asked), load the classifier; every failure is one line and exit 2."""
    from .errors import LeukedgeError

    try:
        if require_signature:
            from .signature import verify_model_signature

            verify_model_signature(model, None, require_signature)  # None: the card beside the model
        from .classifier import Classifier

        clf = Classifier.load(model, threads=threads, threshold=threshold, decode=decode)
    except LeukedgeError as exc:
        _fail(str(exc))  # a model that cannot be used: this one line is all (nothing said before it)
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


def _check_watch_output(output: str | None, fmt: str) -> None:
    """Before the model is loaded: a watch results file that cannot be appended to in `fmt` is a usage
    error (one line). The file itself is opened (and a crash's half-written line cut) later."""
    if not output or output == "-":
        return
    target = _output_target(output)
    if not target.exists():
        return
    from .outputs import check_append_target

    try:
        with open(target, "rb") as fh:
            problem = check_append_target(output, fh.readline(), fmt)
    except OSError as exc:
        problem = f"{output}: cannot read results there: {exc.strerror or exc}"
    if problem:
        _fail(problem)


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

    pool = None
    if workers > 1 and len(files) > 1:
        from .throughput import ClassifierPool

        pool = ClassifierPool(clf, workers, threads=threads, decode=decode)
        rows = pool.map(lambda c, f: classify_file(c, f, model, strict_quality=strict_quality), files)
    else:
        rows = (classify_file(clf, f, model, strict_quality=strict_quality) for f in files)
    bar = None
    if show_bar:
        import click  # only for the bar: a single image or a pipe never pays for importing click

        bar = click.progressbar(length=len(files), label="classifying", file=sys.stderr)
        _BAR_ON_SCREEN = True
    try:
        for i, row in enumerate(rows):
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
        help="Run the model's golden-set self-test first; exit 1 if it fails.")
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
    return opts


# Options that mean something only in watch mode: given without --watch, they are a usage error
# rather than silently ignored.
_WATCH_ONLY = {"include_existing", "state_file", "reclassify", "poll_mode", "poll_interval", "full_scan_interval",
               "settle", "empty_timeout", "heartbeat_file"}


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """The `edge-classify` console script: parse `argv` (default: sys.argv[1:]), run, sys.exit(code).

    prog: the name in usage and errors (`leukedge classify` when called from the workstation CLI).
    A batch ended by SIGINT (Ctrl-C) or SIGTERM says so in one line and exits 130 / 143 (128 + the
    signal, as a shell reports it); a closed stdout pipe exits 1 quietly.
    """
    global _PROG
    _PROG = prog or "edge-classify"
    try:
        classify(**parse_args(argv, _PROG))
    except _Terminated:
        _interrupted("SIGTERM", EXIT_SIGTERM)
    except KeyboardInterrupt:
        _interrupted("SIGINT", EXIT_SIGINT)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        _quiet_closed_pipes()
        sys.exit(EXIT_SOME_FAILED)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, kill) during a batch: it ends the batch like Ctrl-C, with its own exit code."""


def _interrupted(signal_name: str, code: int, where: str | None = None) -> None:
    """One line for a batch ended by a signal (naming the file that keeps its rows), then exit `code`."""
    kept = f"; every finished row is in {where}" if where else ""
    sys.stderr.write("\n" if signal_name == "SIGINT" and sys.stderr.isatty() else "")  # after the ^C echo
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
             require_signature, summary_by, summary_out, quiet, empty_timeout=60.0) -> None:
    """Run `edge-classify` with parsed options (see `build_parser`); ends with sys.exit(code)."""
    if not model:
        _fail("no model given: pass --model FILE.tflite or set LEUKEDGE_MODEL")
    if not inputs and not watch_dir and not self_test_flag:
        _fail("no inputs: give image files, folders or patterns, or --watch DIR")
    if watch_dir and not Path(watch_dir).is_dir():
        _fail(f"{watch_dir}: watch folder does not exist")
    if output and watch_dir and inputs:
        _fail("give either INPUTS or --watch with --output, not both")
    decode = _decode_options(bit_depth, page, max_pixels, value_range)
    summary = _summary_or_fail(summary_by, summary_out)

    # output location first: no work is done for results that could not be kept
    batch_sink = _open_batch_sink(output) if inputs else None
    if watch_dir and not inputs:
        _check_watch_output(output, fmt)
    try:
        files, input_errors = expand_inputs(inputs, recursive) if inputs else ([], [])
        # layout: throughput (one single-threaded interpreter per core) for folders and watch backlogs,
        # latency (one interpreter on every core) for a single image
        if workers is None:
            if watch_dir or len(files) > 1:
                from .throughput import default_workers

                workers = default_workers()
            else:
                workers = 1
        n_workers = workers
        clf = _load(model, threads if (threads or n_workers == 1) else 1, threshold, decode, require_signature, quiet)
    except SystemExit:
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
        def _terminate(signum, frame):  # SIGTERM (systemd, kill) ends a batch like Ctrl-C: rows kept, file named
            raise _Terminated

        signal.signal(signal.SIGTERM, _terminate)
        try:
            run_batch(clf, files, input_errors, emitter, minfo, strict_quality, show_bar,
                      workers=n_workers, threads=threads, decode=decode)
            if batch_sink.path is not None:  # -o FILE (not stdout): rename the finished file into place
                batch_sink.commit()
            else:
                batch_sink.close()
        except OutputError as exc:
            where = f"; every finished row is in {batch_sink.path}" if batch_sink.path else ""
            _fail(f"{exc.strerror or exc}{where}")
        except BrokenPipeError:
            sys.exit(EXIT_SOME_FAILED)
        except KeyboardInterrupt as exc:
            if batch_sink.path is not None:
                batch_sink.close()
                if isinstance(exc, _Terminated):
                    _interrupted("SIGTERM", EXIT_SIGTERM, batch_sink.path)
                _interrupted("SIGINT", EXIT_SIGINT, batch_sink.path)
            raise
        if not quiet and (len(files) > 1 or counts.any_failed or input_errors):
            _log(counts.summary())
        if summary is not None and not watch_dir:
            summary.finish(quiet)
            if summary.failed_write:
                _fail(f"{summary_out}: the per-sample summary could not be written (every row was)")
        failed = counts.any_failed

    if watch_dir:
        failed = _watch(clf, minfo, watch_dir, fmt, output, state_file, heartbeat_file, recursive, include_existing,
                        reclassify, poll_mode, poll_interval, full_scan_interval, settle, fsync_interval,
                        strict_quality, quiet, n_workers, threads, decode, summary, empty_timeout) or failed
    sys.exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _watch(clf, minfo, watch_dir, fmt, output, state_file, heartbeat_file, recursive, include_existing, reclassify,
           poll_mode, poll_interval, full_scan_interval, settle, fsync_interval, strict_quality, quiet,
           workers=1, threads=None, decode=None, summary=None, empty_timeout=60.0) -> bool:
    """Run the watcher until SIGINT/SIGTERM; returns True if any input's latest row failed."""
    from .handling import Counts, Emitter
    from .ingest import Journal, JournalError, WatchOptions, Watcher, default_journal_path
    from .outputs import AppendFileSink, RowWriter, StreamSink, check_append_target

    if not _self_test(clf, required=False):
        sys.exit(EXIT_USAGE)  # a model that fails its self-test here is not started (systemd: failed, not restarted)
    if output == "-":  # stdout, as in a batch
        output = None
    if output:
        try:
            sink = AppendFileSink(output, fsync_interval)
        except OSError as exc:
            _fail(f"{output}: cannot write results there: {exc.strerror or exc}")
        problem = check_append_target(output, sink.first_line(), fmt)  # another --format must not mix formats
        if problem:
            sink.close()
            _fail(problem)
        if sink.repaired:
            _log(f"{output}: cut a half-written last line ({sink.repaired} bytes) left by a crash")
    else:
        sink = StreamSink(sys.stdout.buffer)
    journal_path = state_file or (default_journal_path(output) if output else None)
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
    heartbeat = heartbeat_file
    if heartbeat is None and journal_path:
        jp = Path(journal_path)
        heartbeat = str(jp.with_suffix(".heartbeat") if jp.suffix == ".journal" else jp.with_name(jp.name + ".heartbeat"))
    counts = Counts()
    emitter = Emitter(RowWriter(fmt, sink, minfo, header_each_run=bool(output)), journal, counts)
    if summary is not None:
        if output and fmt in ("json", "csv") and Path(output).exists():
            summary.rebuild(output, fmt)  # after a restart: what was already classified (a re-read counts once)
        summary.attach(emitter, clf, every_seconds=5.0)
    opts = WatchOptions(recursive=recursive, settle=settle, poll_interval=poll_interval,
                        mode="poll" if poll_mode else "inotify", full_scan_interval=full_scan_interval,
                        include_existing=include_existing, strict_quality=strict_quality, heartbeat=heartbeat,
                        empty_timeout=empty_timeout)
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    old_int = signal.signal(signal.SIGINT, _stop)
    old_term = signal.signal(signal.SIGTERM, _stop)
    pool = None
    if workers > 1:
        from .throughput import ClassifierPool

        pool = ClassifierPool(clf, workers, threads=threads, decode=decode)
    watcher = Watcher(clf, watch_dir, emitter, minfo, opts, _log, stop, pool=pool)
    try:
        try:
            watcher.start()  # lists what is there first, so anything written after the next line is new
            _log(f"watching {watch_dir} ({'polling' if poll_mode else 'inotify'}; Ctrl-C to stop)")
            watcher.run(started=True)
        except FileNotFoundError:
            _fail(f"{watch_dir}: watch folder vanished before the first scan")
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        if pool is not None:
            pool.close()
        sink.close()
        if journal is not None:
            journal.close()
    _log(f"stopped; {counts.summary()}")
    if summary is not None:
        summary.finish(quiet)
    return counts.any_failed


if __name__ == "__main__":
    main()
