"""Screening statistics, one TensorFlow-free home for the device and the workstation alike (issue 19).

numpy and the standard library only. The device uses the intervals (a sample's flagged fraction); the
workstation the calibration measures, the temperature fit and the bootstrap intervals of its reports.

- `wilson_interval`: Wilson score interval for a binomial proportion (Wilson 1927, JASA 22:209).
- `rogan_gladen`, `rogan_gladen_interval`: apparent (test-positive) fraction corrected for an imperfect
  test's sensitivity and specificity (Rogan & Gladen 1978, Am J Epidemiol 107:71).
- `expected_calibration_error`, `brier_score`, `reliability_curve`, `negative_log_likelihood`.
- `fit_temperature`, `fit_temperature_if_judgeable`, `calibration_report`, `threshold_on_calibrated_scale`
  (temperature scaling, Guo et al. 2017).
- the bootstrap intervals (`screening_intervals`, `paired_differences`, ...): leukedge.edge.bootstrap.

Conventions: `y_true` holds class indices (0/1 for the binary task) unless a function says it takes
0/1 "is positive" flags; `p` is P(positive) in [0, 1]; `logits` are (N, K) pre-softmax outputs.
The per-sample summary that uses the intervals on the device is `leukedge.edge.summary`; the plots are
`leukedge.reports`.
"""

from __future__ import annotations

import math

import numpy as np

from .calibration import p_positive_from_logits  # noqa: F401 - re-exported: the temperature's one implementation
from .decision import decide

# -- intervals and prevalence (the device's summary uses these) ----------------------------------------------------------------------

