"""Issue 19: every command's flags come from its options class, with the help written beside each field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from leukedge.cli import main


def _cases():
    from leukedge.benchmarks.run import BenchmarkOptions
    from leukedge.flow import FlowOptions
    from leukedge.optimize.run import OptimizeOptions
    from leukedge.train.config import TrainConfig, TuneOptions
    from leukedge.train.importer import ImportOptions

    return [("train", TrainConfig), ("tune", TuneOptions), ("optimize", OptimizeOptions), ("import", ImportOptions),
            ("benchmark", BenchmarkOptions), ("flow", FlowOptions)]


@pytest.mark.parametrize("command, cls", _cases(), ids=lambda c: c if isinstance(c, str) else c.__name__)
def test_every_field_is_a_flag_with_its_own_help(command, cls):
    params = {p.name: p for p in main.commands[command].params}
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help beside it"
        assert f.name in params, f"{command}: no flag for {cls.__name__}.{f.name}"
        assert params[f.name].help.startswith(f.metadata["help"]), (command, f.name)
        assert params[f.name].default is None  # only typed values override a TOML config or --set


def test_one_flag_name_one_meaning_old_spellings_kept_as_aliases():
    """`--threshold` is a P cut-off (edge-classify); import's decision rule is --decision-rule. `--epochs` is
    train's fine-tuning epochs; tune's epochs per trial are --trial-epochs. The old spellings still work."""
    imp = {p.name: p for p in main.commands["import"].params}["threshold"]
    assert imp.opts[0] == "--decision-rule" and "--threshold" in imp.opts
    tune = {p.name: p for p in main.commands["tune"].params}["trial_epochs"]
    assert tune.opts[0] == "--trial-epochs" and "--epochs" in tune.opts
    train = {p.name: p for p in main.commands["train"].params}["epochs"]
    assert train.opts == ["--epochs"]


def test_shared_option_groups_are_declared_once():
    import inspect

    import leukedge.cli as cli

    src = inspect.getsource(cli)
    assert src.count('"--config", "config_file"') == 1 and src.count('"--set", "overrides"') == 1
    for command in ("train", "tune", "optimize", "benchmark"):
        names = {p.name for p in main.commands[command].params}
        assert {"config_file", "overrides"} <= names, command


def test_the_workstation_cli_imports_no_tensorflow():
    probe = "import sys, leukedge.cli; print('tensorflow' in sys.modules, 'tf_keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stderr


def test_known_harmless_tensorflow_lines_are_dropped_and_real_ones_kept():
    """Issue 21: TensorFlow's `failed call to cuInit ... (303)` (logged at ERROR level) and its other CPU-only
    notes are dropped by the one stderr reader; any other native line still reaches the user, prefixed."""
    probe = (
        "import os\n"
        "from leukedge.edge import stderr\n"
        "from leukedge.cli import quiet_known_native_lines\n"
        "stderr.install('leukedge'); quiet_known_native_lines()\n"
        "os.write(2, b'E0000 00:00:1 12 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
        "Failed call to cuInit: UNKNOWN ERROR (303)\\n')\n"
        "os.write(2, b'I0000 00:00:1 12 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
        "not be used.\\n')\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8\\n')\n"
        "os.write(2, b'E0000 something real went wrong\\n')\n"
        "stderr.uninstall()\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == ["leukedge: native: E0000 something real went wrong"], out.stderr
