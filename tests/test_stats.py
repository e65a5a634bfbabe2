"""Workstation statistics: ECE, Brier, temperature fit, threshold re-expression, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leukedge.edge import bootstrap, stats
from leukedge.edge.stats import wilson_interval
from leukedge.edge.decision import decide
from leukedge.edge.metrics import binary_report


# -- ECE and Brier ------------------------------------------------------------------------------------

P4 = [0.1, 0.2, 0.3, 0.9]
Y4 = [0, 0, 1, 1]


def test_ece_equal_width_hand_worked():
    # 2 bins: [0, .5) holds .1 .2 .3 (mean .2, positives 1/3) -> 3/4 * |1/3 - .2| = 0.1
    #         [.5, 1] holds .9 (mean .9, positives 1)         -> 1/4 * 0.1        = 0.025
    assert stats.expected_calibration_error(Y4, P4, bins=2) == pytest.approx(0.125, abs=1e-12)
    # 15 bins: each score alone in its bin -> mean of |y - p| = (.1 + .2 + .7 + .1) / 4
    assert stats.expected_calibration_error(Y4, P4) == pytest.approx(0.275, abs=1e-12)


def test_ece_equal_mass_hand_worked():
    # 2 bins of 2: {.1, .2} (mean .15, none positive) -> .5 * .15 = .075; {.3, .9} (mean .6, all) -> .5 * .4 = .2
    assert stats.expected_calibration_error(Y4, P4, bins=2, strategy="quantile") == pytest.approx(0.275, abs=1e-12)
    # input order does not matter, ties included
    y, p = [1, 0, 1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5, 0.9, 0.1]
    a = stats.expected_calibration_error(y, p, bins=3, strategy="quantile")
    order = [5, 4, 3, 2, 1, 0]
    b = stats.expected_calibration_error(np.take(y, order), np.take(p, order), bins=3, strategy="quantile")
    assert a == pytest.approx(b)


def test_ece_of_a_calibrated_model_is_small_and_of_an_overconfident_one_large():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert stats.expected_calibration_error(y, p) < 0.02
    assert stats.expected_calibration_error(y, (p > 0.5).astype(float)) > 0.2


def test_reliability_curve_leaves_empty_bins_out_and_counts_everything():
    c = stats.reliability_curve(Y4, P4, bins=10)
    assert c["count"] == [1, 1, 1, 1] and c["lower"] == pytest.approx([0.1, 0.2, 0.3, 0.9])
    assert c["fraction_positive"] == [0.0, 0.0, 1.0, 1.0]
    assert stats.reliability_curve([1], [1.0], bins=15)["upper"] == [1.0]  # p = 1 lands in the last bin
    with pytest.raises(ValueError, match="strategy"):
        stats.reliability_curve(Y4, P4, strategy="kmeans")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.expected_calibration_error(Y4, [0.1, 0.2, 0.3, 1.2])


def test_brier_hand_worked():
    # (.01 + .04 + .49 + .01) / 4
    assert stats.brier_score(Y4, P4) == pytest.approx(0.1375, abs=1e-12)
    assert stats.brier_score([0, 1], [0.0, 1.0]) == 0.0


def test_plot_reliability_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    from leukedge import reports

    out = reports.plot_reliability(tmp_path / "plots" / "reliability.png",
                                 {"before": (y, p ** 3), "after": (y, p)})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- temperature scaling ------------------------------------------------------------------------------

def _toy_logits(n, true_t=1.0, scale=3.0, seed=0):
    """Labels drawn from sigmoid(d), so logits [0, d] are calibrated at T = true_t; then over-scaled."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-d / true_t))).astype(np.int64)
    return np.stack([np.zeros(n), scale * d], axis=1), y


def test_fit_temperature_recovers_a_known_overconfidence():
    logits, y = _toy_logits(20000, scale=3.0)
    t = stats.fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.08)
    # it is the minimum of the NLL
    nll = stats.negative_log_likelihood(logits, y, t)
    assert nll < stats.negative_log_likelihood(logits, y, t * 1.05)
    assert nll < stats.negative_log_likelihood(logits, y, t / 1.05)
    assert nll < stats.negative_log_likelihood(logits, y, 1.0)


def test_fit_temperature_finds_underconfidence_and_stops_at_the_bounds():
    logits, y = _toy_logits(20000, scale=0.5, seed=1)
    assert stats.fit_temperature(logits, y) == pytest.approx(0.5, rel=0.08)
    # perfectly separated data: the NLL keeps falling as T shrinks, so the lower bound comes back
    sep = np.array([[0.0, 5.0], [0.0, 4.0], [0.0, -4.0], [0.0, -6.0]])
    assert stats.fit_temperature(sep, [1, 1, 0, 0], bounds=(0.1, 10.0)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="class indices|lie in"):
        stats.fit_temperature(sep, [1, 2, 0, 0])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        stats.fit_temperature(np.zeros(4), [1, 1, 0, 0])


