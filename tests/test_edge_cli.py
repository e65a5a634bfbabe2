import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import write_image
from leukedge.edge.card import card_path_for

EDGE = [sys.executable, "-m", "leukedge.edge.cli"]


def run_edge(*args, env=None, timeout=120):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([*EDGE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)


def test_classifies_files_and_never_imports_tensorflow(tiny_models, synth_dir, tmp_path):
    bmp = sorted(synth_dir.glob("training_data/*/hem/*.bmp"))[0]
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['edge-classify', '--model', {str(tiny_models['int8'])!r}, '--format', 'json', {str(bmp)!r}]\n"
        "try:\n    runpy.run_module('leukedge.edge.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('TF_IMPORTED=' + str(any(m == 'tensorflow' or m.startswith(('tensorflow.', 'tf_keras', 'keras')) for m in sys.modules)))\n"
        "print('EXIT=' + str(code))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    row = json.loads(lines[0])
    assert row["path"] == str(bmp) and row["label"] in ("all", "hem") and 0 <= row["p_all"] <= 1
    assert "TF_IMPORTED=False" in lines and "EXIT=0" in lines


def test_text_json_csv_and_atomic_output(tiny_models, synth_arrays, tmp_path):
    _, _, paths = synth_arrays
    model = tiny_models["float32"]
    text = run_edge("--model", model, paths[0], paths[1])
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("# leukedge") and "variant float32" in lines[0] and "p_all=" in text.stdout
    out_file = tmp_path / "res" / "out.csv"
    r = run_edge("--model", model, "--format", "csv", "--output", out_file, *paths[:3])
    assert r.returncode == 0 and r.stdout == ""
    with out_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["path"] for row in rows] == paths[:3] and all(row["label"] in ("all", "hem") for row in rows)
    assert not [p for p in out_file.parent.iterdir() if p.name.endswith(".part")]


def test_env_model_threshold_override_and_version(tiny_models, synth_arrays):
    _, _, paths = synth_arrays
    r = run_edge("--format", "json", "--threshold", "0", paths[0], env={"LEUKEDGE_MODEL": str(tiny_models["float32"])})
    assert r.returncode == 0 and json.loads(r.stdout)["label"] == "all"
    v = run_edge("--version")
    assert v.returncode == 0 and "0.1.0" in v.stdout


def test_folders_recursive_and_globs(tiny_models, tmp_path):
    for i, sub in enumerate(["a", "a/b"]):
        write_image(tmp_path / sub / f"cell{i}.png", fmt="PNG", seed=i)
    model = tiny_models["float32"]
    flat = run_edge("--model", model, "--format", "json", tmp_path / "a")
    assert flat.returncode == 0 and len(flat.stdout.splitlines()) == 1
    deep = run_edge("--model", model, "--format", "json", "--recursive", tmp_path / "a")
    assert deep.returncode == 0 and len(deep.stdout.splitlines()) == 2
    pattern = run_edge("--model", model, "--format", "json", str(tmp_path / "**" / "*.png"))
    assert pattern.returncode == 0 and len(pattern.stdout.splitlines()) == 2


def test_batch_goes_on_past_bad_files_and_lists_them(tiny_models, tmp_path, synth_arrays):
    _, _, paths = synth_arrays
    empty = tmp_path / "empty.bmp"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    good = write_image(tmp_path / "t.bmp", size=(64, 64), fmt="BMP")
    trunc = tmp_path / "trunc.bmp"
    trunc.write_bytes(good.read_bytes()[:2000])
    missing = tmp_path / "missing.png"
    no_images = tmp_path / "nothing_here"
    no_images.mkdir()
    r = run_edge("--model", tiny_models["float32"], "--format", "json", paths[0], empty, fake, trunc, missing,
                 no_images, paths[1])
    assert r.returncode == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    ok = [x for x in rows if "error" not in x]
    bad = {x["path"]: x["error"] for x in rows if "error" in x}
    assert {x["path"] for x in ok} == {paths[0], paths[1]}
    assert "empty" in bad[str(empty)] and "not a recognised image" in bad[str(fake)]
    assert "truncated" in bad[str(trunc)] and "no such file" in bad[str(missing)]
    assert "no images" in bad[str(no_images)]
    assert "Traceback" not in r.stderr
    for p in (empty, fake, trunc, missing):
        assert str(p) in r.stderr