def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    from statistics import NormalDist  # here: statistics imports fractions, decimal and random

    return NormalDist().inv_cdf(0.5 + confidence / 2.0)  # 1.959964 for 0.95


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    k: successes (e.g. cells flagged ALL, true positives), 0 <= k <= n; n: trials.
    confidence: two-sided level, 0.95 gives z = 1.959964 (normal quantile, stdlib NormalDist).
    Returns (low, high) within [0, 1]; n = 0 gives (0.0, 1.0) (nothing is known).
    Formula (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the Wald interval for
    small n and proportions near 0 or 1):
        centre = (p + z^2/2n) / (1 + z^2/n),  half = z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
    Example: k = 8, n = 10 gives (0.4902, 0.9433).
    Raises ValueError for k or n negative, non-integer, or k > n.
    """
    if int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be whole counts, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    z2n = z * z / n
    denom = 1.0 + z2n
    centre = (p + z2n / 2.0) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _check_rate(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return v


def rogan_gladen(apparent: float, sensitivity: float, specificity: float) -> float:
    """True prevalence estimated from the apparent (test-positive) fraction of an imperfect test.

    apparent: fraction of cells the model flagged positive, in [0, 1];
    sensitivity, specificity: the model's validated rates (from its card), in [0, 1].
    Returns (apparent + specificity - 1) / (sensitivity + specificity - 1), clipped to [0, 1]
    (Rogan & Gladen 1978). Example: apparent 0.30, sensitivity 0.90, specificity 0.80 gives 1/7.
    Raises ValueError when sensitivity + specificity <= 1: such a test is no better than chance
    and the correction is undefined (or flips sign).
    """
    a = _check_rate("apparent fraction", apparent)
    se = _check_rate("sensitivity", sensitivity)
    sp = _check_rate("specificity", specificity)
    youden = se + sp - 1.0
    if youden <= 0.0:
        raise ValueError(f"sensitivity + specificity must exceed 1 for the Rogan-Gladen correction, "
                         f"got {se:g} + {sp:g}")
    return min(1.0, max(0.0, (a + sp - 1.0) / youden))


def rogan_gladen_interval(k: int, n: int, sensitivity: float, specificity: float,
                          confidence: float = 0.95) -> tuple[float, float]:
    """Interval of the Rogan-Gladen corrected fraction: the Wilson bounds of k/n, each corrected.

    k cells flagged out of n classified. The correction is increasing in the apparent fraction,
    so transforming the bounds gives an interval for the corrected fraction. It ignores the
    uncertainty of sensitivity and specificity themselves (they are treated as known), so it is
    too narrow when they were measured on few cells (Lang & Reiczigel 2014 widen it).
    Returns (low, high) in [0, 1]; raises ValueError like `rogan_gladen` and `wilson_interval`.
    """
    low, high = wilson_interval(k, n, confidence)
    return rogan_gladen(low, sensitivity, specificity), rogan_gladen(high, sensitivity, specificity)


ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width bins; kept so figures compare with the literature


# -- calibration measures -----------------------------------------------------------------------------

def _binary_inputs(y_true, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    q = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or q.shape != y.shape:
        raise ValueError(f"y_true and p must be 1-d of the same length, got {y.shape} and {q.shape}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 (is the positive class) for a binary calibration measure")
    if not (np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all()):
        raise ValueError("p must hold probabilities in [0, 1]")
    return y.astype(np.float64), q


def _bin_members(p: np.ndarray, y: np.ndarray, bins: int, strategy: str) -> list[np.ndarray]:
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
    bins = int(bins)
    if strategy == "uniform":
        # [k/B, (k+1)/B), the last bin closed at 1
        idx = np.minimum((p * bins).astype(np.int64), bins - 1)
        return [np.flatnonzero(idx == b) for b in range(bins)]
    if strategy == "quantile":
        # equal mass: sort by (p, y) so ties split the same way whatever the input order
        order = np.lexsort((y, p))
        return list(np.array_split(order, min(bins, len(p))))
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def reliability_curve(y_true, p, bins: int = ECE_BINS, strategy: str = "uniform") -> dict:
    """Observed positive fraction against mean predicted P(positive), per bin.

    y_true: (N,) 0/1, 1 = positive; p: (N,) P(positive) in [0, 1].
    strategy "uniform": `bins` equal-width bins [k/B, (k+1)/B) (the last one closed);
    "quantile": `bins` equal-mass bins of consecutive sorted scores (Nixon et al. 2019), sizes
    differing by at most one. Empty bins are left out.
    Returns {"strategy", "bins", "lower", "upper", "count", "mean_p", "fraction_positive"}, lists
    of equal length (lower/upper: the bin's edges for uniform bins, its smallest/largest score
    for quantile bins). Raises ValueError for mismatched or out-of-range input.
    """
    y, q = _binary_inputs(y_true, p)
    out = {"strategy": strategy, "bins": int(bins), "lower": [], "upper": [], "count": [], "mean_p": [],
           "fraction_positive": []}
    for b, members in enumerate(_bin_members(q, y, bins, strategy)):
        if members.size == 0:
            continue
        if strategy == "uniform":
            lo, hi = b / bins, (b + 1) / bins
        else:
            lo, hi = float(q[members].min()), float(q[members].max())
        out["lower"].append(lo)
        out["upper"].append(hi)
        out["count"].append(int(members.size))
        out["mean_p"].append(float(q[members].mean()))
        out["fraction_positive"].append(float(y[members].mean()))
    return out


def expected_calibration_error(y_true, p, bins: int = ECE_BINS, strategy: str = "uniform") -> float:
    """Expected calibration error of P(positive): sum over bins of (n_b / N) * |fraction_b - mean_p_b|.

    y_true: (N,) 0/1, 1 = positive; p: (N,) P(positive) in [0, 1]; bins, strategy: as in
    `reliability_curve` (15 equal-width bins by default, after Guo et al. 2017; "quantile" for the
    equal-mass variant). Measured on P(positive), the number the device reports (like scikit-learn's
    calibration_curve), not on the top-label confidence Guo et al. use. Returns a float in [0, 1].
    """
    curve = reliability_curve(y_true, p, bins, strategy)
    n = sum(curve["count"])
    return float(sum(c / n * abs(f - m) for c, f, m in
                     zip(curve["count"], curve["fraction_positive"], curve["mean_p"])))


def brier_score(y_true, p) -> float:
    """Brier score of P(positive): mean of (p - y)^2 over the N samples (Brier 1950); 0 is perfect.

    y_true: (N,) 0/1, 1 = positive; p: (N,) P(positive) in [0, 1]. Returns a float in [0, 1].
    """
    y, q = _binary_inputs(y_true, p)
    return float(np.mean((q - y) ** 2))


# -- temperature scaling ------------------------------------------------------------------------------

def _logits_and_labels(logits, y_true) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2, got shape {z.shape}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"y_true must be ({z.shape[0]},) class indices, got shape {y.shape}")
    if z.shape[0] == 0:
        raise ValueError("no samples")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    if not np.issubdtype(y.dtype, np.integer) and not np.array_equal(y, np.round(y)):
        raise ValueError("y_true must hold class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"y_true must lie in 0..{z.shape[1] - 1}")
    return z, y


def negative_log_likelihood(logits, y_true, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood -mean(log softmax(logits / T)[y]) in nats.

    logits: (N, K) pre-softmax outputs; y_true: (N,) class indices; temperature: T > 0.
    """
    z, y = _logits_and_labels(logits, y_true)
    zt = z / float(temperature)
    m = zt.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(zt - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - zt[np.arange(len(y)), y]))


