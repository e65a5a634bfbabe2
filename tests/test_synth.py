"""The synthetic set: easy for tests that need a surely-right model, overlapping for the flow's no-data run."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from leukedge.edge.metrics import auroc
from leukedge.train.datasets import read_dataset
from leukedge.train.synth import synthesize


def _nucleus_fraction(path) -> float:
    """The feature the drawing is built on: the share of the cell that is (dark) nucleus."""
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.int32)
    cell = px.sum(-1) > 0
    return float((cell & (px[..., 0] < 150)).sum() / max(1, cell.sum()))


def _separation(root) -> float:
    ds = read_dataset(root)
    pos = ds.labels.index("all")
    y = np.array([int(s.label == pos) for s in ds.labelled])
    return auroc(y, np.array([_nucleus_fraction(s.path) for s in ds.labelled]))


@pytest.mark.parametrize("difficulty, low, high", [("easy", 1.0, 1.0), ("realistic", 0.78, 0.96),
                                                   ("hard", 0.65, 0.9)])
def test_difficulty_sets_how_much_the_classes_overlap(tmp_path, difficulty, low, high):
    root = synthesize(tmp_path / difficulty, n_train=150, n_val=30, size=64, seed=2, difficulty=difficulty)
    assert low <= _separation(root) <= high
    assert f"Difficulty: {difficulty}" in (root / "SYNTHETIC_README.txt").read_text()
    assert all("SYNTH" in s.path for s in read_dataset(root).labelled if "training_data" in s.path)


def test_easy_is_the_library_default_and_unknown_difficulties_are_refused(tmp_path):
    a = synthesize(tmp_path / "a", n_train=12, n_val=2, size=32, seed=5)
    b = synthesize(tmp_path / "b", n_train=12, n_val=2, size=32, seed=5, difficulty="easy")
    assert [p.read_bytes() for p in sorted(a.rglob("*.bmp"))] == [p.read_bytes() for p in sorted(b.rglob("*.bmp"))]
    with pytest.raises(ValueError, match="difficulty"):
        synthesize(tmp_path / "c", n_train=12, n_val=2, size=32, difficulty="medium")


def test_flow_synthetic_uses_the_generated_set_even_where_the_sample_is_at_hand(tmp_path, monkeypatch):
    from leukedge import flow

    sample = tmp_path / "shared" / "data" / "pbc-granulocytes"
    for cls in ("ig", "neutrophil"):
        (sample / cls).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    path, description, _ = flow.pick_data(None, tmp_path / "flow", quick=True)
    assert path.endswith("pbc-granulocytes") and "REAL sample" in description  # ours, or the real ../shared one
    path, description, overrides = flow.pick_data(None, tmp_path / "flow", quick=True, synthetic=True)
    assert description.startswith("SYNTHETIC") and "realistic" in description and overrides == {"test_fold": "fold_2"}
    assert "Difficulty: realistic" in (tmp_path / "flow" / "data" / "C-NMC_Leukemia" / "SYNTHETIC_README.txt").read_text()
    with pytest.raises(ValueError, match="not both"):
        flow.pick_data("somewhere", tmp_path / "flow", quick=True, synthetic=True)


def test_flow_refuses_data_and_synthetic_together(tmp_path):
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "flow", str(tmp_path), "--synthetic", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not both" in r.stderr and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_flow_synthetic_quick_end_to_end_scores_below_one(tmp_path):
    """`leukedge flow --synthetic --quick`: the no-data path, forced even where ../shared exists (minutes)."""
    import json

    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "flow", "--synthetic", "--quick", "--out",
                        str(tmp_path / "flow")], capture_output=True, text=True, timeout=3000)
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: a variant failed its gate, which a noisy set may do
    assert r.stdout.count("data = SYNTHETIC") == 1 and "realistic" in r.stdout
    results = json.loads((tmp_path / "flow" / "benchmark" / "results.json").read_text())
    f1 = [v["metrics"]["f1_positive"] for v in results["variants"]]
    assert f1 and max(f1) < 1.0
