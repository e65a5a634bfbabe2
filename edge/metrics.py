"""Binary screening metrics in plain numpy: confusion matrix, F1, sensitivity, AUROC, thresholds.

numpy only, beside the other screening statistics (leukedge.edge.stats, which builds its bootstrap
intervals on these): one home for the device and the workstation (train, optimize, benchmark) alike.
Decisions go through `leukedge.edge.decision.decide`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .decision import decide


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
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    y_true: (N,) 0/1 or bool, 1 = positive; scores: (N,) any real scores, higher = more positive.
    Returns a float in [0, 1], or None if one class is absent. O(N log N).
    """
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    uniq, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct value's first occurrence
    avg_rank = first_rank + (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
        "positive_index": int(positive),
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
    """`binary_report` of the decisions `decide(p_positive, threshold)`, with AUROC from the scores.

    y_true: (N,) class indices into `labels`; p_positive: (N,) P(labels[positive]).
    """
    p = np.asarray(p_positive, dtype=np.float64)
    pred = np.where(decide(p, threshold), positive, 1 - positive)
    rep = binary_report(y_true, pred, labels, positive, scores=p)
    rep["threshold"] = float(threshold)
    return rep


def choose_threshold(y_true: Sequence[int], p_positive: Sequence[float], positive: int = 1,
                     min_recall: float | None = None) -> float:
    """Decision threshold on P(positive), chosen on one split (normally validation).

    Candidates are every distinct score plus 0.5. Default: the candidate with the best F1 of
    the positive class. With `min_recall`, the best-F1 candidate among those whose
    positive-class recall is >= min_recall; if none reaches it (only possible for
    min_recall > 1), the lowest candidate. Ties in F1 go to the candidate nearest 0.5
    (least fitted to this split). If one class is absent, 0.5.

    y_true: (N,) class indices; p_positive: (N,) probabilities. O(N log N): scores are
    sorted once and TP/FP counted by cumulative sums.
    """
    t = np.asarray(y_true) == positive
    p = np.asarray(p_positive, dtype=np.float64)
    n_pos = int(t.sum())
    if n_pos == 0 or n_pos == len(t):
        return 0.5
    candidates = np.unique(np.concatenate([p, [0.5]]))  # ascending
    order = np.argsort(-p, kind="mergesort")
    p_desc, t_desc = p[order], t[order]
    tp_cum = np.concatenate([[0], np.cumsum(t_desc)])
    fp_cum = np.concatenate([[0], np.cumsum(~t_desc)])
    # number of scores >= each candidate, found on the descending scores
    n_at_or_above = np.searchsorted(-p_desc, -candidates, side="right")
    tp = tp_cum[n_at_or_above]
    fp = fp_cum[n_at_or_above]
    recall = tp / n_pos
    denom = 2 * tp + fp + (n_pos - tp)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    ok = np.ones(len(candidates), bool) if min_recall is None else recall + 1e-12 >= min_recall
    if not ok.any():
        return float(candidates.min())
    # best F1 (rounded, so float noise does not break ties), then nearest 0.5
    key_f1 = np.where(ok, np.round(f1, 12), -1.0)
    best_f1 = key_f1.max()
    tied = np.flatnonzero(key_f1 == best_f1)
    return float(candidates[tied[np.argmin(np.abs(candidates[tied] - 0.5))]])