def fit_temperature(logits, y_true, bounds: tuple[float, float] = (0.05, 20.0), tol: float = 1e-7) -> float:
    """Temperature T that minimises the negative log-likelihood of softmax(logits / T) on a split.

    Why: modern networks are over-confident; dividing the logits by one scalar T > 0 fitted on
    held-out data (the validation split) repairs most of the miscalibration without changing any
    ranking or accuracy (temperature scaling, Guo et al. 2017, "On Calibration of Modern Neural
    Networks", ICML). NLL is the proper scoring rule they fit it with.

    logits: (N, K) pre-softmax outputs of the model being calibrated (one fit per variant: an int8
    model's logits differ from its float parent's); y_true: (N,) class indices.
    bounds: the search range of T. Method: golden-section search on log T (no scipy). NLL is convex
    in 1/T (a log-sum-exp of linear functions minus a linear one), hence unimodal in log T, so the
    search finds the global minimum within the bounds; `tol` is the final bracket width in log T.
    Returns T (float). A split the model separates perfectly drives T towards the lower bound,
    which is then returned. Raises ValueError for bad shapes, labels or bounds.
    """
    z, y = _logits_and_labels(logits, y_true)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0 < lo < hi or not math.isfinite(hi):
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds!r}")
    rows = np.arange(len(y))
    target = z[rows, y]

    def nll(u: float) -> float:
        t = math.exp(u)
        zt = z / t
        m = zt.max(axis=1, keepdims=True)
        return float(np.mean(m[:, 0] + np.log(np.exp(zt - m).sum(axis=1)) - target / t))

    a, b = math.log(lo), math.log(hi)
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = nll(d)
    u = (a + b) / 2.0
    # the minimum may sit on an end of the range (e.g. perfectly separated data)
    best = min((nll(u), u), (nll(math.log(lo)), math.log(lo)), (nll(math.log(hi)), math.log(hi)))
    return float(math.exp(best[1]))


MIN_CALIBRATION_IMAGES = 50  # optimize's own floor for a gate verdict (optimize.run.MIN_VALIDATION)
FITTED = "fitted"
NOT_FITTED = "not fitted"


def fit_temperature_if_judgeable(logits, y_true, positive_index: int = 1, min_images: int = MIN_CALIBRATION_IMAGES,
                                 bounds: tuple[float, float] = (0.05, 20.0)) -> tuple[float, str, str]:
    """Fit a temperature only where the split can judge one; otherwise T = 1 with the reason (issue 21).

    logits: (N, 2) pre-softmax outputs on the validation split; y_true: (N,) class indices.
    Not fitted (T = 1) when: fewer than `min_images` images (a handful of cells pins T to whichever bound
    their NLL prefers); one class only; the scores separate the classes without overlap (NLL then falls
    without limit as T -> 0, so any fitted T is the search's lower bound: every P becomes 0 or 1); or the
    fit lands on a bound of `bounds` (within 1 %), which says the same.
    Returns (temperature, status: FITTED | NOT_FITTED, reason: one line, '' when fitted).
    Raises ValueError for bad shapes or labels (fit_temperature).
    """
    z, y = _logits_and_labels(logits, y_true)
    n = len(y)
    if n < min_images:
        return 1.0, NOT_FITTED, f"only {n} validation images (< {min_images}): too few to judge a temperature"
    pos = y == positive_index
    if pos.all() or not pos.any():
        return 1.0, NOT_FITTED, "the validation split holds one class only"
    margin = z[:, positive_index] - z[:, 1 - positive_index]
    if margin[~pos].max() < margin[pos].min():
        return 1.0, NOT_FITTED, ("the validation scores separate the classes without overlap: the likelihood "
                                 "would sharpen P towards 0 and 1 without limit")
    t = fit_temperature(z, y, bounds)
    if t <= bounds[0] * 1.01 or t >= bounds[1] / 1.01:
        return 1.0, NOT_FITTED, f"the fit reached the search bound (T = {t:.3g} of {bounds[0]:g}..{bounds[1]:g})"
    return t, FITTED, ""


