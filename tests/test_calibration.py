"""Device-side calibration: softmax with temperature, Wilson, Rogan-Gladen, the per-sample summary."""

from __future__ import annotations

from pathlib import Path

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from leukedge.edge.calibration import p_positive_from_logits, softmax
from leukedge.edge.stats import rogan_gladen, rogan_gladen_interval, wilson_interval
from leukedge.edge.summary import SUMMARY_FIELDS, SampleSummary, SummaryError, check_summary_output, group_key

from helpers import CNMC

Z95 = 1.959963984540054


# -- softmax ----------------------------------------------------------------------------------------

def test_softmax_matches_the_definition_and_a_temperature_divides_the_logits():
    z = np.array([[1.0, 3.0], [0.5, -0.5]])
    e = np.exp(z)
    np.testing.assert_allclose(softmax(z), e / e.sum(1, keepdims=True), rtol=1e-12)
    e2 = np.exp(z / 2.0)
    np.testing.assert_allclose(softmax(z, 2.0), e2 / e2.sum(1, keepdims=True), rtol=1e-12)
    # two classes: P(class 1) = sigmoid((z1 - z0) / T)
    assert p_positive_from_logits([1.0, 3.0], 1, 2.0) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-15)


def test_softmax_is_stable_for_huge_logits_and_refuses_bad_temperatures():
    p = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.isfinite(p).all() and p[0] == pytest.approx(1.0)
    assert p_positive_from_logits(np.array([[0.0, 800.0], [800.0, 0.0]]), 1).tolist() == pytest.approx([1.0, 0.0])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            softmax([0.0, 1.0], bad)
    with pytest.raises(ValueError, match="positive_index"):
        p_positive_from_logits([0.0, 1.0], 2)


# -- Wilson -----------------------------------------------------------------------------------------

def test_wilson_hand_worked_8_of_10():
    # p = 0.8, z^2 = 3.8415: centre = (0.8 + 0.19207) / 1.38415 = 0.71681,
    # half = 1.95996 / 1.38415 * sqrt(0.016 + 0.0096037) = 0.22665  ->  (0.4902, 0.9433)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-5)
    assert high == pytest.approx(0.94332, abs=1e-5)


