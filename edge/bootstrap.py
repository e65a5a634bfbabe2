"""Bootstrap intervals of screening figures (percentile bootstrap, subjects resampled when known).

`screening_intervals` (F1, weighted F1, AUROC of one model), `paired_differences` (a variant against its
parent on the same cells), `subject_level` (per-subject figures), and the general `bootstrap_ci` and
`paired_bootstrap_diff`. numpy only; the metrics are leukedge.edge.metrics. Part of the one home of the
screening statistics (with leukedge.edge.stats).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .decision import decide
from .stats import wilson_interval


# -- bootstrap ------------------------------------------------------------------------------------------

def _units(y_true, groups) -> list[list[np.ndarray]]:
    """Resampling units per stratum: one list per class of index arrays (an image, or a subject)."""
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-d array, got shape {y.shape}")
    if groups is None:
        return [[np.flatnonzero(y == c)] for c in np.unique(y)]
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups must have one entry per sample, got {g.shape} for {y.shape}")
    if any(v is None for v in g.tolist()):
        raise ValueError("groups holds None for some samples: pass groups only when every sample has a subject")
    keys, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(keys))]
    # a subject's stratum is its majority class (C-NMC subjects are single-class); it stays whole
    strata: dict = {}
    for m in members:
        vals, counts = np.unique(y[m], return_counts=True)
        strata.setdefault(vals[np.argmax(counts)], []).append(m)
    return [strata[c] for c in sorted(strata)]


def _resample_indices(units: list[list[np.ndarray]], rng: np.random.Generator, by_group: bool) -> np.ndarray:
    parts = []
    for stratum in units:
        if not by_group:
            idx = stratum[0]
            parts.append(idx[rng.integers(0, len(idx), len(idx))])
        else:
            draw = rng.integers(0, len(stratum), len(stratum))
            parts.extend(stratum[i] for i in draw)
    return np.concatenate(parts)


def _bootstrap_matrix(fn: Callable[[np.ndarray], Sequence[float | None]], y_true, groups, n_resamples: int,
                      seed: int) -> np.ndarray:
    """(n_resamples, m) values of fn(indices) on seeded stratified resamples; None becomes NaN."""
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a whole number >= 1, got {n_resamples!r}")
    units = _units(y_true, groups)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(int(n_resamples)):
        idx = _resample_indices(units, rng, groups is not None)
        rows.append([np.nan if v is None else float(v) for v in fn(idx)])
    return np.asarray(rows, dtype=np.float64)


def _percentile(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None, None
    low, high = np.quantile(v, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def bootstrap_ci(metric_fn: Callable[..., float | None], y_true, *arrays, groups=None, n_resamples: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of metric_fn(y_true, *arrays).

    y_true: (N,) class indices; arrays: per-sample arrays of length N (scores or decisions), passed
    to metric_fn resampled with y_true. groups: (N,) subject ids or None.
    With groups, whole subjects are resampled with replacement within each class (a subject's class
    is its majority class; C-NMC subjects are single-class), so cells of one subject, which are not
    independent, stay together. Without, images are resampled within each class. Either way every
    resample keeps the split's class balance. One numpy Generator seeded with `seed` draws all
    resamples, so the same seed gives the same interval.
    metric_fn returns a float, or None where undefined (such resamples are left out).
    Returns (low, high) at `confidence` (percentiles (1-c)/2 and (1+c)/2), or (None, None) if no
    resample gave a value.
    """
    y = np.asarray(y_true)
    arrs = [np.asarray(a) for a in arrays]
    for a in arrs:
        if len(a) != len(y):
            raise ValueError(f"every array needs one entry per sample: {len(a)} vs {len(y)}")
    vals = _bootstrap_matrix(lambda idx: [metric_fn(y[idx], *(a[idx] for a in arrs))], y, groups,
                             n_resamples, seed)
    return _percentile(vals[:, 0], confidence)