def test_model_errors_exit_2_with_one_line(tiny_models, tmp_path, synth_arrays):
    _, _, paths = synth_arrays
    r = run_edge(paths[0])
    assert r.returncode == 2 and "no model" in r.stderr
    copy = tmp_path / "m.tflite"
    shutil.copy(tiny_models["float32"], copy)
    shutil.copy(card_path_for(tiny_models["float32"]), card_path_for(copy))
    with open(copy, "ab") as fh:
        fh.write(b"tamper")
    r = run_edge("--model", copy, paths[0])
    assert r.returncode == 2 and "does not match its card" in r.stderr and "Traceback" not in r.stderr
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"garbage" * 100)
    from helpers import make_card

    make_card(corrupt, 64, "float32", "tflite")
    r = run_edge("--model", corrupt, paths[0])
    assert r.returncode == 2 and "corrupt.tflite" in r.stderr and "Traceback" not in r.stderr
    card = json.loads(card_path_for(tiny_models["float32"]).read_text())
    del card["labels"]
    shutil.copy(tiny_models["float32"], tmp_path / "nolabels.tflite")
    card["model"]["file"] = "nolabels.tflite"
    card_path_for(tmp_path / "nolabels.tflite").write_text(json.dumps(card))
    r = run_edge("--model", tmp_path / "nolabels.tflite", paths[0])
    assert r.returncode == 2 and "labels" in r.stderr


