"""Never lose a cell, never lose a row (issue 20): each numbered situation of the issue, reached by injection.

Fast tests inject the fault: a file descriptor swapped for /dev/full (the kernel's ENOSPC, as on a
full disk), a fake watchdog event, timestamps truncated to a FAT clock, a runtime that raises, a
thread that cannot start. The real conditions (a full tmpfs, an inotify queue overflow, a file
system with 1-s timestamps, a memory limit) are `slow` tests at the end; they need root for mounts.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import write_image
from test_ingest import MODEL, FakeClassifier, Run, by_path, image_bytes, wait_for
from leukedge.edge.app import journal as journal_module
from leukedge.edge.app import watcher as ingest
from leukedge.edge.app.journal import Journal, JournalError, Record, default_journal_path
from leukedge.edge.app.rows import RowWriter, make_row, read_rows
from leukedge.edge.app.sinks import AppendFileSink, OutputError

EDGE = [sys.executable, "-m", "leukedge.edge.cli"]


def run_edge(*args, timeout=180, **kw):
    return subprocess.run([*EDGE, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_error(r) -> str:
    """The single stderr line of a refused run (asserting there is exactly one)."""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-classify: error: "), r.stderr
    return lines[0]


class DevFull:
    """A file's descriptor swapped for /dev/full: every write fails with ENOSPC in the kernel, as on a full
    disk, until `free()` puts the real file back under the same descriptor."""

    def __init__(self, fh):
        self.fd = fh.fileno()
        self.saved = os.dup(self.fd)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, self.fd)
        os.close(full)

    def free(self):
        if self.saved is not None:
            os.dup2(self.saved, self.fd)
            os.close(self.saved)
            self.saved = None


def journal_records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if '"t": "file"' in line]


def copy_model(tiny_models, dest: Path, name="float32") -> Path:
    """The tiny model and its card copied into `dest` (so a test can see whether they were touched)."""
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(tiny_models[name])
    for f in src.parent.glob(src.name + "*"):
        shutil.copy(f, dest / f.name)
    return dest / src.name


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


# -- 1. nothing the command writes can be one of its inputs; one writer per results file -------------


@pytest.mark.parametrize("case", ["output-is-an-input", "output-inside-an-input-folder", "output-links-to-an-input",
                                  "summary-is-the-card", "output-is-the-signature", "state-is-the-model",
                                  "heartbeat-is-an-image-in-the-watched-folder", "output-is-the-summary",
                                  "output-is-an-input-by-another-name"])
def test_a_run_never_writes_over_its_own_inputs(tiny_models, tmp_path, case):
    model = copy_model(tiny_models, tmp_path / "m")
    a = write_image(tmp_path / "a.bmp", size=(64, 64), fmt="BMP", seed=1)
    b = write_image(tmp_path / "b.bmp", size=(64, 64), fmt="BMP", seed=2)
    folder = tmp_path / "f"
    c = write_image(folder / "c.bmp", size=(64, 64), fmt="BMP", seed=3)
    watch = tmp_path / "w"
    watch.mkdir()
    (tmp_path / "link.csv").symlink_to(a)
    os.link(b, tmp_path / "hard.csv")
    base = ["-m", model, "--format", "csv"]
    args = {
        "output-is-an-input": [*base, a, b, "-o", b],
        "output-inside-an-input-folder": [*base, folder, "-o", c],
        "output-links-to-an-input": [*base, a, b, "-o", tmp_path / "link.csv"],
        "summary-is-the-card": [*base, a, "--summary-by", "folder", "--summary-out", str(model) + ".json"],
        "output-is-the-signature": [*base, a, "-o", str(model) + ".sig"],
        "state-is-the-model": [*base, "--watch", watch, "-o", tmp_path / "r.csv", "--state", model],
        "heartbeat-is-an-image-in-the-watched-folder": [*base, "--watch", watch, "-o", tmp_path / "r.csv",
                                                        "--heartbeat", watch / "beat.png"],
        "output-is-the-summary": [*base, a, "-o", tmp_path / "r.csv", "--summary-by", "folder",
                                  "--summary-out", tmp_path / "r.csv"],
        "output-is-an-input-by-another-name": [*base, a, b, "-o", tmp_path / "hard.csv"],
    }[case]
    before = snapshot(tmp_path)
    r = run_edge(*args, timeout=60)
    assert r.returncode == 2, r.stderr
    line = one_line_error(r)
    assert "Traceback" not in r.stderr and "classified" not in line.split("(nothing")[0], line
    assert snapshot(tmp_path) == before  # not a byte written, no temporary file left
    assert not list(tmp_path.rglob("*.part"))


def test_a_second_writer_of_a_results_file_is_refused(tiny_models, tmp_path):
    from leukedge.edge.files import WriterLock

    model = tiny_models["float32"]
    a = write_image(tmp_path / "a.bmp", size=(64, 64), fmt="BMP", seed=1)
    out = tmp_path / "rows.csv"
    held = WriterLock(out).acquire()  # what another edge-classify writing `out` holds
    try:
        r = run_edge("-m", model, "--format", "csv", a, "-o", out)
        assert r.returncode == 2 and f"in use by another edge-classify (pid {os.getpid()})" in one_line_error(r)
        assert not out.exists()
    finally:
        held.release()
    assert run_edge("-m", model, "--format", "csv", a, "-o", out).returncode == 0
    # a watcher holds its results file: a batch, or a second watcher with its own journal, is refused
    watch = tmp_path / "w"
    watch.mkdir()
    proc = subprocess.Popen([*EDGE, "-m", str(model), "--format", "csv", "--watch", str(watch), "-o", str(out),
                             "--state", str(tmp_path / "a.journal")], stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        while "watching" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        rows_before = out.read_text()
        second = run_edge("-m", model, "--format", "csv", "--watch", watch, "-o", out, "--state", tmp_path / "b.journal")
        batch = run_edge("-m", model, "--format", "csv", a, "-o", out)
        for r in (second, batch):
            assert r.returncode == 2 and f"pid {proc.pid}" in one_line_error(r)
        assert out.read_text() == rows_before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


# -- 2. writes that fail are retried without duplicating ---------------------------------------------


def test_a_row_write_that_fails_is_never_written_twice(tmp_path):
    out = tmp_path / "rows.jsonl"
    sink = AppendFileSink(out, fsync_interval=3600)
    w = RowWriter("json", sink, MODEL)
    w.write(make_row("a.bmp", MODEL, label="hem", p_all=0.1))
    full = DevFull(sink._fh)
    try:
        for _ in range(3):  # the watcher retries every 2 s while the disk is full
            with pytest.raises(OutputError, match="No space left"):
                w.write(make_row("b.bmp", MODEL, label="all", p_all=0.9))
    finally:
        full.free()
    w.write(make_row("b.bmp", MODEL, label="all", p_all=0.9))
    w.write(make_row("c.bmp", MODEL, label="hem", p_all=0.2))
    w.close()
    assert [r["path"] for r in read_rows(out, "json")] == ["a.bmp", "b.bmp", "c.bmp"]


def test_a_journal_append_that_fails_is_never_written_twice(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    journal = Journal(tmp_path / "j.journal", folder, MODEL, None, "json").open()
    first = Record("a.bmp", 10, 1, 2, 3, "00", "ok")
    second = Record("b.bmp", 11, 1, 2, 3, "11", "ok")
    journal.append(first)
    full = DevFull(journal._fh)
    try:
        for _ in range(3):
            with pytest.raises(JournalError, match="No space left"):
                journal.append(second)
    finally:
        full.free()
    journal.append(second)
    journal.close()
    assert [r["p"] for r in journal_records(tmp_path / "j.journal")] == ["a.bmp", "b.bmp"]


def test_watch_on_a_full_disk_keeps_every_cell_once_and_a_restart_redoes_none(tmp_path):
    """The issue's run: results and journal on a disk that is full while cells arrive, then freed."""
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out.jsonl"
    run = Run(folder, out)
    fulls = [DevFull(run.sink._fh), DevFull(run.journal._fh)]
    try:
        for i in range(5):
            (folder / f"c{i}.bmp").write_bytes(image_bytes(tmp_path, 200 + i))
        assert wait_for(lambda: any("No space left" in m for m in run.logs))
        time.sleep(0.6)  # several 0.1-s retries while full
        assert run.rows() == []
        for f in fulls:
            f.free()
        for i in range(5, 7):
            (folder / f"c{i}.bmp").write_bytes(image_bytes(tmp_path, 200 + i))
        assert wait_for(lambda: len(run.rows()) == 7)
        time.sleep(0.5)
    finally:
        for f in fulls:
            f.free()
        run.close()
    rows = run.rows()
    assert sorted(Path(r["path"]).name for r in rows) == [f"c{i}.bmp" for i in range(7)]
    data = out.read_bytes()
    records = journal_records(default_journal_path(out))
    assert sorted(r["p"] for r in records) == [f"c{i}.bmp" for i in range(7)]  # one record per row, no stale ones
    for r in records:  # what the journal records is exactly what is in the file
        assert zlib.crc32(data[r["o"]: r["o"] + r["n"]]) == r["k"]
    run2 = Run(folder, out)
    time.sleep(1.0)
    run2.close()
    assert len(run2.rows()) == 7
    assert not [n for n in run2.journal.notes if "removed" in n or "not in" in n], run2.journal.notes