def calibration_report(logits, y_true, temperature: float, positive_index: int = 1,
                       bins: int = ECE_BINS) -> dict:
    """Calibration figures before (T = 1) and after (T = temperature) for a card or report.

    logits: (N, 2) pre-softmax outputs; y_true: (N,) class indices; positive_index: the positive
    class. Returns {"method", "temperature", "n", "bins", "nll_before", "nll_after", "ece_before",
    "ece_after", "ece_quantile_before", "ece_quantile_after", "brier_before", "brier_after"}
    (ECE with `bins` equal-width and equal-mass bins on P(positive)). The caller adds which split it
    was measured on.
    """
    z, y = _logits_and_labels(logits, y_true)
    is_pos = (y == positive_index).astype(np.int64)
    out = {"method": "temperature scaling (Guo et al. 2017), NLL fit", "temperature": float(temperature),
           "n": int(len(y)), "bins": int(bins)}
    for tag, t in (("before", 1.0), ("after", float(temperature))):
        p = p_positive_from_logits(z, positive_index, t)
        out[f"nll_{tag}"] = negative_log_likelihood(z, y, t)
        out[f"ece_{tag}"] = expected_calibration_error(is_pos, p, bins, "uniform")
        out[f"ece_quantile_{tag}"] = expected_calibration_error(is_pos, p, bins, "quantile")
        out[f"brier_{tag}"] = brier_score(is_pos, p)
    return out


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def threshold_on_calibrated_scale(threshold: float, temperature: float, logits=None, positive_index: int = 1,
                                  p_before=None, p_after=None) -> float:
    """Re-express a threshold on P = softmax(logits) as one on P_T = softmax(logits / T), same decisions.

    For two classes P(positive) = sigmoid(d), d = logit_pos - logit_neg, and P_T = sigmoid(d / T).
    Both increase with d, so  sigmoid(d) >= t  <=>  d >= logit(t)  <=>  sigmoid(d / T) >= sigmoid(logit(t) / T).
    threshold: t on the uncalibrated scale, in [0, 1] (0 and 1 map to themselves; T = 1 returns t);
    temperature: T > 0.
    logits: optional (N, 2) outputs the threshold was chosen on (the validation split); p_before,
    p_after: optional (N,) P(positive) at T = 1 and at T exactly as the device computes them (any
    float dtype), by default `p_positive_from_logits(logits, positive_index, 1 or T)` in float64.
    When these are available the result is checked with `decide` and, if rounding would flip a cell
    lying exactly on the threshold, moved onto the nearest calibrated score (in p_after's dtype)
    that keeps every decision. Pass them: training picks thresholds among the observed scores, so a
    cell lies exactly on the threshold, and the closed form alone flips it in about a quarter of
    such cases (the logit/sigmoid round trip rounds; a float32 P rounds more).
    Raises ValueError when no threshold can keep them (cells with different decisions round to the
    same calibrated score: with float64 P only for T < 1 and a threshold within ~1e-6 of 0 or 1).
    Returns the calibrated threshold (float).
    """
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    temp = float(temperature)
    if not math.isfinite(temp) or temp <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temp == 1.0 or t in (0.0, 1.0):
        t_cal = t  # nothing to re-express (and no logit/sigmoid round trip to round)
    else:
        t_cal = _sigmoid((math.log(t) - math.log1p(-t)) / temp)
    if logits is not None:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != 2:
            raise ValueError(f"logits must be (N, 2), got shape {z.shape}")
        if p_before is None:
            p_before = p_positive_from_logits(z, positive_index, 1.0)
        if p_after is None:
            p_after = p_positive_from_logits(z, positive_index, temp)
    if p_before is None or p_after is None:
        return t_cal
    p_before, p_after = np.atleast_1d(np.asarray(p_before)), np.atleast_1d(np.asarray(p_after))
    if p_before.shape != p_after.shape or p_before.ndim != 1:
        raise ValueError(f"p_before and p_after must be (N,) alike, got {p_before.shape} and {p_after.shape}")
    if not np.issubdtype(p_after.dtype, np.floating):
        p_after = p_after.astype(np.float64)
    before = np.asarray(decide(p_before, t), dtype=bool)
    if np.array_equal(np.asarray(decide(p_after, t_cal), dtype=bool), before):
        return t_cal
    if before.any() and t_cal > p_after[before].min():
        t_cal = float(p_after[before].min())
    if (~before).any() and t_cal <= p_after[~before].max():
        t_cal = float(np.nextafter(p_after[~before].max(), p_after.dtype.type(np.inf)))
    changed = int((np.asarray(decide(p_after, t_cal), dtype=bool) != before).sum())
    if changed:
        raise ValueError(f"no threshold on the calibrated scale (T={temp:g}) keeps all decisions: "
                         f"{changed} cells tie across it after rounding")
    return t_cal