def paired_bootstrap_diff(metric_fn: Callable[..., float | None], y_true, a, b, groups=None,
                          n_resamples: int = 1000, seed: int = 0,
                          confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Difference metric(y, a) - metric(y, b) with a paired percentile bootstrap interval.

    a: the variant's per-sample scores or decisions, b: its parent's, on the same N samples.
    Both are scored on the very same resamples (drawn as in `bootstrap_ci`), so what the two share
    cancels and the interval is much narrower than two separate intervals would suggest.
    Returns (point, low, high); point is on the full set. A gate on a drop budget fails the variant
    when low < -budget (the worst plausible drop exceeds it).
    """
    y, xa, xb = np.asarray(y_true), np.asarray(a), np.asarray(b)
    if not len(xa) == len(xb) == len(y):
        raise ValueError(f"y_true, a and b differ in length: {len(y)}, {len(xa)}, {len(xb)}")

    def diff(yy, aa, bb):
        ma, mb = metric_fn(yy, aa), metric_fn(yy, bb)
        return None if ma is None or mb is None else ma - mb

    point = diff(y, xa, xb)
    vals = _bootstrap_matrix(lambda idx: [diff(y[idx], xa[idx], xb[idx])], y, groups, n_resamples, seed)
    low, high = _percentile(vals[:, 0], confidence)
    return (None if point is None else float(point)), low, high


def _report(y, p, threshold, positive) -> dict:
    from .metrics import report_at_threshold

    rep = report_at_threshold(y, p, threshold, positive=positive)
    rep["precision"] = rep["per_class"][rep["labels"][positive]]["precision"]
    return rep


_BOOTSTRAP_METRICS = ("f1_positive", "weighted_f1", "auroc")
_DIFF_METRICS = ("f1_positive", "sensitivity", "weighted_f1", "auroc")


def screening_intervals(y_true, p_positive, threshold: float, groups=None, positive: int = 1,
                        n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Every interval a screening report gives, for results.json, cards and train/optimize reports.

    y_true: (N,) class indices; p_positive: (N,) calibrated P(positive); threshold on the same scale;
    groups: (N,) subject ids (C-NMC) or None (images). Wilson intervals for sensitivity,
    specificity and precision (k/n counts from the confusion matrix); percentile bootstrap (see
    `bootstrap_ci`) for F1 of the positive class, weighted F1 and AUROC, all three on the same
    resamples. Returns
    {"confidence", "bootstrap": {"n_resamples", "seed", "unit": "subject"|"image", "stratified_by": "class",
     "interval": "percentile"},
     "sensitivity"|"specificity"|"precision": {"value", "low", "high", "k", "n", "method": "wilson"},
     "f1_positive"|"weighted_f1"|"auroc": {"value", "low", "high", "method": "bootstrap"}}.
    """
    y = np.asarray(y_true)
    p = np.asarray(p_positive, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"y_true and p_positive differ in shape: {y.shape} vs {p.shape}")
    rep = _report(y, p, threshold, positive)
    cm = np.asarray(rep["confusion_matrix"])
    neg = 1 - positive
    tp, fn, fp, tn = int(cm[positive, positive]), int(cm[positive, neg]), int(cm[neg, positive]), int(cm[neg, neg])
    out: dict = {"confidence": float(confidence),
                 "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed),
                               "unit": "image" if groups is None else "subject", "stratified_by": "class",
                               "interval": "percentile"}}
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("precision", tp, tp + fp)):
        low, high = wilson_interval(k, n, confidence)
        out[name] = {"value": k / n if n else None, "low": low, "high": high, "k": k, "n": n, "method": "wilson"}

    def fn_(idx):
        r = _report(y[idx], p[idx], threshold, positive)
        return [r[m] for m in _BOOTSTRAP_METRICS]

    mat = _bootstrap_matrix(fn_, y, groups, n_resamples, seed)
    for j, name in enumerate(_BOOTSTRAP_METRICS):
        low, high = _percentile(mat[:, j], confidence)
        out[name] = {"value": rep[name], "low": low, "high": high, "method": "bootstrap"}
    return out


def paired_differences(y_true, p_variant, threshold_variant: float, p_parent, threshold_parent: float,
                       groups=None, positive: int = 1, n_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> dict:
    """Variant minus parent for F1 (positive class), sensitivity, weighted F1 and AUROC, paired bootstrap.

    Both models scored on the same N samples (each at its own threshold, each on its own calibrated
    scale). Returns {"confidence", "bootstrap": {...}, metric: {"point", "low", "high"}}; for
    `optimize --gate ci`, a variant fails a drop budget B on a metric when its "low" < -B.
    """
    y = np.asarray(y_true)
    pv, pp = np.asarray(p_variant, dtype=np.float64), np.asarray(p_parent, dtype=np.float64)
    if not pv.shape == pp.shape == y.shape:
        raise ValueError(f"y_true, p_variant and p_parent differ in shape: {y.shape}, {pv.shape}, {pp.shape}")

    def diffs(idx):
        rv = _report(y[idx], pv[idx], threshold_variant, positive)
        rp = _report(y[idx], pp[idx], threshold_parent, positive)
        return [None if rv[m] is None or rp[m] is None else rv[m] - rp[m] for m in _DIFF_METRICS]

    full = diffs(np.arange(len(y)))
    mat = _bootstrap_matrix(diffs, y, groups, n_resamples, seed)
    out: dict = {"confidence": float(confidence),
                 "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed),
                               "unit": "image" if groups is None else "subject", "stratified_by": "class",
                               "interval": "percentile", "paired": True}}
    for j, name in enumerate(_DIFF_METRICS):
        low, high = _percentile(mat[:, j], confidence)
        out[name] = {"point": full[j], "low": low, "high": high}
    return out


def subject_level(y_true, p_positive, threshold: float, groups, positive: int = 1,
                  confidence: float = 0.95) -> dict:
    """Per-subject flagged fraction and how well it separates subjects (AUROC across subjects).

    y_true: (N,) class indices; p_positive: (N,) calibrated P(positive); groups: (N,) subject ids.
    A subject's true class is its majority class. Returns {"subjects": [{"subject", "label", "cells",
    "flagged", "flagged_fraction", "flagged_low", "flagged_high" (Wilson), "mean_p_positive"}...],
    "n_subjects", "auroc_flagged_fraction", "auroc_mean_p"} (AUROC None when a class has no subject).
    """
    from .metrics import auroc

    y = np.asarray(y_true)
    p = np.asarray(p_positive, dtype=np.float64)
    g = np.asarray(groups)
    if not y.shape == p.shape == g.shape:
        raise ValueError(f"y_true, p_positive and groups differ in shape: {y.shape}, {p.shape}, {g.shape}")
    flagged = np.asarray(decide(p, threshold), dtype=bool)
    rows = []
    for key in np.unique(g):
        m = g == key
        vals, counts = np.unique(y[m], return_counts=True)
        n, k = int(m.sum()), int(flagged[m].sum())
        low, high = wilson_interval(k, n, confidence)
        rows.append({"subject": key.item() if hasattr(key, "item") else key, "label": int(vals[np.argmax(counts)]),
                     "cells": n, "flagged": k, "flagged_fraction": k / n, "flagged_low": low, "flagged_high": high,
                     "mean_p_positive": float(p[m].mean())})
    is_pos = [r["label"] == positive for r in rows]
    return {"subjects": rows, "n_subjects": len(rows),
            "auroc_flagged_fraction": auroc(is_pos, [r["flagged_fraction"] for r in rows]),
            "auroc_mean_p": auroc(is_pos, [r["mean_p_positive"] for r in rows])}
