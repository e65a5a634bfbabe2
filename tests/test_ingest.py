"""Lossless ingest (issue 10): rows, names, the journal and the watcher, with a fast stand-in classifier.

The stand-in decodes with the project's own load_rgb (so truncated and broken files fail as they
do for real) and derives p_all from the pixels, so a changed file gives a different row.
"""

import base64
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import write_image
from leukedge.edge.files import is_ignored_name
from leukedge.edge.app.handling import Counts, Emitter, classify_file
from leukedge.edge.app.identity import content_hash
from leukedge.edge.app.journal import Journal, default_journal_path
from leukedge.edge.app.rows import FIELD_NAMES, ModelInfo, RowFormat, RowWriter, make_row, read_rows
from leukedge.edge.app.sinks import AppendFileSink, OutputError, StreamSink, TempFileSink
from leukedge.edge.app.watcher import Classifying, WatchOptions, Watcher
from leukedge.edge.text import escape_text, unescape_text
from leukedge.edge.preprocess import load_rgb

MODEL = ModelInfo("tiny.tflite", "0123456789ab", "int8", 0.5)


class Pred:
    def __init__(self, path, label=None, p_all=None, error=None, warnings=()):
        self.path, self.label, self.p_all, self.error, self.warnings = path, label, p_all, error, list(warnings)
        self.preprocess_ms = self.invoke_ms = self.total_ms = 1.0

    @property
    def ok(self):
        return self.error is None


class FakeClassifier:
    """predict_one like Classifier's: decodes with load_rgb, ImageError -> error prediction."""

    threshold = 0.5

    def __init__(self, raise_for=None):
        self.raise_for = raise_for or {}
        self.calls = []

    def predict_one(self, path):
        self.calls.append(str(path))
        for key, exc in self.raise_for.items():
            if key in str(path):
                raise exc
        from leukedge.edge.preprocess import ImageError

        try:
            rgb = load_rgb(path, 16)
        except ImageError as exc:
            return Pred(str(path), error=exc.problem)
        p = float(rgb.mean()) / 255.0
        return Pred(str(path), "all" if p >= 0.5 else "hem", p)


def image_bytes(tmp_path, seed, size=(40, 40), fmt="BMP"):
    return write_image(tmp_path / f"src_{seed}.{fmt.lower()}", size=size, fmt=fmt, seed=seed).read_bytes()


# -- names and rows ----------------------------------------------------------------------


NASTY = [b"plain.png", b"tab\there.png", b"new\nline.png", b"cr\rhere.png", b"back\\slash.png", b"\xff\xfe-latin1.png",
         "caf\u00e9.png".encode(), b"quote\",comma.png", b"\\x41literal.png", b"ctl\x01\x7f.png"]


@pytest.mark.parametrize("name", NASTY)
def test_escape_round_trips_any_name_bytes(name):
    s = os.fsdecode(name)
    esc = escape_text(s)
    assert not set(esc) & {"\n", "\r", "\t"}
    assert unescape_text(esc) == name


def test_every_format_keeps_every_name_on_one_line_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    names = [os.fsdecode(n) for n in NASTY] + [os.fsdecode(bytes(rng.integers(1, 256, 12, dtype=np.uint8)).replace(b"/", b"_"))
                                               for _ in range(20)]
    for fmt in ("json", "csv", "text"):
        out = tmp_path / f"rows.{fmt}"
        sink = AppendFileSink(out)
        w = RowWriter(fmt, sink, MODEL)
        for i, n in enumerate(names):
            w.write(make_row(n, MODEL, label="all", p_all=0.7) if i % 2 else make_row(n, MODEL, error="bad\nthing"))
        w.close()
        lines = out.read_bytes().split(b"\n")[:-1]
        assert len(lines) == len(names) + (fmt != "json")  # csv and text start with a header line
        if fmt == "text":
            assert lines[0].startswith(b"# leukedge") and b"sha256 0123456789ab" in lines[0] and b"variant int8" in lines[0]
            got = [unescape_text(line.decode().split("\t")[0]) for line in lines[1:]]
            assert got == [os.fsencode(n) for n in names]
        else:
            rows = read_rows(out, fmt)
            assert [os.fsencode(r["path"]) for r in rows] == [os.fsencode(n) for n in names]
            assert all(r["model_sha256"] == "0123456789ab" and r["variant"] == "int8" for r in rows)
    json_rows = [json.loads(line) for line in (tmp_path / "rows.json").read_text().splitlines()]
    assert "path_b64" in json_rows[5] and base64.b64decode(json_rows[5]["path_b64"]) == NASTY[5]
    assert "path_b64" not in json_rows[0]


