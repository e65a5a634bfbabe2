"""The one decision rule: a cell is called positive when P(positive) >= threshold.

Every step (training's threshold choice, optimize's gate, the benchmark, the device) decides
through `decide`, so the comparison (>=, not >) is written once.
"""

from __future__ import annotations

import numpy as np


def decide(p_positive, threshold: float):
    """P(positive) -> positive decision.

    p_positive: a float or an array of probabilities in [0, 1] (any shape).
    threshold: the card's decision threshold on the same (calibrated) scale.
    Returns a bool for a scalar input, else a bool array of the same shape.
    A probability equal to the threshold is positive (a missed blast costs most).
    """
    out = np.asarray(p_positive) >= threshold
    return bool(out) if out.ndim == 0 else out


def label_for(p_positive: float, threshold: float, labels, positive_index: int) -> str:
    """The label name a decision stands for: labels[positive_index] when positive, else the other one."""
    return labels[positive_index] if decide(p_positive, threshold) else labels[1 - positive_index]