def test_calibration_report_improves_an_overconfident_model():
    logits, y = _toy_logits(5000, scale=3.0, seed=2)
    t = stats.fit_temperature(logits, y)
    rep = stats.calibration_report(logits, y, t, positive_index=1)
    assert rep["temperature"] == t and rep["n"] == 5000 and rep["bins"] == 15
    assert rep["nll_after"] < rep["nll_before"]
    assert rep["ece_after"] < rep["ece_before"] / 2 and rep["ece_quantile_after"] < rep["ece_quantile_before"] / 2
    assert rep["brier_after"] < rep["brier_before"]


def test_threshold_on_calibrated_scale_closed_form():
    assert stats.threshold_on_calibrated_scale(0.5, 3.0) == pytest.approx(0.5)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    assert stats.threshold_on_calibrated_scale(sig(2.0), 2.0) == pytest.approx(sig(1.0), rel=1e-12)
    assert stats.threshold_on_calibrated_scale(0.0, 2.0) == 0.0
    assert stats.threshold_on_calibrated_scale(1.0, 2.0) == 1.0
    with pytest.raises(ValueError):
        stats.threshold_on_calibrated_scale(1.5, 2.0)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7, 3.0, 11.0])
def test_threshold_re_expression_keeps_every_decision(temperature):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, (2000, 2)).astype(np.float32).astype(np.float64)
    p_raw = stats.p_positive_from_logits(logits, 1, 1.0)
    p_cal = stats.p_positive_from_logits(logits, 1, temperature)
    # thresholds the way training picks them: observed scores, so one cell lies exactly on each
    observed = np.sort(p_raw)[np.linspace(100, 1900, 40).astype(int)]
    closed_form_flips = 0
    for t in [0.5, 0.9, 0.03, *observed.tolist()]:
        t_cal = stats.threshold_on_calibrated_scale(t, temperature, logits=logits, positive_index=1)
        assert np.array_equal(decide(p_raw, t), decide(p_cal, t_cal)), t
        t_plain = stats.threshold_on_calibrated_scale(t, temperature)
        assert t_plain == pytest.approx(t_cal, rel=1e-9, abs=1e-12)
        closed_form_flips += not np.array_equal(decide(p_raw, t), decide(p_cal, t_plain))
    # the rounding the logits argument guards against does happen (never at T = 1, returned as is)
    assert (closed_form_flips > 0) == (temperature != 1.0)


def test_threshold_re_expression_checks_the_devices_own_float32_scores():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (3000, 2)).astype(np.float32)
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p_raw = (e / e.sum(1, keepdims=True))[:, 1].astype(np.float32)  # a float32 device path
    zt = z / 2.5
    e = np.exp(zt - zt.max(1, keepdims=True))
    p_cal = (e / e.sum(1, keepdims=True))[:, 1].astype(np.float32)
    flips = 0
    for t in np.sort(p_raw)[np.linspace(50, 2950, 60).astype(int)].tolist():
        t_cal = stats.threshold_on_calibrated_scale(t, 2.5, p_before=p_raw, p_after=p_cal)
        assert np.array_equal(decide(p_raw, t), decide(p_cal, t_cal)), t
        flips += not np.array_equal(decide(p_raw, t), decide(p_cal, stats.threshold_on_calibrated_scale(t, 2.5)))
    assert flips > 0


def test_threshold_re_expression_refuses_when_calibrated_scores_saturate():
    # T < 1 sharpens: cells just below and just above a threshold of 1 - 1e-6 all round to P = 1.0
    logits = np.array([[0.0, 13.0], [0.0, 13.5], [0.0, 14.0], [0.0, 0.0]])
    t = float(stats.p_positive_from_logits(logits[1], 1))
    with pytest.raises(ValueError, match="keeps all decisions"):
        stats.threshold_on_calibrated_scale(t, 0.3, logits=logits)
    assert stats.threshold_on_calibrated_scale(t, 3.0, logits=logits) < 1.0  # T > 1 spreads them out


# -- bootstrap ----------------------------------------------------------------------------------------

def _scored_split(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], [2 * n // 3, n - 2 * n // 3])
    p = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, n), 0, 1)
    subjects = np.where(y == 1, "S" + (np.arange(n) % 12).astype(str), "H" + (np.arange(n) % 7).astype(str))
    return y, p, subjects


def _f1(y, p):
    return binary_report(y, decide(p, 0.5).astype(int))["f1_positive"]


def test_seeded_bootstrap_is_deterministic():
    y, p, subjects = _scored_split()
    for groups in (None, subjects):
        a = bootstrap.bootstrap_ci(_f1, y, p, groups=groups, n_resamples=200, seed=7)
        b = bootstrap.bootstrap_ci(_f1, y, p, groups=groups, n_resamples=200, seed=7)
        c = bootstrap.bootstrap_ci(_f1, y, p, groups=groups, n_resamples=200, seed=8)
        assert a == b and a != c
        point = _f1(y, p)
        assert a[0] < point < a[1]