def test_one_field_list_is_the_csv_header_and_names_the_model(tmp_path):
    fmt = RowFormat("csv")
    assert fmt.header(MODEL).decode().strip().split(",") == list(FIELD_NAMES)
    for need in ("model_file", "model_sha256", "variant", "threshold", "leukedge_version", "status", "reread",
                 "error_type", "warning", "rows_version"):
        assert need in FIELD_NAMES


def test_ignored_names():
    for n in ("._UID_1.bmp", ".DS_Store", "Thumbs.db", "THUMBS.DB", "desktop.ini", "~$report.xlsx", "a.bmp.part",
              "x.tmp", "y.jpg.crdownload"):
        assert is_ignored_name(n), n
    for n in ("UID_1.bmp", "a.part.bmp", "tmp.png", ".hidden.png"):
        assert not is_ignored_name(n), n


# -- per-file handling ----------------------------------------------------------------------


def test_any_exception_becomes_an_internal_error_row(tmp_path):
    good = tmp_path / "good.bmp"
    good.write_bytes(image_bytes(tmp_path, 1))
    bad = tmp_path / "strip.tif"
    bad.write_bytes(b"II*\0junk")
    clf = FakeClassifier(raise_for={"strip.tif": TypeError("'IFDRational' object cannot be interpreted as an integer")})
    counts = Counts()
    rows = [classify_file(clf, str(p), MODEL) for p in (good, bad, good)]
    for r in rows:
        counts.add(r)
    assert rows[1]["status"] == "internal" and rows[1]["error_type"] == "TypeError" and "IFDRational" in rows[1]["error"]
    assert rows[0]["status"] == rows[2]["status"] == "ok"
    assert (counts.classified, counts.failed, counts.internal) == (2, 0, 1)


def test_strict_quality_turns_warnings_into_failures(tmp_path):
    class Warn(FakeClassifier):
        def predict_one(self, path):
            p = super().predict_one(path)
            p.warnings = ["too dark (mean 3 vs 120)"]
            return p

    f = tmp_path / "a.bmp"
    f.write_bytes(image_bytes(tmp_path, 2))
    lax = classify_file(Warn(), str(f), MODEL)
    strict = classify_file(Warn(), str(f), MODEL, strict_quality=True)
    assert lax["status"] == "ok" and "too dark" in lax["warning"]
    assert strict["status"] == "error" and strict["error_type"] == "QualityWarning" and "too dark" in strict["error"]


# -- batch output file ----------------------------------------------------------------------


