"""The preprocessing check of `leukedge import` (issue 11), and the errors of the import modules.

A wrong scaling or a reversed label order does not fail loudly: it yields a near-constant P(positive). So the
declared preprocessing is scored on labelled images next to the obvious alternatives (every named scaling, every
resize, each label order), and refused when it is near chance while another is clearly better.

Scalings (input = (x - mean) / std on 0..255 RGB, per channel): see SCALINGS and leukedge.train.importer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.edge.card import ModelCard
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.preprocess import Preprocessing, normalize

SCALINGS: dict[str, tuple[float, float, str]] = {
    "raw": (0.0, 1.0, "x (raw 0..255)"),
    "unit": (0.0, 255.0, "x/255"),
    "tf": (127.5, 127.5, "x/127.5-1"),
    "inception-2015": (128.0, 128.0, "(x-128)/128"),
}
CHECK_RESIZES = ("nearest", "bilinear", "bicubic", "area")
CHECK_SAMPLE = 200  # labelled images scored per candidate preprocessing
# The check's rule (issue 11): the declared preprocessing is "near chance" when its AUROC < 0.65, its
# balanced accuracy < 0.6, or its P(positive) barely varies (5th..95th percentile range < 0.05); another
# candidate is "clearly better" when its AUROC is >= 0.75 and at least 0.15 higher, or its balanced
# accuracy is >= 0.7 and at least 0.2 higher. Chance is 0.5 for both measures.
NEAR_CHANCE_AUROC, NEAR_CHANCE_BACC, MIN_SPREAD = 0.65, 0.6, 0.05
BETTER_AUROC, BETTER_AUROC_GAIN, BETTER_BACC, BETTER_BACC_GAIN = 0.75, 0.15, 0.7, 0.2


class ModelImportError(LeukedgeError, ValueError):
    """A model or declaration that cannot be imported; one line naming the file, the cause and the fix."""


class PreprocessingMismatch(ModelImportError):
    """The declared preprocessing scores near chance on labelled data while another is clearly better."""


@dataclass
class Candidate:
    """One way of feeding the model: a scaling, a resize method and a label order."""

    scaling: str  # a SCALINGS name or the declared (x-M)/S text
    mean: float
    std: float
    resize: str
    reversed_labels: bool = False
    auroc: float | None = None
    balanced_accuracy: float | None = None
    spread: float | None = None  # 95th - 5th percentile of P(positive)
    declared: bool = False

    def describe(self, labels: list[str]) -> str:
        order = list(reversed(labels)) if self.reversed_labels else list(labels)
        return f"{self.scaling} scaling, {self.resize} resize, labels [{', '.join(order)}]"

    def to_dict(self) -> dict:
        return {"scaling": self.scaling, "mean": self.mean, "std": self.std, "resize": self.resize,
                "reversed_labels": self.reversed_labels, "auroc": self.auroc,
                "balanced_accuracy": self.balanced_accuracy, "p_positive_spread": self.spread,
                "declared": self.declared}

    @property
    def near_chance(self) -> bool:
        return ((self.auroc or 0.5) < NEAR_CHANCE_AUROC or (self.balanced_accuracy or 0.5) < NEAR_CHANCE_BACC
                or (self.spread or 0.0) < MIN_SPREAD)

    def clearly_better_than(self, other: "Candidate") -> bool:
        a, b = self.auroc or 0.5, other.auroc or 0.5
        ba, bb = self.balanced_accuracy or 0.5, other.balanced_accuracy or 0.5
        return (a >= BETTER_AUROC and a - b >= BETTER_AUROC_GAIN) or (ba >= BETTER_BACC and ba - bb >= BETTER_BACC_GAIN)


def _score(cand: Candidate, probs: np.ndarray, y_pos: np.ndarray, positive: int, threshold: float) -> Candidate:
    from leukedge.edge.decision import decide
    from leukedge.edge.metrics import auroc

    p = probs[:, 1 - positive] if cand.reversed_labels else probs[:, positive]
    pred = np.asarray(decide(p, threshold), bool)
    sens = float(np.mean(pred[y_pos])) if y_pos.any() else 0.0
    spec = float(np.mean(~pred[~y_pos])) if (~y_pos).any() else 0.0
    cand.auroc = auroc(y_pos, p)
    cand.balanced_accuracy = (sens + spec) / 2
    cand.spread = float(np.percentile(p, 95) - np.percentile(p, 5)) if len(p) else 0.0
    return cand


def _probabilities(model, x: np.ndarray, kind: str) -> np.ndarray:
    y = np.concatenate([model.predict(x[i:i + 64], verbose=0) for i in range(0, len(x), 64)]).astype(np.float64)
    if kind == "logits":
        y = np.exp(y - y.max(axis=1, keepdims=True))
        y /= y.sum(axis=1, keepdims=True)
    return y


def check_preprocessing(model, samples, prep: Preprocessing, labels: list[str], positive: int, threshold: float,
                        kind: str = "probabilities", scaling_name: str = "") -> dict:
    """Score the declared preprocessing and the obvious alternatives on labelled images.

    model: tf-keras model; samples: objects with .path and .label (class index in the MODEL's label
    order), decoded here with the device decoder at prep.size; prep: the declared preprocessing;
    positive: index of the positive label; threshold: the declared decision threshold on P(positive).
    Alternatives: every named scaling at the declared resize, every other resize at the declared scaling,
    and each of those with the label order reversed; measured by AUROC and balanced accuracy (F1 looks
    fine for a constant answer on 2:1 data). Returns {"verified", "declared", "best", "candidates",
    "images", "rule", "reason"}. Raises PreprocessingMismatch (one line) when the declared one is near
    chance while another is clearly better (thresholds: module constants, from issue 11).
    """
    from leukedge.evaluation import decode_samples

    declared_name = SCALINGS[scaling_name][2] if scaling_name in SCALINGS else f"(x-{prep.mean[0]:g})/{prep.std[0]:g}"
    cands: list[Candidate] = []
    decoded = {}
    plan = [(declared_name, prep.mean[0], prep.std[0], prep.resize, True)]
    plan += [(text, m, s, prep.resize, False) for m, s, text in SCALINGS.values() if (m, s) != (prep.mean[0], prep.std[0])]
    plan += [(declared_name, prep.mean[0], prep.std[0], r, False) for r in CHECK_RESIZES if r != prep.resize]
    for name, m, s, r, is_declared in plan:
        if r not in decoded:
            decoded[r] = decode_samples(samples, Preprocessing(size=prep.size, resize=r), progress=False,
                                        what="check images")
        arr = decoded[r]
        probs = _probabilities(model, normalize(arr.images, Preprocessing(size=prep.size, resize=r, mean=(m,) * 3,
                                                                          std=(s,) * 3)), kind)
        for rev in (False, True):
            c = Candidate(name, float(m), float(s), r, rev, declared=is_declared and not rev)
            cands.append(_score(c, probs, arr.labels == positive, positive, threshold))
    declared = cands[0]
    best = max(cands, key=lambda c: ((c.auroc or 0.5) + (c.balanced_accuracy or 0.5), not c.declared))
    better = [c for c in cands if not c.declared and c.clearly_better_than(declared)]
    result = {"images": int(len(decoded[prep.resize].labels)), "declared": declared.to_dict(), "best": best.to_dict(),
              "candidates": [c.to_dict() for c in cands],
              "rule": (f"declared near chance = AUROC < {NEAR_CHANCE_AUROC}, balanced accuracy < {NEAR_CHANCE_BACC} or "
                       f"P(positive) 5..95th percentile range < {MIN_SPREAD}; clearly better = AUROC >= {BETTER_AUROC} and "
                       f"+{BETTER_AUROC_GAIN}, or balanced accuracy >= {BETTER_BACC} and +{BETTER_BACC_GAIN}")}
    if declared.near_chance and better:
        top = max(better, key=lambda c: ((c.auroc or 0.5) + (c.balanced_accuracy or 0.5)))
        fix = []
        if (top.mean, top.std) != (declared.mean, declared.std):
            fix.append("--scale")
        if top.resize != declared.resize:
            fix.append("--resize")
        if top.reversed_labels:
            fix.append("--labels (output order)")
        raise PreprocessingMismatch(
            f"declared {declared.describe(labels)}: AUROC {declared.auroc or 0:.2f}, balanced accuracy "
            f"{declared.balanced_accuracy:.2f}, P({labels[positive]}) spread {declared.spread:.2f}; "
            f"{top.describe(labels)}: AUROC {top.auroc or 0:.2f}, balanced accuracy {top.balanced_accuracy:.2f} "
            f"on {result['images']} labelled images — check {' and '.join(fix)}")
    result["verified"] = not declared.near_chance
    result["reason"] = ("the declared preprocessing separates the classes and no alternative does clearly better"
                        if result["verified"] else
                        f"the declared preprocessing scores near chance (AUROC {declared.auroc or 0:.2f}, balanced "
                        f"accuracy {declared.balanced_accuracy:.2f}) and no alternative does clearly better: the model "
                        "does not work on this data as declared")
    return result



def verify_card_behaviour(model, card: ModelCard, samples, data_labels: list[str], model_path: str | Path = "",
                          sample: int = 100, seed: int = 0) -> dict:
    """The preprocessing check for a card that did not come from `leukedge import` (e.g. in optimize, on the
    validation part): catches a card whose labels or preprocessing disagree with the model's behaviour.

    samples: split samples (.path, .label in `data_labels` order); up to `sample` are scored (stratified).
    Returns check_preprocessing's dict. Raises PreprocessingMismatch, prefixed with the model path.
    """
    from types import SimpleNamespace

    from .splits import subsample

    chosen = [SimpleNamespace(path=s.path, label=card.labels.index(data_labels[s.label]))
              for s in subsample(list(samples), sample, seed)]
    try:
        return check_preprocessing(model, chosen, card.preprocessing, card.labels, card.positive_index,
                                   card.threshold, card.output)
    except PreprocessingMismatch as exc:
        raise PreprocessingMismatch(f"{model_path}: its card disagrees with the model's behaviour: {exc}") from None