def test_subject_resampling_keeps_subjects_whole_and_classes_balanced():
    y, p, subjects = _scored_split()
    sizes = {s: int((subjects == s).sum()) for s in np.unique(subjects)}
    seen = []

    def record(yy, ss):
        counts = {s: int((ss == s).sum()) for s in np.unique(ss)}
        assert all(c % sizes[s] == 0 for s, c in counts.items())  # only whole subjects, maybe repeated
        draws = {cls: sum(c // sizes[s] for s, c in counts.items() if s[0] == cls) for cls in "SH"}
        assert draws == {"S": 12, "H": 7}  # as many subject draws per class as the class has subjects
        seen.append(len(counts))
        return float(yy.mean())

    bootstrap.bootstrap_ci(record, y, subjects, groups=subjects, n_resamples=50, seed=0)
    assert len(seen) == 50 and min(seen) < 19  # some subjects drawn twice, others left out


def test_image_resampling_is_stratified_by_class():
    y, p, _ = _scored_split()
    n_pos = int(y.sum())
    positives = []
    bootstrap.bootstrap_ci(lambda yy, pp: positives.append(int(yy.sum())) or 0.0, y, p, n_resamples=30, seed=0)
    assert positives == [n_pos] * 30


def test_paired_bootstrap_difference():
    y, p, subjects = _scored_split()
    point, low, high = bootstrap.paired_bootstrap_diff(_f1, y, p, p, groups=subjects, n_resamples=100)
    assert (point, low, high) == (0.0, 0.0, 0.0)  # identical models: no difference on any resample
    rng = np.random.default_rng(5)
    worse = np.clip(p + rng.normal(0, 0.3, len(p)), 0, 1)
    point, low, high = bootstrap.paired_bootstrap_diff(_f1, y, worse, p, n_resamples=300, seed=1)
    assert point == pytest.approx(_f1(y, worse) - _f1(y, p))
    assert low < point < high < 0  # clearly worse


def test_screening_intervals_share_resamples_with_bootstrap_ci():
    y, p, subjects = _scored_split()
    out = bootstrap.screening_intervals(y, p, 0.5, groups=subjects, n_resamples=200, seed=3)
    rep = binary_report(y, decide(p, 0.5).astype(int), scores=p)
    cm = np.asarray(rep["confusion_matrix"])
    assert out["sensitivity"]["value"] == rep["sensitivity"] and out["sensitivity"]["n"] == int(cm[1].sum())
    assert (out["sensitivity"]["low"], out["sensitivity"]["high"]) == wilson_interval(int(cm[1, 1]), int(cm[1].sum()))
    assert (out["precision"]["k"], out["precision"]["n"]) == (int(cm[1, 1]), int(cm[:, 1].sum()))
    assert out["f1_positive"]["value"] == rep["f1_positive"] and out["auroc"]["value"] == rep["auroc"]
    low, high = bootstrap.bootstrap_ci(_f1, y, p, groups=subjects, n_resamples=200, seed=3)
    assert (out["f1_positive"]["low"], out["f1_positive"]["high"]) == (low, high)
    assert out["bootstrap"]["unit"] == "subject" and out["auroc"]["low"] <= rep["auroc"] <= out["auroc"]["high"]


def test_paired_differences_for_the_gate():
    y, p, _ = _scored_split()
    out = bootstrap.paired_differences(y, p, 0.5, p, 0.5, n_resamples=50)
    assert all(out[m] == {"point": 0.0, "low": 0.0, "high": 0.0}
               for m in ("f1_positive", "sensitivity", "weighted_f1", "auroc"))
    out = bootstrap.paired_differences(y, p, 0.9, p, 0.5, n_resamples=200)  # a stricter threshold misses cells
    assert out["sensitivity"]["high"] < 0


def test_subject_level_hand_count():
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.1, 0.2, 0.3]
    g = ["A", "A", "A", "B", "B", "C", "C"]
    out = bootstrap.subject_level(y, p, 0.5, g)
    rows = {r["subject"]: r for r in out["subjects"]}
    assert (rows["A"]["cells"], rows["A"]["flagged"], rows["A"]["label"]) == (3, 2, 1)
    assert (rows["B"]["flagged_fraction"], rows["C"]["flagged_fraction"]) == (0.5, 0.0)
    assert (rows["A"]["flagged_low"], rows["A"]["flagged_high"]) == wilson_interval(2, 3)
    assert out["auroc_flagged_fraction"] == 1.0  # A (2/3) above B (1/2) and C (0)


def test_bootstrap_refuses_partly_known_subjects():
    y, p, subjects = _scored_split(30)
    groups = subjects.astype(object)
    groups[3] = None
    with pytest.raises(ValueError, match="every sample has a subject"):
        bootstrap.bootstrap_ci(_f1, y, p, groups=groups, n_resamples=5)
