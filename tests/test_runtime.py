"""The TFLite runtime wrapper: what its native side prints while a model loads."""

import os
import subprocess
import sys

import pytest

from leukedge.edge.runtime import ModelError
from leukedge.edge.runtime_tflite import _NativeStderr, open_interpreter


def test_routine_native_lines_are_dropped_and_the_rest_is_replayed(capfd):
    with _NativeStderr() as native:
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                    b"WARNING: the runtime has something to say\nERROR: and this too\n")
    err = capfd.readouterr().err
    assert "XNNPACK" not in err
    assert err.splitlines() == ["WARNING: the runtime has something to say", "ERROR: and this too"]
    assert native.lines == ["WARNING: the runtime has something to say", "ERROR: and this too"]
    print("stderr works again", file=sys.stderr)
    assert capfd.readouterr().err == "stderr works again\n"


def test_unloadable_model_is_one_model_error_naming_the_file(tmp_path):
    bad = tmp_path / "junk.tflite"
    bad.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(ModelError, match=r"junk\.tflite: not a loadable TFLite model"):
        open_interpreter(bad, threads=1)


def test_first_stderr_line_of_edge_classify_is_its_own(tiny_models, synth_arrays):
    """The runtime's 'Created TensorFlow Lite XNNPACK delegate' line no longer comes before leukedge's
    first line (which states whether the model and card are signed)."""
    image = synth_arrays[2][0]
    r = subprocess.run([sys.executable, "-m", "leukedge.edge.cli", "-m", str(tiny_models["int8"]), str(image)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith("edge-classify: unsigned"), lines[:3]
    assert not any("XNNPACK" in ln for ln in lines)
