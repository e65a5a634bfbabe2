"""Issue 19: the device library's public face, loaded lazily."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_error_module_loads_neither_numpy_nor_pillow():
    probe = ("import sys, leukedge.edge.errors, leukedge.edge; "
             "print(sorted(m for m in ('numpy', 'PIL', 'cv2', 'openvino', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_every_public_name_resolves_to_its_module():
    import leukedge.edge as edge

    for name in edge.__all__:
        obj = getattr(edge, name)
        assert obj.__module__.startswith("leukedge.edge."), name
    assert edge.Classifier.__name__ == "Classifier" and "Classifier" in dir(edge)


def test_the_built_wheel_holds_and_imports_every_subpackage(tmp_path):
    """An import from the built wheel, not the editable install: a subpackage missing from pyproject's explicit
    package list would be absent here while every editable test still passed."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("leukedge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("leukedge/edge/fields/locate.py", "leukedge/edge/app/frames.py", "leukedge/edge/runtime_openvino.py",
                   "leukedge/edge/app/cli.py", "leukedge/edge/app/run.py", "leukedge/edge/app/watcher.py",
                   "leukedge/edge/app/journal.py", "leukedge/edge/app/rows.py", "leukedge/edge/app/parser.py",
                   "leukedge/graph.py", "leukedge/tfcompat.py", "leukedge/train/preprocessing.py"):
        assert module in names, module
    # -S: no site-packages, so the editable install's finder cannot answer; only the wheel is on the path
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import leukedge.edge.fields, leukedge.edge.errors, "
             "leukedge.edge.app.frames, leukedge.edge.app.run; print(leukedge.edge.fields.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", probe, str(wheel)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().startswith(str(wheel)), out.stderr