# -- 3. SIGHUP ----------------------------------------------------------------------------------------


def test_sighup_stops_a_watcher_like_sigterm_and_exits_129(tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    out, beat = tmp_path / "rows.jsonl", tmp_path / "beat.json"
    proc = subprocess.Popen([*EDGE, "-m", str(tiny_models["float32"]), "--format", "json", "--watch", str(folder),
                             "-o", str(out), "--heartbeat", str(beat), "--settle", "0.2", "--poll-interval", "0.05"],
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    while "watching" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    write_image(folder / "cell.png", size=(64, 64), fmt="PNG", seed=4)
    assert wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 1, 30)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "stopped by SIGHUP; 1 classified" in err and "Traceback" not in err
    assert json.loads(beat.read_text())["state"] == "stopped"
    assert len(read_rows(out, "json")) == 1


# -- 4. the start-up window ---------------------------------------------------------------------------


def test_cells_written_while_the_model_loads_are_classified(tiny_models, tmp_path, monkeypatch, capsys):
    from leukedge.edge import cli
    from leukedge.edge.app import loading

    folder = tmp_path / "w"
    write_image(folder / "old.bmp", size=(64, 64), fmt="BMP", seed=5)  # there before the start: not classified
    out = tmp_path / "rows.jsonl"
    real_load = loading.load

    def slow_load(*a, **k):  # the microscope writes while the model loads and tests itself
        for i in range(3):
            write_image(folder / f"new{i}.bmp", size=(64, 64), fmt="BMP", seed=10 + i)
        return real_load(*a, **k)

    watchers = []

    class Recorded(ingest.Watcher):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            watchers.append(self)

    def stop_when_done():
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, 60)
        time.sleep(0.5)  # long enough for a wrong fourth row to show
        wait_for(lambda: watchers, 60)
        watchers[0].stop.set()

    monkeypatch.setattr(loading, "load", slow_load)
    monkeypatch.setattr(ingest, "Watcher", Recorded)
    stopper = threading.Thread(target=stop_when_done, daemon=True)
    stopper.start()
    with pytest.raises(SystemExit) as done:
        cli.main(["-m", str(tiny_models["float32"]), "--format", "json", "--watch", str(folder), "-o", str(out),
                  "--settle", "0.2", "--poll-interval", "0.05", "--workers", "1"])
    stopper.join(5)
    err = capsys.readouterr().err
    assert done.value.code == 0, err
    assert sorted(Path(r["path"]).name for r in read_rows(out, "json")) == ["new0.bmp", "new1.bmp", "new2.bmp"]


