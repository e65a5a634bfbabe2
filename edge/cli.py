"""`edge-classify`: classify segmented blood-cell images on the device.

Exit codes: 0 every input classified; 1 some inputs failed (each is reported,
the rest are still classified); 2 usage or model error (nothing classified).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from leukedge import __version__

from .preprocess import IMAGE_EXTENSIONS, is_image_name

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
_GLOB_CHARS = set("*?[")


def expand_inputs(inputs: tuple[str, ...], recursive: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Turn files, folders and glob patterns into a file list plus (input, problem) errors."""
    files: list[str] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            files.append(p)

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.iterdir()
            found = sorted(str(p) for p in walker if p.is_file() and is_image_name(p))
            if not found:
                hint = "" if recursive else " (use --recursive for subfolders)"
                errors.append((raw, f"folder has no images ({', '.join(IMAGE_EXTENSIONS)}){hint}"))
            for f in found:
                add(f)
        elif path.exists():
            add(raw)
        elif _GLOB_CHARS & set(raw):
            matches = sorted(m for m in glob.glob(raw, recursive=True) if os.path.isfile(m))
            if not matches:
                errors.append((raw, "pattern matches no files"))
            for m in matches:
                add(m)
        else:
            errors.append((raw, "no such file or folder"))
    return files, errors


class ResultWriter:
    """Formats predictions as text, JSON lines or CSV, to stdout or (atomically) to a file."""

    CSV_FIELDS = ("path", "label", "p_all", "preprocess_ms", "invoke_ms", "total_ms", "error")

    def __init__(self, fmt: str, output: str | None):
        self.fmt = fmt
        self.output = output
        self.rows: list[dict] = []
        self._csv_header_done = False

    def render(self, row: dict) -> str:
        if self.fmt == "json":
            return json.dumps(row)
        if self.fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
            w.writerow({k: row.get(k, "") for k in self.CSV_FIELDS})
            return buf.getvalue().rstrip("\n")
        if "error" in row:
            return f"{row['path']}\tERROR\t{row['error']}"
        return f"{row['path']}\t{row['label']}\tp_all={row['p_all']:.4f}"

    def header(self) -> str | None:
        return ",".join(self.CSV_FIELDS) if self.fmt == "csv" else None

    def emit(self, row: dict) -> None:
        self.rows.append(row)
        if self.output is None:
            if not self._csv_header_done and self.header():
                click.echo(self.header())
            self._csv_header_done = True
            click.echo(self.render(row))

    def flush_file(self) -> None:
        if self.output is None:
            return
        from .files import write_text_atomic

        lines = ([self.header()] if self.header() else []) + [self.render(r) for r in self.rows]
        write_text_atomic(self.output, "\n".join(lines) + ("\n" if lines else ""))


