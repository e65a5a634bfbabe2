"""Model outputs to a calibrated P(ALL) on the device: softmax with the card's temperature, and the check
that a model whose card says `probabilities` really outputs them.

numpy and the standard library only (no TensorFlow, no scipy). Every device start imports this module (the
classifier's softmax), so it holds nothing else: the screening statistics are `leukedge.edge.stats`, the
per-sample summary and its grouping rules `leukedge.edge.summary`.

- `softmax`, `p_positive_from_logits`: temperature scaling applied on the device (Guo et al. 2017,
  "On Calibration of Modern Neural Networks", ICML): P = softmax(logits / T).
- `check_probabilities`: a `probabilities` card's outputs must lie in [0, 1] and sum to 1 (issue 18).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import LeukedgeError


# -- temperature scaling ---------------------------------------------------------------------------

def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Softmax of `logits / temperature` over the last axis, computed stably in float64.

    logits: array of shape (..., K), any real values (dequantized model outputs).
    temperature: T > 0; T = 1 is the plain softmax, T > 1 softens an over-confident model.
    Returns float64 probabilities of the same shape, summing to 1 over the last axis.
    The maximum is subtracted before exponentiating, so large logits do not overflow.
    Raises ValueError for T <= 0 or a non-finite T, or a 0-d input.
    Float64 on purpose: the workstation re-expresses the threshold with these very numbers
    (`leukedge.edge.stats.threshold_on_calibrated_scale`), so device and workstation decide alike.
    """
    t = _check_temperature(temperature)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0:
        raise ValueError("logits must have at least one axis (the classes)")
    z = z / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def p_positive_from_logits(logits, positive_index: int, temperature: float = 1.0):
    """Calibrated P(positive class) = softmax(logits / T)[..., positive_index].

    logits: (..., K) array; positive_index: the card's positive label index; temperature: the
    card's `calibration["temperature"]` (1.0 when the card has none).
    Returns a float for a 1-d input (one cell), else a float64 array of shape logits.shape[:-1].
    """
    p = softmax(logits, temperature)
    if not -p.shape[-1] <= positive_index < p.shape[-1]:
        raise ValueError(f"positive_index {positive_index} out of range for {p.shape[-1]} classes")
    out = p[..., positive_index]
    return float(out) if out.ndim == 0 else out


class NotProbabilitiesError(LeukedgeError, RuntimeError):
    """A model whose card says `probabilities` returned outputs that are not a probability distribution."""


PROBABILITY_TOLERANCE = 2e-3  # float16 softmax heads sum to 1 within ~1e-3; a logit head misses by far more


def probability_tolerance(output_scale: float = 0.0, classes: int = 2) -> float:
    """How far a softmax head's outputs may stray from [0, 1] and from summing to 1 before they are not
    probabilities: PROBABILITY_TOLERANCE (float rounding), plus one quantization step per class for an
    integer output tensor (`output_scale`: its dequantization scale, 1/256 for TFLite's softmax)."""
    return PROBABILITY_TOLERANCE + classes * abs(float(output_scale))


def check_probabilities(outputs, where: str, tolerance: float = PROBABILITY_TOLERANCE) -> np.ndarray:
    """Check that a model which its card says outputs `probabilities` really does, and clip the rounding.

    outputs: (K,) or (N, K) dequantized model outputs; where: the model file, named in the message;
    tolerance: allowed excursion outside [0, 1] and of each row's sum from 1 (probability_tolerance).
    Returns the outputs clipped to [0, 1] (same shape, float), so no P outside [0, 1] reaches a row.
    Raises NotProbabilitiesError (one line) when a value is outside [0 - tol, 1 + tol], not finite, or a
    row's sum differs from 1 by more than tol: typically a logits head whose card says `probabilities`
    (issue 18: P(ALL) from -2.07 to 2.08 reached rows that way).
    """
    y = np.asarray(outputs, dtype=np.float64)
    rows = y.reshape(-1, y.shape[-1])
    sums = rows.sum(axis=1)
    if (not np.isfinite(rows).all() or rows.min() < -tolerance or rows.max() > 1.0 + tolerance
            or np.abs(sums - 1.0).max() > tolerance):
        raise NotProbabilitiesError(
            f"{where}: its card says the model outputs probabilities, but it returned values "
            f"{rows.min():.4g}..{rows.max():.4g} with row sums {sums.min():.4g}..{sums.max():.4g} "
            "(logits? the card's 'output' must say what the model outputs); model refused")
    return np.clip(y, 0.0, 1.0)