# -- 5. inotify overflow -------------------------------------------------------------------------------


class _Deaf:
    """An observer that has stopped delivering events (its queue overflowed): only stop/join are called."""

    def stop(self):
        pass

    def join(self, timeout=None):
        pass


def test_lost_inotify_events_trigger_an_immediate_sweep(tmp_path, monkeypatch):
    from watchdog.events import EventsLostEvent

    def deaf_observer(self):
        self._handler = self._make_handler()
        self._observer = _Deaf()

    monkeypatch.setattr(ingest.Watcher, "_start_observer", deaf_observer)
    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl", mode="inotify")
    run.watcher.opts.full_scan_interval = 3600.0  # the next scheduled sweep is an hour away
    try:
        for i in range(3):
            (folder / f"c{i}.bmp").write_bytes(image_bytes(tmp_path, 300 + i))
        time.sleep(1.0)
        assert run.rows() == []  # their events were lost
        run.watcher._handler.dispatch(EventsLostEvent(str(folder), is_directory=True))
        assert wait_for(lambda: len(run.rows()) == 3, 5)
        assert any("inotify lost events" in m for m in run.logs) and run.watcher.lost_events == 1
    finally:
        run.close()


# -- 6. coarse clocks ------------------------------------------------------------------------------------


def _fat_clock(monkeypatch):
    """Every stamp the watcher sees truncated to an even second, as FAT stores them (ctime included)."""
    real = ingest.Identity.of.__func__

    def of(cls, st):
        ident = real(cls, st)
        two = 2_000_000_000
        return cls(ident.size, ident.mtime_ns // two * two, ident.ino, ident.ctime_ns // two * two)

    monkeypatch.setattr(ingest.Identity, "of", classmethod(of))


@pytest.mark.parametrize("mode", ["poll", "inotify"])
def test_a_rewrite_within_the_same_clock_tick_is_read_again(tmp_path, monkeypatch, mode):
    _fat_clock(monkeypatch)
    folder = tmp_path / "in"
    folder.mkdir()
    first, second = image_bytes(tmp_path, 400), image_bytes(tmp_path, 401)
    assert len(first) == len(second) and first != second
    run = Run(folder, tmp_path / "out.jsonl", mode=mode, settle=0.1)
    try:
        for attempt in range(3):  # both writes must fall in one 2-s tick
            while time.time() % 2.0 > 0.1:
                time.sleep(0.01)
            cell = folder / f"cell{attempt}.bmp"
            tick = time.time() // 2.0
            cell.write_bytes(first)
            assert wait_for(lambda: len(by_path(run.rows()).get(cell.name, [])) == 1, 5)
            with open(cell, "r+b") as fh:  # the capture software rewrites it in place, same size
                fh.write(second)
            if time.time() // 2.0 == tick:
                break
        assert wait_for(lambda: len(by_path(run.rows()).get(cell.name, [])) == 2, 5)
        again = by_path(run.rows())[cell.name][1]
        assert again["reread"] is True and again["p_all"] != by_path(run.rows())[cell.name][0]["p_all"]
    finally:
        run.close()


def test_the_racy_check_costs_nothing_on_unchanged_files(tmp_path, monkeypatch, capsys):
    """10,000 unchanged files: a sweep of clean records hashes none; racy ones are hashed once, then clean."""
    folder = tmp_path / "in"
    folder.mkdir()
    n = 10_000
    for i in range(n):
        (folder / f"c{i:05d}.bmp").write_bytes(b"BM" + i.to_bytes(4, "little") * 16)
    run = Run(folder, tmp_path / "out.jsonl", mode="poll")
    run.stop.set()
    run.thread.join(10)
    w = run.watcher
    old = time.time_ns() - 10 * 1_000_000_000
    for rel, st in w._list(False):  # each read well after its last change: clean
        ident = ingest.Identity.of(st)
        w.known[rel] = Record(rel, ident.size, ident.mtime_ns, ident.ino, ident.ctime_ns,
                              ingest.content_hash(folder / rel), "ok", read_ns=max(ident.mtime_ns, old) + 3_000_000_000)
    hashes = []
    real_hash = ingest.content_hash
    monkeypatch.setattr(ingest, "content_hash", lambda p: hashes.append(p) or real_hash(p))
    t0 = time.perf_counter()
    w._full_scan()
    clean = time.perf_counter() - t0
    assert hashes == [] and not w.pending and not w.racy
    for rel, rec in list(w.known.items()):  # now every one was read right at its mtime
        w.known[rel] = Record(rec.path, rec.size, rec.mtime_ns, rec.ino, rec.ctime_ns, rec.hash, rec.status,
                              read_ns=rec.mtime_ns)
    t0 = time.perf_counter()
    w._full_scan()
    racy = time.perf_counter() - t0
    assert len(hashes) == n and not w.pending and not w.racy  # hashed once; clean again (their mtimes are old)
    t0 = time.perf_counter()
    w._full_scan()
    after = time.perf_counter() - t0
    assert len(hashes) == n
    run.sink.close()
    run.journal.close()
    with capsys.disabled():
        print(f"\n[racy-clean cost, {n} unchanged files] sweep {clean * 1e3:.0f} ms with clean records; "
              f"{racy * 1e3:.0f} ms when all were racy (one hash each); {after * 1e3:.0f} ms after")


# -- 7. every file in a folder gets a row or a counted skip -------------------------------------------


def test_every_file_in_a_folder_gets_a_row_or_a_counted_skip(tiny_models, tmp_path):
    folder = tmp_path / "in"
    src = write_image(tmp_path / "src.jpg", size=(64, 64), fmt="JPEG", seed=6).read_bytes()
    for name in ("a.jfif", "b.jpe", "c.JFIF", "d.jpg"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(src)
    (folder / "notes.txt").write_text("sample 12")
    (folder / "._d.jpg").write_bytes(b"\0\5\26\7")
    os.mkfifo(folder / "pipe.png")
    r = run_edge("-m", tiny_models["float32"], "--format", "json", folder)
    assert r.returncode == 0, r.stderr
    assert sorted(Path(json.loads(x)["path"]).name for x in r.stdout.splitlines()) == ["a.jfif", "b.jpe", "c.JFIF", "d.jpg"]
    said = [line for line in r.stderr.splitlines() if "skipped 3 files" in line]
    assert len(said) == 1 and "notes.txt" in said[0] and "._d.jpg" in said[0] and "pipe.png" in said[0], r.stderr
    assert "4 classified, 0 failed, 0 internal errors, 0 re-reads, 3 skipped (1 a temporary or OS metadata file, " \
           "1 not a regular file, 1 not an image file name)" in r.stderr


def test_a_watched_folder_counts_what_it_skips_and_reads_jfif(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl")
    try:
        jpeg = image_bytes(tmp_path, 500, fmt="JPEG")
        (folder / "a.jfif").write_bytes(jpeg)
        (folder / "b.jpe").write_bytes(jpeg)
        for i in range(3):
            (folder / f"log{i}.txt").write_text("x")
        assert wait_for(lambda: len(run.rows()) == 2)
        assert wait_for(lambda: json.loads((tmp_path / "out.jsonl.heartbeat").read_text())["skipped"]
                        == {"not an image file name": 3})
        assert sum("skipped: not an image file name" in m for m in run.logs) == 1  # one line per kind
    finally:
        run.close()


# -- 8. model and runtime failures are one line -------------------------------------------------------


class _NumpyTwoInterpreter:
    """What tflite-runtime 2.14 does under NumPy 2: NumPy prints its ABI warning and a traceback, then
    Interpreter(...) raises SystemError."""

    def __init__(self, model_path, num_threads):
        sys.stderr.write("A module that was compiled using NumPy 1.x cannot be run in\nNumPy 2.1.0 as it may crash."
                         "\nTraceback (most recent call last):\n  File \"x.py\", line 1\n")
        try:
            raise ImportError("numpy.core.multiarray failed to import")
        except ImportError:
            raise SystemError("<built-in method CreateWrapperFromFile of PyCapsule object at 0x7f00> returned a "
                              "result with an exception set")


def test_tflite_runtime_under_numpy_2_is_one_line_naming_the_fix(tmp_path, capfd):
    from leukedge.edge.runtime import ModelError, Runtime
    from leukedge.edge.runtime_tflite import open_interpreter

    with pytest.raises(ModelError) as err:
        open_interpreter(tmp_path / "m.tflite", 1, Runtime("tflite-runtime", "2.14.0", _NumpyTwoInterpreter))
    msg = str(err.value)
    assert "\n" not in msg and "m.tflite" in msg and "pip install 'numpy<2'" in msg
    assert "Traceback" not in capfd.readouterr().err


class _Float16Interpreter:
    """A model whose input and output tensors are float16 (the Classifier's interface is float32)."""

    def __init__(self, model_path, num_threads, dtype=np.float16):
        self.dtype, self.fed = dtype, None

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [{"index": 0, "shape": np.array([1, 64, 64, 3]), "dtype": self.dtype, "quantization": (0.0, 0)}]

    def get_output_details(self):
        return [{"index": 1, "shape": np.array([1, 2]), "dtype": self.dtype, "quantization": (0.0, 0)}]

    def set_tensor(self, index, x):
        self.fed = x

    def invoke(self):
        pass

    def get_tensor(self, index):
        p = float(self.fed.astype(np.float32).mean() > 0)
        return np.array([[1 - p, p]], dtype=self.dtype)


def test_float16_tensors_run_and_other_types_are_refused_in_one_line(tiny_models, tmp_path, synth_arrays):
    from leukedge.edge.card import load_card_for_model
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.runtime import ModelError, Runtime
    from leukedge.edge.runtime_tflite import TFLiteBackend

    model = tiny_models["float32"]
    backend = TFLiteBackend(model, 1, Runtime("litert", "x", _Float16Interpreter))
    assert backend.input_dtype == np.float32 and backend.output_dtype == np.float32
    clf = Classifier(model, load_card_for_model(model), backend=backend)
    pred = clf.predict_one(synth_arrays[2][0])
    assert pred.ok and pred.label in ("all", "hem") and backend.interpreter.fed.dtype == np.float16

    class Int16(_Float16Interpreter):
        def __init__(self, model_path, num_threads):
            super().__init__(model_path, num_threads, np.int16)

    with pytest.raises(ModelError, match="input tensor is int16; leukedge runs models whose input and output"):
        TFLiteBackend(model, 1, Runtime("litert", "x", Int16))


def test_a_second_worker_that_cannot_be_made_leaves_one_line_and_one_worker(tiny_models, synth_arrays, monkeypatch,
                                                                           capsys):
    from leukedge.edge import cli, classifier

    real_init = classifier.Classifier.__init__
    made = []

    def init(self, *a, **k):
        made.append(1)
        if len(made) == 2:
            raise MemoryError  # the second interpreter does not fit
        real_init(self, *a, **k)

    monkeypatch.setattr(classifier.Classifier, "__init__", init)
    paths = synth_arrays[2][:4]
    with pytest.raises(SystemExit) as done:
        cli.main(["-m", str(tiny_models["float32"]), "--format", "json", "--workers", "2", *paths])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    assert [json.loads(x)["path"] for x in out.out.splitlines()] == list(paths)
    said = [line for line in out.err.splitlines() if "cannot create 2 workers" in line]
    assert len(said) == 1 and "not enough memory" in said[0] and "Traceback" not in out.err


def test_a_worker_thread_that_cannot_start_leaves_one_line_and_every_row(tiny_models, synth_arrays, monkeypatch,
                                                                        capsys):
    from leukedge.edge import cli

    real_start = threading.Thread.start

    def start(self):
        if self.name.startswith("leukedge-worker"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    paths = synth_arrays[2][:5]
    with pytest.raises(SystemExit) as done:
        cli.main(["-m", str(tiny_models["float32"]), "--format", "json", "--workers", "2", *paths])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    assert [json.loads(x)["path"] for x in out.out.splitlines()] == list(paths)
    assert sum("cannot start a worker thread" in line for line in out.err.splitlines()) == 1
    assert "Traceback" not in out.err


def test_the_device_entry_point_holds_openblas_to_one_thread_before_numpy_loads():
    probe = ("import os, sys\nos.environ.pop('OPENBLAS_NUM_THREADS', None)\nimport leukedge.edge.cli\n"
             "print('numpy' in sys.modules, os.environ.get('OPENBLAS_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert r.stdout.split() == ["False", "1"], r.stderr


# -- 9. native library messages: one reader, prefixed, never spliced ----------------------------------


def test_native_stderr_lines_are_prefixed_whole_and_filtered():
    probe = r'''
import os, sys
from leukedge.edge import stderr as native
native.install("edge-classify")
native.add_filter(r"failed call to cuInit")
os.write(2, b"TIFFReadDirectory: half ")
sys.stderr.write("edge-classify: our own line\n")
os.write(2, b"a line\ntempfile.tif: Unknown field with tag 33432\nE0000 failed call to cuInit: UNKNOWN ERROR (303)\n")
native.uninstall()
sys.stderr.write("edge-classify: after\n")
'''
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    lines = r.stderr.splitlines()
    assert sorted(lines) == sorted(["edge-classify: our own line",
                                    "edge-classify: native: TIFFReadDirectory: half a line",
                                    "edge-classify: native: libtiff: Unknown field with tag 33432",
                                    "edge-classify: after"]), r.stderr
    assert lines[-1] == "edge-classify: after"  # uninstall wrote everything still in the pipe first


def _corrupt_deflate_tiff(path: Path) -> Path:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        b, "TIFF", compression="tiff_deflate")
    data = bytearray(b.getvalue())
    for i in range(20, 200):  # the compressed strip: libtiff's ZIPDecode complains on stderr
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def test_libtiff_messages_reach_stderr_prefixed_in_a_batch(tiny_models, tmp_path):
    bad = _corrupt_deflate_tiff(tmp_path / "bad.tif")
    good = write_image(tmp_path / "good.png", size=(64, 64), fmt="PNG", seed=7)
    r = run_edge("-m", tiny_models["float32"], "--format", "json", "--workers", "1", bad, good, bad)
    assert r.returncode == 1
    native = [line for line in r.stderr.splitlines() if "ZIPDecode" in line]
    assert native and all(line.startswith("edge-classify: native: ZIPDecode: ") for line in native), r.stderr
    assert all(line.startswith("edge-classify: ") for line in r.stderr.splitlines()), r.stderr


def test_the_workstation_cli_routes_native_stderr_through_the_same_reader():
    probe = r'''
import os
from leukedge.cli import main

@main.command()
def probe():
    os.write(2, b"I0000 cuda_executor.cc:1001] could not open file to read NUMA node\n")

main(["probe"])
'''
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "leukedge: native: I0000 cuda_executor.cc:1001] could not open file to read NUMA node" in r.stderr.splitlines()


# -- 10. polling cost flat in unchanged files; JSON with bounded depth --------------------------------


def test_a_pending_file_does_not_relist_its_folder_every_tick(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2000):
        (folder / f"old{i:04d}.txt").write_bytes(b"x")
    run = Run(folder, tmp_path / "out.jsonl", mode="poll")
    run.watcher.opts.full_scan_interval = 3600.0
    listings = []
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(folder):
            listings.append(time.monotonic())
        return real_scandir(path)

    monkeypatch.setattr(ingest.os, "scandir", scandir)
    try:
        data = image_bytes(tmp_path, 600, size=(64, 64))
        with open(folder / "slow.bmp", "wb") as fh:  # a writer that keeps the file pending for 1.5 s
            for k in range(6):
                fh.write(data[k * len(data) // 6:(k + 1) * len(data) // 6])
                fh.flush()
                time.sleep(0.25)
        assert wait_for(lambda: len(run.rows()) == 1)
        # 30+ ticks at 0.05 s while it was pending: the folder was listed once for the new name
        # (and at most twice more while its mtime was within a clock tick of the listing)
        assert len(listings) <= 3, len(listings)
    finally:
        run.close()


def test_a_poll_tick_sees_new_subfolders_and_renames_over_old_names_without_a_sweep(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(200):
        (folder / f"old{i:03d}.txt").write_bytes(b"x")
    run = Run(folder, tmp_path / "out.jsonl", mode="poll")
    run.watcher.opts.full_scan_interval = 3600.0  # only the incremental ticks can find anything
    try:
        (folder / "cell.bmp").write_bytes(image_bytes(tmp_path, 700))
        assert wait_for(lambda: len(run.rows()) == 1)
        staged = tmp_path / "staged.bmp"  # saved beside, then renamed over the old name: a new inode
        staged.write_bytes(image_bytes(tmp_path, 701))
        os.replace(staged, folder / "cell.bmp")
        (folder / "a" / "b").mkdir(parents=True)
        (folder / "a" / "b" / "deep.bmp").write_bytes(image_bytes(tmp_path, 702))
        assert wait_for(lambda: len(run.rows()) == 3)
        rows = by_path(run.rows())
        assert rows["cell.bmp"][1]["reread"] is True and len(rows["deep.bmp"]) == 1
        assert run.counts.skipped == {"not an image file name": 200}
        shutil.rmtree(folder / "a")
        for i in range(50):
            (folder / f"old{i:03d}.txt").unlink()
        assert wait_for(lambda: run.counts.skipped == {"not an image file name": 150})
        assert "a/b" not in run.watcher.dirs
    finally:
        run.close()


def test_json_nested_past_the_bound_is_a_parse_error_not_a_recursion_error(tmp_path):
    from leukedge.edge.files import loads_bounded

    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(json.JSONDecodeError, match="nested deeper than 64 levels"):
        loads_bounded(deep)
    assert loads_bounded('{"a": [[["x]]]"]]], "b": "{{{"}') == {"a": [[["x]]]"]]], "b": "{{{"}
    out = tmp_path / "rows.jsonl"
    out.write_text('{"path": "a.bmp", "status": "ok"}\n{"path": ' + deep + "}\n")
    with pytest.raises(ValueError, match="nested deeper"):
        read_rows(out, "json")
    folder = tmp_path / "in"
    folder.mkdir()
    jpath = tmp_path / "j.journal"
    jpath.write_text('{"t": "section", "v": 1, "folder": "%s"}\n{"t": "file", "p": %s}\n' % (folder, deep))
    journal = Journal(jpath, folder, MODEL, None, "json").open()  # the deep line is skipped like a torn one
    journal.close()
    assert journal.known == {}


# == real conditions (slow; mounts need root) ===========================================================


def _mount(args: list[str], mnt: Path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a file system")
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", *args, str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs: small enough to fill in a moment."""
    mnt = tmp_path / "tmpfs"
    _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], mnt)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def one_second_fs(tmp_path):
    """ext4 with 128-byte inodes: whole-second mtime and ctime, like ext3, HFS+ and many network shares."""
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 not installed")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as fh:
        fh.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(image)], check=True, capture_output=True)
    mnt = tmp_path / "ext4"
    _mount(["-o", "loop", str(image)], mnt)
    probe = mnt / "probe"
    probe.write_bytes(b"x")
    assert probe.stat().st_mtime_ns % 1_000_000_000 == 0  # whole seconds indeed
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_up(folder: Path) -> Path:
    """Fill the file system `folder` is on (a filler file written until ENOSPC); returns the filler."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 16, 4096, 512, 64, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                continue
    return filler


class Watching:
    """`edge-classify --watch` in a process, its stderr in a file."""

    def __init__(self, model, folder, out, tmp_path, *extra, tag="w"):
        self.err_path = tmp_path / f"{tag}.stderr"
        self.err_fh = open(self.err_path, "w")
        self.proc = subprocess.Popen([*EDGE, "-m", str(model), "--format", "json", "--watch", str(folder),
                                      "-o", str(out), "--settle", "0.3", "--poll-interval", "0.05",
                                      *map(str, extra)], stdout=subprocess.DEVNULL, stderr=self.err_fh)
        assert wait_for(lambda: "watching" in self.err(), 120), self.err()

    def err(self) -> str:
        return self.err_path.read_text()

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=120)
        self.err_fh.close()
        return code


def _rows(out: Path) -> list[dict]:
    return read_rows(out, "json") if out.exists() else []


def _assert_journal_matches(out: Path, journal: Path) -> None:
    data = out.read_bytes()
    for r in journal_records(journal):
        if "o" in r:
            assert zlib.crc32(data[r["o"]: r["o"] + r["n"]]) == r["k"], r


@pytest.mark.slow
def test_watch_results_on_a_tmpfs_that_fills_up_and_is_freed(tiny_models, tmp_path, small_tmpfs):
    model = tiny_models["float32"]
    folder = tmp_path / "in"
    folder.mkdir()
    out = small_tmpfs / "rows.jsonl"
    sources = [write_image(tmp_path / "src" / f"s{i}.png", size=(40 + i, 40), fmt="PNG", seed=i).read_bytes()
               for i in range(45)]
    w = Watching(model, folder, out, tmp_path, "--heartbeat", tmp_path / "beat.json")
    try:
        filler = fill_up(small_tmpfs)
        for i in range(40):
            (folder / f"c{i:02d}.png").write_bytes(sources[i])
        assert wait_for(lambda: "No space left" in w.err(), 60), w.err()
        time.sleep(5)  # a few 2-s retries while full
        filler.unlink()
        for i in range(40, 45):
            (folder / f"c{i:02d}.png").write_bytes(sources[i])
        assert wait_for(lambda: len(_rows(out)) >= 45, 120), w.err()
        time.sleep(2)
    finally:
        assert w.stop() == 0, w.err()
    names = [Path(r["path"]).name for r in _rows(out)]
    assert sorted(names) == [f"c{i:02d}.png" for i in range(45)]  # 45 cells, 45 rows: none lost, none twice
    _assert_journal_matches(out, default_journal_path(out))
    again = Watching(model, folder, out, tmp_path, tag="restart")
    time.sleep(4)
    assert again.stop() == 0
    assert len(_rows(out)) == 45, again.err()  # the restart classified nothing again
    assert "classified again" not in again.err() and "removed" not in again.err(), again.err()


@pytest.mark.slow
def test_an_inotify_queue_overflow_is_swept_at_once(tiny_models, tmp_path):
    max_queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "rows.jsonl"
    w = Watching(tiny_models["float32"], folder, out, tmp_path, "--full-scan-interval", "3600")
    try:
        w.proc.send_signal(signal.SIGSTOP)  # a busy or swapping board: nobody reads the inotify queue
        for i in range(max(6000, max_queued // 3 + 1000)):  # create + modify + close: 3 events each
            (folder / f"other{i:05d}.txt").write_bytes(b"x")
        for i in range(20):
            write_image(folder / f"cell{i:02d}.png", size=(48, 48), fmt="PNG", seed=i)
        w.proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: len(_rows(out)) == 20, 60), w.err()
        assert "inotify lost events" in w.err()
    finally:
        w.proc.send_signal(signal.SIGCONT)
        w.stop()


@pytest.mark.slow
@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
def test_in_place_rewrites_within_one_second_are_all_read_again(tiny_models, tmp_path, one_second_fs, poll):
    folder = one_second_fs / "in"
    folder.mkdir()
    out = tmp_path / "rows.jsonl"
    first = [write_image(tmp_path / f"a{k}.bmp", size=(64, 64), fmt="BMP", seed=k).read_bytes() for k in range(6)]
    second = [write_image(tmp_path / f"b{k}.bmp", size=(64, 64), fmt="BMP", seed=50 + k).read_bytes()
              for k in range(6)]
    extra = ["--full-scan-interval", "3600"] + (["--poll"] if poll else [])
    w = Watching(tiny_models["float32"], folder, out, tmp_path, *extra)
    rewritten = []
    try:
        for k in range(6):
            while time.time() % 1.0 > 0.05:
                time.sleep(0.005)
            second_now = int(time.time())
            cell = folder / f"cell{k}.bmp"
            cell.write_bytes(first[k])
            assert wait_for(lambda: sum(Path(r["path"]).name == cell.name for r in _rows(out)) == 1, 10), w.err()
            with open(cell, "r+b") as fh:  # rewritten in place, same size, by the capture software
                fh.write(second[k])
            if int(time.time()) == second_now:
                rewritten.append(cell.name)  # same second: size, mtime, inode and ctime all unchanged
        assert len(rewritten) >= 4
        assert wait_for(lambda: all(sum(Path(r["path"]).name == n for r in _rows(out)) == 2 for n in rewritten), 15)
    finally:
        w.stop()
    for name in rewritten:
        a, b = [r for r in _rows(out) if Path(r["path"]).name == name]
        assert b["reread"] is True and a["p_all"] != b["p_all"]


def _run_under_limit(model: Path, images: list, limit_mib: int, workers: int) -> subprocess.CompletedProcess:
    return subprocess.run(["prlimit", f"--as={limit_mib << 20}", *EDGE, "-m", str(model), "--format", "json",
                           "--workers", str(workers), *map(str, images)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_the_memory_floor_of_a_model_is_measured(tiny_models, synth_arrays, variant, capsys):
    """The smallest address-space limit (prlimit --as) under which a batch gives every row, with one and two
    workers. Below it the run may end in one line, or in an abort inside native code that nothing can catch
    (OpenBLAS, the runtime's allocator): the floor is what the README names, not a promise about less."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit not installed")
    model = tiny_models[variant]
    images = synth_arrays[2][:4]
    floors = {}
    for workers in (1, 2):
        low, high = 32, 4096  # MiB: low fails, high works
        assert _run_under_limit(model, images, high, workers).returncode == 0
        while high - low > 4:
            mid = (low + high) // 2
            r = _run_under_limit(model, images, mid, workers)  # (a fallback to one worker is not the floor of two)
            ok = r.returncode == 0 and len(r.stdout.splitlines()) == len(images) and "one worker" not in r.stderr
            low, high = (low, mid) if ok else (mid, high)
        floors[workers] = high
        r = _run_under_limit(model, images, high + 16, workers)  # near the floor, address-space layout varies
        assert r.returncode == 0 and len(r.stdout.splitlines()) == len(images), r.stderr
        for limit in range(64, high, 32):  # below it: one line of ours (or the native library's last words)
            r = _run_under_limit(model, images, limit, workers)
            assert "Traceback" not in r.stderr and r.stdout.count("Traceback") == 0, (limit, r.stderr)
            assert all(line.startswith("edge-classify: ") for line in r.stderr.splitlines()), (limit, r.stderr)
    with capsys.disabled():
        print(f"\n[memory floor, {variant} ({Path(model).stat().st_size >> 10} KiB model)] address space "
              f"(prlimit --as): {floors[1]} MiB with 1 worker, {floors[2]} MiB with 2 workers")


def test_a_watcher_started_on_a_full_disk_appends_its_section_with_its_first_record(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    jpath = tmp_path / "j.journal"
    journal = Journal(jpath, folder, MODEL, None, "json").open()
    journal.append(Record("a.bmp", 10, 1, 2, 3, "00", "ok"))
    journal.close()
    with open(jpath, "ab") as fh:
        fh.write(b'{"t": "file", "p": "torn')  # a crash's half line

    def full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "write_text_atomic", full)  # the compacted rewrite cannot be written
    again = Journal(jpath, folder, MODEL, None, "json").open()
    assert any("not compacted" in n for n in again.notes) and set(again.known) == {"a.bmp"}
    again.append(Record("b.bmp", 11, 1, 2, 3, "11", "ok"))
    again.close()
    lines = [json.loads(line) for line in jpath.read_text().splitlines()]  # every line whole
    assert [d["t"] for d in lines] == ["section", "file", "section", "file"]
    assert [d["p"] for d in lines if d["t"] == "file"] == ["a.bmp", "b.bmp"]