def fill_up_after(sink, ok):
    """After `ok` writes, the sink's writes fail with ENOSPC having written half their bytes (a disk
    filling up mid-row, as a real full disk leaves it). Returns a function that frees the space."""
    real = sink._pwrite
    left = [ok]

    def pwrite(data, offset):
        if left[0] <= 0:
            real(data[: len(data) // 2], offset)
            raise OSError(28, "No space left on device")
        left[0] -= 1
        real(data, offset)

    sink._pwrite = pwrite

    def free():
        sink._pwrite = real

    return free


def test_batch_temp_file_keeps_finished_rows_on_full_disk(tmp_path):
    target = tmp_path / "res.jsonl"
    sink = TempFileSink(target)
    assert sink.path.parent == tmp_path and is_ignored_name(sink.path.name) and not target.exists()
    fill_up_after(sink, ok=3)
    w = RowWriter("json", sink, MODEL)
    for i in range(3):
        w.write(make_row(f"f{i}.bmp", MODEL, label="hem", p_all=0.1))
    with pytest.raises(OutputError):
        w.write(make_row("f3.bmp", MODEL, label="hem", p_all=0.1))
    sink.close()
    rows = read_rows(sink.path, "json")
    assert [r["path"] for r in rows] == ["f0.bmp", "f1.bmp", "f2.bmp"]
    assert sink.path.read_bytes().endswith(b"\n")  # the half row was cut back
    assert not target.exists()


# -- watcher ---------------------------------------------------------------------------------


class Run:
    """A Watcher in a thread with a journal and an append-only JSONL output, like `edge-classify --watch -o`."""

    def __init__(self, folder, out, clf=None, model=MODEL, mode="poll", reclassify=False, include_existing=False,
                 settle=0.3, sink=None, empty_timeout=60.0):
        self.out = out
        self.sink = sink or AppendFileSink(out, fsync_interval=0)
        self.journal = Journal(default_journal_path(out), folder, model, out, "json", reclassify).open(self.sink)
        self.counts = Counts()
        self.emitter = Emitter(RowWriter("json", self.sink, model), self.journal, self.counts)
        self.logs = []
        self.clf = clf or FakeClassifier()
        opts = WatchOptions(settle=settle, poll_interval=0.05, mode=mode, include_existing=include_existing,
                            full_scan_interval=0.5, heartbeat=str(out) + ".heartbeat", heartbeat_interval=0.1,
                            retry_interval=0.1, recursive=True, empty_timeout=empty_timeout)
        self.stop = threading.Event()
        self.watcher = Watcher(Classifying(self.clf), folder, self.emitter, model, opts, self.logs.append, self.stop)
        self.watcher.start()
        self.thread = threading.Thread(target=self.watcher.run, kwargs={"started": True}, daemon=True)
        self.thread.start()

    def close(self, clean=True):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if clean:
            self.sink.close()
            self.journal.close()
        else:
            # As after kill -9 (simulated on purpose): no clean close runs, no final fsync. The kernel closes a
            # killed process's files and drops its lock; both files were flushed write by write, so closing
            # the handles here loses nothing that a killed process would have kept, and leaks no file.
            self.journal.release_lock()
            for fh in (self.journal._fh, self.sink._fh):
                if fh is not None:
                    fh.close()

    def rows(self):
        return read_rows(self.out, "json")


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def by_path(rows):
    out = {}
    for r in rows:
        out.setdefault(Path(r["path"]).name, []).append(r)
    return out


@pytest.mark.parametrize("mode", ["poll", "inotify"])
def test_paused_writer_and_overwrite_are_read_again(tmp_path, mode):
    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl", mode=mode)
    try:
        data = image_bytes(tmp_path, 3, size=(64, 64))
        with open(folder / "cell.bmp", "wb") as fh:  # pauses longer than --settle mid-file
            fh.write(data[:3000])
            fh.flush()
            assert wait_for(lambda: len(run.rows()) == 1)
            fh.write(data[3000:])
        assert wait_for(lambda: len(run.rows()) == 2)
        first, second = run.rows()
        assert first["status"] == "error" and "truncated" in first["error"]
        assert second["status"] == "ok" and second["reread"] is True
        # the file's latest row is ok: the run does not fail for the half-written read
        assert wait_for(lambda: run.counts.recovered == 1)
        assert not run.counts.any_failed and "1 failed file(s) classified when read again" in run.counts.summary()
        other = image_bytes(tmp_path, 4, size=(64, 64))
        (folder / "cell.bmp").write_bytes(other)  # overwritten in place
        assert wait_for(lambda: len(run.rows()) == 3)
        third = run.rows()[2]
        assert third["status"] == "ok" and third["reread"] is True and third["p_all"] != second["p_all"]
        time.sleep(1.0)
        assert len(run.rows()) == 3  # nothing read twice
        beat = json.loads((tmp_path / "out.jsonl.heartbeat").read_text())
        assert beat["classified"] == 2 and beat["failed"] == 1 and beat["model_sha256"] == MODEL.model_sha256
    finally:
        run.close()


def test_restart_resumes_without_loss_or_duplicates(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "old.bmp").write_bytes(image_bytes(tmp_path, 5))
    out = tmp_path / "out.jsonl"
    run = Run(folder, out)
    for i in range(3):
        (folder / f"a{i}.bmp").write_bytes(image_bytes(tmp_path, 10 + i))
    assert wait_for(lambda: len(run.rows()) == 3)
    run.close(clean=False)  # as after kill -9: nothing closed
    (folder / "b1.bmp").write_bytes(image_bytes(tmp_path, 20))  # arrives while down
    (folder / "a0.bmp").write_bytes(image_bytes(tmp_path, 21))  # changed while down
    run2 = Run(folder, out)
    (folder / "c1.bmp").write_bytes(image_bytes(tmp_path, 22))
    assert wait_for(lambda: len(run2.rows()) == 6)
    time.sleep(0.8)
    run2.close()
    rows = by_path(run2.rows())
    assert "old.bmp" not in rows  # existed at the first start, without --include-existing
    assert {k: len(v) for k, v in rows.items()} == {"a0.bmp": 2, "a1.bmp": 1, "a2.bmp": 1, "b1.bmp": 1, "c1.bmp": 1}
    assert rows["a0.bmp"][1]["reread"] is True and "reread" not in rows["b1.bmp"][0]


def test_journal_repairs_a_crash_between_journal_and_row(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out.jsonl"
    run = Run(folder, out)
    for i in range(3):
        (folder / f"a{i}.bmp").write_bytes(image_bytes(tmp_path, 30 + i))
    assert wait_for(lambda: len(run.rows()) == 3)
    run.close()
    data = out.read_bytes()
    lines = data.split(b"\n")
    # crash 1: the last row never reached the file, and a torn half line is there instead
    out.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][:40])
    run2 = Run(folder, out)
    assert wait_for(lambda: len(run2.rows()) == 3)
    time.sleep(0.5)
    run2.close()
    rows = run2.rows()
    assert sorted(Path(r["path"]).name for r in rows) == ["a0.bmp", "a1.bmp", "a2.bmp"]
    assert out.read_bytes().endswith(b"\n")
    # crash 2: a row reached the file but its journal line did not (power loss): cut, then redone once
    (folder / "a3.bmp").write_bytes(image_bytes(tmp_path, 40))
    run3 = Run(folder, out)
    assert wait_for(lambda: len(run3.rows()) == 4)
    run3.close()
    jpath = default_journal_path(out)
    jlines = jpath.read_bytes().splitlines()
    jpath.write_bytes(b"\n".join(line for line in jlines if b'"a3.bmp"' not in line) + b"\n")
    run4 = Run(folder, out)
    time.sleep(1.0)
    run4.close()
    names = [Path(r["path"]).name for r in run4.rows()]
    assert names.count("a3.bmp") == 1 and len(names) == 4


def test_model_change_starts_a_section_and_reclassify_redoes(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out.jsonl"
    run = Run(folder, out)
    (folder / "a.bmp").write_bytes(image_bytes(tmp_path, 50))
    assert wait_for(lambda: len(run.rows()) == 1)
    run.close()
    other = ModelInfo("other.tflite", "fedcba987654", "float32", 0.4)
    run2 = Run(folder, out, model=other)
    time.sleep(0.8)
    run2.close()
    assert len(run2.rows()) == 1 and any("model changed" in m for m in run2.journal.notes)
    run3 = Run(folder, out, model=other, reclassify=True)
    assert wait_for(lambda: len(run3.rows()) == 2)
    run3.close()
    assert run3.rows()[1]["model_sha256"] == "fedcba987654"


def test_same_size_and_mtime_but_new_content_is_caught_by_ctime_and_hash(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl")
    try:
        f = folder / "a.bmp"
        f.write_bytes(image_bytes(tmp_path, 60))
        assert wait_for(lambda: len(run.rows()) == 1)
        st = f.stat()
        new = image_bytes(tmp_path, 61)
        assert len(new) == st.st_size
        f.write_bytes(new)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # like cp -p: the old mtime
        assert wait_for(lambda: len(run.rows()) == 2)
        g = folder / "b.bmp"  # a rename of unchanged content is no new content
        shutil.copy(f, tmp_path / "b.bmp")
        os.replace(tmp_path / "b.bmp", g)
        assert wait_for(lambda: len(run.rows()) == 3)
        os.utime(g)  # touch: new mtime, same content -> classified again (mtime is the identity)
        time.sleep(0.2)
        st = g.stat()
        os.chmod(g, 0o600)  # new ctime only: the hash shows the content is the same
        time.sleep(1.0)
        assert content_hash(g) == content_hash(f)
        n = len(run.rows())
        time.sleep(0.6)
        assert len(run.rows()) == n
    finally:
        run.close()


def test_folder_vanishing_is_retried_and_ignored_names_skipped(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl", mode="inotify")
    try:
        shutil.rmtree(folder)
        assert wait_for(lambda: any("is gone" in m for m in run.logs))
        time.sleep(0.3)
        folder.mkdir()
        (folder / "back.bmp").write_bytes(image_bytes(tmp_path, 70))
        (folder / "._back.bmp").write_bytes(b"\0\5\26\7AppleDouble")
        (folder / "back.bmp.part").write_bytes(b"partial")
        assert wait_for(lambda: len(run.rows()) == 1)
        time.sleep(0.5)
        assert [Path(r["path"]).name for r in run.rows()] == ["back.bmp"]
        assert run.thread.is_alive() and any("recovered" in m for m in run.logs)
    finally:
        run.close()


def test_full_disk_in_watch_mode_is_retried_without_loss(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out.jsonl"
    sink = AppendFileSink(out, fsync_interval=0)
    free = fill_up_after(sink, ok=1)
    run = Run(folder, out, sink=sink)
    try:
        for i in range(3):
            (folder / f"f{i}.bmp").write_bytes(image_bytes(tmp_path, 80 + i))
        assert wait_for(lambda: any("No space left" in m for m in run.logs))
        assert len(run.rows()) == 1
        free()  # space again
        assert wait_for(lambda: len(run.rows()) == 3)
        time.sleep(0.5)
        assert sorted(Path(r["path"]).name for r in run.rows()) == ["f0.bmp", "f1.bmp", "f2.bmp"]
        assert not any(r.get("reread") for r in run.rows())  # a failed write is no earlier result
    finally:
        run.close()
    run2 = Run(folder, out)  # the journal agrees with the file: nothing redone
    time.sleep(0.8)
    run2.close()
    assert len(run2.rows()) == 3


def test_internal_error_in_watch_mode_does_not_stop_the_watcher(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    clf = FakeClassifier(raise_for={"boom": TypeError("unexpected")})
    run = Run(folder, tmp_path / "out.jsonl", clf=clf)
    try:
        (folder / "boom.tif").write_bytes(b"II*\0" + b"\0" * 100)
        (folder / "fine.bmp").write_bytes(image_bytes(tmp_path, 90))
        assert wait_for(lambda: len(run.rows()) == 2)
        rows = by_path(run.rows())
        assert rows["boom.tif"][0]["status"] == "internal" and rows["fine.bmp"][0]["status"] == "ok"
        # the watcher counts a file after its row is durable, so the count may trail the row by a moment
        assert wait_for(lambda: run.counts.internal == 1 and run.counts.classified == 1), run.counts
    finally:
        run.close()


def test_stdout_stream_sink_writes_header_once(capsysbinary):
    import io

    buf = io.BytesIO()
    w = RowWriter("csv", StreamSink(buf), MODEL)
    w.write(make_row("a", MODEL, label="hem", p_all=0.2))
    w.write(make_row("b", MODEL, label="hem", p_all=0.2))
    lines = buf.getvalue().decode().splitlines()
    assert lines[0].startswith("path,status") and len(lines) == 3


# -- fuzz: no exception escapes the per-file handling -------------------------------------------------


def _seed_images(tmp_path):
    import io

    from PIL import Image

    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8), "RGB")
    out = {}
    for name, im, fmt, kw in [("bmp", rgb, "BMP", {}), ("png", rgb, "PNG", {}), ("jpg", rgb, "JPEG", {"quality": 80}),
                              ("tif", rgb, "TIFF", {}), ("tif16", Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)), "TIFF", {}),
                              ("png16", Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)), "PNG", {}),
                              ("bmpa", rgb.convert("RGBA"), "BMP", {}), ("tifz", rgb, "TIFF", {"compression": "tiff_deflate"})]:
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        out[name] = b.getvalue()
    return out


