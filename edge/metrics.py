"""Binary screening metrics in plain numpy: confusion matrix, F1, sensitivity, AUROC, thresholds."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int = 2) -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as class j."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape} vs {p.shape}")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= n_classes or p.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def per_class(cm: np.ndarray) -> list[dict]:
    out = []
    for k in range(cm.shape[0]):
        tp = cm[k, k]
        fp = cm[:, k].sum() - tp
        fn = cm[k, :].sum() - tp
        precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
        f1 = _div(2 * precision * recall, precision + recall)
        out.append({"precision": precision, "recall": recall, "f1": f1, "support": int(cm[k, :].sum())})
    return out


def auroc(y_true: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None if one class is absent."""
    t = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int((t == 1).sum()), int((t == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str] = ("hem", "all"),
                  positive: int = 1, scores: Sequence[float] | None = None) -> dict:
    """Everything a screening report needs; `positive` is the index of the disease class."""
    cm = confusion_matrix(y_true, y_pred, 2)
    pc = per_class(cm)
    support = np.array([c["support"] for c in pc], dtype=np.float64)
    neg = 1 - positive
    report = {
        "n": int(cm.sum()),
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "per_class": {labels[k]: pc[k] for k in range(2)},
        "accuracy": _div(np.trace(cm), cm.sum()),
        "f1_positive": pc[positive]["f1"],
        "f1_negative": pc[neg]["f1"],
        "macro_f1": float(np.mean([c["f1"] for c in pc])),
        "weighted_f1": _div(sum(c["f1"] * s for c, s in zip(pc, support)), support.sum()),
        "sensitivity": pc[positive]["recall"],  # recall of the disease class: missed blasts cost most
        "specificity": pc[neg]["recall"],
        "false_negatives": int(cm[positive, neg]),
        "false_positives": int(cm[neg, positive]),
    }
    if scores is not None:
        report["auroc"] = auroc(np.asarray(y_true) == positive, scores)
    return report


def report_at_threshold(y_true: Sequence[int], p_positive: Sequence[float], threshold: float,
                        labels: Sequence[str] = ("hem", "all"), positive: int = 1) -> dict:
    p = np.asarray(p_positive, dtype=np.float64)
    pred = np.where(p >= threshold, positive, 1 - positive)
    rep = binary_report(y_true, pred, labels, positive, scores=p)
    rep["threshold"] = float(threshold)
    return rep


def choose_threshold(y_true: Sequence[int], p_positive: Sequence[float], positive: int = 1,
                     min_recall: float | None = None) -> float:
    """Decision threshold on P(positive).

    Default: the threshold with the best F1 of the positive class. With `min_recall`,
    the best-F1 threshold among those keeping positive-class recall >= min_recall
    (the highest threshold that does, if none reaches it otherwise).
    """
    t = np.asarray(y_true) == positive
    p = np.asarray(p_positive, dtype=np.float64)
    if t.sum() == 0 or t.sum() == len(t):
        return 0.5
    candidates = np.unique(np.concatenate([p, [0.5]]))
    best, best_key = 0.5, None
    n_pos = t.sum()
    for thr in candidates:
        pred = p >= thr
        tp = int((pred & t).sum())
        fp = int((pred & ~t).sum())
        recall = tp / n_pos
        if min_recall is not None and recall + 1e-12 < min_recall:
            continue
        f1 = _div(2 * tp, 2 * tp + fp + (n_pos - tp))
        # Prefer higher F1; on ties, the threshold nearest 0.5 (least overfit to this split).
        key = (round(f1, 12), -abs(thr - 0.5))
        if best_key is None or key > best_key:
            best, best_key = float(thr), key
    if best_key is None:  # unreachable recall: take the loosest threshold that still separates
        best = float(candidates.min())
    return best
