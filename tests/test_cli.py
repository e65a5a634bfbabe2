import subprocess
import sys

import pytest

NO_TF = "import sys; sys.modules['tensorflow'] = None; sys.modules['kagglehub'] = None\nfrom leukedge.cli import main\nmain({args!r})"


def run_without_tensorflow(*args):
    """The `leukedge` command as on a device without the train extra: importing TensorFlow fails."""
    code = NO_TF.format(args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_steps_that_need_tensorflow_name_the_extra(synth_dir, tmp_path):
    r = run_without_tensorflow("train", synth_dir, "--out", tmp_path / "o")
    assert r.returncode == 2 and "pip install 'leukedge[train]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_data_steps_work_without_tensorflow(cnmc_dir):
    r = run_without_tensorflow("data", "inspect", cnmc_dir)
    assert r.returncode == 0 and "per class" in r.stdout


def test_download_without_kagglehub_says_where_to_get_the_data(tmp_path):
    r = run_without_tensorflow("data", "download", tmp_path / "dl")
    assert r.returncode == 2 and "kagglehub is not installed" in r.stderr and "10.7937/tcia.2019.dc64i46r" in r.stderr


def test_synth_then_inspect(tmp_path):
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "data", "synth", str(tmp_path / "s"), "--train-images", "12",
                        "--val-images", "3", "--size", "64"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "data", "inspect", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "images: 15" in r.stdout


@pytest.mark.slow
def test_the_main_job_end_to_end(tmp_path, synth_dir):
    """`leukedge flow --quick` on synthetic data: train, optimize, classify, benchmark (several minutes)."""
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "flow", str(synth_dir.parent), "--quick", "--out",
                        str(tmp_path / "flow")], capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data = the dataset you gave" in r.stdout
    for f in ("model/model.keras", "opt/int8.tflite", "opt/summary.md", "benchmark/results.json", "benchmark/report.md",
              "benchmark/f1_vs_latency.png"):
        assert (tmp_path / "flow" / f).is_file(), f