def _fail(message: str) -> None:
    click.echo(f"edge-classify: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _load(model: str, threads: int | None, threshold: float | None):
    from .card import CardError
    from .classifier import Classifier
    from .runtime import ModelError

    try:
        clf = Classifier.load(model, threads=threads)
    except (CardError, ModelError) as exc:
        _fail(str(exc))
    if threshold is not None:
        clf.threshold = threshold
    return clf


def _file_is_settled(path: Path, sizes: dict[str, tuple[int, float]], settle: float) -> bool:
    """True once a file's size and mtime held still across two polls and for `settle` seconds.

    A microscope's writer may pause mid-file; a file untouched for `settle` seconds is done.
    """
    try:
        st = path.stat()
    except OSError:
        return False
    now = (st.st_size, st.st_mtime)
    before = sizes.get(str(path))
    sizes[str(path)] = now
    return before == now and st.st_size > 0 and time.time() - st.st_mtime >= settle


def watch_folder(clf, folder: Path, writer: ResultWriter, recursive: bool, poll: float,
                 include_existing: bool, settle: float = 1.0) -> int:
    """Classify each image that appears in `folder` until Ctrl-C / SIGTERM; returns the failure count."""
    stop = {"now": False}

    def _stop(signum, frame):
        stop["now"] = True

    old_int = signal.signal(signal.SIGINT, _stop)
    old_term = signal.signal(signal.SIGTERM, _stop)
    done: set[str] = set()
    sizes: dict[str, tuple[int, float]] = {}
    failures = 0

    def listing() -> list[Path]:
        walker = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(p for p in walker if p.is_file() and is_image_name(p) and not p.name.startswith("."))

    if not include_existing:
        done.update(str(p) for p in listing())
    click.echo(f"edge-classify: watching {folder} (Ctrl-C to stop)", err=True)
    try:
        while not stop["now"]:
            for p in listing():
                if stop["now"]:
                    break
                if str(p) in done or not _file_is_settled(p, sizes, settle):
                    continue
                done.add(str(p))
                pred = clf.predict_one(p)
                if not pred.ok:
                    failures += 1
                    click.echo(f"edge-classify: {p}: {pred.error}", err=True)
                writer.emit(pred.to_dict())
                writer.flush_file()
                sys.stdout.flush()
            time.sleep(poll)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    click.echo(f"edge-classify: stopped; {len(writer.rows)} classified, {failures} failed", err=True)
    return failures


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1)
@click.option("--model", "-m", envvar="LEUKEDGE_MODEL", help="Model .tflite (its card .json beside it). Env: LEUKEDGE_MODEL.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), help="Override the card's decision threshold on P(ALL).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write results to FILE (atomically) instead of stdout.")
@click.option("--threads", type=click.IntRange(1, 256), help="Interpreter threads [default: all cores].")
@click.option("--recursive", "-r", is_flag=True, help="Descend into subfolders of folder inputs.")
@click.option("--watch", "watch_dir", type=click.Path(file_okay=False), help="Classify each new image saved into DIR until Ctrl-C.")
@click.option("--include-existing", is_flag=True, help="With --watch: also classify images already in DIR.")
@click.option("--poll-interval", type=click.FloatRange(0.01, 60.0), default=0.5, show_default=True, help="With --watch: seconds between folder scans.")
@click.option("--settle", type=click.FloatRange(0.0, 600.0), default=1.0, show_default=True, help="With --watch: seconds a file must stay unchanged before it is read.")
@click.option("--quiet", "-q", is_flag=True, help="No summary or runtime line on stderr.")
@click.version_option(__version__, "--version", prog_name="edge-classify (leukedge)")
def main(inputs, model, threshold, fmt, output, threads, recursive, watch_dir, include_existing, poll_interval, settle, quiet):
    """Classify segmented blood-cell images as ALL (leukemic blast) or HEM (normal).

    INPUTS are image files (BMP, PNG, JPEG, TIFF), folders, or glob patterns.

    \b
    Exit codes:
      0  every input was classified
      1  some inputs failed (each is reported; the others are still classified)
      2  usage or model error (nothing was classified)
    """
    if not model:
        _fail("no model given: pass --model FILE.tflite or set LEUKEDGE_MODEL")
    if not inputs and not watch_dir:
        _fail("no inputs: give image files, folders or patterns, or --watch DIR")
    if watch_dir and not Path(watch_dir).is_dir():
        _fail(f"{watch_dir}: watch folder does not exist")

    clf = _load(model, threads, threshold)
    if not quiet:
        click.echo(f"edge-classify: {Path(model).name} ({clf.card.variant}) on {clf.runtime.name} "
                   f"{clf.runtime.version}, threshold {clf.threshold:.4f}", err=True)
    writer = ResultWriter(fmt, output)

    failures: list[tuple[str, str]] = []
    if inputs:
        files, failures = expand_inputs(inputs, recursive)
        for raw, problem in failures:
            click.echo(f"edge-classify: {raw}: {problem}", err=True)
            writer.emit({"path": raw, "error": problem})
        show_bar = len(files) > 1 and sys.stderr.isatty() and not quiet
        with click.progressbar(files, label="classifying", file=sys.stderr) if show_bar else contextlib.nullcontext(files) as bar:
            for f in bar:
                pred = clf.predict_one(f)
                if not pred.ok:
                    failures.append((f, pred.error or "failed"))
                    click.echo(f"edge-classify: {f}: {pred.error}", err=True)
                writer.emit(pred.to_dict())
        if not quiet and (len(files) > 1 or failures):
            click.echo(f"edge-classify: {len(writer.rows) - len(failures)} classified, {len(failures)} failed", err=True)
            for raw, problem in failures:
                click.echo(f"  failed: {raw}: {problem}", err=True)
    writer.flush_file()

    watch_failures = 0
    if watch_dir:
        watch_failures = watch_folder(clf, Path(watch_dir), writer, recursive, poll_interval, include_existing, settle)
    sys.exit(EXIT_SOME_FAILED if (failures or watch_failures) else EXIT_OK)


if __name__ == "__main__":
    main()
