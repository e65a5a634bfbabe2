import numpy as np
import pytest

from leukedge.edge.metrics import auroc, binary_report, choose_threshold, confusion_matrix, report_at_threshold


def test_confusion_matrix_and_report_by_hand():
    # true: 4 ALL (1), 2 HEM (0); predicted: 3 of 4 ALL right, 1 HEM called ALL
    y = [1, 1, 1, 1, 0, 0]
    p = [1, 1, 1, 0, 1, 0]
    cm = confusion_matrix(y, p)
    assert cm.tolist() == [[1, 1], [1, 3]]
    r = binary_report(y, p)
    # ALL: precision 3/4, recall 3/4, F1 0.75; HEM: precision 1/2, recall 1/2, F1 0.5
    assert r["f1_positive"] == pytest.approx(0.75)
    assert r["f1_negative"] == pytest.approx(0.5)
    assert r["macro_f1"] == pytest.approx(0.625)
    assert r["weighted_f1"] == pytest.approx((0.75 * 4 + 0.5 * 2) / 6)
    assert r["sensitivity"] == pytest.approx(0.75)
    assert r["specificity"] == pytest.approx(0.5)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["false_negatives"] == 1 and r["false_positives"] == 1


def test_zero_division_gives_zero_not_nan():
    r = binary_report([0, 0], [0, 0])
    assert r["f1_positive"] == 0.0 and r["specificity"] == 1.0


def test_auroc_by_hand_with_ties():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 1], [0.2, 0.3]) is None


def test_threshold_best_f1_and_min_recall():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.5, 0.6, 0.2, 0.7, 0.9])
    # at 0.7: TP 2, FP 0, FN 1 -> F1 0.8 (best); recall 1 needs 0.2: TP 3, FP 2 -> F1 0.75
    thr = choose_threshold(y, p)
    assert thr == pytest.approx(0.7)
    assert report_at_threshold(y, p, thr)["f1_positive"] == pytest.approx(0.8)
    thr_r = choose_threshold(y, p, min_recall=1.0)
    assert thr_r == pytest.approx(0.2)
    assert report_at_threshold(y, p, thr_r)["f1_positive"] == pytest.approx(0.75)
    assert report_at_threshold(y, p, thr_r)["sensitivity"] == 1.0


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0])


def _brute_force_threshold(y, p, min_recall=None):
    """The rule as the docstring states it, one candidate at a time (the old O(N * unique) code)."""
    t = np.asarray(y) == 1
    best, best_key = None, None
    for thr in np.unique(np.concatenate([p, [0.5]])):
        pred = p >= thr
        tp, fp = int((pred & t).sum()), int((pred & ~t).sum())
        if min_recall is not None and tp / t.sum() + 1e-12 < min_recall:
            continue
        f1 = 2 * tp / (2 * tp + fp + (t.sum() - tp))
        key = (round(f1, 12), -abs(thr - 0.5))
        if best_key is None or key > best_key:
            best, best_key = float(thr), key
    return best


@pytest.mark.parametrize("seed", range(6))
def test_sorted_threshold_search_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)  # rounded: many ties
    for min_recall in (None, 0.9, 0.99):
        assert choose_threshold(y, p, min_recall=min_recall) == _brute_force_threshold(y, p, min_recall)


def test_one_decision_rule():
    from leukedge.edge.decision import decide, label_for

    assert decide(0.5, 0.5) is True and decide(0.4999, 0.5) is False
    assert decide(np.array([0.2, 0.7]), 0.5).tolist() == [False, True]
    assert label_for(0.9, 0.5, ["all", "hem"], 0) == "all" and label_for(0.1, 0.5, ["all", "hem"], 0) == "hem"