def test_watch_classifies_new_images_and_stops_cleanly(tiny_models, tmp_path):
    watch = tmp_path / "incoming"
    watch.mkdir()
    write_image(watch / "old.png", fmt="PNG")
    proc = subprocess.Popen([*EDGE, "--model", str(tiny_models["float32"]), "--format", "json", "--watch", str(watch),
                             "--poll-interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = ""
        while "watching" not in started:  # the watcher lists what exists first; write only after that
            line = proc.stderr.readline()
            assert line, "watcher exited before it started watching"
            started += line
        # written in two steps, as a slow microscope writer would: it must not be read half-written
        data = write_image(tmp_path / "staging.bmp", size=(80, 80), fmt="BMP").read_bytes()
        target = watch / "new.bmp"
        with open(target, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(0.5)
            fh.write(data[len(data) // 2:])
        (watch / "broken.png").write_text("not an image")
        time.sleep(4.0)  # several polls: both files settle and are classified
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        err = started + err
    rows = [json.loads(line) for line in out.splitlines()]
    paths = {Path(r["path"]).name: r for r in rows}
    assert "old.png" not in paths
    assert paths["new.bmp"]["label"] in ("all", "hem")
    assert "error" in paths["broken.png"]
    assert proc.returncode == 1 and "stopped" in err and "Traceback" not in err


# -- issue 10: no single input ends a run; outputs survive; names round-trip ---------------------------


def _strip_offsets_tiff(path: Path) -> Path:
    """The repro's TIFF: StripOffsets (tag 273) typed RATIONAL instead of LONG."""
    import io as _io
    import struct

    from PIL import Image

    b = _io.BytesIO()
    Image.new("RGB", (8, 8)).save(b, "TIFF")
    b = bytearray(b.getvalue())
    ifd = struct.unpack_from("<I", b, 4)[0]
    for i in range(struct.unpack_from("<H", b, ifd)[0]):
        p = ifd + 2 + 12 * i
        if struct.unpack_from("<H", b, p)[0] == 273:
            struct.pack_into("<H", b, p + 2, 5)
    path.write_bytes(bytes(b))
    return path


def test_tiff_typeerror_repro_does_not_end_the_batch(tiny_models, synth_arrays, tmp_path):
    _, _, paths = synth_arrays
    bad = _strip_offsets_tiff(tmp_path / "bad.tif")
    out = tmp_path / "out.jsonl"
    r = run_edge("--model", tiny_models["int8"], "--format", "json", paths[0], bad, paths[1], "-o", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["path"] for row in rows] == [paths[0], str(bad), paths[1]]
    assert rows[0]["status"] == rows[2]["status"] == "ok" and rows[1]["status"] in ("error", "internal")
    assert "1 failed" in r.stderr or "1 internal" in r.stderr


def test_any_exception_from_the_decoder_is_an_internal_error_row(tiny_models, synth_arrays, tmp_path, monkeypatch,
                                                                 capsys):
    import leukedge.edge.classifier as classifier
    from leukedge.edge import cli

    _, _, paths = synth_arrays
    real = classifier.load_rgb

    def exploding(path, *a, **k):
        if str(path) == paths[1]:
            raise TypeError("'IFDRational' object cannot be interpreted as an integer")
        return real(path, *a, **k)

    monkeypatch.setattr(classifier, "load_rgb", exploding)
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as done:
        cli.main(["--model", str(tiny_models["float32"]), "--format", "csv", "-o", str(out), *paths[:3]])
    err = capsys.readouterr().err
    assert done.value.code == 1, err
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok", "internal", "ok"]
    assert rows[1]["error_type"] == "TypeError" and "IFDRational" in rows[1]["error"]
    assert all(r["model_sha256"] and r["variant"] == "float32" and r["leukedge_version"] for r in rows)
    assert "2 classified, 0 failed, 1 internal errors" in err


def test_full_disk_exits_2_naming_the_temp_file_with_every_finished_row(tiny_models, synth_arrays, tmp_path, monkeypatch,
                                                                        capsys):
    from leukedge.edge import cli
    from leukedge.edge.app import sinks as outputs

    _, _, paths = synth_arrays
    real_init = outputs.TempFileSink.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        real_pwrite, writes = self._pwrite, [0]

        def full(data, offset):
            writes[0] += 1
            if writes[0] > 3:  # the header and two rows fit
                raise OSError(28, "No space left on device")
            real_pwrite(data, offset)

        self._pwrite = full

    monkeypatch.setattr(outputs.TempFileSink, "__init__", init)
    target = tmp_path / "res.csv"
    with pytest.raises(SystemExit) as done:
        cli.main(["--model", str(tiny_models["float32"]), "--format", "csv", "-o", str(target), *paths[:5]])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "No space left" in err and "Traceback" not in err
    temp = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(temp) == 1 and str(temp[0]) in err and not target.exists()
    with temp[0].open(newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == paths[:2]


def test_output_location_is_checked_before_any_work(tiny_models, synth_arrays, tmp_path):
    _, _, paths = synth_arrays
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_edge("--model", tiny_models["float32"], "-o", blocker / "out.csv", paths[0])
    assert r.returncode == 2 and "cannot write results" in r.stderr and "Traceback" not in r.stderr
    assert "classified" not in r.stderr


def test_names_with_newlines_tabs_and_bad_utf8_round_trip(tiny_models, tmp_path):
    from leukedge.edge.app.rows import read_rows
    from leukedge.edge.text import unescape_text

    src = write_image(tmp_path / "src.png", fmt="PNG").read_bytes()
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"new\nline.png", b"tab\tcr\r.png", b"\xff\xfelatin.png", b"ok.png"]
    for n in names:
        with open(os.path.join(os.fsencode(folder), n), "wb") as fh:
            fh.write(src)
    (folder / "._ok.png").write_bytes(b"\0\5\26\7 AppleDouble")  # a macOS sidecar: never an image
    want = sorted(os.path.join(os.fsencode(folder), n) for n in names)
    for fmt in ("csv", "json", "text"):
        out = tmp_path / f"out.{fmt}"
        r = subprocess.run([*EDGE, "--model", str(tiny_models["float32"]), "--format", fmt, "-o", str(out), str(folder)],
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        if fmt == "text":
            lines = out.read_bytes().decode().splitlines()[1:]
            got = [unescape_text(line.split("\t")[0]) for line in lines]
        else:
            got = [os.fsencode(row["path"]) for row in read_rows(out, fmt)]
        assert sorted(got) == want, fmt


def _watch_proc(model, folder, *extra):
    proc = subprocess.Popen([*EDGE, "--model", str(model), "--format", "json", "--watch", str(folder),
                             "--poll-interval", "0.1", "--settle", "0.5", *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = b""
    while b"watching" not in started:
        line = proc.stderr.readline()
        assert line, "watcher exited before it started watching: " + started.decode(errors="replace")
        started += line
    proc.started = started
    return proc


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_watch_pause_repro_file_is_read_again_when_complete(tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = write_image(tmp_path / "big.bmp", size=(200, 200), fmt="BMP").read_bytes()
    proc = _watch_proc(tiny_models["float32"], folder, "-o", tmp_path / "rows.jsonl")
    try:
        with open(folder / "cell.bmp", "wb") as fh:
            fh.write(data[:30000])
            fh.flush()
            time.sleep(2.0)  # longer than --settle
            fh.write(data[30000:])
        time.sleep(2.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    rows = _jsonl(tmp_path / "rows.jsonl")
    assert rows[-1]["status"] == "ok" and rows[-1]["path"].endswith("cell.bmp")
    assert all(r["status"] == "error" for r in rows[:-1]) and len(rows) <= 2
    assert rows[-1].get("reread") is (len(rows) == 2 or None)


def test_watch_restart_repro_kill_9_then_resume(tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out.jsonl"
    img = write_image(tmp_path / "src.png", fmt="PNG")
    proc = _watch_proc(tiny_models["float32"], folder, "-o", out)
    for i in range(3):
        shutil.copy(img, folder / f"a{i}.png")
    deadline = time.time() + 20
    while time.time() < deadline and (not out.exists() or len(_jsonl(out)) < 3):
        time.sleep(0.2)
    proc.kill()
    proc.communicate()  # reaps it and closes its pipes
    assert len(_jsonl(out)) == 3
    shutil.copy(img, folder / "b1.png")  # arrives while the watcher is down
    proc = _watch_proc(tiny_models["float32"], folder, "-o", out)
    try:
        shutil.copy(img, folder / "c1.png")
        deadline = time.time() + 20
        while time.time() < deadline and len(_jsonl(out)) < 5:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    names = sorted(Path(r["path"]).name for r in _jsonl(out))
    assert names == ["a0.png", "a1.png", "a2.png", "b1.png", "c1.png"], names
    assert b"resuming" in proc.started and proc.returncode == 0
    beat = json.loads(out.with_name("out.jsonl.heartbeat").read_text())
    assert beat["state"] == "stopped" and beat["classified"] == 2


def test_watch_folder_vanishes_repro_watcher_keeps_going(tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    proc = _watch_proc(tiny_models["float32"], folder)
    try:
        folder.rmdir()
        time.sleep(2.0)
        folder.mkdir()
        time.sleep(1.0)
        write_image(folder / "after.png", fmt="PNG")
        time.sleep(2.5)
        assert proc.poll() is None, "the watcher died when its folder vanished"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["after.png"] and rows[0]["status"] == "ok"
    assert b"is gone" in err and b"Traceback" not in err


def test_throughput_layout_gives_the_same_rows_in_input_order(tiny_models, synth_arrays, tmp_path):
    _, _, paths = synth_arrays
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    inputs = [*paths[:9], bad, *paths[9:20]]
    outs = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}.jsonl"
        r = run_edge("--model", tiny_models["int8"], "--format", "json", "--workers", workers, "-o", out, *inputs)
        assert r.returncode == 1, r.stderr
        assert (f"{workers} workers" in r.stderr) == (workers > 1)
        outs[workers] = [json.loads(line) for line in out.read_text().splitlines()]
    key = lambda rows: [(x["path"], x["status"], x.get("label"), x.get("p_all")) for x in rows]  # noqa: E731
    assert key(outs[1]) == key(outs[3]) and [x["path"] for x in outs[3]] == [str(p) for p in inputs]


def test_signature_and_self_test_flags(tiny_models, synth_arrays, tmp_path):
    from leukedge.edge.signature import generate_keypair, sign_model

    _, _, paths = synth_arrays
    model = tmp_path / "m.tflite"
    shutil.copy(tiny_models["float32"], model)
    from leukedge.edge.card import card_path_for

    card = json.loads(card_path_for(tiny_models["float32"]).read_text())
    card["model"]["file"] = model.name
    card_file = card_path_for(model)
    card_file.write_text(json.dumps(card))
    r = run_edge("--model", model, paths[0])
    assert r.returncode == 0 and r.stderr.splitlines()[0].startswith("edge-classify: unsigned")
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    sign_model(model, None, tmp_path / "k.pem")
    ok = run_edge("--model", model, "--require-signature", tmp_path / "k.pub", paths[0])
    assert ok.returncode == 0, ok.stderr
    card["threshold"] = 0.01  # an edited card
    card_file.write_text(json.dumps(card))
    bad = run_edge("--model", model, "--require-signature", tmp_path / "k.pub", paths[0])
    assert bad.returncode == 2 and "changed since it was signed" in bad.stderr and "Traceback" not in bad.stderr
    st = run_edge("--model", tiny_models["float32"], "--self-test")
    assert st.returncode == 2 and "self-test FAILED" in st.stderr and "golden" in st.stderr  # a model error


def test_runtime_import_failure_is_one_line_naming_the_fix(tiny_models, synth_arrays, tmp_path):
    """The 32-bit Pi case: no LiteRT wheel, tflite-runtime built for NumPy 1 under NumPy 2 (two tracebacks before)."""
    _, _, paths = synth_arrays
    fake = tmp_path / "fake"
    for pkg, body in {
        "ai_edge_litert": "raise ModuleNotFoundError(\"No module named 'ai_edge_litert'\")",
        "tflite_runtime": ("import sys, traceback\n"
                           "sys.stderr.write('A module that was compiled using NumPy 1.x cannot be run in NumPy 2.0.0\\n')\n"
                           "traceback.print_stack()\n"
                           "raise AttributeError('_ARRAY_API not found')"),
        "tensorflow": "raise ModuleNotFoundError(\"No module named 'tensorflow'\")",
    }.items():
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text(body + "\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    r = run_edge("--model", tiny_models["float32"], paths[0], env=env)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "pip install 'numpy<2'" in errors[0]
    assert "Traceback" not in r.stderr and "File \"" not in r.stderr


def test_per_sample_summary_equals_a_hand_count(tiny_models, synth_arrays, tmp_path):
    """--summary-by folder: per folder, cells classified, flagged, failures — counted here by hand from the
    per-cell rows of the same run — plus the Wilson interval and the card-corrected fraction."""
    _, _, paths = synth_arrays
    for i, p in enumerate(paths[:7]):
        sub = "patient_a" if i < 4 else "patient_b"
        (tmp_path / sub).mkdir(exist_ok=True)
        shutil.copy(p, tmp_path / sub / f"cell{i}.bmp")
    (tmp_path / "patient_b" / "broken.bmp").write_bytes(b"BM not really")
    out = tmp_path / "summary.json"
    r = run_edge("--model", tiny_models["float32"], "--format", "json", "-r", "--summary-by", "folder",
                 "--summary-out", out, tmp_path / "patient_a", tmp_path / "patient_b")
    assert r.returncode == 1 and "per-sample summary" in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    summary = {g["group"]: g for g in json.loads(out.read_text())["groups"]}
    summary = {Path(k).name: g for k, g in summary.items()}  # groups are whole folder paths
    for folder in ("patient_a", "patient_b"):
        mine = [x for x in rows if f"/{folder}/" in x["path"]]
        ok = [x for x in mine if x.get("status") == "ok"]
        flagged = sum(x["label"] == "all" for x in ok)
        g = summary[folder]
        assert g["cells"] == len(ok) and g["flagged"] == flagged and g["failures"] == len(mine) - len(ok)
        assert g["flagged_low"] <= flagged / len(ok) <= g["flagged_high"]
    assert summary["patient_b"]["failures"] == 1
    bad = run_edge("--model", tiny_models["float32"], "--summary-by", "(unclosed", paths[0])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    bad_out = run_edge("--model", tiny_models["float32"], "--summary-out", tmp_path / "s.txt", paths[0])
    assert bad_out.returncode == 2 and ".json or .csv" in bad_out.stderr
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    nowhere = run_edge("--model", tiny_models["float32"], "--summary-out", blocked / "s.json", paths[0])
    assert nowhere.returncode == 2 and "cannot write the summary there" in nowhere.stderr and not nowhere.stdout


def test_output_refuses_special_files_and_follows_symlinks(tiny_models, synth_arrays, tmp_path):
    _, _, paths = synth_arrays
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run_edge("--model", tiny_models["float32"], "-o", fifo, paths[0])
    assert r.returncode == 2 and "not a regular file" in r.stderr and fifo.exists() and not fifo.is_file()
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    ok = run_edge("--model", tiny_models["float32"], "--format", "csv", "-o", link, paths[0])
    assert ok.returncode == 0 and link.is_symlink() and paths[0] in target.read_text()


def test_float_images_with_a_declared_value_range(tiny_models, tmp_path):
    """A float TIFF holding 0..4095 is refused without --value-range and classified with it."""
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(0).uniform(0, 4095, (64, 64)).astype(np.float32)
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    r = run_edge("--model", tiny_models["float32"], "--format", "json", tmp_path / "f.tif")
    assert r.returncode == 1 and "value" in json.loads(r.stdout.splitlines()[-1])["error"]
    ok = run_edge("--model", tiny_models["float32"], "--format", "json", "--value-range", "0", "4095", tmp_path / "f.tif")
    assert ok.returncode == 0, ok.stderr


# -- the option parser (argparse since the cold-start work; it keeps the click version's options) -----------


def test_options_defaults_env_intermixed_inputs_and_double_dash(monkeypatch):
    from leukedge.edge.app.parser import parse_args

    monkeypatch.delenv("LEUKEDGE_MODEL", raising=False)
    o = parse_args(["a.png"])
    assert o["inputs"] == ("a.png",) and o["model"] is None and o["fmt"] == "text"
    assert (o["poll_interval"], o["settle"], o["fsync_interval"], o["empty_timeout"]) == (0.5, 1.0, 1.0, 60.0)
    assert o["threshold"] is None and o["threads"] is None and o["workers"] is None and o["value_range"] is None
    assert not any(o[k] for k in ("recursive", "include_existing", "reclassify", "poll_mode", "strict_quality",
                                  "self_test_flag", "quiet"))
    o = parse_args(["a.png", "-m", "m.tflite", "b.png", "-qr", "--format=csv", "--value-range", "-1", "4095",
                    "--threshold", "0.25", "--threads", "2", "--page", "3", "--", "-odd.png", "--quiet"])
    assert o["inputs"] == ("a.png", "b.png", "-odd.png", "--quiet") and o["model"] == "m.tflite"
    assert o["quiet"] and o["recursive"] and o["fmt"] == "csv" and o["value_range"] == (-1.0, 4095.0)
    assert (o["threshold"], o["threads"], o["page"]) == (0.25, 2, 3)
    monkeypatch.setenv("LEUKEDGE_MODEL", "env.tflite")
    assert parse_args(["x"])["model"] == "env.tflite" and parse_args(["-m", "cli.tflite", "x"])["model"] == "cli.tflite"


@pytest.mark.parametrize("args, message", [
    (["--threshold", "1.5"], "argument --threshold: 1.5 is not in the range 0.0<=x<=1.0"),
    (["--threshold", "nan"], "argument --threshold: nan is not in the range 0.0<=x<=1.0"),
    (["--threshold", "high"], "argument --threshold: 'high' is not a valid number"),
    (["--threads", "0"], "argument --threads: 0 is not in the range 1<=x<=256"),
    (["--workers", "257"], "argument --workers: 257 is not in the range 1<=x<=256"),
    (["--workers", "2.5"], "argument --workers: '2.5' is not a valid integer"),
    (["--poll-interval", "0"], "argument --poll-interval: 0.0 is not in the range 0.01<=x<=60.0"),
    (["--full-scan-interval", "0.5"], "argument --full-scan-interval: 0.5 is not in the range 1.0<=x<=86400.0"),
    (["--settle", "601"], "argument --settle: 601.0 is not in the range 0.0<=x<=600.0"),
    (["--fsync-interval", "-1"], "argument --fsync-interval: -1.0 is not in the range 0.0<=x<=3600.0"),
    (["--bit-depth", "33"], "argument --bit-depth: 33 is not in the range 1<=x<=32"),
    (["--page", "0"], "argument --page: 0 is not in the range x>=1"),
    (["--max-pixels", "0"], "argument --max-pixels: 0 is not in the range x>=1"),
    (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["--value-range", "0"], "argument --value-range: invalid float value: 'x.png'"),
    (["--thresh", "0.5"], "unrecognized arguments: --thresh"),  # no abbreviations (click had none)
    (["--require-signature", "/no/such/key.pub"], "argument --require-signature: file '/no/such/key.pub' does not exist"),
    (["-o", "/"], "argument -o/--output: file '/' is a folder"),
    (["--watch", "/etc/hostname"], "argument --watch: folder '/etc/hostname' is a file"),
])
def test_bad_options_are_usage_errors_with_exit_2(args, message, capsys):
    from leukedge.edge import cli

    with pytest.raises(SystemExit) as done:
        cli.main([*args, "x.png"])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert f"edge-classify: error: {message}" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.rstrip().endswith("(edge-classify --help lists the options)")


@pytest.mark.parametrize("args, message", [
    (["--value-range", "-1e3", "4095"], None),  # number-like words are values, not options
    (["--threshold", "-1e-3"], "argument --threshold: -0.001 is not in the range 0.0<=x<=1.0"),
    (["--value-range", "-inf", "1"], "--value-range LOW must be finite"),
    (["--value-range", "1", "0"], "--value-range needs low < high"),
    ([""], "an input is an empty string (an unset shell variable?)"),
    (["-o", ""], "argument -o/--output: empty value"),
    (["--summary-by", ""], "argument --summary-by: empty value"),
    (["--settle", "3"], "--settle only applies with --watch DIR"),
    (["--poll", "--state", "j"], "--state, --poll only apply with --watch DIR"),
])
def test_values_that_look_like_options_empty_values_and_watch_only_options(args, message, capsys, tmp_path):
    from leukedge.edge import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["-m", str(tmp_path / "none.tflite"), *args, "x.png"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.splitlines()) == 1, err
    if message is None:  # parsed: it fails later, on the missing model
        assert "model file not found" in err or "none.tflite" in err
    else:
        assert f"edge-classify: error: {message}" in err


def test_help_and_version(capsys):
    from leukedge.edge import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == "edge-classify (leukedge), version 0.1.0"
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as done:
            cli.main([flag])
        out = capsys.readouterr().out
        assert done.value.code == 0 and "Exit codes:" in out and "LEUKEDGE_MODEL" in out
    for option in ("--model", "--threshold", "--format", "--output", "--threads", "--workers", "--recursive", "--watch",
                   "--include-existing", "--state", "--reclassify", "--poll", "--poll-interval",
                   "--full-scan-interval", "--settle", "--heartbeat", "--fsync-interval", "--strict-quality",
                   "--bit-depth", "--page", "--max-pixels", "--value-range LOW HIGH", "--self-test",
                   "--require-signature", "--summary-by", "--summary-out", "--quiet", "--version"):
        assert option in out, option
    assert "[default: 0.5; 0.01<=x<=60.0]" in out and "[default: text]" in out


def test_a_single_image_imports_no_click_no_watcher_and_no_hashing(tiny_models, synth_arrays, tmp_path):
    """Cold start: one image, results on stdout, hash from the verified-hash cache (second run)."""
    _, _, paths = synth_arrays
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['edge-classify', '-q', '--model', {str(tiny_models['int8'])!r}, '--format', 'json', {paths[0]!r}]\n"
        "try:\n    runpy.run_module('leukedge.edge.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "mods = ('click', 'watchdog', 'leukedge.edge.app.watcher', 'hashlib', 'statistics', 'shutil', 'tempfile', 'csv')\n"
        "print('LOADED=' + ','.join(m for m in mods if m in sys.modules))\n"
        "print('EXIT=' + str(code))\n"
    )
    env = dict(os.environ, LEUKEDGE_CACHE=str(tmp_path / "cache"))
    for _ in range(2):  # the first run fills the verified-hash cache
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[0])["path"] == paths[0] and "EXIT=0" in lines, out.stderr
    assert "LOADED=" in lines, f"a single-image run imported {lines[-2]}"


def test_progress_bar_of_a_batch_still_draws(tiny_models, synth_arrays, capsys):
    import io

    from leukedge.edge.classifier import Classifier
    from leukedge.edge.app.batch import run_batch
    from leukedge.edge.app.handling import Counts, Emitter
    from leukedge.edge.app.rows import ModelInfo, RowWriter
    from leukedge.edge.app.sinks import StreamSink

    _, _, paths = synth_arrays
    clf = Classifier.load(tiny_models["float32"], threads=1)
    minfo = ModelInfo.from_classifier(clf)
    buf = io.BytesIO()
    counts = Counts()
    run_batch(clf, paths[:3], [], Emitter(RowWriter("json", StreamSink(buf), minfo), None, counts), minfo,
              strict_quality=False, show_bar=True)
    assert counts.classified == 3 and len(buf.getvalue().splitlines()) == 3
    assert "classifying" in capsys.readouterr().err


def test_leukedge_classify_passes_everything_through(tiny_models, synth_arrays):
    _, _, paths = synth_arrays
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "classify", "--model", str(tiny_models["float32"]),
                        "--format", "json", paths[0]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == paths[0], r.stderr
    bad = subprocess.run([sys.executable, "-m", "leukedge.cli", "classify", "--threshold", "2", paths[0]],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "leukedge classify: error: argument --threshold" in bad.stderr
    helped = subprocess.run([sys.executable, "-m", "leukedge.cli", "classify", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "usage: leukedge classify" in helped.stdout and "--summary-by" in helped.stdout


# -- found by trying the tool as a new user -------------------------------------------------


def test_dash_output_is_stdout_in_a_batch_and_in_watch_mode(tiny_models, synth_arrays, tmp_path):
    _, _, paths = synth_arrays
    r = subprocess.run([*EDGE, "-m", str(tiny_models["float32"]), "--format", "json", "-o", "-", *paths[:2]],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert [json.loads(ln)["path"] for ln in r.stdout.splitlines()] == paths[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    proc = subprocess.Popen([*EDGE, "--model", str(tiny_models["float32"]), "--format", "json", "--watch", str(folder),
                             "--poll", "--poll-interval", "0.1", "--settle", "0.3", "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        time.sleep(2.0)
        shutil.copy(paths[0], folder / "a.bmp")
        time.sleep(2.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert [Path(json.loads(ln)["path"]).name for ln in out.decode().splitlines()] == ["a.bmp"], err
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.journal").exists()


def test_rows_follow_the_input_order_with_missing_inputs_in_place(tiny_models, synth_arrays):
    _, _, paths = synth_arrays
    for workers in ("1", "2"):
        r = run_edge("-m", tiny_models["float32"], "--format", "json", "--workers", workers,
                     paths[0], "/no/such.png", paths[1], paths[2], "/nope*.png")
        assert r.returncode == 1
        rows = [json.loads(ln) for ln in r.stdout.splitlines()]
        assert [row["path"] for row in rows] == [paths[0], "/no/such.png", paths[1], paths[2], "/nope*.png"]
        assert [row["status"] for row in rows] == ["ok", "error", "ok", "ok", "error"]


def test_an_unusable_model_is_one_stderr_line(tmp_path):
    for model in (tmp_path, tmp_path / "missing.tflite"):
        r = run_edge("-m", model, "x.png")
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("edge-classify: error: ") and str(model.name) in r.stderr


def _sigint_as_at_a_terminal():
    """The child starts with SIGINT at its default, as under a terminal. A shell's background job (`pytest &`,
    a CI step run with &) inherits SIGINT ignored, and edge-classify rightly keeps a signal it was started
    with ignored: without this the SIGINT cases would test how pytest was launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code, with_output", [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, True),
                                                    (signal.SIGINT, 130, False), (signal.SIGHUP, 129, True),
                                                    (signal.SIGHUP, 129, False)])
def test_an_interrupted_batch_says_so_with_the_signal_s_exit_code(tiny_models, tmp_path, sig, code, with_output):
    big = write_image(tmp_path / "big.png", size=(1600, 1600), fmt="PNG")
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        (folder / f"{i:03d}.png").symlink_to(big)
    out = tmp_path / "rows.csv"
    extra = ["-o", str(out)] if with_output else []
    proc = subprocess.Popen([*EDGE, "-m", str(tiny_models["float32"]), "--format", "csv", "--workers", "1",
                             *extra, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_sigint_as_at_a_terminal)
    time.sleep(4.0)  # loaded and classifying (a 1600 px PNG takes tens of ms)
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=60)
    name = signal.Signals(sig).name
    assert proc.returncode == code, err
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(f"edge-classify: error: interrupted by {name}") and b"Traceback" not in err
    if with_output:
        kept = Path(last.split("every finished row is in ", 1)[1])
        assert kept.name.endswith(".part") and len(kept.read_text().splitlines()) > 1 and not out.exists()
    else:
        assert len(stdout.decode().splitlines()) > 1  # the rows printed before the signal


def test_watch_restart_with_another_format_is_refused(tiny_models, tmp_path):
    from leukedge.edge.app.rows import check_append_target

    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "r.csv"
    proc = _watch_proc(tiny_models["float32"], folder, "-o", out)  # _watch_proc writes json
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    out.write_text('{"path": "a.png", "status": "ok"}\n')  # as if rows had come
    r = run_edge("-m", tiny_models["float32"], "--watch", folder, "-o", out, "--format", "csv")
    # refused before the model is loaded: the one line is all
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("edge-classify: error: ") and "holds json rows, this run writes csv" in r.stderr
    assert out.read_text() == '{"path": "a.png", "status": "ok"}\n'
    for first, fmt, ok in [(b"# leukedge 0.1.0 rows v1: model m\n", "text", True),
                           (b"# leukedge 0.1.0 rows v1: model m\n", "json", False), (b"path,status\n", "csv", False),
                           (b"", "csv", True), (b'{"path": "a"}\n', "json", True)]:
        assert (check_append_target("f", first, fmt) is None) == ok, (first, fmt)


def test_leukedge_classify_keeps_the_double_dash(tiny_models, synth_arrays, tmp_path):
    _, _, paths = synth_arrays
    odd = tmp_path / "-x.bmp"
    shutil.copy(paths[0], odd)
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "classify", "-m", str(tiny_models["float32"]),
                        "--format", "json", "--", "-x.bmp"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "-x.bmp"
