import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


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
    assert len(text.stdout.strip().splitlines()) == 2 and "p_all=" in text.stdout
    out_file = tmp_path / "res" / "out.csv"
    r = run_edge("--model", model, "--format", "csv", "--output", out_file, *paths[:3])
    assert r.returncode == 0 and r.stdout == ""
    rows = list(csv.DictReader(out_file.open()))
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