def test_fuzzed_headers_never_escape_the_per_file_handling(tmp_path):
    """A few thousand seeded mutations of BMP/PNG/JPEG/TIFF headers: each gives a row, none an internal error."""
    import random

    class Decoder:
        threshold = 0.5

        def predict_one(self, path):
            from leukedge.edge.preprocess import ImageError

            try:
                rgb = load_rgb(path, 16)
            except ImageError as exc:
                return Pred(str(path), error=exc.problem)
            return Pred(str(path), "hem", float(rgb.mean()) / 255.0)

    rng = random.Random(1234)
    seeds = _seed_images(tmp_path)
    clf, counts, internal = Decoder(), Counts(), []
    n = int(os.environ.get("LEUKEDGE_FUZZ_CASES", "2400"))
    for i in range(n):
        kind = rng.choice(sorted(seeds))
        data = bytearray(seeds[kind])
        head = min(len(data), rng.choice([16, 64, 256]))
        for _ in range(rng.randint(1, 6)):
            how = rng.random()
            pos = rng.randrange(min(head, len(data)))
            if how < 0.5:
                data[pos] = rng.randrange(256)
            elif how < 0.8:  # an extreme 16- or 32-bit field
                width = rng.choice([2, 4])
                val = rng.choice([0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
                data[pos: pos + width] = val.to_bytes(4, rng.choice(["little", "big"]))[:width]
            else:
                data = data[: rng.randrange(1, len(data))]
        path = tmp_path / f"case.{kind.rstrip('0123456789az')}"
        path.write_bytes(bytes(data))
        row = classify_file(clf, str(path), MODEL)
        counts.add(row)
        if row["status"] == "internal":
            internal.append((i, kind, row["error"]))
    assert counts.classified + counts.failed + counts.internal == n
    assert counts.failed > n // 4  # the mutations do break files
    assert not internal, f"{len(internal)} internal errors, e.g. {internal[:3]}"


def test_warnings_are_logged_in_watch_mode(tmp_path):
    class Warn(FakeClassifier):
        def predict_one(self, path):
            p = super().predict_one(path)
            p.warnings = ["out of distribution (colour)"]
            return p

    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl", clf=Warn())
    try:
        (folder / "w.bmp").write_bytes(image_bytes(tmp_path, 99))
        assert wait_for(lambda: len(run.rows()) == 1)
        assert run.rows()[0]["warning"] == "out of distribution (colour)"
        assert wait_for(lambda: any("w.bmp: warning: out of distribution" in m for m in run.logs))  # logged after the row
    finally:
        run.close()


def test_inotify_failure_falls_back_to_polling(tmp_path, monkeypatch):
    def broken(self):
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(Watcher, "_start_observer", broken)
    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl", mode="inotify")
    try:
        (folder / "a.bmp").write_bytes(image_bytes(tmp_path, 98))
        assert wait_for(lambda: len(run.rows()) == 1)
        assert run.watcher.opts.mode == "poll" and any("polling instead" in m for m in run.logs)
    finally:
        run.close()


def test_one_watcher_per_journal(tmp_path):
    from leukedge.edge.app.journal import JournalError

    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out.jsonl"
    run = Run(folder, out)
    try:
        with pytest.raises(JournalError, match="in use by another edge-classify"):
            Journal(default_journal_path(out), folder, MODEL, out, "json").open()
    finally:
        run.close()
    Journal(default_journal_path(out), folder, MODEL, out, "json").open().close()  # free again


def test_empty_files_wait_for_their_writer_then_get_an_error_row(tmp_path):
    """A 0-byte file is a writer that has not written yet -- until --empty-timeout says it is an empty file."""
    folder = tmp_path / "in"
    folder.mkdir()
    run = Run(folder, tmp_path / "out.jsonl", empty_timeout=3.0)  # margin for a loaded machine
    try:
        (folder / "empty.bmp").write_bytes(b"")
        (folder / "late.bmp").write_bytes(b"")
        time.sleep(0.8)  # past --settle (0.3 s), within --empty-timeout: no row yet
        assert run.rows() == []
        (folder / "late.bmp").write_bytes(image_bytes(tmp_path, 6))
        assert wait_for(lambda: len(run.rows()) == 2)
        rows = by_path(run.rows())
        assert [r["status"] for r in rows["late.bmp"]] == ["ok"]  # one row: never read while empty
        assert rows["empty.bmp"][0]["status"] == "error" and "empty file" in rows["empty.bmp"][0]["error"]
        assert run.counts.any_failed
    finally:
        run.close()