def test_wilson_edges_zero_and_all_and_no_data():
    # k = 0: low is 0 and high = z^2 / (n + z^2)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(Z95 ** 2 / (10 + Z95 ** 2), rel=1e-12))
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + Z95 ** 2), rel=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # a higher confidence widens the interval
    assert wilson_interval(8, 10, 0.99)[0] < wilson_interval(8, 10, 0.95)[0]
    for k, n in ((-1, 5), (6, 5), (1.5, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, 1.0)


# -- Rogan-Gladen -----------------------------------------------------------------------------------

def test_rogan_gladen_hand_worked_and_clipped():
    # (0.30 + 0.80 - 1) / (0.90 + 0.80 - 1) = 0.10 / 0.70
    assert rogan_gladen(0.30, 0.90, 0.80) == pytest.approx(1 / 7, rel=1e-12)
    assert rogan_gladen(0.10, 0.90, 0.80) == 0.0  # fewer flagged than false positives alone explain
    assert rogan_gladen(1.00, 0.90, 0.80) == 1.0
    assert rogan_gladen(0.40, 1.0, 1.0) == pytest.approx(0.40)  # a perfect test needs no correction
    with pytest.raises(ValueError, match="must exceed 1"):
        rogan_gladen(0.3, 0.5, 0.5)
    with pytest.raises(ValueError, match="sensitivity"):
        rogan_gladen(0.3, 1.2, 0.5)


def test_rogan_gladen_interval_transforms_the_wilson_bounds():
    # Wilson 8/10 = (0.49016, 0.94332); corrected with se 0.9, sp 0.8: (0.49016 - 0.2) / 0.7, min(1, ...)
    low, high = rogan_gladen_interval(8, 10, 0.9, 0.8)
    assert low == pytest.approx((0.49016247 - 0.2) / 0.7, abs=1e-6)
    assert high == 1.0


# -- grouping ---------------------------------------------------------------------------------------

def test_group_keys_folder_subject_and_regex(tmp_path):
    assert group_key("/data/patient7/cell_1.png", "folder") == "/data/patient7"  # the whole folder path
    assert group_key("a/cells/x.png", "folder") != group_key("b/cells/x.png", "folder")
    assert group_key("UID_h3_12_4_hem.bmp", "subject") == "H3"
    assert group_key("/x/fold_0/all/UID_45_3_1_all.bmp", "subject") == "45"
    assert group_key("/x/validation/1002.bmp", "subject") == "unknown"
    assert group_key("scans/P042_cell7.png", r"(P\d+)_") == "P042"
    assert group_key("scans/P042/cell7.png", r"scans/([^/]+)/") == "P042"  # folders are searched too
    assert group_key("scans/Q1_cell7.png", r"(P\d+)_") == "unknown"


@pytest.mark.parametrize("by, problem", [(r"P\d+", "exactly one group"), (r"(P)(\d+)", "it has 2"),
                                         (r"(P\d+", "not a regular expression")])
def test_bad_regex_is_refused_in_one_line(by, problem):
    with pytest.raises(SummaryError, match=problem) as info:
        SampleSummary(by)
    assert "\n" not in str(info.value) and "--summary-by" in str(info.value)
    with pytest.raises(SummaryError):
        group_key("a.png", by)


def test_subject_key_agrees_with_the_training_reader_on_real_cnmc_names():
    if not CNMC.exists():
        pytest.skip("../shared/data not present")
    from leukedge.train.datasets import subject_from_name

    files = sorted((CNMC / "training_data").rglob("*.bmp"))
    assert files
    for f in files:
        assert group_key(f, "subject") == subject_from_name(f.name)


# -- the summary --------------------------------------------------------------------------------------

def _labelled_folder(tmp_path):
    """A small labelled folder and what the device said of each cell (decision, P, failed, warned)."""
    cells = {
        "all/UID_11_1_1_all.bmp": (True, 0.91, False, False),
        "all/UID_11_1_2_all.bmp": (True, 0.75, False, True),
        "all/UID_11_2_1_all.bmp": (False, 0.40, False, False),
        "all/UID_11_2_2_all.bmp": (None, None, True, False),   # unreadable
        "hem/UID_h3_1_1_hem.bmp": (False, 0.10, False, False),
        "hem/UID_H3_1_2_hem.bmp": (True, 0.55, False, False),  # same subject, other case
        "hem/UID_H3_2_1_hem.bmp": (False, 0.05, False, True),
    }
    for rel in cells:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    return cells


def test_summary_of_a_labelled_folder_equals_the_hand_count(tmp_path):
    cells = _labelled_folder(tmp_path)
    s = SampleSummary("subject")
    for rel, (pos, p, failed, warned) in cells.items():
        s.add(tmp_path / rel, pos, p, failed, warned)
    rows = s.rows(sensitivity=0.9, specificity=0.8)
    assert [r["group"] for r in rows] == ["11", "H3"]
    assert all(tuple(r) == SUMMARY_FIELDS for r in rows)
    r11, rh3 = rows
    # subject 11: 3 classified, 2 flagged, 1 failed, 1 warned; mean P = (0.91 + 0.75 + 0.40) / 3
    assert (r11["cells"], r11["flagged"], r11["failures"], r11["quality_warnings"]) == (3, 2, 1, 1)
    assert r11["flagged_fraction"] == pytest.approx(2 / 3)
    assert (r11["flagged_low"], r11["flagged_high"]) == pytest.approx(wilson_interval(2, 3))
    assert r11["mean_p_positive"] == pytest.approx((0.91 + 0.75 + 0.40) / 3)
    # (2/3 + 0.8 - 1) / 0.7 = 0.6667
    assert r11["corrected_fraction"] == pytest.approx((2 / 3 - 0.2) / 0.7)
    assert (r11["corrected_low"], r11["corrected_high"]) == pytest.approx(rogan_gladen_interval(2, 3, 0.9, 0.8))
    # subject H3: 3 classified, 1 flagged (0.55), none failed, 1 warned; corrected (1/3 - 0.2) / 0.7
    assert (rh3["cells"], rh3["flagged"], rh3["failures"], rh3["quality_warnings"]) == (3, 1, 0, 1)
    assert rh3["corrected_fraction"] == pytest.approx((1 / 3 - 0.2) / 0.7)
    assert rh3["mean_p_positive"] == pytest.approx((0.10 + 0.55 + 0.05) / 3)

    f = SampleSummary("folder")
    for rel, (pos, p, failed, warned) in cells.items():
        f.add(tmp_path / rel, pos, p, failed, warned)
    by_folder = {Path(r["group"]).name: (r["cells"], r["flagged"], r["failures"]) for r in f.rows()}
    assert by_folder == {"all": (3, 2, 1), "hem": (3, 1, 0)}


def test_a_re_read_cell_counts_once_and_its_latest_result_wins(tmp_path, monkeypatch):
    cells = _labelled_folder(tmp_path)
    s = SampleSummary("subject")
    for rel, (pos, p, failed, warned) in cells.items():
        s.add(tmp_path / rel, pos, p, failed, warned)
    before = s.rows()
    # the same files again, once through a relative path: nothing changes
    monkeypatch.chdir(tmp_path)
    for rel, (pos, p, failed, warned) in cells.items():
        s.add(rel, pos, p, failed, warned)
    assert s.rows() == before and len(s) == len(cells)
    # the failed cell is re-read and now classified: one more cell, one failure fewer
    s.add("all/UID_11_2_2_all.bmp", True, 0.8, False, False)
    r11 = s.rows()[0]
    assert (r11["cells"], r11["flagged"], r11["failures"]) == (4, 3, 0)


def test_regex_groups_explicit_keys_and_no_correction_without_card_rates(tmp_path):
    s = SampleSummary(r"(P\d+)_cell")
    s.add("run/P01_cell1.png", True, 0.9, False, False)
    s.add("run/P01_cell2.png", False, 0.2, False, False)
    s.add("run/P02_cell1.png", False, 0.1, False, False)
    s.add("run/other.png", False, 0.3, False, False)
    s.add("run/odd_name.png", True, 0.7, False, False, key="P02")  # caller knows better
    rows = {r["group"]: r for r in s.rows()}
    assert list(rows) == ["P01", "P02", "unknown"]
    assert {k: (r["cells"], r["flagged"]) for k, r in rows.items()} == {"P01": (2, 1), "P02": (2, 1), "unknown": (1, 0)}
    assert all(r["corrected_fraction"] is None for r in rows.values())
    assert all(r["corrected_fraction"] is None for r in s.rows(0.5, 0.5))  # no better than chance: no correction


def test_a_group_of_failures_only_has_no_fraction_and_bad_results_are_refused():
    s = SampleSummary("folder")
    s.add("/d/a/x.png", None, None, True, False)
    (row,) = s.rows(0.9, 0.9)
    assert (row["cells"], row["failures"], row["flagged_fraction"], row["corrected_fraction"]) == (0, 1, None, None)
    assert (row["flagged_low"], row["flagged_high"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="decision"):
        s.add("/d/a/y.png", None, 0.3, False, False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        s.add("/d/a/y.png", True, 1.3, False, False)


def test_add_record_reads_prediction_dicts():
    s = SampleSummary("folder", positive_label="all")
    s.add_record({"path": "/d/s1/a.png", "label": "all", "p_all": 0.8, "warnings": ["blurred"]}, "all")
    s.add_record({"path": "/d/s1/b.png", "label": "hem", "p_all": 0.1, "warnings": []}, "all")
    s.add_record({"path": "/d/s1/c.png", "error": "not an image"}, "all")
    (row,) = s.rows()
    assert (row["cells"], row["flagged"], row["failures"], row["quality_warnings"]) == (2, 1, 1, 1)
    assert row["mean_p_positive"] == pytest.approx(0.45)


def test_write_json_and_csv_atomically_and_refuse_other_extensions(tmp_path):
    s = SampleSummary("folder")
    s.add("/d/s1/a.png", True, 0.8, False, False)
    s.add("/d/s1/b.png", False, 0.1, False, True)
    s.add("/d/s2/a.png", None, None, True, False)
    rows = s.rows(0.9, 0.8)
    s.write(tmp_path / "out" / "summary.json", rows)
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["summary_by"] == "folder" and [Path(g["group"]).name for g in doc["groups"]] == ["s1", "s2"]
    assert doc["groups"][0]["flagged_fraction"] == 0.5 and doc["groups"][1]["flagged_fraction"] is None
    s.write(tmp_path / "summary.CSV", rows)
    with open(tmp_path / "summary.CSV", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == SUMMARY_FIELDS
    assert (Path(table[0]["group"]).name, table[0]["cells"], table[0]["flagged"]) == ("s1", "2", "1")
    assert table[1]["flagged_fraction"] == "" and table[1]["failures"] == "1"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    with pytest.raises(SummaryError, match="summary.txt"):
        s.write(tmp_path / "summary.txt", rows)
    assert check_summary_output("x.json") == "json"


def test_format_text_lists_every_group_and_says_what_the_correction_is():
    s = SampleSummary("subject")
    s.add("/d/UID_5_1_1_all.bmp", True, 0.9, False, False)
    s.add("/d/UID_H2_1_1_hem.bmp", False, 0.2, False, False)
    text = s.format_text(s.rows(0.9, 0.8))
    lines = text.splitlines()
    assert lines[0].startswith("summary by subject") and "95 %" in lines[0]
    assert lines[2].split()[:3] == ["5", "1", "1"] and lines[3].split()[:3] == ["H2", "1", "0"]
    assert "Rogan-Gladen" in lines[-1] and "0.900" in lines[-1]
    assert "not available" in s.format_text(s.rows())


def test_device_calibration_imports_neither_tensorflow_nor_scipy():
    code = ("import sys, leukedge.edge.calibration as c, leukedge.edge.stats as s, leukedge.edge.summary; "
            "c.softmax([1.0, 2.0], 1.5); s.wilson_interval(3, 9); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'scipy')]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"


def test_groups_come_in_natural_order_with_unknown_last():
    s = SampleSummary("subject")
    for name in ("UID_10_1_1_all.bmp", "UID_2_1_1_all.bmp", "1002.bmp", "UID_H10_1_1_hem.bmp", "UID_h3_1_1_hem.bmp"):
        s.add("/d/" + name, False, 0.1, False, False)
    assert [r["group"] for r in s.rows()] == ["2", "10", "H3", "H10", "unknown"]


def test_temperature_is_not_fitted_where_the_split_cannot_judge_it():
    """Issue 21: a separable split drove T to the search's lower bound (logits x 20, every P 0 or 1) and a
    4-image split to whichever bound it liked; neither is fitted now (T = 1, with the reason)."""
    from leukedge.edge.stats import FITTED, NOT_FITTED, fit_temperature, fit_temperature_if_judgeable

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    separable = np.zeros((120, 2))
    separable[:, 1] = np.where(y == 1, 0.5 + rng.random(120), -0.5 - rng.random(120))
    assert fit_temperature(separable, y) == pytest.approx(0.05, rel=1e-3)  # what the cards used to carry
    t, status, why = fit_temperature_if_judgeable(separable, y, 1)
    assert (t, status) == (1.0, NOT_FITTED) and "without overlap" in why
    four = [0, 1, 60, 61]
    noisy = separable + rng.normal(0, 3, separable.shape)
    t, status, why = fit_temperature_if_judgeable(noisy[four], y[four], 1)
    assert (t, status) == (1.0, NOT_FITTED) and "only 4 validation images" in why
    t, status, why = fit_temperature_if_judgeable(noisy[:60], y[:60], 1)
    assert status == NOT_FITTED and "one class" in why
    # overlapping and over-confident (logits x 8): fitted, off its bounds, softening P
    overconfident = 8 * (separable + rng.normal(0, 1.0, separable.shape))
    t, status, why = fit_temperature_if_judgeable(overconfident, y, 1)
    assert status == FITTED and why == "" and 1.5 < t < 19.0
